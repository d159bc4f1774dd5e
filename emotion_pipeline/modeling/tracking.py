"""MLflow wiring: where runs go, the git revision, the registered model and its champion alias."""
from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import tempfile
import urllib.parse
from contextlib import closing
from pathlib import Path

from emotion_pipeline.core import catalog
from emotion_pipeline.core.config import PipelineConfig, state_home
from emotion_pipeline.core.errors import StoreMoved  # re-exported: its home is core.errors
from emotion_pipeline.core.storage import GCS_SCHEME
from emotion_pipeline.modeling.classifier import LinearBaseline

EXPERIMENT = "emotion-pipeline"
CHAMPION = "champion"

log = logging.getLogger(__name__)


def tracking_uri(config: PipelineConfig) -> str:
    """Config, then $MLFLOW_TRACKING_URI, then a SQLite store under the (local) storage root."""
    if config.mlflow_tracking_uri:
        return config.mlflow_tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    folder = _local_mlflow_folder(config)
    folder.mkdir(parents=True, exist_ok=True)
    relocate_local_store(config)
    return f"sqlite:///{folder / catalog.MLFLOW_DB}"


def artifact_location(config: PipelineConfig) -> str:
    if config.root.startswith(GCS_SCHEME):
        return f"{config.root.rstrip('/')}/{catalog.MLFLOW_ARTIFACTS}"
    return (Path(config.root).expanduser().resolve() / catalog.MLFLOW_ARTIFACTS).as_uri()


def _local_mlflow_folder(config: PipelineConfig) -> Path:
    if config.root.startswith(GCS_SCHEME):  # a database cannot live in a bucket: keep it local
        return state_home() / catalog.MLFLOW_FOLDER
    return Path(config.root).expanduser().resolve() / catalog.MLFLOW_FOLDER


# The columns of MLflow's SQL store that hold absolute artifact locations: the experiment's, each run's,
# each logged model's and each registered version's (``source`` too, for versions of file-based sources).
_LOCATION_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                     ("logged_models", "artifact_location"), ("model_versions", "storage_location"),
                     ("model_versions", "source"))


def relocate_local_store(config: PipelineConfig) -> str | None:
    """Point a local root's MLflow store at the root where it is now.

    MLflow's SQLite store records absolute ``file://`` artifact locations, so a root moved, copied or
    restored elsewhere went on reading (and writing) the old root's files, or failed once they were
    gone. When the experiment's artifact location is not this root's ``mlflow/artifacts``, every
    location under the old one is rewritten to the same place under this root, in one transaction.

    Returns:
        The old artifact location, or None when nothing moved (no store yet, a GCS root whose store is
        not in the root, or a store already here).

    Raises:
        StoreMoved: the store must be rewritten but cannot be (a read-only copy).
    """
    if config.root.startswith(GCS_SCHEME):
        return None
    database = _local_mlflow_folder(config) / catalog.MLFLOW_DB
    if not database.is_file():
        return None
    here = artifact_location(config)
    with closing(sqlite3.connect(database, timeout=60)) as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        row = db.execute("SELECT artifact_location FROM experiments WHERE name = ?",
                         (EXPERIMENT,)).fetchone() if "experiments" in tables else None
        before = row and row[0]
        if not before or before == here or not before.startswith("file:") \
                or not before.endswith(f"/{catalog.MLFLOW_ARTIFACTS}"):
            return None
        try:
            with db:  # one transaction: all of them or none
                for table, column in _LOCATION_COLUMNS:
                    if table in tables:
                        db.execute(f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                                   f"WHERE {column} = ? OR substr({column}, 1, ?) = ?",
                                   (here, len(before) + 1, before, len(before) + 1, f"{before}/"))
        except sqlite3.OperationalError as err:  # read-only file or folder
            raise StoreMoved(f"the MLflow store under {config.root} was written for {before} and cannot be "
                             f"pointed at this root ({err}): open the root once with write access") from err
    log.warning("the MLflow store under %s was written for %s: its artifact locations now point into %s",
                config.root, before, here)
    return before


def load_model(uri: str):
    """A logged Keras head, loaded into memory. Its files are downloaded into a temp folder that is
    removed once loaded: MLflow's default leaves one ``/tmp/tmp*`` folder behind per load.

    Only the Keras v3 format, in Keras' safe mode (no Lambda layer's code is deserialized); an MLmodel
    that asks for an exported SavedModel or another flavor is refused, never loaded."""
    import mlflow
    import yaml

    with tempfile.TemporaryDirectory(prefix="emotion-model-") as folder:
        local = mlflow.artifacts.download_artifacts(uri, dst_path=folder)
        flavors = (yaml.safe_load((Path(local) / "MLmodel").read_text()) or {}).get("flavors") or {}
        keras_flavor = flavors.get("keras") or {}
        if not keras_flavor or keras_flavor.get("save_exported_model"):
            raise ValueError(f"{uri} is not a Keras v3 model (flavors {sorted(flavors)}): not loaded")
        return mlflow.keras.load_model(local, load_model_kwargs={"safe_mode": True})


BASELINE_FOLDER = "baseline"  # the run's artifact folder of the logistic baseline
BASELINE_FILE = "baseline.npz"


def log_baseline(mlflow, baseline: LinearBaseline) -> None:
    """The logistic baseline into the active run as plain arrays (``baseline/baseline.npz``): no pickle,
    unlike ``mlflow.sklearn``."""
    with tempfile.TemporaryDirectory(prefix="emotion-baseline-") as folder:
        path = Path(folder) / BASELINE_FILE
        path.write_bytes(baseline.to_npz())
        mlflow.log_artifact(str(path), artifact_path=BASELINE_FOLDER)


def load_baseline(run_id: str) -> LinearBaseline | None:
    """The run's logistic baseline, read with ``allow_pickle=False``; None when the run has none (a run
    trained before baselines were saved this way logged an ``mlflow.sklearn`` pickle, which is never
    loaded: its caller refits the baseline instead). A file that is not a baseline raises ValueError."""
    from mlflow import MlflowClient

    client = MlflowClient()
    wanted = f"{BASELINE_FOLDER}/{BASELINE_FILE}"
    if wanted not in {artifact.path for artifact in client.list_artifacts(run_id, BASELINE_FOLDER)}:
        return None
    with tempfile.TemporaryDirectory(prefix="emotion-baseline-") as folder:
        return LinearBaseline.from_npz(Path(client.download_artifacts(run_id, wanted, folder)).read_bytes())


def use_experiment(config: PipelineConfig):
    """Point mlflow at the store and the experiment; returns the mlflow module."""
    import mlflow

    # mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI, which would then override the store of
    # every later config in this process and its children (another root's runs would land here).
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri(config))
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before
    try:
        experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    except mlflow.exceptions.MlflowException as err:
        raise_login_problem(err, mlflow.get_tracking_uri())
        raise
    if experiment is None:
        mlflow.create_experiment(EXPERIMENT, artifact_location=artifact_location(config))
    mlflow.set_experiment(EXPERIMENT)
    return mlflow


def login_problem(err: Exception) -> str | None:
    """What to do when a tracking server refused the login (401) or the user (403); None otherwise.
    Names the settings, never their values."""
    code = getattr(err, "error_code", None)
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if code == "UNAUTHENTICATED":
        if user and os.environ.get("MLFLOW_TRACKING_PASSWORD"):
            return (f"the MLflow tracking server refused the login of user {user!r}: check "
                    "MLFLOW_TRACKING_PASSWORD (docker-compose: the MLFLOW_*_PASSWORD values in .env)")
        return ("the MLflow tracking server requires a login: set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD (docker-compose sets them from .env)")
    if code == "PERMISSION_DENIED":
        return (f"the MLflow user {user!r} may not do this: the pipeline's user needs MANAGE on the "
                f"{EXPERIMENT!r} experiment and the registered model (docker-compose's mlflow-init grants it)")
    return None


def raise_login_problem(err: Exception, uri: str) -> None:
    """Raise ``login_problem``'s advice, naming the server (without credentials), if it has one."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos import databricks_pb2

    problem = login_problem(err)
    if problem:  # then err has an error_code: UNAUTHENTICATED or PERMISSION_DENIED
        code = getattr(err, "error_code", "")
        raise MlflowException(f"{problem} (server {without_credentials(uri)})",
                              error_code=databricks_pb2.ErrorCode.Value(code)) from err


def without_credentials(uri: str) -> str:
    """``uri`` without a user and password in it (http://user:password@host/...)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    return urllib.parse.urlunsplit(parts._replace(netloc=host + (f":{parts.port}" if parts.port else "")))


TRAIN_TAG = "emotion_pipeline.stage"


def fail_abandoned_training_runs(mlflow) -> list[str]:
    """Mark FAILED the training runs a crashed attempt left RUNNING (killed mid-search, say).

    Called by ``train`` while it holds the root's ``train`` lease: no other training can be live, so a
    RUNNING training run without its ``model_version`` tag (set when training ends) is abandoned."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    running = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"attributes.status = 'RUNNING' and tags.`{TRAIN_TAG}` = 'train'",
    )
    abandoned = [run.info.run_id for run in running if "model_version" not in run.data.tags]
    for run_id in abandoned:
        client.set_tag(run_id, "failure", "abandoned: its process died before training ended")
        client.set_terminated(run_id, status="FAILED")
    return abandoned


def git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=10, check=False)  # outside a checkout: "unknown"
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def pinned_requirements(*packages: str) -> list[str]:
    """The installed versions of ``packages`` as a logged model's pip requirements. Given explicitly:
    MLflow would otherwise infer them by importing the model in a subprocess, ~10 s per model."""
    from importlib.metadata import version

    return [f"{package}=={version(package)}" for package in packages]
