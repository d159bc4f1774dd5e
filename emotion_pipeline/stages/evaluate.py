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
from . import embed, gold
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
    exclude_ids = set(exclude_ids) | gold.gold_ids(root)  # the same rows train saw
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
    gold_check = _gold_check(config, root, model)
    if gold_check:
        figures["gold_confusion_deepface"] = confusion_matrix_chart(
            gold_check["deepface"]["confusion_matrix"], "Gold set: DeepFace vs people")
        figures["gold_confusion_model"] = confusion_matrix_chart(
            gold_check["model"]["confusion_matrix"], f"Gold set: model v{trained['model_version']} vs people")

    for name, png in figures.items():
        root.write_bytes(f"{folder}/{name}.png", png)
    document = {"model_version": trained["model_version"], "run_id": trained["run_id"],
                "majority_class": CLASSES[majority], "counts": data.counts(), "metrics": metrics,
                "gold": gold_check}
    write_json(root, f"{folder}/metrics.json", document)
    report_uri = write_report(root, trained["model_version"], dataset=dataset_summary(root), evaluation=document,
                              training=trained, figures=figures)

    with mlflow.start_run(run_id=trained["run_id"]):
        for who, m in metrics.items():
            mlflow.log_metrics({f"{who}.test_accuracy": m["accuracy"], f"{who}.test_macro_f1": m["macro_f1"]})
            mlflow.log_metrics({f"{who}.test_f1.{c}": v["f1"] for c, v in m["per_class"].items()})
        if gold_check:
            mlflow.log_metrics({f"gold.{who}.{m}": gold_check[who][m] for who in ("deepface", "model")
                                for m in ("accuracy", "macro_f1")})
            mlflow.log_metrics({f"gold.{who}.recall.{c}": v["recall"] for who in ("deepface", "model")
                                for c, v in gold_check[who]["per_class"].items()})
            mlflow.log_metric("gold.no_face_share", gold_check["no_face_share"])
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
        # One call per SHAP batch (up to ~20k rows x 2048 floats): half the time of Keras' predict loop.
        return np.asarray(head.predict_on_batch(x))

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


def _gold_check(config: PipelineConfig, root: Storage, head) -> dict[str, Any] | None:
    """People's labels vs DeepFace and vs the trained model, on the gold photos with a face."""
    from ..images import decode_rgb, letterbox, open_checked
    from ..storage import read_uri

    table = read_table(root, gold.TABLE_KEY)
    if table is None:
        return None
    with_face = table[table["deepface_label"].notna()].reset_index(drop=True)
    resnet = embed.resnet50(config.embed_weights, config.mixed_precision)
    predicted = []
    for start in range(0, len(with_face), 64):
        batch = []
        for row in with_face.iloc[start:start + 64].itertuples(index=False):
            rgb = decode_rgb(open_checked(read_uri(row.uri), config.max_image_pixels)[0])
            if config.embed_input == "face":
                rgb = rgb.crop((row.face_x, row.face_y, row.face_x + row.face_w, row.face_y + row.face_h))
            batch.append(np.asarray(letterbox(rgb, 224)))
        vectors = embed.embed_arrays(resnet, np.stack(batch))
        predicted += list(np.asarray(head.predict(vectors, verbose=0)).argmax(1))
    truth = with_face["label"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy(dtype=int)
    return {"photos": len(table), **gold.deepface_figures(table),
            "model": classification_metrics(truth, np.array(predicted, dtype=int))}


def _image(png: bytes):
    import io

    from PIL import Image

    return Image.open(io.BytesIO(png))
