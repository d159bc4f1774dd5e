"""The whole DAG through `emotion-pipeline run`: cold, again with nothing new, and after 10% more photos.

Each run is the real DAG in one process (Airflow's dag.test), timed from outside; the ratios to the
cold run are the figures (targets: under 5% and under 15%). The cold run's task durations also feed
the projection to the full Flickr30k.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .common import Row, distinct_photos

CLI = str(Path(sys.executable).parent / "emotion-pipeline")


def run_dag(source: Path, work: Path, name: str, settings: list[str]) -> tuple[float, dict]:
    seconds, summary, _ = run_dag_measured(source, work, name, settings)
    return seconds, summary


# The run's process is started from this small launcher, not forked from the benchmark: a forked child
# keeps its parent's pre-exec high-water mark in ru_maxrss. wait4 reports the largest resident set of
# the run's process and of the children it waited for (dag.test runs every task in that one process).
_LAUNCH = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[1:])
_, status, usage = os.wait4(child.pid, 0)
print(f"\\npeak-rss-kib {usage.ru_maxrss} exit {os.waitstatus_to_exitcode(status)}")
"""


def run_dag_measured(source: Path, work: Path, name: str, settings: list[str]) -> tuple[float, dict, float]:
    """One `emotion-pipeline run`: (seconds, its summary JSON, the peak RSS of its process in MiB).

    Its output goes to ``work/run-<name>.log``; every minute the log's last line is shown on stderr.
    """
    summary, log_path = work / f"summary-{name}.json", work / f"run-{name}.log"
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log_path.open("w") as log:
        child = subprocess.Popen(
            [sys.executable, "-c", _LAUNCH, CLI, "run", "--source", str(source), "--root", str(work / "root"),
             "--airflow-home", str(work / "airflow"), "--summary-json", str(summary), *settings],
            stdout=log, stderr=subprocess.STDOUT, text=True,
            # Its own state home: tuner checkpoints of an earlier benchmark on the same photos would
            # otherwise let the "cold" run resume a finished search.
            env={**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
                 "EMOTION_PIPELINE_HOME": str(work / "state-home")},
        )
        while _still_running(child, timeout=60):
            print(f"  {name}: {time.perf_counter() - start:.0f} s, {_last_line(log_path)}", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - start
    output = log_path.read_text()
    words = output.split()
    if child.returncode != 0 or len(words) < 4 or words[-4] != "peak-rss-kib" or words[-1] != "0":
        raise RuntimeError(f"the {name} run failed (log: {log_path}):\n{output[-4000:]}")
    return seconds, json.loads(summary.read_text()), int(words[-3]) / 1024  # ru_maxrss is in KiB on Linux


def _still_running(child: subprocess.Popen, timeout: float) -> bool:
    try:
        child.wait(timeout)
        return False
    except subprocess.TimeoutExpired:
        return True


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").replace("\r", "\n").splitlines() if line.strip()]
    return lines[-1].strip()[:150] if lines else "(no output yet)"


def bench_dag(photos: Path, work: Path, settings: list[str]) -> tuple[list[Row], dict]:
    originals = sorted(photos.glob("*.jpg"))
    source = work / "photos"
    distinct_photos(photos, source, len(originals))
    cold_s, cold = run_dag(source, work, "cold", settings)
    again_s, _ = run_dag(source, work, "again", settings)
    # 10% more: distinct new photos (mirrored copies of the first ones) in a new folder, as a new batch lands.
    extra = distinct_photos(photos, work / "extra", len(originals) + len(originals) // 10, first=len(originals))
    (source / "batch2").mkdir()
    for path in extra:
        path.rename(source / "batch2" / path.name)
    more_s, more = run_dag(source, work, "more", settings)
    rows = [
        Row("whole DAG", f"cold run, {len(originals)} photos", "", f"{cold_s:.0f} s", None, "", None),
        Row("whole DAG", "re-run, nothing new", "cold run", f"{again_s:.0f} s", again_s / cold_s, "< 5%",
            again_s / cold_s < 0.05),
        Row("whole DAG", f"run after +{len(extra)} photos (10%)", "cold run", f"{more_s:.0f} s", more_s / cold_s,
            "< 15%", more_s / cold_s < 0.15, {"tasks": task_seconds(more)}),
    ]
    return rows, {"photos": len(originals), "cold_seconds": cold_s, "tasks": task_seconds(cold)}


def task_seconds(summary: dict) -> dict[str, float]:
    """Seconds per task id, mapped instances summed."""
    totals: dict[str, float] = {}
    for task in summary["tasks"]:
        totals[task["task"]] = totals.get(task["task"], 0.0) + task["seconds"]
    return totals


def projection(cold: dict, stage_rates: dict[str, float], n: int = 31_783) -> list[Row]:
    """Hours for ``n`` photos on this machine, stage by stage.

    Shard stages use the photos/s measured side by side (bench/stages.py); the rest scale the cold
    run's task time linearly with the photo count (merge, assemble and training read every row).
    """
    rows, total = [], 0.0
    for task, seconds in cold["tasks"].items():
        measured = stage_rates.get(task)
        hours = (n / measured if measured else seconds * n / cold["photos"]) / 3600
        total += hours
        how = (f"{measured:.2f} photos/s measured" if measured
               else f"{seconds:.0f} s for {cold['photos']} x {n / cold['photos']:.0f}")
        rows.append(Row("projection", f"{task}: {n} photos", how, f"{hours:.2f} h", None, "", None))
    rows.append(Row("projection", f"whole DAG: {n} photos, 2 cores", "", f"{total:.1f} h", None, "", None))
    return rows
