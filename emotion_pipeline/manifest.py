"""Discover the input photos, give each a stable content id, and keep shards stable as data grows.

The manifest (``manifest/images.parquet`` under the root) has one row per source file ever seen:

    source_key, source_uri, image_id, size_bytes, version, shard, duplicate_of, present

* ``image_id`` is a hash of the file's bytes, so the same photo under two names has one id; the
  second name is marked ``duplicate_of`` the first and is not processed twice.
* Shards are append-only: rows never move, new files form new shards after the last one. A backfill
  of a new batch therefore touches only the new shards.
* ``present`` says whether the file was found by the latest discovery; the final dataset holds the
  present rows, so "discovered" and "rows in the final dataset" reconcile.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import pandas as pd

from .config import IMAGE_EXTENSIONS, PipelineConfig
from .storage import ObjectInfo, Storage
from . import catalog
from .tables import read_table, write_table

log = logging.getLogger(__name__)

COLUMNS = ["source_key", "source_uri", "image_id", "size_bytes", "version", "shard", "duplicate_of", "present"]


@dataclass(frozen=True)
class Discovery:
    manifest: pd.DataFrame
    new_files: int
    rehashed: int  # files whose bytes had to be read (new or changed): the work this discovery did

    @property
    def shards(self) -> list[int]:
        present = self.manifest[self.manifest["present"]]
        return sorted(int(s) for s in present["shard"].unique())


def content_id(data: bytes, key: str) -> str:
    """Stable id from the bytes. Empty files get a per-name id: they are not duplicates of each other."""
    digest = hashlib.sha256(data if data else f"empty:{key}".encode())
    return digest.hexdigest()[:20]


def is_image_name(key: str) -> bool:
    return key.lower().endswith(IMAGE_EXTENSIONS)


def list_images(source: Storage, limit: int | None = None) -> list[ObjectInfo]:
    found = sorted((o for o in source.list() if is_image_name(o.key)), key=lambda o: o.key)
    return found if limit is None else found[:limit]


def load_manifest(root: Storage) -> pd.DataFrame:
    manifest = read_table(root, catalog.MANIFEST)
    if manifest is None:
        manifest = pd.DataFrame(columns=COLUMNS)
    return manifest.astype({c: _dtype(c) for c in COLUMNS})


def discover(config: PipelineConfig, source: Storage, root: Storage) -> Discovery:
    """List the source, hash what is new or changed, assign new files to new shards, save."""
    previous = load_manifest(root)
    listed = list_images(source, config.limit)
    known = {
        (row.source_key, int(row.size_bytes), row.version): row.image_id
        for row in previous.itertuples(index=False)
    }

    current: list[tuple[ObjectInfo, str]] = []
    rehashed = 0
    for i, obj in enumerate(listed):
        image_id = known.get((obj.key, obj.size, obj.version))
        if image_id is None:
            image_id = content_id(source.read_bytes(obj.key), obj.key)
            rehashed += 1
        current.append((obj, image_id))
        if (i + 1) % 5000 == 0:
            log.info("discover: %d/%d files listed, %d hashed", i + 1, len(listed), rehashed)

    manifest, new_files = _assign_shards(previous, current, source, config.shard_size)
    if not manifest.equals(previous):
        write_table(root, catalog.MANIFEST, manifest)
    log.info(
        "discover: %d images found, %d new, %d hashed, %d shards",
        len(current), new_files, rehashed, manifest["shard"].nunique(),
    )
    return Discovery(manifest=manifest, new_files=new_files, rehashed=rehashed)


def _assign_shards(
    previous: pd.DataFrame, current: list[tuple[ObjectInfo, str]], source: Storage, shard_size: int
) -> tuple[pd.DataFrame, int]:
    seen = {(k, i) for k, i in zip(previous["source_key"], previous["image_id"])}
    first_key_of = {}  # image_id -> the first source_key it was seen under (in shard order)
    for row in previous.sort_values(["shard", "source_key"]).itertuples(index=False):
        first_key_of.setdefault(row.image_id, row.source_key)

    next_shard = int(previous["shard"].max()) + 1 if len(previous) else 0
    new_rows = []
    for obj, image_id in current:
        if (obj.key, image_id) in seen:
            continue
        original = first_key_of.setdefault(image_id, obj.key)
        new_rows.append({
            "source_key": obj.key,
            "source_uri": source.uri_for(obj.key),
            "image_id": image_id,
            "size_bytes": obj.size,
            "version": obj.version,
            "shard": next_shard + len(new_rows) // shard_size,
            "duplicate_of": original if original != obj.key else "",
            "present": True,
        })

    manifest = pd.concat([previous, pd.DataFrame(new_rows, columns=COLUMNS)], ignore_index=True)
    # A file keeps its row while its (name, content) is unchanged; refresh the listing token so an
    # unchanged file with a new mtime is not hashed again next time.
    listed = {(obj.key, image_id): obj for obj, image_id in current}
    keys = list(zip(manifest["source_key"], manifest["image_id"]))
    manifest["present"] = [k in listed for k in keys]
    manifest["version"] = [listed[k].version if k in listed else v for k, v in zip(keys, manifest["version"])]
    manifest = manifest.astype({c: _dtype(c) for c in COLUMNS})
    return manifest.reset_index(drop=True), len(new_rows)


def shard_rows(manifest: pd.DataFrame, shard: int) -> pd.DataFrame:
    rows = manifest[manifest["shard"] == shard]
    if rows.empty:
        raise KeyError(f"shard {shard} is not in the manifest")
    return rows.reset_index(drop=True)


def shard_fingerprint(rows: pd.DataFrame, **params: object) -> str:
    """Identifies a stage's input for one shard: its members and the stage's parameters."""
    digest = hashlib.sha256()
    for key, image_id in sorted(zip(rows["source_key"], rows["image_id"])):
        digest.update(f"{key}\0{image_id}\n".encode())
    for name in sorted(params):
        digest.update(f"{name}={params[name]!r}\n".encode())
    return digest.hexdigest()[:20]


def _dtype(column: str) -> str:
    return {"size_bytes": "int64", "shard": "int64", "present": "bool"}.get(column, "object")
