"""A real multi-process Airflow on loopback, as docker-compose.yml runs it, without Docker.

PostgreSQL (metadata DB and Celery results) and Redis (broker) are the machine's own services; each
cluster gets a database of its own and a Redis database number of its own. The components are the
same commands the compose services run: api-server, scheduler, dag-processor and two
`airflow celery worker` processes, one for the default queue and one for `gpu`. Each worker names
itself through ``[core] hostname_callable`` so the tests can tell which one ran a task.

Credentials as in the compose file: logins by the FAB auth manager (the admin set by compose_init),
and the workers never get the metadata DB's URL: they run tasks through the API server and write
Celery results as a role of their own, in a database of their own, that cannot open the metadata DB.
"""
from __future__ import annotations

import json
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

from tests.conftest import REPO, free_port

POSTGRES = "postgres@127.0.0.1:5432"
REDIS = "redis://127.0.0.1:6379"
AIRFLOW = [sys.executable, "-m", "airflow"]
WORKERS = {"cpu-worker": "default", "gpu-worker": "gpu"}
FAB = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
METADATA_DB = "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"  # what the workers do not get


class AirflowCluster:
    def __init__(self, home: Path, source: str, root: str, gpu_slots: int = 1):
        self.home = home
        self.gpu_slots = gpu_slots
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.database = f"airflow_{secrets.token_hex(4)}"
        self.redis_db = _claim_redis_db()
        self.processes: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, object] = {}
        self.token: str | None = None
        db = f"postgresql+psycopg2://{POSTGRES}/{self.database}"
        self.results_role, self.results_database = f"celery_{self.database}", f"{self.database}_results"
        self.results_password = secrets.token_urlsafe(16)
        results = (f"db+postgresql+psycopg2://{self.results_role}:{self.results_password}@127.0.0.1:5432/"
                   f"{self.results_database}")
        self.env = {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__FERNET_KEY": _fernet_key(),
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "emotion_pipeline.orchestration.airflow_adapter.worker_name",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__CORE__AUTH_MANAGER": FAB,
            METADATA_DB: db,
            "AIRFLOW__CELERY__BROKER_URL": f"{REDIS}/{self.redis_db}",
            "AIRFLOW__CELERY__RESULT_BACKEND": results,
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            # Every component must sign and check task tokens with the same secret.
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__LOGGING__COLORED_CONSOLE_LOG": "False",
            "EMOTION_PIPELINE_SOURCE": source,
            "EMOTION_PIPELINE_ROOT": root,
            "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
        }
        self.env.pop("MLFLOW_TRACKING_URI", None)

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        from emotion_pipeline.orchestration.compose_init import ensure_result_backend

        self.password = secrets.token_urlsafe(12)
        with _admin() as cursor:
            cursor.execute(f'CREATE DATABASE "{self.database}"')
        _redis_flush(self.redis_db)
        # What the compose file's init service does: schema, admin login, the Celery results role and
        # database (one per cluster here: clusters run side by side), gpu pool, DAG parsed once.
        self.airflow("db", "migrate")
        ensure_result_backend(self.env[METADATA_DB], self.results_password, role=self.results_role,
                              database=self.results_database)
        self.python("from emotion_pipeline.orchestration.compose_init import ensure_admin; import os; "
                    "ensure_admin(os.environ['AIRFLOW_ADMIN_PASSWORD'])", AIRFLOW_ADMIN_PASSWORD=self.password)
        self.airflow("pools", "set", "gpu", str(self.gpu_slots), "one slot per GPU")
        self.airflow("dags", "reserialize")
        self.spawn("api-server", "api-server", "--port", str(self.port))
        self.spawn("scheduler", "scheduler")
        self.spawn("dag-processor", "dag-processor")
        for name, queue in WORKERS.items():
            self.spawn(name, "celery", "worker", "--queues", queue, "--concurrency", "2",
                       "--celery-hostname", f"{name}@%h", env={"EMOTION_PIPELINE_WORKER_NAME": name},
                       without=(METADATA_DB,))
        self.wait_until_healthy()
        self.token = self.call("/auth/token", {"username": "admin", "password": self.password},
                               auth=False)["access_token"]

    def stop(self) -> None:
        """Stop every component (SIGTERM, then SIGKILL for the whole process group) and drop the DB."""
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:  # Celery's forked children and task supervisors too, whatever the parent did.
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
        for log in self.logs.values():
            log.close()
        _redis_flush(self.redis_db)
        _release_redis_db(self.redis_db)
        with _admin() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            cursor.execute(f'DROP DATABASE IF EXISTS "{self.results_database}" WITH (FORCE)')
            cursor.execute(f'DROP ROLE IF EXISTS "{self.results_role}"')

    def __enter__(self) -> AirflowCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def airflow(self, *args: str) -> str:
        result = subprocess.run([*AIRFLOW, *args], env=self.env, capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
        return result.stdout

    def python(self, code: str, **env: str) -> None:
        result = subprocess.run([sys.executable, "-c", code], env={**self.env, **env}, capture_output=True,
                                text=True, timeout=300)
        if result.returncode != 0:
            raise RuntimeError(f"{code} failed:\n{result.stderr[-4000:]}")

    def spawn(self, name: str, *args: str, env: dict | None = None, without: tuple[str, ...] = ()) -> None:
        log = open(self.home / f"{name}.log", "w")
        self.logs[name] = log
        environment = {k: v for k, v in {**self.env, **(env or {})}.items() if k not in without}
        self.processes[name] = subprocess.Popen(
            [*AIRFLOW, *args], env=environment, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() reaches every child
        )

    def wait_until_healthy(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                health = self.call("/api/v2/monitor/health", auth=False)
                if health["scheduler"]["status"] == "healthy" and health["dag_processor"]["status"] == "healthy":
                    return
            except (OSError, KeyError):
                pass
            time.sleep(2)
        raise TimeoutError(f"Airflow not healthy after {timeout} s\n{self.tail()}")

    def check_alive(self) -> None:
        dead = {name: p.returncode for name, p in self.processes.items() if p.poll() is not None}
        if dead:
            raise RuntimeError(f"Airflow components exited: {dead}\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(
            f"--- {name}.log\n"
            + "\n".join((self.home / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
            for name in self.processes
        )

    # -- REST API -------------------------------------------------------------------------------
    def call(self, path: str, body=None, method: str | None = None, auth: bool = True):
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            raise RuntimeError(f"{method or ('POST' if body else 'GET')} {path}: {error.code} {error.read()[:2000]!r}")

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 900) -> tuple[str, list[dict]]:
        """Final state of the run and its task instances (every map index)."""
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}"
        deadline = time.monotonic() + timeout
        while (state := self.call(path)["state"]) in ("queued", "running"):
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} still {state} after {timeout} s\n{self.tail()}")
            time.sleep(3)
        return state, self.call(f"{path}/taskInstances?limit=1000")["task_instances"]


    def wait_for_runs(self, dag_id: str, run_type: str, count: int = 1, timeout: float = 300) -> list[dict]:
        """The DAG's runs of ``run_type`` (``scheduled``, ``backfill``, ``asset_triggered``...) once
        there are ``count`` of them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = [r for r in self.call(f"/api/v2/dags/{dag_id}/dagRuns?limit=100")["dag_runs"]
                    if r["run_type"] == run_type]
            if len(runs) >= count:
                return runs
            self.check_alive()
            time.sleep(2)
        raise TimeoutError(f"fewer than {count} {run_type} runs after {timeout} s\n{self.tail()}")

    def xcom(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1, key: str = "return_value"):
        return self.call(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}"
                         f"?map_index={map_index}&deserialize=true&stringify=false")["value"]


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


class _admin:
    """An autocommit cursor on the machine's PostgreSQL (CREATE/DROP DATABASE cannot run in a transaction)."""

    def __enter__(self):
        # A server restarting after a crash of one of its processes refuses connections for a moment.
        deadline = time.monotonic() + 60
        while True:
            try:
                self.connection = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test")
                break
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)
        self.connection.autocommit = True
        return self.connection.cursor()

    def __exit__(self, *exc):
        self.connection.close()


def _claim_redis_db() -> int:
    """A Redis database (1-15) no other cluster of this machine uses: tests run in parallel (xdist),
    and two clusters on one broker database would run each other's tasks."""
    import redis

    claims = redis.Redis(host="127.0.0.1", port=6379, db=0)
    for db in range(1, 16):
        if claims.set(f"emotion-pipeline-tests:db{db}", os.getpid(), nx=True, ex=4 * 3600):
            return db
    raise RuntimeError("all Redis databases 1-15 are claimed by other test clusters")


def _release_redis_db(db: int) -> None:
    import redis

    redis.Redis(host="127.0.0.1", port=6379, db=0).delete(f"emotion-pipeline-tests:db{db}")


def _redis_flush(db: int) -> None:
    import redis

    redis.Redis(host="127.0.0.1", port=6379, db=db).flushdb()
