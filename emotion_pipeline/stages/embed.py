"""Stage 6: a 2048-d ResNet50 vector per annotated photo, per shard, then assembled.

Input (``embed_input``):
* ``face`` (default): the label face cropped from the original photo. Expressions live in the face;
  a whole-scene embedding mostly sees the scene (clothes, background, crowd), which the five-class
  head would then have to ignore. Photos without a confident face fall back to the whole photo, so
  every annotated photo still gets a vector (the index's ``input`` column says which).
* ``photo``: the 224x224 processed photo, as the original seed did.

Weights: ``imagenet`` (Keras downloads and caches them), a local ``.h5`` path, or ``none`` (random
values, same graph and cost: what the tests use on machines without internet). Vectors are never faked.

Outputs: ``features/shard=<k>/vectors.npy`` + ``index.parquet`` per shard (new shards cost only their
own work), assembled into ``features/image_vectors.npy`` + ``features/image_index.parquet``.
"""
from __future__ import annotations

import hashlib
import io
import logging
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from ..config import PipelineConfig
from ..images import decode_rgb, letterbox, open_checked
from ..manifest import load_manifest, shard_fingerprint
from ..shards import Progress, done_key, in_order_ahead, mark_completed, shard_prefix, start_shard, upstream_table
from ..storage import Storage, open_storage
from ..tables import read_json, read_table, write_json, write_table
from . import annotate, resize

log = logging.getLogger(__name__)

STAGE = "features"
VECTORS_KEY = "features/image_vectors.npy"
INDEX_KEY = "features/image_index"
DIM = 2048


@lru_cache(maxsize=2)
def resnet50(weights: str, mixed_precision: bool):
    """ResNet50 without its classifier, global average pooled: (n, 224, 224, 3) -> (n, 2048).

    Built once per process and weights setting. Mixed precision only where a GPU can use it.
    """
    import keras
    import tensorflow as tf

    if mixed_precision and tf.config.list_physical_devices("GPU"):
        keras.mixed_precision.set_global_policy("mixed_float16")
    chosen = None if weights.lower() == "none" else weights
    if chosen is None:
        log.warning("ResNet50 with weights=None: random weights, same graph and cost (tests/CI only)")
        # The same random weights in every process (embed workers, API workers), so vectors agree.
        keras.utils.set_random_seed(0)
    return keras.applications.ResNet50(include_top=False, pooling="avg", weights=chosen, input_shape=(224, 224, 3))


def embed_arrays(model, images: np.ndarray) -> np.ndarray:
    """ResNet50's own preprocessing, then the forward pass; always float32 out."""
    from keras.applications.resnet50 import preprocess_input

    return np.asarray(model.predict_on_batch(preprocess_input(images.astype(np.float32))), dtype=np.float32)


def input_fingerprint(config: PipelineConfig, root: Storage, rows: pd.DataFrame, shard: int) -> str:
    annotations = read_json(root, done_key(annotate.STAGE, shard)) or {}
    return shard_fingerprint(rows, embed_input=config.embed_input, weights=config.embed_weights,
                             annotations=annotations.get("fingerprint"))


def embed_shard(
    config: PipelineConfig, shard: int, *, source: Storage | None = None, root: Storage | None = None
) -> dict[str, Any]:
    job = start_shard(STAGE, input_fingerprint, config, shard, source, root)
    if job.done is not None:
        return job.done
    source, root = job.source, job.root
    notes = upstream_table(root, annotate.STAGE, "annotations", shard)
    todo = notes[notes["status"].isin(["ok", "no_face"])].reset_index(drop=True)
    index = pd.DataFrame({
        "image_id": todo["image_id"], "source_key": todo["source_key"], "shard": shard,
        "input": np.where((config.embed_input == "face") & todo["face_w"].notna(), "face", "photo"),
    })

    model = resnet50(config.embed_weights, config.mixed_precision)
    vectors = np.zeros((len(todo), DIM), dtype=np.float32)
    progress = Progress(f"embed shard {shard}", len(todo))
    batch = max(1, config.embed_batch_size)

    def load(i: int) -> np.ndarray:
        return load_input(source, root, todo.iloc[i], index.at[i, "input"])

    # Decode the next batch in threads while the model runs on the current one.
    with ThreadPoolExecutor(max_workers=max(1, config.threads)) as pool:
        loaded = in_order_ahead(pool, load, range(len(todo)), ahead=batch)
        for start in range(0, len(todo), batch):
            images = np.stack([next(loaded) for _ in range(min(batch, len(todo) - start))])
            vectors[start:start + len(images)] = embed_arrays(model, images)
            progress.step(len(images))

    prefix = shard_prefix(STAGE, shard)
    root.write_bytes(f"{prefix}/vectors.npy", _npy(vectors))
    write_table(root, f"{prefix}/index", index, csv=False)
    summary = {"stage": "embed", "shard": shard, "vectors": len(index),
               "inputs": index["input"].value_counts().to_dict()}
    log.info("embed shard %d: %d vectors %s", shard, len(index), summary["inputs"])
    return mark_completed(root, STAGE, shard, job.fingerprint, summary)


def load_input(source: Storage, root: Storage, note: pd.Series, kind: str) -> np.ndarray:
    """The 224x224 RGB array ResNet50 sees for one photo: its label face, or the processed photo."""
    if kind == "photo":
        with Image.open(io.BytesIO(root.read_bytes(resize.processed_key(note["image_id"])))) as image:
            return np.asarray(image.convert("RGB"))
    image, _ = open_checked(source.read_bytes(note["source_key"]), max_pixels=10**9)
    rgb = decode_rgb(image)
    x, y, w, h = (int(note[f"face_{k}"]) for k in ("x", "y", "w", "h"))
    return np.asarray(letterbox(rgb.crop((x, y, x + w, y + h)), 224))


def assemble_features(config: PipelineConfig, *, root: Storage | None = None) -> dict[str, Any]:
    """Stack the shards' vectors in shard order into one matrix with an aligned row index."""
    root = root or open_storage(config.root)
    manifest = load_manifest(root)
    shards = sorted(int(s) for s in manifest.loc[manifest["present"], "shard"].unique())
    markers = [read_json(root, done_key(STAGE, s)) for s in shards]
    missing = [s for s, m in zip(shards, markers) if m is None]
    if missing:
        raise RuntimeError(f"shards {missing} are not embedded yet: run the embed stage first")
    fingerprint = hashlib.sha256("\n".join(m["fingerprint"] for m in markers).encode()).hexdigest()[:20]
    done = read_json(root, "features/_done.json")
    if done and done["fingerprint"] == fingerprint:
        return {**done["summary"], "skipped": True}

    indexes, matrices = [], []
    for shard in shards:
        prefix = shard_prefix(STAGE, shard)
        indexes.append(read_table(root, f"{prefix}/index"))
        matrices.append(np.load(io.BytesIO(root.read_bytes(f"{prefix}/vectors.npy"))))
    index = pd.concat(indexes, ignore_index=True)
    vectors = np.concatenate(matrices) if matrices else np.zeros((0, DIM), dtype=np.float32)
    if len(index) != len(vectors):
        raise AssertionError(f"index has {len(index)} rows but there are {len(vectors)} vectors")
    index.insert(0, "row", np.arange(len(index)))
    root.write_bytes(VECTORS_KEY, _npy(vectors))
    write_table(root, INDEX_KEY, index)
    summary = {"stage": "assemble", "vectors": len(index), "dim": int(vectors.shape[1]),
               "vectors_uri": root.uri_for(VECTORS_KEY)}
    write_json(root, "features/_done.json", {"fingerprint": fingerprint, "summary": summary})
    return {**summary, "skipped": False}


def load_features(root: Storage) -> tuple[np.ndarray, pd.DataFrame]:
    vectors = np.load(io.BytesIO(root.read_bytes(VECTORS_KEY)))
    return vectors, read_table(root, INDEX_KEY)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()
