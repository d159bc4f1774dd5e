"""Stage: ``datasets/final_emotion_dataset.parquet`` (+ CSV twin), one row per discovered photo.

The manifest's present rows, joined with the per-photo table of every stage that declares one in the
registry (resize's metadata, annotate's annotations, dedupe's verdicts), in pipeline order. Every
photo is accounted for: its ``status`` (and ``error``) is the latest stage's verdict where that stage
has one (``ok``, ``no_face``, ``duplicate``, ``near_duplicate``, ``corrupt``, ``unsupported``,
``empty``, ``too_large``, ``missing``), or ``pending`` when no stage has reached its shard yet. A
column several tables share (e.g. ``duplicate_of``) takes the latest non-empty value the same way.

People's labels win (``labelling/reviews.py``): where a person decided on an ``ok`` photo's label face
in its current content, ``label`` is the person's and ``label_source`` is ``person`` (else the
``teacher`` knob's name: ``deepface``, ``mini_xception`` or ``mean``); ``machine_label`` keeps the
teacher's (who decided and when stay in ``reviews/decisions``). "No usable face" makes the photo
``no_face`` with no label: it never trains. The decisions are part of merge's fingerprint, so a
decision changes the dataset and therefore the training rows.
"""
from __future__ import annotations

import hashlib
import logging

import pandas as pd

from emotion_pipeline.core import catalog
from emotion_pipeline.core.config import PERSON
from emotion_pipeline.core.registry import Stage, photo_tables
from emotion_pipeline.core.results import MergeResult
from emotion_pipeline.core.runner import StageRun
from emotion_pipeline.core.tables import empty_table, read_table, write_table
from emotion_pipeline.labelling import reviews, teachers

log = logging.getLogger(__name__)

BASE_COLUMNS = ["image_id", "source_key", "source_uri", "shard", "duplicate_of", "size_bytes"]


def merge(run: StageRun) -> MergeResult:
    """The stage function: join the per-photo tables onto the present photos.

    Args:
        run: the config, both storages and every present photo's manifest row (``runner.StageRun``).

    Returns:
        Photos per status and label, and the dataset's URI.

    Raises:
        AssertionError: a row was lost or duplicated (never expected: every photo has one row).
    """
    root = run.root
    tables = [(stage, _photo_table(run, stage)) for stage in photo_tables()]
    dataset = build_dataset(run.photos, tables)
    dataset["label"] = teachers.chosen_labels(dataset, run.config.teacher)  # the `teacher` knob's label
    dataset = apply_decisions(dataset, reviews.read_decisions(root), run.config.teacher)
    write_table(root, catalog.DATASET, dataset)
    result = MergeResult(images=len(dataset), statuses=dataset["status"].value_counts().to_dict(),
                         labels=dataset["label"].value_counts().to_dict(),
                         reviewed=int((dataset["label_source"] == PERSON).sum()),
                         dataset_uri=root.uri_for(f"{catalog.DATASET}.parquet"))
    log.info("merge: %d photos, %s", len(dataset), result.statuses)
    return result


def decisions_input(run: StageRun) -> str:
    """Merge's input besides the photo tables (registry ``inputs``): what people decided, as labels
    per (photo, content, face). Who decided and when do not change the dataset."""
    decisions = reviews.read_decisions(run.root)
    rows = sorted(f"{r.image_id}\0{r.content_id}\0{r.face_index}\0{r.label}" for r in decisions.itertuples())
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()[:20]


def apply_decisions(dataset: pd.DataFrame, decisions: pd.DataFrame, teacher: str) -> pd.DataFrame:
    """``dataset`` with people's decisions applied (module docstring): ``label_source`` and
    ``machine_label`` columns; "no usable face" is status ``no_face``, no label.

    A decision applies to an ``ok`` photo of the same content (``content_id`` is the photo's
    ``image_id``, its content id) and to its label face (``face_index`` = ``label_face_index``), or
    to the photo as a whole (``face_index`` empty) when no decision names that face."""
    dataset = dataset.assign(machine_label=dataset["label"],
                             label_source=dataset["label"].where(dataset["label"].isna(), teacher))
    if decisions.empty:
        return dataset
    current = decisions[decisions["image_id"] == decisions["content_id"]]
    label_face = dataset.reindex(columns=["label_face_index"])["label_face_index"]
    by_face = current.dropna(subset=["face_index"]).set_index(["image_id", "face_index"])
    by_photo = current[current["face_index"].isna()].set_index("image_id")
    for position, (image_id, face, status) in enumerate(zip(dataset["image_id"], label_face, dataset["status"])):
        if status != "ok":
            continue
        key = (image_id, int(face)) if pd.notna(face) else None
        if key in by_face.index:
            _apply(dataset, dataset.index[position], by_face.loc[key])
        elif image_id in by_photo.index:
            _apply(dataset, dataset.index[position], by_photo.loc[image_id])
    return dataset


def _apply(dataset: pd.DataFrame, row, decision: pd.Series) -> None:
    dataset.loc[row, "label_source"] = PERSON
    if decision["label"] == reviews.NO_FACE:
        dataset.loc[row, ["status", "error", "label"]] = ["no_face", "a person saw no usable face", None]
    else:
        dataset.loc[row, "label"] = decision["label"]


def build_dataset(present: pd.DataFrame, tables: list[tuple[Stage, pd.DataFrame]]) -> pd.DataFrame:
    """One row per present photo: the manifest's columns, then each table's, later verdicts winning.

    A table row belongs to a photo by name *and* content id, so the row of a file's earlier content
    (edited in place since) never matches. A photo a per-shard stage has not reached yet is
    ``pending``. Of several names with one content, the first by name is the original (as a run from
    scratch would have it), whichever name processed the content; the others are ``duplicate``."""
    # status, error and label are in every dataset, whichever stages have run (label: the training target).
    dataset = present[BASE_COLUMNS].assign(status=None, error=None, label=None,
                                           _processes=present["duplicate_of"].eq("").to_numpy())
    for stage, stage_table in tables:
        table = stage_table.drop(columns=["shard", "source_uri"], errors="ignore")
        table = table.drop_duplicates(["source_key", "image_id"], keep="last")
        shared = [c for c in table.columns if c in dataset.columns and c not in ("source_key", "image_id")]
        joined = dataset.merge(table, on=["source_key", "image_id"], how="left", validate="one_to_one",
                               suffixes=("", "__new"), indicator=True)
        for column in shared:
            new = joined.pop(f"{column}__new")
            has_value = new.notna() & (new != "")
            joined[column] = new.where(has_value, joined[column])
        if stage.per_shard:  # processed so far (status ok) but not by this stage yet: pending
            waiting = (joined.pop("_merge") == "left_only") & (joined["status"] == "ok")
            joined.loc[waiting, ["status", "error"]] = ["pending", f"waiting for {stage.name}"]
        else:
            joined.pop("_merge")
        dataset = joined
    dataset["status"] = dataset["status"].fillna("pending")
    dataset = _name_the_originals(dataset).drop(columns="_processes")
    first = ["image_id", "source_key", "source_uri", "shard", "status", "error"]
    dataset = dataset[first + [c for c in dataset.columns if c not in first]]
    if len(dataset) != len(present):
        raise AssertionError(f"merge lost or duplicated rows: {len(present)} photos -> {len(dataset)} rows")
    return dataset.sort_values(["shard", "source_key"]).reset_index(drop=True)


def _name_the_originals(dataset: pd.DataFrame) -> pd.DataFrame:
    """The first name of each content id gets the verdicts of the name that processed it (discovery's
    choice, in shard order); the other names are duplicates of it."""
    first_name = dataset.groupby("image_id")["source_key"].transform("min")
    identity = ("image_id", "source_key", "source_uri", "shard", "size_bytes", "_processes")
    verdicts = [c for c in dataset.columns if c not in identity]
    processed = dataset[dataset["_processes"]].set_index("image_id")
    takes_over = (dataset["source_key"] == first_name) & ~dataset["_processes"]
    if takes_over.any():
        dataset.loc[takes_over, verdicts] = processed.loc[dataset.loc[takes_over, "image_id"], verdicts].to_numpy()
    copies = dataset["source_key"] != first_name
    dataset.loc[copies, verdicts] = None
    dataset.loc[copies, ["status", "error", "duplicate_of"]] = pd.DataFrame(
        {"status": "duplicate", "error": "same content as " + first_name[copies], "duplicate_of": first_name[copies]})
    return dataset


def _photo_table(run: StageRun, stage: Stage) -> pd.DataFrame:
    """A stage's per-photo table: the tables of the present shards it reached, stacked (each has a row
    per member of its shard), or its one table; at least the key columns."""
    keys = ["source_key", "image_id"]
    if stage.per_shard:
        return run.tables(stage.name, missing_ok=True, empty=keys)
    table = read_table(run.root, stage.photo_table) if stage.photo_table else None
    return table if table is not None and not table.empty else empty_table(keys)
