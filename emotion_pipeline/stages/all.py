"""Every stage in order, in this process, without Airflow: for notebooks, scripts and tests.

The DAG is the way to run the pipeline (retries, parallel shards, alerts); this is the same calls,
read from the registry, one after the other.
"""
from __future__ import annotations

from collections.abc import Callable

from emotion_pipeline.core.config import PipelineConfig
from emotion_pipeline.core.registry import STAGES
from emotion_pipeline.core.results import DiscoverResult, StageResult
from emotion_pipeline.core.runner import run_stage
from emotion_pipeline.core.storage import Storage

# A stage's name and shard -> the (source, root) storages it runs with. Default: opened from the config;
# a test passes wrapped storages to see what each stage reads.
StoragesFor = Callable[[str, int | None], tuple[Storage, Storage]]

MODEL_STAGES = ("check_gold", "train", "evaluate")  # everything else builds the dataset and the vectors


def run_all_stages(config: PipelineConfig, storages_for: StoragesFor | None = None) -> dict[str, StageResult]:
    """Every registered stage; returns each one's result by stage name (per-shard stages: the last shard's)."""
    return run_stages(config, list(STAGES), storages_for)


def build_dataset_and_features(config: PipelineConfig) -> dict[str, StageResult]:
    """Everything before training: the final dataset and the assembled vectors."""
    return run_stages(config, [name for name in STAGES if name not in MODEL_STAGES])


def run_stages(config: PipelineConfig, names: list[str],
               storages_for: StoragesFor | None = None) -> dict[str, StageResult]:
    """The named stages in registry order; per-shard stages run shard by shard over the pending shards."""
    results: dict[str, StageResult] = {}
    pending: list[int] = []
    for name, stage in STAGES.items():
        if name not in names:
            continue
        for shard in pending if stage.per_shard else [None]:
            source, root = storages_for(name, shard) if storages_for else (None, None)
            results[name] = run_stage(name, config, shard, source=source, root=root, run_id="in-process")
        discovered = results[name] if name == "discover" else None
        if isinstance(discovered, DiscoverResult):
            pending = discovered.pending
    return results
