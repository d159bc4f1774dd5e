"""The Streamlit dashboard: ``emotion-pipeline dashboard --root DIR_OR_GS``.

Pages (sidebar, or ``?page=`` in the URL): Dataset, Monitoring, Model, Try it. Everything is read
from what the pipeline wrote under the root; "Try it" runs the registered champion in-process. The
dashboard only reads: without a model it says so and creates no MLflow store.
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
from emotion_pipeline.core.config import CLASSES, PipelineConfig
from emotion_pipeline.core.storage import open_storage
from emotion_pipeline.labelling.images import letterbox_box
from emotion_pipeline.reporting.charts import drift_timeline_chart, label_pie_chart

PAGES = ("Dataset", "Monitoring", "Model", "Try it")
BOX_COLOR = (255, 40, 40)
NO_DATA = "no data"  # an agreement over zero photos is unknown, not 0

log = logging.getLogger(__name__)


def root_uri() -> str:
    args = sys.argv[1:]
    if "--root" in args:
        return args[args.index("--root") + 1]
    return os.environ.get("EMOTION_PIPELINE_ROOT", "out")


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
    box = tuple(float(row[f"face_{k}"]) for k in ("x", "y", "w", "h"))
    left, top, right, bottom = letterbox_box(box, width, height, image.width)  # square copies
    return draw_boxes(image, [(left, top, right - left, bottom - top)], numbered=False)


def page_dataset(uri: str) -> None:
    st.header("Dataset")
    data = dataset(uri)
    if data is None:
        st.info(f"No dataset under {uri} yet: run the pipeline first (`make run SOURCE=...`).")
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
                                   "DeepFace agrees": agreement(check["deepface"]["per_class"][c]),
                                   "DeepFace: no label": check["per_class"][c]["deepface_no_label"],
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
        st.info(f"No champion model under {uri} yet, so there is nothing to try. Run the pipeline until its "
                "train stage registers a model (`emotion-pipeline run --source PHOTOS --root ROOT`), then reload.")
        return
    upload = st.file_uploader("A photo with people", type=["jpg", "jpeg", "png", "webp"])
    if upload is None:
        st.caption(f"Upload a photo: every face gets the probabilities of the five emotions from the champion, "
                   f"model version {version}.")
        return
    from emotion_pipeline.labelling.images import ImageError, decode_rgb, open_checked

    data = upload.getvalue()
    try:
        result = predictor(uri).predict(data)
    except ImageError as err:
        st.error(f"{err.status}: {err}")
        return
    image = decode_rgb(open_checked(data, predictor(uri).info["max_image_pixels"])[0])
    draw_boxes(image, [tuple(face["box"][k] for k in ("x", "y", "w", "h")) for face in result["faces"]])
    st.image(image, caption=f"{len(result['faces'])} face(s), numbered as below; model version "
                            f"{result['model_version']}")
    for i, face in enumerate(result["faces"]):
        st.markdown(f"**Face {i + 1}: {face['emotion']}**")
        st.bar_chart(pd.Series(face["probabilities"]).reindex(CLASSES))


def main() -> None:
    st.set_page_config(page_title="Emotion pipeline", layout="wide")
    uri = root_uri()
    wanted = st.query_params.get("page", PAGES[0])
    page = st.sidebar.radio("Page", PAGES, index=PAGES.index(wanted) if wanted in PAGES else 0)
    st.sidebar.caption(f"root: {uri}")
    try:
        {"Dataset": page_dataset, "Monitoring": page_monitoring, "Model": page_model, "Try it": page_try_it}[page](uri)
    except Exception as err:  # a message, not a traceback: the details go to the dashboard's log
        log.exception("the %s page failed on %s", page, uri)
        st.error(f"The {page} page could not be shown: {type(err).__name__}: {err}. Check that {uri} is a "
                 "pipeline root whose last run finished (`emotion-pipeline run ...`); the terminal that runs "
                 "the dashboard has the details.")


if __name__ == "__main__":  # streamlit runs the script as __main__; tests import its helpers
    main()
