"""Runs any registered stage with the one done-marker contract (see ``registry``).

    run_stage("annotate", config, shard=3)   # from the DAG, the CLI, a test or a notebook

opens the storages, reads the shard's members (or the present photos), computes the stage's
fingerprint, returns the recorded result when the marker matches, and otherwise calls the stage
function with a ``StageRun`` and records its result in the marker, last, so a crash before it leaves
the stage to run again.
"""
from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from emotion_pipeline.core import catalog
from emotion_pipeline.core.config import PipelineConfig
from emotion_pipeline.core.errors import MissingUpstream
from emotion_pipeline.core.manifest import load_manifest, shard_fingerprint, shard_rows
from emotion_pipeline.core.registry import LEGACY_DEFAULTS, STAGES, Stage, covered_by, stage
from emotion_pipeline.core.results import StageResult
from emotion_pipeline.core.storage import Storage, open_storage
from emotion_pipeline.core.tables import read_table, write_json


@dataclass
class StageRun:
    """What a stage function gets: the config, both storages, and the photos it works on."""
    stage: Stage
    config: PipelineConfig
    source: Storage
    root: Storage
    photos: pd.DataFrame  # manifest rows: the shard's members, or every present photo
    shard: int | None = None
    fingerprint: str = ""  # of this input (used e.g. to name the tuner's search)
    run_id: str = ""  # the Airflow run (or other caller) that runs it, for logs that record it
    manifest: pd.DataFrame | None = field(default=None, repr=False)  # every row, present or not

    def table(self, stage_name: str, table: str | None = None) -> pd.DataFrame:
        """A per-photo table an upstream stage wrote for this shard; ``MissingUpstream`` when it has not run."""
        upstream = STAGES[stage_name]
        name = table or upstream.photo_table
        found = read_table(self.root, catalog.shard_table(upstream.folder, self.shard, name))
        if found is None:
            raise MissingUpstream(f"shard {self.shard} has no {upstream.folder}/{name} yet: "
                               f"run the {stage_name} stage first")
        return found

    def upstream_result(self, stage_name: str) -> StageResult | None:
        """The recorded result of a whole-dataset upstream stage (None when it has not completed)."""
        upstream = STAGES[stage_name]
        marker = catalog.read_done(self.root, upstream.folder)
        return None if marker is None else upstream.result.from_dict(marker["summary"])

    def present_shards(self) -> list[int]:
        manifest = self.manifest if self.manifest is not None else load_manifest(self.root)
        return sorted(int(s) for s in manifest.loc[manifest["present"], "shard"].unique())


def run_stage(
    name: str, config: PipelineConfig, shard: int | None = None, *,
    source: Storage | None = None, root: Storage | None = None, run_id: str = "",
) -> StageResult:
    """Run stage ``name`` (for ``shard`` if it is a per-shard stage) unless its output is up to date.

    Args:
        name: a stage of the registry (or a CLI shorthand such as ``drift``).
        config: the pipeline's settings.
        shard: the shard, for a per-shard stage; None for a whole-dataset stage.
        source, root: open storages to reuse (default: opened from ``config``).
        run_id: the caller's run (Airflow's run id), for stages that log it.

    Returns:
        The stage's result; ``skipped`` is True when its done marker matched and nothing ran.

    Raises:
        KeyError: no such stage, or the shard is not in the manifest.
        ValueError: a per-shard stage without a shard, or a shard for a whole-dataset stage.
    """
    spec = stage(name)
    if spec.per_shard != (shard is not None):
        raise ValueError(f"stage {spec.name} {'needs' if spec.per_shard else 'takes no'} shard")
    source = source or open_storage(config.source)
    root = root or open_storage(config.root)
    if spec.lease:  # a second caller waits, then finds the marker the first one wrote
        with root.lease(spec.lease):
            return _run(spec, config, source, root, shard, run_id)
    return _run(spec, config, source, root, shard, run_id)


def _run(spec: Stage, config: PipelineConfig, source: Storage, root: Storage, shard: int | None,
         run_id: str) -> StageResult:
    run = _prepare(spec, config, source, root, shard)
    run.run_id = run_id
    if spec.marker:
        if shard is not None:
            root.sweep_temp_files(catalog.shard_folder(spec.folder, shard))  # a killed attempt's files
        marker = catalog.read_done(root, spec.folder, shard)
        forced = bool(spec.force and getattr(config, spec.force))
        if marker and marker.get("fingerprint") == run.fingerprint and not forced:
            result = spec.result.from_dict(marker["summary"])
            result.stage, result.skipped = spec.name, True
            return result
    result = _function(spec)(run)
    result.stage = spec.name
    if spec.marker:
        summary = {k: v for k, v in result.to_dict().items() if k != "skipped"}
        write_json(root, catalog.done_marker(spec.folder, shard), {"fingerprint": run.fingerprint, "summary": summary})
    return result


def is_complete(spec: Stage, config: PipelineConfig, root: Storage, manifest: pd.DataFrame,
                shard: int | None = None) -> bool:
    """Whether ``spec`` is done (for ``shard``) with exactly the current input: no work left."""
    run = _prepare(spec, config, root, root, shard, manifest)
    marker = catalog.read_done(root, spec.folder, shard)
    return bool(marker) and marker.get("fingerprint") == run.fingerprint


def _prepare(spec: Stage, config: PipelineConfig, source: Storage, root: Storage, shard: int | None,
             manifest: pd.DataFrame | None = None) -> StageRun:
    manifest = load_manifest(root) if manifest is None else manifest
    photos = shard_rows(manifest, shard) if shard is not None else manifest[manifest["present"]]
    run = StageRun(spec, config, source, root, photos.reset_index(drop=True), shard, manifest=manifest)
    run.fingerprint = fingerprint(run) if spec.marker else ""
    return run


def fingerprint(run: StageRun) -> str:
    """The stage's input, as its declaration says: photos, knobs, covered upstream markers, inputs."""
    spec = run.stage
    params: dict[str, Any] = {knob: getattr(run.config, knob) for knob in spec.knobs
                              if knob not in LEGACY_DEFAULTS or getattr(run.config, knob) != LEGACY_DEFAULTS[knob]}
    for name in covered_by(spec):
        upstream = STAGES[name]
        if not upstream.per_shard:
            shards = [None]
        else:  # the same shard, or every present shard for a whole-dataset stage
            shards = [run.shard] if run.shard is not None else run.present_shards()
        for s in shards:
            params[f"{name}/{s}"] = marker_digest(run.root, upstream, s)
    if spec.inputs:
        params["inputs"] = _function(spec, spec.inputs)(run)
    return shard_fingerprint(run.photos if spec.photos else run.photos.iloc[0:0], **params)


def marker_digest(root: Storage, spec: Stage, shard: int | None) -> str | None:
    """Identifies one completed output: its marker's input fingerprint and recorded result (a retrain
    on the same input records a new model version, which downstream stages must see)."""
    marker = catalog.read_done(root, spec.folder, shard)
    if marker is None:
        return None
    return hashlib.sha256(json.dumps(marker, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _function(spec: Stage, target: str | None = None) -> Callable[..., Any]:
    module, _, function = (target or spec.function).partition(":")
    return getattr(importlib.import_module(module), function)
