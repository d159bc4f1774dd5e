"""Label-policy curves: the same rule as annotate, re-applied over a grid of thresholds."""
import numpy as np
import pandas as pd
import pytest

from emotion_pipeline.core.config import EMOTIONS, PipelineConfig
from emotion_pipeline.labelling import label_policy
from emotion_pipeline.reporting.charts import label_policy_chart, teacher_policy_chart
from emotion_pipeline.stages.annotate import AnnotatedPhoto, _photo_row
from tests.labelling.test_labels import photo_face


def random_faces(seed: int, photos: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(photos):
        for index in range(int(rng.integers(1, 4))):
            scores = rng.dirichlet(np.full(len(EMOTIONS), 0.7)) * 100
            rows.append({"image_id": f"p{p}", "source_key": f"p{p}.jpg", "face_index": index,
                         "x": 0, "y": 0, "w": int(rng.integers(5, 120)), "h": int(rng.integers(5, 120)),
                         "confidence": float(rng.choice([0.5, 0.9, 0.97, 0.999])),
                         **{f"emotion_{e}": float(v) for e, v in zip(EMOTIONS, scores)},
                         "dominant_emotion": EMOTIONS[int(np.argmax(scores))]})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("policy", [
    {"min_face_confidence": 0.9, "min_face_size": 0, "min_emotion_margin": 0.0, "label_face": "largest"},
    {"min_face_confidence": 0.95, "min_face_size": 40, "min_emotion_margin": 0.1, "label_face": "largest"},
    {"min_face_confidence": 0.5, "min_face_size": 20, "min_emotion_margin": 0.2, "label_face": "most_confident"},
])
def test_the_curves_label_each_photo_as_annotate_does(policy):
    faces = random_faces(7)
    config = PipelineConfig(source="s", root="r", **policy)
    expected = {}
    for image_id, group in faces.groupby("image_id"):
        rows = [{**r, "confident": r["confidence"] >= config.min_face_confidence,
                 "eligible": r["confidence"] >= config.min_face_confidence and r["h"] >= config.min_face_size}
                for r in group.to_dict("records")]
        photo = AnnotatedPhoto(image_id, "k", 0, "ok", faces=[photo_face(r) for r in rows])
        expected[image_id] = _photo_row(photo, config)["label"]
    labels = label_policy.photo_labels(faces, policy)
    assert {k: (v if isinstance(v, str) else None) for k, v in labels.items()} == expected


def test_stricter_thresholds_keep_fewer_labels_and_agreement_is_measured_on_those_kept():
    faces = random_faces(3, photos=200)
    photos = pd.Series(sorted(faces["image_id"].unique()) + ["no-face-photo"])
    config = PipelineConfig(source="s", root="r")
    truth = label_policy.photo_labels(faces, {"min_face_confidence": 0.9, "min_face_size": 0,
                                              "min_emotion_margin": 0.3, "label_face": "largest"}).dropna()
    curves = label_policy.policy_curves(config, photos, faces, caption_labels=truth)
    assert set(curves) == {"min_face_size", "min_face_confidence", "min_emotion_margin"}
    for knob, points in curves.items():
        coverage = [p["coverage"] for p in points]
        assert coverage == sorted(coverage, reverse=True), knob
        assert all(0 <= c <= 200 / 201 for c in coverage)
    margin = {p["value"]: p for p in curves["min_emotion_margin"]}
    # At the reference's own margin every kept label is the reference's: agreement 1 on all of them.
    assert margin[0.3]["caption_agreement"] == 1.0 and margin[0.3]["caption_n"] == len(truth)
    assert margin[0.0]["caption_agreement"] == 1.0  # a laxer margin keeps the same labels on those photos
    chosen = label_policy.chosen_points(config, curves)
    assert chosen["min_face_confidence"]["value"] == config.min_face_confidence  # the detector's own (yunet: 0.7)
    assert label_policy_chart(curves, chosen)[:4] == b"\x89PNG"


def test_gold_curves_use_the_stored_face_and_skip_sizes_for_crops():
    gold = pd.DataFrame({"image_id": ["g1", "g2", "g3"], "label": ["happy", "sad", "happy"],
                         "status": ["ok", "ok", "no_face"], "face_w": [48, 48, None], "face_h": [48, 48, None],
                         "face_confidence": [1.0, 1.0, None],
                         **{f"deepface_{e}": [90.0 if e == "happy" else 1.0, 90.0 if e == "happy" else 1.0, None]
                            for e in EMOTIONS}})
    config = PipelineConfig(source="s", root="r")
    faces = random_faces(1, photos=5)
    sized = label_policy.policy_curves(config, faces["image_id"], faces, gold=gold)
    crops = label_policy.policy_curves(config, faces["image_id"], faces, gold=gold, gold_sizes=False)
    big = next(p for p in sized["min_face_size"] if p["value"] == 60)
    assert big["gold_n"] == 0 and big["gold_agreement"] is None  # 48 px faces are all too small
    assert next(p for p in crops["min_face_size"] if p["value"] == 60)["gold_n"] == 2
    assert sized["min_face_size"][0]["gold_agreement"] == 0.5  # g1 right, g2 (sad) called happy


def with_second_teacher(faces: pd.DataFrame, seed: int) -> pd.DataFrame:
    """``faces`` with mini-Xception scores (``xception_*``) drawn independently of DeepFace's."""
    rng = np.random.default_rng(seed)
    scores = rng.dirichlet(np.full(len(EMOTIONS), 0.7), size=len(faces)) * 100
    return faces.assign(**{f"xception_{e}": scores[:, i] for i, e in enumerate(EMOTIONS)})


def independent_point(faces: pd.DataFrame, photos: list[str], truth: pd.Series, config: PipelineConfig,
                      prefixes: list[str], margin: float) -> tuple[float, float]:
    """Coverage and caption agreement at one margin, by hand: each photo's largest eligible face (first
    detected on a tie), the average of the named score sets, the dominant emotion if it is one of the
    five classes and leads the runner-up by ``margin`` of the total."""
    labels = {}
    for image_id in photos:
        group = faces[(faces["image_id"] == image_id) & (faces["confidence"] >= config.min_face_confidence)
                      & (faces["h"] >= config.min_face_size)]
        if group.empty:
            continue
        face = group.loc[(group["w"] * group["h"]).idxmax()]  # idxmax: the first of equal areas
        scores = np.mean([[face[f"{p}{e}"] for e in EMOTIONS] for p in prefixes], axis=0)
        shares = np.sort(scores / scores.sum())[::-1]
        top = EMOTIONS[int(np.argmax(scores))]
        if top in ("happy", "sad", "angry", "surprise", "neutral") and shares[0] - shares[1] >= margin:
            labels[image_id] = top
    agree = [labels[i] == truth[i] for i in truth.index if i in labels]
    return len(labels) / len(photos), sum(agree) / len(agree)


def test_curves_per_teacher_differ_where_the_teachers_differ():
    faces = with_second_teacher(random_faces(5, photos=200), seed=11)
    photos = sorted(faces["image_id"].unique())
    config = PipelineConfig(source="s", root="r", label_face="largest")
    truth = label_policy.photo_labels(faces, {"min_face_confidence": config.min_face_confidence,
                                              "min_face_size": config.min_face_size,
                                              "min_emotion_margin": 0.0, "label_face": "largest"}).dropna()
    curves = label_policy.teacher_curves(config, pd.Series(photos), faces, caption_labels=truth)
    assert set(curves) == {"deepface", "mini_xception", "mean"}
    assert curves["deepface"] == label_policy.policy_curves(config, pd.Series(photos), faces, caption_labels=truth)
    margin = {teacher: {p["value"]: p for p in c["min_emotion_margin"]} for teacher, c in curves.items()}
    for teacher, prefixes in (("mini_xception", ["xception_"]), ("mean", ["emotion_", "xception_"])):
        coverage, agreement = independent_point(faces, photos, truth, config, prefixes, margin=0.2)
        assert margin[teacher][0.2]["coverage"] == pytest.approx(coverage), teacher
        assert margin[teacher][0.2]["caption_agreement"] == pytest.approx(agreement), teacher
    # The captions here are DeepFace's own labels: its curve agrees fully, the other network's does not.
    assert margin["deepface"][0.2]["caption_agreement"] == 1.0
    assert margin["mini_xception"][0.2]["caption_agreement"] < 0.6
    for knob in label_policy.GRIDS:
        assert curves["mini_xception"][knob] != curves["deepface"][knob], knob

    # Where both networks give the same scores, every teacher's curves are DeepFace's.
    same = faces.assign(**{f"xception_{e}": faces[f"emotion_{e}"] for e in EMOTIONS})
    alike = label_policy.teacher_curves(config, pd.Series(photos), same, caption_labels=truth)
    assert alike["mini_xception"] == alike["mean"] == alike["deepface"] == curves["deepface"]
    # Faces annotated without the second teacher's file: DeepFace's curves only.
    assert set(label_policy.teacher_curves(config, pd.Series(photos), faces.drop(
        columns=[f"xception_{e}" for e in EMOTIONS]), caption_labels=truth)) == {"deepface"}
    chosen = {t: label_policy.chosen_points(config, c) for t, c in curves.items()}
    assert teacher_policy_chart(curves, chosen)[:4] == b"\x89PNG"
