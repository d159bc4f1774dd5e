"""Stage 2: a 224x224 RGB copy of every photo in ``processed/``, and per-shard metadata.

Policy: letterbox (fit the whole photo, pad with black), EXIF orientation applied, any mode
converted to 8-bit RGB. Bad files never stop the shard: each gets a status and an error message.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pandas as pd

from ..config import PipelineConfig
from ..images import ImageError, decode_rgb, letterbox, open_checked, to_jpeg
from ..manifest import shard_fingerprint
from ..shards import Progress, mark_completed, shard_prefix, start_shard
from ..storage import Storage
from ..tables import write_table

log = logging.getLogger(__name__)

STAGE = "metadata"
COLUMNS = [
    "image_id", "source_key", "source_uri", "shard", "orig_width", "orig_height", "orig_format",
    "orig_mode", "orig_bytes", "processed_uri", "status", "error",
]


def processed_key(image_id: str) -> str:
    return f"processed/{image_id}.jpg"


def input_fingerprint(config: PipelineConfig, root: Storage, rows: pd.DataFrame, shard: int) -> str:
    """What this stage's output for the shard depends on: its members and the stage's parameters."""
    return shard_fingerprint(rows, image_size=config.image_size, max_pixels=config.max_image_pixels)


def resize_shard(
    config: PipelineConfig, shard: int, *, source: Storage | None = None, root: Storage | None = None
) -> dict[str, Any]:
    """Resize one shard; returns a small summary (counts per status) for XCom and the CLI."""
    job = start_shard(STAGE, input_fingerprint, config, shard, source, root)
    if job.done is not None:
        return job.done
    source, root, rows = job.source, job.root, job.rows
    root.sweep_temp_files("processed")  # photos a killed attempt was writing when it died

    progress = Progress(f"resize shard {shard}", len(rows))

    def one(row) -> dict[str, Any]:
        record = resize_one(config, source, root, row)
        progress.step()
        return record

    # Pillow releases the GIL while decoding, resampling and encoding, so threads use every core
    # without pickling storage clients into worker processes.
    with ThreadPoolExecutor(max_workers=max(1, config.threads)) as pool:
        records = list(pool.map(one, rows.itertuples(index=False)))
    root.make_durable()  # the photos, before the table and marker that say they exist

    metadata = pd.DataFrame(records, columns=COLUMNS)
    write_table(root, f"{shard_prefix(STAGE, shard)}/metadata", metadata)
    summary = {
        "stage": "resize",
        "shard": shard,
        "images": len(metadata),
        "resized": int((metadata["status"] == "ok").sum()),
        "statuses": metadata["status"].value_counts().to_dict(),
    }
    log.info("resize shard %d: %s", shard, summary["statuses"])
    return mark_completed(root, STAGE, shard, job.fingerprint, summary)


def resize_one(config: PipelineConfig, source: Storage, root: Storage, row) -> dict[str, Any]:
    """One manifest row (a namedtuple) -> its metadata record; the 224x224 photo written."""
    record: dict[str, Any] = {
        "image_id": row.image_id, "source_key": row.source_key, "source_uri": row.source_uri,
        "shard": int(row.shard), "orig_bytes": int(row.size_bytes), "processed_uri": None, "error": None,
    }
    if row.duplicate_of:
        return {**record, "status": "duplicate", "error": f"same content as {row.duplicate_of}"}
    try:
        data = source.read_bytes(row.source_key)
        record["orig_bytes"] = len(data)
        image, info = open_checked(data, config.max_image_pixels)
        record.update(orig_width=info.width, orig_height=info.height, orig_format=info.format, orig_mode=info.mode)
        thumbnail = letterbox(decode_rgb(image, draft_size=config.image_size), config.image_size)
        key = processed_key(row.image_id)
        root.write_bytes(key, to_jpeg(thumbnail), durable=False)
        return {**record, "status": "ok", "processed_uri": root.uri_for(key)}
    except ImageError as err:
        return {**record, "status": err.status, "error": str(err)}
    except FileNotFoundError as err:
        return {**record, "status": "missing", "error": f"source file disappeared: {err}"}
