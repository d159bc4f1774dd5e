"""Stage 5: ``datasets/final_emotion_dataset.parquet`` (+ CSV twin), one row per discovered photo.

The manifest's present rows, joined with the resize metadata and the annotations of their shard.
Every photo is accounted for: its ``status`` is the furthest stage's verdict (``ok``, ``no_face``,
``duplicate``, ``corrupt``, ``unsupported``, ``empty``, ``too_large``, ``missing``), or ``pending``
when a stage has not run on its shard yet.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Any

import pandas as pd

from ..config import PipelineConfig
from ..manifest import load_manifest
from ..shards import done_key, shard_prefix
from ..storage import Storage, open_storage
from ..tables import read_json, read_table, write_json, write_table
from . import annotate, resize

log = logging.getLogger(__name__)

DATASET_KEY = "datasets/final_emotion_dataset"
DONE_KEY = "datasets/_done.json"


def merge_dataset(config: PipelineConfig, *, root: Storage | None = None) -> dict[str, Any]:
    root = root or open_storage(config.root)
    manifest = load_manifest(root)
    present = manifest[manifest["present"]]
    shards = sorted(int(s) for s in present["shard"].unique())
    fingerprint = _inputs_fingerprint(root, present, shards)
    marker = read_json(root, DONE_KEY)
    if marker and marker["fingerprint"] == fingerprint:
        return {**marker["summary"], "skipped": True}

    metadata = _concat(root, resize.STAGE, "metadata", shards, resize.COLUMNS)
    annotations = _concat(root, annotate.STAGE, "annotations", shards, annotate.PHOTO_COLUMNS)
    dataset = build_dataset(present, metadata, annotations)
    write_table(root, DATASET_KEY, dataset)

    summary = {
        "stage": "merge",
        "images": len(dataset),
        "statuses": dataset["status"].value_counts().to_dict(),
        "labels": dataset["label"].value_counts().to_dict(),
        "dataset_uri": root.uri_for(f"{DATASET_KEY}.parquet"),
    }
    write_json(root, DONE_KEY, {"fingerprint": fingerprint, "summary": summary})
    log.info("merge: %d photos, %s", len(dataset), summary["statuses"])
    return {**summary, "skipped": False}


def build_dataset(present: pd.DataFrame, metadata: pd.DataFrame, annotations: pd.DataFrame) -> pd.DataFrame:
    base = present[["image_id", "source_key", "source_uri", "shard", "duplicate_of", "size_bytes"]]
    meta = metadata.drop(columns=["image_id", "source_uri", "shard"], errors="ignore").rename(
        columns={"status": "resize_status", "error": "resize_error"})
    notes = annotations.drop(columns=["image_id", "shard"], errors="ignore").rename(
        columns={"status": "annotate_status", "error": "annotate_error"})
    dataset = base.merge(meta, on="source_key", how="left", validate="one_to_one")
    dataset = dataset.merge(notes, on="source_key", how="left", validate="one_to_one")

    status = dataset["annotate_status"].fillna(dataset["resize_status"]).fillna("pending")
    error = dataset["annotate_error"].where(dataset["annotate_status"].notna(), dataset["resize_error"])
    dataset.insert(4, "status", status)
    dataset.insert(5, "error", error)
    dataset = dataset.drop(columns=["resize_status", "resize_error", "annotate_status", "annotate_error"])
    if len(dataset) != len(present):
        raise AssertionError(f"merge lost or duplicated rows: {len(present)} photos -> {len(dataset)} rows")
    return dataset.sort_values(["shard", "source_key"]).reset_index(drop=True)


def _concat(root: Storage, stage_folder: str, table: str, shards: list[int], columns: list[str]) -> pd.DataFrame:
    """The shards' tables stacked; at least ``columns`` even when no shard has the table yet."""
    tables = [t for s in shards if (t := read_table(root, f"{shard_prefix(stage_folder, s)}/{table}")) is not None]
    tables = [t for t in tables if not t.empty]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=columns)


def _inputs_fingerprint(root: Storage, present: pd.DataFrame, shards: list[int]) -> str:
    digest = hashlib.sha256()
    for key, image_id in sorted(zip(present["source_key"], present["image_id"])):
        digest.update(f"{key}\0{image_id}\n".encode())
    for stage_folder in (resize.STAGE, annotate.STAGE):
        for shard in shards:
            marker = read_json(root, done_key(stage_folder, shard)) or {}
            digest.update(f"{stage_folder}/{shard}={marker.get('fingerprint')}\n".encode())
    return digest.hexdigest()[:20]
