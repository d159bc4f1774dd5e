"""Tables and small JSON documents in storage: parquet with a CSV twin, each written atomically
(arrays: ``arrays``)."""
from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from emotion_pipeline.core.errors import MissingUpstream
from emotion_pipeline.core.storage import Storage


def write_table(storage: Storage, key_base: str, table: pd.DataFrame, csv: bool = True) -> None:
    """Write ``<key_base>.parquet`` (and ``<key_base>.csv`` for people and spreadsheets)."""
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False)
    storage.write_bytes(f"{key_base}.parquet", buffer.getvalue())
    if csv:
        storage.write_bytes(f"{key_base}.csv", table.to_csv(index=False).encode())


def read_table(storage: Storage, key_base: str) -> pd.DataFrame | None:
    try:
        data = storage.read_bytes(f"{key_base}.parquet")
    except FileNotFoundError:
        return None
    return pd.read_parquet(io.BytesIO(data))


def require_table(storage: Storage, key_base: str) -> pd.DataFrame:
    """``read_table`` of an upstream stage's output: ``MissingUpstream`` when it is not written."""
    table = read_table(storage, key_base)
    if table is None:
        raise MissingUpstream(f"{key_base} is not written yet: run the stage that writes it first")
    return table


def stack_tables(tables: Iterable[pd.DataFrame | None],
                 empty: Mapping[str, Any] | Sequence[str] | None = None) -> pd.DataFrame:
    """``tables`` one under the other, in order, with a fresh index (``None``, a table not written,
    left out); with none at all, ``empty_table(empty)``."""
    found = [table for table in tables if table is not None]
    return pd.concat(found, ignore_index=True) if found else empty_table(empty)


def empty_table(columns: Mapping[str, Any] | Sequence[str] | None = None) -> pd.DataFrame:
    """A table without rows: with ``columns`` (names, or names to dtypes), or none."""
    if isinstance(columns, Mapping):
        return pd.DataFrame({name: pd.Series(dtype=kind) for name, kind in columns.items()})
    return pd.DataFrame(columns=list(columns)) if columns else pd.DataFrame()


def write_json(storage: Storage, key: str, document: Any) -> None:
    storage.write_bytes(key, json.dumps(document, indent=2, sort_keys=True, default=str).encode())


def read_json(storage: Storage, key: str) -> Any | None:
    try:
        return json.loads(storage.read_bytes(key))
    except FileNotFoundError:
        return None
