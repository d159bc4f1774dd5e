"""SHAP explanations a person can read, computed with explainers that need only a predict function.

* which embedding dimensions drive each class: a permutation explainer on the head (2048 inputs);
* where in the photo the predicted emotion comes from: a partition explainer with a blur image
  masker, through the whole model (ResNet50 + head), drawn as a heat map over the photo;
* a 2-D t-SNE map of the vectors coloured by label.

shap's gradient explainers are known to break on Keras 3 / TF 2.16+, hence predict functions only.
"""
from __future__ import annotations

import io
from typing import Callable

import numpy as np

from ..config import CLASSES


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

    masker = shap.maskers.Independent(background, max_samples=len(background))
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


def image_heatmaps(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, titles: list[str],
                   max_evals: int) -> bytes:
    """For each photo, the SHAP map of its predicted emotion over the photo (red: towards it)."""
    import shap

    plt = _plt()
    masker = shap.maskers.Image("blur(32,32)", images[0].shape)
    explainer = shap.Explainer(predict, masker, output_names=list(CLASSES))
    explanation = explainer(images.astype(np.float32), max_evals=max_evals, batch_size=32,
                            outputs=shap.Explanation.argsort.flip[:1], silent=True)
    maps = explanation.values[..., 0].sum(axis=-1)  # (n, h, w): summed over colour channels
    fig, axes = plt.subplots(len(images), 2, figsize=(6, 3 * len(images)), squeeze=False)
    for (photo_ax, map_ax), image, heat, title in zip(axes, images, maps, titles):
        limit = float(np.abs(heat).max()) or 1.0
        photo_ax.imshow(image.astype(np.uint8))
        photo_ax.set_title(title)
        map_ax.imshow(image.astype(np.uint8).mean(axis=-1), cmap="gray", alpha=0.35)
        shown = map_ax.imshow(heat, cmap="bwr", vmin=-limit, vmax=limit, alpha=0.65)
        map_ax.set_title("SHAP (red: towards it)")
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
