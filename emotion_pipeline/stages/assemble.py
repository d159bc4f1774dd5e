"""Stage: the shards' vectors stacked into ``features/image_vectors.npy`` with an aligned index
(``features/image_index``: row i describes vector i). Only this step reads every shard's vectors;
a new batch costs embed only its own shards."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd

from .. import catalog
from ..config import PipelineConfig
from ..modeling.embedding import DIM
from ..results import FeaturesResult
from ..runner import StageRun, run_stage
from ..storage import Storage
from ..tables import read_table, write_table
from .embed import npy_bytes


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
        RuntimeError: a present shard is not embedded yet.
    """
    root = run.root
    shards = run.present_shards()
    missing = [s for s in shards if catalog.read_done(root, catalog.EMBED_FOLDER, s) is None]
    if missing:
        raise RuntimeError(f"shards {missing} are not embedded yet: run the embed stage first")
    indexes, matrices = [], []
    for shard in shards:
        indexes.append(read_table(root, catalog.vector_index(shard)))
        matrices.append(np.load(io.BytesIO(root.read_bytes(catalog.shard_vectors(shard)))))
    # No shard yet (a scheduled run before any photo landed): empty outputs, and training skips.
    index = pd.concat(indexes, ignore_index=True) if indexes else pd.DataFrame(
        {"image_id": pd.Series(dtype=object), "source_key": pd.Series(dtype=object),
         "shard": pd.Series(dtype="int64"), "input": pd.Series(dtype=object)})
    vectors = np.concatenate(matrices) if matrices else np.zeros((0, DIM), dtype=np.float32)
    if len(index) != len(vectors):
        raise AssertionError(f"index has {len(index)} rows but there are {len(vectors)} vectors")
    index.insert(0, "row", np.arange(len(index)))
    root.write_bytes(catalog.IMAGE_VECTORS, npy_bytes(vectors))
    write_table(root, catalog.IMAGE_INDEX, index)
    return FeaturesResult(vectors=len(index), dim=int(vectors.shape[1]),
                          vectors_uri=root.uri_for(catalog.IMAGE_VECTORS))
