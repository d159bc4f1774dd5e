"""A real storage wrapped so that every key a caller reads is recorded: what a stage's done marker must
cover (tests/test_read_coverage.py)."""
from __future__ import annotations

from collections.abc import Iterator

from emotion_pipeline.core.storage import ObjectInfo, Storage, open_storage


class RecordingStorage:
    """Passes every call to ``storage``; records in ``keys`` each key read, checked for, listed (as
    ``prefix/``) or named by URI (a URI is how a key gets read outside this interface)."""

    def __init__(self, storage: Storage, keys: set[str]) -> None:
        self.storage, self.keys = storage, keys
        self.uri = storage.uri

    def read_bytes(self, key: str) -> bytes:
        self.keys.add(key)
        return self.storage.read_bytes(key)

    def exists(self, key: str) -> bool:
        self.keys.add(key)
        return self.storage.exists(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self.keys.add(prefix.rstrip("/") + "/")
        return self.storage.list(prefix)

    def uri_for(self, key: str) -> str:
        self.keys.add(key)
        return self.storage.uri_for(key)

    def __getattr__(self, name: str):  # writes, leases, sweeps: not reads
        return getattr(self.storage, name)


Reads = dict[tuple[str, "int | None"], dict[str, set[str]]]  # (stage, shard) -> {"source" | "root": keys}


class ReadLog:
    """The source and root of one pipeline, wrapped per stage and shard: ``reads[(stage, shard)]``."""

    def __init__(self, source_uri: str, root_uri: str) -> None:
        self.source, self.root = open_storage(source_uri), open_storage(root_uri)
        self.reads: Reads = {}

    def storages_for(self, stage: str, shard: int | None) -> tuple[RecordingStorage, RecordingStorage]:
        """For ``stages.all.run_all_stages``: the storages ``stage`` runs with on ``shard``."""
        keys = self.reads.setdefault((stage, shard), {"source": set(), "root": set()})
        return RecordingStorage(self.source, keys["source"]), RecordingStorage(self.root, keys["root"])
