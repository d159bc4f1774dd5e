"""``emotion-pipeline run``: the real DAG, end to end, in this process (``dag.test``), then a summary."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from . import catalog, local_airflow
from .config import PipelineConfig
from .storage import open_storage

log = logging.getLogger(__name__)


def run_locally(values: dict[str, Any], airflow_home: Path | None = None) -> dict[str, Any]:
    config = PipelineConfig.from_mapping(values)  # validate before Airflow spends seconds starting
    local_airflow.configure(airflow_home or local_airflow.DEFAULT_HOME)
    local_airflow.ensure_gpu_pool()
    dag = local_airflow.load_dag()

    started = time.monotonic()
    print(f"running DAG {dag.dag_id}: {config.source} -> {config.root}", flush=True)
    # One run per root at a time (a second `run` waits): the Airflow deployments get the same from
    # the DAG's max_active_runs=1.
    with open_storage(config.root).lease("run"):
        # Only set values: the DAG's Params type-check what they receive (a None where a string goes fails).
        dag_run = dag.test(run_conf={k: v for k, v in config.to_dict().items() if v is not None})
    summary = summarize(dag_run, config, time.monotonic() - started)
    print_summary(summary)
    return summary


def summarize(dag_run, config: PipelineConfig, seconds: float) -> dict[str, Any]:
    root = open_storage(config.root)
    xcoms = _xcoms(dag_run)
    tasks = [
        {"task": ti.task_id, "map_index": ti.map_index, "state": str(ti.state), "tries": ti.try_number,
         "seconds": round(ti.duration or 0.0, 1), "result": xcoms.get((ti.task_id, ti.map_index, "return_value"))}
        for ti in sorted(dag_run.get_task_instances(), key=lambda t: (t.start_date or dag_run.start_date, t.map_index))
    ]
    dataset = catalog.read_dataset(root)
    evaluation = xcoms.get(("evaluate", -1, "return_value")) or {}
    training = xcoms.get(("train", -1, "return_value")) or {}
    monitor_log = catalog.read_monitor_log(root)
    return {
        "run_id": dag_run.run_id,
        "state": str(dag_run.state),
        "seconds": round(seconds, 1),
        "tasks": tasks,
        "discovery": xcoms.get(("discover", -1, "summary")),
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
        "model": {k: training.get(k) for k in ("model_version", "test_macro_f1", "champion", "run_id")},
    }


def _xcoms(dag_run) -> dict[tuple[str, int, str], Any]:
    """Every XCom of the run: the stage summaries (work done, skipped or not) for the summary."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.scalars(XComModel.get_many(run_id=dag_run.run_id, dag_ids=dag_run.dag_id)).all()
        return {(x.task_id, x.map_index, x.key): XComModel.deserialize_value(x) for x in rows}


def _drifted_shards(monitor_log) -> list[int]:
    if "drift" not in monitor_log:
        return []
    return sorted({int(s) for s in monitor_log.loc[monitor_log["drift"].astype(bool), "shard"]})


def print_summary(summary: dict[str, Any]) -> None:
    print(f"\nrun {summary['run_id']}: {summary['state']} in {summary['seconds']} s")
    for t in summary["tasks"]:
        index = f"[{t['map_index']}]" if t["map_index"] >= 0 else ""
        print(f"  {t['task'] + index:<22} {t['state']:<16} {t['seconds']:>7} s")
    print(f"photos: {summary['images']}")
    for status, count in sorted(summary["statuses"].items(), key=lambda kv: -kv[1]):
        print(f"  {status:<12} {count}")
    skipped = (summary.get("discovery") or {}).get("skipped") or {}
    if skipped:  # entries of the source that are not photos: say so rather than ignore them silently
        print("skipped, not photos: " + ", ".join(f"{reason} {n}" for reason, n in skipped.items()))
    print("labels: " + (", ".join(f"{k} {v}" for k, v in summary["labels"].items()) or "none"))
    print("drifted shards: " + (", ".join(map(str, summary["drifted_shards"])) or "none"))
    model = summary["model"]
    if model.get("model_version"):
        print(f"model: version {model['model_version']}, test macro-F1 {model['test_macro_f1']:.3f}, "
              f"champion: {model['champion']}")
    for name, uri in summary["outputs"].items():
        if uri:
            print(f"  {name:<15} {uri}")
