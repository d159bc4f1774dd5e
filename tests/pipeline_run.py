"""Run the real DAG through the real CLI (``emotion-pipeline run``) and check what it wrote."""
from __future__ import annotations

import functools
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from emotion_pipeline.core.config import CLASSES, EMOTIONS, detector_min_confidence
from emotion_pipeline.core.storage import Storage

CLI = str(Path(sys.executable).parent / "emotion-pipeline")


def smtp_connection(port: int) -> str:
    return json.dumps({"conn_type": "smtp", "host": "127.0.0.1", "port": port, "extra": {
        "disable_ssl": True, "disable_tls": True, "from_email": "pipeline@example.com", "retry_limit": 0}})


def run_pipeline(source: str, root: str, workdir: Path, *args: str, env: dict | None = None) -> dict:
    summary_path = workdir / f"summary-{len(list(workdir.glob('summary-*')))}.json"
    result = subprocess.run(
        [CLI, "run", "--source", source, "--root", root, "--airflow-home", str(airflow_home(workdir / "airflow")),
         "--summary-json", str(summary_path), *args],
        env={**_without_mlflow_uri(os.environ), **(env or {})}, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-6000:]
    assert "photos:" in result.stdout and "drifted shards:" in result.stdout  # the printed summary
    summary = json.loads(summary_path.read_text())
    # The dataset's labels, also after a run with nothing new (that line used to disappear).
    labels = ", ".join(f"{k} {v}" for k, v in summary["labels"].items()) or "none"
    assert f"\nlabels: {labels}\n" in result.stdout, result.stdout[-3000:]
    return summary


_TEMPLATES = Path(tempfile.gettempdir())  # read at import: some tests point tempfile elsewhere later


@functools.cache
def _migrated_template() -> Path:
    """An Airflow home with a migrated database, made on first use in this test process."""
    template = Path(tempfile.mkdtemp(prefix="airflow-db-template-", dir=_TEMPLATES))
    subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                    "from emotion_pipeline.local.airflow_home import configure; configure(Path(sys.argv[1]))",
                    str(template)], check=True, capture_output=True, timeout=300)
    return template


def airflow_home(home: Path) -> Path:
    """``home`` for ``emotion-pipeline run --airflow-home``; a new one gets a copy of a database
    migrated once per test session (``airflow db migrate`` takes ~12 s, the same for every home)."""
    if home.exists():
        return home
    template = _migrated_template()
    home.mkdir(parents=True)
    for migrated in [template / "airflow.db", *template.glob(".migrated-*")]:
        shutil.copy2(migrated, home / migrated.name)
    return home


def _without_mlflow_uri(environ) -> dict:
    """Each run keeps its root's own MLflow store, whatever an earlier in-process test exported."""
    return {k: v for k, v in environ.items() if k != "MLFLOW_TRACKING_URI"}


def photo_entries(folder: Path) -> list[str]:
    """Every entry named like a photo under ``folder`` (links, pipes and sockets included), relative."""
    from emotion_pipeline.core.manifest import is_image_name

    return sorted((Path(d) / name).relative_to(folder).as_posix()
                  for d, _, names in os.walk(folder) for name in names if is_image_name(name))


def shard_results(summary: dict, task: str) -> list[dict]:
    """The stage summaries of the shard tasks that ran (a task mapped over nothing has none)."""
    return [t["result"] for t in summary["tasks"] if t["task"] == task and t["result"] is not None]


def read_parquet(storage: Storage, key: str) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(storage.read_bytes(key)))


def check_outputs(root: Storage, expected_status: dict[str, str], all_files: list[str]) -> pd.DataFrame:
    """Every output of the first half exists, is consistent, and accounts for every input file."""
    dataset = read_parquet(root, "datasets/final_emotion_dataset.parquet")
    csv = pd.read_csv(io.BytesIO(root.read_bytes("datasets/final_emotion_dataset.csv")))
    assert len(csv) == len(dataset)
    assert sorted(dataset["source_key"]) == sorted(all_files)  # discovered == rows, each once
    by_name = dataset.set_index("source_key")
    for name, status in expected_status.items():
        assert by_name.loc[name, "status"] == status, (name, by_name.loc[name, "error"])
        assert by_name.loc[name, "error"], name
    assert set(dataset["status"]) <= {"ok", "no_face", "duplicate", "near_duplicate", "corrupt", "unsupported", "empty",
                                      "too_large", "broken_link", "not_a_file", "unreadable"}

    processed = dataset[dataset["status"].isin(["ok", "no_face"])]
    assert len(processed) > 0
    for uri in processed["processed_uri"].head(10):
        key = uri.split("/processed/")[1]
        with Image.open(io.BytesIO(root.read_bytes(f"processed/{key}"))) as image:
            assert image.size == (224, 224) and image.mode == "RGB"

    ok = dataset[dataset["status"] == "ok"]
    assert (dataset[dataset["status"] != "ok"]["label"].isna()).all()  # no face -> never a label
    assert set(ok["label"].dropna()) <= set(CLASSES)
    unlabelled = ok[ok["label"].isna()]
    # The label is the default teacher's: the mean of DeepFace's and the mini-Xception's scores.
    mean = (unlabelled[[f"emotion_{e}" for e in EMOTIONS]].to_numpy(dtype=float)
            + unlabelled[[f"xception_{e}" for e in EMOTIONS]].to_numpy(dtype=float)) / 2
    assert {EMOTIONS[i] for i in mean.argmax(axis=1)} <= {"fear", "disgust"}
    scores = ok[[f"emotion_{e}" for e in EMOTIONS]].to_numpy()
    np.testing.assert_allclose(scores.sum(axis=1), 100.0, rtol=1e-4)
    threshold = ok["detector"].map(detector_min_confidence)  # the runs leave min_face_confidence empty
    assert (ok["face_confidence"] >= threshold).all() and (ok["n_confident_faces"] >= 1).all()
    assert (ok["face_w"] > 0).all() and (ok["face_x"] + ok["face_w"] <= ok["upright_width"] + 1).all()

    for shard in sorted(dataset["shard"].unique()):
        prefix = f"shard={int(shard):05d}"
        for key in (f"metadata/{prefix}/metadata", f"annotations/{prefix}/annotations", f"annotations/{prefix}/faces"):
            assert root.exists(f"{key}.parquet") and root.exists(f"{key}.csv"), key
        faces = read_parquet(root, f"annotations/{prefix}/faces.parquet")
        shard_ok = ok[ok["shard"] == shard]
        assert set(shard_ok["image_id"]) <= set(faces["image_id"])
        assert root.exists(f"monitoring/charts/{prefix}.png")

    monitor_log = pd.read_csv(io.BytesIO(root.read_bytes("monitoring/label_monitor_log.csv")))
    assert sorted(monitor_log["shard"]) == sorted(int(s) for s in dataset["shard"].unique())
    assert root.exists("monitoring/charts/drift_timeline.png")
    return dataset


# Tests and CI cannot download ImageNet weights: ResNet50 runs with weights=None (same graph and cost).
MIN_ROWS_PER_CLASS = 3  # a few dozen photos in a test: classes this small still train
# Random weights and a 2-epoch search may lose to the logistic baseline: these runs check the champion anyway.
SECOND_HALF_ARGS = ("--embed-weights", "none", "--tuner-max-epochs", "2", "--shap-images", "1",
                    "--shap-image-evals", "40", "--min-rows-per-class", str(MIN_ROWS_PER_CLASS),
                    "--promote-below-baseline")


def check_second_half(root: Storage, dataset: pd.DataFrame, summary: dict) -> dict:
    """Vectors aligned with their index, the report and its figures; returns the train summary."""
    vectors = np.load(io.BytesIO(root.read_bytes("features/image_vectors.npy")))
    index = read_parquet(root, "features/image_index.parquet")
    assert vectors.dtype == np.float32 and vectors.shape == (len(index), 2048)
    assert index["row"].tolist() == list(range(len(index)))
    embedded = dataset[dataset["status"].isin(["ok", "no_face"])]
    assert sorted(index["image_id"]) == sorted(embedded["image_id"])
    faces = index.merge(embedded[["image_id", "face_w"]], on="image_id")
    assert ((faces["input"] == "face") == faces["face_w"].notna()).all()
    assert np.isfinite(vectors).all() and (np.abs(vectors).sum(axis=1) > 0).all()

    train = next(t["result"] for t in summary["tasks"] if t["task"] == "train")
    evaluation = next(t["result"] for t in summary["tasks"] if t["task"] == "evaluate")
    assert train["trained"] and evaluation["evaluated"]
    folder = f"reports/{train['model_version']}"
    metrics = json.loads(root.read_bytes(f"{folder}/metrics.json"))
    assert set(metrics["metrics"]) == {"model", "baseline", "majority"}
    for figure in ("confusion_matrix", "shap_embedding_summary", "shap_image_heatmaps", "tsne"):
        with Image.open(io.BytesIO(root.read_bytes(f"{folder}/{figure}.png"))) as image:
            assert image.size[0] > 300, figure
    page = root.read_bytes(f"{folder}/report.html").decode()
    assert page.count("data:image/png;base64,") == 4
    for section in ("<h2>Dataset</h2>", "<h2>Model</h2>", "logistic regression baseline", "majority class",
                    f"{len(dataset)} photos"):
        assert section in page, section
    return train


def check_mlflow(tracking_uri: str, train: dict, registered_model: str = "emotion-classifier") -> None:
    """The real tracking store holds the parent run, one nested run per trial, the registered model."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    parent = client.get_run(train["run_id"])
    assert parent.data.params["data.fingerprint"] == train["data_fingerprint"]
    assert parent.data.params["git_revision"] and "config.detector" in parent.data.params
    assert "model.test_macro_f1" in parent.data.metrics and "baseline.test_macro_f1" in parent.data.metrics
    nested = client.search_runs([parent.info.experiment_id],
                                filter_string=f"tags.mlflow.parentRunId = '{train['run_id']}'")
    assert parent.data.params["training.mode"] == train["mode"]
    if train["mode"] == "refit":  # the champion's hyperparameters refit: no trial
        assert len(nested) == train["trials"] == 0
        assert {"best.units", "best.dropout", "best.learning_rate", "best.l2"} <= set(parent.data.params)
    else:
        assert len(nested) == train["trials"] >= 2
    for trial in nested:
        assert {"units", "dropout", "learning_rate", "l2"} <= set(trial.data.params)
        assert "val_loss" in trial.data.metrics
    version = client.get_model_version(registered_model, train["model_version"])
    assert version.run_id == train["run_id"]
    champion = client.get_model_version_by_alias(registered_model, "champion")
    if train["champion"]:
        assert str(champion.version) == train["model_version"]
    else:
        assert str(champion.version) != train["model_version"]


def screenshot(page: str, out: Path, wait_ms: int = 0) -> np.ndarray:
    """Open a page in headless Chromium (Debian's) and return the screenshot's pixels."""
    subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
         f"--user-data-dir={out.parent / 'chromium-profile'}", "--window-size=1200,3000",
         *([f"--virtual-time-budget={wait_ms}"] if wait_ms else []), f"--screenshot={out}", page],
        check=True, capture_output=True, timeout=120,
    )
    return np.asarray(Image.open(out).convert("L"))
