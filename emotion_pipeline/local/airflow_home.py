"""A self-contained Airflow on this machine: its metadata DB, this repo's DAG, the gpu pool.

Used by ``emotion-pipeline run`` (the DAG in-process through ``dag.test``, on a SQLite file: one process,
nothing to start) and ``emotion-pipeline ui`` (``airflow standalone``, whose components write at once:
on the PostgreSQL of ``local_postgres``). Airflow reads its configuration when first imported, so ``configure`` sets
the environment before anything imports it.
"""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from emotion_pipeline.core.config import state_home

DAG_ID = "emotion_pipeline"
DEFAULT_HOME = state_home() / "airflow"
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"  # SimpleAuthManager's, in the home


def dags_folder() -> Path:
    """The repo's ``dags/`` (the package is installed editable from a clone), or $EMOTION_PIPELINE_DAGS."""
    folder = Path(os.environ.get("EMOTION_PIPELINE_DAGS") or Path(__file__).resolve().parents[2] / "dags")
    if not (folder / "emotion_pipeline_dag.py").is_file():
        raise FileNotFoundError(
            f"no emotion_pipeline_dag.py in {folder}: install the package editable from a clone "
            "(`make install`) or set EMOTION_PIPELINE_DAGS to the folder holding the DAG file"
        )
    return folder


def airflow_env(home: Path, executor: str = "LocalExecutor", database_url: str | None = None) -> dict[str, str]:
    """Environment for an Airflow whose home, database and DAG folder are this project's
    (the database: ``database_url``, else the SQLite file ``<home>/airflow.db``)."""
    home = home.resolve()
    bin_dir = str(Path(sys.executable).parent)  # `airflow standalone` starts `airflow ...` subprocesses
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder()),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": executor,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database_url or f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__LOGGING__COLORED_CONSOLE_LOG": "False",
        # The LocalExecutor starts a worker process per parallelism slot (32 by default): on one machine
        # two tasks a core is plenty (each loads TensorFlow), unless the user set it.
        "AIRFLOW__CORE__PARALLELISM": os.environ.get("AIRFLOW__CORE__PARALLELISM") or str(2 * (os.cpu_count() or 2)),
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
    }


def configure(home: Path = DEFAULT_HOME, executor: str = "LocalExecutor", database_url: str | None = None,
              database_folder: Path | None = None) -> dict[str, str]:
    """Point this process (and its children) at the local Airflow and make sure its DB is ready.
    ``database_folder`` holds the database's files (default: the home, where airflow.db is)."""
    home.mkdir(parents=True, exist_ok=True)
    env = airflow_env(home, executor, database_url)
    os.environ.update(env)
    migrate(database_folder or home)
    return env


def migrate(database_folder: Path) -> None:
    """``airflow db migrate`` once per Airflow version (it takes seconds even when there is nothing to do).
    The stamp lives beside the database's files, so deleting them (a reset) migrates again."""
    from importlib.metadata import version

    stamp = database_folder / f".migrated-{version('apache-airflow-core')}"
    if stamp.exists():
        return
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], env=os.environ.copy(),
        capture_output=True, text=True, check=False,  # a failure raises below, with airflow's output
    )
    if result.returncode != 0:
        raise RuntimeError(f"airflow db migrate failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    stamp.touch()


def private_password_file(home: Path) -> Path:
    """SimpleAuthManager's admin password file (``airflow standalone`` generates the password into it),
    made private to this user before Airflow first writes it. Airflow opens it with ``open(path, "a+")``:
    created by Airflow it gets the umask's mode, 0644, and every user of the machine reads the admin
    password; an existing file keeps its mode. So it is created here, empty, with mode 0600 from the
    start (never created open and chmod'ed after). One that an earlier version left readable by others
    is replaced by a private copy (a new 0600 file, renamed over it). A symlink or anything but a
    regular file of this user is refused."""
    path = home / PASSWORDS_FILE
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        return path
    if not stat.S_ISREG(found.st_mode) or found.st_uid != os.getuid():
        raise RuntimeError(f"{path} is not a regular file of this user: remove it, and `ui` makes a new one")
    if found.st_mode & 0o077:
        content = path.read_bytes()
        private = path.with_name(f".{path.name}.{os.getpid()}")
        descriptor = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(content)
        os.replace(private, path)
    return path


def ensure_gpu_pool(slots: int = 1) -> None:
    """Tasks in a pool that does not exist never start: create ``gpu`` (one slot per GPU)."""
    from airflow.models.pool import Pool

    if Pool.get_pool("gpu") is None:
        Pool.create_or_update_pool(
            "gpu", slots=slots, description="one slot per GPU: DeepFace and ResNet50 tasks",
            include_deferred=False,
        )


def set_paused(paused: bool) -> bool:
    """Pause or unpause the DAG in the metadata database; returns whether it was paused before."""
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    with create_session() as session:
        model = session.get(DagModel, DAG_ID)
        if model is None:
            return False
        before, model.is_paused = model.is_paused, paused
    return before


def load_dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(dags_folder()))
    if bag.import_errors:
        raise RuntimeError(f"the DAG does not import: {bag.import_errors}")
    return bag.get_dag(DAG_ID)
