"""label_unit=face: every labelled face is a training row, a photo's faces share its split, and the
report compares the face-trained head with a photo-trained one on the test faces, the gold set and
the captions. Runs on a copy of trained_root's outputs (its annotations are reused: only the
embedding, training and evaluation run again), with a small gold set of people's labels."""
import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from emotion_pipeline.core import catalog
from emotion_pipeline.core.config import CLASSES, EMOTIONS
from emotion_pipeline.core.storage import open_storage
from emotion_pipeline.core.tables import read_table
from emotion_pipeline.labelling.images import read_photo
from emotion_pipeline.modeling import tracking
from emotion_pipeline.modeling.embedding import decode_photo, image_vectors, model_input, resnet50
from tests.conftest import SHARED, copy_photos

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]
LABELLED = SHARED / "data" / "labeled_faces"


@pytest.fixture(scope="module")
def face_run(trained_root, tmp_path_factory):
    from emotion_pipeline.stages.all import run_all_stages

    config, _ = trained_root
    base = tmp_path_factory.mktemp("face_unit")
    # Everything but the MLflow store (its artifact paths point into trained_root, which is read-only here).
    shutil.copytree(config.root, base / "out", ignore=shutil.ignore_patterns(catalog.MLFLOW_FOLDER))
    gold = base / "gold"
    for label in CLASSES:
        copy_photos(LABELLED / label, gold / label, sorted(p.name for p in (LABELLED / label).glob("*"))[:4])
    faces_config = dataclasses.replace(config, root=str(base / "out"), label_unit="face", gold=str(gold),
                                       gold_detector="skip")
    return faces_config, run_all_stages(faces_config)


def test_the_faces_table_labels_every_eligible_face_by_the_one_rule(face_run):
    config, _ = face_run
    root = open_storage(config.root)
    faces = catalog.read_faces(root, catalog.read_dataset(root)["shard"].unique())
    scores = faces[[f"emotion_{e}" for e in EMOTIONS]].to_numpy()
    dominant = np.array(EMOTIONS)[scores.argmax(1)]
    expected = np.where(faces["eligible"] & np.isin(dominant, CLASSES), dominant, None)
    assert faces["label"].fillna("-").tolist() == pd.Series(expected).fillna("-").tolist()
    assert faces["label"].notna().sum() > 0 and faces["label"].isna().sum() > 0


def mean_teacher_labels(faces: pd.DataFrame) -> pd.Series:
    """Each face's label under teacher=mean, from its two score columns: the one rule (eligible, the
    dominant emotion one of the classes; the default margin is 0) on the mean of both teachers."""
    scores = (faces[[f"emotion_{e}" for e in EMOTIONS]].to_numpy() + faces[[f"xception_{e}" for e in EMOTIONS]]
              .to_numpy()) / 2
    dominant = np.array(EMOTIONS)[np.nan_to_num(scores, nan=-1).argmax(1)]
    usable = faces["eligible"].to_numpy(bool) & np.isfinite(scores).all(1) & np.isin(dominant, CLASSES)
    return pd.Series(np.where(usable, dominant, None), index=faces.index)


def test_every_labelled_face_of_an_ok_photo_is_a_training_row_and_photos_never_straddle_splits(face_run):
    """Training rows are the faces the `teacher` knob (mean, the default) labels, recomputed here from
    both networks' scores: not DeepFace's `label` alone."""
    config, results = face_run
    assert config.teacher == "mean" and config.min_emotion_margin == 0
    root = open_storage(config.root)
    dataset = catalog.read_dataset(root)
    ok = set(dataset.loc[dataset["status"] == "ok", "image_id"])
    faces = catalog.read_faces(root, dataset["shard"].unique())
    faces = faces.assign(label=mean_teacher_labels(faces))
    expected = faces[faces["image_id"].isin(ok) & faces["label"].notna()]
    counts = expected["label"].value_counts()
    expected = expected[expected["label"].map(counts) >= config.min_rows_per_class]
    assert (expected.groupby("image_id").size() > 1).any()  # photos with several labelled faces

    train = results["train"]
    assert train.trained and train.photo_model_uri, train
    rows = read_table(root, catalog.training_rows(train.model_version))
    assert set(zip(rows["image_id"], rows["face_index"].astype(int))) == \
        set(zip(expected["image_id"], expected["face_index"].astype(int)))
    assert dict(rows["label"].value_counts()) == dict(expected["label"].value_counts())
    assert sum(sum(c.values()) for c in train.counts.values()) == len(rows)
    assert (rows.groupby("image_id")["split"].nunique() == 1).all()
    # The splits recorded when trained_root trained on photos hold for their faces.
    recorded = read_table(root, catalog.SPLIT_ASSIGNMENTS).set_index("image_id")["split"]
    both = rows[rows["image_id"].isin(recorded.index)]
    assert len(both) and (both["split"] == both["image_id"].map(recorded)).all()


def test_every_face_any_teacher_labels_has_a_vector_so_switching_the_teacher_embeds_nothing(face_run):
    from emotion_pipeline.labelling.teachers import LABEL_COLUMNS

    config, _ = face_run
    root = open_storage(config.root)
    dataset = catalog.read_dataset(root)
    ok = set(dataset.loc[dataset["status"] == "ok", "image_id"])
    faces = catalog.read_faces(root, dataset["shard"].unique())
    any_teacher = faces[faces["image_id"].isin(ok) & faces[list(LABEL_COLUMNS.values())].notna().any(axis=1)]
    _, index = catalog.read_face_features(root)
    assert set(zip(index["image_id"], index["face_index"].astype(int))) == \
        set(zip(any_teacher["image_id"], any_teacher["face_index"].astype(int)))
    only_deepface = any_teacher["label_deepface"].notna() & any_teacher["label_mean"].isna()
    only_mean = any_teacher["label_mean"].notna() & any_teacher["label_deepface"].isna()
    assert only_deepface.any() or only_mean.any()  # the union is more than one teacher's faces


def test_face_vectors_are_their_crops_embedded(face_run):
    config, _ = face_run
    root = open_storage(config.root)
    vectors, index = catalog.read_face_features(root)
    photo_vectors, photo_index = catalog.read_features(root)
    dataset = catalog.read_dataset(root).drop_duplicates("image_id").set_index("image_id")
    assert len(vectors) == len(index) > 0
    label_face = index["face_index"].astype(int) == index["image_id"].map(dataset["label_face_index"])
    # The label face's vector is the photo's (embedded from that face); the others are their own crops.
    first = index[label_face].iloc[0]
    photo_row = photo_index.set_index("image_id").loc[first["image_id"], "row"]
    assert np.array_equal(vectors[first["row"]], photo_vectors[photo_row])
    other = index[~label_face].iloc[0]
    source = open_storage(config.source)
    crop = model_input(decode_photo(read_photo(source, other["source_key"]), config.max_image_pixels),
                       tuple(other[k] for k in ("face_x", "face_y", "face_w", "face_h")))
    expected = image_vectors(resnet50(config.embed_weights, config.mixed_precision), crop[None], 1)[0]
    assert np.abs(vectors[other["row"]] - expected).max() <= 1e-5 * np.abs(expected).max()


def test_face_rows_keep_their_boxes_and_the_heat_maps_show_those_faces(face_run):
    from emotion_pipeline.modeling.data import load_training_data
    from emotion_pipeline.stages.evaluate import _heatmap_photos

    config, _ = face_run
    root, source = open_storage(config.root), open_storage(config.source)
    data = load_training_data(root, config.min_rows_per_class, unit="face")
    _, index = catalog.read_face_features(root)
    box = ["face_x", "face_y", "face_w", "face_h"]
    joined = data.frame.merge(index[["image_id", "face_index", *box]], on=["image_id", "face_index"],
                              suffixes=("", "_index"))
    assert len(joined) == len(data.frame)
    for k in box:
        assert (joined[k] == joined[f"{k}_index"]).all(), k
    images, labels = _heatmap_photos(config, source, root, data)
    test = data.frame[data.frame["split"] == "test"].head(config.shap_images)
    assert len(images) == len(test) > 0 and labels == test["label"].tolist()
    for image, face in zip(images, test.itertuples()):
        photo = decode_photo(read_photo(source, face.source_key), config.max_image_pixels)
        assert np.array_equal(image, model_input(photo, (face.face_x, face.face_y, face.face_w, face.face_h)))


def test_the_report_compares_face_and_photo_training(face_run, monkeypatch):
    config, results = face_run
    root = open_storage(config.root)
    train = results["train"]
    assert results["evaluate"].evaluated
    metrics = json.loads(root.read_bytes(catalog.report_file(train.model_version, catalog.REPORT_METRICS)))
    rows = read_table(root, catalog.training_rows(train.model_version))
    assert metrics["metrics"]["photo"]["n"] == metrics["metrics"]["model"]["n"] == (rows["split"] == "test").sum()
    gold = metrics["gold"]
    assert gold["model_photo"]["n"] == gold["model"]["n"] == 20
    assert metrics["captions"]["model_photo"]["n"] == metrics["captions"]["model"]["n"] > 0
    page = root.read_bytes(catalog.report_file(train.model_version, catalog.REPORT_PAGE)).decode()
    assert "the same head trained on one row per photo" in page and "Faces per split" in page
    assert metrics["label_unit"] == "face"

    monkeypatch.setenv("MLFLOW_TRACKING_URI", train.tracking_uri)
    mlflow = tracking.use_experiment(config)
    run = mlflow.MlflowClient().get_run(train.run_id)
    assert run.data.params["config.label_unit"] == "face"
    assert run.data.metrics["gold.model_photo.accuracy"] == pytest.approx(gold["model_photo"]["accuracy"])
    assert "photo.test_macro_f1" in run.data.metrics
    # The photo head is a real model of its own, scored on the same gold faces.
    photo_head = tracking.load_model(train.photo_model_uri)
    assert photo_head.count_params() > 0 and photo_head.name == "emotion_head"


def test_evaluate_reads_the_rows_train_used_whatever_its_own_config_says(face_run, monkeypatch):
    from emotion_pipeline.stages.evaluate import _test_metrics

    config, results = face_run
    train = results["train"]
    assert train.label_unit == "face"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", train.tracking_uri)
    tracking.use_experiment(config)
    photo_config = dataclasses.replace(config, label_unit="photo")
    tested = _test_metrics(photo_config, open_storage(config.root), train)
    data = tested.data
    assert "face_index" in data.frame and tested.metrics["model"]["n"] == (data.frame["split"] == "test").sum()
