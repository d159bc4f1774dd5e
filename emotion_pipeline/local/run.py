"""``emotion-pipeline run``: the real DAG, end to end, in this process (``dag.test``), then a summary
(what the terminal shows meanwhile: console.py)."""
from __future__ import annotations

import logging
import textwrap
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from emotion_pipeline.core import catalog
from emotion_pipeline.core.config import PipelineConfig
from emotion_pipeline.core.storage import open_storage
from emotion_pipeline.core.tables import read_json
from emotion_pipeline.local import airflow_home as local_airflow
from emotion_pipeline.local.console import RunConsole

log = logging.getLogger(__name__)
ERROR_LINES_SHOWN = 8  # of a failed task's error in the summary; the log has all of it


def run_locally(values: dict[str, Any], airflow_home: Path | None = None, verbose: bool = False) -> dict[str, Any]:
    """Run the DAG once; the terminal shows task state changes, progress and the summary, the full
    log goes to a file under the Airflow home (``verbose``: all of it on the terminal)."""
    # Nobody can answer the DAG's questions (drift, promotion) without the UI: their default answers.
    config = PipelineConfig.from_mapping({**values, "ask_people": False})  # validated before Airflow starts
    home = airflow_home or local_airflow.DEFAULT_HOME
    log_file = home.resolve() / "logs" / "runs" / f"{datetime.now(UTC):%Y-%m-%dT%H-%M-%S}.log"
    with RunConsole(log_file, verbose=verbose) as console:
        console.say(f"running DAG {local_airflow.DAG_ID}: {config.source} -> {config.root}")
        if not verbose:
            console.say(f"full log: {log_file}")
        started = time.monotonic()
        try:
            local_airflow.configure(home)
            local_airflow.ensure_gpu_pool()
            dag = local_airflow.load_dag()
            console.follow_tasks()
            # One run per root at a time (a second `run` waits): the Airflow deployments get the same
            # from the DAG's max_active_runs=1.
            with open_storage(config.root).lease("run"):
                # Only set values: the DAG's Params type-check what they receive (a None where a
                # string goes fails).
                dag_run = dag.test(run_conf={k: v for k, v in config.to_dict().items() if v is not None})
            state = str(dag_run.state)
        except KeyboardInterrupt:
            dag_run, state = _stop_run(), "interrupted"
        summary = summarize(dag_run, config, time.monotonic() - started, console.errors, state)
        summary["log_file"] = None if verbose else str(log_file)
        console.say(format_summary(summary))
    return summary


def _stop_run():
    """The interrupted run, marked failed with its unfinished tasks (the UI and the next run see it
    ended); None when it had not started."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState, TaskInstanceState

    with create_session() as session:
        runs = DagRun.find(dag_id=local_airflow.DAG_ID, state=DagRunState.RUNNING, session=session)
        for run in runs:
            for ti in run.get_task_instances(session=session):
                if ti.state not in (TaskInstanceState.SUCCESS, TaskInstanceState.SKIPPED,
                                    TaskInstanceState.FAILED, TaskInstanceState.UPSTREAM_FAILED):
                    ti.state = TaskInstanceState.FAILED
            run.state = DagRunState.FAILED
        session.commit()
        return max(runs, key=lambda r: r.id) if runs else None


def summarize(dag_run, config: PipelineConfig, seconds: float, errors: dict | None = None,
              state: str | None = None) -> dict[str, Any]:
    """The run's outcome (the JSON of ``--summary-json``): every task with its state, tries, seconds,
    result and error, and what the root holds now."""
    root = open_storage(config.root)
    errors = errors or {}
    xcoms = _xcoms(dag_run) if dag_run is not None else {}
    instances = [] if dag_run is None else sorted(
        dag_run.get_task_instances(), key=lambda t: (t.start_date or dag_run.start_date, t.map_index))
    tasks = [
        {"task": ti.task_id, "map_index": ti.map_index, "state": str(ti.state), "tries": ti.try_number,
         "seconds": round(ti.duration or 0.0, 1), "result": xcoms.get((ti.task_id, ti.map_index, "return_value")),
         "error": errors.get((ti.task_id, ti.map_index)) if str(ti.state) == "failed" else None}
        for ti in instances
    ]
    dataset = catalog.read_dataset(root)
    evaluation = xcoms.get(("evaluate", -1, "return_value")) or {}
    training = xcoms.get(("train", -1, "return_value")) or {}
    monitor_log = catalog.read_monitor_log(root)
    return {
        "run_id": None if dag_run is None else dag_run.run_id,
        "state": state or str(dag_run.state),
        "seconds": round(seconds, 1),
        "tasks": tasks,
        "discovery": xcoms.get(("discover", -1, "summary")),
        "dataset_exists": dataset is not None,
        "images": 0 if dataset is None else len(dataset),
        "statuses": {} if dataset is None else dataset["status"].value_counts().to_dict(),
        "labels": {} if dataset is None else dataset["label"].value_counts().to_dict(),
        "drifted_shards": _drifted_shards(monitor_log),
        "outputs": {
            "dataset": root.uri_for(f"{catalog.DATASET}.parquet"),
            "processed": root.uri_for(catalog.PROCESSED_FOLDER),
            "monitoring_log": root.uri_for(catalog.MONITOR_LOG),
            "charts": root.uri_for(catalog.CHARTS),
            "vectors": root.uri_for(catalog.IMAGE_VECTORS),
            "report": evaluation.get("report_uri"),
            "mlflow": training.get("tracking_uri"),
        },
        "model": {k: training.get(k) for k in ("model_version", "test_macro_f1", "champion", "run_id", "reason",
                                               "flags")},
        "gold": gold_summary(root, config),
    }


def gold_summary(root, config: PipelineConfig) -> dict[str, Any] | None:
    """The gold check's figures when a gold set is given, read from the root (so also after a run with
    nothing new): DeepFace's from check_gold's marker, the model's from its evaluation's metrics.json."""
    gold = (catalog.read_done(root, catalog.GOLD_FOLDER) or {}).get("summary") or {}
    if not config.gold or not gold.get("checked"):
        return None
    evaluated = (catalog.read_done(root, catalog.EVALUATE_FOLDER) or {}).get("summary") or {}
    version = evaluated.get("model_version")
    metrics = read_json(root, catalog.report_file(version, catalog.REPORT_METRICS)) if version else None
    model = ((metrics or {}).get("gold") or {}).get("model")
    return {"photos": gold["photos"], "no_face_share": gold["no_face_share"], "no_label_share": gold["no_label_share"],
            "deepface": {k: gold["deepface"][k] for k in ("accuracy", "macro_f1")},
            "model_version": version if model else None,
            "model": {k: model[k] for k in ("accuracy", "macro_f1")} if model else None}


def _gold_line(gold: dict[str, Any]) -> str:
    line = (f"gold check: {gold['photos']} photos, DeepFace accuracy {gold['deepface']['accuracy']:.3f}, "
            f"macro-F1 {gold['deepface']['macro_f1']:.3f}, no label {100 * gold['no_label_share']:.1f}%, "
            f"no face {100 * gold['no_face_share']:.1f}%")
    if gold["model"]:
        line += (f"; model version {gold['model_version']} accuracy {gold['model']['accuracy']:.3f}, "
                 f"macro-F1 {gold['model']['macro_f1']:.3f}")
    return line


def _xcoms(dag_run) -> dict[tuple[str, int, str], Any]:
    """Every XCom of the run: the stage summaries (work done, skipped or not) for the summary."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        # Airflow annotates get_many as SQLAlchemy 2.0's Select[tuple[XComModel]]; under 2.1 that reads as
        # rows of tuples, though scalars() yields the XComModel objects themselves.
        rows: Sequence[XComModel] = session.scalars(  # type: ignore[assignment]
            XComModel.get_many(run_id=dag_run.run_id, dag_ids=dag_run.dag_id)).all()
        return {(x.task_id, x.map_index, x.key): XComModel.deserialize_value(x) for x in rows}


def _drifted_shards(monitor_log) -> list[int]:
    if "drift" not in monitor_log:
        return []
    return sorted({int(s) for s in monitor_log.loc[monitor_log["drift"].astype(bool), "shard"]})


def format_summary(summary: dict[str, Any]) -> str:
    """The end of the terminal output: the outcome, each failed task with its error, the photos and
    labels the dataset holds now (also after a run with nothing new), the outputs, the log file."""
    states: dict[str, int] = {}
    for t in summary["tasks"]:
        states[t["state"]] = states.get(t["state"], 0) + 1
    counts = ", ".join(f"{n} {state}" for state, n in sorted(states.items(), key=lambda kv: -kv[1]))
    lines = [f"\nrun {summary['run_id'] or '(not started)'}: {summary['state']} in {summary['seconds']} s"
             + (f" ({counts})" if counts else "")]
    failed = [t for t in summary["tasks"] if t["state"] == "failed"]
    for t in failed:
        index = f"[{t['map_index']}]" if t["map_index"] >= 0 else ""
        tries = f"{t['tries']} tr{'y' if t['tries'] == 1 else 'ies'}"
        error = [part for line in (t["error"] or "no error recorded: see the log").splitlines()
                 for part in textwrap.wrap(line, 96, break_long_words=False, break_on_hyphens=False) or [""]]
        lines.append(f"failed: {t['task']}{index} after {tries}:")
        lines += [f"    {line}" for line in error[:ERROR_LINES_SHOWN]]
        if len(error) > ERROR_LINES_SHOWN:
            lines.append("    ... (the rest in the log)")
    if summary["state"] == "interrupted":
        lines.append("interrupted: nothing partial was kept; run again to go on from where it stopped")
    lines.append(f"photos: {summary['images']}" if summary["dataset_exists"]
                 else "photos: no dataset yet (merge has not run)")
    lines += [f"  {status:<12} {count}" for status, count in sorted(summary["statuses"].items(), key=lambda kv: -kv[1])]
    skipped = (summary.get("discovery") or {}).get("skipped") or {}
    if skipped:  # entries of the source that are not photos: say so rather than ignore them silently
        lines.append("skipped, not photos: " + ", ".join(f"{reason} {n}" for reason, n in skipped.items()))
    lines.append("labels: " + (", ".join(f"{k} {v}" for k, v in summary["labels"].items()) or "none"))
    lines.append("drifted shards: " + (", ".join(map(str, summary["drifted_shards"])) or "none"))
    model = summary["model"]
    if model.get("model_version"):
        lines.append(f"model: version {model['model_version']}, test macro-F1 {model['test_macro_f1']:.3f}, "
                     f"champion: {model['champion']}" + "".join(f", {flag}" for flag in model.get("flags") or []))
    elif model.get("reason"):  # a green run that trained nothing says why
        lines.append(f"model: none, {model['reason']}")
    if summary.get("gold"):
        lines.append(_gold_line(summary["gold"]))
    lines += [f"  {name:<15} {uri}" for name, uri in summary["outputs"].items() if uri]
    if summary.get("log_file"):
        lines.append(f"full log: {summary['log_file']}")
    return "\n".join(lines)
