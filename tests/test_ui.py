"""`emotion-pipeline ui` starts a real Airflow; a run triggered through its REST API runs its tasks."""
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pytest

from .conftest import FACES, FLICKR, copy_photos, flickr_names, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def call(url, token=None, body=None, method=None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


def test_ui_serves_the_dag_and_runs_it_from_the_rest_api(tmp_path):
    src = tmp_path / "photos"
    copy_photos(FLICKR, src, flickr_names(3))
    copy_photos(FACES, src, ["img1.jpg"])
    port = free_port()
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "emotion-pipeline"), "ui", "--port", str(port),
         "--source", str(src), "--root", str(tmp_path / "out"), "--airflow-home", str(tmp_path / "airflow")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True).start()
    try:
        deadline = time.monotonic() + 300
        while not any("Airflow UI:" in line for line in lines):
            assert process.poll() is None, "".join(lines[-50:])
            assert time.monotonic() < deadline, "".join(lines[-50:])
            time.sleep(1)
        banner = next(line for line in lines if "Airflow UI:" in line)
        user, password = banner.split("login:")[1].strip().split(" / ")
        base = f"http://localhost:{port}"
        token = call(f"{base}/auth/token", body={"username": user, "password": password})["access_token"]

        dag = call(f"{base}/api/v2/dags/emotion_pipeline", token)
        assert dag["is_paused"] is False
        pools = {p["name"]: p["slots"] for p in call(f"{base}/api/v2/pools", token)["pools"]}
        assert pools.get("gpu", 0) >= 1
        # The trigger form's defaults are the folders given to `ui`; the run overrides only limit.
        run = call(f"{base}/api/v2/dags/emotion_pipeline/dagRuns", token,
                   body={"logical_date": None, "conf": {"limit": 4, "shard_size": 2, "embed_weights": "none"}})
        run_url = f"{base}/api/v2/dags/emotion_pipeline/dagRuns/{run['dag_run_id']}"
        # Until the dataset is merged: the rest of the DAG through the REST API is test_scale_out's.
        deadline = time.monotonic() + 600
        while True:
            tasks = call(f"{run_url}/taskInstances", token)["task_instances"]
            states = {(t["task_id"], t["map_index"]): t["state"] for t in tasks}
            assert not {"failed", "upstream_failed"} & set(states.values()), states
            if states.get(("merge", -1)) == "success":
                break
            assert time.monotonic() < deadline, states
            time.sleep(3)
        annotated = [t for t in tasks if t["task_id"] == "annotate"]
        assert len(annotated) == 2 and all(t["state"] == "success" and t["pool"] == "gpu" for t in annotated)
        assert (tmp_path / "out" / "datasets" / "final_emotion_dataset.parquet").is_file()
        # The merged dataset is an Airflow asset: the run posted an event with what it made.
        events = call(f"{base}/api/v2/assets/events?source_dag_id=emotion_pipeline"
                      f"&source_run_id={quote(run['dag_run_id'])}", token)["asset_events"]
        (dataset_event,) = [e for e in events if e["name"] == "emotion_dataset"]
        assert dataset_event["extra"]["images"] == 4 and dataset_event["extra"]["skipped"] is False
        assert dataset_event["extra"]["dataset_uri"].endswith("final_emotion_dataset.parquet")
    finally:
        stop_tree(process)


def stop_tree(process: subprocess.Popen) -> None:
    """Stop `ui` gracefully, then make sure no Airflow component it started outlives the test."""
    import psutil

    children = psutil.Process(process.pid).children(recursive=True)
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=90)
    except subprocess.TimeoutExpired:
        process.kill()
    _, alive = psutil.wait_procs(children, timeout=30)
    for child in alive:
        child.kill()
