"""The tuner search is bounded whatever the data's size (issue 28): it searches a sample of at most
``search_max_rows`` rows that keeps every class's share, its best hyperparameters are then fitted on
every row, and ``search_budget_minutes`` stops new trials once spent. Real Keras Tuner searches on
small random vectors."""
import dataclasses

import numpy as np
import pandas as pd
import pytest

from emotion_pipeline.core.config import CLASSES, PipelineConfig
from emotion_pipeline.modeling import classifier
from emotion_pipeline.modeling.classifier import search_sample
from emotion_pipeline.modeling.data import TrainingData
from emotion_pipeline.modeling.training import fit_models


def test_the_search_sample_keeps_every_class_s_share_and_is_repeatable():
    y = np.array([0] * 9000 + [1] * 900 + [3] * 90 + [4] * 3)
    rows = search_sample(y, 1000, seed=7)
    assert len(rows) <= 1000 and len(set(rows)) == len(rows) and (np.diff(rows) > 0).all()
    picked = np.bincount(y[rows], minlength=5)
    assert picked[0] == pytest.approx(900, abs=2) and picked[1] == pytest.approx(90, abs=2)
    assert picked[3] == pytest.approx(9, abs=1) and picked[4] == 1  # a rare class keeps a row
    assert (search_sample(y, 1000, seed=7) == rows).all()
    assert (search_sample(y, 1000, seed=8) != rows).any()
    assert (search_sample(y[:500], 1000, seed=7) == np.arange(500)).all()  # small data: all of it


def small_data(n: int) -> TrainingData:
    """``n`` rows (70% train, 15% val, 15% test) of two classes told apart by their vectors."""
    rng = np.random.default_rng(0)
    labels = np.where(np.arange(n) % 3 == 0, "sad", "happy")
    split = np.array(["train"] * int(n * 0.7) + ["val"] * int(n * 0.15))
    split = np.concatenate([split, ["test"] * (n - len(split))])
    frame = pd.DataFrame({"image_id": [f"i{k}" for k in range(n)], "label": labels, "split": split,
                          "y": [CLASSES.index(label) for label in labels]})
    vectors = rng.normal(size=(n, 2048)).astype(np.float32)
    vectors[labels == "sad", :8] += 3.0
    return TrainingData(frame=frame, vectors=vectors)


def trial_rows(monkeypatch) -> list[tuple[int, int]]:
    """(training rows, validation rows) each tuner trial is given, filled as the real tuner runs."""
    seen: list[tuple[int, int]] = []
    make_tuner = classifier.make_tuner

    def recording(*args, **kwargs):
        tuner = make_tuner(*args, **kwargs)
        run_trial = tuner.run_trial

        def run(trial, x, y, **fit):
            seen.append((len(x), len(fit["validation_data"][0])))
            return run_trial(trial, x, y, **fit)

        tuner.run_trial = run
        return tuner

    monkeypatch.setattr(classifier, "make_tuner", recording)
    return seen


def test_a_search_on_a_sample_fits_its_best_hyperparameters_on_every_row(tmp_path, monkeypatch):
    data = small_data(400)  # 280 training rows, 60 validation rows
    seen = trial_rows(monkeypatch)
    config = PipelineConfig(source="s", root="r", tuner="bayesian", tuner_max_trials=2, tuner_max_epochs=2,
                            search_max_rows=70)
    fitted = fit_models(config, data, tmp_path / "tuner", project="sampled")
    sample = len(search_sample(data.part("train")[1], 70, config.seed))
    assert 65 <= sample <= 70 and seen == [(sample, 60)] * 2  # every trial searched the sample (val fits in it)
    assert fitted.head.history.params["steps"] == -(-280 // 32)  # the final head: every row, batches of 32
    assert fitted.best_hyperparameters == fitted.tuner.get_best_hyperparameters(1)[0].values

    seen.clear()
    fitted = fit_models(dataclasses.replace(config, search_max_rows=1000), data, tmp_path / "tuner",
                        project="whole")
    assert seen == [(280, 60), (280, 60)]


def test_no_trial_starts_once_the_search_budget_is_spent(tmp_path):
    data = small_data(200)
    unbounded = PipelineConfig(source="s", root="r", tuner="bayesian", tuner_max_trials=3, tuner_max_epochs=1)
    assert len(classifier.search(unbounded, data, tmp_path, "unbounded").oracle.trials) == 3
    bounded = dataclasses.replace(unbounded, search_budget_minutes=1e-6)
    tuner = classifier.search(bounded, data, tmp_path, "bounded")
    assert len(tuner.oracle.trials) == 1  # the first trial outlasts a budget of 60 microseconds
    assert tuner.get_best_hyperparameters(1)  # and the search still has its best
