"""docker-compose.yml validates (Debian's docker-compose v1 needs no Docker engine for `config`) and
says what the scale-out needs: Celery, a gpu worker with an NVIDIA reservation, secrets only from .env,
each given only to the services that use it and never on a command line, every port on loopback."""
import configparser
import json
import re
import secrets
import shutil
import subprocess

import yaml

from emotion_pipeline.core.config import PipelineConfig
from tests.conftest import REPO

MLFLOW_SECRETS = ("MLFLOW_ADMIN_PASSWORD", "MLFLOW_PIPELINE_PASSWORD", "MLFLOW_READER_PASSWORD", "MLFLOW_SECRET_KEY")
SECRETS = ("AIRFLOW_ADMIN_PASSWORD", "POSTGRES_PASSWORD", "CELERY_DB_PASSWORD", "AIRFLOW_FERNET_KEY",
           "AIRFLOW_SECRET_KEY", "AIRFLOW_JWT_SECRET", *MLFLOW_SECRETS)
AIRFLOW_SERVICES = {"airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                    "airflow-triggerer", "worker-cpu", "worker-gpu"}
WORKERS = {"worker-cpu", "worker-gpu"}
# Who may hold each password (README "Security"). In Airflow 3 a Celery worker runs its tasks through
# the API server's execution API: it never needs the metadata DB; its Celery results go to a database
# of their own, as a role that cannot open Airflow's or MLflow's.
HOLDERS = {
    "POSTGRES_PASSWORD": {"postgres", "airflow-init", "airflow-apiserver", "airflow-scheduler",
                          "airflow-dag-processor", "airflow-triggerer", "mlflow"},
    "CELERY_DB_PASSWORD": {"airflow-init", "airflow-scheduler", *WORKERS},
    "AIRFLOW_ADMIN_PASSWORD": {"airflow-init"},
    # MLflow's logins: the server bootstraps its admin, mlflow-init sets every user, the workers log in
    # as `pipeline`, the API as `reader`.
    "MLFLOW_ADMIN_PASSWORD": {"mlflow", "mlflow-init"},
    "MLFLOW_SECRET_KEY": {"mlflow"},
    "MLFLOW_PIPELINE_PASSWORD": {"mlflow-init", *WORKERS},
    "MLFLOW_READER_PASSWORD": {"mlflow-init", "api"},
}
FAB = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
PUBLIC_PORTS: dict[str, str] = {}  # "service:port": where the README says why it listens beyond loopback


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


def rendered(tmp_path, **extra):
    """The compose file as `docker compose` runs it, with a random value for every secret."""
    values = {name: secrets.token_hex(12) for name in SECRETS}
    env_file = env_from_template(tmp_path, **values, **extra)
    assert compose(env_file, "config", "-q").returncode == 0
    result = compose(env_file, "config")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)["services"], values


def test_compose_file_validates_and_wires_celery_gpu_and_secrets(tmp_path):
    services, values = rendered(tmp_path, GPU_COUNT="2", EMOTION_PIPELINE_SCHEDULE="@daily",
                                EMOTION_PIPELINE_BATCH="{{ ds }}")

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
    assert values["POSTGRES_PASSWORD"] in envs["airflow-scheduler"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    for name in (*WORKERS, "airflow-scheduler"):  # the executor reads what the workers write
        assert envs[name]["AIRFLOW__CELERY__RESULT_BACKEND"] == (
            f"db+postgresql+psycopg2://celery:{values['CELERY_DB_PASSWORD']}@postgres:5432/celery_results")

    gpu, cpu = services["worker-gpu"], services["worker-cpu"]
    assert "--queues gpu" in " ".join(as_list(gpu["command"]))
    assert "--queues default" in " ".join(as_list(cpu["command"]))
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert gpu["build"]["target"] == "gpu" and cpu["build"]["target"] == "cpu"
    init = " ".join(as_list(services["airflow-init"]["command"])).replace("$$", "$")  # v1 keeps the escape
    assert "airflow db migrate" in init and 'airflow pools set gpu "$GPU_COUNT"' in init
    assert services["airflow-init"]["environment"]["GPU_COUNT"] == "2"
    assert ("127.0.0.1", 8080, 8080) in published(services["airflow-apiserver"])

    # No secret is written in the compose file itself.
    raw = (REPO / "docker-compose.yml").read_text()
    for value in values.values():
        assert value not in raw


def test_no_secret_is_written_given_where_not_needed_or_put_on_a_command_line(tmp_path):
    services, values = rendered(tmp_path)
    raw_text = (REPO / "docker-compose.yml").read_text()
    raw = yaml.safe_load(raw_text)
    # No literal: every credential-looking variable is a reference to .env, and so is every password
    # inside a URL (user:password@host).
    for name, service in raw["services"].items():
        env = service.get("environment") or {}
        for key, value in (env.items() if isinstance(env, dict) else ()):
            if re.search(r"PASSWORD|SECRET|FERNET|TOKEN|_KEY$", key) and value not in ("", None):
                assert re.fullmatch(r"\$\{[A-Z0-9_]+(:[?-][^}]*)?\}", str(value)), (name, key, value)
    for password in re.findall(r"://[^/\s:@]+:([^@\s]+)@", raw_text):
        assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]*\}", password), password  # required, never a default
    assert "admin:admin" not in raw_text

    # Each password reaches only its holders, and no command line, entrypoint or health check.
    for name, service in services.items():
        text = json.dumps(service)
        for secret, holders in HOLDERS.items():
            assert (values[secret] in text) == (name in holders), (secret, name)
        argv = json.dumps([service.get("command"), service.get("entrypoint"), service.get("healthcheck")])
        for secret, value in values.items():
            assert value not in argv, (name, secret)
    for name in WORKERS:
        env = services[name]["environment"]
        assert "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" not in env, name
        assert not any("@postgres:5432/airflow" in str(v) or "/mlflow" in str(v) and "@" in str(v)
                       for v in env.values()), name

    # Logins are the FAB auth manager's (hashes in the metadata DB): no password file, no volume for one.
    for name in AIRFLOW_SERVICES:
        assert services[name]["environment"]["AIRFLOW__CORE__AUTH_MANAGER"] == FAB, name
    everything = json.dumps(services)
    assert "SIMPLE_AUTH_MANAGER" not in everything and "passwords.json" not in everything
    init = " ".join(as_list(services["airflow-init"]["command"]))
    assert "python -m emotion_pipeline.orchestration.compose_init" in init
    assert (REPO / "emotion_pipeline" / "orchestration" / "compose_init.py").is_file()
    constraints = (REPO / "requirements" / "constraints.txt").read_text()
    assert re.search(r"^apache-airflow-providers-fab==", constraints, re.M)  # in the images' pinned set


def test_every_published_port_listens_on_loopback(tmp_path):
    services, _ = rendered(tmp_path)
    seen = 0
    for name, service in services.items():
        for host_ip, port, _ in published(service):
            seen += 1
            if f"{name}:{port}" in PUBLIC_PORTS:
                assert PUBLIC_PORTS[f"{name}:{port}"] in (REPO / "README.md").read_text()
                continue
            assert host_ip == "127.0.0.1", (name, port, host_ip)
    assert seen >= 3  # the UI, MLflow, the API


def test_the_api_service_waits_for_mlflow_is_health_checked_and_restarted(tmp_path):
    services, _ = rendered(tmp_path)
    api = services["api"]
    assert api["depends_on"]["mlflow"] == {"condition": "service_healthy"}
    assert services["mlflow"].get("healthcheck", {}).get("test"), "service_healthy needs mlflow's healthcheck"
    check = " ".join(as_list(api["healthcheck"]["test"]))
    assert "http://127.0.0.1:8080/health" in check  # 503 until a model is loaded
    assert api["healthcheck"].get("start_period")  # loading TensorFlow and the model takes a while
    assert api["restart"] in ("unless-stopped", "always", "on-failure")


def test_the_api_image_is_pinned_and_bakes_every_weight_in():
    dockerfile = (REPO / "docker" / "api.Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", dockerfile, re.M).group(1)
    # An exact Python patch release and its registry digest: a rebuild gets the same base image.
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+@sha256:[0-9a-f]{64}", base), base
    # ResNet50's ImageNet weights land in a fixed KERAS_HOME at build time, where the runtime user
    # finds them (it was root's ~/.keras, so every cold start downloaded 94 MB), through the same
    # function the API calls.
    assert re.search(r"^ENV [^\n]*KERAS_HOME=/opt/keras", dockerfile.replace("\\\n", " "), re.M)
    bake = dockerfile.index("resnet50('imagenet')")
    assert bake < dockerfile.index("USER app")
    assert "/opt/keras" in dockerfile[dockerfile.index("useradd"):]  # readable by the runtime user
    assert baked_detectors(dockerfile, before="USER app") >= {DEFAULT_DETECTOR, "mtcnn"}


def test_the_worker_image_bakes_the_detectors_in():
    dockerfile = (REPO / "docker" / "airflow.Dockerfile").read_text()
    assert baked_detectors(dockerfile, before="FROM cpu AS gpu") >= {DEFAULT_DETECTOR, "mtcnn"}


DEFAULT_DETECTOR = PipelineConfig.__dataclass_fields__["detector"].default


def baked_detectors(dockerfile: str, before: str) -> set[str]:
    """The detectors a Dockerfile runs once at build time, before ``before``: the API and the workers
    detect with the run's detector (YuNet by default), and each downloads its weights on first use
    (YuNet's ONNX file: on every cold start, or a failure offline) unless the image has them."""
    baked = re.search(r"detect_faces\(np\.zeros\(.*?, d\) for d in \(([^)]*)\)", dockerfile)
    assert baked and dockerfile.index(baked.group(0)) < dockerfile.index(before), "the detectors are not baked"
    return {d.strip(" '") for d in baked.group(1).split(",")}


def test_mlflow_runs_its_login_on_loopback_and_every_client_logs_in_from_env(tmp_path):
    """MLflow's basic-auth app (tests/modeling/test_mlflow_auth.py starts it with the same ini), bound to
    the host's loopback, its admin password and every client's from .env, on no command line."""
    services, values = rendered(tmp_path)
    mlflow = services["mlflow"]
    command = " ".join(as_list(mlflow["entrypoint"]) + as_list(mlflow["command"]))
    assert re.search(r"\bmlflow server\b.*--app-name[= ]basic-auth\b", command), command
    assert published(mlflow) == [("127.0.0.1", 5000, 5000)]  # never 0.0.0.0:5000
    env = mlflow["environment"]
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == values["MLFLOW_ADMIN_PASSWORD"]
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == values["MLFLOW_SECRET_KEY"]
    assert set(mlflow["healthcheck"]["test"]) >= {"http://localhost:5000/health"}

    # The auth config: compose's file, read-only; its user store on the mlflow-auth volume; no password.
    for name in ("mlflow", "mlflow-init"):
        mounts = [str(v) for v in services[name]["volumes"]]
        config = services[name]["environment"]["MLFLOW_AUTH_CONFIG_PATH"]
        assert f"{REPO}/docker/mlflow-auth.ini:{config}:ro" in mounts, mounts
        assert any(v.startswith("mlflow-auth:") or ":/opt/airflow/mlflow-auth:" in v + ":" for v in mounts), mounts
    ini = configparser.ConfigParser()
    ini.read(REPO / "docker" / "mlflow-auth.ini")
    assert ini["mlflow"]["default_permission"] == "READ"
    assert ini["mlflow"]["database_uri"].startswith("sqlite:////opt/airflow/mlflow-auth/")
    assert "admin_password" not in ini["mlflow"]
    assert "mkdir -p /opt/airflow/mlflow-auth" in (REPO / "docker" / "airflow.Dockerfile").read_text()

    # Every client logs in with its own user, from the environment.
    envs = {name: service.get("environment") or {} for name, service in services.items()}
    logins = {name: (env.get("MLFLOW_TRACKING_USERNAME"), env.get("MLFLOW_TRACKING_PASSWORD"))
              for name, env in envs.items()}
    for name in WORKERS:
        assert logins[name] == ("pipeline", values["MLFLOW_PIPELINE_PASSWORD"]), name
    assert logins["api"] == ("reader", values["MLFLOW_READER_PASSWORD"])
    assert logins["mlflow-init"] == ("admin", values["MLFLOW_ADMIN_PASSWORD"])
    init = services["mlflow-init"]
    assert "emotion_pipeline.modeling.tracking_users" in " ".join(as_list(init["entrypoint"]))
    assert init["depends_on"]["mlflow"] == {"condition": "service_healthy"}
    assert init["environment"]["MLFLOW_PIPELINE_PASSWORD"] == values["MLFLOW_PIPELINE_PASSWORD"]
    assert init["environment"]["MLFLOW_READER_PASSWORD"] == values["MLFLOW_READER_PASSWORD"]

    # No MLflow credential on any command line, entrypoint or health check.
    for name, service in services.items():
        argv = json.dumps([service.get("command"), service.get("entrypoint"), service.get("healthcheck")])
        for secret in MLFLOW_SECRETS:
            assert values[secret] not in argv, (name, secret)


def test_images_build_on_the_official_airflow_image_with_a_gpu_target():
    dockerfile = (REPO / "docker" / "airflow.Dockerfile").read_text()
    assert "FROM apache/airflow:3.3.2-python3.11 AS cpu" in dockerfile
    assert "FROM cpu AS gpu" in dockerfile and "tensorflow[and-cuda]" in dockerfile
    assert "requirements/constraints.txt" in dockerfile  # the same pinned set as `make install`


def as_list(command):
    return command if isinstance(command, list) else command.split()


def published(service) -> list[tuple[str, int, int]]:
    """(host address, published port, container port) of each port, in v1's short or long form."""
    ports = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            ports.append((port.get("host_ip", "0.0.0.0"), int(port["published"]), int(port["target"])))
            continue
        parts = str(port).split("/")[0].split(":")
        host_ip = parts[0] if len(parts) == 3 else "0.0.0.0"
        ports.append((host_ip, int(parts[-2]), int(parts[-1])))
    return ports
