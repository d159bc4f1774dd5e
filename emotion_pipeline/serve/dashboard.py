"""The Streamlit dashboard: ``emotion-pipeline dashboard --root DIR_OR_GS``.

Pages (sidebar, or ``?page=`` in the URL): Dataset, Monitoring, Model, Try it, Review. Everything is
read from what the pipeline wrote under the root; "Try it" runs the registered champion in-process.
The dashboard only reads, but for Review, which adds each decision a person makes as a new file under
``reviews/decisions/`` (``labelling.reviews``). Without a model it says so and creates no MLflow
store. Pages call the root by a name (``--name``, else its last folder's), never by its path on the
server; an upload is at most ``--max-upload-mb`` (10 MB, as the API) and 16 megapixels (the API's
cap), decoded once.
"""
from __future__ import annotations

import io
import json
import logging
import os
import sys
from types import SimpleNamespace

import pandas as pd
import streamlit as st
from PIL import Image, ImageDraw, ImageFont

from emotion_pipeline.core import catalog
from emotion_pipeline.core.config import CLASSES, EMOTIONS, TEACHERS, PipelineConfig
from emotion_pipeline.core.errors import StorageError
from emotion_pipeline.core.storage import open_storage
from emotion_pipeline.labelling.images import letterbox_box
from emotion_pipeline.labelling.reviews import NO_FACE, decide, record_decision
from emotion_pipeline.reporting.charts import drift_timeline_chart, label_pie_chart
from emotion_pipeline.serve import review_page

PAGES = ("Dataset", "Monitoring", "Model", "Try it", "Review")
BOX_COLOR = (255, 40, 40)
NO_DATA = "no data"  # an agreement over zero photos is unknown, not 0
TEACHER_COLUMNS = {"DeepFace": "emotion_", "mini-Xception": "xception_"}  # a face's seven scores each
TEACHER_NAMES = {"deepface": "DeepFace", "mini_xception": "the mini-Xception", "mean": "their mean"}
PHOTO_CHOICES = 1000  # the photo view's list: enough to browse, small enough to send on every rerun

log = logging.getLogger(__name__)


def root_uri() -> str:
    args = sys.argv[1:]
    if "--root" in args:
        return args[args.index("--root") + 1]
    return os.environ.get("EMOTION_PIPELINE_ROOT", "out")


def root_name(uri: str) -> str:
    """What the pages call the root: ``--name``, else the last part of its path or URL (``out``, not
    ``/srv/data/out``: the server's folders are nobody's business who looks at results)."""
    return os.environ.get("EMOTION_PIPELINE_ROOT_NAME") or uri.rstrip("/").rsplit("/", 1)[-1] or "root"


def max_upload_mb() -> int:
    """Largest upload in MB (``--max-upload-mb``; the server refuses more, as ``server.maxUploadSize``)."""
    return max(1, int(os.environ.get("EMOTION_PIPELINE_DASHBOARD_MAX_UPLOAD_MB") or 10))


@st.cache_resource
def storage(uri: str):
    return open_storage(uri)


@st.cache_data(ttl=60)
def dataset(uri: str) -> pd.DataFrame | None:
    return catalog.read_dataset(storage(uri))


@st.cache_data(ttl=60)
def monitor_log(uri: str) -> pd.DataFrame:
    return catalog.read_monitor_log(storage(uri))


def read_png(uri: str, key: str) -> bytes | None:
    try:
        return storage(uri).read_bytes(key)
    except FileNotFoundError:
        return None


def shown_report(uri: str) -> tuple[str, dict, str] | None:
    """The champion's evaluation (the model Try it and the API use), else the newest one; with a note
    that says which it is. A later model that lost to the champion keeps its report, so the newest
    report is not necessarily the champion's."""
    root = storage(uri)
    versions = catalog.report_versions(root)
    if not versions:
        return None
    champion = champion_version(uri)
    if champion in versions:
        version = champion
        later = versions[versions.index(champion) + 1:]
        note = "the champion: the model Try it and the prediction API use." + (
            f" Later versions that did not become champion: {', '.join(later)}." if later else "")
    else:
        version = versions[-1]
        note = ("the newest evaluated model; no champion is registered." if champion is None else
                f"the newest evaluated model; the champion, version {champion}, has no report here.")
    return version, json.loads(root.read_bytes(catalog.report_file(version, catalog.REPORT_METRICS))), note


def draw_boxes(image: Image.Image, boxes: list[tuple[float, float, float, float]],
               numbered: bool = True) -> Image.Image:
    """Boxes (x, y, w, h) on the image, each tagged 1, 2, ... like the "Face 1/2" lines below it.
    Line and tag scale with the image: it is shown at about the same width whatever its pixels, so a
    fixed 2-3 px line all but vanishes on a big photo and a thumbnail's is a hairline."""
    longest = max(image.size)
    width = max(3, round(longest / 300))
    font = ImageFont.load_default(size=max(14, round(longest / 30)))
    draw = ImageDraw.Draw(image)
    for number, (x, y, w, h) in enumerate(boxes, start=1):
        # Never thicker than a sixth of the box: a small face stays visible inside its box.
        draw.rectangle([x, y, x + w, y + h], outline=BOX_COLOR, width=max(1, min(width, round(min(w, h) / 6))))
        if numbered:
            text_w, text_h = draw.textbbox((0, 0), str(number), font=font)[2:]
            tag_h = text_h + 2 * width
            tag_y = y - tag_h if y >= tag_h else y  # above the box; inside it at the photo's top edge
            draw.rectangle([x, tag_y, x + text_w + 2 * width, tag_y + tag_h], fill=BOX_COLOR)
            draw.text((x + width, tag_y + width), str(number), fill="white", font=font)
    return image


def boxed_thumbnail(uri: str, row: pd.Series) -> Image.Image:
    """The letterboxed copy with the label face's box mapped onto it."""
    image = Image.open(io.BytesIO(storage(uri).read_bytes(catalog.processed_photo(row["image_id"])))).convert("RGB")
    # Face boxes are in the upright frame (EXIF orientation applied), like the processed copy.
    width, height = (float(row.get(f"upright_{k}", row[f"orig_{k}"])) for k in ("width", "height"))
    x, y, w, h = (float(row[f"face_{k}"]) for k in ("x", "y", "w", "h"))
    box = (x, y, w, h)
    left, top, right, bottom = letterbox_box(box, width, height, image.width)  # square copies
    return draw_boxes(image, [(left, top, right - left, bottom - top)], numbered=False)


def page_dataset(uri: str) -> None:
    st.header("Dataset")
    data = dataset(uri)
    if data is None:
        st.info(f"No dataset in {root_name(uri)} yet: run the pipeline first (`make run SOURCE=...`).")
        return
    annotated = data[data["status"].isin(["ok", "no_face"])]
    cols = st.columns(4)
    cols[0].metric("photos", len(data))
    cols[1].metric("labelled", int(data["label"].notna().sum()))
    cols[2].metric("no-face rate", f"{(annotated['status'] == 'no_face').mean():.0%}" if len(annotated) else "-")
    cols[3].metric("shards", int(data["shard"].nunique()))
    left, right = st.columns(2)
    left.subheader("Photos by status")
    left.bar_chart(data["status"].value_counts())
    right.subheader("Labels")
    right.bar_chart(data["label"].value_counts().reindex(CLASSES).fillna(0))
    st.subheader("Examples per emotion (label face boxed)")
    for label in CLASSES:
        examples = data[data["label"] == label].head(6)
        if examples.empty:
            continue
        st.markdown(f"**{label}**")
        columns = st.columns(6)
        for column, (_, row) in zip(columns, examples.iterrows()):
            column.image(boxed_thumbnail(uri, row), caption=row["source_key"][-28:])
    photo_view(uri, data)


@st.cache_data(ttl=60)
def shard_faces(uri: str, shard: int) -> pd.DataFrame:
    return catalog.read_faces(storage(uri), [shard])


def chosen_teachers(data: pd.DataFrame) -> list[str]:
    """The teachers whose labels are the dataset's ``label`` on every photo: merge copies the ``teacher``
    setting's, which the dataset does not name. Several where they label every photo alike (then
    whichever was chosen, the labels shown are its); none for a dataset without the second teacher."""
    label = data["label"].fillna("-")
    return [t for t in TEACHERS if f"label_{t}" in data and (data[f"label_{t}"].fillna("-") == label).all()]


def photo_choices(data: pd.DataFrame, wanted: str | None) -> list[str]:
    """The photos with faces, those where the two teachers disagree on the label face first (where the
    label is unsure), at most PHOTO_CHOICES of them, and the one the URL asks for (``?photo=``)."""
    ok = data[data["status"] == "ok"]
    disagree = ok["teachers_agree"].eq(False).fillna(False) if "teachers_agree" in ok else False
    keys = ok.assign(disagree=disagree).sort_values(["disagree", "source_key"], ascending=[False, True])
    choices = keys["source_key"].head(PHOTO_CHOICES).tolist()
    return choices + [wanted] if wanted in set(ok["source_key"]) - set(choices) else choices


def teacher_scores_table(face: pd.Series) -> pd.DataFrame:
    """A face's seven scores under both teachers side by side, and their mean (the ``mean`` teacher's),
    as text: "-" where the mini-Xception did not score (annotated without its file)."""
    scores = pd.DataFrame({name: [float(face.get(f"{prefix}{e}", float("nan"))) for e in EMOTIONS]
                           for name, prefix in TEACHER_COLUMNS.items()}, index=list(EMOTIONS))
    scores["mean"] = scores.mean(axis=1, skipna=False)
    return scores.map(lambda v: "-" if pd.isna(v) else f"{v:.2f}")


def face_verdict(face: pd.Series, chosen: list[str]) -> str:
    """What each teacher labels the face, and the label the teacher setting gives it."""
    if not face.get("eligible", True):
        return "may not label (too small or not confident enough): no teacher's label counts"
    said = {t: face.get(f"label_{t}") for t in TEACHERS}
    words = ", ".join(f"{TEACHER_NAMES[t]} says {said[t] if isinstance(said[t], str) else 'no label'}"
                      for t in TEACHERS)
    if chosen:
        label = said[chosen[0]] if isinstance(said[chosen[0]], str) else "no label"
        names = " or ".join(TEACHER_NAMES[t] for t in chosen)
        words += f"; the teacher setting ({names}) labels it **{label}**"
    agree = face.get("teachers_agree")
    return words + ("" if pd.isna(agree) else "; the teachers agree" if agree else "; the teachers disagree")


def photo_view(uri: str, data: pd.DataFrame) -> None:
    """One photo: its faces boxed and numbered, and each face's scores under both teachers."""
    st.subheader("One photo: every face, both teachers")
    wanted = st.query_params.get("photo")
    choices = photo_choices(data, wanted)
    if not choices:
        st.info("No photo with a face yet.")
        return
    key = st.selectbox("Photo (where the teachers disagree first)", choices,
                       index=choices.index(wanted) if wanted in choices else 0)
    row = data[data["source_key"] == key].iloc[0]
    faces = shard_faces(uri, int(row["shard"]))
    faces = faces[faces["image_id"] == row["image_id"]].sort_values("face_index")
    label_face = faces["face_index"].tolist().index(row["label_face_index"]) + 1  # numbered as drawn
    st.image(boxed_faces(uri, row, faces), width=448,
             caption=f"{len(faces)} face(s), numbered as below; the photo's label is face {label_face}'s")
    chosen = chosen_teachers(data)
    for number, (_, face) in enumerate(faces.iterrows(), start=1):
        st.markdown(f"**Face {number}**: {face_verdict(face, chosen)}")
        st.table(teacher_scores_table(face))


def boxed_faces(uri: str, row: pd.Series, faces: pd.DataFrame) -> Image.Image:
    """The letterboxed copy with every face's box mapped onto it, numbered in ``faces``' order."""
    image = Image.open(io.BytesIO(storage(uri).read_bytes(catalog.processed_photo(row["image_id"])))).convert("RGB")
    width, height = (float(row.get(f"upright_{k}", row[f"orig_{k}"])) for k in ("width", "height"))
    boxes = []
    for _, face in faces.iterrows():
        x, y, w, h = (float(face[k]) for k in ("x", "y", "w", "h"))
        left, top, right, bottom = letterbox_box((x, y, w, h), width, height, image.width)
        boxes.append((left, top, right - left, bottom - top))
    return draw_boxes(image, boxes)


def drift_lines(log: pd.DataFrame):
    """JS distance and the signed no-face change of the judged shards (the sign as in the log, the pie
    titles and the drift timeline), with a point on each shard: one judged shard is a point, not an
    invisible line. None when no shard was judged (an empty chart only shows a 0.000000 axis)."""
    import altair as alt

    judged = log.sort_values("checked_at").groupby("shard").tail(1)
    judged = judged[judged["judged"].astype(bool)]
    if judged.empty:
        return None
    values = judged.melt(id_vars="shard", value_vars=["js_distance", "no_face_change"],
                         var_name="statistic", value_name="value").dropna()
    return alt.Chart(values).mark_line(point=True).encode(
        x=alt.X("shard:O", title="shard"), y=alt.Y("value:Q", title="distance / change to reference"),
        color=alt.Color("statistic:N", title=None))


def log_thresholds(log: pd.DataFrame) -> SimpleNamespace:
    """The thresholds of the latest check, as the drift timeline reads them from a config."""
    last = log.sort_values("checked_at").iloc[-1]
    return SimpleNamespace(drift_threshold=last["threshold"], no_face_drift_threshold=last["no_face_threshold"])


def drawn_or_stored(uri: str, key: str, draw) -> bytes | None:
    """A monitoring chart drawn again from the log, so that charts an older version stored show
    today's conventions (the no-face change's sign, the titles); the stored copy when the log is too
    old to draw from (a column missing)."""
    try:
        return draw()
    except KeyError:
        return read_png(uri, key)


def page_monitoring(uri: str) -> None:
    st.header("Monitoring")
    log = monitor_log(uri)
    if log.empty or "js_distance" not in log:
        st.info("No drift checks logged yet: the pipeline's check_drift stage writes them.")
        return
    drifted = sorted({int(s) for s in log.loc[log["drift"].astype(bool), "shard"]})
    st.metric("shards that alerted", len(drifted), help=", ".join(map(str, drifted)) or "none")
    st.write("Alerted shards: " + (", ".join(map(str, drifted)) or "none"))
    timeline = drawn_or_stored(uri, catalog.DRIFT_TIMELINE, lambda: drift_timeline_chart(log, log_thresholds(log)))
    if timeline:
        st.image(timeline, caption="Drift timeline")
    chart = drift_lines(log)
    if chart is None:
        st.info("No shard judged yet: each side needs enough photos (the table's not_judged says why).")
    else:
        st.altair_chart(chart, width="stretch")
    columns = ["checked_at", "shard", "images", "labelled", "no_face_rate", "js_distance", "no_face_change",
               "drift", "not_judged"]
    st.dataframe(log[[c for c in columns if c in log]], hide_index=True)  # older logs lack not_judged
    st.subheader("Pie charts")
    latest = log.sort_values("checked_at").groupby("shard").tail(1).set_index("shard")
    for shard in (drifted or sorted(log["shard"].unique())[-3:]):
        row = latest.loc[shard].to_dict()
        chart = drawn_or_stored(uri, catalog.shard_chart(int(shard)), lambda: label_pie_chart(int(shard), row))
        if chart:
            st.image(chart, caption=f"shard {shard}")


def agreement(scores: dict) -> float | str:
    """A per-class recall, or "no data" when the class had no photos to agree on."""
    return round(scores["recall"], 3) if scores.get("support", 1) else NO_DATA


def page_model(uri: str) -> None:
    st.header("Model")
    found = shown_report(uri)
    if found is None:
        st.info("No trained model yet: the pipeline's train and evaluate stages write one.")
        return
    version, report, note = found
    metrics = report["metrics"]
    st.subheader(f"Model version {version} on the test split")
    st.caption(f"Version {version} is {note}")
    st.dataframe(pd.DataFrame({who: {"accuracy": m["accuracy"], "macro-F1": m["macro_f1"], "test rows": m["n"]}
                               for who, m in metrics.items()}).T)
    st.dataframe(pd.DataFrame(metrics["model"]["per_class"]).T)
    if report.get("gold"):
        gold_section(report["gold"])
    if report.get("captions"):
        caption_section(report["captions"])
    for name, caption in (("confusion_matrix", "Confusion matrix"),
                          ("shap_embedding_summary", "SHAP: embedding dimensions per emotion"),
                          ("shap_image_heatmaps", "SHAP: where the emotion comes from"),
                          ("tsne", "t-SNE of the vectors"),
                          ("gold_confusion_deepface", "Gold set: DeepFace vs people"),
                          ("gold_confusion_model", "Gold set: model vs people"),
                          ("caption_confusion_deepface", "Captions: DeepFace vs captions"),
                          ("caption_disagreements", "Where DeepFace and the captions disagree")):
        png = read_png(uri, catalog.report_figure(version, name))
        if png:
            st.image(png, caption=caption)
    st.subheader("Training runs (MLflow)")
    st.dataframe(mlflow_runs(uri), hide_index=True)


def gold_section(gold: dict) -> None:
    st.subheader("Gold check: machine labels against people")
    st.write(f"{gold['photos']} photos labelled by people; no face found in {gold['no_face_share']:.1%}.")
    st.dataframe(pd.DataFrame({who: {"accuracy": gold[who]["accuracy"], "macro-F1": gold[who]["macro_f1"],
                                     **{f"recall {c}": agreement(gold[who]["per_class"][c]) for c in CLASSES}}
                               for who in ("deepface", "model", "model_soft", "model_photo") if who in gold}).T)


def caption_section(check: dict) -> None:
    st.subheader("Caption check: labels against what people wrote")
    st.write(f"{check['covered']} of {check['photos']} captioned photos have a caption label (at least "
             f"{check['min_agree']} captions naming one emotion). Captions are weak labels: they name smiles "
             f"and tears far more than other emotions and almost never a neutral face. \"{NO_DATA}\": no "
             f"captioned photo of that class to agree on.")
    st.dataframe(pd.DataFrame({c: {"photos": check["per_class"][c]["covered"],
                                   "with a face": check["per_class"][c]["with_face"],
                                   "the label agrees": agreement(check["deepface"]["per_class"][c]),
                                   "no label": check["per_class"][c]["deepface_no_label"],
                                   "model agrees": agreement(check["model"]["per_class"][c])}
                               for c in CLASSES}).T)


def tracking_client(uri: str):
    """An MLflow client on the root's store, or None when the root has none yet (nothing is created)."""
    from emotion_pipeline.serve.predictor import read_only_client

    return read_only_client(uri)


@st.cache_data(ttl=60)
def champion_version(uri: str) -> str | None:
    """The version the champion alias points at; None without a store, a registered model or the alias."""
    from mlflow.exceptions import MlflowException

    from emotion_pipeline.modeling import tracking

    client = tracking_client(uri)
    if client is None:
        return None
    try:
        return str(client.get_model_version_by_alias(PipelineConfig(source=uri, root=uri).registered_model,
                                                     tracking.CHAMPION).version)
    except MlflowException:  # RESOURCE_DOES_NOT_EXIST: nothing registered, or no champion yet
        return None


@st.cache_data(ttl=60)
def mlflow_runs(uri: str) -> pd.DataFrame:
    from emotion_pipeline.modeling import tracking

    client = tracking_client(uri)
    experiment = client.get_experiment_by_name(tracking.EXPERIMENT) if client else None
    if experiment is None:
        return pd.DataFrame()
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.model_version != ''",
                              order_by=["attributes.start_time DESC"])
    return pd.DataFrame([{"run_id": r.info.run_id, "start_time": pd.Timestamp(r.info.start_time, unit="ms"),
                          "model_version": r.data.tags.get("model_version"),
                          "champion": r.data.tags.get("champion"),
                          "test macro-F1": r.data.metrics.get("test_macro_f1"),
                          "baseline test macro-F1": r.data.metrics.get("baseline.test_macro_f1"),
                          "rows": r.data.params.get("data.rows")} for r in runs])


@st.cache_resource
def predictor(uri: str):
    from emotion_pipeline.serve.predictor import Predictor, ServeSettings

    return Predictor(ServeSettings(root=uri))


def page_try_it(uri: str) -> None:
    st.header("Try it")
    version = champion_version(uri)
    if version is None:
        st.info(f"No champion model under {root_name(uri)} yet, so there is nothing to try. Run the pipeline "
                "until its train stage registers a model (`emotion-pipeline run --source PHOTOS --root ROOT`), "
                "then reload.")
        return
    upload = st.file_uploader("A photo with people", type=["jpg", "jpeg", "png", "webp"],
                              max_upload_size=max_upload_mb(),
                              help=f"JPEG, PNG or WebP, up to {max_upload_mb()} MB and 16 megapixels")
    if upload is None:
        st.caption(f"Upload a photo: every face gets the probabilities of the five emotions from the champion, "
                   f"model version {version}.")
        return
    from emotion_pipeline.labelling.images import ImageError

    try:
        image, result = analyse(predictor(uri), upload.getvalue())
    except ImageError as err:
        st.error(f"{err.status}: {err}")
        return
    st.image(image, caption=f"{len(result['faces'])} face(s), numbered as below; model version "
                            f"{result['model_version']}")
    for i, face in enumerate(result["faces"]):
        st.markdown(f"**Face {i + 1}: {face['emotion']}**")
        st.bar_chart(pd.Series(face["probabilities"]).reindex(CLASSES))


def analyse(model, data: bytes) -> tuple[Image.Image, dict]:
    """The photo with its faces boxed and numbered, and the prediction: decoded once, predicted on
    those pixels, the boxes drawn on them (ImageError for a photo the model refuses)."""
    photo = model.decode(data)
    result = model.predict(photo)
    return draw_boxes(photo, [tuple(face["box"][k] for k in ("x", "y", "w", "h")) for face in result["faces"]]), result


@st.cache_data(ttl=30)
def review_queue(uri: str) -> pd.DataFrame | None:
    return review_page.read_queue(storage(uri))


@st.cache_data(ttl=30)
def decided_keys(uri: str) -> set:
    """What people decided, read at most every 30 s: this session's own clicks are added at once
    (``review_state``), another reviewer's within 30 s."""
    return review_page.decided_keys(storage(uri))


def review_state() -> dict:
    return st.session_state.setdefault("review", {"decided": set(), "skipped": set(), "error": None})


def page_review(uri: str) -> None:
    st.header("Review")
    queue = review_queue(uri)
    if queue is None or queue.empty:
        st.info(f"The review queue of {root_name(uri)} is empty ({catalog.REVIEW_QUEUE}.parquet is not there or has "
                "no rows). The pipeline's review_queue stage writes it after train: `emotion-pipeline run ...`, or "
                "`emotion-pipeline stage review_queue --source SOURCE --root ROOT`.")
        return
    state = review_state()
    done = decided_keys(uri) | state["decided"]
    reviewed, queued = review_page.progress(queue, done)
    st.progress(reviewed / queued, text=f"{reviewed} reviewed of {queued} queued")
    reviewer = st.text_input("Your name (saved with each decision)", value=os.environ.get("USER", ""),
                             key="reviewer").strip()
    if state["error"]:
        st.error(state["error"])
        state["error"] = None
    item = review_page.next_item(queue, done, state["skipped"])
    if item is None:
        st.success(f"Nothing left to ask: {reviewed} of {queued} reviewed, {len(state['skipped'])} skipped "
                   "this session.")
        if state["skipped"]:
            st.button("Ask the skipped photos again", on_click=state["skipped"].clear)
        return
    show_review_item(uri, item)
    decision_buttons(uri, item, reviewer)


def show_review_item(uri: str, item: pd.Series) -> None:
    """The photo with the face boxed; the machine's label, DeepFace's seven scores, the captions."""
    root = storage(uri)
    row = review_page.dataset_row(dataset(uri), str(item["image_id"]))
    photo, box = review_page.review_photo(root, item, row)
    left, right = st.columns([3, 2])
    name = row["source_key"] if row is not None else item["image_id"]
    left.image(draw_boxes(photo, [box] if box else [], numbered=False),
               caption=f"{name}, face {review_page.face_of(item.get('face_index'))}")
    right.markdown(f"**Machine label:** {item.get('machine_label')}  \n**Suggested:** {item.get('suggested_label')}"
                   f"  \n**Doubt score:** {float(item.get('score', float('nan'))):.3f}")
    if item.get("reasons") is not None:
        right.caption(f"Why it is asked: {item['reasons']}")
    scores = review_page.face_scores(root, item, row)
    if scores is not None:
        right.markdown("**DeepFace's scores** (%): " + ", ".join(f"{k} {v:.1f}" for k, v in scores.items()))
        right.bar_chart(scores)
    captions = review_page.photo_captions(item, row)
    if captions:
        right.markdown("**Captions**\n" + "\n".join(f"- {c}" for c in captions))


def record_click(uri: str, item: pd.Series, label: str, reviewer: str) -> None:
    """A button's callback (before the rerun draws the next photo): skip, or record a decision."""
    state = review_state()
    key = review_page.item_key(item)
    if label == review_page.SKIP:
        state["skipped"].add(key)
        return
    try:
        record_decision(storage(uri), decide(*key, label, reviewer))
    except (StorageError, OSError) as err:  # the photo stays: nothing was recorded
        log.exception("could not record a decision on %s", uri)
        state["error"] = f"The decision could not be saved ({type(err).__name__}); try again."
        return
    state["decided"].add(key)


def decision_buttons(uri: str, item: pd.Series, reviewer: str) -> None:
    """One button per class, "no usable face" and "skip", and the keys that press them."""
    if not reviewer:
        st.warning("Type your name above: each decision records who made it.")
    # "no usable face" gets the room to show its whole name.
    columns = st.columns([1.6 if label == NO_FACE else 1 for label in review_page.SHORTCUTS.values()])
    for column, label in zip(columns, review_page.SHORTCUTS.values()):
        column.button(review_page.BUTTON_TEXT[label], key=f"review-{label}", on_click=record_click,
                      args=(uri, item, label, reviewer), disabled=not reviewer and label != review_page.SKIP,
                      width="stretch")
    st.caption("Keys: " + ", ".join(f"{key} {review_page.BUTTON_TEXT[label].rsplit(' (', 1)[0]}"
                                    for key, label in review_page.SHORTCUTS.items())
               + " (not while typing in the name box).")
    import streamlit.components.v1 as components

    components.html(review_page.shortcut_script(), height=0)


def main() -> None:
    st.set_page_config(page_title="Emotion pipeline", layout="wide")
    uri = root_uri()
    wanted = st.query_params.get("page", PAGES[0])
    page = st.sidebar.radio("Page", PAGES, index=PAGES.index(wanted) if wanted in PAGES else 0)
    st.sidebar.caption(f"root: {root_name(uri)}")
    try:
        {"Dataset": page_dataset, "Monitoring": page_monitoring, "Model": page_model, "Try it": page_try_it,
         "Review": page_review}[page](uri)
    except Exception as err:  # a message, not a traceback: the details go to the dashboard's log
        log.exception("the %s page failed on %s", page, uri)
        # The exception's text can hold server paths: it stays in the log.
        st.error(f"The {page} page could not be shown ({type(err).__name__}). Check that {root_name(uri)} is a "
                 "pipeline root whose last run finished (`emotion-pipeline run ...`); the terminal that runs "
                 "the dashboard has the details.")


if __name__ == "__main__":  # streamlit runs the script as __main__; tests import its helpers
    main()
