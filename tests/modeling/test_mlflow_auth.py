"""MLflow behind its login (issue 25, item 2), on a real ``mlflow server --app-name basic-auth`` on
loopback, configured with docker-compose's docker/mlflow-auth.ini and the admin's password from the
environment (never the command line): anonymous requests are refused, the pipeline's client logs and
moves the alias with the credentials compose gives it, the API's reader cannot, and a client without
credentials (or with a wrong password) is told what to set."""
import base64
import configparser
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from emotion_pipeline.core.config import PipelineConfig
from emotion_pipeline.modeling import tracking, tracking_users
from emotion_pipeline.modeling.classifier import fit_baseline
from tests.conftest import REPO, free_port, stop

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
ADMIN_PASSWORD = "admin-Secret-0123456789"
PASSWORDS = {"pipeline": "pipeline-Secret-0123456789", "reader": "reader-Secret-0123456789"}
MODEL = "emotion-classifier"


class Server:
    def __init__(self, tmp: Path) -> None:
        ini = configparser.ConfigParser()
        ini.read(REPO / "docker" / "mlflow-auth.ini")  # compose's file, its database moved into tmp
        ini["mlflow"]["database_uri"] = f"sqlite:///{tmp / 'basic_auth.db'}"
        self.ini = tmp / "auth.ini"
        with self.ini.open("w") as out:
            ini.write(out)
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "mlflow.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env.update(MLFLOW_AUTH_CONFIG_PATH=str(tmp / "auth.ini"), MLFLOW_AUTH_ADMIN_PASSWORD=ADMIN_PASSWORD,
                   MLFLOW_FLASK_SERVER_SECRET_KEY="test-csrf-key")
        self.command = [str(Path(sys.executable).parent / "mlflow"), "server", "--app-name", "basic-auth",
                        "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}",
                        "--artifacts-destination", str(tmp / "artifacts"),
                        "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        self.process = subprocess.Popen(self.command, env=env, stdout=subprocess.DEVNULL,
                                        stderr=self.log.open("w"))
        deadline = time.monotonic() + 300  # ~80 s on two busy cores
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            if status(self.uri + "/health") == 200:
                return
            time.sleep(1)
        raise AssertionError(f"no MLflow after 300 s: {self.log.read_text()[-3000:]}")


def status(url: str, method: str = "GET", data: bytes | None = None, login: tuple[str, str] | None = None) -> int:
    headers = {"Content-Type": "application/json"}
    if login:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(login).encode()).decode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    started = Server(tmp_path_factory.mktemp("mlflow-auth"))
    try:
        yield started
    finally:
        stop(started.process)


def login(monkeypatch, user: str | None, password: str | None = None) -> None:
    """The client's credentials, as compose gives them: MLFLOW_TRACKING_USERNAME/PASSWORD."""
    for name, value in (("MLFLOW_TRACKING_USERNAME", user), ("MLFLOW_TRACKING_PASSWORD", password)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)


@pytest.fixture(scope="module")
def users(server):
    """compose's mlflow-init, with the admin's login, on a store where the admin already made the
    experiment (as a deployment from before the login had)."""
    from mlflow import MlflowClient

    with pytest.MonkeyPatch.context() as patch:
        login(patch, "admin", ADMIN_PASSWORD)
        MlflowClient(server.uri).create_experiment(tracking.EXPERIMENT)
        for _ in range(2):  # idempotent: every `docker compose up` runs it
            tracking_users.ensure_users(server.uri, PASSWORDS, MODEL)
    return PASSWORDS


def test_the_admin_password_is_not_on_the_command_line(server):
    assert ADMIN_PASSWORD not in " ".join(server.command)
    assert ADMIN_PASSWORD not in Path(f"/proc/{server.process.pid}/cmdline").read_text()


def test_anonymous_and_wrong_logins_are_refused(server, users):
    api = server.uri + "/api/2.0/mlflow"
    requests = [("GET", f"{api}/experiments/search?max_results=5", None),
                ("POST", f"{api}/registered-models/alias",
                 b'{"name": "emotion-classifier", "alias": "champion", "version": "1"}'),
                ("POST", f"{api}/runs/create", b'{"experiment_id": "1"}'),
                ("PUT", f"{server.uri}/api/2.0/mlflow-artifacts/artifacts/1/x/artifacts/model.pkl", b"\x80\x04"),
                ("GET", f"{server.uri}/", None),
                ("GET", f"{server.uri}/ajax-api/2.0/mlflow/experiments/search?max_results=5", None)]
    for method, url, data in requests:
        assert status(url, method, data) == 401, (method, url)
        assert status(url, method, data, ("pipeline", "not-the-password")) == 401, (method, url)
        assert status(url, method, data, ("admin", "password1234")) == 401, (method, url)  # MLflow's old default
    assert status(f"{api}/experiments/search?max_results=5", login=("reader", users["reader"])) == 200


def test_the_pipeline_logs_registers_and_moves_the_alias_with_credentials_from_env(server, users, monkeypatch,
                                                                                      tmp_path):
    from mlflow import MlflowClient

    login(monkeypatch, "pipeline", users["pipeline"])
    config = PipelineConfig(source=str(tmp_path), root=str(tmp_path / "out"), mlflow_tracking_uri=server.uri)
    mlflow = tracking.use_experiment(config)  # the admin's experiment, granted to pipeline by mlflow-init
    rng = np.random.default_rng(0)
    with mlflow.start_run() as run:
        mlflow.log_metric("test_macro_f1", 0.5)
        tracking.log_baseline(mlflow, fit_baseline(config, rng.normal(size=(30, 4)), np.resize([0, 1, 3], 30)))
    client = MlflowClient(server.uri)
    client.create_registered_model(MODEL)
    version = client.create_model_version(MODEL, f"runs:/{run.info.run_id}/baseline", run.info.run_id)
    client.set_registered_model_alias(MODEL, tracking.CHAMPION, version.version)
    assert tracking.load_baseline(run.info.run_id).classes_.tolist() == [0, 1, 3]

    login(monkeypatch, "reader", users["reader"])  # the API's user: reads, moves nothing
    assert client.get_model_version_by_alias(MODEL, tracking.CHAMPION).version == version.version
    assert tracking.load_baseline(run.info.run_id) is not None
    for write in (lambda: client.set_registered_model_alias(MODEL, tracking.CHAMPION, version.version),
                  lambda: client.create_run(mlflow.get_experiment_by_name(tracking.EXPERIMENT).experiment_id),
                  lambda: client.delete_registered_model_alias(MODEL, tracking.CHAMPION)):
        with pytest.raises(mlflow.exceptions.MlflowException) as refused:
            write()
        assert refused.value.error_code == "PERMISSION_DENIED"


def test_without_credentials_the_error_says_what_to_set(server, users, monkeypatch, tmp_path):
    from emotion_pipeline.serve.model_holder import advice_for

    config = PipelineConfig(source=str(tmp_path), root=str(tmp_path / "out"), mlflow_tracking_uri=server.uri)
    for user, password, expected in ((None, None, "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"),
                                     ("pipeline", "wrong-password-0123", "refused the login of user 'pipeline'")):
        login(monkeypatch, user, password)
        with pytest.raises(Exception) as refused:
            tracking.use_experiment(config)
        message = str(refused.value)
        assert expected in message and server.uri in message, message
        assert "wrong-password" not in message
        assert "MLFLOW_TRACKING_USERNAME" in advice_for(refused.value)  # what the API's /health says


def test_a_rotated_password_replaces_the_old_one(server, users, monkeypatch):
    login(monkeypatch, "admin", ADMIN_PASSWORD)
    tracking_users.ensure_users(server.uri, {**users, "reader": "reader-Rotated-0123456789"}, MODEL)
    url = server.uri + "/api/2.0/mlflow/experiments/search?max_results=5"
    try:
        assert status(url, login=("reader", users["reader"])) == 401
        assert status(url, login=("reader", "reader-Rotated-0123456789")) == 200
    finally:
        tracking_users.ensure_users(server.uri, users, MODEL)


def test_mlflow_init_sets_every_password_from_the_environment_the_admins_too(server, users):
    """compose's mlflow-init as it runs there (``python -m``, everything from its environment): a new
    MLFLOW_ADMIN_PASSWORD in .env replaces the admin's (MLflow itself reads it only once)."""
    url = server.uri + "/api/2.0/mlflow/experiments/search?max_results=5"

    def mlflow_init(admin_password: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env.update(MLFLOW_TRACKING_URI=server.uri, MLFLOW_TRACKING_USERNAME="admin",
                   MLFLOW_TRACKING_PASSWORD=admin_password, MLFLOW_AUTH_CONFIG_PATH=str(server.ini),
                   MLFLOW_PIPELINE_PASSWORD=users["pipeline"], MLFLOW_READER_PASSWORD=users["reader"])
        command = [sys.executable, "-m", "emotion_pipeline.modeling.tracking_users"]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        assert admin_password not in done.stdout + done.stderr
        return done

    rotated = "admin-Rotated-0123456789"
    try:
        mlflow_init(rotated)
        assert status(url, login=("admin", ADMIN_PASSWORD)) == 401
        assert status(url, login=("admin", rotated)) == 200
    finally:
        mlflow_init(ADMIN_PASSWORD)
    assert status(url, login=("admin", ADMIN_PASSWORD)) == 200
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    missing = subprocess.run([sys.executable, "-m", "emotion_pipeline.modeling.tracking_users"], env=env,
                             capture_output=True, text=True, timeout=300, check=False)
    assert missing.returncode == 2 and "MLFLOW_PIPELINE_PASSWORD" in missing.stderr
