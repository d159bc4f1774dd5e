"""A local storage root can be moved or restored elsewhere (issue 25, item 8): its MLflow store recorded
absolute ``file://`` artifact locations, so a copy silently read (and wrote) the old root's files, and
once the old root was gone it could not load its own champion. The store is now relocated when a root
is opened from a new place: loading the champion, evaluate and serve read the copy's files, and nothing
is read from or written to the old path."""
import dataclasses
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from emotion_pipeline.core import catalog
from tests.conftest import FACES, free_port, stop

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
CLI = str(Path(sys.executable).parent / "emotion-pipeline")


def trained_at(root: Path, built_at: Path) -> None:
    """Make a copy of a trained root what it would be had the pipeline run at ``root``: every path the
    MLflow store recorded for ``built_at`` now names ``root`` (this stands in for training there)."""
    old, new = str(built_at.resolve()), str(root.resolve())
    with sqlite3.connect(root / catalog.MLFLOW_FOLDER / catalog.MLFLOW_DB) as db:
        for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            for column in [row[1] for row in db.execute(f"PRAGMA table_info({table})")
                           if row[2] == "TEXT" or row[2].startswith("VARCHAR")]:
                db.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?) WHERE {column} LIKE ?",
                           (old, new, f"%{old}%"))


def paths_in_store(root: Path) -> set[str]:
    """Every artifact location the store holds."""
    with sqlite3.connect(root / catalog.MLFLOW_FOLDER / catalog.MLFLOW_DB) as db:
        return {value for query in ("SELECT artifact_location FROM experiments", "SELECT artifact_uri FROM runs",
                                    "SELECT artifact_location FROM logged_models",
                                    "SELECT storage_location FROM model_versions",
                                    "SELECT source FROM model_versions")
                for (value,) in db.execute(query) if value}


@pytest.fixture(scope="module")
def moved(trained_root, tmp_path_factory):
    """A root trained at <tmp>/original, then moved to <tmp>/moved: the original is gone."""
    config, _ = trained_root
    base = tmp_path_factory.mktemp("movable")
    original = Path(shutil.copytree(config.root, base / "original"))
    trained_at(original, Path(config.root))
    assert all(str(original) in p for p in paths_in_store(original) if p.startswith("file:"))
    root = original.rename(base / "moved")
    assert not original.exists()
    return dataclasses.replace(config, root=str(root)), original


def test_the_champion_loads_from_the_moved_root(moved, monkeypatch):
    from emotion_pipeline.modeling import tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config, original = moved
    tracking.use_experiment(config)
    head = tracking.load_model(f"models:/{config.registered_model}@{tracking.CHAMPION}")
    assert np.asarray(head.predict(np.zeros((1, 2048), np.float32), verbose=0)).shape == (1, 5)
    locations = paths_in_store(Path(config.root))
    assert not [p for p in locations if str(original) in p], locations
    assert [p for p in locations if p.startswith(Path(config.root).resolve().as_uri())]
    assert not original.exists()


def test_evaluate_reads_and_writes_the_moved_root(moved, monkeypatch):
    from emotion_pipeline.core.runner import run_stage
    from emotion_pipeline.core.storage import open_storage

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config, original = moved
    root = open_storage(config.root)
    root.delete(catalog.done_marker(catalog.EVALUATE_FOLDER))  # evaluate again, on the moved root
    result = run_stage("evaluate", config)
    assert result.evaluated and not result.skipped
    assert str(Path(config.root).resolve()) in result.report_uri
    assert not original.exists()  # nothing was logged into the old root's artifact folder


@pytest.mark.timeout(600)
def test_serve_answers_from_the_moved_root(moved, tmp_path):
    config, original = moved
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    log = tmp_path / "serve.log"
    process = subprocess.Popen([CLI, "serve", "--root", config.root, "--port", str(port)], env=env,
                               stdout=subprocess.DEVNULL, stderr=log.open("w"))
    try:
        deadline, health = time.monotonic() + 300, None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                    health = json.loads(response.read())
                    break
            except OSError:
                time.sleep(1)
        assert health and health.get("status") == "ready", log.read_text()[-3000:]
        request = urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=(FACES / "couple.jpg").read_bytes(),
                                         headers={"Content-Type": "image/jpeg"}, method="POST")
        with urllib.request.urlopen(request, timeout=120) as response:
            body = json.loads(response.read())
        assert body["faces"] and body["model_version"] == health["model_version"]
    finally:
        stop(process)
    assert str(original) not in log.read_text()
    assert not original.exists()
