"""The whole-dataset stages at 10k-300k rows, from generated upstream tables (issue 28, the rows half).

    python -m bench.scale_rows --rows 10000 30000 100000 300000 --out build/bench-scale/rows.json

For each row count, in a fresh root: tiny distinct photos in a source folder, discover (cold: lists
and hashes them), then the per-shard stages' outputs generated (``bench.rows_data``: random 2048-d
float32 vectors, labels drawn with a recorded mix), then discover again (nothing new: listing and
the done-marker checks), dedupe, check_drift, merge, assemble_features, train and evaluate. Each stage
runs through ``runner.run_stage`` in a fresh Python process of its own (``bench.rows_stage``), so its
peak RSS (the kernel's, via wait4) is that stage's alone; its seconds are measured inside the child,
around ``run_stage`` (imports left out). The log-log slope between consecutive sizes says how each
stage grows: 1 is linear, 2 quadratic; above ~1.15 is flagged.

``--train-max-rows`` (default 100,000) skips train and evaluate above it (a stated budget: on 2
cores a search over 300k rows is not what this bench is for); skipped cells say so, never a number.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import sys
import time
from pathlib import Path

from emotion_pipeline.core.config import PipelineConfig
from emotion_pipeline.core.storage import open_storage

from .common import peak_rss_mib
from .rows_data import LABEL_MIX, STATUS_MIX, write_source, write_upstream

STAGES = ("discover", "discover_rerun", "dedupe", "check_drift", "merge", "assemble_features", "train", "evaluate")
TRAINING = ("train", "evaluate")
SLOPE_FLAG = 1.15


def settings(work: Path) -> dict:
    """The config every stage of one size runs with (written for the children to read)."""
    return {"source": str(work / "source"), "root": str(work / "root"), "shard_size": 1000,
            "embed_weights": "none", "threads": 2, "shap_images": 1}


def measure(work: Path, name: str) -> dict:
    """One stage in a child process: its seconds (inside the child) and peak RSS (MiB)."""
    result_file = work / f"{name}.json"
    command = [sys.executable, "-m", "bench.rows_stage", str(work / "config.json"), name, str(result_file)]
    peak, wall = peak_rss_mib(command, env={"EMOTION_PIPELINE_HOME": str(work / "home")})
    result = json.loads(result_file.read_text())
    print(f"  {name}: {result['seconds']:.1f} s, peak {peak:.0f} MiB (process {wall:.1f} s)", flush=True)
    return {"seconds": result["seconds"], "peak_mib": peak, "process_seconds": wall, "result": result["result"]}


def one_size(rows: int, base: Path, train_max_rows: int) -> dict:
    """Every stage at ``rows`` rows, in a fresh work folder."""
    work = base / f"rows-{rows}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    config = settings(work)
    (work / "config.json").write_text(json.dumps(config))
    print(f"{rows} rows: writing the source", flush=True)
    start = time.perf_counter()
    write_source(work / "source", rows)
    out: dict = {"source_seconds": time.perf_counter() - start, "stages": {}}
    out["stages"]["discover"] = measure(work, "discover")
    start = time.perf_counter()
    out["shards"] = write_upstream(PipelineConfig.from_mapping(config), open_storage(config["root"]))
    out["generate_seconds"] = time.perf_counter() - start
    for name in STAGES[1:]:
        if name in TRAINING and rows > train_max_rows:
            out["stages"][name] = {"skipped": f"over --train-max-rows {train_max_rows}"}
            continue
        out["stages"][name] = measure(work, name)
    shutil.rmtree(work / "source", ignore_errors=True)  # 300k files: keep the disk for the next size
    return out


def slopes(sizes: list[int], results: dict) -> dict:
    """Per stage, the log-log slope of seconds (and of peak memory) between consecutive sizes."""
    out: dict = {}
    for name in STAGES:
        pairs = []
        for a, b in zip(sizes, sizes[1:]):
            ra, rb = results[str(a)]["stages"].get(name, {}), results[str(b)]["stages"].get(name, {})
            if "seconds" in ra and "seconds" in rb:
                pairs.append({"from": a, "to": b,
                              "seconds": math.log(rb["seconds"] / ra["seconds"]) / math.log(b / a),
                              "memory": math.log(rb["peak_mib"] / ra["peak_mib"]) / math.log(b / a)})
        out[name] = pairs
    return out


def table(sizes: list[int], results: dict, slope: dict) -> str:
    """Markdown: stage x rows (seconds / peak MiB), then the slopes of seconds."""
    lines = ["| stage | " + " | ".join(f"{n:,} rows" for n in sizes) + " | slope (s) | slope (mem) |",
             "|---|" + "---:|" * (len(sizes) + 2)]
    for name in STAGES:
        cells = []
        for n in sizes:
            r = results[str(n)]["stages"].get(name, {})
            cells.append(f"{r['seconds']:.1f} s / {r['peak_mib']:,.0f} MiB" if "seconds" in r else "not run")
        time_slopes = ", ".join(f"{p['seconds']:.2f}" + (" **!**" if p["seconds"] > SLOPE_FLAG else "")
                                for p in slope[name])
        memory_slopes = ", ".join(f"{p['memory']:.2f}" for p in slope[name])
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {time_slopes} | {memory_slopes} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[10000, 30000, 100000, 300000])
    parser.add_argument("--out", type=Path, default=Path("build/bench-scale/rows.json"))
    parser.add_argument("--work", type=Path, default=Path("build/bench-scale/rows-work"))
    parser.add_argument("--train-max-rows", type=int, default=100000)
    args = parser.parse_args()
    results = {str(n): one_size(n, args.work, args.train_max_rows) for n in args.rows}
    slope = slopes(args.rows, results)
    text = table(args.rows, results, slope)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": f"{platform.node()} {platform.processor()}", "rows": args.rows,
                                    "status_mix": STATUS_MIX, "label_mix": {str(k): v for k, v in LABEL_MIX.items()},
                                    "results": results, "slopes": slope, "table": text}, indent=2, default=str))


if __name__ == "__main__":
    main()
