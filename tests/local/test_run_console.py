"""What a person sees when running the DAG with `emotion-pipeline run` in a terminal, and how the run
stops: the real CLI, the real DAG, a real pseudo-terminal, real signals. (A failed run's output:
test_fail_fast.py; the labels line after a run with nothing new: every pipeline_run.run_pipeline.)"""
import json
import os
import pty
import re
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import FLICKR, copy_photos, flickr_names
from tests.pipeline_run import CLI, _without_mlflow_uri, airflow_home

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

def cli(tmp_path: Path, src: Path, *args: str) -> list[str]:
    return [CLI, "run", "--source", str(src), "--root", str(tmp_path / "out"), "--airflow-home",
            str(airflow_home(tmp_path / "airflow")), "--summary-json", str(tmp_path / "summary.json"),
            "--embed-weights", "none", *args]


def read_until(fd: int, pattern: str, process: subprocess.Popen, timeout: float = 300) -> str:
    """What the terminal received until ``pattern`` appeared in it."""
    seen, deadline = b"", time.monotonic() + timeout
    while not re.search(pattern, seen.decode(errors="replace")):
        assert process.poll() is None and time.monotonic() < deadline, seen.decode(errors="replace")[-3000:]
        if select.select([fd], [], [], 0.5)[0]:
            try:
                seen += os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
    return seen.decode(errors="replace")


def drain(fd: int) -> str:
    seen = b""
    while select.select([fd], [], [], 0.2)[0]:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    return seen.decode(errors="replace")


def assert_stopped_where_it_was(process: subprocess.Popen, after_signal: str, root: Path) -> None:
    """The run stopped in the task it was in: that task ended interrupted, nothing was retried, no
    later task started, and nothing partial is left (no timing: the wait only guards against a hang)."""
    process.wait(timeout=120)
    assert process.returncode == 130
    states = re.findall(r"^\S*\d\d:\d\d:\d\d +(\S+) +(.+)$", after_signal.replace("\r", "\n"), re.M)
    assert [task for task, what in states if what.startswith("running")] == [], after_signal
    assert [(task, what) for task, what in states if not what.startswith("failed")] == [], after_signal
    assert "try 2" not in after_signal and "annotate[0]" in after_signal, after_signal
    assert not list(root.rglob("*.tmp")), "a partial output was left"
    assert not list((root / "annotations").glob("shard=*/_done.json")), "the interrupted shard was finished?"


def test_ctrl_c_and_sigterm_stop_a_run_in_its_task_leaving_nothing_partial(tmp_path):
    """SIGTERM used to be ignored (Airflow's task runner handles it during a task by calling on_kill
    only: the task went on), and Ctrl-C in a task became a failed try that dag.test retried."""
    src = tmp_path / "photos"
    copy_photos(FLICKR, src, flickr_names(24, offset=100))
    # No class reaches 1000 rows: training is skipped, this test is about stopping, not the model.
    args = ["--detector", "yunet", "--shard-size", "24", "--min-rows-per-class", "1000"]
    root = tmp_path / "out"

    # In a terminal: the annotate shard draws a bar (photos/s, time left), then Ctrl-C.
    terminal, child_side = pty.openpty()
    run = subprocess.Popen(cli(tmp_path, src, *args), stdin=subprocess.DEVNULL, stdout=child_side,
                           stderr=child_side, env=_without_mlflow_uri(os.environ))
    os.close(child_side)
    shown = read_until(terminal, r"annotate\[0\] +running +\[[#.]{20}\] \d+/24 +[\d.]+ photos/s, \d+:\d\d left", run)
    run.send_signal(signal.SIGINT)
    run.wait(timeout=120)
    after = drain(terminal)
    os.close(terminal)
    assert_stopped_where_it_was(run, after, root)
    assert "\r" in shown and "interrupted" in after, after[-2000:]
    assert json.loads((tmp_path / "summary.json").read_text())["state"] == "interrupted"

    # Through a pipe (a service manager, a container stop): SIGTERM while annotate works.
    run = subprocess.Popen(cli(tmp_path, src, *args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, env=_without_mlflow_uri(os.environ))
    lines = []
    for line in run.stdout:
        lines.append(line)
        if re.search(r"annotate\[0\] +running", line):
            break
    time.sleep(2)  # inside the task: models loading or photos being annotated
    run.send_signal(signal.SIGTERM)
    after = run.stdout.read()
    assert_stopped_where_it_was(run, after, root)
    assert "SIGTERM" in after and "interrupted" in after, after

