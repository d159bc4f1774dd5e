"""``emotion-pipeline``: run the whole DAG locally, start the Airflow UI, or run one stage.

    emotion-pipeline run --source photos/ --root out/ [--limit 50]
    emotion-pipeline ui --source photos/ --root out/
    emotion-pipeline stage resize --source photos/ --root out/ --shard 0
    emotion-pipeline review export-label-studio --root out/ --out tasks.json
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from emotion_pipeline.core.config import PipelineConfig, knobs
from emotion_pipeline.core.registry import STAGES, stage


def add_config_options(parser: argparse.ArgumentParser, defaults_for: str | None = None) -> None:
    """One option per knob with a section (``config.knobs``): ``--shard-size``, ``--force-train``, ...
    With ``defaults_for``, every option is optional and sets that thing's defaults (the trigger form's)."""
    for k in knobs():
        if not k.section:
            continue
        flag = "--" + k.name.replace("_", "-")
        help_text = k.help if k.required else f"{k.help} (default: {_shown(k.default)})"
        if defaults_for:
            help_text = f"{defaults_for}: {help_text}"
        if k.type is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif k.type is tuple:
            parser.add_argument(flag, help=f"comma-separated. {help_text}")
        else:
            parser.add_argument(flag, type=k.type, choices=k.choices, required=k.required and not defaults_for,
                                help=help_text)


def config_values(args: argparse.Namespace) -> dict[str, Any]:
    """The knobs given on the command line (``PipelineConfig.from_mapping`` fills in the rest)."""
    return {k.name: getattr(args, k.name) for k in knobs() if getattr(args, k.name, None) is not None}


def _shown(default: Any) -> str:
    return ",".join(default) if isinstance(default, tuple) else str(default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emotion-pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the whole DAG on this machine (Airflow dag.test, SQLite)")
    add_config_options(run)
    run.add_argument("--airflow-home", type=Path, help="default: ~/.emotion-pipeline/airflow")
    run.add_argument("--summary-json", type=Path, help="also write the run summary here (automation)")
    run.add_argument("--verbose", action="store_true",
                     help="Airflow's and the stages' full log on the terminal instead of a log file")

    ui = commands.add_parser("ui", help="Airflow standalone with this DAG on a local PostgreSQL: trigger runs "
                             "from the UI; Ctrl-C or SIGTERM stops all of it")
    # The deployment's defaults: the form's, and those of scheduled, asset and backfill runs.
    add_config_options(ui, defaults_for="default of the trigger form and of runs without params")
    ui.add_argument("--port", type=int, default=8080)
    ui.add_argument("--airflow-home", type=Path, help="default: ~/.emotion-pipeline/airflow (its database: "
                    "postgres/ in it)")

    serve = commands.add_parser("serve", help="the prediction API (uvicorn) on the registered champion")
    from emotion_pipeline.serve.launch import add_serve_arguments

    add_serve_arguments(serve)

    dashboard = commands.add_parser("dashboard", help="the Streamlit dashboard on a pipeline's outputs")
    dashboard.add_argument("--root", required=True, help="the pipeline's storage root")
    dashboard.add_argument("--port", type=int, default=8501)
    dashboard.add_argument("--host", default="127.0.0.1", help="no authentication: 0.0.0.0 only on a private network")
    dashboard.add_argument("--name", help="what the pages call the root (default: its last folder's name); "
                           "the root's path is never shown")
    dashboard.add_argument("--max-upload-mb", type=int, default=10,
                           help="largest photo Try it accepts (the API's --max-upload-mb default)")
    dashboard.add_argument("--captions", help="the photos' captions file (as the run's --captions), shown on the "
                           "Review page")

    stage = commands.add_parser("stage", help="run one stage function without Airflow")
    stage.add_argument("name", choices=list(STAGES), metavar="NAME",
                       help="a stage of the registry, by its name (the DAG's task id): " + ", ".join(STAGES))
    add_config_options(stage)
    stage.add_argument("--shard", type=int, help="for the per-shard stages: " +
                       ", ".join(s.name for s in STAGES.values() if s.per_shard))
    from emotion_pipeline.local.review_commands import add_review_parser

    add_review_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stdout)
    if args.command == "run":
        from emotion_pipeline.local.console import block_stop_signals

        block_stop_signals()  # before any thread starts: the run's console takes Ctrl-C and SIGTERM
        from emotion_pipeline.local.run import run_locally

        summary = run_locally(config_values(args), airflow_home=args.airflow_home, verbose=args.verbose)
        if args.summary_json:
            args.summary_json.write_text(json.dumps(summary, indent=2, default=str))
        return {"success": 0, "interrupted": 130}.get(summary["state"], 1)
    if args.command == "ui":
        return _ui(args)
    if args.command == "serve":
        return _serve(args)
    if args.command == "dashboard":
        return _dashboard(args)
    if args.command == "review":
        from emotion_pipeline.local.review_commands import run_review

        return run_review(args)
    return _run_stage(args)


def _ui(args: argparse.Namespace) -> int:
    from emotion_pipeline.core.config import deployment_environment
    from emotion_pipeline.local.ui import start_ui

    defaults = {k: v for k, v in config_values(args).items() if k not in ("source", "root")}
    PipelineConfig.from_mapping({"source": "-", "root": "-", **defaults})  # a bad default fails here, not in the DAG
    os.environ.update(deployment_environment(defaults))  # Airflow's processes read them when parsing the DAG
    # Not given here: the deployment's $EMOTION_PIPELINE_SOURCE / _ROOT (e.g. from .env) stay the defaults.
    source = args.source or os.environ.get("EMOTION_PIPELINE_SOURCE", "")
    root = args.root or os.environ.get("EMOTION_PIPELINE_ROOT", "")
    return start_ui(source=source, root=root, port=args.port, airflow_home=args.airflow_home)


def _serve(args: argparse.Namespace) -> int:
    from emotion_pipeline.serve.launch import exec_uvicorn

    return exec_uvicorn(args)


def _dashboard(args: argparse.Namespace) -> int:
    from pathlib import Path

    os.environ["EMOTION_PIPELINE_ROOT"] = args.root
    if args.name:
        os.environ["EMOTION_PIPELINE_ROOT_NAME"] = args.name
    os.environ["EMOTION_PIPELINE_DASHBOARD_MAX_UPLOAD_MB"] = str(max(1, args.max_upload_mb))
    if args.captions:
        os.environ["EMOTION_PIPELINE_CAPTIONS"] = args.captions  # serve.review_page.CAPTIONS_ENV
    script = Path(__file__).parents[1] / "serve" / "dashboard.py"
    os.execv(sys.executable, [sys.executable, "-m", "streamlit", "run", str(script), "--server.port",
                              str(args.port), "--server.address", args.host, "--server.headless", "true",
                              "--browser.gatherUsageStats", "false",
                              # Streamlit takes 200 MB by default; a photo never needs that (the API takes
                              # 10 MB, and both cap the decoded pixels at 16 Mpx).
                              "--server.maxUploadSize", os.environ["EMOTION_PIPELINE_DASHBOARD_MAX_UPLOAD_MB"],
                              # A read-only view for people who look at results: no Deploy button or
                              # developer menu, and no traceback should an error escape a page.
                              "--client.toolbarMode", "minimal", "--client.showErrorDetails", "none"])
    return 0


def _run_stage(args: argparse.Namespace) -> int:
    from emotion_pipeline.core.runner import run_stage

    config = PipelineConfig.from_mapping(config_values(args))
    if stage(args.name).per_shard and args.shard is None:
        raise SystemExit(f"{args.name} needs --shard")
    shard = args.shard if stage(args.name).per_shard else None
    print(json.dumps(run_stage(args.name, config, shard).to_dict(), indent=2, default=str))
    return 0

if __name__ == "__main__":
    sys.exit(main())
