"""Airflow's limits at scale, measured: mapped tasks per stage against ``max_map_length``, the XCom
sizes discover writes as the shard count grows, and the DAG file's parse time.

    python -m bench.airflow_limits --shards 10 100 1000 2000 [--json build/bench-scale/airflow-limits.json]

The shards come from a generated listing: one tiny file per shard (distinct bytes, a photo's name;
discover reads bytes for content ids and never decodes them) with ``shard_size`` 1. The parse time is
the DagBag's fill of dags/ in a fresh process (Airflow's own import timed apart): the mapping is
decided at run time, so it does not depend on the shard count.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

_PARSE = """
import json, statistics, sys, time
started = time.perf_counter()
from airflow.dag_processing.dagbag import DagBag
imported = time.perf_counter() - started
fills = []
for _ in range(int(sys.argv[2])):
    started = time.perf_counter()
    bag = DagBag(dag_folder=sys.argv[1])
    fills.append(time.perf_counter() - started)
    assert not bag.import_errors, bag.import_errors
dag = next(iter(bag.dags.values()))
print(json.dumps({"airflow_import_s": round(imported, 2), "parse_s": [round(s, 3) for s in fills],
                  "parse_median_s": round(statistics.median(fills), 3), "tasks": len(dag.tasks)}))
"""


def parse_time(home: Path, repeats: int = 5) -> dict:
    """The DAG file's parse time in a fresh process (the dag-processor's work per file)."""
    from emotion_pipeline.local import airflow_home

    env = {**airflow_home.airflow_env(home, "LocalExecutor", None), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", _PARSE, str(airflow_home.dags_folder()), str(repeats)],
                          capture_output=True, text=True, env={**os.environ, **env}, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def discover_xcoms(work: Path, shards: int) -> dict:
    """Discover on ``shards`` one-photo shards: its seconds and the size of each XCom it writes
    (return value: the pending shards the stages map over; ``summary``: the whole result)."""
    from emotion_pipeline.core.config import PipelineConfig
    from emotion_pipeline.core.runner import run_stage

    source = work / f"listing-{shards}"
    source.mkdir(parents=True, exist_ok=True)
    for index in range(shards):
        (source / f"photo-{index:07d}.jpg").write_bytes(index.to_bytes(8, "big"))  # distinct content ids
    config = PipelineConfig.from_mapping({"source": str(source), "root": str(work / f"root-{shards}"),
                                          "shard_size": 1, "teacher": "deepface"})
    started = time.perf_counter()
    summary = run_stage("discover", config).to_dict()
    seconds = time.perf_counter() - started
    return {"shards": len(summary["shards"]), "pending": len(summary["pending"]), "discover_s": round(seconds, 2),
            "xcom_return_bytes": len(json.dumps(summary["pending"])),
            "xcom_summary_bytes": len(json.dumps(summary, default=str))}


def max_map_length(home: Path) -> int:
    """Airflow's cap on one mapped task's instances, as configured for a local home (the default)."""
    from emotion_pipeline.local import airflow_home

    os.environ.update(airflow_home.airflow_env(home, "LocalExecutor", None))  # never ~/airflow
    from airflow.configuration import conf

    return conf.getint("core", "max_map_length")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, nargs="+", default=[10, 100, 1000, 2000])
    parser.add_argument("--json", type=Path, default=Path("build/bench-scale/airflow-limits.json"))
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="airflow-limits-"))
    from emotion_pipeline.core.config import PipelineConfig

    shard_size = PipelineConfig(source=".", root=".").shard_size
    limit = max_map_length(work / "airflow")
    found = {"max_map_length": limit, "default_shard_size": shard_size,
             "photos_per_run_at_limit": limit * shard_size, "parse": parse_time(work / "airflow"),
             "discover": []}
    print(f"max_map_length {limit}: at most {limit * shard_size} photos per run in shards of {shard_size}; "
          f"parse {found['parse']['parse_median_s']} s", file=sys.stderr, flush=True)
    for shards in args.shards:
        found["discover"].append(discover_xcoms(work, shards))
        print(f"  {found['discover'][-1]}", file=sys.stderr, flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(found, indent=2))


if __name__ == "__main__":
    main()
