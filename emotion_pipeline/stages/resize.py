"""Stage 2: a 224x224 RGB copy of every photo in ``processed/``, and per-shard metadata.

Policy: letterbox (fit the whole photo, pad with black), EXIF orientation applied, any mode
converted to 8-bit RGB. Bad files never stop the shard: each gets a status and an error message.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pandas as pd

from emotion_pipeline.core import catalog
from emotion_pipeline.core.config import PipelineConfig
from emotion_pipeline.core.progress import Progress
from emotion_pipeline.core.results import ResizeResult
from emotion_pipeline.core.runner import StageRun
from emotion_pipeline.core.storage import Storage
from emotion_pipeline.core.tables import write_table
from emotion_pipeline.labelling.images import decode_rgb, letterbox, open_checked, read_photo, to_jpeg
from emotion_pipeline.labelling.photo_boundary import PhotoBoundary

log = logging.getLogger(__name__)

COLUMNS = [
    "image_id", "source_key", "source_uri", "shard", "orig_width", "orig_height", "upright_width",
    "upright_height", "orig_format", "orig_mode", "orig_bytes", "processed_uri", "status", "error",
]  # orig_*: as stored in the file; upright_*: after EXIF orientation, the frame face boxes are in


def resize(run: StageRun) -> ResizeResult:
    """The stage function: every photo of the shard -> its letterboxed copy and a metadata row.

    Args:
        run: the config, both storages and the shard's manifest rows (``runner.StageRun``).

    Returns:
        Counts per status. A bad photo gets its status and error in the table; it never raises.

    Raises:
        storage.StorageError: the root cannot be written (a full disk, a denied permission).
    """
    config, source, root, shard = run.config, run.source, run.root, run.shard_number
    root.sweep_temp_files(catalog.PROCESSED_FOLDER)  # photos a killed attempt was writing when it died
    progress = Progress(f"resize shard {shard}", len(run.photos))

    boundary = PhotoBoundary("resize")

    def one(row) -> dict[str, Any]:
        record = resize_one(config, source, root, row, boundary)
        progress.step()
        return record

    # Pillow releases the GIL while decoding, resampling and encoding, so threads use every core
    # without pickling storage clients into worker processes.
    with ThreadPoolExecutor(max_workers=max(1, config.threads)) as pool:
        records = list(pool.map(one, run.photos.itertuples(index=False)))
    boundary.check()
    root.make_durable()  # the photos, before the table and marker that say they exist

    metadata = pd.DataFrame(records, columns=COLUMNS)
    write_table(root, catalog.metadata(shard), metadata)
    result = ResizeResult(shard=shard, images=len(metadata),
                          resized=int((metadata["status"] == "ok").sum()),
                          statuses=metadata["status"].value_counts().to_dict())
    log.info("resize shard %d: %s", shard, result.statuses)
    return result


def resize_one(config: PipelineConfig, source: Storage, root: Storage, row,
               boundary: PhotoBoundary) -> dict[str, Any]:
    """One manifest row (a namedtuple) -> its metadata record; the 224x224 photo written. Whatever
    the photo makes a step raise is its record's status and error (``photo_boundary``)."""
    record: dict[str, Any] = {
        "image_id": row.image_id, "source_key": row.source_key, "source_uri": row.source_uri,
        "shard": int(row.shard), "orig_bytes": int(row.size_bytes), "processed_uri": None, "error": None,
    }
    if row.entry_problem:  # a broken link, a pipe, no permission: never opened (see manifest)
        return {**record, "status": row.entry_problem, "error": row.entry_error or row.entry_problem}
    if row.duplicate_of:
        return {**record, "status": "duplicate", "error": f"same content as {row.duplicate_of}"}
    return boundary.run(record, lambda: _resized(config, source, root, row, record))


def _resized(config: PipelineConfig, source: Storage, root: Storage, row, record: dict[str, Any]) -> dict[str, Any]:
    """Read, check, letterbox and write one photo; ``record`` learns the source's facts as they come
    (so a photo that fails later still shows its size and format)."""
    data = read_photo(source, row.source_key)
    record["orig_bytes"] = len(data)
    image, info = open_checked(data, config.max_image_pixels, row.source_key)
    record.update(orig_width=info.width, orig_height=info.height, upright_width=info.upright_width,
                  upright_height=info.upright_height, orig_format=info.format, orig_mode=info.mode)
    thumbnail = letterbox(decode_rgb(image, draft_size=config.image_size), config.image_size)
    key = catalog.processed_photo(row.image_id)
    root.write_bytes(key, to_jpeg(thumbnail), durable=False)
    return {**record, "status": "ok", "processed_uri": root.uri_for(key)}
