"""Every stage in order, in this process, without Airflow: for notebooks, scripts and tests.

The DAG is the way to run the pipeline (retries, parallel shards, alerts); this is the same calls
one after the other.
"""
from __future__ import annotations

from typing import Any

from ..config import PipelineConfig
from . import annotate, discover, drift, embed, evaluate, gold, merge, resize, train


def run_all_stages(config: PipelineConfig) -> dict[str, Any]:
    results = build_dataset_and_features(config)
    gold_check = gold.annotate_gold(config) if config.gold else None
    trained = train.train_classifier(config)
    evaluated = evaluate.evaluate_model(config, trained)
    return {**results, "gold": gold_check, "train": trained, "evaluate": evaluated}


def build_dataset_and_features(config: PipelineConfig) -> dict[str, Any]:
    """Everything before training: the final dataset and the assembled vectors."""
    found = discover.discover_images(config)
    for shard in found["pending"]:
        resize.resize_shard(config, shard)
        annotate.annotate_shard(config, shard)
        embed.embed_shard(config, shard)
    report = drift.check_label_drift(config, run_id="in-process")
    merged = merge.merge_dataset(config)
    features = embed.assemble_features(config)
    return {"discover": found, "drift": report, "merge": merged, "features": features}
