"""The one path from a photo to a model input to a vector, shared by embed, evaluate and the API.

    photo = decode_photo(data, max_pixels)        # original bytes -> upright 8-bit RGB
    x = model_input(photo, box)                   # label face crop (or whole photo) -> 224x224x3
    vectors = image_vectors(resnet50(...), [x, ...], batch_size)

A table row (a photo with its label face, or a face) goes in through ``row_input``: embed, evaluate's
heat maps and the gold vectors. Training, evaluation (SHAP heat maps, the gold check) and serving go
through these functions only, so a vector the head was trained on and one the API computes for the
same photo are the same bits (tests/serve/test_model_input.py checks it through the callers).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from emotion_pipeline.core.config import CLASSES
from emotion_pipeline.core.errors import MissingWeightsError
from emotion_pipeline.labelling.images import decode_rgb, letterbox, open_checked
from emotion_pipeline.labelling.teachers import LABEL_COLUMNS

log = logging.getLogger(__name__)

INPUT_SIZE = 224  # ResNet50's input side
DIM = 2048  # ResNet50's pooled output
FACE_BOX = ("face_x", "face_y", "face_w", "face_h")  # a row's face box, as the tables name it
# The index of the face vectors (embed writes one per shard, assemble_features stacks them): row i
# describes face vector i. status: "ok", or why its crop has no vector.
# ``label`` is DeepFace's, ``label_<teacher>`` each teacher's: training reads the ``teacher`` knob's
# (a face labelled under any teacher has a vector, so switching the teacher embeds nothing again).
FACE_INDEX_COLUMNS = {"image_id": object, "source_key": object, "shard": "int64", "face_index": "int64",
                      "label": object, **{column: object for column in LABEL_COLUMNS.values()},
                      **{k: "int64" for k in FACE_BOX}, **{f"emotion_{c}": "float64" for c in CLASSES},
                      **{f"xception_{c}": "float64" for c in CLASSES}, "status": object, "error": object}


def decode_photo(data: bytes, max_pixels: int) -> Image.Image:
    """Original photo bytes -> upright 8-bit RGB (raises ``images.ImageError`` on bad input)."""
    image, _ = open_checked(data, max_pixels)
    return decode_rgb(image)


def model_input(photo: Image.Image, box: tuple[int, int, int, int] | None) -> np.ndarray:
    """The 224x224 RGB array ResNet50 sees: the face ``box`` (x, y, w, h in the photo's pixels) cropped
    and letterboxed, or the whole photo letterboxed when ``box`` is None."""
    if box is not None:
        x, y, w, h = (int(v) for v in box)
        photo = photo.crop((x, y, x + w, y + h))
    return np.asarray(letterbox(photo, INPUT_SIZE))


def row_input(data: bytes, row: Any, *, face: bool, max_pixels: int) -> np.ndarray:
    """The model input of a table row's photo, from the photo's bytes: the row's face box (its
    ``FACE_BOX`` fields: a pandas row or a named tuple) when ``face``, else the whole photo."""
    box = tuple(getattr(row, k) for k in FACE_BOX) if face else None
    return model_input(decode_photo(data, max_pixels), box)


def image_vectors(model, inputs: Sequence[np.ndarray] | np.ndarray, batch_size: int) -> np.ndarray:
    """(n, 224, 224, 3) inputs -> (n, 2048) float32 vectors, ``batch_size`` at a time.

    A batch of one is padded to two: on CPU, TensorFlow runs a single image through other kernels
    whose results differ in the 6th digit, so the API (often one face) would not match embed.
    """
    return _run(model, inputs, batch_size)


def feature_maps(model, inputs: Sequence[np.ndarray] | np.ndarray, batch_size: int) -> np.ndarray:
    """(n, 224, 224, 3) inputs -> (n, 7, 7, 2048): ``model``'s (``resnet50()``) last convolutional
    output, before the average pooling that makes the vectors (SHAP heat maps explain its regions)."""
    import keras

    unpooled = keras.Model(model.inputs, model.get_layer("avg_pool").input)
    return _run(unpooled, inputs, batch_size)


def _run(model, inputs, batch_size: int) -> np.ndarray:
    from keras.applications.resnet50 import preprocess_input

    inputs = np.asarray(inputs)
    out = np.zeros((len(inputs), *model.output_shape[1:]), dtype=np.float32)
    for start in range(0, len(inputs), max(1, batch_size)):
        batch = inputs[start:start + max(1, batch_size)].astype(np.float32)
        padded = np.concatenate([batch, batch]) if len(batch) == 1 else batch
        outputs = np.asarray(model.predict_on_batch(preprocess_input(padded)), dtype=np.float32)
        out[start:start + len(batch)] = outputs[:len(batch)]
    return out


@lru_cache(maxsize=2)
def resnet50(weights: str, mixed_precision: bool = False):
    """ResNet50 without its classifier, global average pooled: (n, 224, 224, 3) -> (n, 2048).

    Built once per process and weights setting. ``weights``: ``imagenet`` (Keras downloads and caches
    them), a local ``.h5`` path, or ``none`` (random values, same graph and cost: tests and CI).
    Mixed precision only where a GPU can use it, and only for this model: the global policy is put
    back after the build, so DeepFace's models built later in the same worker stay float32.
    """
    import keras
    import tensorflow as tf

    previous = keras.mixed_precision.global_policy()
    if mixed_precision and tf.config.list_physical_devices("GPU"):
        keras.mixed_precision.set_global_policy("mixed_float16")
    chosen = None if weights.lower() == "none" else weights
    if chosen is None:
        log.warning("ResNet50 with weights=None: random weights, same graph and cost (tests/CI only)")
        # The same random weights in every process (embed workers, API workers), so vectors agree.
        keras.utils.set_random_seed(0)
    try:
        return keras.applications.ResNet50(include_top=False, pooling="avg", weights=chosen,
                                           input_shape=(INPUT_SIZE, INPUT_SIZE, 3))
    except Exception as err:
        cached = keras_cache() / IMAGENET_FILE
        if chosen != "imagenet" or cached.is_file():
            raise
        raise MissingWeightsError(
            f"ResNet50's ImageNet weights ({IMAGENET_FILE}) are not in {cached.parent} and could not be "
            f"downloaded ({type(err).__name__}: {str(err)[:200]}). Put the file there (from {IMAGENET_URL}; "
            f"$KERAS_HOME/models if KERAS_HOME is set), or pass --embed-weights PATH to a copy of it, or "
            f"--embed-weights none (random weights: for tests only)."
        ) from err
    finally:
        keras.mixed_precision.set_global_policy(previous)


IMAGENET_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
IMAGENET_URL = f"https://storage.googleapis.com/tensorflow/keras-applications/resnet/{IMAGENET_FILE}"


def check_weights(weights: str) -> None:
    """Fail in a second, before any photo is processed, where embed would fail after resize and
    annotate had run: ``imagenet`` with no cached copy and no way to download it, or a missing file.

    Raises:
        MissingWeightsError: naming the form field, the CLI flag and what to do instead.
    """
    if weights.lower() == "none" or weights.startswith("gs://"):
        return
    ask = ("Set 'ResNet50 weights' (trigger form, Embedding section; --embed-weights on the command line, "
           "$EMOTION_PIPELINE_EMBED_WEIGHTS for a deployment) to a local copy's path, or to none (random "
           "weights: tests only).")
    if weights != "imagenet":
        if not Path(weights).is_file():
            raise MissingWeightsError(f"ResNet50 weights {weights!r}: no such file on this worker. {ask}")
        return
    cached = keras_cache() / IMAGENET_FILE
    if cached.is_file():
        return
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(IMAGENET_URL, method="HEAD"), timeout=15).close()
    except OSError as err:
        raise MissingWeightsError(
            f"ResNet50 weights 'imagenet': {IMAGENET_FILE} is not in {cached.parent} and {IMAGENET_URL} cannot "
            f"be reached ({err}). Put the file there, or: {ask}") from err


def keras_cache() -> Path:
    """Where Keras keeps downloaded weights: $KERAS_HOME/models, else ~/.keras/models."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "models"
