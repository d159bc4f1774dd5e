"""Arrays in storage: numpy's ``.npy`` format, written atomically like every key (``storage``).

    write_array(root, catalog.IMAGE_VECTORS, vectors)
    vectors = read_array(root, catalog.IMAGE_VECTORS)
"""
from __future__ import annotations

import io

import numpy as np

from emotion_pipeline.core.storage import Storage


def write_array(storage: Storage, key: str, array: np.ndarray) -> None:
    """Write ``array`` to ``key`` (a ``.npy`` file: dtype and shape travel with it)."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    storage.write_bytes(key, buffer.getvalue())


def read_array(storage: Storage, key: str) -> np.ndarray:
    """The array ``write_array`` wrote to ``key``; ``FileNotFoundError`` when there is none."""
    return np.load(io.BytesIO(storage.read_bytes(key)))
