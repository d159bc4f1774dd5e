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

from .conftest import FLICKR, copy_photos, flickr_names
from .pipeline_run import CLI, _without_mlflow_uri, airflow_home

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

def cli(tmp_path: Path, src: Path, *args: str) -> list[str]:
    return [CLI, "run", "--source", str(src), "--root", str(tmp_path / "out"), "--airflow-home",
            str(airflow_home(tmp_path / "airflow")), "--summary-json", str(tmp_path / "summary.json"), "--embed-weights", "none",
            *args]


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


def assert_stopped_within_seconds(process: subprocess.Popen, signalled_at: float, root: Path) -> None:
    process.wait(timeout=60)
    assert time.monotonic() - signalled_at < 10, f"stopped after {time.monotonic() - signalled_at:.1f} s"
    assert process.returncode == 130
    assert not list(root.rglob("*.tmp")), "a partial output was left"
    assert not list((root / "annotations").glob("shard=*/_done.json")), "the interrupted shard was finished?"


def test_ctrl_c_and_sigterm_stop_a_run_within_seconds_leaving_nothing_partial(tmp_path):
    """SIGTERM used to be ignored for over 15 s (Airflow's task runner handles it during a task by
    calling on_kill only), and Ctrl-C in a task became a failed try that dag.test retried."""
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
    signalled = time.monotonic()
    assert_stopped_within_seconds(run, signalled, root)
    shown += drain(terminal)
    os.close(terminal)
    assert "\r" in shown and "interrupted" in shown, shown[-2000:]
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
    signalled = time.monotonic()
    lines += run.stdout.read().splitlines(keepends=True)
    assert_stopped_within_seconds(run, signalled, root)
    assert any("SIGTERM" in line for line in lines) and any("interrupted" in line for line in lines), lines

