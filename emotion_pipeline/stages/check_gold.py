"""The gold check: machine labels against labels given by people.

A gold set is a folder ``<label>/<photo>`` (label one of the five classes) or a CSV with a ``label``
column and a ``path`` column (relative to the CSV) or an ``image_id`` column (a photo already in the
pipeline). Its photos go through the same detection and emotion model as every photo
(``gold_detector=skip`` for photos that are already face crops: detectors find nothing in 48 px), and,
once a model is trained, through the model. People's labels are compared with

* DeepFace: the label the pipeline would give the photo (``labels.label_of`` on the label face chosen
  by the same policy as annotate: confidence, size, ``label_face``, margin), where *no label* (fear,
  disgust, a near tie) is a column of its own and counts as a miss, and
* the trained model (in the evaluate stage),

over the gold photos where an eligible face was found; the share with no face is reported beside.
``gold_detector=skip`` (face crops) ignores ``min_face_size``: the crop is the face, whatever its size. Gold photos
never train the model: training excludes their image_ids (content hashes), wherever they appear.
"""
from __future__ import annotations

import hashlib
import io
import logging
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from emotion_pipeline.core import catalog
from emotion_pipeline.core.config import CLASSES, EMOTIONS, PipelineConfig
from emotion_pipeline.core.manifest import content_id, is_image_name, load_manifest
from emotion_pipeline.core.results import GoldResult
from emotion_pipeline.core.runner import StageRun
from emotion_pipeline.core.storage import Storage, open_storage
from emotion_pipeline.core.tables import write_table
from emotion_pipeline.labelling import teachers
from emotion_pipeline.labelling.faces import analyze_crops, build_models
from emotion_pipeline.labelling.images import read_photo
from emotion_pipeline.labelling.labels import label_of
from emotion_pipeline.labelling.photo_boundary import PASSED_THROUGH, PhotoBoundary
from emotion_pipeline.labelling.photo_faces import label_face, photo_faces
from emotion_pipeline.modeling.evaluation import deepface_agreement

log = logging.getLogger(__name__)

LABELLED_PATH_PARTS = 2  # <label>/<photo> in a gold folder


def list_gold(gold_uri: str, root: Storage) -> pd.DataFrame:
    """(key, label, image_id, data-source) of every gold photo, from a labelled folder or a CSV."""
    if gold_uri.lower().endswith(".csv"):
        parent, _, name = gold_uri.rstrip("/").rpartition("/")
        folder = open_storage(parent or ".")
        table = pd.read_csv(io.BytesIO(folder.read_bytes(name)))
        if "label" not in table or not ({"path", "image_id"} & set(table)):
            raise ValueError(f"{gold_uri}: a gold CSV needs a 'label' column and a 'path' or 'image_id' column")
        rows = []
        manifest = load_manifest(root) if catalog.table_exists(root, catalog.MANIFEST) else None
        for record in table.to_dict("records"):
            if isinstance(record.get("path"), str) and record["path"]:
                rows.append({"storage": folder, "key": record["path"], "label": record["label"]})
            else:
                match = manifest[manifest["image_id"] == record["image_id"]] if manifest is not None else None
                if match is None or len(match) == 0:
                    raise ValueError(f"{gold_uri}: image_id {record['image_id']} is not in the pipeline's manifest")
                source_uri = match.iloc[0]["source_uri"]
                parent, _, key = source_uri.rpartition("/")
                rows.append({"storage": open_storage(parent), "key": key, "label": record["label"]})
    else:
        folder = open_storage(gold_uri)
        rows = [{"storage": folder, "key": o.key, "label": PurePosixPath(o.key).parts[0]}
                for o in folder.list()
                if is_image_name(o.key) and len(PurePosixPath(o.key).parts) == LABELLED_PATH_PARTS]
    gold = pd.DataFrame(rows, columns=["storage", "key", "label"])
    unknown = sorted(set(gold["label"]) - set(CLASSES))
    if unknown:
        raise ValueError(f"gold labels {unknown} are not among the five classes {CLASSES}")
    if gold.empty:
        raise ValueError(f"no gold photos found in {gold_uri}")
    return gold


def gold_files(run: StageRun) -> str:
    """What the gold check reads besides its settings: every file of the gold folder (or of the CSV's
    folder, where the photos it names live) by name, size and version, the CSV itself, and the second
    teacher's file (``teachers.identity``: the gold faces get its scores too)."""
    gold = run.config.gold
    if not gold:
        return ""
    is_csv = gold.lower().endswith(".csv")
    folder = open_storage((gold.rstrip("/").rpartition("/")[0] or ".") if is_csv else gold)
    digest = hashlib.sha256(repr(sorted((o.key, o.size, o.version) for o in folder.list())).encode())
    if is_csv:
        digest.update(folder.read_bytes(gold.rstrip("/").rpartition("/")[2]))
    return f"{digest.hexdigest()}-{teachers.identity()}"


def check_gold(run: StageRun) -> GoldResult:
    """The stage function: the gold photos through DeepFace, one row each in the gold table.

    Args:
        run: the config (``gold``, ``gold_detector``, ...) and the root (``runner.StageRun``).

    Returns:
        DeepFace's figures against people's labels; ``checked`` is False when no gold set is configured.

    Raises:
        ValueError: the gold set is malformed (unknown labels, a CSV without the columns, empty).
        faces.MissingWeightsError: DeepFace's emotion weights are missing.
    """
    config, root = run.config, run.root
    if not config.gold:
        return GoldResult(checked=False)
    gold = list_gold(config.gold, root)
    detector = config.gold_detector or config.detector
    models = build_models(("emotion",))
    detection = PhotoBoundary("gold (detection)")
    records: list[dict[str, Any]] = []
    crops: list[np.ndarray] = []
    for row in gold.itertuples(index=False):
        record = {"key": row.key, "uri": row.storage.uri_for(row.key), "label": row.label, "status": "ok",
                  "error": None, "face_index": None}
        record = detection.run(record, lambda: _gold_face(config, detector, row, record))
        if record.get("crop") is not None:
            record["face_index"] = len(crops)
            crops.append(record.pop("crop"))
        records.append(record)
    detection.check()
    scores = _gold_scores(records, crops, models)
    table = pd.DataFrame(records)
    position = table["face_index"]
    # DeepFace's seven scores of the label face (the label-policy curves re-apply the rule to them)...
    for k, name in enumerate(EMOTIONS):
        table[f"deepface_{name}"] = [float(scores[int(i), k]) if pd.notna(i) else None for i in position]
    # ...and the label the pipeline gives it: None is "no label" (fear, disgust, a near tie) or no face.
    table["deepface_label"] = [label_of(scores[int(i)], min_margin=config.min_emotion_margin) if pd.notna(i)
                               else None for i in position]
    # The second teacher's seven scores of the same crops (NaN without its file, teacher=deepface only).
    xception = _xception_scores(crops, teachers.models(config.teacher).get(teachers.MODEL_KEY))
    for k, column in enumerate(teachers.XCEPTION_COLUMNS):
        table[column] = [float(xception[int(i), k]) if pd.notna(i) else None for i in position]
    table = table.drop(columns=["face_index"])
    write_table(root, catalog.GOLD_ANNOTATIONS, table)
    agreement = deepface_agreement(table)
    log.info("gold: %d photos, DeepFace accuracy %.3f, macro-F1 %.3f, no face %.1f%%", len(table),
             agreement["deepface"]["accuracy"], agreement["deepface"]["macro_f1"], 100 * agreement["no_face_share"])
    return GoldResult(checked=True, photos=len(table), detector=detector, **agreement)


def _xception_scores(crops: list, model) -> np.ndarray:
    """The mini-Xception's scores of every crop, as one batch; when the batch raises, crop by crop, and
    a crop it cannot take (one pixel wide, which DeepFace's scoring already failed) gets NaN scores."""
    try:
        return teachers.score_crops(crops, model)
    except PASSED_THROUGH:
        raise
    except Exception:  # noqa: BLE001 (which crop is at fault is found below, one by one)
        pass
    scores = np.full((len(crops), len(EMOTIONS)), np.nan)
    for i, crop in enumerate(crops):
        try:
            scores[i] = teachers.score_crops([crop], model)[0]
        except PASSED_THROUGH:
            raise
        except Exception as err:  # noqa: BLE001 (one crop's failure costs that crop's scores only)
            log.warning("gold: the mini-Xception cannot score crop %d (%s): no scores for it", i, type(err).__name__)
    return scores


def _gold_face(config: PipelineConfig, detector: str, row, record: dict) -> dict:
    """One gold photo's record with its label face (box, confidence and ``crop``), or ``no_face``: the
    face annotate would label the photo with (``photo_faces``)."""
    data = read_photo(row.storage, row.key)
    record["image_id"] = content_id(data, row.key)
    min_size = 0 if detector == "skip" else config.min_face_size  # a face crop is the face, whatever its size
    chosen = label_face(photo_faces(data, config, detector, min_size), config.label_face)
    if chosen is None:
        return {**record, "status": "no_face"}
    return {**record, "face_x": chosen.x, "face_y": chosen.y, "face_w": chosen.w, "face_h": chosen.h,
            "face_confidence": chosen.confidence, "crop": chosen.crop}


def _gold_scores(records: list[dict], crops: list, models: dict) -> np.ndarray:
    """The emotion scores of every crop, as one batch; when the batch raises, crop by crop, so a crop
    the model cannot take (one pixel wide) fails its photo alone: ``failed``, no face, no scores."""
    try:
        return analyze_crops(crops, models).get("emotion", np.zeros((0, len(EMOTIONS))))
    except PASSED_THROUGH:
        raise
    except Exception:  # noqa: BLE001 (which photo is at fault is found below, one by one)
        pass
    scoring, scores = PhotoBoundary("gold (emotion model)"), np.full((len(crops), len(EMOTIONS)), np.nan)
    for record in [r for r in records if r["face_index"] is not None]:
        i = record["face_index"]
        outcome = scoring.run(record, lambda: analyze_crops([crops[i]], models)["emotion"][0])
        if isinstance(outcome, dict):
            record.update(outcome, face_index=None, **{f"face_{k}": None for k in ("x", "y", "w", "h", "confidence")})
        else:
            scores[i] = outcome
    scoring.check()
    return scores
