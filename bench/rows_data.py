"""Generated upstream tables for the whole-dataset stages at 10k-300k rows (``bench.scale_rows``).

Nothing here runs a model: the per-shard stages' outputs (resize's metadata, annotate's annotations,
embed's vectors and index, each with a done marker whose fingerprint is the one ``runner`` computes)
are written as those stages write them, through the project's own storage, table and array functions,
so that discover, dedupe, check_drift, merge, assemble_features, train and evaluate read exactly the
layout they read after a real run. Vectors are random float32 (2048-d), labels are drawn with a
recorded mix, dedupe's perceptual hashes are random 64-bit numbers (every photo already hashed, as
after an earlier run: dedupe then only judges). Source photos are one tiny valid JPEG made distinct
per file by a comment segment, so discovery hashes real, distinct bytes and evaluate can decode them.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from emotion_pipeline.core import catalog
from emotion_pipeline.core.arrays import write_array
from emotion_pipeline.core.config import PipelineConfig
from emotion_pipeline.core.manifest import load_manifest, shard_rows
from emotion_pipeline.core.registry import stage
from emotion_pipeline.core.runner import StageRun, fingerprint
from emotion_pipeline.core.storage import Storage
from emotion_pipeline.core.tables import write_json, write_table
from emotion_pipeline.labelling.teachers import LABEL_COLUMNS
from emotion_pipeline.modeling.embedding import DIM

# What annotate would say of a photo, and of the labelled ones, which label: the recorded mix.
STATUS_MIX = {"ok": 0.62, "no_face": 0.38}
LABEL_MIX = {"happy": 0.45, "neutral": 0.30, "sad": 0.10, "surprise": 0.08, "angry": 0.05, None: 0.02}
DETECTOR = "yunet"


def tiny_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (120, 90, 60)).save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


def write_source(folder: Path, rows: int) -> None:
    """``rows`` distinct photos: the same tiny JPEG with the file's number in a comment segment
    (valid JPEG, distinct bytes, so distinct content ids). Written directly: it is the user's folder."""
    base = tiny_jpeg()
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(rows):
        comment = f"photo {i}".encode()
        segment = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
        with open(folder / f"{i:07d}.jpg", "wb") as handle:
            handle.write(base[:2] + segment + base[2:])


def _draw(rng: np.random.Generator, mix: dict, n: int) -> list:
    keys = list(mix)
    picks = rng.choice(len(keys), size=n, p=np.array(list(mix.values())) / sum(mix.values()))
    return [keys[p] for p in picks]


def shard_tables(members: pd.DataFrame, rng: np.random.Generator) -> dict[str, pd.DataFrame]:
    """The resize, annotate and embed tables of one shard's members (manifest rows)."""
    keys = members[["image_id", "source_key"]].assign(shard=members["shard"].astype("int64"))
    n = len(keys)
    metadata = keys.assign(source_uri=members["source_uri"], orig_width=16, orig_height=16,
                           upright_width=16, upright_height=16, format="JPEG", mode="RGB",
                           bytes=members["size_bytes"], processed_uri="", status="ok", error=None)
    status = _draw(rng, STATUS_MIX, n)
    labels = [lab if s == "ok" else None for s, lab in zip(status, _draw(rng, LABEL_MIX, n))]
    annotations = keys.assign(status=status, error=None, faces=[int(s == "ok") for s in status],
                              dominant_emotion=labels, detector=DETECTOR, label=labels,
                              **{column: labels for column in LABEL_COLUMNS.values()})
    index = keys.assign(input="photo", status="ok", error=None)
    return {"metadata": metadata, "annotations": annotations, "index": index}


def write_shard(config: PipelineConfig, root: Storage, manifest: pd.DataFrame, shard: int,
                rng: np.random.Generator) -> None:
    """One shard's per-shard outputs and done markers, in pipeline order (embed's fingerprint covers
    annotate's marker, so annotate's is written first)."""
    members = shard_rows(manifest, shard)
    members = members[members["duplicate_of"] == ""]
    tables = shard_tables(members, rng)
    write_table(root, catalog.metadata(shard), tables["metadata"])
    _mark(config, root, manifest, "resize", shard)
    write_table(root, catalog.annotations(shard), tables["annotations"])
    _mark(config, root, manifest, "annotate", shard)
    write_table(root, catalog.vector_index(shard), tables["index"])
    write_array(root, catalog.shard_vectors(shard), rng.standard_normal((len(members), DIM), dtype=np.float32))
    _mark(config, root, manifest, "embed", shard)


def _mark(config: PipelineConfig, root: Storage, manifest: pd.DataFrame, name: str, shard: int) -> None:
    """The done marker the stage would write: the runner's own fingerprint of this input."""
    spec = stage(name)
    run = StageRun(spec, config, root, root, photos=shard_rows(manifest, shard), shard=shard, manifest=manifest)
    run.fingerprint = fingerprint(run)
    summary = {"shard": shard, "generated": True}
    write_json(root, catalog.done_marker(spec.folder, shard), {"fingerprint": run.fingerprint, "summary": summary})


def write_known_hashes(config: PipelineConfig, root: Storage, manifest: pd.DataFrame,
                       rng: np.random.Generator) -> None:
    """dedupe's table as an earlier run left it: every present photo hashed (random 64-bit hashes)."""
    photos = manifest[manifest["present"] & (manifest["duplicate_of"] == "")]
    hashes = rng.integers(0, 2**64, size=len(photos), dtype=np.uint64)
    table = pd.DataFrame({"image_id": photos["image_id"].to_numpy(), "source_key": photos["source_key"].to_numpy(),
                          "shard": photos["shard"].astype("int64").to_numpy(),
                          "phash": [f"{int(h):016x}" for h in hashes], "hashed_size": config.image_size,
                          "status": None, "error": None, "duplicate_of": None, "distance": -1})
    write_table(root, catalog.NEAR_DUPLICATES, table)


def write_upstream(config: PipelineConfig, root: Storage, seed: int = 0) -> int:
    """Every shard's upstream outputs for the discovered manifest, and dedupe's known hashes; returns
    the number of shards."""
    rng = np.random.default_rng(seed)
    manifest = load_manifest(root)
    shards = sorted(int(s) for s in manifest.loc[manifest["present"], "shard"].unique())
    for shard in shards:
        write_shard(config, root, manifest, shard, rng)
    write_known_hashes(config, root, manifest, rng)
    return len(shards)
