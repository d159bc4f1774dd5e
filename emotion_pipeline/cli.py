"""``emotion-pipeline``: run the whole DAG locally, start the Airflow UI, or run one stage.

    emotion-pipeline run --source photos/ --root out/ [--limit 50]
    emotion-pipeline ui --source photos/ --root out/
    emotion-pipeline stage resize --source photos/ --root out/ --shard 0
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from .config import ACTIONS, DETECTORS, DRIFT_REFERENCES, EMBED_INPUTS, TUNERS, PipelineConfig


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True, help="folder or gs://bucket/prefix of input photos")
    parser.add_argument("--root", required=True, help="folder or gs://bucket/prefix for all outputs")
    parser.add_argument("--limit", type=int, help="only the first N photos (sorted by name)")
    parser.add_argument("--shard-size", type=int)
    parser.add_argument("--detector", choices=DETECTORS)
    parser.add_argument("--actions", help=f"comma-separated, from {','.join(ACTIONS)} (default: emotion)")
    parser.add_argument("--min-face-confidence", type=float)
    parser.add_argument("--drift-reference", choices=DRIFT_REFERENCES)
    parser.add_argument("--drift-threshold", type=float)
    parser.add_argument("--alert-emails", help="comma-separated recipients of drift/failure e-mails")
    parser.add_argument("--embed-input", choices=EMBED_INPUTS)
    parser.add_argument("--embed-weights", help="imagenet (default), a local .h5 path, or none")
    parser.add_argument("--tuner", choices=TUNERS)
    parser.add_argument("--tuner-max-epochs", type=int)
    parser.add_argument("--tuner-max-trials", type=int)
    parser.add_argument("--shap-images", type=int)
    parser.add_argument("--shap-image-evals", type=int)
    parser.add_argument("--force-train", action="store_true", default=None)
    parser.add_argument("--gold", help="photos labelled by people: a <label>/<photo> folder or a CSV")
    parser.add_argument("--gold-detector", choices=DETECTORS, help="'skip' when gold photos are face crops")


def _config_values(args: argparse.Namespace) -> dict[str, Any]:
    names = ["source", "root", "limit", "shard_size", "detector", "actions", "min_face_confidence",
             "drift_reference", "drift_threshold", "alert_emails", "embed_input", "embed_weights", "tuner",
             "tuner_max_epochs", "tuner_max_trials", "shap_images", "shap_image_evals", "force_train",
             "gold", "gold_detector"]
    values = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    for name in ("actions", "alert_emails"):
        if name in values:
            values[name] = [v.strip() for v in values[name].split(",") if v.strip()]
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emotion-pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the whole DAG on this machine (Airflow dag.test, SQLite)")
    _add_config_options(run)
    run.add_argument("--airflow-home", type=Path, help="default: ~/.emotion-pipeline/airflow")
    run.add_argument("--summary-json", type=Path, help="also write the run summary here (automation)")

    ui = commands.add_parser("ui", help="Airflow standalone with this DAG: trigger runs from the UI")
    ui.add_argument("--source", default="", help="default 'source' in the trigger form")
    ui.add_argument("--root", default="", help="default 'root' in the trigger form")
    ui.add_argument("--port", type=int, default=8080)
    ui.add_argument("--airflow-home", type=Path)

    serve = commands.add_parser("serve", help="the prediction API (gunicorn) on the registered champion")
    serve.add_argument("--root", required=True, help="the pipeline's storage root (MLflow store, reports)")
    serve.add_argument("--model-uri", help="default: models:/emotion-classifier@champion")
    serve.add_argument("--embed-weights", help="default: the weights the model was trained with")
    serve.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--workers", type=int, default=1, help="processes; each loads the models once")
    serve.add_argument("--max-upload-mb", type=float, default=10.0)

    dashboard = commands.add_parser("dashboard", help="the Streamlit dashboard on a pipeline's outputs")
    dashboard.add_argument("--root", required=True, help="the pipeline's storage root")
    dashboard.add_argument("--port", type=int, default=8501)
    dashboard.add_argument("--host", default="0.0.0.0")

    stage = commands.add_parser("stage", help="run one stage function without Airflow")
    stage.add_argument("name", choices=["discover", "resize", "annotate", "drift", "merge", "embed",
                                        "assemble", "train"])
    _add_config_options(stage)
    stage.add_argument("--shard", type=int, help="for resize and annotate")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stdout)
    if args.command == "run":
        from .local_run import run_locally

        summary = run_locally(_config_values(args), airflow_home=args.airflow_home)
        if args.summary_json:
            args.summary_json.write_text(json.dumps(summary, indent=2, default=str))
        return 0 if summary["state"] == "success" else 1
    if args.command == "ui":
        from .local_ui import start_ui

        return start_ui(source=args.source, root=args.root, port=args.port, airflow_home=args.airflow_home)
    if args.command == "serve":
        return _serve(args)
    if args.command == "dashboard":
        return _dashboard(args)
    return _run_stage(args)


def _serve(args: argparse.Namespace) -> int:
    """exec gunicorn: one sync worker per process, models loaded in each worker (never preloaded)."""
    env = {"EMOTION_PIPELINE_ROOT": args.root, "EMOTION_PIPELINE_MAX_UPLOAD_MB": str(args.max_upload_mb)}
    if args.model_uri:
        env["EMOTION_PIPELINE_MODEL_URI"] = args.model_uri
    if args.embed_weights:
        env["EMOTION_PIPELINE_EMBED_WEIGHTS"] = args.embed_weights
    os.environ.update(env)
    gunicorn = [sys.executable, "-m", "gunicorn", "--workers", str(args.workers), "--bind",
                f"{args.host}:{args.port}", "--timeout", "300", "--graceful-timeout", "20",
                "emotion_pipeline.serve.api:create_app()"]
    os.execv(sys.executable, gunicorn)
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    from pathlib import Path

    os.environ["EMOTION_PIPELINE_ROOT"] = args.root
    script = Path(__file__).parent / "serve" / "dashboard.py"
    os.execv(sys.executable, [sys.executable, "-m", "streamlit", "run", str(script), "--server.port",
                              str(args.port), "--server.address", args.host, "--server.headless", "true",
                              "--browser.gatherUsageStats", "false"])
    return 0


def _run_stage(args: argparse.Namespace) -> int:
    config = PipelineConfig.from_mapping(_config_values(args))
    if args.name == "discover":
        from .stages.discover import discover_images as run
        result = run(config)
    elif args.name in ("resize", "annotate", "embed"):
        if args.shard is None:
            raise SystemExit(f"{args.name} needs --shard")
        from .stages import annotate, embed, resize
        run = {"resize": resize.resize_shard, "annotate": annotate.annotate_shard, "embed": embed.embed_shard}
        result = run[args.name](config, args.shard)
    elif args.name == "assemble":
        from .stages.embed import assemble_features
        result = assemble_features(config)
    elif args.name == "train":
        from .stages.train import train_classifier
        result = train_classifier(config)
    elif args.name == "drift":
        from .stages.drift import check_label_drift
        result = check_label_drift(config)
    else:
        from .stages.merge import merge_dataset
        result = merge_dataset(config)
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
