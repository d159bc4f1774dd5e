"""Stage 8: evaluate the trained model against the baseline and a majority-class predictor on the
test split, explain it with SHAP, and write ``reports/<model version>/`` with ``report.html``.

Everything is also logged to the training's MLflow run.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..charts import confusion_matrix_chart
from ..config import CLASSES, PipelineConfig
from ..modeling import explain, tracking
from ..modeling.classifier import predict_proba_5
from ..modeling.data import TrainingData, load_training_data
from ..modeling.metrics import classification_metrics
from ..report import dataset_summary, write_report
from ..storage import Storage, open_storage
from ..tables import read_json, read_table, write_json
from . import embed
from .merge import DATASET_KEY

log = logging.getLogger(__name__)


def evaluate_model(
    config: PipelineConfig, trained: dict[str, Any], *, source: Storage | None = None,
    root: Storage | None = None, exclude_ids: set[str] = frozenset(),
) -> dict[str, Any]:
    source = source or open_storage(config.source)
    root = root or open_storage(config.root)
    if not trained.get("trained"):
        uri = write_report(root, "no-model", dataset=dataset_summary(root), note=trained.get("reason"))
        return {"stage": "evaluate", "evaluated": False, "report_uri": uri, "skipped": False}
    folder = f"reports/{trained['model_version']}"
    done = read_json(root, f"{folder}/metrics.json")
    if done and trained.get("skipped") and not config.force_train:
        return {"stage": "evaluate", "evaluated": True, "report_uri": root.uri_for(f"{folder}/report.html"),
                "model_version": trained["model_version"], "skipped": True}

    mlflow = tracking.use_experiment(config)
    model = mlflow.keras.load_model(trained["model_uri"])
    baseline = mlflow.sklearn.load_model(f"runs:/{trained['run_id']}/baseline")
    data = load_training_data(root, config.min_rows_per_class, exclude_ids)
    x_test, y_test = data.part("test")
    _, y_train = data.part("train")
    majority = int(np.bincount(y_train, minlength=len(CLASSES)).argmax())

    metrics = {
        "model": classification_metrics(y_test, model.predict(x_test, verbose=0).argmax(1)),
        "baseline": classification_metrics(y_test, predict_proba_5(baseline, x_test).argmax(1)),
        "majority": classification_metrics(y_test, np.full(len(y_test), majority)),
    }
    figures = {"confusion_matrix": confusion_matrix_chart(
        metrics["model"]["confusion_matrix"], f"Model v{trained['model_version']} on the test split")}
    figures.update(_explanations(config, source, root, model, data))

    for name, png in figures.items():
        root.write_bytes(f"{folder}/{name}.png", png)
    document = {"model_version": trained["model_version"], "run_id": trained["run_id"],
                "majority_class": CLASSES[majority], "counts": data.counts(), "metrics": metrics}
    write_json(root, f"{folder}/metrics.json", document)
    report_uri = write_report(root, trained["model_version"], dataset=dataset_summary(root), evaluation=document,
                              training=trained, figures=figures)

    with mlflow.start_run(run_id=trained["run_id"]):
        for who, m in metrics.items():
            mlflow.log_metrics({f"{who}.test_accuracy": m["accuracy"], f"{who}.test_macro_f1": m["macro_f1"]})
            mlflow.log_metrics({f"{who}.test_f1.{c}": v["f1"] for c, v in m["per_class"].items()})
        mlflow.log_dict(document, "evaluation/metrics.json")
        for name, png in figures.items():
            mlflow.log_image(_image(png), f"evaluation/{name}.png")
        mlflow.log_text(root.read_bytes(f"{folder}/report.html").decode(), "evaluation/report.html")
    log.info("evaluate: model macro-F1 %.3f, baseline %.3f, majority %.3f -> %s", metrics["model"]["macro_f1"],
             metrics["baseline"]["macro_f1"], metrics["majority"]["macro_f1"], report_uri)
    return {"stage": "evaluate", "evaluated": True, "model_version": trained["model_version"],
            "report_uri": report_uri, "macro_f1": metrics["model"]["macro_f1"], "skipped": False}


def _explanations(config, source, root, head, data: TrainingData) -> dict[str, bytes]:
    rng = np.random.default_rng(config.seed)
    x_train, _ = data.part("train")
    x_test, _ = data.part("test")
    background = x_train[rng.permutation(len(x_train))[:5]]
    samples = x_test[: config.shap_samples]

    def head_predict(x: np.ndarray) -> np.ndarray:
        return np.asarray(head.predict(x, verbose=0, batch_size=4096))

    figures = {"shap_embedding_summary": explain.embedding_summary_plot(
        explain.embedding_importance(head_predict, background, samples, config.seed))}

    # Heat maps over a few test photos, through ResNet50 + head, on the input the model saw.
    resnet = embed.resnet50(config.embed_weights, config.mixed_precision)
    test = data.frame[data.frame["split"] == "test"].head(config.shap_images)
    if len(test):
        _, index = embed.load_features(root)
        kinds = index.drop_duplicates("image_id").set_index("image_id")["input"]
        dataset = read_table(root, DATASET_KEY).drop_duplicates("image_id").set_index("image_id", drop=False)
        images = np.stack([embed.load_input(source, root, dataset.loc[i], kinds[i]) for i in test["image_id"]])

        def full_model(batch: np.ndarray) -> np.ndarray:
            return head_predict(embed.embed_arrays(resnet, batch))

        predicted = full_model(images).argmax(1)
        titles = [f"{CLASSES[p]} (label {label})" for p, label in zip(predicted, test["label"])]
        figures["shap_image_heatmaps"] = explain.image_heatmaps(full_model, images, titles, config.shap_image_evals)
    if len(data.frame) >= 10:
        figures["tsne"] = explain.tsne_map(data.vectors, data.frame["label"].tolist(), config.seed)
    return figures


def _image(png: bytes):
    import io

    from PIL import Image

    return Image.open(io.BytesIO(png))
