"""SHAP explanations a person can read, computed with explainers that need only a predict function.

* which embedding dimensions drive each class: a permutation explainer on the head (2048 inputs),
  against the mean of a few training vectors;
* where in the photo the predicted emotion comes from: a permutation explainer over the 7x7 regions
  of ResNet50's last convolutional feature map (each region looks at a 32-px block of the input and
  its surroundings), drawn as a heat map over the photo. A region left out adds no activation to the
  average pooling the head reads, so what is explained is exactly the pipeline's model (feature map
  -> pooled vector -> head) at the cost of one ResNet50 pass per photo, not hundreds of masked
  photos through ResNet50 (1.7 minutes per evaluation on 2 cores before); a refitted head only
  re-runs the head;
* a 2-D t-SNE map of the vectors coloured by label.

shap's gradient explainers are known to break on Keras 3 / TF 2.16+, hence predict functions only.
"""
from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np

from emotion_pipeline.core.config import CLASSES


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    plt = _plt()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def embedding_importance(predict: Callable[[np.ndarray], np.ndarray], background: np.ndarray,
                         samples: np.ndarray, seed: int) -> np.ndarray:
    """SHAP values (n, 2048, 5) of the head's class probabilities for ``samples``."""
    import shap

    # One background row, the mean vector: every evaluation is one head row, not one per background
    # row (5x the work for a baseline that barely moves).
    masker = shap.maskers.Independent(background.mean(axis=0, keepdims=True), max_samples=1)
    explainer = shap.explainers.Permutation(predict, masker, seed=seed)
    return explainer(samples, max_evals=2 * samples.shape[1] + 1, silent=True).values


def embedding_summary_plot(values: np.ndarray, max_display: int = 15) -> bytes:
    """Mean |SHAP| per embedding dimension, stacked by class, for the most important dimensions."""
    import shap

    plt = _plt()
    per_class = [values[:, :, k] for k in range(values.shape[2])]
    names = [f"dim {i}" for i in range(values.shape[1])]
    shap.summary_plot(per_class, feature_names=names, class_names=list(CLASSES), plot_type="bar",
                      max_display=max_display, show=False)
    fig = plt.gcf()
    fig.suptitle("Embedding dimensions that drive each emotion (mean |SHAP|)")
    return _png(fig)


def region_values(predict: Callable[[np.ndarray], np.ndarray], feature_map: np.ndarray, max_evals: int,
                  seed: int) -> tuple[np.ndarray, int]:
    """SHAP values (h, w) of the predicted class over the regions of one photo's feature map
    (h, w, channels), and that class. ``predict``: pooled vectors (n, channels) -> probabilities."""
    import shap

    h, w, channels = feature_map.shape
    regions = feature_map.reshape(h * w, channels).astype(np.float32)

    def kept(z: np.ndarray) -> np.ndarray:  # (n, h*w) of 0/1: which regions stay -> probabilities
        return predict((np.asarray(z, dtype=np.float32) @ regions) / (h * w))

    everything = np.ones((1, h * w), dtype=np.float32)
    predicted = int(kept(everything)[0].argmax())
    explainer = shap.explainers.Permutation(lambda z: kept(z)[:, predicted],
                                            shap.maskers.Independent(np.zeros((1, h * w)), max_samples=1), seed=seed)
    values = explainer(everything, max_evals=max(max_evals, 2 * h * w + 1), silent=True).values[0]
    return values.reshape(h, w), predicted


def image_heatmaps(predict: Callable[[np.ndarray], np.ndarray], feature_maps: np.ndarray, images: np.ndarray,
                   labels: list[str], *, max_evals: int, seed: int = 0) -> bytes:
    """For each photo, the SHAP map of its predicted emotion over the photo (red: towards it):
    ``feature_maps`` (n, 7, 7, 2048) are ResNet50's for ``images`` (n, 224, 224, 3)."""
    plt = _plt()
    fig, axes = plt.subplots(len(images), 2, figsize=(6, 3 * len(images)), squeeze=False)
    for (photo_ax, map_ax), image, feature_map, label in zip(axes, images, feature_maps, labels):
        heat, predicted = region_values(predict, feature_map, max_evals, seed)
        limit = float(np.abs(heat).max()) or 1.0
        photo_ax.imshow(image.astype(np.uint8))
        photo_ax.set_title(f"{CLASSES[predicted]} (label {label})")
        map_ax.imshow(image.astype(np.uint8).mean(axis=-1), cmap="gray", alpha=0.35)
        side = image.shape[0]
        shown = map_ax.imshow(heat, cmap="bwr", vmin=-limit, vmax=limit, alpha=0.65, interpolation="bilinear",
                              extent=(0, side, side, 0))
        map_ax.set_title("SHAP per region (red: towards it)")
        fig.colorbar(shown, ax=map_ax, fraction=0.046)
        for ax in (photo_ax, map_ax):
            ax.axis("off")
    return _png(fig)


def tsne_map(vectors: np.ndarray, labels: list[str], seed: int, max_points: int = 3000) -> bytes:
    from sklearn.manifold import TSNE

    plt = _plt()
    rng = np.random.default_rng(seed)
    keep = rng.permutation(len(vectors))[:max_points]
    points = TSNE(n_components=2, perplexity=max(2, min(30, len(keep) // 4)), random_state=seed,
                  init="pca").fit_transform(vectors[keep])
    fig, ax = plt.subplots(figsize=(7, 6))
    kept = np.array(labels)[keep]
    for label in CLASSES:
        mask = kept == label
        if mask.any():
            ax.scatter(points[mask, 0], points[mask, 1], s=14, label=label, alpha=0.8)
    ax.set_title("t-SNE of the ResNet50 vectors, coloured by label")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend()
    return _png(fig)
