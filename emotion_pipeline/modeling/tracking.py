"""MLflow wiring: where runs go, the git revision, the registered model and its champion alias."""
from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from emotion_pipeline.core import catalog
from emotion_pipeline.core.config import PipelineConfig, state_home
from emotion_pipeline.core.storage import GCS_SCHEME

EXPERIMENT = "emotion-pipeline"
CHAMPION = "champion"


def tracking_uri(config: PipelineConfig) -> str:
    """Config, then $MLFLOW_TRACKING_URI, then a SQLite store under the (local) storage root."""
    if config.mlflow_tracking_uri:
        return config.mlflow_tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    folder = _local_mlflow_folder(config)
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / catalog.MLFLOW_DB}"


def artifact_location(config: PipelineConfig) -> str:
    if config.root.startswith(GCS_SCHEME):
        return f"{config.root.rstrip('/')}/{catalog.MLFLOW_ARTIFACTS}"
    return (Path(config.root).expanduser().resolve() / catalog.MLFLOW_ARTIFACTS).as_uri()


def _local_mlflow_folder(config: PipelineConfig) -> Path:
    if config.root.startswith(GCS_SCHEME):  # a database cannot live in a bucket: keep it local
        return state_home() / catalog.MLFLOW_FOLDER
    return Path(config.root).expanduser().resolve() / catalog.MLFLOW_FOLDER


def load_model(uri: str, flavor: str = "keras"):
    """A logged model, loaded into memory. Its files are downloaded into a temp folder that is
    removed once loaded: MLflow's default leaves one ``/tmp/tmp*`` folder behind per load."""
    import mlflow

    loader = {"keras": mlflow.keras.load_model, "sklearn": mlflow.sklearn.load_model}[flavor]
    with tempfile.TemporaryDirectory(prefix="emotion-model-") as folder:
        return loader(uri, dst_path=folder)


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
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        mlflow.create_experiment(EXPERIMENT, artifact_location=artifact_location(config))
    mlflow.set_experiment(EXPERIMENT)
    return mlflow


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
                             text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def pinned_requirements(*packages: str) -> list[str]:
    """The installed versions of ``packages`` as a logged model's pip requirements. Given explicitly:
    MLflow would otherwise infer them by importing the model in a subprocess, ~10 s per model."""
    from importlib.metadata import version

    return [f"{package}=={version(package)}" for package in packages]
