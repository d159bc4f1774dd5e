"""Backfill by date the way Airflow users do it: `airflow backfill create` on the multi-process Celery
Airflow of the scale-out test, with the deployment's time schedule and a batch folder per date."""
from datetime import UTC, datetime

import pandas as pd
import pytest

from tests.airflow_cluster import AirflowCluster
from tests.conftest import FACES, copy_photos
from tests.orchestration.test_scale_out import DAG, DEPLOYMENT_DEFAULTS, summary, when, xcom

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]

DATES = ["2026-11-01", "2026-11-02", "2026-11-03"]


def test_airflow_backfill_create_processes_each_dates_batch_once_in_order(tmp_path):
    src = tmp_path / "photos"
    for number, date in enumerate(DATES):  # close-ups: every photo gets a label
        copy_photos(FACES, src / date, [f"img{i}.jpg" for i in range(1 + 5 * number, 6 + 5 * number)])
    (src / "not-a-batch.jpg").write_bytes((FACES / "img20.jpg").read_bytes())  # outside every batch folder
    root = tmp_path / "out"

    cluster = AirflowCluster(tmp_path / "airflow", str(src), str(root))
    # A deployment's .env: runs every day at midnight UTC (or on an asset event), each reading the
    # folder named after its date.
    cluster.env.update({**DEPLOYMENT_DEFAULTS, "EMOTION_PIPELINE_SCHEDULE": "0 0 * * *",
                        "EMOTION_PIPELINE_BATCH": "{{ ds }}",
                        # The bookkeeping of batches is what is tested: no class reaches 1000 rows,
                        # so no run spends minutes training (test_scale_out trains on this cluster).
                        "EMOTION_PIPELINE_MIN_ROWS_PER_CLASS": "1000"})
    with cluster:
        # Unpaused with a schedule, the DAG first runs for today, whose folder holds nothing yet:
        # a run with nothing to do, and it succeeds.
        today = cluster.wait_for_runs(DAG, "scheduled", 1)[0]
        state, tasks = cluster.wait_for_run(DAG, today["dag_run_id"])
        assert state == "success", summary(tasks)
        batch = cluster.xcom(DAG, today["dag_run_id"], "discover", key="summary")["batch"]
        assert batch == datetime.now(UTC).strftime("%Y-%m-%d")

        cluster.airflow("backfill", "create", "--dag-id", DAG, "--from-date", DATES[0], "--to-date", DATES[-1],
                        "--max-active-runs", "1")
        runs = sorted(cluster.wait_for_runs(DAG, "backfill", len(DATES)), key=lambda r: r["logical_date"])
        assert [r["logical_date"][:10] for r in runs] == DATES
        finished = []
        for run in runs:
            state, tasks = cluster.wait_for_run(DAG, run["dag_run_id"])
            assert state == "success", (run["dag_run_id"], summary(tasks))
            finished.append((run, tasks))

        # In order: each date's run ended before the next one's first task started.
        spans = [(min(when(t["start_date"]) for t in tasks if t["start_date"]),
                  max(when(t["end_date"]) for t in tasks if t["end_date"])) for _, tasks in finished]
        assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:])), spans
        # Once: each date's run discovered and resized its own five photos, and nothing else.
        for date, (run, tasks) in zip(DATES, finished):
            found = cluster.xcom(DAG, run["dag_run_id"], "discover", key="summary")
            assert found["batch"] == date and found["new_images"] == 5, found
            resized = [xcom(cluster, run["dag_run_id"], "resize", t["map_index"])
                       for t in tasks if t["task_id"] == "resize" and t["state"] == "success"]
            assert sum(r["resized"] for r in resized) == 5, resized
        # The dataset holds every batch (and only batches: the photo outside them was never listed).
        dataset = pd.read_parquet(root / "datasets/final_emotion_dataset.parquet")
        assert sorted(dataset["source_key"]) == sorted(f"{d}/img{i}.jpg" for n, d in enumerate(DATES)
                                                       for i in range(1 + 5 * n, 6 + 5 * n))
        assert (dataset["status"] == "ok").sum() >= 12
