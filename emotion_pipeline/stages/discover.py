"""Stage: find the photos, give them stable ids, and say which shards still have work to do."""
from __future__ import annotations

from emotion_pipeline.core import manifest
from emotion_pipeline.core.registry import shard_stages
from emotion_pipeline.core.results import DiscoverResult
from emotion_pipeline.core.runner import StageRun, is_complete
from emotion_pipeline.labelling import teachers


def discover(run: StageRun) -> DiscoverResult:
    """The stage function (no done marker: listing the source is how it finds what is new).

    Args:
        run: the config and both storages (``runner.StageRun``).

    Returns:
        Photos found, new and hashed, every shard, ``pending``: the shards a per-shard stage of
        the registry must still run on (only those are mapped to tasks, so a re-run with nothing new
        launches no shard task), and ``skipped``: entries that are not photos, counted by reason.

    Raises:
        storage.StorageError: the source cannot be listed (a missing bucket, a denied permission).
        faces.MissingWeightsError: the second teacher's file (``teachers.check_weights``) is missing or
            not the pinned one, and ``teacher`` needs it.
    """
    if teachers.required(run.config.teacher):  # before the manifest: a missing file leaves nothing behind
        teachers.check_weights()
    found = manifest.discover(run.config, run.source, run.root)
    pending = [s for s in found.shards
               if not all(is_complete(stage, run.config, run.root, found.manifest, s) for stage in shard_stages())]
    return DiscoverResult(images=int(found.manifest["present"].sum()), new_images=found.new_files,
                          hashed=found.rehashed, shards=found.shards, pending=pending, skipped=found.skipped,
                          batch=run.config.batch)
