"""Distinct photos at any count, made from the real ones: mosaics of three sample photos each.

The shared sample has 400 genuine Flickr30k photos; a scale benchmark needs tens of thousands that
the pipeline treats as new (other bytes, other content ids) and that its near-duplicate stage does not
flag (perceptual hashes more than 10 bits apart). Each mosaic puts two sample photos side by side (or
one above the other) over a third one enlarged as the backdrop, each at a random scale (0.55-0.8)
and offset within its half, mirrored at random: faces stay real photos' faces, and the pictures
differ enough that the hashes do (on a plain background, 27 of 2,200 mosaics were within 10 bits of
another: the layout alone set the hash).

Mosaic ``i`` depends only on the sample and (seed, i), so one pool folder serves every size by prefix
(``mosaic-000000.jpg`` ...) and is generated once.
"""
from __future__ import annotations

import os
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image, ImageOps

CELL = 400  # side of each half of the canvas, pixels: the sample's photos are about 500 x 375
SCALES = (0.55, 0.8)  # of the photo's own size; smaller would shrink its faces below what detectors find
QUALITY = 90


def mosaic_name(index: int) -> str:
    return f"mosaic-{index:06d}.jpg"


def make_mosaic(originals: list[Path], index: int, seed: int = 0) -> Image.Image:
    """Mosaic ``index``: two distinct sample photos, each scaled, mirrored and placed at random."""
    rng = random.Random(seed * 1_000_003 + index)  # per mosaic: the same picture whatever the pool's size
    backdrop, first, second = rng.sample(range(len(originals)), 3)
    side_by_side = rng.random() < 0.5
    size = (2 * CELL, CELL) if side_by_side else (CELL, 2 * CELL)
    with Image.open(originals[backdrop]) as photo:
        canvas = _backdrop(photo.convert("RGB"), size, rng)
    for cell, which in enumerate((first, second)):
        with Image.open(originals[which]) as photo:
            tile = _scaled_tile(photo.convert("RGB"), rng)
        x0, y0 = (cell * CELL, 0) if side_by_side else (0, cell * CELL)
        x = x0 + rng.randint(0, CELL - tile.width)
        y = y0 + rng.randint(0, CELL - tile.height)
        canvas.paste(tile, (x, y))
    return canvas


def _backdrop(photo: Image.Image, size: tuple[int, int], rng: random.Random) -> Image.Image:
    """A third photo, cropped at random to the canvas's shape and filling it: a plain background
    would leave the layout alone to set the hash's low frequencies, and layouts repeat."""
    scale = max(size[0] / photo.width, size[1] / photo.height) * rng.uniform(1.0, 1.3)
    big = photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.Resampling.BILINEAR)
    x, y = rng.randint(0, big.width - size[0]), rng.randint(0, big.height - size[1])
    return big.crop((x, y, x + size[0], y + size[1]))


def _scaled_tile(photo: Image.Image, rng: random.Random) -> Image.Image:
    """The photo at a random scale, never larger than one cell, mirrored half of the time."""
    scale = min(rng.uniform(*SCALES), CELL / max(photo.size))
    tile = photo.resize((max(1, round(photo.width * scale)), max(1, round(photo.height * scale))),
                        Image.Resampling.LANCZOS)
    return ImageOps.mirror(tile) if rng.random() < 0.5 else tile


def _write_range(args: tuple[list[Path], Path, int, int, int]) -> int:
    originals, pool, start, stop, seed = args
    for index in range(start, stop):
        target = pool / mosaic_name(index)
        if not target.exists():
            temporary = target.with_suffix(".tmp")  # a killed run never leaves a half-written mosaic
            make_mosaic(originals, index, seed).save(temporary, format="JPEG", quality=QUALITY)
            temporary.rename(target)
    return stop - start


def generate_pool(sample: Path, pool: Path, count: int, seed: int = 0, workers: int | None = None) -> None:
    """Mosaics 0..count-1 into ``pool`` (those already there are kept), with progress on stderr."""
    originals = sorted(sample.glob("*.jpg"))
    if len(originals) < 2:
        raise ValueError(f"{sample} has {len(originals)} photos; mosaics need at least 2")
    pool.mkdir(parents=True, exist_ok=True)
    missing = [i for i in range(count) if not (pool / mosaic_name(i)).exists()]
    if not missing:
        return
    chunk = 200
    ranges = [(originals, pool, start, min(start + chunk, count), seed)
              for start in range(min(missing), count, chunk)]
    started, done = time.perf_counter(), 0
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1) as executor:
        for made in executor.map(_write_range, ranges):
            done += made
            rate = done / (time.perf_counter() - started)
            print(f"\rmosaics: {done}/{count - min(missing)} ({rate:.0f}/s)", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)


def link_photos(pool: Path, folder: Path, start: int, stop: int) -> None:
    """Mosaics start..stop-1 of the pool into ``folder`` as hard links (no copy, same bytes)."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(start, stop):
        target = folder / mosaic_name(index)
        if not target.exists():
            os.link(pool / mosaic_name(index), target)
