"""The review queue in Label Studio, and Label Studio's answers back as people's decisions.

``export_tasks`` turns each queued face into one task of Label Studio's import JSON (the "Basic Label
Studio JSON format" with ``predictions``, its documented pre-annotation format): the photo's URL and
our ids under ``data``, and one prediction with the face's box (``rectanglelabels``, in percent of the
upright photo, as Label Studio stores regions) and the machine's label (``choices``). ``LABEL_CONFIG``
is the labelling interface those tasks need. ``import_export`` reads Label Studio's JSON export (tasks
with ``annotations[].result[]``) and records each task's latest non-cancelled ``emotion`` choice as a
decision (``labelling/reviews.py``), the same file the dashboard's Review page writes: merge applies
it, the latest decision wins, ``no_face`` keeps the photo out of training. What cannot become a
decision (cancelled or missing annotations, unknown labels, tasks that are not ours) is counted and
said, and an answer already recorded is not recorded again.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import pandas as pd

from emotion_pipeline.core import catalog
from emotion_pipeline.core.config import CLASSES
from emotion_pipeline.core.errors import InvalidDecision
from emotion_pipeline.core.storage import Storage
from emotion_pipeline.labelling import reviews

log = logging.getLogger(__name__)

FACE = "face"  # the RectangleLabels' name: the face the queue asks about
EMOTION = "emotion"  # the Choices' name: the person's answer
IMAGE = "image"  # the Image's name, and the task's data key of the photo's URL
BOX_COLUMNS = ["box_x", "box_y", "box_w", "box_h"]
URL_FIELDS = ("source_key", "source_uri", "image_id")  # what an --image-url-prefix template may name


def _label_config() -> str:
    labels = "\n".join(f'    <Label value="{c}"/>' for c in CLASSES)
    choices = "\n".join(f'    <Choice value="{c}"/>' for c in reviews.LABELS)
    return f"""<View>
  <Header value="Which emotion does the boxed face show? (no_face: no usable face)"/>
  <Image name="{IMAGE}" value="${IMAGE}" zoom="true"/>
  <RectangleLabels name="{FACE}" toName="{IMAGE}">
{labels}
  </RectangleLabels>
  <Choices name="{EMOTION}" toName="{IMAGE}" choice="single" showInline="true" required="true">
{choices}
  </Choices>
  <Text name="captions" value="$captions"/>
</View>
"""


# Paste into the Label Studio project (Settings > Labeling Interface > Code).
LABEL_CONFIG = _label_config()


# ---------------------------------------------------------------------------------------------- export

def export_tasks(root: Storage, queue: pd.DataFrame | None = None, image_url: str | None = None,
                 teacher: str | None = None) -> list[dict]:
    """One Label Studio task per queued face (the queue's order: most doubtful first).

    Args:
        root: the pipeline's storage root (its dataset gives each photo's source URI and size).
        queue: the review queue (default: the root's, ``catalog.read_review_queue``).
        image_url: how Label Studio reaches a photo. None: the photo's source URI as the pipeline
            recorded it (a ``gs://`` URI, which Label Studio's cloud storage resolves). A string with
            ``{source_key}``, ``{source_uri}`` or ``{image_id}``: that template. Any other string: a
            prefix the photo's source key is appended to (``/data/local-files/?d=photos/``,
            ``gs://bucket/photos/``).
        teacher: named in each prediction's ``model_version`` (default: the queue's label_source).

    Returns:
        The tasks, ready for ``json.dump`` and Label Studio's import. A queued photo no longer in the
        dataset without an ``image_url`` has no URL: it is left out and said (a warning).
    """
    queue = catalog.read_review_queue(root) if queue is None else queue
    if queue is None or queue.empty:
        return []
    dataset = catalog.read_dataset(root)
    photos = {} if dataset is None else dataset.drop_duplicates("image_id").set_index("image_id").to_dict("index")
    tasks = []
    for item in queue.to_dict("records"):
        photo = photos.get(str(item["image_id"]), {})
        url = photo_url(item, photo, image_url)
        if url is None:
            log.warning("label studio: %s is not in the dataset and no image URL was given: left out",
                        item["image_id"])
            continue
        tasks.append(task_for(item, photo, url, teacher))
    return tasks


def photo_url(item: Mapping[str, Any], photo: Mapping[str, Any], image_url: str | None) -> str | None:
    """The photo's URL for Label Studio (``export_tasks``' ``image_url``); None when it has none."""
    fields = {"source_key": _text(item.get("source_key")) or _text(photo.get("source_key")),
              "source_uri": _text(photo.get("source_uri")), "image_id": str(item["image_id"])}
    if image_url is None:
        return fields["source_uri"]
    if any(f"{{{name}}}" in image_url for name in URL_FIELDS):
        return image_url.format(**{k: v or "" for k, v in fields.items()})
    if not fields["source_key"]:
        return None
    key = fields["source_key"]
    # A URL Label Studio's server serves (local files, http) wants the key quoted; a bucket URI does not.
    return image_url + (key if "://" in image_url and not image_url.startswith("http") else quote(key))


def task_for(item: Mapping[str, Any], photo: Mapping[str, Any], url: str, teacher: str | None) -> dict:
    """One task: the photo, our ids and the queue's reasons under ``data``; the machine's answer
    (the face's box and label) as the prediction."""
    face_index = _int_or_none(item.get("face_index"))
    label = str(item["machine_label"])
    captions: Iterable[Any] = item["captions"] if _is_list(item.get("captions")) else []
    data = {IMAGE: url, "image_id": str(item["image_id"]), "content_id": str(item["content_id"]),
            "face_index": face_index, "source_key": _text(item.get("source_key")), "machine_label": label,
            "suggested_label": _text(item.get("suggested_label")), "score": _float(item.get("score")),
            "reasons": _text(item.get("reasons")) or "",
            # The config's Text reads $captions: every task has it (empty without captions).
            "captions": "\n".join(str(c) for c in captions)}
    result = [{"id": f"{EMOTION}0", "from_name": EMOTION, "to_name": IMAGE, "type": "choices",
               "value": {"choices": [label]}}]
    region = face_region(item, photo, label, face_index)
    if region is not None:
        result.insert(0, region)
    quality = _float(item.get("label_quality"))
    source = teacher or _text(item.get("label_source")) or "machine"
    prediction = {"model_version": f"deepface/{source}", "result": result,
                  # Label Studio's prediction score is a confidence: the label's quality, so that
                  # sorting by it (lowest first) is the queue's order.
                  "score": quality if quality is not None else 1.0 - (_float(item.get("score")) or 0.0)}
    return {"data": data, "predictions": [prediction]}


def face_region(item: Mapping[str, Any], photo: Mapping[str, Any], label: str, face_index: int | None) -> dict | None:
    """The face's box as a ``rectanglelabels`` result in percent of the upright photo; None without a
    box or without the photo's size."""
    box = [_float(item.get(c)) for c in BOX_COLUMNS]
    width = _float(photo.get("upright_width")) or _float(photo.get("orig_width"))
    height = _float(photo.get("upright_height")) or _float(photo.get("orig_height"))
    if any(v is None for v in box) or not width or not height:
        return None
    x, y, w, h = (float(v) for v in box)  # type: ignore[arg-type]
    left, top = min(max(x, 0.0), width), min(max(y, 0.0), height)
    right, bottom = min(max(x + w, left), width), min(max(y + h, top), height)
    return {"id": f"{FACE}{face_index if face_index is not None else ''}", "from_name": FACE, "to_name": IMAGE,
            "type": "rectanglelabels", "original_width": int(width), "original_height": int(height),
            "image_rotation": 0,
            "value": {"x": 100 * left / width, "y": 100 * top / height, "width": 100 * (right - left) / width,
                      "height": 100 * (bottom - top) / height, "rotation": 0, "rectanglelabels": [label]}}


# ---------------------------------------------------------------------------------------------- import

@dataclass
class ImportResult:
    """What an import did with each task of Label Studio's export (every task is counted once)."""

    tasks: int = 0
    recorded: int = 0  # a new decision file
    already_recorded: int = 0  # the latest decision on that face already says this (a re-import)
    superseded: int = 0  # a later decision (the dashboard's, another import) says otherwise: kept
    not_ours: int = 0  # no image_id/content_id in its data: not a task export_tasks wrote
    unannotated: int = 0  # no annotation, or only cancelled (skipped) ones
    no_choice: int = 0  # its latest annotation chose no emotion
    unknown_label: int = 0  # a choice that is not one of the classes or no_face
    invalid: int = 0  # a decision reviews refuses (a bad face_index, reviewer, ...)
    cancelled_annotations: int = 0  # annotations skipped in Label Studio (was_cancelled), any task
    problems: list[str] = field(default_factory=list)  # one line per task not recorded, and why

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def import_export(root: Storage, exported: Iterable[Mapping[str, Any]],
                  reviewer_default: str = "label-studio") -> ImportResult:
    """Record Label Studio's answers (its JSON export) as decisions on ``root``.

    Each task's latest non-cancelled annotation (by ``updated_at``, else ``created_at``) gives the
    label (its ``emotion`` choice), the reviewer (the annotator's email, else ``label-studio:<id>``,
    else ``reviewer_default``) and the decision's time (the annotation's, so that a later decision
    made in the dashboard still wins; now when it has none). Args: the root, the export (a list of
    tasks, as ``json.load`` reads it) and the reviewer for annotations that name nobody.
    """
    result = ImportResult()
    latest = {_key(row): row for row in reviews.read_decisions(root).to_dict("records")}
    answers = []
    for task in exported:
        result.tasks += 1
        answer = _answer(task, result, reviewer_default)
        if answer is not None:
            answers.append(answer)
    for decision in sorted(answers, key=lambda d: reviews.parse_utc(d.decided_at)):  # in time order: the latest wins
        _record(root, decision, latest, result)
    return result


def _answer(task: Mapping[str, Any], result: ImportResult, reviewer_default: str) -> reviews.Decision | None:
    """The decision a task's latest non-cancelled annotation makes, or None (counted, said why)."""
    task_id = task.get("id", "?") if isinstance(task, Mapping) else "?"
    data = task.get("data") if isinstance(task, Mapping) else None
    if not isinstance(data, Mapping) or not _text(data.get("image_id")) or not _text(data.get("content_id")):
        return _problem(result, "not_ours", f"task {task_id}: no image_id/content_id in its data (not ours)")
    annotations = [a for a in task.get("annotations") or [] if isinstance(a, Mapping)]
    cancelled = sum(bool(a.get("was_cancelled")) for a in annotations)
    result.cancelled_annotations += cancelled
    done = [a for a in annotations if not a.get("was_cancelled")]
    if not done:
        return _problem(result, "unannotated", f"task {task_id} ({data['image_id']}): no annotation"
                        + (f" ({cancelled} cancelled)" if cancelled else ""))
    annotation = max(done, key=lambda a: (reviews.parse_utc(_annotation_time(a)), a.get("id") or 0))
    choices = [c for r in annotation.get("result") or [] if isinstance(r, Mapping) and r.get("type") == "choices"
               and r.get("from_name") == EMOTION for c in (r.get("value") or {}).get("choices") or []]
    if not choices:
        return _problem(result, "no_choice", f"task {task_id} ({data['image_id']}): the latest annotation "
                        f"chose no {EMOTION}")
    if len(set(choices)) != 1 or choices[0] not in reviews.LABELS:
        return _problem(result, "unknown_label", f"task {task_id} ({data['image_id']}): {choices!r} is not one "
                        f"of {', '.join(reviews.LABELS)}")
    try:
        return reviews.Decision(str(data["image_id"]), str(data["content_id"]), _int_or_none(data.get("face_index")),
                                choices[0], _reviewer(annotation.get("completed_by"), reviewer_default),
                                _annotation_time(annotation))
    except (InvalidDecision, TypeError, ValueError) as err:
        return _problem(result, "invalid", f"task {task_id} ({data['image_id']}): {err}")


def _record(root: Storage, decision: reviews.Decision, latest: dict, result: ImportResult) -> None:
    """Record ``decision`` unless the latest one on its face already says so or is later."""
    key = (decision.image_id, decision.content_id, decision.face_index)
    existing = latest.get(key)
    if existing is not None and existing["label"] == decision.label:
        result.already_recorded += 1
        return
    if existing is not None and reviews.parse_utc(existing["decided_at"]) >= reviews.parse_utc(decision.decided_at):
        result.superseded += 1
        result.problems.append(f"{decision.image_id} face {decision.face_index}: {decision.label!r} by "
                               f"{decision.reviewer} is older than {existing['reviewer']}'s "
                               f"{existing['label']!r}: not recorded")
        return
    reviews.record_decision(root, decision)
    latest[key] = asdict(decision)
    result.recorded += 1


def _problem(result: ImportResult, counter: str, message: str) -> reviews.Decision | None:
    """Count and say why a task makes no decision; returns None (what `_answer` returns then)."""
    setattr(result, counter, getattr(result, counter) + 1)
    result.problems.append(message)
    log.warning("label studio import: %s", message)
    return None


def _reviewer(completed_by: Any, default: str) -> str:
    """The annotator: an email when the export has the user object, else ``label-studio:<user id>``."""
    if isinstance(completed_by, Mapping):
        email = _text(completed_by.get("email"))
        if email:
            return email
        completed_by = completed_by.get("id")
    if isinstance(completed_by, (int, str)) and not isinstance(completed_by, bool) and str(completed_by).strip():
        return f"label-studio:{str(completed_by).strip()}"
    return default


def _annotation_time(annotation: Mapping[str, Any]) -> str:
    """The annotation's time as a decision's ``decided_at`` (UTC); now when it has none readable."""
    for name in ("updated_at", "created_at"):
        try:
            moment = datetime.fromisoformat(str(annotation[name]))
        except (KeyError, TypeError, ValueError):
            continue
        moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
        return moment.isoformat(timespec="microseconds")
    return reviews.now_utc()


def _key(row: Mapping[str, Any]) -> tuple[str, str, int | None]:
    return str(row["image_id"]), str(row["content_id"]), _int_or_none(row["face_index"])


def _int_or_none(value: Any) -> int | None:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise InvalidDecision(f"face_index must be a face's number, not {value!r}")
    return int(value)


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if pd.isna(number) else number


def _text(value: Any) -> str | None:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return str(value)


def _is_list(value: Any) -> bool:
    return value is not None and not isinstance(value, str) and hasattr(value, "__len__") and len(value) > 0
