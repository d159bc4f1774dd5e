"""The computation of a training, without MLflow or storage: arrays in, fitted models and figures out."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import PipelineConfig
from . import classifier
from .data import TrainingData
from .metrics import classification_metrics


@dataclass
class FittedModels:
    head: Any  # the best Keras head
    baseline: Any  # the sklearn logistic regression
    tuner: Any  # the finished Keras Tuner search (its trials are logged by the caller)
    best_hyperparameters: dict[str, Any]
    metrics: dict[str, dict[str, Any]]  # "val", "test", "baseline_val": classification_metrics


def not_trainable_reason(data: TrainingData) -> str | None:
    """Why ``data`` cannot train a model (every split needs rows of at least 2 classes), or None."""
    counts = data.counts()
    if min(sum(c.values()) for c in counts.values()) == 0 or sum(1 for n in counts["train"].values() if n) < 2:
        return "not enough labelled photos: every split needs rows of at least 2 classes"
    return None


def fit_models(config: PipelineConfig, data: TrainingData, tuner_directory: Path, project: str) -> FittedModels:
    """The baseline, then the tuner search; metrics of both on the validation split, the head's on test.

    ``project`` names the tuner's search: the same project resumes an interrupted search.
    """
    x_train, y_train = data.part("train")
    x_val, y_val = data.part("val")
    x_test, y_test = data.part("test")
    baseline = classifier.fit_baseline(config, x_train, y_train)
    tuner = classifier.search(config, data, tuner_directory, project=project)
    head = tuner.get_best_models(1)[0]
    return FittedModels(
        head=head, baseline=baseline, tuner=tuner,
        best_hyperparameters=tuner.get_best_hyperparameters(1)[0].values,
        metrics={
            "baseline_val": classification_metrics(y_val, classifier.predict_proba_5(baseline, x_val).argmax(1)),
            "val": classification_metrics(y_val, head.predict(x_val, verbose=0).argmax(1)),
            "test": classification_metrics(y_test, head.predict(x_test, verbose=0).argmax(1)),
        },
    )
