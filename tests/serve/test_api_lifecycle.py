"""The API's model lifecycle and exposure, on a real uvicorn and a real MLflow tracking server on
loopback: it starts before MLflow is up (503 without secrets, then ready by itself), reloads when the
champion alias moves, listens on 127.0.0.1 unless told otherwise, and a missing root creates nothing."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from emotion_pipeline.local.cli import build_parser
from tests.conftest import FACES, REPO, free_port, stop
from tests.serve.api_calls import call, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
PASSWORD = "s3cret-tracking-password"
CLI = str(Path(sys.executable).parent / "emotion-pipeline")


class Services:
    """A copy of the trained root, the API on it (started first) and, on demand, the MLflow server."""

    def __init__(self, root: Path, tmp: Path) -> None:
        self.root, self.tmp = root, tmp
        self.mlflow_port, api_port = free_port(), free_port()
        self.tracking = f"http://127.0.0.1:{self.mlflow_port}"
        self.api_port, self.api = api_port, f"http://127.0.0.1:{api_port}"
        self.processes: list[subprocess.Popen] = []
        env = {**os.environ,
               "MLFLOW_TRACKING_URI": f"http://pipeline:{PASSWORD}@127.0.0.1:{self.mlflow_port}"}
        self.api_log = tmp / "api.log"
        self.processes.append(subprocess.Popen(  # no --host: the default is what is tested
            [CLI, "serve", "--root", str(root), "--port", str(api_port), "--reload-interval", "1"],
            env=env, stdout=subprocess.DEVNULL, stderr=self.api_log.open("w")))

    def start_mlflow(self) -> None:
        if len(self.processes) > 1:
            return
        database = self.root / "mlflow" / "mlflow.db"
        self.processes.append(subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{database}",
             "--host", "127.0.0.1", "--port", str(self.mlflow_port), "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=(self.tmp / "mlflow.log").open("w")))

    def stop(self) -> None:
        for process in self.processes:
            stop(process)


@pytest.fixture(scope="module")
def services(trained_root, tmp_path_factory):
    config, _ = trained_root
    tmp = tmp_path_factory.mktemp("api-lifecycle")
    root = Path(shutil.copytree(config.root, tmp / "out"))  # the alias moves in this copy only
    started = Services(root, tmp)
    try:
        yield started
    finally:
        started.stop()


def test_not_ready_until_mlflow_is_up_then_ready_without_a_restart_and_no_secret_is_told(services):
    """The API starts before its tracking server: /health and /predict say 503 and what to do, never
    the tracking URI (with its password), a path or an exception; once MLflow is up it loads."""
    wait_until(lambda: "loading the model failed" in services.api_log.read_text(), 120,
               "a failed load in the log (the operator's log has the detail)")
    seen = [call(services.api, "GET", "/health"), call(services.api, "GET", "/model"),
            call(services.api, "POST", "/predict", (FACES / "img2.jpg").read_bytes())]
    for status, body in seen:
        text = json.dumps(body)
        assert status == 503 and body["status"] == "not ready", (status, body)
        for secret in (PASSWORD, str(services.mlflow_port), str(services.root), "Exception", "Error"):
            assert secret not in text, (secret, text)
    services.start_mlflow()
    ready = wait_until(lambda: call(services.api, "GET", "/health")[0] == 200, 300, "ready once MLflow is up")
    assert ready


def test_a_moved_champion_alias_is_served_without_a_restart(services):
    from mlflow import MlflowClient

    services.start_mlflow()
    wait_until(lambda: call(services.api, "GET", "/health")[0] == 200, 300, "ready")
    client = MlflowClient(tracking_uri=services.tracking)
    name = "emotion-classifier"
    champion = client.get_model_version_by_alias(name, "champion")
    model_id = champion.model_id or champion.source.rsplit("/", 1)[-1]  # MLflow 3: source models:/m-<id>
    moved = client.create_model_version(name, champion.source, champion.run_id, model_id=model_id)
    client.set_registered_model_alias(name, "champion", moved.version)
    wait_until(lambda: call(services.api, "GET", "/health")[1].get("model_version") == str(moved.version),
               180, f"version {moved.version} served")
    status, body = call(services.api, "POST", "/predict", (FACES / "couple.jpg").read_bytes())
    assert status == 200 and body["model_version"] == str(moved.version) and body["faces"]


def listening_addresses(port: int) -> set[str]:
    """The local addresses (hex, as /proc/net/tcp writes them) of sockets listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def test_local_commands_listen_on_loopback_and_the_cloud_run_image_on_all(services):
    """No authentication in the API or the dashboard: by default only this machine reaches them."""
    wait_until(lambda: listening_addresses(services.api_port), 60, "the API listens")
    assert listening_addresses(services.api_port) == {"0100007F"}  # 127.0.0.1
    parser = build_parser()
    assert parser.parse_args(["dashboard", "--root", "r"]).host == "127.0.0.1"
    assert parser.parse_args(["serve", "--root", "r"]).host == "127.0.0.1"
    command = [line for line in (REPO / "docker" / "api.Dockerfile").read_text().splitlines() if line.startswith("CMD")]
    assert "--host 0.0.0.0" in command[0]  # Cloud Run sends traffic to the container's port


def test_a_missing_root_is_a_clear_error_and_nothing_is_created(tmp_path):
    missing = tmp_path / "no-such-root"
    done = subprocess.run([CLI, "serve", "--root", str(missing), "--port", str(free_port())],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "does not exist" in done.stderr
    assert not missing.exists()


def test_a_root_without_a_store_is_refused_and_left_empty(tmp_path):
    from emotion_pipeline.serve.predictor import Predictor, ServeSettings, StoreMissing

    with pytest.raises(StoreMissing, match="no MLflow store"):
        Predictor(ServeSettings(root=str(tmp_path)))
    assert list(tmp_path.iterdir()) == []
