"""Each shard stage against what a user would otherwise write, on the same photos in one process.

* resize: the pipeline's ``run_stage("resize", ...)`` vs a plain Pillow loop (open, convert, resize, save);
* annotate: ``run_stage("annotate", ...)`` vs ``DeepFace.analyze`` per photo with the same detector and weights,
  plus how often both give the same dominant emotion on the same face;
* annotate with both teachers vs DeepFace alone (``bench_annotate_teachers``): what the second
  teacher costs;
* embed: ``run_stage("embed", ...)`` (reading photos from storage) vs ResNet50 on random tensors already in memory
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
from emotion_pipeline.core.runner import run_stage
from emotion_pipeline.core.storage import open_storage
from emotion_pipeline.modeling.embedding import image_vectors, resnet50

from .common import Row, iou, side_by_side


def discovered_root(source: Path, root: Path, chunk: int, **settings) -> tuple[PipelineConfig, dict[int, list[str]]]:
    """A fresh root with the photos discovered into shards of ``chunk``; (config, {shard: source keys})."""
    shutil.rmtree(root, ignore_errors=True)
    config = PipelineConfig(source=str(source), root=str(root), shard_size=chunk, **settings)
    run_stage("discover", config)
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
        pipeline=lambda c: run_stage("resize", c[0], c[1]),
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
        run_stage("resize", config, shard)
    warm = {}  # both sides build their models before the clock starts (DeepFace caches them per process)
    analyze_loop(source, shards[0][:1], detector, warm)
    from emotion_pipeline.labelling.faces import build_models, face_detector
    build_models(config.actions)
    face_detector(detector)

    found: dict[str, list] = {}
    result = side_by_side(
        [(len(keys), (shard, keys)) for shard, keys in shards.items()],
        baseline=lambda c: analyze_loop(source, c[1], detector, found),
        pipeline=lambda c: run_stage("annotate", config, c[0]),
    )
    mine = {**result["pipeline"], **agreement(config, shards, found)}
    return Row("annotate", f"photos/s, detector {detector}, {result['chunks']} chunks of <= {chunk}",
               f"DeepFace.analyze loop {result['baseline_per_s']:.2f}/s",
               f"{mine['per_s']:.2f}/s; same emotion on {100 * mine['same_dominant']:.1f}% of "
               f"{mine['faces_matched']} faces, largest score gap {mine['largest_score_gap']:.2g} pts",
               # YuNet is not DeepFace's YuNet wrapper (the photo at its own size, not framed and shrunk
               # to 640 px): other boxes, so other crops; the faces both find are compared all the same.
               mine["ratio"], ">= 3x" if detector == "yunet" else ">= 3x, >= 99.5% same emotion",
               mine["ratio"] >= 3 and (detector == "yunet" or mine["same_dominant"] >= 0.995),
               {"baseline_per_s": result["baseline_per_s"], **mine}), config


_STARTUP = """
import json, sys, time
start = time.perf_counter()
from emotion_pipeline.labelling import faces
imported = time.perf_counter()
faces.build_models(("emotion",))
built = time.perf_counter()
faces.face_detector(sys.argv[1])
print(json.dumps({"import": imported - start, "emotion model": built - imported,
                  "detector": time.perf_counter() - built}))
"""


def startup_seconds(detector: str) -> dict[str, float]:
    """What a fresh worker pays before its first photo: imports, the emotion model, the detector."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _STARTUP, detector], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_annotate_detectors(source: Path, work: Path, chunk: int, detector: str,
                             baseline: str = "mtcnn") -> list[Row]:
    """Annotate with ``detector`` against annotate with ``baseline`` (today's MTCNN), side by side on
    the same shards in one process, models built before the clock; and, apart, in a fresh process
    each, what a worker pays once before its first photo (imports, the emotion model, the detector):
    the fixed start-up cost that hides part of the gain on a small shard."""
    from emotion_pipeline.labelling import faces

    faces.build_models(("emotion",))
    configs = {}
    for name in (baseline, detector):
        faces.face_detector(name)
        configs[name], shards = discovered_root(source, work / f"annotate-{name}", chunk, detector=name)
        for shard in shards:
            run_stage("resize", configs[name], shard)
    result = side_by_side(
        [(len(keys), shard) for shard, keys in shards.items()],
        baseline=lambda shard: run_stage("annotate", configs[baseline], shard),
        pipeline=lambda shard: run_stage("annotate", configs[detector], shard),
    )
    mine = result["pipeline"]
    labelled = {name: _labelled(configs[name], shards) for name in configs}
    startup = {name: startup_seconds(name) for name in (baseline, detector)}
    rows = [Row(f"annotate ({detector} vs {baseline})",
                f"photos/s, the stage with each detector, {result['chunks']} chunks of <= {chunk}",
                f"annotate with {baseline} {result['baseline_per_s']:.2f}/s "
                f"({labelled[baseline]} photos labelled)",
                f"{mine['per_s']:.2f}/s ({labelled[detector]} photos labelled)",
                mine["ratio"], ">= 3x", mine["ratio"] >= 3, {**result, "labelled": labelled})]
    rows.append(Row("annotate start-up", "seconds a fresh worker pays once (imports, emotion model, detector), "
                                         "not in the rates above",
                    f"{baseline}: {sum(startup[baseline].values()):.1f} s (detector "
                    f"{startup[baseline]['detector']:.1f} s)",
                    f"{detector}: {sum(startup[detector].values()):.1f} s (detector "
                    f"{startup[detector]['detector']:.1f} s)", None, "reported", None, startup))
    return rows


def bench_annotate_teachers(source: Path, work: Path, chunk: int, detector: str) -> Row:
    """Annotate with both teachers (the default, ``teacher=mean``) against annotate with DeepFace
    alone, side by side on the same shards in one process, the same detector, every model built before
    the clock. Annotate always scores with both teachers when the mini-Xception's file is there, so
    DeepFace alone is ``teacher=deepface`` with the file out of reach ($EMOTION_PIPELINE_XCEPTION_WEIGHTS
    naming nothing): annotate then loads no second network and leaves its columns empty (checked)."""
    from emotion_pipeline.labelling import faces, teachers

    faces.build_models(("emotion",))
    faces.face_detector(detector)
    teachers.score(np.zeros((1, 224, 224, 3), np.float32))  # loaded and converted for LiteRT (or read from its cache)
    configs = {}
    for name, teacher in (("deepface", "deepface"), ("both", "mean")):
        configs[name], shards = discovered_root(source, work / f"annotate-teachers-{name}", chunk,
                                                detector=detector, teacher=teacher)
        for shard in shards:
            run_stage("resize", configs[name], shard)
    result = side_by_side(
        [(len(keys), shard) for shard, keys in shards.items()],
        baseline=lambda shard: _without_second_teacher(lambda: run_stage("annotate", configs["deepface"], shard)),
        pipeline=lambda shard: run_stage("annotate", configs["both"], shard),
    )
    scored = {name: _second_teacher_faces(configs[name], shards) for name in configs}
    if scored["deepface"] or not scored["both"]:
        raise RuntimeError(f"faces the mini-Xception scored: {scored}; expected none alone, some with both")
    mine = result["pipeline"]
    return Row("annotate (both teachers vs DeepFace alone)",
               f"photos/s, detector {detector}, {result['chunks']} chunks of <= {chunk}",
               f"annotate with DeepFace alone {result['baseline_per_s']:.2f}/s",
               f"{mine['per_s']:.2f}/s (mini-Xception on {scored['both']} faces)",
               mine["ratio"], ">= 0.95", mine["ratio"] >= 0.95, {**result, "xception_faces": scored})


def _without_second_teacher(run):
    """``run()`` with the mini-Xception's file out of reach (annotate with teacher=deepface skips it)."""
    import os

    from emotion_pipeline.labelling import teachers

    saved = os.environ.get(teachers.WEIGHTS_ENV)
    os.environ[teachers.WEIGHTS_ENV] = "/nonexistent/emotion_model.hdf5"
    try:
        return run()
    finally:
        if saved is None:
            del os.environ[teachers.WEIGHTS_ENV]
        else:
            os.environ[teachers.WEIGHTS_ENV] = saved


def _second_teacher_faces(config: PipelineConfig, shards: dict[int, list[str]]) -> int:
    """How many faces of the shards carry the mini-Xception's scores."""
    from emotion_pipeline.labelling.teachers import XCEPTION_COLUMNS

    root = open_storage(config.root)
    return int(sum(pd.read_parquet(root.uri_for(f"{catalog.faces(s)}.parquet"))[XCEPTION_COLUMNS].notna().all(axis=1)
                   .sum() for s in shards))


def _labelled(config: PipelineConfig, shards: dict[int, list[str]]) -> int:
    root = open_storage(config.root)
    return int(sum(pd.read_parquet(root.uri_for(f"{catalog.annotations(s)}.parquet"))["label"].notna().sum()
                   for s in shards))


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
        run_stage("embed", config, c[0])

    result = side_by_side(chunks, baseline=limit, pipeline=stage)
    mine = result["pipeline"]
    return Row(label, f"photos/s, batch {batch_size}, weights={config.embed_weights}",
               f"ResNet50 on in-memory tensors {result['baseline_per_s']:.1f}/s", f"{mine['per_s']:.1f}/s",
               mine["ratio"], ">= 0.9 of the limit", mine["ratio"] >= 0.9, result)
