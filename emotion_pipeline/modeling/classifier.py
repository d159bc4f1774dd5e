"""The five-emotion head on 2048-d vectors, its Keras Tuner search space, and the logistic baseline
(fitted with sklearn, kept and saved as numpy arrays)."""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from emotion_pipeline.core.config import CLASSES, PipelineConfig
from emotion_pipeline.modeling.data import TrainingData


def build_head(hp):
    """A small dense head; every choice here is a tuner hyperparameter."""
    import keras

    inputs = keras.Input(shape=(2048,), name="embedding")
    x = keras.layers.LayerNormalization()(inputs)  # ResNet features have very uneven scales
    l2 = keras.regularizers.l2(hp.Float("l2", 1e-6, 1e-2, sampling="log"))
    x = keras.layers.Dense(hp.Choice("units", [64, 128, 256, 512]), activation="relu", kernel_regularizer=l2)(x)
    x = keras.layers.Dropout(hp.Float("dropout", 0.0, 0.6, step=0.1))(x)
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax", dtype="float32", name="emotion")(x)
    model = keras.Model(inputs, outputs, name="emotion_head")
    model.compile(
        optimizer=keras.optimizers.Adam(hp.Float("learning_rate", 1e-4, 1e-2, sampling="log")),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def make_tuner(config: PipelineConfig, directory: Path, project: str):
    import keras_tuner

    common = dict(objective="val_loss", directory=str(directory), project_name=project, seed=config.seed,
                  overwrite=False)  # overwrite=False: a search interrupted by a crash resumes
    if config.tuner == "bayesian":
        tuner = keras_tuner.BayesianOptimization(build_head, max_trials=config.tuner_max_trials, **common)
    else:
        tuner = keras_tuner.Hyperband(build_head, max_epochs=config.tuner_max_epochs, factor=3, **common)
    if config.search_budget_minutes:
        _stop_trials_after(tuner, config.search_budget_minutes * 60)
    return tuner


def _stop_trials_after(tuner, seconds: float) -> None:
    """No trial starts once ``seconds`` have passed since the search began: the oracle's trial cap
    is lowered to the trials it has, so its next ``create_trial`` answers STOPPED (how every Keras
    Tuner oracle ends a search). The running trial finishes; the best trial so far wins."""
    on_search_begin, on_trial_end = tuner.on_search_begin, tuner.on_trial_end
    deadline = math.inf

    def begin() -> None:
        nonlocal deadline
        deadline = time.monotonic() + seconds
        on_search_begin()

    def end(trial) -> None:
        on_trial_end(trial)
        if time.monotonic() >= deadline:
            tuner.oracle.max_trials = len(tuner.oracle.trials)

    tuner.on_search_begin, tuner.on_trial_end = begin, end


def search_sample(y: np.ndarray, max_rows: int, seed: int) -> np.ndarray:
    """Sorted indices of at most ``max_rows`` rows of ``y`` in which every class keeps its share (and
    at least one row): what the tuner searches on, so that a search's cost stops growing with the
    data. All indices when ``y`` is no longer than ``max_rows``."""
    if len(y) <= max_rows:
        return np.arange(len(y))
    classes, counts = np.unique(y, return_counts=True)
    quotas = np.maximum(1, counts * max_rows // len(y))
    quotas[quotas.argmax()] -= max(0, int(quotas.sum()) - max_rows)  # the floor of 1 may overshoot
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(y == c), size=q, replace=False) for c, q in zip(classes, quotas)]
    return np.sort(np.concatenate(chosen))


def class_weights(y: np.ndarray) -> dict[int, float]:
    """Balanced weights for the classes present: most Flickr30k faces are happy or neutral."""
    present = np.unique(y)
    counts = np.array([(y == c).sum() for c in present])
    weights = len(y) / (len(present) * counts)
    return {int(c): float(w) for c, w in zip(present, weights)}


def search(config: PipelineConfig, data: TrainingData, directory: Path, project: str):
    """Run the tuner search (early stopping, fixed seeds) on at most ``search_max_rows`` training
    and validation rows (``search_sample``); returns the tuner."""
    import keras

    keras.utils.set_random_seed(config.seed)
    x_train, y_train = _sampled(data.part("train"), config)
    x_val, y_val = _sampled(data.part("val"), config)
    tuner = make_tuner(config, directory, project)
    tuner.search(
        x_train, y_train, validation_data=(x_val, y_val), epochs=config.tuner_max_epochs,
        class_weight=class_weights(y_train), verbose=0,
        callbacks=[keras.callbacks.EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True)],
    )
    return tuner


def _sampled(part: tuple[np.ndarray, np.ndarray], config: PipelineConfig) -> tuple[np.ndarray, np.ndarray]:
    x, y = part
    rows = search_sample(y, config.search_max_rows, config.seed)
    return (x, y) if len(rows) == len(y) else (x[rows], y[rows])


def refit(config: PipelineConfig, data: TrainingData, hyperparameters: dict, warm_start: list | None = None):
    """One head with fixed ``hyperparameters`` (the champion's), trained like a tuner trial; started
    from ``warm_start`` weights (the champion's) when their shapes match. Returns the fitted head."""
    head = _fixed_head(config, hyperparameters)
    if warm_start is not None and [w.shape for w in head.get_weights()] == [w.shape for w in warm_start]:
        head.set_weights(warm_start)
    x_train, y_train = data.part("train")
    head.fit(x_train, y_train, validation_data=data.part("val"), class_weight=class_weights(y_train),
             **_trial_fit(config))
    return head


def refit_soft(config: PipelineConfig, data: TrainingData, hyperparameters: dict):
    """A head with ``hyperparameters`` trained on the teacher's score distributions over the five classes
    (``TrainingData.soft_part``) instead of the hard labels: distillation. Weighted by the hard labels'
    class weights, as the hard head is. Returns the fitted head."""
    import keras

    head = _fixed_head(config, hyperparameters)
    head.compile(optimizer=keras.optimizers.Adam(hyperparameters.get("learning_rate", 1e-3)),
                 loss="categorical_crossentropy", metrics=["accuracy"])
    x_train, targets = data.soft_part("train")
    _, y_train = data.part("train")
    weights = class_weights(y_train)
    head.fit(x_train, targets, sample_weight=np.array([weights[int(y)] for y in y_train]),
             validation_data=data.soft_part("val"), **_trial_fit(config))
    return head


def _fixed_head(config: PipelineConfig, hyperparameters: dict):
    """``build_head`` with every hyperparameter fixed, seeded as a tuner trial is."""
    import keras
    import keras_tuner

    keras.utils.set_random_seed(config.seed)
    hp = keras_tuner.HyperParameters()
    for name, value in hyperparameters.items():
        hp.Fixed(name, value)
    return build_head(hp)


def _trial_fit(config: PipelineConfig) -> dict:
    """How a head is fitted outside the tuner: the tuner's epoch budget and early stopping."""
    import keras

    return {"epochs": config.tuner_max_epochs, "verbose": 0, "callbacks": [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True)]}


def fit_baseline(config: PipelineConfig, x: np.ndarray, y: np.ndarray) -> LinearBaseline:
    """Standardised logistic regression with balanced class weights: what the head must beat. Fitted
    with sklearn, kept as its numbers (``LinearBaseline``): it is saved and loaded without pickle."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced",
                                                               random_state=config.seed))
    return LinearBaseline.from_sklearn(model.fit(x, y))


class LinearBaseline:
    """The logistic baseline as arrays: the scaler's mean and scale, the coefficients, the intercepts and
    the classes, with sklearn's ``predict_proba`` in numpy. Saved as an ``.npz`` of plain numeric arrays
    and loaded with ``allow_pickle=False``: loading it runs no code, whoever wrote the file
    (``mlflow.sklearn`` pickles, and unpickling a replaced artifact runs the replacer's code)."""

    FORMAT = 1
    BINARY = 2  # sklearn keeps one row of coefficients (a sigmoid) for two classes
    FIELDS = ("mean", "scale", "coef", "intercept", "classes")

    def __init__(self, mean, scale, coef, intercept, classes) -> None:
        self.mean, self.scale = np.asarray(mean, np.float64), np.asarray(scale, np.float64)
        self.coef, self.intercept = np.asarray(coef, np.float64), np.asarray(intercept, np.float64)
        self.classes_ = np.asarray(classes, np.int64)
        features, classes_n = self.mean.shape[0], self.classes_.shape[0]
        rows = 1 if classes_n == self.BINARY else classes_n
        if (self.mean.ndim != 1 or self.scale.shape != (features,) or self.coef.shape != (rows, features)
                or self.intercept.shape != (rows,) or classes_n < self.BINARY
                or not np.all((self.classes_ >= 0) & (self.classes_ < len(CLASSES)))):
            raise ValueError(f"not a baseline: shapes mean {self.mean.shape}, scale {self.scale.shape}, coef "
                             f"{self.coef.shape}, intercept {self.intercept.shape}, classes {self.classes_.tolist()}")

    @classmethod
    def from_sklearn(cls, pipeline) -> LinearBaseline:
        scaler, logistic = pipeline[0], pipeline[-1]
        return cls(scaler.mean_, scaler.scale_, logistic.coef_, logistic.intercept_, logistic.classes_)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """(n, len(classes_)) probabilities, as sklearn's ``predict_proba`` gives them."""
        scores = ((np.asarray(x, np.float64) - self.mean) / self.scale) @ self.coef.T + self.intercept
        if len(self.classes_) == self.BINARY:
            positive = 1.0 / (1.0 + np.exp(-scores[:, 0]))
            return np.stack([1.0 - positive, positive], axis=1)
        scores -= scores.max(axis=1, keepdims=True)
        exp = np.exp(scores)
        return exp / exp.sum(axis=1, keepdims=True)

    def to_npz(self) -> bytes:
        import io

        out = io.BytesIO()
        arrays = {"mean": self.mean, "scale": self.scale, "coef": self.coef, "intercept": self.intercept,
                  "classes": self.classes_}
        np.savez(out, allow_pickle=False, format=np.int64(self.FORMAT), **arrays)
        return out.getvalue()

    @classmethod
    def from_npz(cls, data: bytes) -> LinearBaseline:
        """Reads ``to_npz``'s bytes; refuses object arrays (pickle) and any other format."""
        import io

        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            if set(arrays.files) != {"format", *cls.FIELDS} or int(arrays["format"]) != cls.FORMAT:
                raise ValueError(f"not a baseline of format {cls.FORMAT}: {sorted(arrays.files)}")
            return cls(**{name: arrays[name] for name in cls.FIELDS})


def predict_proba_5(model, x: np.ndarray) -> np.ndarray:
    """(n, 5) probabilities for any of our models (a baseline trained on fewer classes included)."""
    if hasattr(model, "predict_proba"):
        out = np.zeros((len(x), len(CLASSES)))
        out[:, model.classes_] = model.predict_proba(x)
        return out
    return np.asarray(model.predict(x, verbose=0))
