"""Stage 3: DeepFace on every photo of a shard: faces, emotion scores, label, optional age/gender/race.

Two tables per shard under ``annotations/shard=<k>/``:

* ``faces``: one row per detected face: box (in original-photo pixels), detector confidence, the 7
  emotion scores, the dominant emotion, age/gender/race when those actions are on, and the face's own
  ``label`` (the same rule, for eligible faces: what ``label_unit=face`` trains on);
* ``annotations``: one row per photo: status, the number of faces, and the attributes of the
  *label face*: among the *eligible* faces (at or above ``min_face_confidence`` and ``min_face_size``
  pixels tall), the largest or the most confident (``label_face``). ``label`` is
  ``labels.label_of`` of its seven scores: the dominant emotion when it is one of the five project
  classes and leads the runner-up by ``min_emotion_margin``; fear, disgust or a near tie keep their
  scores but get no label. A photo with no eligible face has status ``no_face`` and never a label.

Annotation reads the original photo, not the 224 px copy: faces in Flickr30k are small.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from emotion_pipeline.core import catalog
from emotion_pipeline.core.config import EMOTIONS, PipelineConfig
from emotion_pipeline.core.progress import Progress, in_order_ahead
from emotion_pipeline.core.results import AnnotateResult
from emotion_pipeline.core.runner import StageRun
from emotion_pipeline.core.storage import Storage
from emotion_pipeline.core.tables import write_table
from emotion_pipeline.labelling import teachers
from emotion_pipeline.labelling.faces import (
    RACES,
    analyze_crops,
    build_models,
    detector_is_thread_safe,
    face_detector,
    face_record,
    model_input,
)
from emotion_pipeline.labelling.images import read_photo
from emotion_pipeline.labelling.labels import face_labels, label_of
from emotion_pipeline.labelling.photo_boundary import PASSED_THROUGH, PhotoBoundary
from emotion_pipeline.labelling.photo_faces import PhotoFace, label_face, photo_faces

log = logging.getLogger(__name__)

FACE_COLUMNS = ["image_id", "source_key", "face_index", "x", "y", "w", "h", "confidence", "confident", "eligible"]
PHOTO_COLUMNS = [
    "image_id", "source_key", "shard", "status", "error", "detector", "n_faces", "n_confident_faces",
    "label", "label_face_index", "face_x", "face_y", "face_w", "face_h", "face_confidence",
]


def attribute_columns(actions: tuple[str, ...]) -> list[str]:
    """The per-face attribute columns the enabled actions produce (a fixed schema per config)."""
    columns = []
    if "emotion" in actions:
        columns += [f"emotion_{e}" for e in EMOTIONS] + ["dominant_emotion", *teachers.XCEPTION_COLUMNS]
    if "age" in actions:
        columns += ["age"]
    if "gender" in actions:
        columns += ["gender_woman", "gender_man", "dominant_gender"]
    if "race" in actions:
        columns += [f"race_{r.replace(' ', '_')}" for r in RACES] + ["dominant_race"]
    return columns


def annotate(run: StageRun) -> AnnotateResult:
    """The stage function: faces and their scores for every resized photo of the shard.

    Args:
        run: the config, both storages and the shard's manifest rows (``runner.StageRun``).

    Returns:
        Counts per status and label, and the number of faces found.

    Raises:
        MissingUpstream: the shard is not resized yet.
        faces.MissingWeightsError: a DeepFace weight file is missing (names the file and the folder).
    """
    config, source, root, shard = run.config, run.source, run.root, run.shard_number
    metadata = run.table("resize")

    models = {**build_models(config.actions), **teachers.models(config.teacher)}
    photos, faces = _detect_and_analyze(config, source, metadata, models)
    attributes = attribute_columns(config.actions)
    faces_table = pd.DataFrame(faces, columns=FACE_COLUMNS + attributes)
    faces_table["label"] = face_labels(faces_table, min_margin=config.min_emotion_margin)  # label_unit=face
    annotations = pd.DataFrame([_photo_row(p, config) for p in photos], columns=PHOTO_COLUMNS + attributes)
    # Each teacher's label (and the mean's) beside DeepFace's `label`: merge picks the `teacher` knob's.
    faces_table = faces_table.join(teachers.label_columns(
        faces_table, min_margin=config.min_emotion_margin, usable=faces_table["eligible"]))
    annotations = annotations.join(teachers.label_columns(
        annotations, min_margin=config.min_emotion_margin, usable=annotations["status"] == "ok"))

    write_table(root, catalog.faces(shard), faces_table)
    write_table(root, catalog.annotations(shard), annotations)
    result = AnnotateResult(
        shard=shard, images=len(annotations),
        annotated=int(annotations["status"].isin(["ok", "no_face"]).sum()), faces=len(faces_table),
        statuses=annotations["status"].value_counts().to_dict(), labels=annotations["label"].value_counts().to_dict(),
    )
    log.info("annotate shard %d: %s, labels %s", shard, result.statuses, result.labels)
    return result


@dataclass
class AnnotatedPhoto:
    """One photo of the shard on its way through annotate: its resize row's facts, then its faces."""
    image_id: str
    source_key: str
    shard: int
    status: str
    error: str | None = None
    faces: list[PhotoFace] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """What the per-photo boundary reports a failure of this photo with (``photo_boundary``)."""
        return {"image_id": self.image_id, "source_key": self.source_key, "status": self.status, "error": self.error}

    def fail(self, outcome: dict[str, Any]) -> None:
        """The status and error the boundary gave it (``outcome``); a failed photo has no face rows."""
        self.status, self.error, self.faces = outcome["status"], outcome["error"], []


def _detect_and_analyze(
    config: PipelineConfig, source: Storage, metadata: pd.DataFrame, models: dict[str, Any]
) -> tuple[list[AnnotatedPhoto], list[dict[str, Any]]]:
    """Detect faces in worker threads, photo by photo; run the attribute models on batches of crops
    across photos in this thread. Rows keep the shard's order whatever order the threads finish in.
    Whatever one photo makes detection or the models raise is that photo's status and error."""
    photos: list[AnnotatedPhoto] = []
    detection, scoring = PhotoBoundary("annotate (detection)"), PhotoBoundary("annotate (emotion model)")
    pending: list[AnnotatedPhoto] = []  # photos whose crops wait for the models

    def detect(row) -> AnnotatedPhoto:
        photo = AnnotatedPhoto(row.image_id, row.source_key, row.shard, row.status, row.error)
        if row.status != "ok":
            return photo
        found = detection.run(photo.record(), lambda: photo_faces(
            read_photo(source, row.source_key), config, config.detector, config.min_face_size))
        if isinstance(found, dict):  # the boundary's status and error
            photo.fail(found)
        else:
            photo.faces = found
        return photo

    if config.detector != "skip":
        face_detector(config.detector)  # built once, before the threads share it
    workers = max(1, config.threads) if detector_is_thread_safe(config.detector) else 1
    progress = Progress(f"annotate shard {int(metadata['shard'].iloc[0])}", len(metadata))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for photo in in_order_ahead(pool, detect, metadata.itertuples(index=False), ahead=2 * workers):
            photos.append(photo)
            if photo.faces:
                pending.append(photo)
            if sum(len(p.faces) for p in pending) >= config.emotion_batch_size:
                _score(pending, models, scoring)
                pending.clear()
            progress.step()
    _score(pending, models, scoring)
    detection.check()
    scoring.check()
    faces = [{"image_id": p.image_id, "source_key": p.source_key, **face.box(), **face.scores}
             for p in photos for face in p.faces]
    return photos, faces


def _score(photos: list[AnnotatedPhoto], models: dict[str, Any], boundary: PhotoBoundary) -> None:
    """The attribute scores of every face of ``photos``, as one batch; when the batch raises, photo by
    photo, so the one photo whose crop breaks a model fails alone (status ``failed``, no face rows)."""
    try:
        _score_faces([face for photo in photos for face in photo.faces], models)
        boundary.count_passed(len(photos))
        return
    except PASSED_THROUGH:
        raise
    except Exception:  # noqa: BLE001 (which photo is at fault is found below, one by one)
        pass
    for photo in photos:
        outcome = boundary.run(photo.record(), lambda: _score_faces(photo.faces, models))
        if outcome is not None:  # marked failed: its faces have no scores, so no face rows
            photo.fail(outcome)


def _score_faces(faces: list[PhotoFace], models: dict[str, Any]) -> None:
    crops = [face.crop_to_score() for face in faces]
    batch = model_input(crops) if crops else None  # DeepFace's input, made once for both teachers
    deepface = {action: model for action, model in models.items() if action != teachers.MODEL_KEY}
    scores = analyze_crops(crops, deepface, batch)
    records = [face_record(scores, i) for i in range(len(faces))]
    xception = teachers.score_crops(crops, models.get(teachers.MODEL_KEY), batch)  # NaN without the second teacher
    records = [{**record, **teachers.scores_record(xception, i)} for i, record in enumerate(records)]
    for face, record in zip(faces, records):
        face.scores = record
        face.crop = None  # crops are only needed until their batch runs


def _photo_row(photo: AnnotatedPhoto, config: PipelineConfig) -> dict[str, Any]:
    """The photo's row of the annotations table: its label face's box, scores and label."""
    row = {
        "image_id": photo.image_id, "source_key": photo.source_key, "shard": photo.shard,
        "status": photo.status, "error": photo.error, "detector": config.detector,
        "n_faces": len(photo.faces), "n_confident_faces": len([f for f in photo.faces if f.confident]),
        "label": None,
    }
    if photo.status != "ok":
        return row
    chosen = label_face(photo.faces, config.label_face)
    if chosen is None:
        return {**row, "status": "no_face", "error": None}
    row.update(face_x=chosen.x, face_y=chosen.y, face_w=chosen.w, face_h=chosen.h, face_confidence=chosen.confidence,
               label_face_index=chosen.index)
    row.update({k: chosen.scores.get(k) for k in attribute_columns(config.actions)})  # xception_*: may be absent
    row["label"] = label_of({e: chosen.scores[f"emotion_{e}"] for e in EMOTIONS}, min_margin=config.min_emotion_margin)
    return row


def annotate_again(root: Storage, shards: list[int]) -> list[str]:
    """A drift decision's "re-annotate": remove the shards' annotate done markers, so that the next
    run's discovery finds them pending and annotates them again (with that run's detector and label
    settings); until then the current annotations stay in the dataset.

    Returns:
        The markers removed (URIs).
    """
    removed = []
    for shard in shards:
        marker = catalog.done_marker(catalog.ANNOTATE_FOLDER, int(shard))
        if root.exists(marker):
            root.delete(marker)
            removed.append(root.uri_for(marker))
    log.info("annotate: shard(s) %s will be annotated again on the next run", ", ".join(map(str, shards)))
    return removed
