"""Scale-out proof: the DAG on a real multi-process Airflow (CeleryExecutor, PostgreSQL, Redis).

The cluster is docker-compose.yml's, minus Docker: api-server, scheduler, dag-processor, a default-queue
worker and a `gpu`-queue worker, all separate processes (tests/airflow_cluster.py). The run is
triggered through /api/v2 with params, the backfill by an asset event, as a user would.
"""
import os
import signal
import time
from datetime import datetime

import numpy as np
import pandas as pd
import pytest

from emotion_pipeline.core.config import PipelineConfig
from emotion_pipeline.stages.all import build_dataset_and_features
from tests.airflow_cluster import AirflowCluster
from tests.conftest import FACES, FLICKR, copy_photos, flickr_names

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]

DAG = "emotion_pipeline"
# Defaults a deployment sets in its .env; asset-triggered runs use them (no ImageNet download here:
# random, seeded weights; a short search). The REST-triggered run passes its own params on top.
DEPLOYMENT_DEFAULTS = {"EMOTION_PIPELINE_EMBED_WEIGHTS": "none", "EMOTION_PIPELINE_TUNER_MAX_EPOCHS": "2",
                       "EMOTION_PIPELINE_SHAP_IMAGES": "1", "EMOTION_PIPELINE_SHAP_IMAGE_EVALS": "40",
                       "EMOTION_PIPELINE_MIN_ROWS_PER_CLASS": "3",  # a few dozen photos: small classes train too
                       "EMOTION_PIPELINE_PROMOTE_BELOW_BASELINE": "true"}  # random weights may lose to the baseline
RUN_CONF = {"shard_size": 10, "drift_threshold": 0.3}


def test_celery_cluster_routes_gpu_tasks_holds_the_pool_and_matches_the_local_run(tmp_path):
    src = tmp_path / "photos"
    copy_photos(FLICKR, src, flickr_names(16))
    copy_photos(FACES, src, [f"img{i}.jpg" for i in range(1, 13)])  # close-ups: enough labels to train
    root = tmp_path / "cluster-out"

    cluster = AirflowCluster(tmp_path / "airflow", str(src), str(root), gpu_slots=1)
    cluster.env.update(DEPLOYMENT_DEFAULTS)
    with cluster:
        run = cluster.call(f"/api/v2/dags/{DAG}/dagRuns", {"logical_date": None, "conf": RUN_CONF})
        # A worker's task process dies (SIGKILL, as the OOM killer or a preempted VM would) while
        # annotating shard 1: Airflow's own retry must finish the shard.
        killed = kill_when_running(cluster, run["dag_run_id"], "annotate", 1)
        state, tasks = cluster.wait_for_run(DAG, run["dag_run_id"])
        assert state == "success", summary(tasks)
        retried = next(t for t in tasks if t["task_id"] == "annotate" and t["map_index"] == 1)
        assert killed and retried["try_number"] == 2 and retried["state"] == "success"
        assert sorted(t["map_index"] for t in tasks if t["task_id"] == "annotate") == [0, 1, 2]
        assert check_routing(cluster, run["dag_run_id"], tasks) >= {"annotate", "embed", "check_gold", "evaluate"}
        check_gpu_pool_never_overlapped(tasks)
        trained = xcom(cluster, run["dag_run_id"], "train")
        assert trained["trained"] is True and trained["model_version"] == "1"

        # The same photos through the same stage functions in one process give the same outputs.
        local = tmp_path / "local-out"
        build_dataset_and_features(PipelineConfig(source=str(src), root=str(local), shard_size=10,
                                                  embed_weights="none"))
        pd.testing.assert_frame_equal(dataset(root), dataset(local), rtol=1e-5)
        assert np.allclose(np.load(root / "features/image_vectors.npy"), np.load(local / "features/image_vectors.npy"),
                           atol=1e-4)
        assert pd.read_parquet(root / "features/image_index.parquet").equals(
            pd.read_parquet(local / "features/image_index.parquet"))

        # Backfill: a new batch lands and its producer posts an asset event; only the new shard runs
        # (a new shard of its own, whatever the default shard size: shards are append-only).
        copy_photos(FACES, src / "batch2", [f"img{i}.jpg" for i in range(13, 19)])
        asset = cluster.call("/api/v2/assets?name_pattern=emotion_photos")["assets"][0]
        cluster.call("/api/v2/assets/events", {"asset_id": asset["id"], "extra": {"batch": "batch2"}})
        # ...and someone triggers a run by hand at the same moment: the two take turns on the root.
        manual = cluster.call(f"/api/v2/dags/{DAG}/dagRuns", {"logical_date": None, "conf": {}})
        backfill = wait_for_asset_run(cluster)
        state, tasks = cluster.wait_for_run(DAG, backfill)
        assert state == "success", summary(tasks)
        manual_state, manual_tasks = cluster.wait_for_run(DAG, manual["dag_run_id"])
        assert manual_state == "success", summary(manual_tasks)
        # Of the two, the one that ran first annotated and embedded the new shard: on the gpu worker.
        gpu_tasks = check_routing(cluster, backfill, tasks) | check_routing(cluster, manual["dag_run_id"], manual_tasks)
        assert gpu_tasks >= {"annotate", "embed"}
        check_gpu_pool_never_overlapped(tasks)
        # Whichever ran second found nothing left: no shard work, no second training on the same data.
        runs = ((backfill, tasks), (manual["dag_run_id"], manual_tasks))
        shard_work = [(run_id, t) for run_id, ts in runs for t in ts
                      if t["task_id"] in ("resize", "annotate", "embed") and t["state"] == "success"]
        assert sorted(t["task_id"] for _, t in shard_work) == ["annotate", "embed", "resize"]
        assert all(xcom(cluster, r, t["task_id"], t["map_index"])["shard"] == 3 for r, t in shard_work)
        versions = {xcom(cluster, r, "train")["model_version"] for r in (backfill, manual["dag_run_id"])}
        assert versions == {"2"}
        merged = dataset(root)
        assert len(merged) == 28 + 6 and (merged["shard"] == 3).sum() == 6
        assert set(merged[merged["shard"] < 3]["image_id"]) == set(dataset(local)["image_id"])
    assert all(p.poll() is not None for p in cluster.processes.values())  # nothing outlives the test


def kill_when_running(cluster: AirflowCluster, run_id: str, task_id: str, map_index: int,
                      after: float = 3.0, timeout: float = 600) -> bool:
    """SIGKILL the task's process `after` seconds into its first try (TensorFlow and the models are
    loading or the photos being annotated: nothing of the shard is written yet, or only part)."""
    path = f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances/{task_id}/{map_index}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ti = cluster.call(path)
        except RuntimeError:  # not mapped yet
            ti = {}
        if ti.get("state") == "running" and ti.get("pid") and ti.get("try_number") == 1:
            time.sleep(after)
            os.kill(ti["pid"], signal.SIGKILL)
            return True
        time.sleep(0.3)
    return False


def check_routing(cluster: AirflowCluster, run_id: str, tasks: list[dict]) -> set[str]:
    """Every `gpu`-queue task ran on the gpu worker and no other task did, by Airflow's record and
    by the worker name each task wrote into its own output. Returns the gpu tasks that ran."""
    ran = [t for t in tasks if t["state"] == "success"]
    gpu = {(t["task_id"], t["map_index"]) for t in ran if t["queue"] == "gpu"}
    for t in ran:
        expected = "gpu-worker" if (t["task_id"], t["map_index"]) in gpu else "cpu-worker"
        assert t["hostname"] == expected, (t["task_id"], t["map_index"], t["hostname"])
        if t["task_id"] not in ("discover", "alert_on_drift"):  # those two return no dict
            assert xcom(cluster, run_id, t["task_id"], t["map_index"])["worker"] == expected
    return {task_id for task_id, _ in gpu}


def check_gpu_pool_never_overlapped(tasks: list[dict]) -> None:
    """One slot in the `gpu` pool: no two gpu tasks ran at once (the gpu worker could run two)."""
    spans = sorted((when(t["start_date"]), when(t["end_date"]), t["task_id"])
                   for t in tasks if t["pool"] == "gpu" and t["state"] == "success")
    assert len(spans) >= 2
    for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
        assert start >= end, f"{second} started before {first} ended"


def xcom(cluster: AirflowCluster, run_id: str, task_id: str, map_index: int = -1):
    return cluster.xcom(DAG, run_id, task_id, map_index)


def wait_for_asset_run(cluster: AirflowCluster) -> str:
    """The run the asset event started: the scheduler creates it once no other run of the DAG is active
    (max_active_runs=1), so it may wait for the manual one."""
    return cluster.wait_for_runs(DAG, "asset_triggered", timeout=900)[0]["dag_run_id"]


def dataset(root) -> pd.DataFrame:
    frame = pd.read_parquet(root / "datasets/final_emotion_dataset.parquet")
    frame["processed_uri"] = frame["processed_uri"].str.replace(str(root), "<root>", regex=False)
    return frame.sort_values("image_id").reset_index(drop=True)


def summary(tasks: list[dict]) -> list:
    return [(t["task_id"], t["map_index"], t["state"], t["hostname"]) for t in tasks]


def when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
