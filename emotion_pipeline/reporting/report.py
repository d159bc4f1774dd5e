"""``reports/<model version>/report.html``: one self-contained page (figures inlined as base64)."""
from __future__ import annotations

import base64
import html
from datetime import UTC, datetime
from typing import Any

from emotion_pipeline.core import catalog
from emotion_pipeline.core.config import CLASSES
from emotion_pipeline.core.storage import Storage
from emotion_pipeline.modeling.metrics import FEW_ROWS

# Rates below this show 3 significant digits instead of 3 decimals, which would print 0.000.
SMALL_VALUE = 0.01
FIGURE_CAPTIONS = {
    "confusion_matrix": "Confusion matrix on the test split (colour: share of the true class).",
    "shap_embedding_summary": "Which ResNet50 embedding dimensions push the head towards each emotion.",
    "shap_image_heatmaps": "Where in the photo the predicted emotion comes from (red: towards it, blue: against).",
    "tsne": "The vectors in 2-D (t-SNE), coloured by DeepFace label.",
    "gold_confusion_deepface": "Gold set: DeepFace's label against people's.",
    "gold_confusion_model": "Gold set: the trained model's prediction against people's.",
    "caption_confusion_deepface": "Captions: DeepFace's label against the captions' (rows: what the captions say).",
    "caption_disagreements": "Photos where DeepFace's label and the captions disagree (the label face boxed).",
    "label_policy": "Label policy: for each knob (others at this run's settings), the share of photos that keep a "
                    "label against how often those labels agree with people (gold) and captions; numbers are the "
                    "thresholds, the star this run's setting. Pick thresholds here, then set them as knobs.",
}

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222;padding:0 1em}
h1{margin-bottom:0}.sub{color:#666;margin-top:.2em}table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{border:1px solid #ddd;padding:.3em .7em;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}.best{font-weight:bold;background:#eef7ee}
figure{margin:1em 0}img{max-width:100%;border:1px solid #eee}.note{background:#fff6e0;padding:.7em}
.grid{display:flex;gap:2em;flex-wrap:wrap}.flag{background:#fde8e8;border-left:.4em solid #c00;padding:.7em}
"""


def dataset_summary(root: Storage) -> dict[str, Any]:
    dataset = catalog.require_dataset(root)
    monitor_log = catalog.read_monitor_log(root)
    annotated = dataset[dataset["status"].isin(["ok", "no_face"])]
    drifted = []
    if "drift" in monitor_log:
        drifted = sorted({int(s) for s in monitor_log.loc[monitor_log["drift"].astype(bool), "shard"]})
    return {
        "images": len(dataset),
        "statuses": dataset["status"].value_counts().to_dict(),
        "labels": {c: int((dataset["label"] == c).sum()) for c in CLASSES},
        "no_face_rate": float((annotated["status"] == "no_face").mean()) if len(annotated) else 0.0,
        "shards": int(dataset["shard"].nunique()),
        "drifted_shards": drifted,
    }


def write_report(root: Storage, version: str, *, dataset: dict[str, Any], evaluation: dict | None = None,
                 training: dict | None = None, figures: dict[str, bytes] | None = None,
                 note: str | None = None) -> str:
    key = catalog.report_file(version, catalog.REPORT_PAGE)
    page = render(version, dataset, evaluation=evaluation, training=training, figures=figures or {}, note=note)
    root.write_bytes(key, page.encode())
    return root.uri_for(key)


def render(version, dataset, *, evaluation, training, figures, note) -> str:
    parts = [f"<h1>Emotion pipeline report</h1><p class='sub'>model version {html.escape(str(version))} · "
             f"{datetime.now(UTC):%Y-%m-%d %H:%M UTC}</p>"]
    if note:
        parts.append(f"<p class='note'>{html.escape(note)}</p>")
    if evaluation:
        parts.extend(f"<p class='flag'>{html.escape(text)}</p>" for text in flag_texts(evaluation, training or {}))
    parts.append(_dataset_section(dataset))
    if evaluation:
        parts.append(_metrics_section(evaluation, training or {}))
        if evaluation.get("gold"):
            parts.append(gold_section(evaluation["gold"]))
        if evaluation.get("reviewed"):
            parts.append(reviewed_section(evaluation["reviewed"]))
        if evaluation.get("captions"):
            parts.append(caption_section(evaluation["captions"]))
        if evaluation.get("teachers"):
            parts.append(teachers_section(evaluation["teachers"], evaluation.get("teacher")))
    rows = (evaluation or {}).get("figure_rows", {})
    for name, png in figures.items():
        data = base64.b64encode(png).decode()
        per_face = (evaluation or {}).get("label_unit") == "face" and not name.startswith(("gold", "caption"))
        unit = "faces" if per_face else "photos"
        caption = FIGURE_CAPTIONS.get(name, name)
        if name in rows:
            caption += f" Computed on {_count(rows[name], unit)}."
        parts.append(f"<figure><img alt='{name}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Emotion pipeline report {version}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")


def _table(header: list[str], rows: list[list[Any]], best_row: int | None = None) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        f"<tr{' class=best' if i == best_row else ''}>"
        + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
        for i, row in enumerate(rows))
    return f"<table><tr>{head}</tr>{body}</table>"


def _count(n: int, unit: str = "") -> str:
    """How many rows a figure or metric is computed on, saying so when they are too few to measure
    anything (none: its rates say "no data")."""
    counted = f"{n} {unit}".strip()
    return counted if n >= FEW_ROWS or n == 0 else f"{counted} (too few: under {FEW_ROWS})"


def _rate(metric: dict[str, Any], key: str) -> Any:
    """A per-class rate (recall, F1) of ``classification_metrics``, or "no data" where the class had no
    row: 0 would read as "always wrong"."""
    return metric[key] if metric["support"] else "no data"


def _overall(metric: dict[str, Any], key: str = "accuracy") -> Any:
    """An overall rate of ``classification_metrics``, or "no data" when it was computed on no row."""
    return metric[key] if metric["n"] else "no data"


def flag_texts(evaluation: dict[str, Any], training: dict[str, Any]) -> list[str]:
    """One loud sentence per flag train raised on the model (``training.model_flags``)."""
    unit = "faces" if evaluation.get("label_unit") == "face" else "photos"
    texts = {
        "random_embedding_weights": "ResNet50 ran with random weights (embed_weights=none): the vectors hold no "
                                    "learned features, so this model and its figures describe noise. Use imagenet "
                                    "or a weights file for a model worth reading.",
        "below_baseline": f"The model's test macro-F1 ({training.get('test_macro_f1') or 0:.3f}) is below the "
                          f"logistic-regression baseline's ({training.get('baseline_test_macro_f1') or 0:.3f}) on "
                          f"the same test {unit}: " + ("it was promoted all the same (promote_below_baseline)."
                                                       if training.get("champion") else "it was not made champion."),
        "few_test_rows": f"The test split has {evaluation['metrics']['model']['n']} {unit}, fewer than {FEW_ROWS}: "
                         f"its figures are anecdotes, not measurements.",
    }
    return [texts[flag] for flag in evaluation.get("flags") or [] if flag in texts]


def _champion_text(training: dict[str, Any]) -> str:
    """Whether the model became champion, and why (train's promotion policy)."""
    why = training.get("promotion")
    if training.get("champion"):
        return f"yes: {why}" if why else "yes"
    return f"no: {why}" if why else "no (the current champion scored higher)"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if 0 < abs(value) < SMALL_VALUE else f"{value:.3f}"
    return str(value)


def _dataset_section(d: dict[str, Any]) -> str:
    statuses = _table(["status", "photos"], [[k, v] for k, v in sorted(d["statuses"].items(), key=lambda kv: -kv[1])])
    labels = _table(["label", "photos"], [[k, v] for k, v in d["labels"].items()])
    drift = ", ".join(map(str, d["drifted_shards"])) or "none"
    return (f"<h2>Dataset</h2><p>{d['images']} photos in {d['shards']} shards; no-face rate "
            f"{d['no_face_rate']:.1%}; shards flagged for label drift: {drift}.</p>"
            f"<div class='grid'>{statuses}{labels}</div>")


def gold_section(gold: dict[str, Any]) -> str:
    """People's labels against DeepFace's and against the model's, side by side."""
    rows = [[who, _count(gold[key]["n"]), _overall(gold[key]), _overall(gold[key], "macro_f1"),
             *(_rate(gold[key]["per_class"][c], "recall") for c in CLASSES)]
            for who, key in (("DeepFace's network (the label rule)", "deepface"),
                             ("the mini-Xception network", "mini_xception"), ("the mean of the two", "mean"),
                             ("trained model", "model"),
                             ("model trained on the teacher's scores (soft labels)", "model_soft"),
                             ("the same head trained on one row per photo", "model_photo")) if key in gold]
    table = _table(["labels from", "photos", "accuracy", "macro-F1", *(f"recall {c}" for c in CLASSES)], rows)
    return (f"<h2>Gold check: machine labels against people</h2><p>{gold['photos']} photos labelled by people; "
            f"no face found in {gold['no_face_share']:.1%} of them (left out of the figures below). "
            f"DeepFace gave no label (fear, disgust or a near tie) to {gold.get('no_label_share', 0):.1%} of the "
            f"photos with a face: they count as misses, in the confusion matrix's 'no label' column. "
            f"This is how far the training labels, and the model trained on them, are from people.</p>{table}")


REVIEWED_ROWS = (("DeepFace's network", "deepface"), ("the mini-Xception network", "mini_xception"),
                 ("the mean of the two", "mean"), ("trained model (reviewed split only)", "model"))


def reviewed_section(reviewed: dict[str, Any]) -> str:
    """People's labels from the review queue against each teacher's and the model's, with intervals."""
    rows = [[who, _count(reviewed[key]["n"]), _overall(reviewed[key]), _interval(reviewed[key]),
             _overall(reviewed[key], "macro_f1")] for who, key in REVIEWED_ROWS if key in reviewed]
    table = _table(["labels from", "photos", "agreement with people", "95% interval", "macro-F1"], rows)
    return (f"<h2>Reviewed photos: your own gold set</h2><p>{reviewed['photos']} photos reviewed by people "
            f"({reviewed['labelled']} given a label, {reviewed['no_face']} marked 'no usable face', which keeps "
            "them out of training). The teachers are checked on every reviewed photo; the model only on the "
            "reviewed split (reviewed photos that fell in the test split: it never trained on them, and the "
            "test metrics leave them out). The queue asks about doubtful labels first, so these figures are "
            f"lower than on photos drawn at random.</p>{table}")


def _interval(metric: dict[str, Any]) -> str:
    low, high = metric.get("accuracy_ci95") or (0.0, 1.0)
    return f"{low:.2f}-{high:.2f}" if metric["n"] else "no data"


def caption_section(check: dict[str, Any]) -> str:
    """Per emotion: how many photos the captions label, and how often the label (the teacher setting's)
    and the model agree with them."""
    per_class = check["per_class"]
    held_out = check["model_held_out"]["n"]
    heads = [("model agrees", "model"),
             (f"model agrees (not trained on: {held_out}{', too few' if 0 < held_out < FEW_ROWS else ''})",
              "model_held_out"), ("soft-label model agrees", "model_soft"),
             ("photo-trained model agrees", "model_photo")]
    heads = [(title, key) for title, key in heads if key in check]
    # A class no captioned photo with a face has shows "no data", not an agreement of 0.
    rows = [[c, per_class[c]["covered"], _count(per_class[c]["with_face"]),
             _rate(check["deepface"]["per_class"][c], "recall"), per_class[c]["deepface_no_label"],
             *(_rate(check[key]["per_class"][c], "recall") for _, key in heads)] for c in CLASSES]
    rows.append(["all", check["covered"], _count(check["with_face"]), _overall(check["deepface"]),
                 sum(v["deepface_no_label"] for v in per_class.values()), *(_overall(check[key]) for _, key in heads)])
    table = _table(["caption label", "photos", "with a face", "the label agrees", "no label",
                    *(title for title, _ in heads)], rows)
    return (f"<h2>Caption check: labels against what people wrote</h2><p>{check['photos']} photos have captions; "
            f"in {check['covered']} ({check['coverage']:.1%}) at least {check['min_agree']} captions name the same "
            f"emotion (the caption label; {check['conflicts']} photos named two emotions equally and have none); "
            f"{check['no_face']} of those have no face the pipeline may label by. Captions are weak labels: they "
            f"name smiles and tears far more often than anger or surprise, almost never a neutral face, and they "
            f"describe the photo, not the one face it is labelled by. Read the agreement as a floor, per emotion."
            f"</p>{table}")


TEACHER_NAMES = {"deepface": "DeepFace", "mini_xception": "the mini-Xception", "mean": "the mean of the two"}


def teachers_section(table: dict[str, Any], chosen: str | None) -> str:
    """Each teacher's label mix and agreement with the gold set, the captions and the reviewed photos
    (where given), and the two networks' agreement (kappa)."""
    teachers = table["teachers"]
    checks = [(key, title) for key, title in (("gold", "gold"), ("captions", "captions"), ("reviewed", "reviewed"))
              if all(key in entry for entry in teachers.values())]
    header = ["teacher", "photos", *CLASSES, "no label"] + [h for _, title in checks
                                                            for h in (f"{title} agree", f"{title} photos")]
    rows = [[TEACHER_NAMES.get(name, name) + (" (the labels)" if name == chosen else ""), _count(entry["n"]),
             *entry["label_mix"].values(),
             *[v for key, _ in checks for v in (_overall({"accuracy": entry[key]["agreement"], "n": entry[key]["n"]}),
                                               _count(entry[key]["n"]))]]
            for name, entry in teachers.items()]
    between = table["between"]
    kappa = "no data" if between["kappa"] is None else f"{between['kappa']:.3f}"
    same = "no data" if between["same_label"] is None else f"{between['same_label']:.1%}"
    return (f"<h2>Teachers: DeepFace and the mini-Xception</h2><p>Every face is scored by both networks; the "
            f"labels come from {TEACHER_NAMES.get(chosen or '', chosen)} (the teacher setting). On "
            f"{_count(between['n'], 'photos')} both scored, they give the same label (no label counting as one) "
            f"on {same}; Cohen's kappa {kappa}. Neither network is the truth: where they disagree the label "
            f"is unsure.</p>{_table(header, rows)}")


def _metrics_section(evaluation: dict[str, Any], training: dict[str, Any]) -> str:
    metrics = evaluation["metrics"]
    names = {"model": f"ResNet50 + tuned head (v{evaluation['model_version']})",
             "baseline": "logistic regression baseline",
             "majority": f"majority class ({evaluation['majority_class']})",
             "soft": "the same head trained on the teacher's scores (soft labels)",
             "photo": "the same head trained on one row per photo (its label face)"}
    rows = [[names[k], _overall(m), _overall(m, "macro_f1"), _count(m["n"])] for k, m in metrics.items()]
    unit = "faces" if evaluation.get("label_unit") == "face" else "photos"
    overview = _table(["model", "test accuracy", "test macro-F1", f"test {unit}"], rows, best_row=0)
    model = metrics["model"]["per_class"]
    per_class = _table(["class", "precision", "recall", "F1", "support"],
                       [[c, v["precision"], _rate(v, "recall"), _rate(v, "f1"), _count(v["support"])]
                        for c, v in model.items()])
    counts = evaluation["counts"]
    splits = _table(["split", *CLASSES], [[s, *(counts[s][c] for c in CLASSES)] for s in counts])
    hp = training.get("best_hyperparameters", {})
    tuning = _table(["hyperparameter", "value"], [[k, v] for k, v in hp.items() if not k.startswith("tuner/")])
    faces = (" Trained on every labelled face (label_unit=face; a photo's faces share its split); a "
             "photo-trained head beside it, when there is one, is scored on the same test faces."
             if unit == "faces" else "")
    # Photo and face labels are the chosen teacher's (the teacher setting).
    teacher = TEACHER_NAMES.get(evaluation.get("teacher") or "deepface")
    return (f"<h2>Model</h2><p>Labels come from {teacher} (the teacher setting), so these numbers measure "
            f"agreement with it.{faces} "
            f"Champion: {html.escape(_champion_text(training))}. MLflow run {html.escape(str(evaluation['run_id']))}, "
            f"{training.get('trials', '?')} tuner trials.</p>{overview}"
            f"<h3>Per class</h3>{per_class}<div class='grid'><div><h3>{unit.capitalize()} per split</h3>{splits}</div>"
            f"<div><h3>Best hyperparameters</h3>{tuning}</div></div>")
