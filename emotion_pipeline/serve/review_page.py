"""What the dashboard's Review page shows, without Streamlit: the queue, the next photo to ask about
with its face's box, DeepFace's seven scores, the captions, the progress and the keyboard shortcuts.

The queue (``reviews/queue``, written by the review_queue stage) lists faces whose label is likely
wrong, most doubtful first. A queue row is asked until a person decides it: a decision on the same
photo *version* (image id and content id) and face. A photo whose content changed since has a new
content id, so it is asked again.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import PurePosixPath

import pandas as pd
from PIL import Image

from emotion_pipeline.core import catalog
from emotion_pipeline.core.config import CLASSES, EMOTIONS
from emotion_pipeline.core.errors import CaptionError, StorageError
from emotion_pipeline.core.storage import Storage, read_uri
from emotion_pipeline.core.tables import read_table
from emotion_pipeline.labelling.images import decode_rgb, letterbox_box
from emotion_pipeline.labelling.reviews import NO_FACE, read_decisions

SKIP = "skip"
# Keys 1-5 are the classes in CLASSES' order, 0 "no usable face", s skip.
SHORTCUTS = {**{str(i): label for i, label in enumerate(CLASSES, start=1)}, "0": NO_FACE, "s": SKIP}
BUTTON_TEXT = {label: f"{'no usable face' if label == NO_FACE else label} ({key})" for key, label in SHORTCUTS.items()}
BOX_COLUMNS = ["box_x", "box_y", "box_w", "box_h"]
SHOWN_SIDE = 900  # the longest side of the photo as shown: enough to judge a face, light to send
CAPTIONS_ENV = "EMOTION_PIPELINE_CAPTIONS"  # the captions file (as the run's --captions), if any


def read_queue(root: Storage) -> pd.DataFrame | None:
    """The queue with its box as four int columns ``box_x..box_h``; None when it was never written."""
    queue = read_table(root, catalog.REVIEW_QUEUE)
    if queue is None:
        return None
    if "box" in queue and not set(BOX_COLUMNS) <= set(queue):
        boxes = [_box_values(box) for box in queue["box"]]
        queue = queue.assign(**{name: [b[i] if b else None for b in boxes] for i, name in enumerate(BOX_COLUMNS)})
    return queue.reset_index(drop=True)


def _box_values(box) -> list[int] | None:
    """A box as stored: a mapping x/y/w/h (parquet struct), a sequence (x, y, w, h), or nothing."""
    if box is None or (not isinstance(box, (dict, list, tuple)) and not hasattr(box, "__len__")):
        return None
    values = [box[k] for k in ("x", "y", "w", "h")] if isinstance(box, dict) else list(box)
    return [int(v) for v in values] if len(values) == len(BOX_COLUMNS) and all(pd.notna(v) for v in values) else None


def face_of(value) -> int | None:
    return None if value is None or pd.isna(value) else int(value)


def item_key(row) -> tuple[str, str, int | None]:
    """What a decision is about: the photo, its version (content id) and the face."""
    return str(row["image_id"]), str(row["content_id"]), face_of(row.get("face_index"))


def decided_keys(root: Storage) -> set[tuple[str, str, int | None]]:
    decisions = read_decisions(root)
    return {item_key(row) for _, row in decisions.iterrows()}


def progress(queue: pd.DataFrame, done: set) -> tuple[int, int]:
    """(reviewed, queued): the queue's rows a person decided, and all its rows."""
    return sum(item_key(row) in done for _, row in queue.iterrows()), len(queue)


def next_item(queue: pd.DataFrame, done: set, skipped: set) -> pd.Series | None:
    """The most doubtful row not decided and not skipped (the queue's order), or None."""
    for _, row in queue.iterrows():
        if item_key(row) not in done and item_key(row) not in skipped:
            return row
    return None


def dataset_row(data: pd.DataFrame | None, image_id: str) -> pd.Series | None:
    if data is None:
        return None
    rows = data[data["image_id"] == image_id]
    return None if rows.empty else rows.iloc[0]


def review_photo(root: Storage, item: pd.Series, row: pd.Series | None) -> tuple[Image.Image, tuple | None]:
    """The photo to judge and the face's box on it (x, y, w, h; None without one).

    The source photo, upright, at most ``SHOWN_SIDE`` pixels: the queue's box is in its frame. When
    the source cannot be read (moved, another machine's folder), the letterboxed copy of the root."""
    box = tuple(float(item[c]) for c in BOX_COLUMNS) if all(pd.notna(item.get(c)) for c in BOX_COLUMNS) else None
    if row is None:  # the photo left the dataset since the queue was written
        return _processed_photo(root, item, row, box)
    try:
        photo = decode_rgb(Image.open(io.BytesIO(read_uri(str(row["source_uri"])))))
    except (TypeError, KeyError, OSError, ValueError, StorageError):
        return _processed_photo(root, item, row, box)
    scale = min(1.0, SHOWN_SIDE / max(photo.size))
    if scale < 1:
        photo = photo.resize((round(photo.width * scale), round(photo.height * scale)))
    return photo, tuple(v * scale for v in box) if box else None


def _processed_photo(root: Storage, item: pd.Series, row: pd.Series | None, box) -> tuple[Image.Image, tuple | None]:
    """The root's letterboxed copy, the box mapped onto it (its frame needs the dataset's sizes)."""
    photo = Image.open(io.BytesIO(root.read_bytes(catalog.processed_photo(str(item["image_id"]))))).convert("RGB")
    if box is None or row is None:
        return photo, None
    width, height = (float(row.get(f"upright_{k}", row.get(f"orig_{k}"))) for k in ("width", "height"))
    left, top, right, bottom = letterbox_box(box, width, height, photo.width)
    return photo, (left, top, right - left, bottom - top)


def face_scores(root: Storage, item: pd.Series, row: pd.Series | None) -> pd.Series | None:
    """DeepFace's seven scores (percent) of the queued face: the dataset's when it is the photo's
    label face, else the face's own row in annotate's faces table."""
    columns = [f"emotion_{name}" for name in EMOTIONS]
    face = face_of(item.get("face_index"))
    if row is not None and set(columns) <= set(row.index) and face in (None, face_of(row.get("label_face_index"))):
        scores = row[columns]
    elif row is not None and "shard" in row and face is not None:
        faces = catalog.read_faces(root, [int(row["shard"])])
        match = faces[(faces["image_id"] == item["image_id"]) & (faces["face_index"] == face)] if len(faces) else faces
        if match.empty or not set(columns) <= set(match.columns):
            return None
        scores = match.iloc[0][columns]
    else:
        return None
    return pd.Series(scores.to_numpy(dtype=float), index=list(EMOTIONS))


def photo_captions(item: pd.Series, row: pd.Series | None) -> list[str]:
    """What people wrote about the photo: the queue's ``captions`` column, else the captions file
    the dashboard was given (``--captions``, as the run's), matched as the caption check matches."""
    if "captions" in item and item["captions"] is not None and len(item["captions"]):
        return [str(c) for c in item["captions"]]
    uri = os.environ.get(CAPTIONS_ENV)
    if not uri or row is None:
        return []
    from emotion_pipeline.labelling.captions import read_captions

    try:
        table = read_captions(uri)
    except (CaptionError, OSError, StorageError):
        return []
    wanted = {"name": PurePosixPath(str(row["source_key"])).name, "path": str(row["source_key"]),
              "image_id": str(row["image_id"])}
    return [str(c) for c, photo, by in table[["caption", "photo", "by"]].itertuples(index=False)
            if photo == wanted[by]]


_SHORTCUT_JS = """<script>
const texts = __TEXTS__;
const page = window.parent.document;
// One listener, from the newest frame: a rerun may drop the frame that registered the previous one.
if (page.__reviewKeys) page.removeEventListener("keydown", page.__reviewKeys);
page.__reviewKeys = (event) => {
  const target = event.target;
  if (event.ctrlKey || event.metaKey || event.altKey || !texts[event.key]) return;
  if (target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA" || target.isContentEditable)) return;
  const button = [...page.querySelectorAll("button")].find((b) => b.innerText.trim() === texts[event.key]);
  if (button && !button.disabled) { event.preventDefault(); button.click(); }
};
page.addEventListener("keydown", page.__reviewKeys);
</script>"""


def shortcut_script(texts: dict[str, str] = BUTTON_TEXT) -> str:
    """A script for ``components.html``: keys click the page's decision buttons (found by their text,
    in the page around the component's frame). Typing in a text box is left alone."""
    return _SHORTCUT_JS.replace("__TEXTS__", json.dumps({key: texts[label] for key, label in SHORTCUTS.items()}))
