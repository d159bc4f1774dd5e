"""Tables and small JSON documents in storage: parquet with a CSV twin, each written atomically."""
from __future__ import annotations

import io
import json
from typing import Any

import pandas as pd

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


def write_json(storage: Storage, key: str, document: Any) -> None:
    storage.write_bytes(key, json.dumps(document, indent=2, sort_keys=True, default=str).encode())


def read_json(storage: Storage, key: str) -> Any | None:
    try:
        return json.loads(storage.read_bytes(key))
    except FileNotFoundError:
        return None
