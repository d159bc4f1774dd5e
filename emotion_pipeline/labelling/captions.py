"""The caption check: what people wrote about a photo, against the label DeepFace gave it.

Flickr30k ships five human captions per photo. Where enough of them name an emotion ("two girls
*smiling*", "a child *crying*"), that emotion is the photo's *caption label*: a weak label, because
captions mention some emotions (smiles, tears) far more than others and almost never a neutral face,
and they describe the photo, not the one face the pipeline labels it by. It still answers a question
nothing else here can on the photos the pipeline actually labels: how often DeepFace (and the model
trained on DeepFace) agree with what people saw.

* ``read_captions``: Flickr30k's ``results.csv`` (``image_name, comment_number, comment``, comma or
  ``|`` separated, commas inside comments allowed) or a generic CSV with ``caption`` and ``path``
  (relative to the source) or ``image_id``; local or gs://.
* ``read_lexicon``: per emotion, regular expressions as data (``data/caption_lexicon.csv``, or a user's).
* ``caption_labels``: per photo, the votes of its captions and the caption label (``min_agree``
  captions must name the same emotion; a tie between emotions is a conflict, no caption label).
* ``caption_check``: DeepFace's and the model's agreement with the caption labels, per emotion, with
  "no label" (``labels.NO_LABEL``) as a column of its own.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from emotion_pipeline.core.config import CLASSES
from emotion_pipeline.core.errors import CaptionError  # re-exported: its home is core.errors
from emotion_pipeline.core.storage import read_uri
from emotion_pipeline.labelling.labels import labels_of
from emotion_pipeline.modeling.evaluation import class_ids
from emotion_pipeline.modeling.metrics import classification_metrics

DEFAULT_LEXICON = Path(__file__).parents[1] / "data" / "caption_lexicon.csv"
FLICKR_COLUMNS = ("image_name", "comment_number", "comment")  # Flickr30k's results.csv
NEGATIONS = {"not", "no", "never", "without", "nor", "n't", "isn't", "aren't", "doesn't", "don't", "isnt", "arent"}


def _read(uri: str) -> bytes:
    return read_uri(uri if uri.startswith("gs://") else os.path.abspath(uri))


def read_captions(uri: str) -> pd.DataFrame:
    """Captions as rows of (``photo``, ``caption``) and how ``photo`` names a photo (``by``).

    Returns:
        A frame with ``photo``, ``caption`` and ``by``: ``name`` (Flickr30k: the file name),
        ``path`` (relative to the source) or ``image_id``.

    Raises:
        CaptionError: the file has neither Flickr30k's header nor ``caption`` + ``path``/``image_id``.
    """
    text = _read(uri).decode("utf-8-sig")
    header = text.split("\n", 1)[0]
    fields = [f.strip().lower() for f in re.split(r"[|,]", header)]
    if fields[:3] == ["image_name", "comment_number", "comment"]:
        separator = "|" if "|" in header else ","
        rows = []
        for number, line in enumerate(text.splitlines()[1:], start=2):
            if not line.strip():
                continue
            parts = line.split(separator, 2)  # the comment may hold the separator itself
            if len(parts) < len(FLICKR_COLUMNS):
                raise CaptionError(f"{uri}:{number}: expected image_name{separator} comment_number{separator} "
                                   "comment")
            rows.append({"photo": parts[0].strip(), "caption": parts[2].strip()})
        return pd.DataFrame(rows, columns=["photo", "caption"]).assign(by="name")
    table = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    columns = {c.strip().lower(): c for c in table.columns}
    key = next((k for k in ("path", "image_id") if k in columns), None)
    if "caption" not in columns or key is None:
        raise CaptionError(f"{uri}: captions need Flickr30k's header (image_name, comment_number, comment) "
                           f"or a 'caption' column with a 'path' or 'image_id' column; found {list(table.columns)}")
    photos = table[columns[key]].str.strip()
    if key == "path":
        photos = photos.map(lambda p: PurePosixPath(re.sub(r"^(\./)+", "", p.replace("\\", "/"))).as_posix())
    return pd.DataFrame({"photo": photos, "caption": table[columns["caption"]], "by": key})


def read_lexicon(uri: str | None = None) -> dict[str, list[re.Pattern]]:
    """Per class, the compiled patterns of a lexicon CSV (``emotion,pattern``; ``#`` starts a comment).

    Raises:
        CaptionError: an emotion that is not one of the five classes, or a pattern that does not compile.
    """
    data = _read(uri) if uri else DEFAULT_LEXICON.read_bytes()
    lines = [line for line in data.decode("utf-8-sig").splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    lexicon: dict[str, list[re.Pattern]] = {c: [] for c in CLASSES}
    for number, row in enumerate(csv.DictReader(lines), start=1):
        emotion, pattern = (row.get("emotion") or "").strip(), (row.get("pattern") or "").strip()
        if emotion not in lexicon:
            raise CaptionError(f"{uri or DEFAULT_LEXICON}: row {number}: {emotion!r} is not one of {CLASSES}")
        try:
            lexicon[emotion].append(re.compile(rf"\b(?:{pattern})\b", re.IGNORECASE))
        except re.error as err:
            raise CaptionError(f"{uri or DEFAULT_LEXICON}: row {number}: pattern {pattern!r}: {err}") from None
    return lexicon


def emotions_named(caption: str, lexicon: dict[str, list[re.Pattern]]) -> set[str]:
    """The classes a caption names, leaving out a word negated just before it ("not smiling")."""
    named = set()
    for emotion, patterns in lexicon.items():
        for pattern in patterns:
            for match in pattern.finditer(caption):
                before = re.findall(r"[\w']+", caption[: match.start()].lower())[-2:]
                if not NEGATIONS & set(before) and not any(w.endswith("n't") for w in before):
                    named.add(emotion)
                    break
    return named


def caption_labels(captions: pd.DataFrame, lexicon: dict[str, list[re.Pattern]], min_agree: int) -> pd.DataFrame:
    """Per photo: its number of captions, the votes per class and the caption label.

    The label is the class named by the most captions when at least ``min_agree`` name it; two
    classes with the same most votes are a ``conflict`` (no label). Photos no caption names an emotion
    for are kept with no label: they count in the coverage."""
    named = captions["caption"].map(lambda c: emotions_named(str(c), lexicon))
    votes = pd.DataFrame({f"votes_{c}": named.map(lambda s, c=c: c in s).astype(int) for c in CLASSES})
    votes["photo"], votes["by"] = captions["photo"].to_numpy(), captions["by"].to_numpy()
    table = votes.groupby(["photo", "by"], sort=True).sum().reset_index()
    table.insert(2, "captions", captions.groupby(["photo", "by"], sort=True).size().to_numpy())
    counts = table[[f"votes_{c}" for c in CLASSES]].to_numpy()
    enough = counts.max(axis=1) >= min_agree
    # The one label rule on the votes: the most named class, none on a tie (any lead > 0 will do).
    named = np.array(labels_of(counts, min_margin=1e-9) if len(counts) else [], dtype=object)
    table["conflict"] = enough & pd.isna(named)
    table["caption_label"] = [label if agreed else None for agreed, label in zip(enough, named)]
    return table


def match_photos(labels: pd.DataFrame, dataset: pd.DataFrame) -> pd.DataFrame:
    """The dataset's present photos with their captions' votes and label (photos without captions left out).

    A Flickr30k name matches the file name of ``source_key``; a path the whole ``source_key``; an
    image_id the content id. A name found in several folders matches each of them."""
    present = dataset[dataset["status"] != "removed"] if "status" in dataset else dataset
    present = present.assign(name=present["source_key"].map(lambda k: PurePosixPath(k).name))
    column = {"name": "name", "path": "source_key", "image_id": "image_id"}
    parts = [present.merge(group.drop(columns="by"), left_on=column[by], right_on="photo")
             for by, group in labels.groupby("by")]
    if not parts:
        return present.iloc[0:0].assign(captions=0, caption_label=None, conflict=False)
    return pd.concat(parts, ignore_index=True).drop(columns=["name", "photo"]).drop_duplicates("source_key")


def caption_check(matched: pd.DataFrame, model_predictions: np.ndarray, trained_on: set[str],
                  min_agree: int) -> dict[str, Any]:
    """DeepFace's and the model's agreement with the caption labels.

    Args:
        matched: ``match_photos``' rows: dataset columns (``status``, ``label``, ``image_id``) and
            ``caption_label``.
        model_predictions: the model's class index for each row of ``matched`` with a caption label
            and an eligible face (status ``ok``), in order.
        trained_on: image_ids of the model's training rows (held-out agreement leaves them out).
        min_agree: the captions that had to agree (recorded with the figures).

    Returns:
        Coverage, per-class counts, and for ``deepface``, ``model`` and ``model_held_out`` the
        agreement (accuracy), per-class agreement (recall) and confusion matrix, rows the caption
        label (DeepFace's has a sixth "no label" column).
    """
    covered = matched[matched["caption_label"].notna()]
    with_face = covered[covered["status"] == "ok"].reset_index(drop=True)
    truth = class_ids(with_face["caption_label"])
    predictions = np.asarray(model_predictions, dtype=int)
    held_out = ~with_face["image_id"].isin(trained_on).to_numpy()
    per_class = {c: {"covered": int((covered["caption_label"] == c).sum()),
                     "with_face": int((with_face["caption_label"] == c).sum()),
                     "deepface_no_label": int(((with_face["caption_label"] == c) & with_face["label"].isna()).sum())}
                 for c in CLASSES}
    return {
        "min_agree": int(min_agree),
        "photos": int(len(matched)),
        "covered": int(len(covered)),
        "coverage": float(len(covered) / len(matched)) if len(matched) else 0.0,
        "conflicts": int(matched["conflict"].sum()) if "conflict" in matched else 0,
        "no_face": int((covered["status"] == "no_face").sum()),
        "with_face": int(len(with_face)),
        "per_class": per_class,
        "deepface": classification_metrics(truth, class_ids(with_face["label"]), no_label=True),
        "model": classification_metrics(truth, predictions),
        "model_held_out": classification_metrics(truth[held_out], predictions[held_out]),
    }


def fingerprint(captions: str | None, lexicon: str | None) -> str:
    """What the caption check reads besides its settings: the captions file's and the lexicon's bytes."""
    if not captions:
        return ""
    digest = hashlib.sha256(_read(captions))
    digest.update(_read(lexicon) if lexicon else DEFAULT_LEXICON.read_bytes())
    return digest.hexdigest()
