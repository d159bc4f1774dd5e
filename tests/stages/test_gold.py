"""`emotion-pipeline run --gold` on the shared human-labelled faces, verified independently with scikit-learn."""
import shutil

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score, recall_score

from emotion_pipeline.core.config import CLASSES, EMOTIONS
from emotion_pipeline.core.storage import open_storage
from tests.conftest import FACES, FLICKR, SHARED, copy_photos, flickr_names
from tests.labelling.test_captions import FLICKR_CAPTIONS, independent_caption_labels
from tests.pipeline_run import MIN_ROWS_PER_CLASS, SECOND_HALF_ARGS, run_pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]
LABELLED = SHARED / "data" / "labeled_faces"
PER_CLASS = 30  # of the 100 per class there: the figures are checked exactly, not their size
GOLD = 5 * PER_CLASS + 5


def independent_model_predictions(train: dict, table: pd.DataFrame, monkeypatch) -> list[str]:
    """The registered head on ResNet50 vectors of the gold photos, built here from Keras and PIL alone."""
    import keras
    import mlflow
    from PIL import Image, ImageOps

    monkeypatch.setenv("MLFLOW_TRACKING_URI", train["tracking_uri"])  # undone after the test
    mlflow.set_tracking_uri(train["tracking_uri"])  # (it also exports MLFLOW_TRACKING_URI)
    head = mlflow.keras.load_model(train["model_uri"])
    keras.utils.set_random_seed(0)  # weights=None is seeded the same way in every pipeline process
    resnet = keras.applications.ResNet50(include_top=False, pooling="avg", weights=None, input_shape=(224, 224, 3))
    predicted = []
    for start in range(0, len(table), 64):
        batch = []
        for row in table.iloc[start:start + 64].itertuples():
            photo = ImageOps.exif_transpose(Image.open(row.uri)).convert("RGB")
            face = photo.crop((row.face_x, row.face_y, row.face_x + row.face_w, row.face_y + row.face_h))
            batch.append(np.asarray(ImageOps.pad(face, (224, 224), method=Image.Resampling.BICUBIC, color=(0, 0, 0))))
        images = keras.applications.resnet50.preprocess_input(np.stack(batch).astype(np.float32))
        predicted += [CLASSES[i] for i in head.predict(resnet.predict(images, verbose=0), verbose=0).argmax(1)]
    return predicted


def assert_deepface_figures(table: pd.DataFrame, gold_result: dict) -> None:
    """The gold check's DeepFace labels and figures, recomputed from the scores in ``table``."""
    # The one label rule, recomputed: the dominant of DeepFace's seven scores, no label for fear/disgust.
    scores = table[[f"deepface_{e}" for e in EMOTIONS]].to_numpy()
    dominant = np.array(EMOTIONS)[scores.argmax(1)]
    expected = np.where(np.isin(dominant, CLASSES), dominant, "no label")
    assert (expected == table["deepface_label"].fillna("no label")).all()

    # The reported DeepFace figures equal scikit-learn's on the same predictions ("no label" a miss).
    reported, predicted = gold_result["deepface"], table["deepface_label"].fillna("no label")
    assert reported["accuracy"] == pytest.approx(accuracy_score(table["label"], predicted))
    assert reported["macro_f1"] == pytest.approx(
        f1_score(table["label"], predicted, labels=list(CLASSES), average="macro"))
    recalls = recall_score(table["label"], predicted, labels=list(CLASSES), average=None)
    assert [reported["per_class"][c]["recall"] for c in CLASSES] == pytest.approx(list(recalls))
    assert gold_result["no_label_share"] == pytest.approx((predicted == "no label").mean())
    assert reported["accuracy"] > 0.4  # FER-trained weights on FER crops: far above chance (0.2)
    assert gold_result["no_face_share"] == 0.0


def assert_model_figures(model_figures: dict, table: pd.DataFrame, predictions: list[str]) -> None:
    """The model's gold figures against its confusion matrix and its ``predictions`` made here."""
    assert model_figures["n"] == GOLD
    confusion = np.array(model_figures["confusion_matrix"])
    predicted = confusion.sum(axis=0)
    assert predicted.sum() == GOLD
    truth_counts = table["label"].value_counts().reindex(CLASSES).to_numpy()
    assert (confusion.sum(axis=1) == truth_counts).all()
    assert model_figures["accuracy"] == pytest.approx(np.trace(confusion) / GOLD)
    # At most 2 photos may differ (float noise between the two preprocessing paths near a tie).
    assert model_figures["accuracy"] == pytest.approx(accuracy_score(table["label"], predictions), abs=2 / GOLD)
    assert model_figures["macro_f1"] == pytest.approx(
        f1_score(table["label"], predictions, labels=list(CLASSES), average="macro"), abs=0.03)


def test_gold_check_against_people_and_no_leak_into_training(tmp_path, monkeypatch):
    src = tmp_path / "photos"
    copy_photos(FLICKR, src, flickr_names(30, offset=300))
    faces = sorted(p.name for p in FACES.glob("img*.jpg"))[:25]
    copy_photos(FACES, src / "faces", faces)
    # The gold set: 30 of the FER2013 crops per class, plus 5 photos that are also in the source. Those
    # 5 get a DeepFace label in the dataset and would be trained on, unless the gold exclusion works.
    gold = tmp_path / "gold"
    for label in CLASSES:
        copy_photos(LABELLED / label, gold / label, sorted(p.name for p in (LABELLED / label).glob("*"))[:PER_CLASS])
    leaked = faces[:5]
    for name in leaked:
        shutil.copy2(FACES / name, gold / "happy" / name)
    summary = run_pipeline(str(src), str(tmp_path / "out"), tmp_path, "--gold", str(gold), "--gold-detector",
                           "skip", "--shard-size", "30", "--captions", str(FLICKR_CAPTIONS),
                           "--caption-min-agree", "1", *SECOND_HALF_ARGS)
    assert summary["state"] == "success"
    results = {t["task"]: t["result"] for t in summary["tasks"] if t["map_index"] == -1}
    results["gold"] = results["check_gold"]
    root = open_storage(str(tmp_path / "out"))

    # Every gold photo went through DeepFace's emotion model (skip detector: the crop is the face).
    table = pd.read_parquet(root.uri_for("gold/annotations.parquet"))
    counts = table["label"].value_counts()
    assert len(table) == GOLD and counts["happy"] == PER_CLASS + 5 and (counts[list(CLASSES[1:])] == PER_CLASS).all()
    assert (table["status"] == "ok").all()
    assert_deepface_figures(table, results["gold"])

    # The model's figures, side by side, recomputed here from the registered model's own predictions.
    version = results["train"]["model_version"]
    metrics = pd.read_json(root.uri_for(f"reports/{version}/metrics.json"), typ="series")
    predictions = independent_model_predictions(results["train"], table, monkeypatch)
    assert_model_figures(metrics["gold"]["model"], table, predictions)

    # The CLI's --captions reached evaluate (the figures themselves: test_captions), and the
    # label-policy curves measure agreement with people (crops: the size knob leaves gold alone).
    assert metrics["captions"]["covered"] == len(independent_caption_labels(1).keys() & set(flickr_names(30, 300)))
    curves = metrics["label_policy"]
    at_default = next(p for p in curves["min_emotion_margin"] if p["value"] == 0)
    assert at_default["gold_n"] == int((table["deepface_label"].notna()).sum())
    assert at_default["gold_agreement"] == pytest.approx(
        (table["deepface_label"] == table["label"]).sum() / at_default["gold_n"])
    assert {p["gold_n"] for p in curves["min_face_size"]} == {at_default["gold_n"]}
    assert [p["gold_n"] for p in curves["min_emotion_margin"]] == sorted(
        (p["gold_n"] for p in curves["min_emotion_margin"]), reverse=True)

    # Gold photos never train: the 5 shared photos are labelled in the dataset but not in training.
    dataset = pd.read_parquet(root.uri_for("datasets/final_emotion_dataset.parquet"))
    gold_ids = set(table["image_id"])
    shared = dataset[dataset["image_id"].isin(gold_ids)]
    assert sorted(shared["source_key"]) == sorted(f"faces/{n}" for n in leaked)
    assert shared["label"].notna().sum() >= 3  # they would have been training rows
    training = pd.read_parquet(root.uri_for(f"models/{version}/training_rows.parquet"))
    assert set(training["image_id"]).isdisjoint(gold_ids)
    trainable = dataset[dataset["status"].eq("ok") & dataset["label"].notna()
                        & ~dataset["image_id"].isin(gold_ids)].drop_duplicates("image_id")
    per_class = trainable["label"].value_counts()
    assert len(training) == trainable["label"].map(per_class).ge(MIN_ROWS_PER_CLASS).sum()  # small ones stay out

    # The gold faces' vectors are cached once per gold set and embedding: later versions only run their head.
    cached = [o.key for o in root.list("gold") if o.key.endswith(".npy")]
    assert len(cached) == 1 and np.load(root.uri_for(cached[0])).shape == (GOLD, 2048)

    page = root.read_bytes(f"reports/{version}/report.html").decode()
    assert "Gold check: machine labels against people" in page and f"{GOLD} photos labelled by people" in page
