"""The training table: labelled photos joined with their vectors, split stably by image_id.

The split of a photo comes from a hash of its image_id, never from row order, so adding photos never
moves an existing photo to another split. Classes with at least ``min_rows`` photos are guaranteed in
every split: when the hash left a split without one, the photo whose hash lies closest to that
split's range moves (with enough data this never happens, so stability is kept where it matters).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import catalog
from ..config import CLASSES
from ..storage import Storage

SPLITS = {"test": (0.0, 0.15), "val": (0.15, 0.30), "train": (0.30, 1.0)}


@dataclass
class TrainingData:
    frame: pd.DataFrame  # image_id, source_key, label, split, y, row (into vectors)
    vectors: np.ndarray  # aligned with frame

    def part(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        mask = (self.frame["split"] == split).to_numpy()
        return self.vectors[mask], self.frame["y"].to_numpy()[mask]

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for image_id, label, split in sorted(zip(self.frame["image_id"], self.frame["label"], self.frame["split"])):
            digest.update(f"{image_id},{label},{split}\n".encode())
        return digest.hexdigest()[:20]

    def counts(self) -> dict[str, dict[str, int]]:
        table = self.frame.groupby(["split", "label"]).size()
        return {s: {c: int(table.get((s, c), 0)) for c in CLASSES} for s in SPLITS}


def hash_position(image_id: str) -> float:
    """A stable number in [0, 1) for an image_id."""
    return int(hashlib.sha256(image_id.encode()).hexdigest()[:12], 16) / 16**12


def assign_splits(frame: pd.DataFrame, min_rows: int) -> pd.Series:
    position = frame["image_id"].map(hash_position)
    split = pd.Series("train", index=frame.index)
    for name, (low, high) in SPLITS.items():
        split[(position >= low) & (position < high)] = name
    for label, group in frame.groupby("label"):
        if len(group) < min_rows:
            continue
        for name, (low, high) in SPLITS.items():
            members = split[group.index]
            if (members == name).any():
                continue
            donors = members[members.map(members.value_counts()) > 1].index
            distance = (position[donors] - (low + high) / 2).abs()
            split[distance.idxmin()] = name
    return split


def load_training_data(root: Storage, min_rows: int, exclude_ids: set[str] = frozenset()) -> TrainingData:
    dataset = catalog.read_dataset(root)
    if dataset is None or not catalog.table_exists(root, catalog.IMAGE_INDEX):
        raise RuntimeError("no dataset or no assembled vectors yet: run merge and assemble_features first")
    vectors, index = catalog.read_features(root)
    labelled = dataset[dataset["label"].isin(CLASSES) & (dataset["status"] == "ok")]
    labelled = labelled[~labelled["image_id"].isin(exclude_ids)].drop_duplicates("image_id")
    frame = labelled[["image_id", "source_key", "label"]].merge(
        index[["image_id", "row"]].drop_duplicates("image_id"), on="image_id", how="inner")
    frame = frame.sort_values("image_id").reset_index(drop=True)
    frame["split"] = assign_splits(frame, min_rows)
    frame["y"] = frame["label"].map({c: i for i, c in enumerate(CLASSES)}).astype(int)
    return TrainingData(frame=frame, vectors=vectors[frame["row"].to_numpy()])
