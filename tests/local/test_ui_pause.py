"""ui holds the DAG paused until Airflow's API answers, then unpauses it; a DAG that an interrupted
`ui` left paused is unpaused by the next one, one its user paused stays so (no Airflow started: the
metadata database is a dict)."""
from __future__ import annotations

import json
import os

import pytest

from emotion_pipeline.local import airflow_home as local_airflow
from emotion_pipeline.local import ui as local_ui


class Dag:
    def __init__(self, paused: bool):
        self.paused = paused

    def set_paused(self, paused: bool) -> bool:
        before, self.paused = self.paused, paused
        return before


class Standalone:
    def poll(self):
        return None

    def wait(self):
        return 0


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "environ", os.environ.copy())  # prepare_airflow sets Airflow's variables
    for name in ("configure", "ensure_gpu_pool"):
        monkeypatch.setattr(local_airflow, name, lambda *a, **k: None)
    monkeypatch.setattr(local_ui.subprocess, "run", lambda *a, **k: None)  # the DAG's reserialize
    (tmp_path / "simple_auth_manager_passwords.json.generated").write_text(json.dumps({"admin": "pw"}))
    return tmp_path


def start(home, dag: Dag, monkeypatch, healthy=(True,)) -> bool:
    """prepare_airflow; then, unless ``healthy`` is empty (ui stopped before the API answered),
    serve_until_stopped with the health checks answering ``healthy`` in turn."""
    monkeypatch.setattr(local_airflow, "set_paused", dag.set_paused)
    unpause = local_ui.prepare_airflow(home, database=type("Db", (), {"url": str, "folder": home})(),
                                       source="s", root="r", port=8080)
    assert dag.paused
    if healthy:
        answers = iter(healthy)
        monkeypatch.setattr(local_ui, "wait_until_healthy", lambda *a, **k: next(answers))
        local_ui.serve_until_stopped(Standalone(), home, 8080, unpause)
    return unpause


def test_unpaused_once_the_api_answers(home, monkeypatch):
    dag = Dag(paused=False)
    start(home, dag, monkeypatch)
    assert not dag.paused


def test_a_dag_left_paused_by_a_stopped_ui_is_unpaused_by_the_next(home, monkeypatch):
    dag = Dag(paused=False)
    start(home, dag, monkeypatch, healthy=())  # stopped between the pause and the unpause
    start(home, dag, monkeypatch)
    assert not dag.paused
    start(home, dag, monkeypatch)  # and the marker is gone: nothing left over
    assert not dag.paused


def test_a_dag_its_user_paused_stays_paused(home, monkeypatch):
    dag = Dag(paused=True)
    assert not start(home, dag, monkeypatch)
    assert dag.paused
    assert not start(home, dag, monkeypatch)
    assert dag.paused


def test_an_api_healthy_after_the_timeout_still_unpauses(home, monkeypatch):
    dag = Dag(paused=False)
    start(home, dag, monkeypatch, healthy=(False, True))
    assert not dag.paused


@pytest.mark.parametrize("was_paused, marker, unpause", [
    (False, False, True), (False, True, True), (True, True, True), (True, False, False)])
def test_should_unpause(was_paused, marker, unpause):
    assert local_ui.should_unpause(was_paused, marker) is unpause
