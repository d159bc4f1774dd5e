"""Stage 1: find the photos, give them stable ids, and say which shards still have work to do."""
from __future__ import annotations

from typing import Any

from ..config import PipelineConfig
from ..manifest import discover, shard_rows
from ..shards import stage_is_complete
from ..storage import Storage, open_storage
from . import annotate, embed, resize


def discover_images(
    config: PipelineConfig, *, source: Storage | None = None, root: Storage | None = None
) -> dict[str, Any]:
    """Update the manifest and return the shards, with ``pending`` = those a stage must still run on.

    Only pending shards are mapped to tasks, so a re-run with nothing new launches no shard task.
    """
    source = source or open_storage(config.source)
    root = root or open_storage(config.root)
    found = discover(config, source, root)
    pending = [s for s in found.shards if not _shard_complete(config, root, found.manifest, s)]
    present = found.manifest[found.manifest["present"]]
    return {
        "stage": "discover",
        "images": len(present),
        "new_images": found.new_files,
        "hashed": found.rehashed,
        "shards": found.shards,
        "pending": pending,
    }


def _shard_complete(config: PipelineConfig, root: Storage, manifest, shard: int) -> bool:
    rows = shard_rows(manifest, shard)
    return all(stage_is_complete(stage, config, root, rows, shard) for stage in (resize, annotate, embed))
