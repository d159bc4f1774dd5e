"""The five-emotion head on 2048-d vectors, its Keras Tuner search space, and a sklearn baseline."""
from __future__ import annotations

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
        return keras_tuner.BayesianOptimization(build_head, max_trials=config.tuner_max_trials, **common)
    return keras_tuner.Hyperband(build_head, max_epochs=config.tuner_max_epochs, factor=3, **common)


def class_weights(y: np.ndarray) -> dict[int, float]:
    """Balanced weights for the classes present: most Flickr30k faces are happy or neutral."""
    present = np.unique(y)
    counts = np.array([(y == c).sum() for c in present])
    weights = len(y) / (len(present) * counts)
    return {int(c): float(w) for c, w in zip(present, weights)}


def search(config: PipelineConfig, data: TrainingData, directory: Path, project: str):
    """Run the tuner search (early stopping, fixed seeds); returns the tuner."""
    import keras

    keras.utils.set_random_seed(config.seed)
    x_train, y_train = data.part("train")
    x_val, y_val = data.part("val")
    tuner = make_tuner(config, directory, project)
    tuner.search(
        x_train, y_train, validation_data=(x_val, y_val), epochs=config.tuner_max_epochs,
        class_weight=class_weights(y_train), verbose=0,
        callbacks=[keras.callbacks.EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True)],
    )
    return tuner


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
    """A head with ``hyperparameters`` trained on DeepFace's score distributions over the five classes
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


def fit_baseline(config: PipelineConfig, x: np.ndarray, y: np.ndarray):
    """Standardised logistic regression with balanced class weights: what the head must beat."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced",
                                                               random_state=config.seed))
    return model.fit(x, y)


def predict_proba_5(model, x: np.ndarray) -> np.ndarray:
    """(n, 5) probabilities for any of our models (a baseline trained on fewer classes included)."""
    if hasattr(model, "predict_proba"):
        out = np.zeros((len(x), len(CLASSES)))
        out[:, model.classes_] = model.predict_proba(x)
        return out
    return np.asarray(model.predict(x, verbose=0))
