"""The computation of a training, without MLflow or storage: arrays in, fitted models and figures out."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emotion_pipeline.core.config import PipelineConfig
from emotion_pipeline.modeling import classifier
from emotion_pipeline.modeling.data import SPLITS, TrainingData
from emotion_pipeline.modeling.metrics import FEW_ROWS, classification_metrics

MIN_CLASSES = 2  # a classifier needs rows of at least two classes
FLAGS = ("random_embedding_weights", "below_baseline", "few_test_rows")  # model_flags' names, in order


@dataclass
class FittedModels:
    head: Any  # the best Keras head
    baseline: Any  # the logistic regression, as arrays (classifier.LinearBaseline)
    tuner: Any  # the finished Keras Tuner search (its trials are logged by the caller); None for a refit
    best_hyperparameters: dict[str, Any]
    metrics: dict[str, dict[str, Any]]  # "val", "test", "baseline_val", "baseline_test": classification_metrics


def not_trainable_reason(data: TrainingData) -> str | None:
    """Why ``data`` cannot train a model (every split needs rows of at least 2 classes), or None.

    On a small root it is mostly ``min_rows_per_class`` that empties the splits, so the reason names
    the classes that rule left out, with their labelled rows."""
    counts = {split: n for split, n in data.counts().items() if split in SPLITS}  # the reviewed split never trains
    if min(sum(c.values()) for c in counts.values()) and sum(1 for n in counts["train"].values() if n) >= MIN_CLASSES:
        return None
    rows = ", ".join(f"{split} {sum(c.values())}" for split, c in counts.items())
    reason = f"not enough labelled rows: every split needs rows of at least 2 classes (rows per split: {rows})"
    if data.left_out:
        dropped = ", ".join(f"{c} {n}" for c, n in data.left_out.items())
        reason += (f"; min_rows_per_class={data.min_rows} left out every class with fewer labelled rows: "
                   f"{dropped} (lower it, down to 3, or add photos)")
    return reason


def model_flags(config: PipelineConfig, metrics: dict[str, dict[str, Any]]) -> list[str]:
    """What a reader of a model's figures must know before trusting them (of ``FLAGS``): ResNet50 ran
    with random weights, the head lost to its logistic baseline on the test split, or that split is
    too small to measure anything. ``metrics``: ``FittedModels.metrics``."""
    raised = {"random_embedding_weights": config.embed_weights == "none",
              "below_baseline": metrics["test"]["macro_f1"] < metrics["baseline_test"]["macro_f1"],
              "few_test_rows": metrics["test"]["n"] < FEW_ROWS}
    return [flag for flag in FLAGS if raised[flag]]


def fit_models(config: PipelineConfig, data: TrainingData, tuner_directory: Path, project: str) -> FittedModels:
    """The baseline, then the tuner search; metrics of both on the validation split, the head's on test.
    A search on a sample of the rows is followed by a fit of its best hyperparameters on all of them.

    ``project`` names the tuner's search: the same project resumes an interrupted search.
    """
    tuner = classifier.search(config, data, tuner_directory, project=project)
    best = tuner.get_best_hyperparameters(1)[0].values
    if searched_a_sample(config, data):  # the best hyperparameters, fitted on every training row
        return _with_metrics(config, data, classifier.refit(config, data, best), tuner, best)
    return _with_metrics(config, data, tuner.get_best_models(1)[0], tuner, best)


def searched_a_sample(config: PipelineConfig, data: TrainingData) -> bool:
    """Whether the search saw fewer rows than the data has (``search_max_rows``)."""
    return max(len(data.part(split)[1]) for split in ("train", "val")) > config.search_max_rows


def refit_models(config: PipelineConfig, data: TrainingData, hyperparameters: dict[str, Any],
                 warm_start: list | None) -> FittedModels:
    """The baseline, then one head with the champion's hyperparameters, warm-started from its weights:
    a fraction of a search's cost, for data that grew by a batch."""
    head = classifier.refit(config, data, hyperparameters, warm_start)
    return _with_metrics(config, data, head, None, dict(hyperparameters))


def _with_metrics(config: PipelineConfig, data: TrainingData, head, tuner, hyperparameters) -> FittedModels:
    x_train, y_train = data.part("train")
    x_val, y_val = data.part("val")
    x_test, y_test = data.part("test")
    baseline = classifier.fit_baseline(config, x_train, y_train)
    return FittedModels(
        head=head, baseline=baseline, tuner=tuner, best_hyperparameters=hyperparameters,
        metrics={
            "baseline_val": classification_metrics(y_val, classifier.predict_proba_5(baseline, x_val).argmax(1)),
            # What the head must beat to become champion (train's promotion policy).
            "baseline_test": classification_metrics(y_test, classifier.predict_proba_5(baseline, x_test).argmax(1)),
            "val": classification_metrics(y_val, head.predict(x_val, verbose=0).argmax(1)),
            "test": classification_metrics(y_test, head.predict(x_test, verbose=0).argmax(1)),
        },
    )


def training_mode(config: PipelineConfig, rows: int, basis: dict[str, Any] | None) -> tuple[str, str]:
    """("search" | "refit", why). ``basis``: the run's params (``best.*``, ``training.search_rows``,
    ``config.*``) of the model a refit would start from (the champion, else the newest version), or
    None when no model was trained yet."""
    if basis is None:
        return "search", "no model trained yet"
    if config.force_train:
        return "search", "force_train"
    hyperparameters = {k for k in basis if k.startswith("best.")}
    if not hyperparameters:
        return "search", "the last model's hyperparameters are not recorded"
    # What the head's inputs are; label_unit was not logged before it existed (photo then).
    for knob, unlogged in (("embed_weights", None), ("embed_input", None), ("label_unit", "photo")):
        if str(basis.get(f"config.{knob}", unlogged)) != str(getattr(config, knob)):
            return "search", f"{knob} changed since the last model was trained"
    searched = int(float(basis.get("training.search_rows") or basis.get("data.rows") or 0))
    if searched and rows >= config.search_growth * searched:
        return "search", f"training rows grew from {searched} to {rows} (x{rows / searched:.1f})"
    return "refit", f"{rows} training rows, last searched at {searched}: refit the last model's hyperparameters"
