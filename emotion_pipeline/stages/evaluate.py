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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from emotion_pipeline.core import catalog
from emotion_pipeline.core.arrays import read_array, write_array
from emotion_pipeline.core.config import CLASSES, PERSON, TEACHERS, PipelineConfig
from emotion_pipeline.core.errors import MissingUpstream
from emotion_pipeline.core.progress import timed
from emotion_pipeline.core.results import EvaluateResult, TrainResult
from emotion_pipeline.core.runner import StageRun
from emotion_pipeline.core.storage import Storage, read_uri
from emotion_pipeline.core.tables import write_json
from emotion_pipeline.labelling import captions, label_policy, teachers
from emotion_pipeline.labelling.images import read_photo
from emotion_pipeline.labelling.labels import NO_LABEL
from emotion_pipeline.modeling import tracking
from emotion_pipeline.modeling.classifier import fit_baseline, predict_proba_5
from emotion_pipeline.modeling.data import REVIEWED, TrainingData, gold_ids, load_training_data
from emotion_pipeline.modeling.embedding import DIM, INPUT_SIZE, decode_photo, image_vectors, resnet50, row_input
from emotion_pipeline.modeling.evaluation import (
    class_ids,
    compare_on_test,
    explain_model,
    gold_agreement,
    photos_with_face,
)
from emotion_pipeline.modeling.metrics import agreement_metrics, classification_metrics
from emotion_pipeline.reporting.charts import boxed_photos_chart, confusion_matrix_chart, teacher_policy_chart
from emotion_pipeline.reporting.report import dataset_summary, write_report

log = logging.getLogger(__name__)


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
    config, root = run.config, run.root
    trained = run.upstream_result("train", TrainResult)
    if trained is None or not trained.trained or trained.model_version is None:
        note = trained.reason if trained is not None else None
        uri = write_report(root, "no-model", dataset=dataset_summary(root), note=note)
        return EvaluateResult(evaluated=False, report_uri=uri)
    version = trained.model_version

    mlflow = tracking.use_experiment(config)
    with timed("evaluate: models and test split"):
        evaluation = Evaluation(_test_metrics(config, root, trained))
    _explain_and_check(run, version, evaluation)

    for name, png in evaluation.figures.items():
        root.write_bytes(catalog.report_figure(version, name), png)
    document = _document(config, trained, evaluation)
    write_json(root, catalog.report_file(version, catalog.REPORT_METRICS), document)
    with timed("evaluate: report and MLflow"):
        report_uri = write_report(root, version, dataset=dataset_summary(root), evaluation=document,
                                  training=trained.to_dict(), figures=evaluation.figures)
        _log_to_mlflow(mlflow, trained, evaluation, document, root.read_bytes(
            catalog.report_file(version, catalog.REPORT_PAGE)).decode())
    metrics = evaluation.tested.metrics
    log.info("evaluate: model macro-F1 %.3f, baseline %.3f, majority %.3f -> %s", metrics["model"]["macro_f1"],
             metrics["baseline"]["macro_f1"], metrics["majority"]["macro_f1"], report_uri)
    return EvaluateResult(evaluated=True, model_version=version, report_uri=report_uri,
                          macro_f1=metrics["model"]["macro_f1"])


@dataclass
class Tested:
    """The registered head against the baseline and a majority-class predictor on the test split
    train used (``metrics`` by predictor: model, baseline, majority, and the heads beside it)."""
    metrics: dict[str, dict[str, Any]]
    majority: int  # the majority class's index
    data: TrainingData  # the rows train used: its label unit, whatever this evaluation's config says
    head: Any  # the registered head
    others: dict[str, Any]  # heads trained beside it, by name: soft (soft_labels), photo (label_unit=face)


@dataclass
class CaptionCheck:
    """DeepFace's labels and the heads' predictions against the captions' (None without captions), its
    figures, and the caption label of each covered photo by image_id (for the label-policy curves)."""
    check: dict[str, Any] | None = None
    figures: dict[str, bytes] = field(default_factory=dict)
    label_by_id: pd.Series | None = None


@dataclass
class Evaluation:
    """Everything the report shows: the test split's results, the gold and caption checks and the
    label-policy curves (None with nothing to check against), and the figures, by name, in order."""
    tested: Tested
    gold: dict[str, Any] | None = None
    reviewed: dict[str, Any] | None = None  # people's labels from the review queue vs teachers and model
    captions: dict[str, Any] | None = None
    curves: dict[str, Any] | None = None  # DeepFace's label-policy curves (metrics.json's label_policy)
    teacher_curves: dict[str, Any] | None = None  # the curves per teacher, DeepFace's among them
    teachers: dict[str, Any] | None = None  # the two teachers against the captions and each other
    figures: dict[str, bytes] = field(default_factory=dict)


def _explain_and_check(run: StageRun, version: str, evaluation: Evaluation) -> None:
    """Into ``evaluation``: the test split's confusion matrix, SHAP's explanations, the gold and caption
    checks, the label-policy curves, and their figures."""
    config, root, tested, figures = run.config, run.root, evaluation.tested, evaluation.figures
    figures["confusion_matrix"] = confusion_matrix_chart(
        tested.metrics["model"]["confusion_matrix"], f"Model v{version} on the test split")
    with timed("evaluate: heat-map photos and ResNet50"):
        images, labels = _heatmap_photos(config, run.source, root, tested.data)
        resnet = resnet50(config.embed_weights, config.mixed_precision)
    figures.update(explain_model(config, tested.head, resnet, tested.data, images=images, labels=labels))
    with timed("evaluate: gold check"):
        evaluation.gold = _gold_check(config, root, tested)
    dataset = catalog.read_dataset(root)
    evaluation.reviewed = reviewed_check(dataset, tested)
    with timed("evaluate: caption check"):
        caption_check = _caption_check(run, tested)
    evaluation.captions = caption_check.check
    figures.update(caption_check.figures)
    with timed("evaluate: label-policy curves"):
        evaluation.teacher_curves = _label_policy_curves(config, root, caption_check.label_by_id)
    evaluation.teachers = with_people(teachers.teachers_table(dataset, caption_check.label_by_id),
                                      {"gold": evaluation.gold, "reviewed": evaluation.reviewed})
    by_teacher = evaluation.teacher_curves
    if by_teacher:
        evaluation.curves = by_teacher["deepface"]
        figures["label_policy"] = teacher_policy_chart(
            by_teacher, {teacher: label_policy.chosen_points(config, curves) for teacher, curves in by_teacher.items()})
    if evaluation.gold:
        figures["gold_confusion_deepface"] = confusion_matrix_chart(
            evaluation.gold["deepface"]["confusion_matrix"], "Gold set: DeepFace vs people", "people's label")
        figures["gold_confusion_model"] = confusion_matrix_chart(
            evaluation.gold["model"]["confusion_matrix"], f"Gold set: model v{version} vs people", "people's label")


def _document(config: PipelineConfig, trained: TrainResult, evaluation: Evaluation) -> dict[str, Any]:
    """The evaluation as the report's ``metrics.json`` (and MLflow's copy of it) records it."""
    tested = evaluation.tested
    return {"model_version": trained.model_version, "run_id": trained.run_id, "label_unit": trained.label_unit,
            "majority_class": CLASSES[tested.majority],
            "counts": tested.data.counts(), "metrics": tested.metrics, "gold": evaluation.gold,
            "reviewed": evaluation.reviewed,
            "captions": evaluation.captions, "label_policy": evaluation.curves,
            "label_policy_by_teacher": evaluation.teacher_curves, "embed_weights": config.embed_weights,
            "flags": trained.flags, "champion": trained.champion, "promotion": trained.promotion,
            "teacher": config.teacher, "teachers": evaluation.teachers,
            "figure_rows": _figure_rows(config, evaluation)}


def _test_metrics(config: PipelineConfig, root: Storage, trained: TrainResult) -> Tested:
    """The registered head, the baseline, a majority-class predictor and the heads trained beside
    the registered one, on the test split train used."""
    if trained.model_uri is None or trained.run_id is None:  # a trained result records both
        raise MissingUpstream("train recorded no model or no MLflow run: run train first")
    model = tracking.load_model(trained.model_uri)
    # The rows train saw: its unit, whatever this evaluation's config says, and the photos it left out
    # (gold, and the shards a drift decision excluded: train's ``left_out``).
    left_out = gold_ids(root) | catalog.excluded_shard_photos(root)
    data = load_training_data(root, config.min_rows_per_class, left_out, trained.label_unit, config.teacher)
    x_test, y_test = data.part("test")
    x_train, y_train = data.part("train")
    baseline = tracking.load_baseline(trained.run_id)
    if baseline is None:  # a run of an earlier version: its baseline is a pickle, never loaded
        log.warning("evaluate: run %s has no baseline.npz (an earlier version pickled it): refitting the "
                    "baseline on the same training rows instead of unpickling it", trained.run_id)
        baseline = fit_baseline(config, x_train, y_train)
    metrics, majority = compare_on_test(y_train, y_test, model.predict(x_test, verbose=0),
                                        predict_proba_5(baseline, x_test))
    # Heads trained beside the registered one, compared with it everywhere it is checked: on DeepFace's
    # scores (soft_labels), on one row per photo (label_unit=face).
    others = {name: tracking.load_model(uri) for name, uri in (("soft", trained.soft_model_uri),
                                                               ("photo", trained.photo_model_uri)) if uri}
    for name, head in others.items():
        metrics[name] = classification_metrics(y_test, head.predict(x_test, verbose=0).argmax(1))
    return Tested(metrics, majority, data, model, others)


def _figure_rows(config: PipelineConfig, evaluation: Evaluation) -> dict[str, int]:
    """How many rows (photos or faces) each statistical figure is computed on, so that the report and
    the dashboard can say which rest on too few. Examples (heat maps, disagreeing photos) are not
    statistics and are left out; so are the label-policy curves (each point has its own count)."""
    gold_check, caption_check = evaluation.gold, evaluation.captions
    test_rows = evaluation.tested.metrics["model"]["n"]
    rows = {"confusion_matrix": test_rows, "shap_embedding_summary": min(config.shap_samples, test_rows),
            "tsne": len(evaluation.tested.data.frame)}
    if gold_check:
        rows.update(gold_confusion_deepface=gold_check["deepface"]["n"], gold_confusion_model=gold_check["model"]["n"])
    if caption_check:
        rows["caption_confusion_deepface"] = caption_check["deepface"]["n"]
    return rows


def _log_to_mlflow(mlflow, trained: TrainResult, evaluation: Evaluation, document: dict[str, Any],
                   page: str) -> None:
    """Everything the report shows, into the training's MLflow run."""
    gold_check, caption_check = evaluation.gold, evaluation.captions
    with mlflow.start_run(run_id=trained.run_id):
        for who, m in evaluation.tested.metrics.items():
            mlflow.log_metrics({f"{who}.test_accuracy": m["accuracy"], f"{who}.test_macro_f1": m["macro_f1"]})
            mlflow.log_metrics({f"{who}.test_f1.{c}": v["f1"] for c, v in m["per_class"].items()})
        if gold_check:
            heads = [w for w in ("deepface", "model", "model_soft", "model_photo") if w in gold_check]
            mlflow.log_metrics({f"gold.{who}.{m}": gold_check[who][m] for who in heads
                                for m in ("accuracy", "macro_f1")})
            mlflow.log_metrics({f"gold.{who}.recall.{c}": v["recall"] for who in ("deepface", "model")
                                for c, v in gold_check[who]["per_class"].items()})
            mlflow.log_metric("gold.no_face_share", gold_check["no_face_share"])
            mlflow.log_metric("gold.no_label_share", gold_check["no_label_share"])
        if evaluation.reviewed:
            mlflow.log_metrics({f"reviewed.{who}.agreement": evaluation.reviewed[who]["accuracy"]
                                for who in (*TEACHERS, "model") if who in evaluation.reviewed})
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
        for name, png in evaluation.figures.items():
            mlflow.log_image(_image(png), f"{catalog.MLFLOW_EVALUATION}/{name}.png")
        mlflow.log_text(page, f"{catalog.MLFLOW_EVALUATION}/{catalog.REPORT_PAGE}")


def evaluation_inputs(run: StageRun) -> str:
    """The evaluation's inputs besides its settings and the markers it covers: the captions file and
    lexicon, the drift log the report's dataset summary shows (check_drift keeps no done marker) and
    the drift decisions, whose shards the test metrics leave out."""
    def digest(key: str) -> str:
        try:
            return hashlib.sha256(run.root.read_bytes(key)).hexdigest()[:16]
        except FileNotFoundError:
            return "none"

    return (captions.fingerprint(run.config.captions, run.config.caption_lexicon)
            + "-drift-" + digest(catalog.MONITOR_LOG) + "-excluded-" + digest(catalog.EXCLUDED_SHARDS))


def _caption_check(run: StageRun, tested: Tested) -> CaptionCheck:
    """DeepFace's labels and the heads' predictions against the captions' (``captions.py``), with the
    figures (the confusion matrix, photos where DeepFace and the captions disagree)."""
    config, root = run.config, run.root
    if not config.captions:
        return CaptionCheck()
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
    predictions = _classes(tested.head, judged_vectors)
    trained_on = set(tested.data.frame.loc[tested.data.frame["split"] == "train", "image_id"])
    check = captions.caption_check(matched, predictions, trained_on, config.caption_min_agree)
    for name, other in tested.others.items():
        check[f"model_{name}"] = classification_metrics(class_ids(judged["caption_label"]),
                                                        _classes(other, judged_vectors))
    figures = {"caption_confusion_deepface": confusion_matrix_chart(
        check["deepface"]["confusion_matrix"], "Captions: DeepFace's label vs the captions'", "caption label")}
    judged["model_label"] = [CLASSES[int(p)] for p in predictions]
    disagreeing = judged[judged["label"] != judged["caption_label"]].head(6)
    if len(disagreeing):
        examples = [(decode_photo(read_photo(run.source, row.source_key), config.max_image_pixels),
                     (row.face_x, row.face_y, row.face_w, row.face_h),
                     f"captions: {row.caption_label} ({getattr(row, 'votes_' + row.caption_label)}/{row.captions})\n"
                     f"DeepFace: {row.label if isinstance(row.label, str) else NO_LABEL} · model: {row.model_label}")
                    for row in disagreeing.itertuples(index=False)]
        figures["caption_disagreements"] = boxed_photos_chart(examples)
    log.info("captions: %d of %d photos covered, the label agrees on %.1f%%, the model on %.1f%%", check["covered"],
             check["photos"], 100 * check["deepface"]["accuracy"], 100 * check["model"]["accuracy"])
    covered = matched[matched["caption_label"].notna()].drop_duplicates("image_id")
    return CaptionCheck(check, figures, covered.set_index("image_id")["caption_label"])


def _label_policy_curves(config: PipelineConfig, root: Storage, caption_by_id: pd.Series | None) -> dict | None:
    """Coverage against agreement (gold, captions) per label-policy knob, per teacher whose scores the
    faces hold (``label_policy.teacher_curves``); None without either reference."""
    gold = catalog.read_gold_annotations(root)
    if gold is None and caption_by_id is None:
        return None
    dataset = catalog.require_dataset(root)
    annotated = dataset[dataset["status"].isin(["ok", "no_face"])].drop_duplicates("image_id")
    faces = catalog.read_faces(root, annotated["shard"].unique())
    faces = faces[faces["image_id"].isin(annotated["image_id"])] if len(faces) else faces
    return label_policy.teacher_curves(config, annotated["image_id"], faces, gold=gold, caption_labels=caption_by_id,
                                       gold_sizes=(config.gold_detector or config.detector) != "skip")


def _heatmap_photos(config: PipelineConfig, source: Storage, root: Storage, data: TrainingData):
    """The first ``shap_images`` test rows as the model saw them (photos, or faces), and their labels."""
    test = data.frame[data.frame["split"] == "test"].head(config.shap_images)
    if not len(test):
        return np.zeros((0, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8), []

    def seen(row: pd.Series, kind: str) -> np.ndarray:  # as embed made it
        return row_input(read_photo(source, row["source_key"]), row, face=kind == "face",
                         max_pixels=config.max_image_pixels)

    if "face_index" in test:  # label_unit=face: each row is a face with its box
        return np.stack([seen(row, "face") for _, row in test.iterrows()]), test["label"].tolist()
    _, index = catalog.read_features(root)
    kinds = index.drop_duplicates("image_id").set_index("image_id")["input"]
    dataset = catalog.require_dataset(root).drop_duplicates("image_id").set_index("image_id", drop=False)
    images = np.stack([seen(dataset.loc[i], kinds[i]) for i in test["image_id"]])
    return images, test["label"].tolist()


def _gold_check(config: PipelineConfig, root: Storage, tested: Tested) -> dict | None:
    """People's labels vs DeepFace, the trained model and the heads trained beside it (``others``), on
    the gold photos with a face."""
    table = catalog.read_gold_annotations(root)
    if table is None:
        return None
    with_face = photos_with_face(table)
    vectors = _gold_vectors(config, root, with_face)
    check = gold_agreement(table, _classes(tested.head, vectors))
    for name, other in tested.others.items():
        check[f"model_{name}"] = classification_metrics(class_ids(with_face["label"]), _classes(other, vectors))
    check.update(_gold_by_teacher(config, table))
    return check


def _gold_by_teacher(config: PipelineConfig, table: pd.DataFrame) -> dict[str, Any]:
    """The second teacher's and the mean's labels against people's on the gold photos with a face (a
    gold table written before the gold check scored with both has DeepFace's only: nothing)."""
    if not set(teachers.XCEPTION_COLUMNS) <= set(table.columns):
        return {}
    labels = teachers.gold_labels(table, min_margin=config.min_emotion_margin)
    people = class_ids(table.loc[labels.index, "label"])
    return {teacher: classification_metrics(people, class_ids(labels[teachers.label_column(teacher)]), no_label=True)
            for teacher in ("mini_xception", "mean")}


def reviewed_check(dataset: pd.DataFrame | None, tested: Tested) -> dict[str, Any] | None:
    """People's labels from the review queue (the dataset's ``label_source`` ``person``) as a gold set
    of the user's own photos: against each teacher's label on every reviewed photo (no teacher ever
    learnt from them), and against the model on the ``reviewed`` split (the test photos a person
    labelled: never trained on, and left out of the test metrics, so no photo counts twice). Accuracy
    with its 95% interval and n; None when nobody reviewed a photo. The queue asks about the doubtful
    photos, so these figures are lower than on photos drawn at random: they say how the teachers do
    where it matters, not on average."""
    if dataset is None or "label_source" not in dataset:
        return None
    by_person = dataset[dataset["label_source"] == PERSON].drop_duplicates("image_id")
    if by_person.empty:
        return None
    labelled = by_person[by_person["label"].isin(CLASSES)]
    people = class_ids(labelled["label"])
    check: dict[str, Any] = {"photos": len(by_person), "labelled": len(labelled),
                             "no_face": int((by_person["status"] == "no_face").sum())}
    for teacher in TEACHERS:  # each teacher's own label, before the person's replaced it
        if teachers.label_column(teacher) in labelled:
            check[teacher] = agreement_metrics(people, class_ids(labelled[teachers.label_column(teacher)]))
    x_reviewed, y_reviewed = tested.data.part(REVIEWED)
    check["model"] = agreement_metrics(y_reviewed, _classes(tested.head, x_reviewed))
    return check


def with_people(table: dict[str, Any] | None, checks: dict[str, dict[str, Any] | None]) -> dict[str, Any] | None:
    """The teachers table with each teacher's agreement with people (the gold set, the reviewed photos)
    where that check measured the teacher: ``{n, agree, agreement}`` as for the captions."""
    for key, check in checks.items():
        for teacher, entry in (table or {}).get("teachers", {}).items():
            if check and check.get(teacher) and check[teacher]["n"]:
                figures = check[teacher]
                entry[key] = {"n": figures["n"], "agree": round(figures["accuracy"] * figures["n"]),
                              "agreement": figures["accuracy"]}
    return table


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
        return read_array(root, key)
    resnet = resnet50(config.embed_weights, config.mixed_precision)
    batch = max(1, config.embed_batch_size)
    inputs = (row_input(read_uri(row.uri), row, face=config.embed_input == "face", max_pixels=config.max_image_pixels)
              for row in with_face.itertuples(index=False))  # decoded batch by batch: as embed makes them
    chunks = []
    while chunk := list(itertools.islice(inputs, batch)):
        chunks.append(image_vectors(resnet, np.stack(chunk), batch))
    vectors = np.concatenate(chunks) if chunks else np.zeros((0, DIM), dtype=np.float32)
    write_array(root, key, vectors)
    return vectors


def _image(png: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(png))
