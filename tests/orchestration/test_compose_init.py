"""docker-compose.yml's airflow-init step (emotion_pipeline/orchestration/compose_init.py), run as the
compose file runs it, on the machine's PostgreSQL: the FAB admin login a real Airflow API server
accepts (and the old password it then refuses), and the Celery workers' own database role, which
cannot open the metadata database."""
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg2
import pytest

from tests.airflow_cluster import _admin
from tests.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
AIRFLOW = [sys.executable, "-m", "airflow"]
FAB = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"


@pytest.fixture
def metadata_db():
    name = f"airflow_init_{secrets.token_hex(4)}"
    with _admin() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with _admin() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            cursor.execute("DROP DATABASE IF EXISTS celery_results WITH (FORCE)")
            cursor.execute("DROP ROLE IF EXISTS celery")


def token(url: str, password: str) -> int:
    request = urllib.request.Request(f"{url}/auth/token", method="POST", headers={"Content-Type": "application/json"},
                                     data=f'{{"username": "admin", "password": "{password}"}}'.encode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_init_sets_the_admin_login_and_a_result_role_that_cannot_open_the_metadata_db(metadata_db, tmp_path):
    port = free_port()
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__AUTH_MANAGER": FAB,
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://postgres@127.0.0.1:5432/{metadata_db}",
           "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16), "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
           "AIRFLOW__API__HOST": "127.0.0.1", "AIRFLOW__API__PORT": str(port)}
    subprocess.run([*AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    first, second = secrets.token_urlsafe(16), secrets.token_urlsafe(16)

    def init(admin_password: str) -> subprocess.CompletedProcess:
        # The secrets come from the environment, as compose gives them, never from arguments.
        done = subprocess.run([sys.executable, "-m", "emotion_pipeline.orchestration.compose_init"],
                              env={**env, "AIRFLOW_ADMIN_PASSWORD": admin_password,
                                   "CELERY_DB_PASSWORD": secrets.token_urlsafe(16)},
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert admin_password not in done.stdout + done.stderr
        return done

    missing = subprocess.run([sys.executable, "-m", "emotion_pipeline.orchestration.compose_init"], env=env,
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "AIRFLOW_ADMIN_PASSWORD, CELERY_DB_PASSWORD not set" in missing.stderr
    init(first)

    # The Celery role: logs in, owns its database and writes there, and cannot open Airflow's.
    with _admin() as cursor:
        cursor.execute("SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolpassword LIKE 'SCRAM-SHA-256$%' "
                       "FROM pg_authid WHERE rolname = 'celery'")
        assert cursor.fetchone() == (True, False, False, False, True)  # a hash, not the password
    results = psycopg2.connect(host="127.0.0.1", port=5432, user="celery", dbname="celery_results")
    with results, results.cursor() as cursor:
        cursor.execute("CREATE TABLE celery_taskmeta_probe (id int)")
    results.close()
    with pytest.raises(psycopg2.OperationalError, match="permission denied for database"):
        psycopg2.connect(host="127.0.0.1", port=5432, user="celery", dbname=metadata_db)

    log = (tmp_path / "api-server.log").open("w")
    server = subprocess.Popen([*AIRFLOW, "api-server", "--port", str(port)], env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (tmp_path / "api-server.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the API server did not answer"
                time.sleep(1)
        assert token(url, first) in (200, 201)
        assert token(url, "admin") == 401 and token(url, second) == 401
        init(second)  # .env changed and `docker compose up` again: the new password, the old one refused
        assert token(url, second) in (200, 201) and token(url, first) == 401
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its uvicorn workers
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
    assert not list(Path(tmp_path).rglob("*passwords*"))  # no password file anywhere
