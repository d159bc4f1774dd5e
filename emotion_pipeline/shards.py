"""Per-shard bookkeeping shared by the stages: where a shard's outputs live and whether they are done.

A stage writes its tables for a shard, then a small ``_done.json`` marker holding the fingerprint of
its input (the shard's members and the stage parameters). A later call with the same fingerprint
returns the recorded summary without doing any work; a crash before the marker means the shard is
simply done again.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import pandas as pd

from .config import PipelineConfig
from .manifest import load_manifest, shard_rows
from .storage import Storage, open_storage
from .tables import read_json, read_table, write_json

log = logging.getLogger(__name__)


def shard_prefix(stage_folder: str, shard: int) -> str:
    return f"{stage_folder}/shard={shard:05d}"


def done_key(stage_folder: str, shard: int) -> str:
    return f"{shard_prefix(stage_folder, shard)}/_done.json"


def completed(root: Storage, stage_folder: str, shard: int, fingerprint: str) -> dict[str, Any] | None:
    """The recorded summary when this shard was already done with this exact input, else None."""
    marker = read_json(root, done_key(stage_folder, shard))
    if marker and marker.get("fingerprint") == fingerprint:
        return {**marker["summary"], "skipped": True}
    return None


@dataclass
class ShardJob:
    source: Storage
    root: Storage
    rows: pd.DataFrame  # the shard's manifest rows
    fingerprint: str
    done: dict[str, Any] | None  # the recorded summary when nothing is left to do


def start_shard(
    stage_folder: str, fingerprint_of: Callable, config: PipelineConfig, shard: int,
    source: Storage | None, root: Storage | None,
) -> ShardJob:
    """Open the storages, read the shard's members, and look up whether this input is already done."""
    source = source or open_storage(config.source)
    root = root or open_storage(config.root)
    root.sweep_temp_files(shard_prefix(stage_folder, shard))  # a killed attempt's half-written files
    rows = shard_rows(load_manifest(root), shard)
    fingerprint = fingerprint_of(config, root, rows, shard)
    return ShardJob(source, root, rows, fingerprint, completed(root, stage_folder, shard, fingerprint))


def upstream_table(root: Storage, stage_folder: str, table: str, shard: int) -> pd.DataFrame:
    """A table an earlier stage wrote for this shard; a clear error when that stage has not run."""
    found = read_table(root, f"{shard_prefix(stage_folder, shard)}/{table}")
    if found is None:
        raise RuntimeError(f"shard {shard} has no {stage_folder}/{table} yet: run the stage that writes it first")
    return found


def stage_is_complete(stage, config, root: Storage, rows, shard: int) -> bool:
    """Whether ``stage`` (a stage module: ``STAGE`` + ``input_fingerprint``) is done for this shard."""
    return completed(root, stage.STAGE, shard, stage.input_fingerprint(config, root, rows, shard)) is not None


def mark_completed(
    root: Storage, stage_folder: str, shard: int, fingerprint: str, summary: dict[str, Any]
) -> dict[str, Any]:
    write_json(root, done_key(stage_folder, shard), {"fingerprint": fingerprint, "summary": summary})
    return {**summary, "skipped": False}


class Progress:
    """Logs ``done/total`` with a rate after the first step (an early rate), then at most every ``every``
    seconds and at the end: long shards show progress."""

    def __init__(self, label: str, total: int, every: float = 10.0) -> None:
        self.label, self.total, self.every = label, total, every
        self.start = self.last = time.monotonic()
        self.done = 0

    def step(self, n: int = 1) -> None:
        first = self.done == 0
        self.done += n
        now = time.monotonic()
        if first or now - self.last >= self.every or self.done == self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            log.info("%s: %d/%d (%.1f/s)", self.label, self.done, self.total, rate)


def in_order_ahead(pool: Executor, fn: Callable, items: Iterable, ahead: int) -> Iterator:
    """``fn(item)`` for every item, in order, computed by ``pool`` at most ``ahead`` items in advance:
    the workers stay busy while the caller consumes, and memory stays bounded whatever the shard size."""
    running: deque = deque()
    for item in items:
        running.append(pool.submit(fn, item))
        if len(running) > ahead:
            yield running.popleft().result()
    while running:
        yield running.popleft().result()
