"""The one label rule: which of the five classes a face's emotion scores say, or no label.

Every place that turns scores into a label calls ``label_of``: annotate (the training labels), the
gold check, the caption check, the label-policy curves and the API, so that "DeepFace's label" means
the same thing in every figure.

The rule, on DeepFace's seven scores: the dominant emotion, when it is one of the five classes and
leads the runner-up by at least ``min_margin`` (scores as shares of 1). Fear or disgust dominant, or a
near tie, is *no label* (``None``): such a face says nothing the classifier could learn. Scores over
the five classes only (the trained model's probabilities) follow the same rule without fear and disgust.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from emotion_pipeline.core.config import CLASSES, EMOTIONS

NO_LABEL = "no label"  # how the checks' tables and charts name a face without a label
SCORE_TABLE_NDIM = 2  # a (faces x scores) array
MARGIN_SCORES = 2  # a margin needs the dominant score and a runner-up


def label_of(scores: Sequence[float] | np.ndarray | Mapping[str, float], *, min_margin: float = 0.0) -> str | None:
    """The label of one face, or ``None``.

    Args:
        scores: DeepFace's 7 emotion scores (in ``EMOTIONS`` order, any scale: percentages or shares),
            5 scores over ``CLASSES`` (a model's probabilities), or a mapping from emotion name to score.
        min_margin: the dominant score must lead the runner-up by this much, as shares of the total.

    Returns:
        One of ``CLASSES``, or ``None`` when fear or disgust dominates, the margin is too small, or
        there are no scores (NaN).
    """
    names, values = _named(scores)
    return _rule(names, values[None, :], min_margin)[0]


def labels_of(scores: np.ndarray, *, min_margin: float = 0.0) -> list[str | None]:
    """``label_of`` for each row of a (faces x 7) or (faces x 5) score array, in one vectorised pass."""
    values = np.asarray(scores, dtype=float)
    if values.ndim != SCORE_TABLE_NDIM or not len(values):
        return []
    names, _ = _named(values[0])
    return _rule(names, values, min_margin)


def margin_of(scores: Sequence[float] | np.ndarray | Mapping[str, float]) -> float:
    """How far the dominant score leads the runner-up, as shares of the total (0 when undefined)."""
    _, values = _named(scores)
    if len(values) < MARGIN_SCORES or not np.all(np.isfinite(values)) or values.sum() <= 0:
        return 0.0
    top = np.sort(values / values.sum())[::-1]
    return float(top[0] - top[1])


def _rule(names: tuple[str, ...], values: np.ndarray, min_margin: float) -> list[str | None]:
    """The rule itself, on rows of scores named ``names``."""
    totals = values.sum(axis=1, keepdims=True)
    valid = np.isfinite(values).all(axis=1) & (totals[:, 0] > 0)
    shares = np.where(valid[:, None], values / np.where(totals > 0, totals, 1), 0.0)
    order = np.argsort(-shares, axis=1, kind="stable")
    rows = np.arange(len(values))
    margin = shares[rows, order[:, 0]] - (shares[rows, order[:, 1]] if values.shape[1] > 1 else 0.0)
    is_class = np.isin(np.asarray(names)[order[:, 0]], CLASSES)
    keep = valid & is_class & (margin >= min_margin)
    return [names[i] if k else None for i, k in zip(order[:, 0], keep)]


def face_labels(faces, *, min_margin: float = 0.0) -> list[str | None]:
    """``label_of`` for every row of an annotate faces table; a face that is not ``eligible`` (too
    small, not confident) or has no emotion scores gets no label. What ``label_unit=face`` trains on."""
    columns = [f"emotion_{e}" for e in EMOTIONS]
    if not len(faces) or not set(columns) <= set(faces.columns):
        return [None] * len(faces)
    labels = labels_of(faces[columns].to_numpy(dtype=float), min_margin=min_margin)
    return [label if ok else None for label, ok in zip(labels, faces["eligible"].astype(bool))]


def eligible(confidence: float, height: float, *, min_confidence: float, min_size: float) -> bool:
    """May this face label a photo: confident enough and tall enough (pixels of the original photo)."""
    return confidence >= min_confidence and height >= min_size


def pick_label_face(faces: Sequence[Mapping], how: str) -> Mapping:
    """The face that labels a photo among its eligible ``faces`` (each with w, h, confidence):
    ``largest`` (by area) or ``most_confident``; ties go to the first detected."""
    if how == "most_confident":
        return max(faces, key=lambda f: f["confidence"])
    return max(faces, key=lambda f: f["w"] * f["h"])


def _named(scores) -> tuple[tuple[str, ...], np.ndarray]:
    if isinstance(scores, Mapping):
        names = tuple(n for n in EMOTIONS if n in scores)
        return names, np.array([float(scores[n]) for n in names], dtype=float)
    values = np.asarray(scores, dtype=float).ravel()
    if len(values) == len(EMOTIONS):
        return EMOTIONS, values
    if len(values) == len(CLASSES):
        return CLASSES, values
    raise ValueError(f"{len(values)} scores: expected DeepFace's {len(EMOTIONS)} or the {len(CLASSES)} classes'")
