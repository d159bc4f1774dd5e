"""The computation of an evaluation, without MLflow or storage: models and arrays in, metrics and
figures out."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from emotion_pipeline.core.config import CLASSES, PipelineConfig
from emotion_pipeline.core.progress import timed
from emotion_pipeline.modeling import explain
from emotion_pipeline.modeling.data import TrainingData
from emotion_pipeline.modeling.embedding import feature_maps
from emotion_pipeline.modeling.metrics import classification_metrics

MIN_TSNE_ROWS = 10  # fewer vectors make a t-SNE map of a handful of dots that says nothing


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


def explain_model(config: PipelineConfig, head, resnet, data: TrainingData, *, images: np.ndarray,
                  labels: list[str]) -> dict[str, bytes]:
    """The report's SHAP and t-SNE figures (PNG bytes): which embedding dimensions push the head
    towards each class, heat maps over ``images`` (model inputs of test photos with their ``labels``)
    through ResNet50 + head, and the vectors in 2-D."""
    rng = np.random.default_rng(config.seed)
    x_train, _ = data.part("train")
    x_test, _ = data.part("test")
    background = x_train[rng.permutation(len(x_train))[:5]]

    def head_predict(x: np.ndarray) -> np.ndarray:
        # One call per SHAP batch (up to ~20k rows x 2048 floats): half the time of Keras' predict loop.
        return np.asarray(head.predict_on_batch(x))

    with timed("evaluate: embedding SHAP"):
        figures = {"shap_embedding_summary": explain.embedding_summary_plot(
            explain.embedding_importance(head_predict, background, x_test[: config.shap_samples], config.seed))}
    if len(images):
        with timed("evaluate: SHAP heat maps"):
            maps = feature_maps(resnet, images, config.embed_batch_size)
            figures["shap_image_heatmaps"] = explain.image_heatmaps(
                head_predict, maps, images, labels, max_evals=config.shap_image_evals, seed=config.seed)
    if len(data.frame) >= MIN_TSNE_ROWS:
        with timed("evaluate: t-SNE"):
            figures["tsne"] = explain.tsne_map(data.vectors, data.frame["label"].tolist(), config.seed)
    return figures


def deepface_agreement(gold: pd.DataFrame) -> dict[str, Any]:
    """People's labels against DeepFace's over the gold photos with a face, and the no-face share.

    ``gold`` is the gold check's table (``label``, ``deepface_label``, ``status`` per photo). A face
    DeepFace gives no label (fear, disgust, a near tie) is a miss, in the confusion matrix's
    "no label" column; ``no_label_share`` is their share of the photos with a face."""
    with_face = photos_with_face(gold)
    return {
        "no_face_share": float((gold["status"] == "no_face").mean()),
        "no_label_share": float(with_face["deepface_label"].isna().mean()) if len(with_face) else 0.0,
        "deepface": classification_metrics(class_ids(with_face["label"]), class_ids(with_face["deepface_label"]),
                                           no_label=True),
    }


def gold_agreement(gold: pd.DataFrame, model_predictions: np.ndarray) -> dict[str, Any]:
    """``deepface_agreement`` plus the model's class per gold photo with a face against people's."""
    with_face = photos_with_face(gold)
    return {"photos": len(gold), **deepface_agreement(gold),
            "model": classification_metrics(class_ids(with_face["label"]), np.asarray(model_predictions, dtype=int))}


def photos_with_face(gold: pd.DataFrame) -> pd.DataFrame:
    """The gold photos where an eligible face was found (whatever label DeepFace gave it)."""
    return gold[gold["status"] == "ok"].reset_index(drop=True)


def class_ids(labels: pd.Series) -> np.ndarray:
    """Class indices of ``CLASSES``; a missing label (None) is ``len(CLASSES)``: "no label"."""
    return labels.map({c: i for i, c in enumerate(CLASSES)}).fillna(len(CLASSES)).to_numpy(dtype=int)


