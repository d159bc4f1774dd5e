"""Each shard stage against what a user would otherwise write, on the same photos in one process.

* resize: the pipeline's ``resize_shard`` vs a plain Pillow loop (open, convert, resize, save);
* annotate: ``annotate_shard`` vs ``DeepFace.analyze`` per photo with the same detector and weights,
  plus how often both give the same dominant emotion on the same face;
* embed: ``embed_shard`` (reading photos from storage) vs ResNet50 on random tensors already in memory
  at the same batch sizes: the compute limit.

The photos are split into shards of ``chunk`` photos; shard k of the pipeline and the baseline on the
same photos run back to back (bench/common.py: side_by_side).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from emotion_pipeline.core import catalog
from emotion_pipeline.core.config import EMOTIONS, PipelineConfig
from emotion_pipeline.core.manifest import load_manifest
from emotion_pipeline.core.storage import open_storage
from emotion_pipeline.modeling.embedding import image_vectors, resnet50
from emotion_pipeline.stages import annotate, embed, resize
from emotion_pipeline.stages.discover import discover_images

from .common import Row, side_by_side


def discovered_root(source: Path, root: Path, chunk: int, **settings) -> tuple[PipelineConfig, dict[int, list[str]]]:
    """A fresh root with the photos discovered into shards of ``chunk``; (config, {shard: source keys})."""
    shutil.rmtree(root, ignore_errors=True)
    config = PipelineConfig(source=str(source), root=str(root), shard_size=chunk, **settings)
    discover_images(config)
    manifest = load_manifest(open_storage(str(root)))
    return config, {int(s): sorted(g["source_key"]) for s, g in manifest.groupby("shard")}


# -- resize ----------------------------------------------------------------------------------------

def pillow_loop(source: Path, keys: list[str], out: Path) -> None:
    """What a user writes first: one photo after another, in one process."""
    out.mkdir(parents=True, exist_ok=True)
    for key in keys:
        with Image.open(source / key) as image:
            image.convert("RGB").resize((224, 224)).save(out / Path(key).with_suffix(".jpg").name)


def bench_resize(source: Path, work: Path, chunk: int, repeats: int) -> Row:
    chunks = []
    for r in range(repeats):  # resize is fast: several fresh roots give enough chunks for a median
        config, shards = discovered_root(source, work / f"resize-{r}", chunk)
        chunks += [(len(keys), (config, shard, keys, work / f"pillow-{r}-{shard}")) for shard, keys in shards.items()]
    result = side_by_side(
        chunks,
        baseline=lambda c: pillow_loop(source, c[2], c[3]),
        pipeline=lambda c: resize.resize_shard(c[0], c[1]),
    )
    mine = result["pipeline"]
    return Row("resize", f"photos/s, {len(chunks)} chunks of <= {chunk}, {config.threads} threads",
               f"Pillow loop {result['baseline_per_s']:.0f}/s", f"{mine['per_s']:.0f}/s",
               mine["ratio"], ">= 1.8x", mine["ratio"] >= 1.8, result)


# -- annotate --------------------------------------------------------------------------------------

def analyze_loop(source: Path, keys: list[str], detector: str, found: dict) -> None:
    """DeepFace.analyze per photo, emotion only, the same detector; no face -> no result."""
    from deepface import DeepFace

    for key in keys:
        try:
            found[key] = DeepFace.analyze(str(source / key), actions=("emotion",), detector_backend=detector,
                                          enforce_detection=True, align=True, silent=True)
        except ValueError:  # DeepFace's "Face could not be detected"
            found[key] = []


def bench_annotate(source: Path, work: Path, chunk: int, detector: str) -> tuple[Row, PipelineConfig]:
    config, shards = discovered_root(source, work / "annotate", chunk, detector=detector)
    for shard in shards:
        resize.resize_shard(config, shard)
    warm = {}  # both sides build their models before the clock starts (DeepFace caches them per process)
    analyze_loop(source, shards[0][:1], detector, warm)
    from emotion_pipeline.labelling.faces import build_models, face_detector
    build_models(config.actions)
    face_detector(detector)

    found: dict[str, list] = {}
    result = side_by_side(
        [(len(keys), (shard, keys)) for shard, keys in shards.items()],
        baseline=lambda c: analyze_loop(source, c[1], detector, found),
        pipeline=lambda c: annotate.annotate_shard(config, c[0]),
    )
    mine = {**result["pipeline"], **agreement(config, shards, found)}
    return Row("annotate", f"photos/s, detector {detector}, {result['chunks']} chunks of <= {chunk}",
               f"DeepFace.analyze loop {result['baseline_per_s']:.2f}/s",
               f"{mine['per_s']:.2f}/s; same emotion on {100 * mine['same_dominant']:.1f}% of "
               f"{mine['faces_matched']} faces, largest score gap {mine['largest_score_gap']:.2g} pts",
               mine["ratio"], ">= 3x, >= 99.5% same emotion", mine["ratio"] >= 3 and mine["same_dominant"] >= 0.995,
               {"baseline_per_s": result["baseline_per_s"], **mine}), config


def agreement(config: PipelineConfig, shards: dict[int, list[str]], found: dict[str, list]) -> dict:
    """Match each face of the analyze loop to the pipeline's face with the most overlap (IoU >= 0.5)."""
    root = open_storage(config.root)
    faces = pd.concat([pd.read_parquet(root.uri_for(f"{catalog.faces(s)}.parquet")) for s in shards])
    matched = same = 0
    largest_diff = 0.0
    unmatched = 0
    for key, results in found.items():
        mine = faces[faces["source_key"] == key]
        for theirs in results:
            r = theirs["region"]
            ious = [iou((r["x"], r["y"], r["w"], r["h"]), (f.x, f.y, f.w, f.h)) for f in mine.itertuples()]
            if not ious or max(ious) < 0.5:
                unmatched += 1
                continue
            face = mine.iloc[int(np.argmax(ious))]
            matched += 1
            same += face["dominant_emotion"] == theirs["dominant_emotion"]
            diffs = [abs(face[f"emotion_{e}"] - theirs["emotion"][e]) for e in EMOTIONS]
            largest_diff = max(largest_diff, float(max(diffs)))
    return {"faces_matched": matched, "faces_unmatched": unmatched, "same_dominant": same / max(matched, 1),
            "largest_score_gap": largest_diff}


def iou(a: tuple, b: tuple) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = w * h
    return inter / max(aw * ah + bw * bh - inter, 1)


# -- embed -----------------------------------------------------------------------------------------

def bench_embed(config: PipelineConfig, batch_size: int, mixed_precision: bool, label: str) -> Row:
    """On the annotated root of bench_annotate: the stage vs the model alone on in-memory tensors."""
    config = config.replace(embed_batch_size=batch_size, mixed_precision=mixed_precision)
    root = open_storage(config.root)
    shards = sorted(int(s) for s in load_manifest(root)["shard"].unique())
    model = resnet50(config.embed_weights, config.mixed_precision)
    rng = np.random.default_rng(0)
    chunks = []
    for shard in shards:
        notes = pd.read_parquet(root.uri_for(f"{catalog.annotations(shard)}.parquet"))
        n = int(notes["status"].isin(["ok", "no_face"]).sum())
        tensors = rng.integers(0, 256, size=(n, 224, 224, 3), dtype=np.uint8)  # in memory before the clock
        chunks.append((n, (shard, tensors)))
    image_vectors(model, chunks[0][1][1][:batch_size], batch_size)  # warm up: graph traced, weights touched

    def limit(c) -> None:
        tensors = c[1]
        for start in range(0, len(tensors), batch_size):
            image_vectors(model, tensors[start:start + batch_size], batch_size)

    def stage(c) -> None:
        root.delete(catalog.done_marker(catalog.EMBED_FOLDER, c[0]))  # embed again, whatever ran before
        embed.embed_shard(config, c[0])

    result = side_by_side(chunks, baseline=limit, pipeline=stage)
    mine = result["pipeline"]
    return Row(label, f"photos/s, batch {batch_size}, weights={config.embed_weights}",
               f"ResNet50 on in-memory tensors {result['baseline_per_s']:.1f}/s", f"{mine['per_s']:.1f}/s",
               mine["ratio"], ">= 0.9 of the limit", mine["ratio"] >= 0.9, result)
