"""Stage: ``datasets/final_emotion_dataset.parquet`` (+ CSV twin), one row per discovered photo.

The manifest's present rows, joined with the per-photo table of every stage that declares one in the
registry (resize's metadata, annotate's annotations, dedupe's verdicts), in pipeline order. Every
photo is accounted for: its ``status`` (and ``error``) is the latest stage's verdict where that stage
has one (``ok``, ``no_face``, ``duplicate``, ``near_duplicate``, ``corrupt``, ``unsupported``,
``empty``, ``too_large``, ``missing``), or ``pending`` when no stage has reached its shard yet. A
column several tables share (e.g. ``duplicate_of``) takes the latest non-empty value the same way.
"""
from __future__ import annotations

import logging

import pandas as pd

from emotion_pipeline.core import catalog
from emotion_pipeline.core.config import PipelineConfig
from emotion_pipeline.core.registry import Stage, photo_tables
from emotion_pipeline.core.results import MergeResult
from emotion_pipeline.core.runner import StageRun, run_stage
from emotion_pipeline.core.storage import Storage
from emotion_pipeline.core.tables import read_table, write_table
from emotion_pipeline.labelling import teachers

log = logging.getLogger(__name__)

BASE_COLUMNS = ["image_id", "source_key", "source_uri", "shard", "duplicate_of", "size_bytes"]


def merge_dataset(config: PipelineConfig, *, root: Storage | None = None) -> MergeResult:
    """``run_stage("merge", config)``: write the final dataset unless it is up to date."""
    return run_stage("merge", config, root=root)


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
    tables = [(stage, _photo_table(root, stage, run.present_shards())) for stage in photo_tables()]
    dataset = build_dataset(run.photos, tables)
    dataset["label"] = teachers.chosen_labels(dataset, run.config.teacher)  # the `teacher` knob's label
    write_table(root, catalog.DATASET, dataset)
    result = MergeResult(images=len(dataset), statuses=dataset["status"].value_counts().to_dict(),
                         labels=dataset["label"].value_counts().to_dict(),
                         dataset_uri=root.uri_for(f"{catalog.DATASET}.parquet"))
    log.info("merge: %d photos, %s", len(dataset), result.statuses)
    return result


def build_dataset(present: pd.DataFrame, tables: list[tuple[Stage, pd.DataFrame]]) -> pd.DataFrame:
    """One row per present photo: the manifest's columns, then each table's, later verdicts winning.

    A table row belongs to a photo by name *and* content id, so the row of a file's earlier content
    (edited in place since) never matches. A photo a per-shard stage has not reached yet is
    ``pending``. Of several names with one content, the first by name is the original (as a run from
    scratch would have it), whichever name processed the content; the others are ``duplicate``."""
    # status, error and label are in every dataset, whichever stages have run (label: the training target).
    dataset = present[BASE_COLUMNS].assign(status=None, error=None, label=None,
                                           _processes=present["duplicate_of"].eq("").to_numpy())
    for stage, table in tables:
        table = table.drop(columns=["shard", "source_uri"], errors="ignore")
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


def _photo_table(root: Storage, stage: Stage, shards: list[int]) -> pd.DataFrame:
    """A stage's per-photo table: its shards' tables stacked, or its one table (at least a key column)."""
    if stage.per_shard:
        found = [read_table(root, catalog.shard_table(stage.folder, s, stage.photo_table)) for s in shards]
    else:
        found = [read_table(root, stage.photo_table)]
    found = [t for t in found if t is not None and not t.empty]
    return pd.concat(found, ignore_index=True) if found else pd.DataFrame(columns=["source_key", "image_id"])
