"""The whole DAG cold at growing photo counts, then +10% and a no-op re-run at the largest (`make bench-scale`).

    python -m bench.scale --photos ../shared/data/flickr30k_sample/images [--sizes 1000 4000 16000 32000]

Photos are mosaics of the sample's real photos (bench/mosaics.py), generated once into a pool and
hard-linked into one source folder per size. Each size runs cold (its own root, Airflow home and
state home) through `emotion-pipeline run` (bench/dag.py's run_dag_measured). Per run: every task's
seconds (mapped instances summed), photos/s, and the peak resident memory of the run's process: the
run is one process (dag.test runs every task in it), so memory is per run, not per task. At the
largest size a new batch folder of 10% more mosaics is added and run, then the same again with
nothing new. Every run is written to ``--json`` as soon as it ends, and the log-log plot of seconds
against photos per stage is redrawn (bench/scale_plot.py). Outside CI: hours at the default sizes.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

from .dag import run_dag_measured, task_seconds
from .mosaics import generate_pool, link_photos
from .scale_plot import plot_scale


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=Path("../shared/data/flickr30k_sample/images"),
                        help="the real photos the mosaics are made of")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000, 32000])
    parser.add_argument("--extra", type=float, default=0.1, help="share of new photos in the run after the largest")
    parser.add_argument("--out", type=Path, default=Path("build/bench-scale"), help="mosaic pool and run folders")
    parser.add_argument("--json", type=Path, help="default: OUT/scale.json")
    parser.add_argument("--plot", type=Path, default=Path("docs/bench-scale.png"))
    parser.add_argument("--seed", type=int, default=0, help="of the mosaics")
    parser.add_argument("--embed-weights", default="none",
                        help="none: random weights, same graph and cost (machines without internet)")
    parser.add_argument("--cold-only", action="store_true", help="no +10%% and no-op runs after the largest size")
    parser.add_argument("--append", action="store_true",
                        help="keep the runs already in --json (a run of the same kind and size is replaced)")
    parser.add_argument("--run-args", default="", help="more `emotion-pipeline run` options, space-separated")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sizes = sorted(set(args.sizes))
    largest, extra = sizes[-1], max(1, round(sizes[-1] * args.extra))
    settings = ["--embed-weights", args.embed_weights, *args.run_args.split()]
    json_path = args.json or args.out / "scale.json"
    pool = args.out / "pool"
    count = largest if args.cold_only else largest + extra
    print(f"mosaics 0..{count - 1} into {pool}", file=sys.stderr, flush=True)
    generate_pool(args.photos, pool, count, seed=args.seed)
    results = {"machine": machine(), "started": now(), "sizes": sizes, "settings": settings,
               "memory": "peak RSS of the run's process (every task runs in it: dag.test), per run", "runs": []}
    if args.append and json_path.exists():
        results = {**json.loads(json_path.read_text()), "settings": settings}
    for size in sizes:
        source, work = fresh_folders(args.out, size)
        link_photos(pool, source, 0, size)
        record(results, "cold", size, source, work, settings)
        save(results, json_path, args.plot)
    if not args.cold_only:
        link_photos(pool, source / "batch2", largest, largest + extra)  # a new batch lands in its own folder
        record(results, "extra", extra, source, work, settings, total=largest + extra)
        save(results, json_path, args.plot)
        record(results, "no-op", 0, source, work, settings, total=largest + extra)
    results["finished"] = now()
    save(results, json_path, args.plot)


def fresh_folders(out: Path, size: int) -> tuple[Path, Path]:
    """This size's source folder and run folder, emptied: a cold run starts from nothing."""
    source, work = out / f"photos-{size}", out / "runs" / f"size-{size}"
    for folder in (source, work):
        shutil.rmtree(folder, ignore_errors=True)
    return source, work


def record(results: dict, kind: str, new: int, source: Path, work: Path, settings: list[str],
           total: int | None = None) -> None:
    """Run the DAG once and append what it cost; ``new`` photos are the run's work, ``total`` the source's."""
    total = total or new
    name = f"{kind}-{total}"
    load_before = os.getloadavg()[0]
    print(f"{name}: {new} new photos of {total}, log {work / f'run-{name}.log'}", file=sys.stderr, flush=True)
    seconds, summary, peak_mib = run_dag_measured(source, work, name, settings)
    tasks = task_seconds(summary)
    run = {"kind": kind, "photos": total, "new_photos": new, "seconds": round(seconds, 1),
           "airflow_seconds": summary["seconds"], "peak_rss_mib": round(peak_mib),
           "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],
           "tasks": {task: round(s, 1) for task, s in tasks.items()},
           "mapped_instances": mapped_instances(summary),
           "photos_per_s": {task: round(new / s, 2) for task, s in tasks.items() if new and s > 0},
           "statuses": summary["statuses"], "labels": summary["labels"],
           "model": summary["model"], "dedupe": dedupe_verdicts(work / "root")}
    results["runs"] = [r for r in results["runs"] if (r["kind"], r["photos"]) != (kind, total)] + [run]
    print(f"{name}: {seconds:.0f} s, peak {peak_mib:.0f} MiB, "
          + ", ".join(f"{t} {s:.0f} s" for t, s in tasks.items()), file=sys.stderr, flush=True)


def mapped_instances(summary: dict) -> dict[str, int]:
    counts: dict[str, int] = {}
    for task in summary["tasks"]:
        if task["map_index"] >= 0:
            counts[task["task"]] = counts.get(task["task"], 0) + 1
    return counts


def dedupe_verdicts(root: Path) -> dict:
    """The near-duplicate stage's verdicts on the mosaics: how many it flagged, and which."""
    import pandas as pd

    from emotion_pipeline.core import catalog

    table_path = root / f"{catalog.NEAR_DUPLICATES}.parquet"
    if not table_path.exists():
        return {"hashed": 0, "near_duplicates": 0, "flagged": []}
    table = pd.read_parquet(table_path)
    flagged = table[table["status"] == "near_duplicate"]
    return {"hashed": len(table), "near_duplicates": len(flagged),
            "flagged": [{"photo": k, "duplicate_of": d, "bits": int(b)}
                        for k, d, b in zip(flagged["source_key"], flagged["duplicate_of"], flagged["distance"])]}


def slopes(runs: list[dict]) -> dict[str, float]:
    """Per task, the least-squares slope of log(seconds) against log(photos) over the cold runs:
    1 is linear, above 1 grows faster than the photos."""
    cold = [r for r in runs if r["kind"] == "cold"]
    tasks = {t for r in cold for t in r["tasks"]} | {"whole run"}
    result = {}
    for task in sorted(tasks):
        points = [(math.log(r["photos"]), math.log(r["seconds"] if task == "whole run" else r["tasks"].get(task, 0)))
                  for r in cold if (r["seconds"] if task == "whole run" else r["tasks"].get(task, 0)) > 0]
        if len({x for x, _ in points}) >= 2:
            mean_x = sum(x for x, _ in points) / len(points)
            mean_y = sum(y for _, y in points) / len(points)
            result[task] = round(sum((x - mean_x) * (y - mean_y) for x, y in points)
                                 / sum((x - mean_x) ** 2 for x, _ in points), 2)
    return result


def ratios(runs: list[dict]) -> dict[str, float]:
    """The +10% and no-op runs' seconds against the cold run of the photos they started from (the
    largest size; targets < 5% and < 1%)."""
    cold = {r["photos"]: r for r in runs if r["kind"] == "cold"}
    extra = next((r for r in runs if r["kind"] == "extra"), None)
    base = cold.get(extra["photos"] - extra["new_photos"]) if extra else None
    return {run["kind"]: round(run["seconds"] / base["seconds"], 3)
            for run in runs if base and run["kind"] in ("extra", "no-op")}


def save(results: dict, json_path: Path, plot_path: Path) -> None:
    results["slopes"] = slopes(results["runs"])
    results["ratios_to_largest_cold"] = ratios(results["runs"])
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2, default=str))
    if sum(r["kind"] == "cold" for r in results["runs"]) >= 1:
        plot_scale(results, plot_path)


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cores": os.cpu_count(), "cpu": cpu, "memory_gib": round(memory),
            "gpu": shutil.which("nvidia-smi") is not None, "python": platform.python_version()}


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


if __name__ == "__main__":
    main()
