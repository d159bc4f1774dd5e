"""The training table: labelled photos (or faces) joined with their vectors, split stably by image_id.

A photo's split is decided once and never moves: the first time it trains, from a hash of its
image_id (never row order, never which other photos exist), and from then on as recorded under the
root (``models/split_assignments``, written by train). So adding photos never moves a photo another
model trained on into its test split, and a run from scratch assigns what an incremental one does.
Classes with fewer than ``min_rows`` labelled photos are left out of training; a small class may be
missing from a split, and metrics then cover the classes present.
"""
from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from emotion_pipeline.core import catalog
from emotion_pipeline.core.config import CLASSES, EMOTIONS, PERSON
from emotion_pipeline.core.errors import MissingUpstream
from emotion_pipeline.core.storage import Storage
from emotion_pipeline.core.tables import read_table, write_table
from emotion_pipeline.labelling import teachers

SPLITS = {"test": (0.0, 0.15), "val": (0.15, 0.30), "train": (0.30, 1.0)}
# The test photos whose label a person gave: their own split, never trained on and never in the test
# metrics, where people's labels check the teachers and the model (evaluate's "reviewed" figures).
# Reviewed photos of train and val train with the person's label.
REVIEWED = "reviewed"


@dataclass
class TrainingData:
    # image_id, source_key, label, split, y, row (into vectors), score_<class>; with face_index and the
    # face's box (face_x, face_y, face_w, face_h) when the rows are faces (label_unit=face)
    frame: pd.DataFrame
    vectors: np.ndarray  # aligned with frame
    # Classes min_rows_per_class left out, with their labelled rows: why a small root trains nothing.
    left_out: dict[str, int] = field(default_factory=dict)
    min_rows: int = 0  # the min_rows_per_class these rows were selected with

    def part(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        mask = (self.frame["split"] == split).to_numpy()
        return self.vectors[mask], self.frame["y"].to_numpy()[mask]

    def soft_part(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Vectors and the teacher's scores of the label face over the five classes, as shares of 1:
        the targets of a head trained on soft labels."""
        mask = (self.frame["split"] == split).to_numpy()
        scores = self.frame.loc[mask, [f"score_{c}" for c in CLASSES]].to_numpy(dtype=np.float32)
        if not np.isfinite(scores).all():
            raise ValueError("soft labels need the teacher's emotion scores for every training row (the 'emotion' "
                             "action's emotion_<class> columns, and xception_<class> unless teacher=deepface)")
        return self.vectors[mask], scores / np.maximum(scores.sum(axis=1, keepdims=True), 1e-9)

    def fingerprint(self) -> str:
        """The rows (ids, labels, splits): a face row is ``<image_id>#<face_index>``."""
        digest = hashlib.sha256()
        ids = self.frame["image_id"]
        if "face_index" in self.frame:
            ids = ids + "#" + self.frame["face_index"].astype(int).astype(str)
        for row_id, label, split in sorted(zip(ids, self.frame["label"], self.frame["split"])):
            digest.update(f"{row_id},{label},{split}\n".encode())
        return digest.hexdigest()[:20]

    def digest(self) -> str:
        """The rows and their vectors: what a training learns from."""
        return f"{self.fingerprint()}-{hashlib.sha256(self.vectors.tobytes()).hexdigest()[:20]}"

    def counts(self) -> dict[str, dict[str, int]]:
        """Rows per split and class: train, val, test, and reviewed where people labelled test photos."""
        table = self.frame.groupby(["split", "label"]).size()
        splits = [*SPLITS, *([REVIEWED] if (self.frame["split"] == REVIEWED).any() else [])]
        return {s: {c: int(table.get((s, c), 0)) for c in CLASSES} for s in splits}


def gold_ids(root: Storage) -> set[str]:
    """Content ids of the gold photos (never trained on: people's labels are for checking), empty
    when there is no gold set."""
    table = catalog.read_gold_annotations(root)
    return set() if table is None else set(table["image_id"].dropna())


def hash_position(image_id: str) -> float:
    """A stable number in [0, 1) for an image_id."""
    return int(hashlib.sha256(image_id.encode()).hexdigest()[:12], 16) / 16**12


def assign_splits(frame: pd.DataFrame, assigned: pd.Series | None = None) -> pd.Series:
    """Each row's split: the one ``assigned`` records for its image_id (a Series image_id -> split),
    else the range its ``hash_position`` falls in."""
    position = frame["image_id"].map(hash_position)
    split = pd.Series("train", index=frame.index)
    for name, (low, high) in SPLITS.items():
        split[(position >= low) & (position < high)] = name
    if assigned is not None and len(assigned):
        recorded = frame["image_id"].map(assigned)
        split = recorded.where(recorded.notna(), split)
    return split


def read_split_assignments(root: Storage) -> pd.Series:
    """image_id -> split, for every photo that ever trained a model of this root."""
    table = read_table(root, catalog.SPLIT_ASSIGNMENTS)
    if table is None:
        return pd.Series(dtype=object)
    return table.set_index("image_id")["split"]


def record_split_assignments(root: Storage, frame: pd.DataFrame) -> None:
    """Add ``frame``'s splits (image_id, split) to the recorded ones; recorded ones never change."""
    recorded = read_split_assignments(root)
    new = frame.loc[~frame["image_id"].isin(recorded.index), ["image_id", "split"]].drop_duplicates("image_id")
    new["split"] = new["split"].replace(REVIEWED, "test")  # the hash's split: reviewed is decided each load
    if len(new):
        table = pd.concat([recorded.rename("split").reset_index(), new], ignore_index=True)
        write_table(root, catalog.SPLIT_ASSIGNMENTS, table.sort_values("image_id").reset_index(drop=True))


def load_training_data(root: Storage, min_rows: int, exclude_ids: Collection[str] = frozenset(),
                       unit: str = "photo", teacher: str = "mean") -> TrainingData:
    """The labelled rows of the dataset's ``ok`` photos (gold photos in ``exclude_ids`` left out) with
    their vectors: one per photo (its label face), or with ``unit="face"`` one per labelled face
    (``face_index`` column), every face of a photo in that photo's split. Labels and soft-label scores
    are ``teacher``'s (merge already chose the photos' labels; a face's is picked here)."""
    dataset = catalog.read_dataset(root)
    if dataset is None or not catalog.table_exists(root, catalog.IMAGE_INDEX):
        raise MissingUpstream("no dataset or no assembled vectors yet: run merge and assemble_features first")
    ok = dataset[(dataset["status"] == "ok") & ~dataset["image_id"].isin(exclude_ids)].drop_duplicates("image_id")
    if unit == "face":
        vectors, index = catalog.read_face_features(root)
        labelled = index[index["image_id"].isin(ok["image_id"])].drop_duplicates(["image_id", "face_index"])
        labelled = labelled.assign(label=teachers.chosen_labels(labelled, teacher))
        keys = ["image_id", "source_key", "face_index", "label", "face_x", "face_y", "face_w", "face_h"]
    else:
        vectors, index = catalog.read_features(root)
        labelled = ok.merge(index[["image_id", "row"]].drop_duplicates("image_id"), on="image_id", how="inner")
        keys = ["image_id", "source_key", "label"]
    labelled = labelled[labelled["label"].isin(CLASSES)]
    # The teacher's scores of the face (soft labels); NaN in a dataset nothing was annotated in.
    scores = pd.DataFrame(teachers.teacher_scores(labelled, teacher)[:, [EMOTIONS.index(c) for c in CLASSES]],
                          index=labelled.index, columns=[f"score_{c}" for c in CLASSES])
    frame = pd.concat([labelled[keys], scores, labelled[["row"]]], axis=1)
    counts = frame["label"].value_counts()
    left_out = {c: int(counts[c]) for c in CLASSES if 0 < counts.get(c, 0) < min_rows}
    frame = frame[frame["label"].map(counts) >= min_rows]
    frame = frame.sort_values(["image_id", "face_index"] if unit == "face" else "image_id").reset_index(drop=True)
    split = assign_splits(frame, read_split_assignments(root))
    person_ids = ok.loc[ok.reindex(columns=["label_source"])["label_source"] == PERSON, "image_id"]
    by_person = frame["image_id"].isin(person_ids)
    frame["split"] = split.mask(by_person & (split == "test"), REVIEWED)
    frame["y"] = frame["label"].map({c: i for i, c in enumerate(CLASSES)}).astype(int)
    return TrainingData(frame=frame, vectors=vectors[frame["row"].to_numpy(dtype=int)], left_out=left_out,
                        min_rows=min_rows)
