"""Classification metrics on the five classes, computed the same way for every model."""
from __future__ import annotations

from typing import Any

import numpy as np

from emotion_pipeline.core.config import CLASSES

# Below this many photos (or faces), a metric or figure is an anecdote rather than a measurement: the
# report says so next to it, and a model whose test split is this small is flagged (few_test_rows).
FEW_ROWS = 30


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, *, no_label: bool = False) -> dict[str, Any]:
    """Accuracy, macro-F1 over the classes present in ``y_true``, per-class P/R/F1, confusion matrix.

    With ``no_label``, a prediction ``len(CLASSES)`` means "no label" (``labels.label_of`` gave none):
    it counts as a miss everywhere and is the confusion matrix's sixth column."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    everything = list(range(len(CLASSES)))
    columns = everything + [len(CLASSES)] * no_label
    if not len(y_true):  # e.g. no captioned photo the model did not train on: zeros, not an error
        zero = {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
        return {"accuracy": 0.0, "macro_f1": 0.0, "per_class": {c: dict(zero) for c in CLASSES},
                "confusion_matrix": [[0] * len(columns) for _ in CLASSES], "n": 0}
    present = sorted(int(c) for c in np.unique(y_true))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=everything, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "per_class": {
            c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                "support": int(support[i])}
            for i, c in enumerate(CLASSES)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=columns)[: len(CLASSES)].tolist(),
        "n": int(len(y_true)),
    }


def wilson_interval(hits: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The 95% Wilson score interval of a share ``hits / n`` (z: the normal quantile at 0.975): honest
    on the few photos people review (it stays inside [0, 1] and is wide when n is small); (0, 1) when
    there is nothing to measure."""
    if n == 0:
        return 0.0, 1.0
    share = hits / n
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def agreement_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """``classification_metrics`` (a prediction ``len(CLASSES)`` is "no label", a miss) with the
    accuracy's 95% Wilson interval as ``accuracy_ci95``."""
    metrics = classification_metrics(y_true, y_pred, no_label=True)
    metrics["accuracy_ci95"] = list(wilson_interval(int(np.sum(np.asarray(y_true) == np.asarray(y_pred))), len(y_true)))
    return metrics
