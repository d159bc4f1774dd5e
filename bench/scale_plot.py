"""The log-log plot of `make bench-scale`: seconds against photos, one line per stage (cold runs).

    python -m bench.scale_plot build/bench-scale/scale.json docs/bench-scale.png
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

MIN_SECONDS = 0.5  # tasks that never took this long at any size are left out: noise, not a trend


def plot_scale(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    cold = sorted((r for r in results["runs"] if r["kind"] == "cold"), key=lambda r: r["photos"])
    photos = [r["photos"] for r in cold]
    tasks = sorted({t for r in cold for t in r["tasks"] if r["tasks"][t] >= MIN_SECONDS},
                   key=lambda t: -max(r["tasks"].get(t, 0) for r in cold))
    figure, axes = plt.subplots(figsize=(8, 5.5))
    axes.set_prop_cycle(color=plt.get_cmap("tab20").colors)  # more stages than tab10's ten colours
    axes.plot(photos, [r["seconds"] for r in cold], "k-o", linewidth=2.5, label="whole run")
    for task in tasks:
        slope = results.get("slopes", {}).get(task)
        label = task if slope is None else f"{task} (slope {slope:.2f})"
        axes.plot(photos, [max(r["tasks"].get(task, 0), 0.05) for r in cold], "-o", label=label)
    if len(photos) > 1:  # a linear trend through the first whole run, for the eye
        first = cold[0]["seconds"]
        axes.plot(photos, [first * p / photos[0] for p in photos], "k:", label="linear (slope 1)")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("photos (cold run)")
    axes.set_ylabel("seconds (mapped instances summed)")
    cores = results.get("machine", {}).get("cores")
    axes.set_title(f"emotion_pipeline DAG, cold runs on {cores} cores ({results.get('started', '')[:10]})")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7, loc="upper left", ncol=2)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    plot_scale(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
