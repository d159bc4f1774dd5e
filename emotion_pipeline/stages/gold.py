"""The gold check: machine labels against labels given by people.

A gold set is a folder ``<label>/<photo>`` (label one of the five classes) or a CSV with a ``label``
column and a ``path`` column (relative to the CSV) or an ``image_id`` column (a photo already in the
pipeline). Its photos go through the same detection and emotion model as every photo
(``gold_detector=skip`` for photos that are already face crops: detectors find nothing in 48 px), and,
once a model is trained, through the model. People's labels are compared with

* DeepFace: its dominant emotion among the five classes (fear and disgust scores left aside), and
* the trained model (in the evaluate stage),

over the gold photos where a face was found; the share with no face is reported beside. Gold photos
never train the model: training excludes their image_ids (content hashes), wherever they appear.
"""
from __future__ import annotations

import hashlib
import io
import logging
from pathlib import PurePosixPath

import numpy as np
import pandas as pd

from .. import catalog
from ..config import CLASSES, EMOTIONS, PipelineConfig
from ..faces import analyze_crops, build_models, detect_faces
from ..images import ImageError, load_rgb_array, read_photo
from ..manifest import content_id, is_image_name, load_manifest
from ..modeling.evaluation import deepface_agreement
from ..results import GoldResult
from ..runner import StageRun, run_stage
from ..storage import Storage, open_storage
from ..tables import write_table

log = logging.getLogger(__name__)

FIVE = [EMOTIONS.index(c) for c in CLASSES]  # columns of the five classes in DeepFace's 7 scores


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
                match = manifest[manifest["image_id"] == record["image_id"]] if manifest is not None else []
                if len(match) == 0:
                    raise ValueError(f"{gold_uri}: image_id {record['image_id']} is not in the pipeline's manifest")
                source_uri = match.iloc[0]["source_uri"]
                parent, _, key = source_uri.rpartition("/")
                rows.append({"storage": open_storage(parent), "key": key, "label": record["label"]})
    else:
        folder = open_storage(gold_uri)
        rows = [{"storage": folder, "key": o.key, "label": PurePosixPath(o.key).parts[0]}
                for o in folder.list() if is_image_name(o.key) and len(PurePosixPath(o.key).parts) == 2]
    gold = pd.DataFrame(rows, columns=["storage", "key", "label"])
    unknown = sorted(set(gold["label"]) - set(CLASSES))
    if unknown:
        raise ValueError(f"gold labels {unknown} are not among the five classes {CLASSES}")
    if gold.empty:
        raise ValueError(f"no gold photos found in {gold_uri}")
    return gold


def annotate_gold(config: PipelineConfig, *, root: Storage | None = None) -> GoldResult:
    """``run_stage("check_gold", config)``: DeepFace on every gold photo unless done with the same set."""
    return run_stage("check_gold", config, root=root)


def gold_files(run: StageRun) -> str:
    """What the gold check reads besides its settings: every file of the gold folder (or of the CSV's
    folder, where the photos it names live) by name, size and version, and the CSV itself."""
    gold = run.config.gold
    if not gold:
        return ""
    is_csv = gold.lower().endswith(".csv")
    folder = open_storage((gold.rstrip("/").rpartition("/")[0] or ".") if is_csv else gold)
    digest = hashlib.sha256(repr(sorted((o.key, o.size, o.version) for o in folder.list())).encode())
    if is_csv:
        digest.update(folder.read_bytes(gold.rstrip("/").rpartition("/")[2]))
    return digest.hexdigest()


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
    records, crops = [], []
    for row in gold.itertuples(index=False):
        record = {"key": row.key, "uri": row.storage.uri_for(row.key), "label": row.label, "status": "ok",
                  "error": None, "face_index": None}
        try:
            data = read_photo(row.storage, row.key)
            record["image_id"] = content_id(data, row.key)
            rgb, scale = load_rgb_array(data, config.max_image_pixels, config.detect_max_side)
            faces = [f for f in detect_faces(rgb, detector) if f.confidence >= config.min_face_confidence]
            if faces:
                largest = max(faces, key=lambda f: f.w * f.h)
                record["face_index"] = len(crops)
                record.update({f"face_{k}": round(getattr(largest, k) / scale) for k in ("x", "y", "w", "h")})
                crops.append(largest.crop)
            else:
                record["status"] = "no_face"
        except ImageError as err:
            record.update(status=err.status, error=str(err))
        records.append(record)

    scores = analyze_crops(crops, models).get("emotion", np.zeros((0, 7)))
    table = pd.DataFrame(records)
    five = scores[:, FIVE] if len(scores) else np.zeros((0, 5))
    position = table["face_index"]
    table["deepface_label"] = [CLASSES[int(five[int(i)].argmax())] if pd.notna(i) else None for i in position]
    for k, name in enumerate(CLASSES):
        table[f"deepface_{name}"] = [float(five[int(i), k] / five[int(i)].sum()) if pd.notna(i) else None
                                     for i in position]
    table = table.drop(columns=["face_index"])
    write_table(root, catalog.GOLD_ANNOTATIONS, table)
    result = GoldResult(checked=True, photos=len(table), detector=detector, **deepface_agreement(table))
    log.info("gold: %d photos, DeepFace accuracy %.3f, macro-F1 %.3f, no face %.1f%%", len(table),
             result.deepface["accuracy"], result.deepface["macro_f1"], 100 * result.no_face_share)
    return result


def gold_ids(root: Storage) -> set[str]:
    """Content ids of the gold photos (excluded from training), empty when there is no gold set."""
    table = catalog.read_gold_annotations(root)
    return set() if table is None else set(table["image_id"].dropna())
