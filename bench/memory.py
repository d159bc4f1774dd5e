"""Peak resident memory of each stage's own process, for a shard of 100 and a shard of 1,000 photos.

Each stage runs as `emotion-pipeline stage <name>`, the way an Airflow worker runs one task, and its
peak RSS comes from the kernel (wait4). Target: the same order for both sizes, i.e. memory bounded
by the batch sizes, not by the shard or the dataset.
"""
from __future__ import annotations

import sys
from pathlib import Path

from emotion_pipeline.core import catalog
from emotion_pipeline.core.storage import open_storage

from .common import Row, distinct_photos, peak_rss_mib

CLI = str(Path(sys.executable).parent / "emotion-pipeline")
STAGES = (["discover"], ["resize", "--shard", "0"], ["annotate", "--shard", "0"], ["check_drift"], ["merge"],
          ["embed", "--shard", "0"], ["assemble_features"], ["train"])


def stage_peaks(photos: Path, work: Path, n: int, settings: list[str]) -> dict[str, float]:
    source = work / f"photos-{n}"
    distinct_photos(photos, source, n)
    args = ["--source", str(source), "--root", str(work / f"root-{n}"), "--shard-size", str(n), *settings]
    peaks = {stage[0]: peak_rss_mib([CLI, "stage", *stage, *args])[0] for stage in STAGES}
    # A train stage with too few labelled photos returns before TensorFlow loads: its peak would be
    # no training's (yunet finds a face in 17 of 100 sample photos, too few for every split).
    trained = (catalog.read_done(open_storage(str(work / f"root-{n}")), catalog.TRAIN_FOLDER) or {}).get("summary", {})
    if not trained.get("trained"):
        raise RuntimeError(f"train did not train on {n} photos ({trained.get('reason')}): choose another "
                           f"--memory-detector or more photos")
    return peaks


def bench_memory(photos: Path, work: Path, settings: list[str], sizes=(100, 1000)) -> list[Row]:
    small, large = (stage_peaks(photos, work, n, settings) for n in sizes)
    rows = []
    for stage in small:
        growth = large[stage] / small[stage]
        rows.append(Row("memory", f"peak RSS of `stage {stage}`, shard of {sizes[0]} -> {sizes[1]}",
                        f"{small[stage]:.0f} MiB", f"{large[stage]:.0f} MiB", growth, "same order (< 2x)",
                        growth < 2))
    return rows
