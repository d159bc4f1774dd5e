"""Errors no retry can fix fail their task at once, with the reason, through the real DAG."""
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import FLICKR, copy_photos, flickr_names
from tests.pipeline_run import CLI, _without_mlflow_uri, airflow_home

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def test_a_bucket_that_does_not_exist_fails_discover_once_without_retries(tmp_path, gcs_emulator):
    """It used to be retried twice with backoff (about 100 s) although no retry could create it."""
    summary_path = tmp_path / "summary.json"
    done = subprocess.run(
        [CLI, "run", "--source", "gs://no-such-bucket-anywhere/photos", "--root", str(tmp_path / "out"),
         "--airflow-home", str(airflow_home(tmp_path / "airflow")), "--summary-json", str(summary_path),
         "--embed-weights", "none"],
        env={**_without_mlflow_uri(os.environ), "STORAGE_EMULATOR_HOST": gcs_emulator},
        capture_output=True, text=True, timeout=500,
    )
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    discover = next(t for t in summary["tasks"] if t["task"] == "discover")
    assert discover["state"] == "failed" and discover["tries"] == 1, discover
    check_a_failed_run_is_readable(done, summary, "discover", "does not exist")


def test_weights_that_cannot_be_loaded_fail_discover_before_any_photo_is_processed(tmp_path):
    """The weights were first loaded at embed, after resize and annotate had run on every photo."""
    src = tmp_path / "photos"
    copy_photos(FLICKR, src, flickr_names(2))
    summary_path = tmp_path / "summary.json"
    done = subprocess.run(
        [CLI, "run", "--source", str(src), "--root", str(tmp_path / "out"), "--airflow-home",
         str(airflow_home(tmp_path / "airflow")), "--summary-json", str(summary_path),
         "--embed-weights", str(tmp_path / "no-such-resnet50.h5")],
        env=_without_mlflow_uri(os.environ), capture_output=True, text=True, timeout=500,
    )
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    discover = next(t for t in summary["tasks"] if t["task"] == "discover")
    assert discover["state"] == "failed" and discover["tries"] == 1, discover
    assert "ResNet50 weights" in discover["error"] and "--embed-weights" in discover["error"]
    check_a_failed_run_is_readable(done, summary, "discover", "MissingWeightsError")
    assert not (tmp_path / "out" / "processed").exists()  # nothing was resized, let alone annotated


def test_imagenet_weights_out_of_reach_are_found_out_without_loading_tensorflow(tmp_path, monkeypatch):
    from emotion_pipeline.labelling.faces import MissingWeightsError
    from emotion_pipeline.modeling import embedding

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # no cached copy
    monkeypatch.setattr(embedding, "IMAGENET_URL", "http://127.0.0.1:9/resnet50.h5")  # nothing listens
    with pytest.raises(MissingWeightsError, match=r"ResNet50 weights 'imagenet'.*127\.0\.0\.1:9.*--embed-weights"):
        embedding.check_weights("imagenet")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / embedding.IMAGENET_FILE).write_bytes(b"cached")
    embedding.check_weights("imagenet")  # a cached copy needs no network
    embedding.check_weights("none")


def check_a_failed_run_is_readable(done, summary: dict, task: str, reason: str) -> None:
    """A failed run fits on a screen, ends with the failed task and why, and leaves the rest of the
    log in a file. It used to print ~600 lines (a 1-3 KB 'No tasks to run. unrunnable tasks' line
    every second while waiting for a retry) and end with 'failed' but not why."""
    shown = (done.stdout + done.stderr).splitlines()
    assert len(shown) <= 50, "\n".join(shown)
    assert not [line for line in shown if len(line) > 400], "a line no one can read"
    assert "unrunnable" not in done.stdout + done.stderr
    assert re.search(rf"{task} +running", done.stdout) and re.search(rf"{task} +failed", done.stdout)
    ending = "\n".join(shown[shown.index(f"failed: {task} after 1 try:"):])
    assert reason in ending, ending
    assert reason in next(t["error"] for t in summary["tasks"] if t["task"] == task)
    log_file = Path(re.search(r"^full log: (.+)$", done.stdout, re.M).group(1))
    assert summary["log_file"] == str(log_file)
    log = log_file.read_text()
    assert "Traceback" in log and reason in log and len(log.splitlines()) > len(shown)


def test_the_batch_folder_of_runs_with_and_without_a_date():
    """Scheduled and backfill runs have a date to render {{ ds }} with; an asset-triggered run (or a
    REST trigger with logical_date null) has none: it reads the folder its event names, else all."""
    from emotion_pipeline.orchestration.airflow_adapter import batch_folder

    def render(text):
        return text.replace("{{ ds }}", "2026-11-02")

    assert batch_folder("{{ ds }}", True, render, []) == "2026-11-02"
    assert batch_folder("{{ ds }}", False, render, ["2026-11-03"]) == "2026-11-03"
    assert batch_folder("{{ ds }}", False, render, ["2026-11-03", "2026-11-03", None]) == "2026-11-03"
    assert batch_folder("{{ ds }}", False, render, ["a", "b"]) == ""  # several batches: every batch
    assert batch_folder("{{ ds }}", False, render, []) == ""
    assert batch_folder("incoming", False, render, ["x"]) == "incoming"  # not a template: as it is
    assert batch_folder("", True, render, ["x"]) == ""
