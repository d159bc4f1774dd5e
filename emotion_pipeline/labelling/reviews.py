"""People's decisions on photos: one small JSON file per decision under ``reviews/decisions/``.

A decision says which label a person gives one face of one photo (or the photo, ``face_index``
``None``): one of the five classes, or ``no_face`` ("no usable face", which keeps the photo out of
training). Each decision is its own file, named by its time, its reviewer and a random id, and
written with the storage layer's atomic write: two reviewers deciding at the same moment write two
files, on a local root and on ``gs://`` alike, so nothing is ever overwritten or lost, and no lock is
needed. Reading folds them: the latest decision on a (photo, content, face) wins, so a person can
change their mind by deciding again.

A decision carries the photo's content id: when the photo changes (new content id) the old decision
no longer applies to it and the queue asks again.
"""
from __future__ import annotations

import json
import logging
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import pandas as pd

from emotion_pipeline.core import catalog
from emotion_pipeline.core.config import CLASSES
from emotion_pipeline.core.errors import InvalidDecision
from emotion_pipeline.core.storage import Storage

log = logging.getLogger(__name__)

DECISIONS_FOLDER = catalog.REVIEW_DECISIONS

NO_FACE = "no_face"  # "no usable face": the photo is kept out of training
LABELS = (*CLASSES, NO_FACE)
COLUMNS = ("image_id", "content_id", "face_index", "label", "reviewer", "decided_at")
KEY_COLUMNS = ["image_id", "content_id", "face_index"]
MAX_REVIEWER_LENGTH = 100
_READERS = 16  # parallel reads: on GCS each decision is one request


@dataclass(frozen=True)
class Decision:
    """One person's label for one face (``face_index``) of one photo version (``content_id``)."""

    image_id: str
    content_id: str
    face_index: int | None
    label: str
    reviewer: str
    decided_at: str  # UTC, ISO 8601 (``now_utc()``)

    def __post_init__(self) -> None:
        for name in ("image_id", "content_id"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise InvalidDecision(f"a decision needs a {name} (got {getattr(self, name)!r})")
        if self.label not in LABELS:
            raise InvalidDecision(f"unknown label {self.label!r}: a decision is one of {', '.join(LABELS)}")
        _check_reviewer(self.reviewer)
        if self.face_index is not None and (isinstance(self.face_index, bool) or not isinstance(self.face_index, int)
                                            or self.face_index < 0):
            raise InvalidDecision(f"face_index must be a face's number (0, 1, ...) or None, not {self.face_index!r}")
        parse_utc(self.decided_at)


def _check_reviewer(reviewer: object) -> None:
    if not isinstance(reviewer, str) or not reviewer.strip():
        raise InvalidDecision("a decision needs the reviewer's name (an empty name was given)")
    if len(reviewer) > MAX_REVIEWER_LENGTH or not reviewer.isprintable():
        raise InvalidDecision(f"the reviewer's name must be printable and at most {MAX_REVIEWER_LENGTH} "
                              f"characters (got {reviewer[:120]!r})")


def parse_utc(decided_at: object) -> datetime:
    """``decided_at`` as a time (InvalidDecision unless ISO 8601 in UTC)."""
    try:
        moment = datetime.fromisoformat(decided_at)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidDecision(f"decided_at must be an ISO 8601 time in UTC, not {decided_at!r}") from None
    offset = moment.utcoffset()
    if offset is None or offset.total_seconds() != 0:
        raise InvalidDecision(f"decided_at must be in UTC (+00:00 or Z), not {decided_at!r}")
    return moment


def now_utc() -> str:
    """This moment as ``decided_at`` wants it (UTC, microseconds)."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def decide(image_id: str, content_id: str, face_index: int | None, label: str, reviewer: str) -> Decision:
    """A decision made now (``decided_at`` = ``now_utc()``)."""
    return Decision(image_id, content_id, face_index, label, reviewer.strip(), now_utc())


def reviewer_slug(reviewer: str) -> str:
    """The reviewer's name as a safe part of a file name (``Ada Lovelace`` -> ``ada-lovelace``)."""
    return re.sub(r"[^a-z0-9]+", "-", reviewer.lower()).strip("-")[:40] or "reviewer"


def decision_key(decision: Decision) -> str:
    """Where a new decision file goes: time first, so a listing is roughly in decision order; a
    random id last, so two decisions never share a name."""
    compact = parse_utc(decision.decided_at).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{DECISIONS_FOLDER}/{compact}-{reviewer_slug(decision.reviewer)}-{uuid.uuid4().hex}.json"


def record_decision(root: Storage, decision: Decision) -> str:
    """Write ``decision`` as a new file under ``reviews/decisions/``; returns its key."""
    key = decision_key(decision)
    root.write_bytes(key, json.dumps(asdict(decision), sort_keys=True).encode())
    return key


def _read_one(root: Storage, key: str) -> dict | None:
    """One decision file as a row (with its key), or None when it is not a valid decision."""
    try:
        return {**asdict(Decision(**json.loads(root.read_bytes(key)))), "_key": key}
    except (ValueError, TypeError, OSError) as err:  # a hand-edited or foreign file: said, then left out
        log.warning("decision %s is left out: %s", root.uri_for(key), err)
        return None


def read_decisions(root: Storage) -> pd.DataFrame:
    """Every (photo, content, face)'s latest decision, one row each (``COLUMNS``; none: no rows)."""
    keys = [entry.key for entry in root.list(DECISIONS_FOLDER)
            if entry.key.endswith(".json") and not entry.problem]
    with ThreadPoolExecutor(_READERS) as pool:
        rows = [row for row in pool.map(lambda key: _read_one(root, key), keys) if row is not None]
    if not rows:
        return pd.DataFrame(columns=list(COLUMNS)).astype({"face_index": "Int64"})
    table = pd.DataFrame(rows).astype({"face_index": "Int64"})
    # Times are compared as times (not text), and the file name breaks a tie the same way every time.
    table["_at"] = pd.to_datetime(table["decided_at"], utc=True, format="ISO8601")
    table = table.sort_values(["_at", "_key"], kind="stable")
    latest = table.drop_duplicates(KEY_COLUMNS, keep="last")[list(COLUMNS)]
    return latest.sort_values(KEY_COLUMNS, kind="stable").reset_index(drop=True)


def decided_photos(root: Storage) -> set[str]:
    """The image ids a person has decided on (any face, any version): the queue never asks them again
    unless their content changed (see ``decided_versions``)."""
    return set(read_decisions(root)["image_id"])


def decided_versions(root: Storage) -> set[tuple[str, str]]:
    """The (image_id, content_id) pairs a person has decided on: a photo whose content changed since
    is not among them, so it is asked again."""
    table = read_decisions(root)
    return set(zip(table["image_id"], table["content_id"]))
