"""Label-policy curves: how many photos keep a label, and how right those labels are, per threshold.

Each knob of the label policy (``min_face_size``, ``min_face_confidence``, ``min_emotion_margin``)
trades coverage for agreement: a stricter threshold labels fewer photos, hopefully better ones. For
each knob, the others held at the run's settings, ``policy_curves`` re-applies the one label rule
(``labels.py``) to the faces annotate already scored (no model runs again) over a grid of values and
measures:

* coverage: the share of annotated photos that keep a label;
* agreement with the gold set (people's labels) and with the caption labels, over the photos that
  keep a label.

The report plots agreement against coverage per knob, so a user picks thresholds from a plot. The
gold set stores one face per photo, chosen under the run's settings, so its curves start there.

The curves can be drawn per teacher (``teacher_curves``): the same rule on DeepFace's scores, the
mini-Xception's or their mean (``teachers.teacher_scores``), since a threshold that suits one network's
confidence need not suit the other's. The gold set holds DeepFace's scores only, so the other
teachers' curves have no gold agreement until the gold check scores with both.
"""
from __future__ import annotations

from typing import Any

import pandas as pd

from emotion_pipeline.core.config import TEACHERS, PipelineConfig
from emotion_pipeline.labelling import teachers
from emotion_pipeline.labelling.labels import labels_of

GRIDS: dict[str, list[float]] = {
    "min_face_size": [0, 10, 15, 20, 30, 40, 60, 80, 120],
    # YuNet's scores stop below 0.95, MTCNN's crowd near 1: the grid covers both detectors' ranges.
    "min_face_confidence": [0.0, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999],
    "min_emotion_margin": [0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6],
}


def photo_labels(faces: pd.DataFrame, policy: dict[str, Any], teacher: str = "deepface") -> pd.Series:
    """The label of each photo with a face under ``policy`` (the label knobs), by image_id; photos
    without an eligible face or whose label face gets no label are None.

    ``faces``: one row per face with image_id, w, h, confidence and the teacher's seven scores
    (``emotion_*`` DeepFace's, ``xception_*`` the mini-Xception's, both for the mean)."""
    if faces.empty:
        return pd.Series(dtype=object)
    keep = faces[(faces["confidence"] >= policy["min_face_confidence"]) & (faces["h"] >= policy["min_face_size"])]
    order = ["confidence", "face_index"] if policy["label_face"] == "most_confident" else ["area", "face_index"]
    keep = keep.assign(area=keep["w"] * keep["h"], face_index=-keep.get("face_index", 0))
    # Ties go to the first detected face, as pick_label_face: the highest -face_index wins.
    chosen = keep.sort_values(order, ascending=False, kind="stable").drop_duplicates("image_id")
    scores = teachers.teacher_scores(chosen, teacher)  # NaN where that teacher did not score: no label
    labels = labels_of(scores, min_margin=policy["min_emotion_margin"])  # one vectorised pass
    return pd.Series(labels, index=chosen["image_id"].to_numpy(), dtype=object).reindex(faces["image_id"].unique())


def policy_curves(  # noqa: PLR0913 (the references are optional, each named where given)
        config: PipelineConfig, photos: pd.Series, faces: pd.DataFrame, *, gold: pd.DataFrame | None = None,
        caption_labels: pd.Series | None = None, gold_sizes: bool = True,
        teacher: str = "deepface") -> dict[str, list[dict[str, Any]]]:
    """Per knob, one point per grid value: the value, coverage and the agreements, under ``teacher``'s
    scores (DeepFace's by default; the gold agreement only where the gold set holds that teacher's).

    Args:
        config: the run's settings (the knobs not being varied stay at these).
        photos: image_ids of the annotated photos (status ok or no_face): coverage's denominator.
        faces: annotate's faces tables of those photos.
        gold: the gold check's table (label, status, face_w/face_h, face_confidence, deepface_* scores).
        caption_labels: caption label by image_id (photos with one).
        gold_sizes: False when the gold photos are face crops (``gold_detector=skip``): the size knob
            does not apply to them.

    Returns:
        ``{knob: [{"value", "coverage", "labelled", "gold_agreement", "gold_n", "caption_agreement",
        "caption_n"}, ...]}``; an agreement is None where no photo with a reference kept a label.
    """
    current = {k: getattr(config, k) for k in (*GRIDS, "label_face")}
    gold_faces = _gold_faces(gold)
    gold_faces = gold_faces if gold_faces is not None and has_scores(gold_faces, teacher) else None
    curves = {}
    for knob, grid in GRIDS.items():
        points = []
        for value in grid:
            policy = {**current, knob: value}
            labels = photo_labels(faces, policy, teacher).reindex(pd.Index(photos).unique())
            point = {"value": value, "coverage": float(labels.notna().mean()) if len(labels) else 0.0,
                     "labelled": int(labels.notna().sum())}
            point.update(_agreement("caption", labels, caption_labels))
            if gold_faces is not None:
                gold_policy = policy if gold_sizes else {**policy, "min_face_size": 0}
                point.update(_agreement("gold", photo_labels(gold_faces, gold_policy, teacher),
                                        gold_faces.set_index("image_id")["label"]))
            points.append(point)
        curves[knob] = points
    return curves


def teacher_curves(  # noqa: PLR0913 (policy_curves' arguments)
        config: PipelineConfig, photos: pd.Series, faces: pd.DataFrame, *, gold: pd.DataFrame | None = None,
        caption_labels: pd.Series | None = None,
        gold_sizes: bool = True) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """``policy_curves`` per teacher, ``{teacher: curves}``: DeepFace's always, the mini-Xception's and
    the mean's where the faces hold its scores (not for faces annotated without its file)."""
    return {teacher: policy_curves(config, photos, faces, gold=gold, caption_labels=caption_labels,
                                   gold_sizes=gold_sizes, teacher=teacher)
            for teacher in TEACHERS if teacher == "deepface" or has_scores(faces, teacher)}


def has_scores(faces: pd.DataFrame, teacher: str) -> bool:
    """Whether any face holds ``teacher``'s seven scores."""
    return bool(len(faces)) and bool(pd.notna(teachers.teacher_scores(faces, teacher)).all(axis=1).any())


def _gold_faces(gold: pd.DataFrame | None) -> pd.DataFrame | None:
    """The gold table as a faces table (one face per photo with a face), with the teachers' scores it
    holds (DeepFace's ``deepface_*``; a ``xception_*`` set where the gold check stored one)."""
    if gold is None or gold.empty:
        return None
    with_face = gold[gold["status"] == "ok"].drop_duplicates("image_id")
    return pd.DataFrame({"image_id": with_face["image_id"], "face_index": 0, "w": with_face["face_w"],
                         "h": with_face["face_h"], "confidence": with_face["face_confidence"],
                         "label": with_face["label"], **teachers.gold_scores(with_face)})


def _agreement(name: str, labels: pd.Series, reference: pd.Series | None) -> dict[str, Any]:
    if reference is None:
        return {}
    both = pd.DataFrame({"label": labels, "reference": reference}).dropna()
    return {f"{name}_agreement": float((both["label"] == both["reference"]).mean()) if len(both) else None,
            f"{name}_n": int(len(both))}


def chosen_points(config: PipelineConfig, curves: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """The point of each curve at the run's own setting (nearest grid value)."""
    return {knob: min(points, key=lambda p: abs(p["value"] - getattr(config, knob))) for knob, points in curves.items()}
