"""What a person sees when running the DAG with `emotion-pipeline run` in a terminal, and how the run
stops: the real CLI, the real DAG, a real pseudo-terminal, real signals."""
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

SCREEN = 50  # lines of a terminal window


def cli(tmp_path: Path, src: Path, *args: str) -> list[str]:
    return [CLI, "run", "--source", str(src), "--root", str(tmp_path / "out"), "--airflow-home",
            str(airflow_home(tmp_path / "airflow")), "--summary-json", str(tmp_path / "summary.json"), "--embed-weights", "none",
            *args]


def test_a_failed_run_fits_on_a_screen_with_its_reason(tmp_path):
    """It used to print ~600 lines (a 1-3 KB 'No tasks to run. unrunnable tasks' line every second
    while waiting for a retry) and end with 'failed' but not why."""
    src = tmp_path / "photos"
    copy_photos(FLICKR, src, flickr_names(5))
    no_weights = tmp_path / "deepface-home"
    no_weights.mkdir()
    done = subprocess.run(cli(tmp_path, src), capture_output=True, text=True, timeout=600,
                          env={**_without_mlflow_uri(os.environ), "DEEPFACE_HOME": str(no_weights)})
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    shown = (done.stdout + done.stderr).splitlines()
    assert len(shown) <= SCREEN, "\n".join(shown)
    assert not [line for line in shown if len(line) > 400], "a line no one can read"
    assert "unrunnable" not in done.stdout + done.stderr
    # One line per state change, and the reason at the end: the task, the error, the missing file.
    assert re.search(r"annotate\[0\] +running", done.stdout) and re.search(r"annotate\[0\] +failed", done.stdout)
    reason = "\n".join(shown[shown.index("failed: annotate[0] after 1 try:"):])
    assert "MissingWeightsError" in reason and "facial_expression_model_weights.h5" in reason, reason
    summary = json.loads((tmp_path / "summary.json").read_text())
    annotate = next(t for t in summary["tasks"] if t["task"] == "annotate")
    assert annotate["state"] == "failed" and "MissingWeightsError" in annotate["error"]
    # Everything else went to the log file whose path was printed.
    log_file = Path(re.search(r"^full log: (.+)$", done.stdout, re.M).group(1))
    assert summary["log_file"] == str(log_file)
    log = log_file.read_text()
    assert "Traceback" in log and "MissingWeightsError" in log and len(log.splitlines()) > len(shown)


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


def test_ctrl_c_and_sigterm_stop_a_run_within_seconds_and_a_run_after_finishes_it(tmp_path):
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

    # A run after them finishes the work, and its summary has the labels.
    done = subprocess.run(cli(tmp_path, src, *args), capture_output=True, text=True, timeout=600,
                          env=_without_mlflow_uri(os.environ))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["images"] == 24 and summary["labels"]
    assert "labels: " + ", ".join(f"{k} {v}" for k, v in summary["labels"].items()) in done.stdout
