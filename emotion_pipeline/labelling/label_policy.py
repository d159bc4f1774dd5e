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
"""
from __future__ import annotations

from typing import Any

import pandas as pd

from emotion_pipeline.core.config import EMOTIONS, PipelineConfig
from emotion_pipeline.labelling.labels import labels_of

GRIDS: dict[str, list[float]] = {
    "min_face_size": [0, 10, 15, 20, 30, 40, 60, 80, 120],
    "min_face_confidence": [0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999],
    "min_emotion_margin": [0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6],
}


def photo_labels(faces: pd.DataFrame, policy: dict[str, Any]) -> pd.Series:
    """The label of each photo with a face under ``policy`` (the label knobs), by image_id; photos
    without an eligible face or whose label face gets no label are None.

    ``faces``: one row per face with image_id, w, h, confidence and the seven ``emotion_*`` scores."""
    if faces.empty:
        return pd.Series(dtype=object)
    keep = faces[(faces["confidence"] >= policy["min_face_confidence"]) & (faces["h"] >= policy["min_face_size"])]
    order = ["confidence", "face_index"] if policy["label_face"] == "most_confident" else ["area", "face_index"]
    keep = keep.assign(area=keep["w"] * keep["h"], face_index=-keep.get("face_index", 0))
    # Ties go to the first detected face, as pick_label_face: the highest -face_index wins.
    chosen = keep.sort_values(order, ascending=False, kind="stable").drop_duplicates("image_id")
    scores = chosen[[f"emotion_{e}" for e in EMOTIONS]].to_numpy(dtype=float)
    labels = labels_of(scores, min_margin=policy["min_emotion_margin"])  # one vectorised pass
    return pd.Series(labels, index=chosen["image_id"].to_numpy(), dtype=object).reindex(faces["image_id"].unique())


def policy_curves(config: PipelineConfig, photos: pd.Series, faces: pd.DataFrame,
                  gold: pd.DataFrame | None = None, caption_labels: pd.Series | None = None,
                  gold_sizes: bool = True) -> dict[str, list[dict[str, Any]]]:
    """Per knob, one point per grid value: the value, coverage and the agreements.

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
    curves = {}
    for knob, grid in GRIDS.items():
        points = []
        for value in grid:
            policy = {**current, knob: value}
            labels = photo_labels(faces, policy).reindex(pd.Index(photos).unique())
            point = {"value": value, "coverage": float(labels.notna().mean()) if len(labels) else 0.0,
                     "labelled": int(labels.notna().sum())}
            point.update(_agreement("caption", labels, caption_labels))
            if gold_faces is not None:
                gold_policy = policy if gold_sizes else {**policy, "min_face_size": 0}
                point.update(_agreement("gold", photo_labels(gold_faces, gold_policy), gold_faces.set_index(
                    "image_id")["label"]))
            points.append(point)
        curves[knob] = points
    return curves


def _gold_faces(gold: pd.DataFrame | None) -> pd.DataFrame | None:
    """The gold table as a faces table (one face per photo with a face)."""
    if gold is None or gold.empty:
        return None
    with_face = gold[gold["status"] == "ok"].drop_duplicates("image_id")
    return pd.DataFrame({"image_id": with_face["image_id"], "face_index": 0, "w": with_face["face_w"],
                         "h": with_face["face_h"], "confidence": with_face["face_confidence"],
                         "label": with_face["label"],
                         **{f"emotion_{e}": with_face[f"deepface_{e}"] for e in EMOTIONS}})


def _agreement(name: str, labels: pd.Series, reference: pd.Series | None) -> dict[str, Any]:
    if reference is None:
        return {}
    both = pd.DataFrame({"label": labels, "reference": reference}).dropna()
    return {f"{name}_agreement": float((both["label"] == both["reference"]).mean()) if len(both) else None,
            f"{name}_n": int(len(both))}


def chosen_points(config: PipelineConfig, curves: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """The point of each curve at the run's own setting (nearest grid value)."""
    return {knob: min(points, key=lambda p: abs(p["value"] - getattr(config, knob))) for knob, points in curves.items()}
