"""A real `emotion-pipeline ui` and a real headless Chromium clicking through its pages (Playwright
drives Debian's chromium; no browser is downloaded). One instance serves every test of a module."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from tests.conftest import free_port

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"]
DAG = "emotion_pipeline"


class LocalAirflow:
    """`emotion-pipeline ui ARGS` as a subprocess: its URL, its login, and its REST API."""

    def __init__(self, home: Path, args: list[str], env: dict[str, str]) -> None:
        self.home = home
        self.port = free_port()
        self.base = f"http://localhost:{self.port}"
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "emotion-pipeline"), "ui", "--port", str(self.port),
             "--airflow-home", str(home), *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, env=env)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True).start()
        self.user, self.password = self._wait_for_banner(timeout=420)
        self.token = self.call("/auth/token", {"username": self.user, "password": self.password})["access_token"]

    def _wait_for_banner(self, timeout: float) -> tuple[str, str]:
        deadline = time.monotonic() + timeout
        while not any("Airflow UI:" in line for line in self.lines):
            assert self.process.poll() is None, "".join(self.lines[-60:])
            assert time.monotonic() < deadline, "".join(self.lines[-60:])
            time.sleep(1)
        banner = next(line for line in self.lines if "Airflow UI:" in line)
        user, password = banner.split("login:")[1].strip().split(" / ")
        return user, password

    def call(self, path: str, body=None, method: str | None = None):
        return call(self.base + path, getattr(self, "token", None), body, method)

    def runs(self, run_type: str | None = None) -> list[dict]:
        found = self.call(f"/api/v2/dags/{DAG}/dagRuns?limit=100")["dag_runs"]
        return [r for r in found if run_type is None or r["run_type"] == run_type]

    def wait_for_runs(self, run_type: str, count: int, timeout: float = 300) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(found := self.runs(run_type)) < count:
            assert time.monotonic() < deadline, (run_type, count, self.runs())
            time.sleep(2)
        return found

    def wait_for_run(self, run_id: str, timeout: float = 900) -> tuple[str, list[dict]]:
        """Waits until the run ends; returns its state and task instances (a hang guard, not a bound)."""
        deadline = time.monotonic() + timeout
        url = f"/api/v2/dags/{DAG}/dagRuns/{urllib.request.quote(run_id)}"
        while (state := self.call(url)["state"]) not in ("success", "failed"):
            assert time.monotonic() < deadline, (run_id, state, self.tasks(run_id))
            time.sleep(3)
        return state, self.tasks(run_id)

    def tasks(self, run_id: str) -> list[dict]:
        url = f"/api/v2/dags/{DAG}/dagRuns/{urllib.request.quote(run_id)}/taskInstances?limit=200"
        return self.call(url)["task_instances"]

    def xcom(self, run_id: str, task: str, key: str = "return_value", map_index: int = -1):
        url = (f"/api/v2/dags/{DAG}/dagRuns/{urllib.request.quote(run_id)}/taskInstances/{task}/xcomEntries/"
               f"{key}?map_index={map_index}&deserialize=true")
        value = self.call(url)["value"]
        if not isinstance(value, str):
            return value
        try:  # a JSON document (a task's return value) ...
            return json.loads(value)
        except json.JSONDecodeError:  # ... or a plain string XCom (the responder's name)
            return value

    def stop(self) -> None:
        stop_tree(self.process)


def call(url: str, token: str | None = None, body=None, method: str | None = None):
    """A JSON request to Airflow's REST API (with a bearer token once logged in)."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read() or b"null")


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


def summary(tasks: list[dict]) -> list[tuple]:
    return sorted((t["task_id"], t["map_index"], t["state"]) for t in tasks)


def open_browser(playwright, tmp: Path):
    browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(120_000)  # the API server answers slowly while tasks load TensorFlow
    return browser, page


def log_in(page, airflow: LocalAirflow, path: str = f"/dags/{DAG}") -> None:
    page.goto(airflow.base + path)
    page.get_by_label("Username").fill(airflow.user)
    page.get_by_label("Password").fill(airflow.password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"**{path}**")


def open_trigger_dialog(page):
    """The DAG page's Trigger button; returns the dialog (a single run is selected)."""
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog").filter(has_text="Trigger Dag")
    dialog.wait_for()
    return dialog


def choose_backfill_dates(page, dialog, dates: list[str]):
    """In the trigger dialog: Backfill, then From and To typed into the date-time pickers (YYYY/MM/DD)."""
    dialog.get_by_text("Backfill", exact=True).click()
    dialog = page.get_by_role("dialog").filter(has_text="Reprocess Behavior")
    for i, day in enumerate(dates):
        dialog.get_by_test_id("datetime-input").nth(i).click()
        picker = page.locator("[data-scope=popover][data-part=content]:visible").last
        picker.get_by_placeholder("YYYY/MM/DD").fill(day.replace("-", "/"))
        picker.get_by_placeholder("HH:mm").fill("00:00")
        dialog.get_by_text("Date Range", exact=True).click()  # closes the picker
    return dialog
