"""Stage: evaluate the trained model against the baseline and a majority-class predictor on the
test split, explain it with SHAP, check labels and model against people (the gold set) and against
captions, plot the label-policy curves, and write ``reports/<model version>/`` with ``report.html``.

The computation is ``modeling.evaluation`` and ``modeling.explain``; this module is its shell: the
models from MLflow, the data from storage, the results to the report, storage and MLflow.
"""
from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging

import numpy as np
import pandas as pd

from emotion_pipeline.core import catalog
from emotion_pipeline.core.config import CLASSES, PipelineConfig
from emotion_pipeline.core.errors import MissingUpstream
from emotion_pipeline.core.progress import timed
from emotion_pipeline.core.results import EvaluateResult, TrainResult
from emotion_pipeline.core.runner import StageRun, run_stage
from emotion_pipeline.core.storage import Storage, read_uri
from emotion_pipeline.core.tables import write_json
from emotion_pipeline.labelling import captions, label_policy, teachers
from emotion_pipeline.labelling.images import read_photo
from emotion_pipeline.labelling.labels import NO_LABEL
from emotion_pipeline.modeling import tracking
from emotion_pipeline.modeling.classifier import predict_proba_5
from emotion_pipeline.modeling.data import TrainingData, load_training_data
from emotion_pipeline.modeling.embedding import DIM, INPUT_SIZE, decode_photo, image_vectors, model_input, resnet50
from emotion_pipeline.modeling.evaluation import (
    class_ids,
    compare_on_test,
    explain_model,
    gold_agreement,
    photos_with_face,
)
from emotion_pipeline.modeling.metrics import classification_metrics
from emotion_pipeline.reporting.charts import boxed_photos_chart, confusion_matrix_chart, label_policy_chart
from emotion_pipeline.reporting.report import dataset_summary, write_report
from emotion_pipeline.stages.embed import input_of, npy_bytes
from emotion_pipeline.stages.check_gold import gold_ids

log = logging.getLogger(__name__)


def evaluate_model(config: PipelineConfig, *, source: Storage | None = None,
                   root: Storage | None = None) -> EvaluateResult:
    """``run_stage("evaluate", config)``: evaluate the last trained model unless already evaluated."""
    return run_stage("evaluate", config, source=source, root=root)


def evaluate(run: StageRun) -> EvaluateResult:
    """The stage function: the model recorded by the train stage, on the test split and the gold set.

    Args:
        run: the config, both storages and every present photo's manifest row (``runner.StageRun``).

    Returns:
        The report's URI and the model's test macro-F1; ``evaluated`` is False (with a report that
        says why) when no model was trained.

    Raises:
        mlflow.exceptions.MlflowException: the model or its run is not in the tracking store.
    """
    config, source, root = run.config, run.source, run.root
    trained = run.upstream_result("train")
    if trained is None or not trained.trained:
        uri = write_report(root, "no-model", dataset=dataset_summary(root), note=trained and trained.reason)
        return EvaluateResult(evaluated=False, report_uri=uri)
    version = trained.model_version

    mlflow = tracking.use_experiment(config)
    with timed("evaluate: models and test split"):
        metrics, majority, data, model, others = _test_metrics(config, root, trained)

    figures = {"confusion_matrix": confusion_matrix_chart(
        metrics["model"]["confusion_matrix"], f"Model v{version} on the test split")}
    with timed("evaluate: heat-map photos and ResNet50"):
        images, labels = _heatmap_photos(config, source, root, data)
        resnet = resnet50(config.embed_weights, config.mixed_precision)
    figures.update(explain_model(config, model, resnet, data, images, labels))
    with timed("evaluate: gold check"):
        gold_check = _gold_check(config, root, model, others)
    with timed("evaluate: caption check"):
        caption_check, caption_figures, caption_by_id = _caption_check(config, source, root, model, data, others)
    figures.update(caption_figures)
    with timed("evaluate: label-policy curves"):
        curves = _label_policy_curves(config, root, caption_by_id)
    if curves:
        figures["label_policy"] = label_policy_chart(curves, label_policy.chosen_points(config, curves))
    if gold_check:
        figures["gold_confusion_deepface"] = confusion_matrix_chart(
            gold_check["deepface"]["confusion_matrix"], "Gold set: DeepFace vs people", "people's label")
        figures["gold_confusion_model"] = confusion_matrix_chart(
            gold_check["model"]["confusion_matrix"], f"Gold set: model v{version} vs people", "people's label")

    for name, png in figures.items():
        root.write_bytes(catalog.report_figure(version, name), png)
    document = {"model_version": version, "run_id": trained.run_id, "label_unit": trained.label_unit,
                "majority_class": CLASSES[majority],
                "counts": data.counts(), "metrics": metrics, "gold": gold_check, "captions": caption_check,
                "label_policy": curves, "embed_weights": config.embed_weights, "flags": trained.flags,
                "champion": trained.champion, "promotion": trained.promotion, "teacher": config.teacher,
                "teachers": teachers.teachers_table(catalog.read_dataset(root), caption_by_id),
                "figure_rows": _figure_rows(config, metrics, data, gold_check, caption_check)}
    write_json(root, catalog.report_file(version, catalog.REPORT_METRICS), document)
    with timed("evaluate: report and MLflow"):
        report_uri = write_report(root, version, dataset=dataset_summary(root), evaluation=document,
                                  training=trained.to_dict(), figures=figures)
        _log_to_mlflow(mlflow, trained, metrics, gold_check, caption_check, document, figures, root.read_bytes(
            catalog.report_file(version, catalog.REPORT_PAGE)).decode())
    log.info("evaluate: model macro-F1 %.3f, baseline %.3f, majority %.3f -> %s", metrics["model"]["macro_f1"],
             metrics["baseline"]["macro_f1"], metrics["majority"]["macro_f1"], report_uri)
    return EvaluateResult(evaluated=True, model_version=version, report_uri=report_uri,
                          macro_f1=metrics["model"]["macro_f1"])


def _test_metrics(config: PipelineConfig, root: Storage, trained: TrainResult):
    """The registered head, the baseline, a majority-class predictor and the heads trained beside
    the registered one on the test split train used; returns (metrics, majority class, the training
    data, the head, the other heads by name)."""
    model = tracking.load_model(trained.model_uri)
    baseline = tracking.load_model(f"runs:/{trained.run_id}/baseline", "sklearn")
    # The rows train saw: its unit, whatever this evaluation's config says.
    data = load_training_data(root, config.min_rows_per_class, gold_ids(root), trained.label_unit)
    x_test, y_test = data.part("test")
    _, y_train = data.part("train")
    metrics, majority = compare_on_test(y_train, y_test, model.predict(x_test, verbose=0),
                                        predict_proba_5(baseline, x_test))
    # Heads trained beside the registered one, compared with it everywhere it is checked: on DeepFace's
    # scores (soft_labels), on one row per photo (label_unit=face).
    others = {name: tracking.load_model(uri) for name, uri in (("soft", trained.soft_model_uri),
                                                               ("photo", trained.photo_model_uri)) if uri}
    for name, head in others.items():
        metrics[name] = classification_metrics(y_test, head.predict(x_test, verbose=0).argmax(1))
    return metrics, majority, data, model, others


def _figure_rows(config: PipelineConfig, metrics: dict, data: TrainingData, gold_check: dict | None,
                 caption_check: dict | None) -> dict[str, int]:
    """How many rows (photos or faces) each statistical figure is computed on, so that the report and
    the dashboard can say which rest on too few. Examples (heat maps, disagreeing photos) are not
    statistics and are left out; so are the label-policy curves (each point has its own count)."""
    test_rows = metrics["model"]["n"]
    rows = {"confusion_matrix": test_rows, "shap_embedding_summary": min(config.shap_samples, test_rows),
            "tsne": len(data.frame)}
    if gold_check:
        rows.update(gold_confusion_deepface=gold_check["deepface"]["n"], gold_confusion_model=gold_check["model"]["n"])
    if caption_check:
        rows["caption_confusion_deepface"] = caption_check["deepface"]["n"]
    return rows


def _log_to_mlflow(mlflow, trained: TrainResult, metrics, gold_check, caption_check, document, figures,
                   page: str) -> None:
    """Everything the report shows, into the training's MLflow run."""
    with mlflow.start_run(run_id=trained.run_id):
        for who, m in metrics.items():
            mlflow.log_metrics({f"{who}.test_accuracy": m["accuracy"], f"{who}.test_macro_f1": m["macro_f1"]})
            mlflow.log_metrics({f"{who}.test_f1.{c}": v["f1"] for c, v in m["per_class"].items()})
        if gold_check:
            heads = [w for w in ("deepface", "model", "model_soft", "model_photo") if w in gold_check]
            mlflow.log_metrics({f"gold.{who}.{m}": gold_check[who][m] for who in heads for m in ("accuracy", "macro_f1")})
            mlflow.log_metrics({f"gold.{who}.recall.{c}": v["recall"] for who in ("deepface", "model")
                                for c, v in gold_check[who]["per_class"].items()})
            mlflow.log_metric("gold.no_face_share", gold_check["no_face_share"])
            mlflow.log_metric("gold.no_label_share", gold_check["no_label_share"])
        if caption_check:
            mlflow.log_metrics({"captions.coverage": caption_check["coverage"],
                                "captions.covered": caption_check["covered"],
                                "captions.with_face": caption_check["with_face"]})
            for who in [w for w in ("deepface", "model", "model_held_out", "model_soft", "model_photo")
                        if w in caption_check]:
                mlflow.log_metric(f"captions.{who}.agreement", caption_check[who]["accuracy"])
                mlflow.log_metrics({f"captions.{who}.agreement.{c}": v["recall"]
                                    for c, v in caption_check[who]["per_class"].items() if v["support"]})
        mlflow.log_dict(document, f"{catalog.MLFLOW_EVALUATION}/{catalog.REPORT_METRICS}")
        for name, png in figures.items():
            mlflow.log_image(_image(png), f"{catalog.MLFLOW_EVALUATION}/{name}.png")
        mlflow.log_text(page, f"{catalog.MLFLOW_EVALUATION}/{catalog.REPORT_PAGE}")


def evaluation_inputs(run: StageRun) -> str:
    """The evaluation's inputs besides its settings and the markers it covers: the captions file and
    lexicon, and the drift log the report's dataset summary shows (check_drift keeps no done marker)."""
    try:
        drift_log = run.root.read_bytes(catalog.MONITOR_LOG)
    except FileNotFoundError:
        drift_log = b""
    return (captions.fingerprint(run.config.captions, run.config.caption_lexicon)
            + "-drift-" + hashlib.sha256(drift_log).hexdigest()[:16])


def _caption_check(config: PipelineConfig, source: Storage, root: Storage, head, data: TrainingData,
                   others: dict) -> tuple[dict | None, dict[str, bytes], pd.Series | None]:
    """DeepFace's labels and the model's predictions against the captions' (``captions.py``), the
    figures (the confusion matrix, photos where DeepFace and the captions disagree), and the caption
    label of each covered photo by image_id."""
    if not config.captions:
        return None, {}, None
    labels = captions.caption_labels(captions.read_captions(config.captions),
                                     captions.read_lexicon(config.caption_lexicon), config.caption_min_agree)
    matched = captions.match_photos(labels, catalog.read_dataset(root))
    judged = matched[matched["caption_label"].notna() & (matched["status"] == "ok")].reset_index(drop=True)
    vectors, index = catalog.read_features(root)
    rows = judged[["image_id"]].merge(index[["image_id", "row"]].drop_duplicates("image_id"), how="left")["row"]
    if rows.isna().any():
        raise MissingUpstream(f"{int(rows.isna().sum())} captioned photos have no vector: "
                              "run assemble_features first")
    judged_vectors = vectors[rows.to_numpy(dtype=int)]
    predictions = _classes(head, judged_vectors)
    trained_on = set(data.frame.loc[data.frame["split"] == "train", "image_id"])
    check = captions.caption_check(matched, predictions, trained_on, config.caption_min_agree)
    for name, other in others.items():
        check[f"model_{name}"] = classification_metrics(class_ids(judged["caption_label"]),
                                                        _classes(other, judged_vectors))
    figures = {"caption_confusion_deepface": confusion_matrix_chart(
        check["deepface"]["confusion_matrix"], "Captions: DeepFace's label vs the captions'", "caption label")}
    judged["model_label"] = [CLASSES[int(p)] for p in predictions]
    disagreeing = judged[judged["label"] != judged["caption_label"]].head(6)
    if len(disagreeing):
        examples = [(decode_photo(read_photo(source, row.source_key), config.max_image_pixels),
                     (row.face_x, row.face_y, row.face_w, row.face_h),
                     f"captions: {row.caption_label} ({getattr(row, 'votes_' + row.caption_label)}/{row.captions})\n"
                     f"DeepFace: {row.label if isinstance(row.label, str) else NO_LABEL} · model: {row.model_label}")
                    for row in disagreeing.itertuples(index=False)]
        figures["caption_disagreements"] = boxed_photos_chart(examples)
    log.info("captions: %d of %d photos covered, DeepFace agrees on %.1f%%, the model on %.1f%%", check["covered"],
             check["photos"], 100 * check["deepface"]["accuracy"], 100 * check["model"]["accuracy"])
    covered = matched[matched["caption_label"].notna()].drop_duplicates("image_id")
    return check, figures, covered.set_index("image_id")["caption_label"]


def _label_policy_curves(config: PipelineConfig, root: Storage, caption_by_id: pd.Series | None) -> dict | None:
    """Coverage against agreement (gold, captions) per label-policy knob; None without either reference."""
    gold = catalog.read_gold_annotations(root)
    if gold is None and caption_by_id is None:
        return None
    dataset = catalog.read_dataset(root)
    annotated = dataset[dataset["status"].isin(["ok", "no_face"])].drop_duplicates("image_id")
    faces = catalog.read_faces(root, annotated["shard"].unique())
    faces = faces[faces["image_id"].isin(annotated["image_id"])] if len(faces) else faces
    return label_policy.policy_curves(config, annotated["image_id"], faces, gold, caption_by_id,
                                      gold_sizes=(config.gold_detector or config.detector) != "skip")


def _heatmap_photos(config: PipelineConfig, source: Storage, root: Storage, data: TrainingData):
    """The first ``shap_images`` test rows as the model saw them (photos, or faces), and their labels."""
    test = data.frame[data.frame["split"] == "test"].head(config.shap_images)
    if not len(test):
        return np.zeros((0, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8), []
    if "face_index" in test:  # label_unit=face: each row is a face with its box
        return np.stack([input_of(config, source, row, "face") for _, row in test.iterrows()]), test["label"].tolist()
    _, index = catalog.read_features(root)
    kinds = index.drop_duplicates("image_id").set_index("image_id")["input"]
    dataset = catalog.read_dataset(root).drop_duplicates("image_id").set_index("image_id", drop=False)
    images = np.stack([input_of(config, source, dataset.loc[i], kinds[i]) for i in test["image_id"]])
    return images, test["label"].tolist()


def _gold_check(config: PipelineConfig, root: Storage, head, others: dict) -> dict | None:
    """People's labels vs DeepFace, the trained model and the heads trained beside it (``others``), on
    the gold photos with a face."""
    table = catalog.read_gold_annotations(root)
    if table is None:
        return None
    with_face = photos_with_face(table)
    vectors = _gold_vectors(config, root, with_face)
    check = gold_agreement(table, _classes(head, vectors))
    for name, other in others.items():
        check[f"model_{name}"] = classification_metrics(class_ids(with_face["label"]), _classes(other, vectors))
    return check


def _classes(head, vectors: np.ndarray) -> np.ndarray:
    """A head's class index per vector."""
    return head.predict(vectors, verbose=0).argmax(1) if len(vectors) else np.zeros(0, dtype=int)


def _gold_vectors(config: PipelineConfig, root: Storage, with_face: pd.DataFrame) -> np.ndarray:
    """The ResNet50 vectors of the gold faces, computed once per gold set and embedding settings
    (cached beside the gold annotations): a new model version only runs its head over them."""
    marker = catalog.read_done(root, catalog.GOLD_FOLDER) or {}
    settings = [marker.get("fingerprint"), config.embed_input, config.embed_weights, config.mixed_precision,
                config.max_image_pixels, len(with_face)]
    key = catalog.gold_vectors(hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:16])
    if root.exists(key):
        return np.load(io.BytesIO(root.read_bytes(key)))
    resnet = resnet50(config.embed_weights, config.mixed_precision)
    batch = max(1, config.embed_batch_size)
    inputs = (gold_input(config, row) for row in with_face.itertuples(index=False))  # decoded batch by batch
    chunks = []
    while chunk := list(itertools.islice(inputs, batch)):
        chunks.append(image_vectors(resnet, np.stack(chunk), batch))
    vectors = np.concatenate(chunks) if chunks else np.zeros((0, DIM), dtype=np.float32)
    root.write_bytes(key, npy_bytes(vectors))
    return vectors


def gold_input(config: PipelineConfig, row) -> np.ndarray:
    """The model input of one gold photo (a row of the gold check's table), as embed makes it."""
    photo = decode_photo(read_uri(row.uri), config.max_image_pixels)
    box = (row.face_x, row.face_y, row.face_w, row.face_h) if config.embed_input == "face" else None
    return model_input(photo, box)


def _image(png: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(png))
