"""Stage: the shards' vectors stacked into ``features/image_vectors.npy`` with an aligned index
(``features/image_index``: row i describes vector i), and the face vectors of ``label_unit=face`` the
same way (``features/face_vectors.npy``, ``features/face_index``). Only this step reads every shard's
vectors; a new batch costs embed only its own shards."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd

from emotion_pipeline.core import catalog
from emotion_pipeline.core.errors import MissingUpstream
from emotion_pipeline.core.config import PipelineConfig
from emotion_pipeline.core.results import FeaturesResult
from emotion_pipeline.core.runner import StageRun, run_stage
from emotion_pipeline.core.storage import Storage
from emotion_pipeline.core.tables import read_table, write_table
from emotion_pipeline.modeling.embedding import DIM
from emotion_pipeline.stages.embed import FACE_INDEX_COLUMNS, npy_bytes


def assemble_features(config: PipelineConfig, *, root: Storage | None = None) -> FeaturesResult:
    """``run_stage("assemble_features", config)``: assemble the vectors unless they are up to date."""
    return run_stage("assemble_features", config, root=root)


def assemble(run: StageRun) -> FeaturesResult:
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
    index, vectors = _stack(root, shards, catalog.vector_index, catalog.shard_vectors,
                            {"image_id": object, "source_key": object, "shard": "int64", "input": object})
    # No shard yet (a scheduled run before any photo landed): empty outputs, and training skips.
    index.insert(0, "row", np.arange(len(index)))
    root.write_bytes(catalog.IMAGE_VECTORS, npy_bytes(vectors))
    write_table(root, catalog.IMAGE_INDEX, index)
    # Shards embedded before face vectors existed have none: as under label_unit=photo.
    faces, face_vectors = _stack(root, [s for s in shards if catalog.table_exists(root, catalog.face_vector_index(s))],
                                 catalog.face_vector_index, catalog.shard_face_vectors, FACE_INDEX_COLUMNS)
    faces.insert(0, "row", np.arange(len(faces)))
    root.write_bytes(catalog.FACE_VECTORS, npy_bytes(face_vectors))
    write_table(root, catalog.FACE_INDEX, faces, csv=False)
    return FeaturesResult(vectors=len(index), dim=int(vectors.shape[1]),
                          vectors_uri=root.uri_for(catalog.IMAGE_VECTORS), face_vectors=len(faces))


def _stack(root: Storage, shards: list[int], index_key, vectors_key, empty: dict) -> tuple[pd.DataFrame, np.ndarray]:
    """The shards' index tables and vector matrices, stacked in shard order (typed empty ones for none)."""
    indexes = [read_table(root, index_key(s)) for s in shards]
    matrices = [np.load(io.BytesIO(root.read_bytes(vectors_key(s)))) for s in shards]
    index = pd.concat(indexes, ignore_index=True) if indexes else pd.DataFrame(
        {name: pd.Series(dtype=kind) for name, kind in empty.items()})
    vectors = np.concatenate(matrices) if matrices else np.zeros((0, DIM), dtype=np.float32)
    if len(index) != len(vectors):
        raise AssertionError(f"index has {len(index)} rows but there are {len(vectors)} vectors")
    # A row embed could not make an input for (status and error in its shard's index) holds a zero
    # vector: it never reaches training. Shards embedded before rows had a status are all ok.
    embedded = (index["status"].fillna("ok") == "ok").to_numpy() if "status" in index else np.ones(len(index), bool)
    return index[embedded].drop(columns=["status", "error"], errors="ignore").reset_index(drop=True), vectors[embedded]
