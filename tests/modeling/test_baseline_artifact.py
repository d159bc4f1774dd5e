"""The logistic baseline is stored as plain arrays and loaded without unpickling (issue 25, item 2).

It was logged with ``mlflow.sklearn`` and evaluate loaded it with ``mlflow.sklearn.load_model``, which
unpickles whatever format the artifact's MLmodel names: whoever could replace the artifact ran code on
the GPU worker. Now train logs ``baseline/baseline.npz`` (numeric arrays) and evaluate reads it with
``allow_pickle=False``; a run of an earlier version (no npz) gets its baseline refit on the same rows.
"""
import dataclasses
import io
import json
import pickle
import shutil
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import yaml

from emotion_pipeline.core import catalog
from emotion_pipeline.core.config import PipelineConfig
from emotion_pipeline.modeling import tracking
from emotion_pipeline.modeling.classifier import LinearBaseline, fit_baseline

MARKER_TEXT = "planted code ran"


class Planted:
    """Unpickling this writes ``marker``: what a replaced pickle artifact can do on the machine that
    loads it (here harmless, anything there)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, MARKER_TEXT))


def plant_sklearn_model(folder: Path, marker: Path) -> None:
    """An ``mlflow.sklearn`` model whose pickle runs code when loaded, as earlier versions' loader
    would load it (the MLmodel names the format, so a planted one asks for cloudpickle)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.pkl").write_bytes(pickle.dumps(Planted(marker)))
    (folder / "MLmodel").write_text(yaml.safe_dump({"flavors": {"sklearn": {
        "pickled_model": "model.pkl", "serialization_format": "cloudpickle", "sklearn_version": "1.9.1"}}}))


def run_folder(mlflow, run_id: str) -> Path:
    return Path(urlparse(mlflow.get_run(run_id).info.artifact_uri).path)


def test_the_numpy_baseline_predicts_as_sklearn_does_and_round_trips_without_pickle():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    config = PipelineConfig(source="", root="")
    for classes in ([0, 3], [0, 1, 4], [0, 1, 2, 3, 4]):  # two classes: sklearn's single sigmoid row
        x, y = rng.normal(size=(120, 16)) * 5 + 3, np.resize(classes, 120)
        reference = make_pipeline(StandardScaler(), LogisticRegression(
            max_iter=2000, class_weight="balanced", random_state=config.seed)).fit(x, y)
        loaded = LinearBaseline.from_npz(fit_baseline(config, x, y).to_npz())
        np.testing.assert_allclose(loaded.predict_proba(x), reference.predict_proba(x), atol=1e-12)
        assert loaded.classes_.tolist() == classes


def test_a_baseline_file_with_pickled_content_is_refused_not_executed(tmp_path):
    marker = tmp_path / "marker"
    pickled = pickle.dumps(Planted(marker))
    object_array = io.BytesIO()  # an .npz whose member is an object array: pickle inside numpy
    np.savez(object_array, mean=np.array([Planted(marker)], dtype=object))
    good = fit_baseline(PipelineConfig(source="", root=""), np.eye(6), np.array([0, 1, 2] * 2)).to_npz()
    with zipfile.ZipFile(io.BytesIO(object_array.getvalue())) as pickled_npz:
        object_member = pickled_npz.read("mean.npy")
    swapped = io.BytesIO()  # a good baseline whose classes member was replaced by a pickled object array
    with zipfile.ZipFile(io.BytesIO(good)) as source, zipfile.ZipFile(swapped, "w") as target:
        for name in source.namelist():
            target.writestr(name, object_member if name == "classes.npy" else source.read(name))
    for data in (pickled, object_array.getvalue(), swapped.getvalue()):
        with pytest.raises(ValueError):
            LinearBaseline.from_npz(data)
    assert not marker.exists()


def copied_training_run(trained_root, tmp_path, monkeypatch):
    """A copy of trained_root, mlflow pointed at its store: (config, results, mlflow, the train run's
    id, its baseline folder)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config, results = trained_root
    config = dataclasses.replace(config, root=str(shutil.copytree(config.root, tmp_path / "out")))
    mlflow = tracking.use_experiment(config)
    run_id = results["train"].run_id
    return config, results, mlflow, run_id, run_folder(mlflow, run_id) / tracking.BASELINE_FOLDER


@pytest.mark.integration
def test_train_logs_the_baseline_as_arrays_only(trained_root, tmp_path, monkeypatch):
    """The run of a trained root: ``baseline/baseline.npz`` and no sklearn model; its test macro-F1,
    recomputed from the loaded arrays, is the one train logged."""
    from emotion_pipeline.modeling.classifier import predict_proba_5
    from emotion_pipeline.modeling.data import load_training_data
    from emotion_pipeline.modeling.metrics import classification_metrics

    config, results, mlflow, run_id, folder = copied_training_run(trained_root, tmp_path, monkeypatch)
    assert sorted(p.name for p in folder.iterdir()) == [tracking.BASELINE_FILE]
    with np.load(folder / tracking.BASELINE_FILE, allow_pickle=False) as arrays:
        assert all(arrays[name].dtype != object for name in arrays.files)
    models = mlflow.MlflowClient().search_logged_models(
        experiment_ids=[mlflow.get_experiment_by_name(tracking.EXPERIMENT).experiment_id])
    assert "baseline" not in {m.name for m in models}
    assert not any("sklearn" in (Path(urlparse(m.artifact_location).path) / "MLmodel").read_text()
                   for m in models)

    baseline = tracking.load_baseline(run_id)
    from emotion_pipeline.core.storage import open_storage
    from emotion_pipeline.modeling.data import gold_ids

    root = open_storage(config.root)
    data = load_training_data(root, config.min_rows_per_class, gold_ids(root), results["train"].label_unit)
    x_test, y_test = data.part("test")
    f1 = classification_metrics(y_test, predict_proba_5(baseline, x_test).argmax(1))["macro_f1"]
    assert f1 == pytest.approx(mlflow.get_run(run_id).data.metrics["baseline.test_macro_f1"])


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_evaluate_never_unpickles_a_baseline_planted_where_it_was_loaded(trained_root, tmp_path, monkeypatch):
    """A root of an earlier version (no baseline.npz) with a pickle that runs code planted at
    ``runs:/<run>/baseline``, where evaluate used to load it: the old loader runs it, evaluate does not
    (it refits the baseline on the same rows, to the same macro-F1)."""
    import mlflow.sklearn

    from emotion_pipeline.core.runner import run_stage

    config, results, mlflow, run_id, folder = copied_training_run(trained_root, tmp_path, monkeypatch)
    shutil.rmtree(folder)
    marker = tmp_path / "marker"
    plant_sklearn_model(folder, marker)

    mlflow.sklearn.load_model(f"runs:/{run_id}/baseline")  # what evaluate did: the planted code runs
    assert marker.read_text() == MARKER_TEXT
    marker.unlink()

    (Path(config.root) / catalog.done_marker(catalog.EVALUATE_FOLDER)).unlink()
    result = run_stage("evaluate", config)
    assert result.evaluated and not result.skipped
    assert not marker.exists()
    metrics = json.loads((Path(config.root) / catalog.report_file(result.model_version, catalog.REPORT_METRICS))
                         .read_text())["metrics"]
    logged = mlflow.get_run(run_id).data.metrics["baseline.test_macro_f1"]
    assert metrics["baseline"]["macro_f1"] == pytest.approx(logged)
