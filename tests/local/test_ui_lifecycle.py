"""`emotion-pipeline ui` stops everything it started on SIGTERM and SIGINT, and never starts twice.

Each test starts one real `ui` (Airflow standalone on its PostgreSQL) as a subprocess, because what is
tested is the whole process tree: the scheduler, dag-processor, api-server, triggerer, their workers and
the database server. Starting one takes a minute or two on a 2-core machine, so the checks that need a
running `ui` share the two starts.
"""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.airflow_ui import call
from tests.conftest import FLICKR, copy_photos, flickr_names, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

# A hang guard, not a performance target: `ui` gives Airflow 30 s and PostgreSQL 20 s before it kills
# them, and a loaded 2-core machine needs slack on top.
STOP_BOUND_S = 120
START_BOUND_S = 420
REFUSAL_BOUND_S = 60  # a refused start exits before it starts anything


class Ui:
    """One `emotion-pipeline ui` subprocess, its output collected by a thread."""

    def __init__(self, home: Path, port: int):
        self.port = port
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "emotion-pipeline"), "ui", "--port", str(port),
             "--airflow-home", str(home)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        self.lines: list[str] = []
        self.seen: dict[int, psutil.Process] = {}  # every process of its tree seen, for the cleanup
        threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True).start()

    def output(self) -> str:
        return "".join(self.lines[-80:])

    def tree(self) -> list[psutil.Process]:
        try:
            tree = [psutil.Process(self.process.pid), *psutil.Process(self.process.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        self.seen.update((p.pid, p) for p in tree)
        return tree

    def wait_for_banner(self) -> None:
        deadline = time.monotonic() + START_BOUND_S
        while not any("Airflow UI:" in line for line in self.lines):
            assert self.process.poll() is None, self.output()
            assert time.monotonic() < deadline, self.output()
            self.tree()
            time.sleep(1)

    def exit_code(self, bound: float) -> int:
        try:
            return self.process.wait(timeout=bound)
        except subprocess.TimeoutExpired:
            pytest.fail(f"`ui` still running {bound} s later:\n{self.output()}")

    def kill_leftovers(self) -> None:
        """Whatever a failed test left behind must not outlive it (the machine is shared)."""
        self.tree()
        for process in self.seen.values():
            try:
                process.kill()
            except psutil.Error:
                pass
        if self.process.poll() is None:
            self.process.kill()


@pytest.fixture
def uis():
    started: list[Ui] = []
    yield lambda home, port: started.append(Ui(home, port)) or started[-1]
    for ui in started:
        ui.kill_leftovers()


def running(processes: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            pass
    return alive


def listening(port: int) -> bool:
    return any(c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN
               for c in psutil.net_connections(kind="tcp"))


def assert_stops_cleanly(ui: Ui, signum: signal.Signals) -> None:
    tree = ui.tree()
    assert len(running(tree)) > 5, [p.name() for p in tree]  # the whole tree is there to be stopped
    ui.process.send_signal(signum)  # to the command only, as `kill PID` or a service manager does
    sent = time.monotonic()
    code = ui.exit_code(STOP_BOUND_S)
    print(f"{signum.name}: `ui` and its {len(tree)} processes stopped in {time.monotonic() - sent:.1f} s")
    left = [(p.pid, p.name(), p.cmdline()[:3]) for p in running(tree)]
    assert not left, f"left running after {signum.name}: {left}\n{ui.output()}"
    assert not listening(ui.port), ui.output()
    assert code == 128 + signum, ui.output()
    assert any("waiting for" in line for line in ui.lines), ui.output()


def start_a_run(ui: Ui, tmp_path: Path) -> None:
    """Trigger a run over the REST API and return once one of its tasks runs."""
    banner = next(line for line in ui.lines if "Airflow UI:" in line)
    user, password = banner.split("login:")[1].strip().split(" / ")
    base = f"http://localhost:{ui.port}"
    token = call(f"{base}/auth/token", body={"username": user, "password": password})["access_token"]
    copy_photos(FLICKR, tmp_path / "photos", flickr_names(4))
    conf = {"source": str(tmp_path / "photos"), "root": str(tmp_path / "out"), "shard_size": 2,
            "embed_weights": "none"}
    run = call(f"{base}/api/v2/dags/emotion_pipeline/dagRuns", token, body={"logical_date": None, "conf": conf})
    tasks_url = f"{base}/api/v2/dags/emotion_pipeline/dagRuns/{run['dag_run_id']}/taskInstances"
    deadline = time.monotonic() + START_BOUND_S
    while not any(t["state"] == "running" for t in call(tasks_url, token)["task_instances"]):
        assert time.monotonic() < deadline, ui.output()
        time.sleep(1)


def test_sigterm_stops_the_whole_tree_and_a_second_start_is_refused(tmp_path, uis):
    port = free_port()
    first = uis(tmp_path / "airflow", port)
    first.wait_for_banner()

    # Same Airflow home: a second scheduler on the same database would run every task twice.
    second = uis(tmp_path / "airflow", free_port())
    assert second.exit_code(REFUSAL_BOUND_S) != 0
    assert "already running" in second.output() and str(first.process.pid) in second.output(), second.output()

    # Another home, the same port: it says what holds the port (the first ui's api-server).
    third = uis(tmp_path / "other-airflow", port)
    assert third.exit_code(REFUSAL_BOUND_S) != 0
    assert f"port {port} is taken" in third.output() and "airflow" in third.output(), third.output()

    # As in the issue: stopped while a run is going (the LocalExecutor then waits for its tasks).
    start_a_run(first, tmp_path)
    assert_stops_cleanly(first, signal.SIGTERM)


def test_sigint_stops_the_whole_tree(tmp_path, uis):
    ui = uis(tmp_path / "airflow", free_port())
    ui.wait_for_banner()
    assert_stops_cleanly(ui, signal.SIGINT)


def test_a_taken_port_is_named_and_nothing_starts(tmp_path, uis):
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", 0))
        holder.listen()
        port = holder.getsockname()[1]
        ui = uis(tmp_path / "airflow", port)
        assert ui.exit_code(REFUSAL_BOUND_S) != 0
    assert f"port {port} is taken" in ui.output() and f"pid {psutil.Process().pid}" in ui.output(), ui.output()
    assert not (tmp_path / "airflow" / "postgres").exists()


def test_sigterm_while_starting_stops_what_was_started(tmp_path, uis):
    """Stopped before its banner (a Ctrl-C during the first start's minute): the database server and
    the migration it runs are stopped too."""
    ui = uis(tmp_path / "airflow", free_port())
    deadline = time.monotonic() + START_BOUND_S
    while not any(p.name() == "postgres" and p.ppid() == ui.process.pid for p in running(ui.tree())):
        assert ui.process.poll() is None and time.monotonic() < deadline, ui.output()
        time.sleep(0.5)
    tree = ui.tree()
    ui.process.send_signal(signal.SIGTERM)
    assert ui.exit_code(STOP_BOUND_S) == 128 + signal.SIGTERM, ui.output()
    assert not running(tree), [(p.pid, p.cmdline()[:4]) for p in running(tree)]
    assert "Stopping PostgreSQL" in ui.output()
