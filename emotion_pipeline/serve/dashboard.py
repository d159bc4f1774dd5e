"""The Streamlit dashboard: ``emotion-pipeline dashboard --root DIR_OR_GS``.

Pages (sidebar, or ``?page=`` in the URL): Dataset, Monitoring, Model, Try it. Everything is read
from what the pipeline wrote under the root; "Try it" runs the registered champion in-process.
"""
from __future__ import annotations

import io
import json
import os
import sys

import pandas as pd
import streamlit as st
from PIL import Image, ImageDraw

from emotion_pipeline import catalog
from emotion_pipeline.config import CLASSES, PipelineConfig
from emotion_pipeline.storage import open_storage
from emotion_pipeline.images import letterbox_box

PAGES = ("Dataset", "Monitoring", "Model", "Try it")


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


def latest_report(uri: str) -> tuple[str, dict] | None:
    """The newest model version's evaluation (an untrainable later run leaves it in place)."""
    root = storage(uri)
    versions = catalog.report_versions(root)
    if not versions:
        return None
    return versions[-1], json.loads(root.read_bytes(catalog.report_file(versions[-1], catalog.REPORT_METRICS)))


def boxed_thumbnail(uri: str, row: pd.Series) -> Image.Image:
    """The letterboxed copy with the label face's box mapped onto it."""
    image = Image.open(io.BytesIO(storage(uri).read_bytes(catalog.processed_photo(row["image_id"])))).convert("RGB")
    # Face boxes are in the upright frame (EXIF orientation applied), like the processed copy.
    width, height = (float(row.get(f"upright_{k}", row[f"orig_{k}"])) for k in ("width", "height"))
    box = tuple(float(row[f"face_{k}"]) for k in ("x", "y", "w", "h"))
    ImageDraw.Draw(image).rectangle(letterbox_box(box, width, height, image.width),  # square copies
                                    outline=(255, 40, 40), width=2)
    return image


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


def page_monitoring(uri: str) -> None:
    st.header("Monitoring")
    log = monitor_log(uri)
    if log.empty or "js_distance" not in log:
        st.info("No drift checks logged yet.")
        return
    drifted = sorted({int(s) for s in log.loc[log["drift"].astype(bool), "shard"]})
    st.metric("shards that alerted", len(drifted), help=", ".join(map(str, drifted)) or "none")
    st.write("Alerted shards: " + (", ".join(map(str, drifted)) or "none"))
    timeline = read_png(uri, catalog.DRIFT_TIMELINE)
    if timeline:
        st.image(timeline, caption="Drift timeline")
    st.line_chart(log.set_index("shard")[["js_distance", "no_face_change"]])
    st.dataframe(log[["checked_at", "shard", "images", "labelled", "no_face_rate", "js_distance",
                      "no_face_change", "drift"]], hide_index=True)
    st.subheader("Pie charts")
    for shard in (drifted or sorted(log["shard"].unique())[-3:]):
        chart = read_png(uri, catalog.shard_chart(int(shard)))
        if chart:
            st.image(chart, caption=f"shard {shard}")


def page_model(uri: str) -> None:
    st.header("Model")
    found = latest_report(uri)
    if found is None:
        st.info("No trained model yet.")
        return
    version, report = found
    metrics = report["metrics"]
    st.subheader(f"Model version {version} on the test split")
    st.dataframe(pd.DataFrame({who: {"accuracy": m["accuracy"], "macro-F1": m["macro_f1"], "test rows": m["n"]}
                               for who, m in metrics.items()}).T)
    st.dataframe(pd.DataFrame(metrics["model"]["per_class"]).T)
    if report.get("gold"):
        gold = report["gold"]
        st.subheader("Gold check: machine labels against people")
        st.write(f"{gold['photos']} photos labelled by people; no face found in {gold['no_face_share']:.1%}.")
        st.dataframe(pd.DataFrame({who: {"accuracy": gold[who]["accuracy"], "macro-F1": gold[who]["macro_f1"],
                                         **{f"recall {c}": gold[who]["per_class"][c]["recall"] for c in CLASSES}}
                                   for who in ("deepface", "model", "model_soft", "model_photo") if who in gold}).T)
    if report.get("captions"):
        check = report["captions"]
        st.subheader("Caption check: labels against what people wrote")
        st.write(f"{check['covered']} of {check['photos']} captioned photos have a caption label (at least "
                 f"{check['min_agree']} captions naming one emotion). Captions are weak labels: they name smiles "
                 f"and tears far more than other emotions and almost never a neutral face.")
        st.dataframe(pd.DataFrame({c: {"photos": check["per_class"][c]["covered"],
                                       "with a face": check["per_class"][c]["with_face"],
                                       "DeepFace agrees": check["deepface"]["per_class"][c]["recall"],
                                       "DeepFace: no label": check["per_class"][c]["deepface_no_label"],
                                       "model agrees": check["model"]["per_class"][c]["recall"]}
                                   for c in CLASSES}).T)
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


@st.cache_data(ttl=60)
def mlflow_runs(uri: str) -> pd.DataFrame:
    from emotion_pipeline.modeling import tracking

    mlflow = tracking.use_experiment(PipelineConfig(source=uri, root=uri))
    runs = mlflow.search_runs(experiment_names=[tracking.EXPERIMENT],
                              filter_string="tags.model_version != ''", order_by=["start_time DESC"])
    keep = [c for c in ("run_id", "start_time", "tags.model_version", "tags.champion", "metrics.test_macro_f1",
                        "metrics.baseline.test_macro_f1", "params.data.rows") if c in runs]
    return runs[keep]


@st.cache_resource
def predictor(uri: str):
    from emotion_pipeline.serve.predictor import Predictor, ServeSettings

    return Predictor(ServeSettings(root=uri))


def page_try_it(uri: str) -> None:
    st.header("Try it")
    upload = st.file_uploader("A photo with people", type=["jpg", "jpeg", "png", "webp"])
    if upload is None:
        st.caption("Upload a photo: every face gets the probabilities of the five emotions.")
        return
    from emotion_pipeline.images import ImageError, decode_rgb, open_checked

    data = upload.getvalue()
    try:
        result = predictor(uri).predict(data)
    except ImageError as err:
        st.error(f"{err.status}: {err}")
        return
    image = decode_rgb(open_checked(data, predictor(uri).info["max_image_pixels"])[0])
    draw = ImageDraw.Draw(image)
    for face in result["faces"]:
        b = face["box"]
        draw.rectangle([b["x"], b["y"], b["x"] + b["w"], b["y"] + b["h"]], outline=(255, 40, 40), width=3)
    st.image(image, caption=f"{len(result['faces'])} face(s), model version {result['model_version']}")
    for i, face in enumerate(result["faces"]):
        st.markdown(f"**Face {i + 1}: {face['emotion']}**")
        st.bar_chart(pd.Series(face["probabilities"]).reindex(CLASSES))


def main() -> None:
    st.set_page_config(page_title="Emotion pipeline", layout="wide")
    uri = root_uri()
    wanted = st.query_params.get("page", PAGES[0])
    page = st.sidebar.radio("Page", PAGES, index=PAGES.index(wanted) if wanted in PAGES else 0)
    st.sidebar.caption(f"root: {uri}")
    {"Dataset": page_dataset, "Monitoring": page_monitoring, "Model": page_model, "Try it": page_try_it}[page](uri)


main()
