"""The one label rule (labels.label_of) and the places that must use it."""
import ast
from pathlib import Path

import numpy as np
import pytest

from emotion_pipeline.core.config import CLASSES, EMOTIONS, PipelineConfig
from emotion_pipeline.labelling.labels import face_labels, label_of, labels_of, margin_of, pick_label_face
from emotion_pipeline.labelling.photo_faces import PhotoFace
from emotion_pipeline.modeling.evaluation import deepface_agreement
from emotion_pipeline.stages.annotate import AnnotatedPhoto, _photo_row

PACKAGE = Path(__file__).resolve().parents[2] / "emotion_pipeline"


def seven(**scores):
    return [scores.get(e, 0.0) for e in EMOTIONS]


def test_the_dominant_of_seven_is_the_label_unless_fear_or_disgust_wins():
    assert label_of(seven(happy=60, sad=30, fear=10)) == "happy"
    assert label_of(seven(fear=50, happy=45, sad=5)) is None  # fear wins: no label, not the best of the five
    assert label_of(seven(disgust=0.5, angry=0.4, neutral=0.1)) is None
    assert label_of({"surprise": 0.7, "neutral": 0.3}) == "surprise"
    assert label_of([0.1, 0.2, 0.5, 0.1, 0.1]) == "angry"  # five scores: CLASSES order (a model's output)
    assert label_of(seven()) is None and label_of([np.nan] * 7) is None


def test_a_near_tie_gets_no_label_under_a_margin():
    scores = seven(happy=45, neutral=40, sad=15)
    assert margin_of(scores) == pytest.approx(0.05)
    assert label_of(scores, min_margin=0.04) == "happy"
    assert label_of(scores, min_margin=0.06) is None
    assert labels_of(np.array([scores, seven(sad=90, happy=10)]), min_margin=0.06) == [None, "sad"]


def test_every_eligible_face_is_labelled_by_the_same_rule():
    import pandas as pd

    faces = pd.DataFrame([seven(happy=60, sad=40), seven(fear=90, happy=10), seven(angry=55, neutral=45),
                          seven(surprise=80, happy=20)], columns=[f"emotion_{e}" for e in EMOTIONS])
    faces["eligible"] = [True, True, True, False]
    assert face_labels(faces) == ["happy", None, "angry", None]  # fear wins: none; not eligible: none
    assert face_labels(faces, min_margin=0.15) == ["happy", None, None, None]
    assert face_labels(faces.drop(columns="emotion_happy")) == [None] * 4  # no emotion action: no label


def test_wrong_score_counts_are_an_error():
    with pytest.raises(ValueError, match="expected DeepFace's 7"):
        label_of([0.5, 0.5, 0.0])


def test_the_label_face_is_the_largest_or_the_most_confident():
    faces = [{"w": 10, "h": 10, "confidence": 0.99}, {"w": 40, "h": 40, "confidence": 0.91}]
    assert pick_label_face(faces, "largest") is faces[1]
    assert pick_label_face(faces, "most_confident") is faces[0]


def face(index, h, confidence, **scores):
    return {"face_index": index, "x": 0, "y": 0, "w": h, "h": h, "confidence": confidence,
            "confident": confidence >= 0.9, "eligible": None,
            **{f"emotion_{e}": v for e, v in zip(EMOTIONS, seven(**scores))}, "dominant_emotion": None}


def photo_row(faces, **knobs):
    config = PipelineConfig(source="s", root="r", **knobs)
    for f in faces:
        f["eligible"] = f["confidence"] >= config.min_face_confidence and f["h"] >= config.min_face_size
    return _photo_row(AnnotatedPhoto("i", "k", 0, "ok", faces=[photo_face(f) for f in faces]), config)


BOX = ("face_index", "x", "y", "w", "h", "confidence", "confident", "eligible")


def photo_face(row: dict) -> PhotoFace:
    """The face of annotate's faces-table row ``row``: its box columns, and the rest as its scores."""
    return PhotoFace(*(row[k] for k in BOX), scores={k: v for k, v in row.items() if k not in BOX})


def test_annotate_labels_photos_by_the_policy():
    small_happy, big_fear = face(0, 20, 0.99, happy=90, sad=10), face(1, 80, 0.95, fear=60, happy=40)
    assert photo_row([small_happy, big_fear])["label"] is None  # the largest face: fear, no label
    assert photo_row([small_happy, big_fear], label_face="most_confident")["label"] == "happy"
    row = photo_row([small_happy, big_fear], label_face="most_confident", min_face_size=30)
    assert row["label"] is None and row["label_face_index"] == 1  # the small face may not label
    assert photo_row([small_happy], min_face_size=30)["status"] == "no_face"
    tie = face(0, 50, 0.99, happy=48, neutral=46, sad=6)
    assert photo_row([tie])["label"] == "happy" and photo_row([tie], min_emotion_margin=0.05)["label"] is None


def test_no_label_is_a_column_of_its_own_in_the_gold_check():
    import pandas as pd

    gold = pd.DataFrame({"label": ["happy", "happy", "sad", "sad"], "status": ["ok", "ok", "ok", "no_face"],
                         "deepface_label": ["happy", None, "sad", None]})
    figures = deepface_agreement(gold)
    assert figures["no_label_share"] == pytest.approx(1 / 3) and figures["no_face_share"] == 0.25
    matrix = np.array(figures["deepface"]["confusion_matrix"])
    assert matrix.shape == (len(CLASSES), len(CLASSES) + 1)
    assert matrix[CLASSES.index("happy")].tolist() == [1, 0, 0, 0, 0, 1]  # one right, one "no label"
    assert figures["deepface"]["accuracy"] == pytest.approx(2 / 3)  # no label is a miss


def test_no_module_picks_a_label_by_its_own_argmax():
    """Labels come from labels.label_of only: no other module indexes CLASSES or EMOTIONS by an argmax
    (faces.py's ``dominant_emotion`` is DeepFace.analyze's own output field, kept as DeepFace gives it)."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "labels.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name)
                    and "argmax" in ast.unparse(node.slice)
                    and (node.value.id == "CLASSES" or (node.value.id == "EMOTIONS" and path.name != "faces.py"))):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {ast.unparse(node)}")
    assert not offenders, offenders
