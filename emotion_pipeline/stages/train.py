"""Stage: train the five-emotion classifier on the vectors, tracked in MLflow.

The computation is ``modeling.training.fit_models``; this module is its shell: data in from storage,
everything out to MLflow. One parent run per training: config, data version (rows per split and
class, a hash of the training set), git revision, the logistic baseline (as arrays, no pickle), the
training mode and one nested run per Keras Tuner trial with its hyperparameters and validation metrics.

A full search runs for the first model, when forced (a fresh search, never the finished one reloaded),
when the embedding settings changed, or once the training rows reached ``search_growth`` times those of
the last search; otherwise the champion's hyperparameters (the newest version's when none was promoted)
are refit on the new data, warm-started from its weights (``training.mode``, ``training.reason`` and
``training.search_rows`` in MLflow). The best head is logged with its signature and registered; it
becomes the ``champion`` alias only if its test macro-F1 is not below its logistic baseline's (unless
``promote_below_baseline``, then flagged) and beats the current champion's on the same test split.
Unchanged inputs retrain nothing unless ``force_train``; the registry holds the root's ``train`` lease
around it, so one training runs per root at a time.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from emotion_pipeline.core import catalog
from emotion_pipeline.core.config import CLASSES, PipelineConfig, state_home
from emotion_pipeline.core.results import TrainResult
from emotion_pipeline.core.runner import StageRun
from emotion_pipeline.core.storage import Storage
from emotion_pipeline.core.tables import read_table, write_table
from emotion_pipeline.modeling import classifier, tracking
from emotion_pipeline.modeling.data import TrainingData, gold_ids, load_training_data, record_split_assignments
from emotion_pipeline.modeling.metrics import classification_metrics
from emotion_pipeline.modeling.training import (
    FLAGS,
    FittedModels,
    fit_models,
    model_flags,
    not_trainable_reason,
    refit_models,
    searched_a_sample,
    training_mode,
)

log = logging.getLogger(__name__)
# How a promotion that waits for a person's approval (``approve_promotion``) starts in ``promotion``.
AWAITING_APPROVAL = "awaiting approval"


def training_data_fingerprint(run: StageRun) -> str:
    """What a training learns from, for its done marker: the training rows (ids, labels, splits, with
    the gold photos left out) and their vectors. Photos that never train (no face, a duplicate, ...)
    do not change it; other embedding settings do."""
    def digest(unit: str) -> str:
        return load_training_data(run.root, run.config.min_rows_per_class, left_out(run.root), unit,
                                  run.config.teacher).digest()

    found = digest(run.config.label_unit)
    # Under label_unit=face the photo-unit head trained beside it learns from the photos' rows.
    return found + f"-photos-{digest('photo')}" if run.config.label_unit == "face" else found


def left_out(root: Storage) -> set[str]:
    """The photos no training learns from: the gold photos (people's labels are for checking) and those
    of the shards a drift decision excluded (``catalog.EXCLUDED_SHARDS``)."""
    return gold_ids(root) | catalog.excluded_shard_photos(root)


def train(run: StageRun) -> TrainResult:
    """The stage function (the registry holds the root's ``train`` lease around it).

    Args:
        run: the config, both storages and every present photo's manifest row (``runner.StageRun``).

    Returns:
        The model version, its metrics and whether it became the champion; ``trained`` is False
        (with ``reason``) when there are too few labelled photos.

    Raises:
        FileNotFoundError: the dataset or the vectors are missing (merge or assemble has not run).
        mlflow.exceptions.MlflowException: the tracking store refused a write.
    """
    config, root = run.config, run.root
    excluded = left_out(root)
    data = load_training_data(root, config.min_rows_per_class, excluded, config.label_unit, config.teacher)
    reason = not_trainable_reason(data)
    if reason:
        counts = data.counts()
        log.warning("train: %s (%s)", reason, {s: sum(c.values()) for s, c in counts.items()})
        return TrainResult(trained=False, counts=counts, reason=reason)

    mlflow = tracking.use_experiment(config)
    for run_id in tracking.fail_abandoned_training_runs(mlflow):
        log.warning("train: MLflow run %s of a crashed attempt marked FAILED", run_id)
    training = Training(mlflow, config, root, data, excluded)
    with mlflow.start_run(run_name=f"train-{data.fingerprint()[:8]}",
                          tags={tracking.TRAIN_TAG: "train"}) as parent:
        model = _train_and_register(training, run)

    # Exactly which photos trained, validated and tested this version: auditable, and the gold test's proof.
    write_table(root, catalog.training_rows(model.version), data.frame[
        [c for c in ("image_id", "source_key", "face_index", "label", "split") if c in data.frame]])
    record_split_assignments(root, data.frame)  # these photos keep their splits from now on
    result = _result(training, parent.info.run_id, model)
    log.info("train: model version %s, test macro-F1 %.3f, champion=%s", model.version, result.test_macro_f1,
             model.champion)
    return result


@dataclass
class Training:
    """One training: what its steps log to (``mlflow``, inside its run), read and compare on."""
    mlflow: Any
    config: PipelineConfig
    root: Storage
    data: TrainingData
    excluded: set[str]  # the ids of the photos never trained on (left_out)


@dataclass
class Champion:
    """A registered version (the champion, or the newest one a refit starts from): its version, its
    MLflow run's params, its hyperparameters (typed, the tuner's bookkeeping left out) and its head."""
    version: str
    params: dict[str, str]
    hyperparameters: dict[str, Any]
    head: Any

    def search_rows(self, default: int) -> int:
        """The training rows of the last full search its hyperparameters come from (``default`` for a
        champion trained before they were logged)."""
        return int(float(self.params.get("training.search_rows") or default))


@dataclass
class Mode:
    """How a training fits its head: ``search`` or ``refit`` (``training.mode``), why, and the rows of
    the last full search."""
    name: str
    reason: str
    search_rows: int


@dataclass
class TrainedModel:
    """What a training made: the registered version, its fitted models, how it was fitted, the URIs of
    the heads trained beside it, and whether it became the champion (and why, or why not)."""
    version: str
    fitted: FittedModels
    mode: Mode
    soft_uri: str | None
    photo_uri: str | None
    champion: bool
    promotion: str


def _train_and_register(training: Training, run: StageRun) -> TrainedModel:
    """Inside the training's MLflow run: its inputs logged, the head fitted (a search, or the champion's
    hyperparameters refit), registered with the heads beside it, and made the champion if it wins."""
    mlflow, config, data = training.mlflow, training.config, training.data
    mlflow.log_params({f"config.{k}": v for k, v in config.to_dict().items()
                       if k not in ("alert_emails", "mlflow_tracking_uri")})
    mlflow.log_params({"data.fingerprint": data.fingerprint(), "data.rows": len(data.frame),
                       "data.gold_excluded": len(gold_ids(training.root)),
                       "data.excluded_shards": ",".join(map(str, sorted(catalog.read_excluded_shards(training.root)))),
                       "git_revision": tracking.git_revision(), "classes": ",".join(CLASSES)})
    mlflow.log_dict({"counts": data.counts()}, "data_version.json")

    current = _champion_run(mlflow, config)
    # A refit starts from the champion, or from the last model when none was promoted (one below the
    # baseline, or waiting for a person): a new batch would otherwise pay a full search every time.
    fitted, mode = _fit(training, run, current or _latest_run(mlflow, config))
    version = _log_and_register(mlflow, config, fitted, data)
    soft_uri = _log_soft_head(mlflow, config, fitted, data) if config.soft_labels else None
    photo_uri = _log_photo_head(training, fitted) if config.label_unit == "face" else None
    champion, promotion = _promote(training, version, fitted, current)
    mlflow.set_tags({"model_version": version, "champion": str(champion), "promotion": promotion})
    return TrainedModel(version, fitted, mode, soft_uri, photo_uri, champion, promotion)


def _fit(training: Training, run: StageRun, current: Champion | None) -> tuple[FittedModels, Mode]:
    """The head, by a full search or by refitting the hyperparameters of ``current`` (the champion,
    else the newest version)
    (``training_mode`` says which), and the mode, logged."""
    config, data = training.config, training.data
    name, why = training_mode(config, len(data.frame), current.params if current is not None else None)
    log.info("train: %s (%s)", name, why)
    if name == "search" or current is None:  # training_mode refits only a registered model
        # A forced retrain searches afresh; otherwise the same input resumes its interrupted search.
        project = _forced_project(run) if config.force_train else run.fingerprint
        fitted = fit_models(config, data, state_home() / "tuner", project=project)
        search_rows = len(data.frame)
    else:
        fitted = refit_models(config, data, current.hyperparameters, current.head.get_weights())
        search_rows = current.search_rows(len(data.frame))
    training.mlflow.log_params({"training.mode": name, "training.reason": why, "training.search_rows": search_rows,
                                "training.search_sampled": name == "search" and searched_a_sample(config, data)})
    return fitted, Mode(name, why, search_rows)


def _result(training: Training, run_id: str, model: TrainedModel) -> TrainResult:
    """The stage's result: the registered version, its metrics and how it was trained."""
    config, data, fitted = training.config, training.data, model.fitted
    return TrainResult(
        trained=True, run_id=run_id, model_version=model.version,
        model_uri=f"models:/{config.registered_model}/{model.version}", champion=model.champion,
        promotion=model.promotion, awaiting_approval=model.promotion.startswith(AWAITING_APPROVAL),
        val_macro_f1=fitted.metrics["val"]["macro_f1"],
        test_macro_f1=fitted.metrics["test"]["macro_f1"],
        baseline_test_macro_f1=fitted.metrics["baseline_test"]["macro_f1"], flags=model_flags(config, fitted.metrics),
        trials=len(fitted.tuner.oracle.trials) if fitted.tuner else 0, mode=model.mode.name,
        mode_reason=model.mode.reason, best_hyperparameters=fitted.best_hyperparameters, counts=data.counts(),
        data_fingerprint=data.fingerprint(), tracking_uri=tracking.tracking_uri(config),
        gold_excluded=len(gold_ids(training.root)), soft_model_uri=model.soft_uri, photo_model_uri=model.photo_uri,
        label_unit=config.label_unit,
    )


def _log_and_register(mlflow, config: PipelineConfig, fitted: FittedModels, data) -> str:
    """Metrics, trials, the baseline and the head into the active MLflow run; returns the new version."""
    baseline_val, val, test = fitted.metrics["baseline_val"], fitted.metrics["val"], fitted.metrics["test"]
    mlflow.log_metrics({"baseline.val_macro_f1": baseline_val["macro_f1"],
                        "baseline.val_accuracy": baseline_val["accuracy"],
                        "baseline.test_macro_f1": fitted.metrics["baseline_test"]["macro_f1"]})
    # Searchable ("tags.`flag.below_baseline` = 'true'"): every flag, raised or not.
    raised = model_flags(config, fitted.metrics)
    mlflow.set_tags({f"flag.{flag}": str(flag in raised).lower() for flag in FLAGS})
    tracking.log_baseline(mlflow, fitted.baseline)  # plain arrays: loading it runs no code
    if fitted.tuner is not None:
        _log_trials(mlflow, fitted.tuner)
    mlflow.log_params({f"best.{k}": v for k, v in fitted.best_hyperparameters.items()})
    mlflow.log_metrics({"val_macro_f1": val["macro_f1"], "val_accuracy": val["accuracy"],
                        "test_macro_f1": test["macro_f1"], "test_accuracy": test["accuracy"]})

    from mlflow.models import infer_signature

    x_val, _ = data.part("val")
    signature = infer_signature(x_val[:5].astype(np.float32), fitted.head.predict(x_val[:5], verbose=0))
    info = mlflow.keras.log_model(fitted.head, name="model", signature=signature,
                                  pip_requirements=tracking.pinned_requirements("tensorflow", "keras"),
                                  registered_model_name=config.registered_model)
    return str(info.registered_model_version)


def _log_soft_head(mlflow, config: PipelineConfig, fitted: FittedModels, data: TrainingData) -> str:
    """The soft-label head (same hyperparameters, the teacher's scores as targets) beside the registered
    one; its test metrics against the hard labels as ``soft.*``."""
    return _log_beside(mlflow, "soft", classifier.refit_soft(config, data, fitted.best_hyperparameters), data)


def _log_photo_head(training: Training, fitted: FittedModels) -> str | None:
    """Under ``label_unit=face``: a head with the same hyperparameters trained on one row per photo
    (the photos' label faces, in the photos' splits), logged beside the registered face-trained one so
    that the report compares the two units on the same test faces, the gold set and the captions
    (``photo.*``); None when the photo rows cannot train a head."""
    config = training.config
    photos = load_training_data(training.root, config.min_rows_per_class, training.excluded, "photo", config.teacher)
    reason = not_trainable_reason(photos)
    if reason:
        log.warning("train: no photo-unit head to compare with: %s", reason)
        return None
    head = classifier.refit(config, photos, fitted.best_hyperparameters)
    training.mlflow.log_metric("photo.train_rows", int((photos.frame["split"] == "train").sum()))
    return _log_beside(training.mlflow, "photo", head, training.data)


def _log_beside(mlflow, name: str, head, data: TrainingData) -> str:
    """A head trained beside the registered one, into the active run as ``<name>_model`` (not
    registered), with its metrics on ``data``'s test split as ``<name>.*``; returns its URI."""
    x_test, y_test = data.part("test")
    test = classification_metrics(y_test, head.predict(x_test, verbose=0).argmax(1))
    mlflow.log_metrics({f"{name}.test_macro_f1": test["macro_f1"], f"{name}.test_accuracy": test["accuracy"]})
    mlflow.keras.log_model(head, name=f"{name}_model",
                           pip_requirements=tracking.pinned_requirements("tensorflow", "keras"))
    return f"runs:/{mlflow.active_run().info.run_id}/{name}_model"


def _forced_project(run: StageRun) -> str:
    """A tuner project no earlier training used: an Airflow run's id (its retries resume the search),
    else the time (the CLI and in-process runs)."""
    airflow_run = run.run_id and run.run_id != "in-process"
    return f"{run.fingerprint}-forced-{run.run_id if airflow_run else time.time_ns()}"


def _champion_version(mlflow, config: PipelineConfig):
    """The registered model's champion version (MLflow's ModelVersion), or None."""
    try:
        return mlflow.MlflowClient().get_model_version_by_alias(config.registered_model, tracking.CHAMPION)
    except mlflow.exceptions.MlflowException:
        return None


def _champion_run(mlflow, config: PipelineConfig) -> Champion | None:
    """The champion, with its run's params and its head; None without a champion."""
    return _registered_run(mlflow, config, _champion_version(mlflow, config))


def _latest_run(mlflow, config: PipelineConfig) -> Champion | None:
    """The newest registered version as a refit's starting point, or None when none is registered."""
    try:
        versions = mlflow.MlflowClient().search_model_versions(f"name = '{config.registered_model}'")
    except mlflow.exceptions.MlflowException:
        return None
    return _registered_run(mlflow, config, max(versions, key=lambda v: int(v.version), default=None))


def _registered_run(mlflow, config: PipelineConfig, version) -> Champion | None:
    """A registered version (MLflow's ModelVersion) with its run's params and its head; None for None."""
    client = mlflow.MlflowClient()
    if version is None:
        return None
    params = client.get_run(version.run_id).data.params
    hyperparameters = {k[len("best."):]: _number(v) for k, v in params.items()
                       if k.startswith("best.") and not k.startswith("best.tuner/")}
    head = tracking.load_model(f"models:/{config.registered_model}/{version.version}")
    return Champion(str(version.version), params, hyperparameters, head)


def _number(text: str):
    """An MLflow param back to the int or float it was logged from (strings stay strings)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _log_trials(mlflow, tuner) -> None:
    """One nested run per tuner trial: its hyperparameters, its best validation metrics, its status."""
    for trial_id, trial in sorted(tuner.oracle.trials.items()):
        with mlflow.start_run(run_name=f"trial-{trial_id}", nested=True):
            mlflow.log_params(trial.hyperparameters.values)
            mlflow.set_tag("trial_status", str(trial.status))
            for metric in ("val_loss", "val_accuracy", "loss", "accuracy"):
                if trial.metrics.exists(metric):
                    mlflow.log_metric(metric, float(trial.metrics.get_best_value(metric)))


def _promote(training: Training, version: str, fitted: FittedModels, champion: Champion | None) -> tuple[bool, str]:
    """Move the champion alias to ``version`` unless it loses to its own logistic baseline on the test
    split (``promote_below_baseline`` lets it through, flagged) or to the current ``champion``
    (``_champion_run``); returns whether it moved and why."""
    below = _below_baseline(fitted)
    if below and not training.config.promote_below_baseline:
        log.warning("version %s is not promoted: %s (promote_below_baseline is off)", version, below)
        return False, f"{below} (promote_below_baseline is off)"
    beats, versus = _versus_champion(training, version, fitted, champion)
    if not beats:
        return False, versus
    if training.config.approve_promotion:  # a person decides, after evaluate (orchestration/decisions.py)
        log.info("version %s would become champion (%s): awaiting a person's approval", version, versus)
        return False, f"{AWAITING_APPROVAL}: {versus}" + (f"; {below}" if below else "")
    training.mlflow.MlflowClient().set_registered_model_alias(training.config.registered_model, tracking.CHAMPION,
                                                              version)
    if below:
        log.warning("version %s is promoted although %s (promote_below_baseline)", version, below)
        return True, f"{versus}; promoted although {below}, as promote_below_baseline allows"
    return True, versus


def _below_baseline(fitted: FittedModels) -> str | None:
    """How the head lost to the logistic baseline trained on the same rows, on the test split; None
    when it did not (a tie is no loss)."""
    test, baseline = fitted.metrics["test"], fitted.metrics["baseline_test"]
    if test["macro_f1"] >= baseline["macro_f1"]:
        return None
    return (f"its test macro-F1 {test['macro_f1']:.3f} is below the logistic baseline's {baseline['macro_f1']:.3f} "
            f"on the same {test['n']} test rows")


def _versus_champion(training: Training, version: str, fitted: FittedModels,
                     champion: Champion | None) -> tuple[bool, str]:
    """Whether ``version`` beats the ``champion`` on the test photos that neither of them trained or
    validated on (splits never move, but a champion trained before they were recorded may have seen
    some of today's test photos), and the comparison in words."""
    mlflow, config, data = training.mlflow, training.config, training.data
    current = _champion_version(mlflow, config)
    if (current and str(current.version)) != (champion and champion.version):
        # Promoted while this one trained (another root sharing the registered model): compare with it.
        champion = _champion_run(mlflow, config)
    if champion is None:
        return True, "no champion to beat"
    if champion.version == version:
        return True, "already the champion"
    seen = read_table(training.root, catalog.training_rows(champion.version))
    seen_ids = set() if seen is None else set(seen.loc[seen["split"] != "test", "image_id"])
    test = data.frame[(data.frame["split"] == "test") & ~data.frame["image_id"].isin(seen_ids)]
    if test.empty:
        log.warning("no test photo the champion did not train on: version %s is promoted untested", version)
        return True, f"promoted untested: no test photo champion {champion.version} did not train on"
    x_test, y_test = data.vectors[test.index.to_numpy()], test["y"].to_numpy()
    challenger_f1 = classification_metrics(y_test, fitted.head.predict(x_test, verbose=0).argmax(1))["macro_f1"]
    champion_f1 = classification_metrics(y_test, champion.head.predict(x_test, verbose=0).argmax(1))["macro_f1"]
    mlflow.log_metrics({"champion_test_macro_f1": champion_f1, "challenger_test_macro_f1": challenger_f1,
                        "champion_comparison_rows": len(test)})
    versus = (f"macro-F1 {challenger_f1:.3f} against champion {champion.version}'s {champion_f1:.3f} "
              f"on {len(test)} test photos")
    if challenger_f1 <= champion_f1:
        log.info("version %s does not beat the champion: %s", version, versus)
        return False, f"{versus}: not higher"
    return True, f"beats the champion: {versus}"


def promote_approved(config: PipelineConfig, trained: dict[str, Any], approved_by: str) -> str:
    """Move the champion alias to the version train registered and a person approved
    (``approve_promotion``), and say so on its MLflow run; returns what was done, in words.

    Args:
        config: the registered model's name and the tracking store.
        trained: the train task's result (``TrainResult.to_dict()``) with ``awaiting_approval``.
        approved_by: who approved (Airflow's user), for the run's ``promotion`` tag.
    """
    mlflow = tracking.use_experiment(config)
    client = mlflow.MlflowClient()
    version = str(trained["model_version"])
    client.set_registered_model_alias(config.registered_model, tracking.CHAMPION, version)
    promotion = f"approved by {approved_by}: {trained['promotion'].removeprefix(AWAITING_APPROVAL + ': ')}"
    client.set_tag(trained["run_id"], "champion", "True")
    client.set_tag(trained["run_id"], "promotion", promotion)
    log.info("version %s is the champion: %s", version, promotion)
    return f"version {version} of {config.registered_model} is the champion ({promotion})"
