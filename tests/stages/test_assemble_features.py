"""assemble_features stacks every shard's vectors: the rows it keeps, and how many copies of the matrix it
holds (at 300k rows x 2048 float32 each copy is 2.4 GB: bench.scale_rows measured 7.3 GiB)."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pandas as pd

from emotion_pipeline.core import catalog
from emotion_pipeline.core.arrays import write_array
from emotion_pipeline.core.config import PipelineConfig
from emotion_pipeline.core.runner import run_stage
from emotion_pipeline.core.storage import LocalStorage
from emotion_pipeline.core.tables import write_json, write_table

ROWS, SHARDS = 2000, 3  # 49 MB: np.save writes in 16 MiB chunks, so a chunk is a fraction of a copy


def embedded_root(tmp_path, failed: dict[int, int] | None = None) -> tuple[LocalStorage, np.ndarray]:
    """A root whose shards embed has done (index, vectors, done marker), and the vectors in shard order;
    ``failed``: shard -> the row embed could not make an input for (a zero vector, status failed)."""
    root, rng, manifest, matrices = LocalStorage(tmp_path), np.random.default_rng(0), [], []
    for shard in range(SHARDS):
        ids = [f"{shard}-{i}" for i in range(ROWS)]
        manifest += [{"source_key": f"{i}.jpg", "source_uri": f"{i}.jpg", "image_id": i, "size_bytes": 1,
                      "version": "1", "shard": shard, "duplicate_of": "", "present": True} for i in ids]
        status = ["failed" if (failed or {}).get(shard) == i else "ok" for i in range(ROWS)]
        write_table(root, catalog.vector_index(shard), pd.DataFrame(
            {"image_id": ids, "source_key": [f"{i}.jpg" for i in ids], "shard": shard, "input": "photo",
             "status": status, "error": None}))
        matrices.append(rng.standard_normal((ROWS, 2048), dtype=np.float32))
        write_array(root, catalog.shard_vectors(shard), matrices[-1])
        write_json(root, catalog.done_marker(catalog.EMBED_FOLDER, shard), {"fingerprint": str(shard), "summary": {}})
    write_table(root, catalog.MANIFEST, pd.DataFrame(manifest))
    return root, np.concatenate(matrices)


def config() -> PipelineConfig:
    return PipelineConfig(source="unused", root="unused")


def test_every_embedded_row_in_shard_order_and_no_failed_one(tmp_path):
    root, vectors = embedded_root(tmp_path, failed={1: 7})
    run_stage("assemble_features", config(), root=root)
    stacked, index = catalog.read_features(root)
    kept = np.ones(len(vectors), bool)
    kept[ROWS + 7] = False
    assert np.array_equal(stacked, vectors[kept]) and list(index["row"]) == list(range(len(stacked)))
    assert "1-7" not in set(index["image_id"])


def test_it_holds_at_most_two_copies_of_the_matrix(tmp_path):
    """The shards' matrices are let go once concatenated, and a matrix that keeps every row is not
    copied again through a mask: it held three copies (and the bytes it writes) before."""
    root, vectors = embedded_root(tmp_path)
    tracemalloc.start()
    try:
        run_stage("assemble_features", config(), root=root)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2.5 * vectors.nbytes, f"assemble_features held {peak / vectors.nbytes:.1f} copies of the matrix"
    assert np.array_equal(catalog.read_features(root)[0], vectors)
