"""What every benchmark section shares: photo sets, side-by-side timing, peak RSS, the printed table.

Timings on shared machines are noisy, so a section never reports one absolute time: the baseline and
the pipeline run alternately on the same chunks of photos in one process, and each row reports the
median photos/s of both and the median of the per-chunk ratios.
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps


@dataclass
class Row:
    section: str
    measure: str
    baseline: str  # what the pipeline is compared with, and its figure
    pipeline: str
    ratio: float | None
    target: str
    met: bool | None
    notes: dict = field(default_factory=dict)


def iou(a: tuple, b: tuple) -> float:
    """Intersection over union of two (x, y, w, h) boxes: 0 apart, 1 the same box."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = w * h
    return inter / max(aw * ah + bw * bh - inter, 1e-9)


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def side_by_side(chunks: list, baseline: Callable, pipeline: Callable, **variants: Callable) -> dict:
    """Run baseline(chunk), then pipeline(chunk) and each variant(chunk), for every chunk.

    ``chunks`` is a list of (n_photos, argument) pairs. Alternating keeps every side exposed to the
    same background load, so the ratios survive a noisy machine better than any absolute figure.
    Returns medians: ``baseline_per_s``, and ``per_s`` / ``ratio`` (baseline time / its time) for
    ``pipeline`` and each variant by name.
    """
    sides = {"pipeline": pipeline, **variants}
    base_rates: list[float] = []
    rates: dict[str, list[float]] = {name: [] for name in sides}
    ratios: dict[str, list[float]] = {name: [] for name in sides}
    for n, chunk in chunks:
        base_s, _ = timed(lambda: baseline(chunk))
        base_rates.append(n / base_s)
        for name, fn in sides.items():
            seconds, _ = timed(lambda: fn(chunk))
            rates[name].append(n / seconds)
            ratios[name].append(base_s / seconds)
    result = {"baseline_per_s": statistics.median(base_rates), "chunks": len(chunks)}
    for name in sides:
        result[name] = {"per_s": statistics.median(rates[name]), "ratio": statistics.median(ratios[name])}
    return result


def distinct_photos(src: Path, dst: Path, n: int, first: int = 0) -> list[Path]:
    """Photos ``first``..``n - 1`` of a set with distinct content made from the real ones in ``src``:
    beyond their number, each extra photo is a mirrored / slightly cropped copy (the pipeline would
    skip a byte-identical copy as a duplicate, which would make a larger set cost nothing)."""
    originals = sorted(src.glob("*.jpg"))
    dst.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(first, n):
        original = originals[i % len(originals)]
        variant = i // len(originals)
        target = dst / (original.name if variant == 0 else f"{original.stem}_v{variant}.jpg")
        if not target.exists():
            if variant == 0:
                shutil.copy2(original, target)
            else:
                with Image.open(original) as image:
                    copy = ImageOps.mirror(image) if variant % 2 else image.copy()
                    copy.crop((variant, variant, copy.width - variant, copy.height - variant)).save(target, quality=92)
        out.append(target)
    return out


# Started from a fresh, small Python: a child forked straight from this benchmark process would count
# this process's own resident memory (TensorFlow loaded, ~1-2 GiB) in its peak, since Linux keeps the
# pre-exec high-water mark in ru_maxrss.
_MEASURE = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(child.pid, 0)
print(usage.ru_maxrss, os.waitstatus_to_exitcode(status))
"""


def peak_rss_mib(command: list[str], env: dict | None = None) -> tuple[float, float]:
    """Run ``command`` as a child process; (its peak resident memory in MiB, seconds)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _MEASURE, *command], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - start
    max_rss_kib, returncode = (int(v) for v in done.stdout.split()[-2:])
    if returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({returncode}): {done.stderr[-3000:]}")
    return max_rss_kib / 1024, seconds  # ru_maxrss is in KiB on Linux


def print_table(rows: list[Row]) -> str:
    """A Markdown table (pasteable into the README) of every row; returns it."""
    lines = ["| section | measure | baseline | pipeline | ratio | target | met |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "" if r.ratio is None else f"{r.ratio:.2f}"
        met = "" if r.met is None else ("yes" if r.met else "**no**")
        lines.append(f"| {r.section} | {r.measure} | {r.baseline} | {r.pipeline} | {ratio} | {r.target} | {met} |")
    text = "\n".join(lines)
    print(text, flush=True)
    return text
