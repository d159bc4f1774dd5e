"""Reviewed photos are a gold set of the user's own photos: after people decide, the next run's
metrics.json and report show each teacher's and the model's agreement with people (n and a 95%
interval), recomputed here independently (our own labels, the dataset's teacher columns, the model
loaded from MLflow, SciPy's Wilson interval); the reviewed test photos form their own split, so they
are neither trained on nor counted in the test metrics. Runs on a copy of trained_root."""
import dataclasses

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from emotion_pipeline.core import catalog
from emotion_pipeline.core.config import CLASSES, TEACHERS
from emotion_pipeline.core.results import TrainResult
from emotion_pipeline.core.storage import open_storage
from emotion_pipeline.labelling import reviews
from emotion_pipeline.modeling import tracking
from emotion_pipeline.modeling.data import gold_ids, load_training_data, read_split_assignments
from emotion_pipeline.stages.all import run_all_stages
from tests.stages.test_gold_added_later import copy_root, gold_metrics

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]


def plan_decisions(training: pd.DataFrame) -> dict[str, str]:
    """People's labels: every other test photo (the rest keep the test split's metrics) and three
    training photos, half agreeing with the machine (its label) and half not (the most common other
    class: one with enough rows to train), so that the figures are neither 0 nor 1."""
    chosen = [*training.index[training["split"] == "test"][::2], *training.index[training["split"] == "train"][:3]]
    common = list(training["label"].value_counts().index)

    def other(label: str) -> str:
        return next(c for c in common if c != label)

    return {image_id: training.loc[image_id, "label"] if i % 2 else other(training.loc[image_id, "label"])
            for i, image_id in enumerate(chosen)}


def wilson(hits: int, n: int) -> list[float]:
    interval = binomtest(hits, n).proportion_ci(confidence_level=0.95, method="wilson")
    return [interval.low, interval.high]


def test_reviewed_photos_check_teachers_and_model_and_never_count_twice(trained_root, tmp_path):
    trained, _ = trained_root
    copy_root(trained.root, tmp_path / "out")
    config = dataclasses.replace(trained, root=str(tmp_path / "out"))
    root = open_storage(config.root)
    training = load_training_data(root, config.min_rows_per_class, gold_ids(root)).frame.set_index("image_id")
    people = plan_decisions(training)
    dataset = catalog.read_dataset(root).set_index("image_id")
    for image_id, label in people.items():
        face = int(dataset.loc[image_id, "label_face_index"])
        reviews.record_decision(root, reviews.decide(image_id, image_id, face, label, "ada"))
    tested_before = sum(training["split"] == "test")
    reviewed_test = {i for i in people if training.loc[i, "split"] == "test"}
    assert len(reviewed_test) >= 2, "trained_root's test split is too small for this check"

    results = run_all_stages(config)
    assert not results["train"].skipped and not results["evaluate"].skipped  # people's labels: a refit
    metrics = gold_metrics(config)
    reviewed = metrics["reviewed"]
    assert reviewed["photos"] == reviewed["labelled"] == len(people) and reviewed["no_face"] == 0

    # Each teacher: its own label (the dataset keeps it beside the person's) against ours, every photo.
    dataset = catalog.read_dataset(root).set_index("image_id")
    for teacher in TEACHERS:
        hits = sum(dataset.loc[i, f"label_{teacher}"] == label for i, label in people.items())
        assert reviewed[teacher]["n"] == len(people)
        assert reviewed[teacher]["accuracy"] == pytest.approx(hits / len(people))
        assert reviewed[teacher]["accuracy_ci95"] == pytest.approx(wilson(hits, len(people)))

    # The model: on the reviewed test photos only, which it never trained on.
    assert set(read_split_assignments(root)[list(reviewed_test)]) == {"test"}  # the recorded split is kept
    after = load_training_data(root, config.min_rows_per_class, gold_ids(root)).frame.set_index("image_id")
    assert set(after.loc[list(reviewed_test), "split"]) == {"reviewed"}
    assert set(after.loc[[i for i in people if i not in reviewed_test], "split"]) <= {"train", "val"}
    model_uri = TrainResult.from_dict(catalog.read_done(root, catalog.TRAIN_FOLDER)["summary"]).model_uri
    tracking.use_experiment(config)
    vectors, index = catalog.read_features(root)
    rows = index.drop_duplicates("image_id").set_index("image_id").loc[sorted(reviewed_test), "row"]
    predicted = tracking.load_model(model_uri).predict(vectors[rows.to_numpy(dtype=int)], verbose=0).argmax(1)
    hits = int(np.sum(np.array([CLASSES[p] for p in predicted]) == np.array([people[i] for i in rows.index])))
    assert reviewed["model"]["n"] == len(reviewed_test)
    assert reviewed["model"]["accuracy"] == pytest.approx(hits / len(reviewed_test))
    assert reviewed["model"]["accuracy_ci95"] == pytest.approx(wilson(hits, len(reviewed_test)))

    # Never counted twice: the test metrics are on the other test photos.
    assert metrics["counts"]["reviewed"] == {c: sum(people[i] == c for i in reviewed_test) for c in CLASSES}
    assert metrics["metrics"]["model"]["n"] == tested_before - len(reviewed_test)
    version = metrics["model_version"]
    page = root.read_bytes(catalog.report_file(version, catalog.REPORT_PAGE)).decode()
    assert "Reviewed photos: your own gold set" in page and f"{len(people)} photos reviewed by people" in page
