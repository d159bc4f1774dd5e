"""docker-compose.yml validates (Debian's docker-compose v1 needs no Docker engine for `config`) and
says what the scale-out needs: Celery, a gpu worker with an NVIDIA reservation, secrets only from .env."""
import secrets
import shutil
import subprocess

import yaml

from tests.conftest import REPO

SECRETS = ("AIRFLOW_ADMIN_PASSWORD", "POSTGRES_PASSWORD", "AIRFLOW_FERNET_KEY", "AIRFLOW_SECRET_KEY",
           "AIRFLOW_JWT_SECRET")
AIRFLOW_SERVICES = {"airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                    "airflow-triggerer", "worker-cpu", "worker-gpu"}


def compose(env_file, *args):
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is missing: `make system-deps` installs Debian's"
    return subprocess.run([binary, "--env-file", str(env_file), "-f", str(REPO / "docker-compose.yml"), *args],
                          capture_output=True, text=True, cwd=REPO)


def env_from_template(tmp_path, **values):
    """.env.example with the given values filled in, as a user would write .env."""
    lines = []
    for line in (REPO / ".env.example").read_text().splitlines():
        name = line.split("=", 1)[0]
        lines.append(f"{name}={values[name]}" if name in values else line)
    path = tmp_path / ".env"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_compose_refuses_to_start_without_the_secrets(tmp_path):
    result = compose(env_from_template(tmp_path), "config", "-q")
    assert result.returncode != 0
    assert "in .env" in result.stderr  # the message says where to set it


def test_compose_file_validates_and_wires_celery_gpu_and_secrets(tmp_path):
    values = {name: secrets.token_hex(12) for name in SECRETS}
    env_file = env_from_template(tmp_path, GPU_COUNT="2", EMOTION_PIPELINE_SCHEDULE="@daily",
                                 EMOTION_PIPELINE_BATCH="{{ ds }}", **values)
    assert compose(env_file, "config", "-q").returncode == 0
    result = compose(env_file, "config")
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]

    assert AIRFLOW_SERVICES | {"postgres", "redis", "mlflow"} <= set(services)
    envs = {name: services[name]["environment"] for name in AIRFLOW_SERVICES}
    assert {e["AIRFLOW__CORE__EXECUTOR"] for e in envs.values()} == {"CeleryExecutor"}
    # Backfill by date: the schedule and the batch layout reach the DAG's parsers and workers.
    for name in ("airflow-scheduler", "airflow-dag-processor", "worker-cpu", "worker-gpu"):
        assert envs[name]["EMOTION_PIPELINE_SCHEDULE"] == "@daily", name
        assert envs[name]["EMOTION_PIPELINE_BATCH"] == "{{ ds }}", name
    # One JWT secret and one Fernet key across components, and they are the user's.
    assert {e["AIRFLOW__API_AUTH__JWT_SECRET"] for e in envs.values()} == {values["AIRFLOW_JWT_SECRET"]}
    assert {e["AIRFLOW__CORE__FERNET_KEY"] for e in envs.values()} == {values["AIRFLOW_FERNET_KEY"]}
    assert values["POSTGRES_PASSWORD"] in envs["worker-cpu"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert envs["worker-gpu"]["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg2://")

    gpu, cpu = services["worker-gpu"], services["worker-cpu"]
    assert "--queues gpu" in " ".join(as_list(gpu["command"]))
    assert "--queues default" in " ".join(as_list(cpu["command"]))
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert gpu["build"]["target"] == "gpu" and cpu["build"]["target"] == "cpu"
    init = " ".join(as_list(services["airflow-init"]["command"])).replace("$$", "$")  # v1 keeps the escape
    assert "airflow db migrate" in init and 'airflow pools set gpu "$GPU_COUNT"' in init
    assert services["airflow-init"]["environment"]["GPU_COUNT"] == "2"
    assert {"published": 8080, "target": 8080} in services["airflow-apiserver"]["ports"]

    # No secret is written in the compose file itself.
    raw = (REPO / "docker-compose.yml").read_text()
    for value in values.values():
        assert value not in raw


def test_images_build_on_the_official_airflow_image_with_a_gpu_target():
    dockerfile = (REPO / "docker" / "airflow.Dockerfile").read_text()
    assert "FROM apache/airflow:3.3.2-python3.11 AS cpu" in dockerfile
    assert "FROM cpu AS gpu" in dockerfile and "tensorflow[and-cuda]" in dockerfile
    assert "requirements/constraints.txt" in dockerfile  # the same pinned set as `make install`


def as_list(command):
    return command if isinstance(command, list) else command.split()
