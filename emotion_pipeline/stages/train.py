"""Stage 7: train the five-emotion classifier on the vectors, tracked in MLflow.

One parent run per training: config, data version (rows per split and class, a hash of the training
set), git revision, the sklearn baseline, and one nested run per Keras Tuner trial with its
hyperparameters and validation metrics. The best head is logged with its signature and registered;
it becomes the ``champion`` alias only if it beats the current champion's macro-F1 on the same test
split. Unchanged training data retrains nothing unless ``force_train``.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..config import CLASSES, PipelineConfig, state_home
from ..modeling import classifier, tracking
from ..modeling.data import load_training_data
from ..modeling.metrics import classification_metrics
from ..storage import Storage, open_storage
from ..tables import read_json, write_json, write_table
from .gold import gold_ids

log = logging.getLogger(__name__)

DONE_KEY = "models/_done.json"


def train_classifier(
    config: PipelineConfig, *, root: Storage | None = None, exclude_ids: set[str] = frozenset()
) -> dict[str, Any]:
    root = root or open_storage(config.root)
    # One training per root at a time: a second run waits, then finds the data already trained on.
    with root.lease("train"):
        return _train(config, root, exclude_ids)


def _train(config: PipelineConfig, root: Storage, exclude_ids: set[str]) -> dict[str, Any]:
    exclude_ids = set(exclude_ids) | gold_ids(root)  # people's labels are for checking, never training
    data = load_training_data(root, config.min_rows_per_class, exclude_ids)
    fingerprint = f"{data.fingerprint()}-{config.tuner}-{config.tuner_max_epochs}-{config.tuner_max_trials}-{config.seed}"
    done = read_json(root, DONE_KEY)
    if done and done["fingerprint"] == fingerprint and not config.force_train:
        return {**done["summary"], "skipped": True}

    counts = data.counts()
    trainable = {s: sum(c.values()) for s, c in counts.items()}
    if min(trainable.values()) == 0 or len({l for l, n in counts["train"].items() if n}) < 2:
        summary = {"stage": "train", "trained": False, "counts": counts,
                   "reason": "not enough labelled photos: every split needs rows of at least 2 classes"}
        log.warning("train: %s (%s)", summary["reason"], trainable)
        return {**summary, "skipped": False}

    mlflow = tracking.use_experiment(config)
    for run_id in tracking.fail_abandoned_training_runs(mlflow):
        log.warning("train: MLflow run %s of a crashed attempt marked FAILED", run_id)
    with mlflow.start_run(run_name=f"train-{data.fingerprint()[:8]}",
                          tags={tracking.TRAIN_TAG: "train"}) as parent:
        mlflow.log_params({f"config.{k}": v for k, v in config.to_dict().items()
                           if k not in ("alert_emails", "mlflow_tracking_uri")})
        mlflow.log_params({"data.fingerprint": data.fingerprint(), "data.rows": len(data.frame),
                           "data.gold_excluded": len(exclude_ids),
                           "git_revision": tracking.git_revision(), "classes": ",".join(CLASSES)})
        mlflow.log_dict({"counts": counts}, "data_version.json")

        x_train, y_train = data.part("train")
        x_val, y_val = data.part("val")
        x_test, y_test = data.part("test")
        baseline = classifier.fit_baseline(config, x_train, y_train)
        baseline_val = classification_metrics(y_val, classifier.predict_proba_5(baseline, x_val).argmax(1))
        mlflow.log_metrics({"baseline.val_macro_f1": baseline_val["macro_f1"],
                            "baseline.val_accuracy": baseline_val["accuracy"]})
        mlflow.sklearn.log_model(baseline, name="baseline",
                                 pip_requirements=tracking.pinned_requirements("scikit-learn", "numpy"))

        tuner = classifier.search(config, data, state_home() / "tuner", project=fingerprint)
        _log_trials(mlflow, tuner)
        best = tuner.get_best_models(1)[0]
        best_hp = tuner.get_best_hyperparameters(1)[0].values
        val = classification_metrics(y_val, best.predict(x_val, verbose=0).argmax(1))
        test = classification_metrics(y_test, best.predict(x_test, verbose=0).argmax(1))
        mlflow.log_params({f"best.{k}": v for k, v in best_hp.items()})
        mlflow.log_metrics({"val_macro_f1": val["macro_f1"], "val_accuracy": val["accuracy"],
                            "test_macro_f1": test["macro_f1"], "test_accuracy": test["accuracy"]})

        from mlflow.models import infer_signature

        signature = infer_signature(x_val[:5].astype(np.float32), best.predict(x_val[:5], verbose=0))
        info = mlflow.keras.log_model(best, name="model", signature=signature,
                                      pip_requirements=tracking.pinned_requirements("tensorflow", "keras"),
                                      registered_model_name=config.registered_model)
        version = str(info.registered_model_version)
        champion = _promote_if_better(mlflow, config, version, test["macro_f1"], x_test, y_test)
        mlflow.set_tags({"model_version": version, "champion": str(champion)})

    summary = {
        "stage": "train", "trained": True, "run_id": parent.info.run_id, "model_version": version,
        "model_uri": f"models:/{config.registered_model}/{version}", "champion": champion,
        "val_macro_f1": val["macro_f1"], "test_macro_f1": test["macro_f1"], "trials": len(tuner.oracle.trials),
        "best_hyperparameters": best_hp, "counts": counts, "data_fingerprint": data.fingerprint(),
        "tracking_uri": tracking.tracking_uri(config), "gold_excluded": len(exclude_ids),
    }
    # Exactly which photos trained, validated and tested this version: auditable, and the gold test's proof.
    write_table(root, f"models/{version}/training_rows", data.frame[["image_id", "source_key", "label", "split"]])
    write_json(root, DONE_KEY, {"fingerprint": fingerprint, "summary": summary})
    log.info("train: model version %s, test macro-F1 %.3f, champion=%s", version, test["macro_f1"], champion)
    return {**summary, "skipped": False}


def _log_trials(mlflow, tuner) -> None:
    """One nested run per tuner trial: its hyperparameters, its best validation metrics, its status."""
    for trial_id, trial in sorted(tuner.oracle.trials.items()):
        with mlflow.start_run(run_name=f"trial-{trial_id}", nested=True):
            mlflow.log_params(trial.hyperparameters.values)
            mlflow.set_tag("trial_status", str(trial.status))
            for metric in ("val_loss", "val_accuracy", "loss", "accuracy"):
                if trial.metrics.exists(metric):
                    mlflow.log_metric(metric, float(trial.metrics.get_best_value(metric)))


def _promote_if_better(mlflow, config, version: str, macro_f1: float, x_test, y_test) -> bool:
    """Move the champion alias to ``version`` only if it beats the champion on this test split."""
    client = mlflow.MlflowClient()
    try:
        current = client.get_model_version_by_alias(config.registered_model, tracking.CHAMPION)
    except mlflow.exceptions.MlflowException:
        current = None
    if current is not None and str(current.version) != version:
        champion_model = mlflow.keras.load_model(f"models:/{config.registered_model}@{tracking.CHAMPION}")
        champion_f1 = classification_metrics(y_test, champion_model.predict(x_test, verbose=0).argmax(1))["macro_f1"]
        mlflow.log_metric("champion_test_macro_f1", champion_f1)
        if macro_f1 <= champion_f1:
            log.info("version %s (macro-F1 %.3f) does not beat champion %s (%.3f)",
                     version, macro_f1, current.version, champion_f1)
            return False
    client.set_registered_model_alias(config.registered_model, tracking.CHAMPION, version)
    return True
