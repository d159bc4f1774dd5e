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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pandas as pd

from emotion_pipeline.core import catalog
from emotion_pipeline.core.config import PipelineConfig
from emotion_pipeline.core.errors import MissingUpstream
from emotion_pipeline.core.manifest import load_manifest, shard_fingerprint, shard_rows
from emotion_pipeline.core.registry import LEGACY_DEFAULTS, STAGES, Stage, covered_by, stage
from emotion_pipeline.core.results import StageResult
from emotion_pipeline.core.storage import Storage, open_storage
from emotion_pipeline.core.tables import read_table, stack_tables, write_json

ResultT = TypeVar("ResultT", bound=StageResult)


@dataclass
class StageRun:
    """What a stage function gets: the config, both storages, and the photos it works on."""
    stage: Stage
    config: PipelineConfig
    source: Storage
    root: Storage
    # Manifest rows: the shard's members, or every present photo (filled in before the stage runs).
    photos: pd.DataFrame = field(default_factory=pd.DataFrame)
    shard: int | None = None
    fingerprint: str = ""  # of this input (used e.g. to name the tuner's search)
    run_id: str = ""  # the Airflow run (or other caller) that runs it, for logs that record it
    manifest: pd.DataFrame | None = field(default=None, repr=False)  # every row, present or not

    @property
    def shard_number(self) -> int:
        """``shard``, for a per-shard stage: it always has one (``run_stage`` checks)."""
        if self.shard is None:
            raise ValueError(f"stage {self.stage.name} runs on the whole dataset, not on a shard")
        return self.shard

    def table(self, stage_name: str, table: str | None = None) -> pd.DataFrame:
        """The table a per-shard upstream stage wrote for this shard (its per-photo table, or
        ``table``); ``MissingUpstream`` when it has not run."""
        return self._shard_table(stage_name, self.shard_number, table)

    def tables(self, stage_name: str, table: str | None = None, *, shards: Iterable[int] | None = None,
               missing_ok: bool = False, empty: Mapping[str, Any] | Sequence[str] | None = None) -> pd.DataFrame:
        """``table`` for every present shard (or each of ``shards``), stacked in shard order.

        Args:
            stage_name, table: as for ``table``.
            shards: the shards to read, in order (default: every present shard).
            missing_ok: leave out a shard the stage has not written (default: ``MissingUpstream``).
            empty: the columns (names, or names to dtypes) of the table returned when there is none.
        """
        shards = self.present_shards() if shards is None else shards
        return stack_tables((self._shard_table(stage_name, s, table, missing_ok) for s in shards), empty)

    def _shard_table(self, stage_name: str, shard: int, table: str | None = None,
                     missing_ok: bool = False) -> pd.DataFrame | None:
        upstream = STAGES[stage_name]
        name = table or upstream.photo_table
        if name is None:
            raise ValueError(f"stage {stage_name} has no per-photo table: name the table to read")
        found = read_table(self.root, catalog.shard_table(upstream.folder, shard, name))
        if found is None and not missing_ok:
            raise MissingUpstream(f"shard {shard} has no {upstream.folder}/{name} yet: "
                                  f"run the {stage_name} stage first")
        return found

    def upstream_result(self, stage_name: str, kind: type[ResultT]) -> ResultT | None:
        """The recorded result of a whole-dataset upstream stage, a ``kind`` (the registry's result
        class for it); None when it has not completed."""
        marker = catalog.read_done(self.root, STAGES[stage_name].folder)
        return None if marker is None else kind.from_dict(marker["summary"])

    def present_shards(self) -> list[int]:
        manifest = self.manifest if self.manifest is not None else load_manifest(self.root)
        return sorted(int(s) for s in manifest.loc[manifest["present"], "shard"].unique())


def run_stage(  # noqa: PLR0913 (the one entry point: DAG, CLI, tests and notebooks pass these)
    name: str, config: PipelineConfig, shard: int | None = None, *,
    source: Storage | None = None, root: Storage | None = None, run_id: str = "",
) -> StageResult:
    """Run stage ``name`` (for ``shard`` if it is a per-shard stage) unless its output is up to date.

    Args:
        name: a stage of the registry, by its name.
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
    run = StageRun(spec, config, source or open_storage(config.source), root or open_storage(config.root),
                   shard=shard, run_id=run_id)
    if spec.lease:  # a second caller waits, then finds the marker the first one wrote
        with run.root.lease(spec.lease):
            return _run(_prepare(run))
    return _run(_prepare(run))


def _run(run: StageRun) -> StageResult:
    spec, root, shard = run.stage, run.root, run.shard
    if spec.marker:
        if shard is not None:
            root.sweep_temp_files(catalog.shard_folder(spec.folder, shard))  # a killed attempt's files
        marker = catalog.read_done(root, spec.folder, shard)
        forced = bool(spec.force and getattr(run.config, spec.force))
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
    run = _prepare(StageRun(spec, config, root, root, shard=shard, manifest=manifest))
    marker = catalog.read_done(root, spec.folder, shard)
    return marker is not None and marker.get("fingerprint") == run.fingerprint


def _prepare(run: StageRun) -> StageRun:
    """``run`` with its photos (read from its manifest, loaded when it has none) and its fingerprint."""
    manifest = load_manifest(run.root) if run.manifest is None else run.manifest
    photos = shard_rows(manifest, run.shard) if run.shard is not None else manifest[manifest["present"]]
    run.manifest, run.photos = manifest, photos.reset_index(drop=True)
    run.fingerprint = fingerprint(run) if run.stage.marker else ""
    return run


def fingerprint(run: StageRun) -> str:
    """The stage's input, as its declaration says: photos, knobs, covered upstream markers, inputs."""
    spec = run.stage
    params: dict[str, Any] = {knob: getattr(run.config, knob) for knob in spec.knobs
                              if knob not in LEGACY_DEFAULTS or getattr(run.config, knob) != LEGACY_DEFAULTS[knob]}
    for name in covered_by(spec):
        upstream = STAGES[name]
        shards: Sequence[int | None]
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
