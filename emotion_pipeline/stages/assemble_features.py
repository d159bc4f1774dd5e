"""Stage: the shards' vectors stacked into ``features/image_vectors.npy`` with an aligned index
(``features/image_index``: row i describes vector i), and the face vectors of ``label_unit=face`` the
same way (``features/face_vectors.npy``, ``features/face_index``). Only this step reads every shard's
vectors; a new batch costs embed only its own shards."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from emotion_pipeline.core import catalog
from emotion_pipeline.core.arrays import read_array, write_array
from emotion_pipeline.core.errors import MissingUpstream
from emotion_pipeline.core.results import FeaturesResult
from emotion_pipeline.core.runner import StageRun
from emotion_pipeline.core.tables import write_table
from emotion_pipeline.modeling.embedding import DIM, FACE_INDEX_COLUMNS

INDEX_COLUMNS = {"image_id": object, "source_key": object, "shard": "int64", "input": object}


def assemble_features(run: StageRun) -> FeaturesResult:
    """The stage function: stack the shards' vectors in shard order.

    Args:
        run: the config, both storages and every present photo's manifest row (``runner.StageRun``).

    Returns:
        The number of vectors, their dimension and the matrix's URI.

    Raises:
        MissingUpstream: a present shard is not embedded yet.
    """
    root = run.root
    shards = run.present_shards()
    missing = [s for s in shards if catalog.read_done(root, catalog.EMBED_FOLDER, s) is None]
    if missing:
        raise MissingUpstream(f"shards {missing} are not embedded yet: run the embed stage first")
    index, vectors = _stack(run, shards, catalog.VECTOR_INDEX_TABLE, catalog.shard_vectors, INDEX_COLUMNS)
    # No shard yet (a scheduled run before any photo landed): empty outputs, and training skips.
    index.insert(0, "row", np.arange(len(index)))
    write_array(root, catalog.IMAGE_VECTORS, vectors)
    write_table(root, catalog.IMAGE_INDEX, index)
    # Shards embedded before face vectors existed have none: as under label_unit=photo.
    face_shards = [s for s in shards if catalog.table_exists(root, catalog.face_vector_index(s))]
    faces, face_vectors = _stack(run, face_shards, catalog.FACE_INDEX_TABLE, catalog.shard_face_vectors,
                                 FACE_INDEX_COLUMNS)
    faces.insert(0, "row", np.arange(len(faces)))
    write_array(root, catalog.FACE_VECTORS, face_vectors)
    write_table(root, catalog.FACE_INDEX, faces, csv=False)
    return FeaturesResult(vectors=len(index), dim=int(vectors.shape[1]),
                          vectors_uri=root.uri_for(catalog.IMAGE_VECTORS), face_vectors=len(faces))


def _stack(run: StageRun, shards: list[int], index_table: str, vectors_key: Callable[[int], str],
           empty: dict[str, Any]) -> tuple[pd.DataFrame, np.ndarray]:
    """The shards' index tables (embed's ``index_table``) and vector matrices, stacked in shard order
    (typed empty ones for none)."""
    index = run.tables("embed", index_table, shards=shards, empty=empty)
    matrices = [read_array(run.root, vectors_key(s)) for s in shards]
    vectors = np.concatenate(matrices) if matrices else np.zeros((0, DIM), dtype=np.float32)
    del matrices  # the shards' copies: at 300k rows each copy of the matrix is 2.4 GB
    if len(index) != len(vectors):
        raise AssertionError(f"index has {len(index)} rows but there are {len(vectors)} vectors")
    # A row embed could not make an input for (status and error in its shard's index) holds a zero
    # vector: it never reaches training. Shards embedded before rows had a status are all ok.
    embedded = (index["status"].fillna("ok") == "ok").to_numpy() if "status" in index else np.ones(len(index), bool)
    if not embedded.all():  # a mask would copy the matrix even when it keeps every row
        vectors = vectors[embedded]
    return index[embedded].drop(columns=["status", "error"], errors="ignore").reset_index(drop=True), vectors
