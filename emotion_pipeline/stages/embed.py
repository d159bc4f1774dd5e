"""Stage: a 2048-d ResNet50 vector per annotated photo, per shard (``features/shard=<k>/``).

Input (``embed_input``):
* ``face`` (default): the label face cropped from the original photo. Expressions live in the face;
  a whole-scene embedding mostly sees the scene (clothes, background, crowd), which the five-class
  head would then have to ignore. Photos without a confident face fall back to the whole photo, so
  every annotated photo still gets a vector (the index's ``input`` column says which).
* ``photo``: the whole original photo, letterboxed to 224x224.

With ``label_unit=face`` (which needs ``embed_input=face``) every labelled face of an ``ok`` photo also
gets a vector of its own crop (``face_vectors.npy`` + ``face_index``: the rows of face-level training);
the label face's is the photo's. With ``photo`` those files are empty.

Both go through ``modeling.embedding`` (the one model-input path the API and evaluate use too).
Weights: ``imagenet`` (Keras downloads and caches them), a local ``.h5`` path, or ``none`` (random
values, same graph and cost: what the tests use on machines without internet). Vectors are never faked.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from emotion_pipeline.core import catalog
from emotion_pipeline.core.arrays import write_array
from emotion_pipeline.core.config import PipelineConfig
from emotion_pipeline.core.progress import Progress, in_order_ahead
from emotion_pipeline.core.results import EmbedResult
from emotion_pipeline.core.runner import StageRun
from emotion_pipeline.core.storage import Storage
from emotion_pipeline.core.tables import empty_table, require_table, write_table
from emotion_pipeline.labelling import teachers
from emotion_pipeline.labelling.images import read_photo
from emotion_pipeline.labelling.labels import face_labels
from emotion_pipeline.labelling.photo_boundary import PhotoBoundary
from emotion_pipeline.modeling.embedding import (
    DIM,
    FACE_BOX,
    FACE_INDEX_COLUMNS,
    INPUT_SIZE,
    image_vectors,
    resnet50,
    row_input,
)

log = logging.getLogger(__name__)


def embed(run: StageRun) -> EmbedResult:
    """The stage function: vectors for the shard's annotated photos (status ok or no_face).

    Args:
        run: the config, both storages and the shard's manifest rows (``runner.StageRun``).

    Returns:
        How many vectors, and how many came from a face crop or from the whole photo.

    Raises:
        MissingUpstream: the shard is not annotated yet.
        ValueError, OSError: ResNet50's weights cannot be loaded (a wrong path, no download).
    """
    config, source, root, shard = run.config, run.source, run.root, run.shard_number
    notes = run.table("annotate")
    todo = notes[notes["status"].isin(["ok", "no_face"])].reset_index(drop=True)
    index = pd.DataFrame({
        "image_id": todo["image_id"], "source_key": todo["source_key"], "shard": shard,
        "input": np.where((config.embed_input == "face") & todo["face_w"].notna(), "face", "photo"),
    })

    embedder = _Embedder(config, source, resnet50(config.embed_weights, config.mixed_precision))
    vectors = embedder.vectors(f"embed shard {shard}", todo, index,
                               lambda i: embedder.input(todo.iloc[i], index.at[i, "input"]))

    faces = labelled_faces(config, root, shard, todo)
    face_vectors = embedder.face_vectors(faces, todo, index, vectors)
    write_array(root, catalog.shard_vectors(shard), vectors)
    write_table(root, catalog.vector_index(shard), index, csv=False)
    write_array(root, catalog.shard_face_vectors(shard), face_vectors)
    write_table(root, catalog.face_vector_index(shard), faces, csv=False)
    ok, faces_ok = index[index["status"] == "ok"], int((faces["status"] == "ok").sum())
    result = EmbedResult(shard=shard, vectors=len(ok), inputs=ok["input"].value_counts().to_dict(), faces=faces_ok,
                         failed=len(index) - len(ok) + len(faces) - faces_ok)
    log.info("embed shard %d: %d vectors %s, %d face vectors, %d failed", shard, len(ok), result.inputs, faces_ok,
             result.failed)
    return result


def labelled_faces(config: PipelineConfig, root: Storage, shard: int, todo: pd.DataFrame) -> pd.DataFrame:
    """The training faces of a shard's ``ok`` photos under ``label_unit=face``: every face annotate
    labelled (eligible, the photo label's rule: ``labels.face_labels``) under any teacher, so that
    switching the teacher embeds no face again; none under ``photo``."""
    if config.label_unit != "face":
        return empty_table(FACE_INDEX_COLUMNS)
    faces = require_table(root, catalog.faces(shard))
    if "label" not in faces:  # annotated before faces carried their labels: the same rule, here
        faces["label"] = face_labels(faces, min_margin=config.min_emotion_margin)
    ok = todo.loc[todo["status"] == "ok", "source_key"]
    labelled = faces.reindex(columns=["label", *teachers.LABEL_COLUMNS.values()]).notna().any(axis=1)
    faces = faces[labelled & faces["source_key"].isin(ok)]
    faces = faces.rename(columns={k[len("face_"):]: k for k in FACE_BOX}).assign(shard=shard)
    return faces.reindex(columns=list(FACE_INDEX_COLUMNS)).astype(FACE_INDEX_COLUMNS).reset_index(drop=True)


@dataclass
class _Embedder:
    """ResNet50 (``model``) over a shard's rows, each row's input made from its source photo."""
    config: PipelineConfig
    source: Storage
    model: Any

    def input(self, row: pd.Series, kind: str) -> np.ndarray:
        """The model input of an annotations or face row: its face box when ``kind`` is ``face``,
        else its whole photo (``embedding.row_input``, as evaluate and the gold vectors make it)."""
        return row_input(read_photo(self.source, row["source_key"]), row, face=kind == "face",
                         max_pixels=self.config.max_image_pixels)

    def face_vectors(self, faces: pd.DataFrame, todo: pd.DataFrame, index: pd.DataFrame,
                     photo_vectors: np.ndarray) -> np.ndarray:
        """A vector per row of ``faces``: the photo's own where it was embedded from that very face,
        else the face's crop through the same model input path."""
        position = pd.Series(np.arange(len(todo)), index=todo["source_key"])  # of each photo in todo
        photo_row = faces["source_key"].map(position).to_numpy(dtype=int)
        reused = ((index["input"].to_numpy()[photo_row] == "face") & (index["status"].to_numpy()[photo_row] == "ok")
                  & (todo["label_face_index"].to_numpy()[photo_row] == faces["face_index"].to_numpy()))
        vectors = np.zeros((len(faces), DIM), dtype=np.float32)
        vectors[reused] = photo_vectors[photo_row[reused]]
        crops = faces[~reused].reset_index(drop=True)
        faces["status"], faces["error"] = "ok", None
        if len(crops):
            vectors[~reused] = self.vectors(f"embed faces shard {int(crops['shard'].iloc[0])}", crops, crops,
                                            lambda i: self.input(crops.iloc[i], "face"))
            faces.loc[~reused, ["status", "error"]] = crops[["status", "error"]].to_numpy()
        return vectors

    def vectors(self, label: str, rows: pd.DataFrame, index: pd.DataFrame,
                load: Callable[[int], np.ndarray]) -> np.ndarray:
        """A vector of the input ``load(i)`` makes for each of ``rows``, in batches: the next batch is
        decoded in threads while the model runs on the current one. ``index`` gets each row's status and
        error: an input that cannot be made (its photo changed since annotate read it) leaves its row a
        zero vector and its status, never the shard failed (``photo_boundary``)."""
        n, boundary, failures = len(rows), PhotoBoundary("embed"), {}
        blank = np.zeros((INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)

        def guarded(i: int) -> np.ndarray:
            outcome = boundary.run({"source_key": rows["source_key"].iloc[i]}, lambda: load(i))
            if isinstance(outcome, dict):
                failures[i] = (outcome["status"], outcome["error"])
                return blank
            return outcome

        vectors = np.zeros((n, DIM), dtype=np.float32)
        progress = Progress(label, n)
        batch = max(1, self.config.embed_batch_size)
        with ThreadPoolExecutor(max_workers=max(1, self.config.threads)) as pool:
            loaded = in_order_ahead(pool, guarded, range(n), ahead=batch)
            for start in range(0, n, batch):
                images = np.stack([next(loaded) for _ in range(min(batch, n - start))])
                vectors[start:start + len(images)] = image_vectors(self.model, images, batch)
                progress.step(len(images))
        boundary.check()
        index["status"], index["error"] = "ok", None
        for i, (status, error) in failures.items():
            vectors[i] = 0
            index.loc[index.index[i], ["status", "error"]] = [status, error]
        return vectors
