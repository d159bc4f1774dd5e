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
