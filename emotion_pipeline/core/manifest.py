"""Discover the input photos, give each a stable content id, and keep shards stable as data grows.

The manifest (``manifest/images.parquet`` under the root) has one row per source file ever seen:

    source_key, source_uri, image_id, size_bytes, version, shard, duplicate_of, present,
    entry_problem, entry_error

* ``image_id`` is a hash of the file's bytes, so the same photo under two names has one id. Among
  the present names of an id, the first in shard order processes it; the others are marked
  ``duplicate_of`` it and are not processed twice. This is recomputed at every discovery over the
  present names only: when the processing name is deleted, moved or renamed, a present copy takes
  over (its shard runs again: ``duplicate_of`` is part of the shard's fingerprint). Which name the
  final dataset calls the original (the first by name, as a run from scratch would) is merge's call.
* Shards are append-only: rows never move, new files form new shards after the last one. A backfill
  of a new batch therefore touches only the new shards.
* ``present`` says whether the file was found by the latest discovery that listed its folder; the
  final dataset holds the present rows, so "discovered" and "rows in the final dataset" reconcile.
  A run for one batch (``batch``, e.g. the run's date: ``source/2026-11-01/``) lists only that
  folder; the rows of other batches stay as they were.
* ``entry_problem`` names an entry that has a photo's name but cannot be read (a broken link, a named
  pipe, a file this process may not read: ``storage.ENTRY_PROBLEMS``). It gets a row like any photo,
  with an id of its own; resize gives it that status without opening it. Such entries are tried again
  at every discovery, so a file made readable is picked up as a new photo.
* Names that are not photos (``photo_extensions``) and folders that cannot be listed are skipped,
  counted by reason in the log, and listed in ``manifest/skipped_entries``.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import pandas as pd

from emotion_pipeline.core import catalog
from emotion_pipeline.core.config import PHOTO_EXTENSIONS, PipelineConfig
from emotion_pipeline.core.storage import ObjectInfo, Storage, check_key, entry_problem
from emotion_pipeline.core.tables import read_table, write_table

log = logging.getLogger(__name__)

COLUMNS = ["source_key", "source_uri", "image_id", "size_bytes", "version", "shard", "duplicate_of", "present",
           "entry_problem", "entry_error"]


@dataclass(frozen=True)
class Discovery:
    manifest: pd.DataFrame
    new_files: int
    rehashed: int  # files whose bytes had to be read (new or changed): the work this discovery did
    skipped: dict[str, int]  # entries that are not photos, by reason ("extension .txt": 3)

    @property
    def shards(self) -> list[int]:
        present = self.manifest[self.manifest["present"]]
        return sorted(int(s) for s in present["shard"].unique())


def content_id(data: bytes, key: str) -> str:
    """Stable id from the bytes. Empty files get a per-name id: they are not duplicates of each other."""
    digest = hashlib.sha256(data if data else f"empty:{key}".encode())
    return digest.hexdigest()[:20]


def is_image_name(key: str, extensions: tuple[str, ...] = PHOTO_EXTENSIONS) -> bool:
    suffixes = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
    return key.lower().endswith(suffixes)


def skip_reason(entry: ObjectInfo, extensions: tuple[str, ...] = PHOTO_EXTENSIONS) -> str | None:
    """Why a listed entry is not a photo row, or None when it is one."""
    if entry.problem == "unreadable_folder":
        return "unreadable folder"
    if is_image_name(entry.key, extensions):
        return None
    suffix = PurePosixPath(entry.key).suffix.lower()
    return f"extension {suffix}" if suffix else "no extension"


def list_images(source: Storage, limit: int | None = None, extensions: tuple[str, ...] = PHOTO_EXTENSIONS,
                batch: str = "") -> tuple[list[ObjectInfo], list[tuple[str, str]]]:
    """The photo entries (sorted, the first ``limit``) and the skipped ones as (key, reason), in the
    folder ``batch`` of the source (the whole source when empty)."""
    found, skipped = [], []
    for entry in source.list(batch_prefix(batch)):
        reason = skip_reason(entry, extensions)
        if reason is None:
            found.append(entry)
        else:
            skipped.append((entry.key, f"{reason}: {entry.error}" if entry.error else reason))
    found.sort(key=lambda o: o.key)
    return (found if limit is None else found[:limit]), skipped


def batch_prefix(batch: str) -> str:
    """The batch folder as a listing prefix: ``2026-11-01`` -> ``2026-11-01`` ("" for the whole source)."""
    return check_key(batch.strip("/")) if batch.strip("/") else ""


def in_batch(keys: pd.Series, batch: str) -> pd.Series:
    """Which source keys the batch's listing covers (all of them without a batch)."""
    prefix = batch_prefix(batch)
    return keys.str.startswith(f"{prefix}/") if prefix else pd.Series(True, index=keys.index)


def load_manifest(root: Storage) -> pd.DataFrame:
    manifest = read_table(root, catalog.MANIFEST)
    if manifest is None:
        manifest = pd.DataFrame(columns=COLUMNS)
    for column in ("entry_problem", "entry_error"):  # manifests written before these columns
        if column not in manifest:
            manifest[column] = ""
    return manifest.astype({c: _dtype(c) for c in COLUMNS})


def discover(config: PipelineConfig, source: Storage, root: Storage) -> Discovery:
    """List the source (or the run's batch folder), hash what is new or changed, assign new files to
    new shards, save."""
    previous = load_manifest(root)
    listed, skipped = list_images(source, config.limit, config.photo_extensions, config.batch)
    if config.batch and not listed:
        log.warning("discover: the batch folder %s holds no photos", source.uri_for(batch_prefix(config.batch)))
    known = {  # entries with a problem are not cached: they are tried again every time
        (row.source_key, int(row.size_bytes), row.version): row.image_id
        for row in previous.itertuples(index=False) if not row.entry_problem
    }

    current: list[tuple[ObjectInfo, str]] = []
    rehashed = 0
    for i, entry in enumerate(listed):
        obj = entry  # replaced by a problem record below when the file cannot be read
        image_id = known.get((obj.key, obj.size, obj.version))
        if image_id is None and not obj.problem:
            try:
                image_id = content_id(source.read_bytes(obj.key), obj.key)
            except FileNotFoundError:
                skipped.append((obj.key, "removed while discovery ran"))
                continue
            except OSError as err:  # unreadable, or replaced by a pipe since the listing
                obj = ObjectInfo(obj.key, obj.size, obj.version, entry_problem(err), err.strerror or str(err))
            rehashed += 1
        if obj.problem:
            image_id = content_id(b"", f"{obj.problem}:{obj.key}")  # an id of its own, like an empty file
        assert image_id is not None  # known, hashed, or its problem's own
        current.append((obj, image_id))
        if (i + 1) % 5000 == 0:
            log.info("discover: %d/%d files listed, %d hashed", i + 1, len(listed), rehashed)

    manifest, new_files = _assign_shards(previous, current, source, config.shard_size, config.batch)
    if not manifest.equals(previous):
        write_table(root, catalog.MANIFEST, manifest)
    skipped_table = pd.DataFrame(skipped, columns=["source_key", "reason"])
    if len(skipped_table) or root.exists(f"{catalog.SKIPPED_ENTRIES}.parquet"):
        write_table(root, catalog.SKIPPED_ENTRIES, skipped_table)
    counts = skipped_counts(skipped)
    problems = {p: int(n) for p, n in manifest.loc[manifest["present"], "entry_problem"].value_counts().items() if p}
    log.info(
        "discover: %d images found, %d new, %d hashed, %d shards; entries that cannot be read: %s; "
        "skipped (not photos): %s",
        len(current), new_files, rehashed, manifest["shard"].nunique(), problems or "none", counts or "none",
    )
    return Discovery(manifest=manifest, new_files=new_files, rehashed=rehashed, skipped=counts)


def skipped_counts(skipped: list[tuple[str, str]]) -> dict[str, int]:
    """{reason: count}, the OS error left out of the reason so that counts group."""
    counts: dict[str, int] = {}
    for _, reason in skipped:
        counts[reason.split(":")[0]] = counts.get(reason.split(":")[0], 0) + 1
    return dict(sorted(counts.items()))


def _assign_shards(
    previous: pd.DataFrame, current: list[tuple[ObjectInfo, str]], source: Storage, shard_size: int, batch: str = ""
) -> tuple[pd.DataFrame, int]:
    seen = {(k, i) for k, i in zip(previous["source_key"], previous["image_id"])}

    next_shard = int(previous["shard"].max()) + 1 if len(previous) else 0
    new_rows: list[dict[str, Any]] = []
    for obj, image_id in current:
        if (obj.key, image_id) in seen:
            continue
        new_rows.append({
            "source_key": obj.key,
            "source_uri": source.uri_for(obj.key),
            "image_id": image_id,
            "size_bytes": obj.size,
            "version": obj.version,
            "shard": next_shard + len(new_rows) // shard_size,
            "duplicate_of": "",  # decided below, over every present row
            "present": True,
            "entry_problem": obj.problem,
            "entry_error": obj.error,
        })

    manifest = pd.concat([previous, pd.DataFrame(new_rows, columns=COLUMNS)], ignore_index=True)
    # A file keeps its row while its (name, content) is unchanged; refresh the listing token so an
    # unchanged file with a new mtime is not hashed again next time.
    listed = {(obj.key, image_id): obj for obj, image_id in current}
    keys = list(zip(manifest["source_key"], manifest["image_id"]))
    # Only what this listing covered can have gone: rows of other batches keep their presence.
    listed_here = in_batch(manifest["source_key"], batch)
    manifest["present"] = [k in listed if here else was for k, here, was in
                           zip(keys, listed_here, manifest["present"].astype(bool))]
    manifest["version"] = [listed[k].version if k in listed else v for k, v in zip(keys, manifest["version"])]
    manifest = manifest.astype({c: _dtype(c) for c in COLUMNS}).reset_index(drop=True)
    return _choose_processing_names(manifest), len(new_rows)


def _choose_processing_names(manifest: pd.DataFrame) -> pd.DataFrame:
    """``duplicate_of`` of every present row: "" for the first present name of its id in (shard, name)
    order, that name for the others. Rows no longer present keep theirs (their shards' outputs stay
    as they were)."""
    present = manifest[manifest["present"]].sort_values(["shard", "source_key"])
    owner = present.groupby("image_id")["source_key"].transform("first")
    manifest.loc[present.index, "duplicate_of"] = owner.where(owner != present["source_key"], "")
    return manifest


def shard_rows(manifest: pd.DataFrame, shard: int) -> pd.DataFrame:
    rows = manifest[manifest["shard"] == shard]
    if rows.empty:
        raise KeyError(f"shard {shard} is not in the manifest")
    return rows.reset_index(drop=True)


def shard_fingerprint(rows: pd.DataFrame, **params: object) -> str:
    """Identifies a stage's input for one shard: its members and the stage's parameters."""
    digest = hashlib.sha256()
    duplicate_of = rows["duplicate_of"] if "duplicate_of" in rows else [""] * len(rows)
    for key, image_id, original in sorted(zip(rows["source_key"], rows["image_id"], duplicate_of)):
        # A row that processes its photo hashes as before; a duplicate also names what it copies,
        # so that a copy taking over from a deleted name re-runs its shard.
        digest.update((f"{key}\0{image_id}" + (f"\0{original}" if original else "") + "\n").encode())
    for name in sorted(params):
        digest.update(f"{name}={params[name]!r}\n".encode())
    return digest.hexdigest()[:20]


def _dtype(column: str) -> str:
    return {"size_bytes": "int64", "shard": "int64", "present": "bool"}.get(column, "object")
