"""The computation of an evaluation, without MLflow or storage: predictions in, metrics out."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pandas as pd

from ..config import CLASSES
from .metrics import classification_metrics


def compare_on_test(y_train: np.ndarray, y_test: np.ndarray, model_probabilities: np.ndarray,
                    baseline_probabilities: np.ndarray) -> tuple[dict[str, dict[str, Any]], int]:
    """The model, the baseline and a majority-class predictor on the test split; returns the metrics
    of each and the majority class (the most frequent in training)."""
    majority = int(np.bincount(y_train, minlength=len(CLASSES)).argmax())
    metrics = {
        "model": classification_metrics(y_test, model_probabilities.argmax(1)),
        "baseline": classification_metrics(y_test, baseline_probabilities.argmax(1)),
        "majority": classification_metrics(y_test, np.full(len(y_test), majority)),
    }
    return metrics, majority


def deepface_agreement(gold: pd.DataFrame) -> dict[str, Any]:
    """People's labels against DeepFace's over the gold photos with a face, and the no-face share.

    ``gold`` is the gold check's table (``label``, ``deepface_label``, ``status`` per photo)."""
    with_face = gold[gold["deepface_label"].notna()]
    return {
        "no_face_share": float((gold["status"] == "no_face").mean()),
        "deepface": classification_metrics(class_ids(with_face["label"]), class_ids(with_face["deepface_label"])),
    }


def gold_agreement(gold: pd.DataFrame, model_predictions: np.ndarray) -> dict[str, Any]:
    """``deepface_agreement`` plus the model's class per gold photo with a face against people's."""
    with_face = gold[gold["deepface_label"].notna()]
    return {"photos": len(gold), **deepface_agreement(gold),
            "model": classification_metrics(class_ids(with_face["label"]), np.asarray(model_predictions, dtype=int))}


def class_ids(labels: pd.Series) -> np.ndarray:
    return labels.map({c: i for i, c in enumerate(CLASSES)}).to_numpy(dtype=int)


def predict_in_batches(predict: Callable[[np.ndarray], np.ndarray], inputs: list[np.ndarray],
                       batch_size: int) -> np.ndarray:
    """Class predictions for model inputs, ``batch_size`` at a time (memory stays bounded)."""
    out = [np.asarray(predict(np.stack(inputs[i:i + batch_size]))).argmax(1)
           for i in range(0, len(inputs), batch_size)]
    return np.concatenate(out) if out else np.zeros(0, dtype=int)
