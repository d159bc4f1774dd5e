"""DeepFace, used the way a pipeline needs it: detect per photo, then analyse face crops in batches.

``DeepFace.analyze`` runs the emotion network on one face at a time. Here the faces of many photos
are collected and each attribute model sees them as one batch, with exactly the preprocessing
``analyze`` applies (RGB->BGR, pad to 224, the model's own grayscale/48 px step), so the scores
match. DeepFace caches built models per process, so each model is built once per worker.

TensorFlow and DeepFace are imported inside functions: the DAG file must parse in milliseconds.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from emotion_pipeline.core.config import EMOTIONS
from emotion_pipeline.core.errors import MissingWeightsError  # re-exported: its home is core.errors

GENDERS = ("Woman", "Man")
RACES = ("asian", "indian", "black", "white", "middle eastern", "latino hispanic")
MODEL_FOR_ACTION = {"emotion": "Emotion", "age": "Age", "gender": "Gender", "race": "Race"}
WEIGHT_FILE_FOR_ACTION = {
    "emotion": "facial_expression_model_weights.h5",
    "age": "age_model_weights.h5",
    "gender": "gender_model_weights.h5",
    "race": "race_model_single_batch.h5",
}


@dataclass
class DetectedFace:
    x: int
    y: int
    w: int
    h: int
    confidence: float
    crop: np.ndarray  # RGB float in [0, 1], aligned, as DeepFace's extract_faces returns it


def weights_dir() -> Path:
    home = os.environ.get("DEEPFACE_HOME") or str(Path.home())
    return Path(home) / ".deepface" / "weights"


def detect_faces(rgb: np.ndarray, detector: str) -> list[DetectedFace]:
    """Every face DeepFace's detector finds; ``[]`` when there is none (never the whole photo).

    Exactly ``DeepFace.extract_faces(align=True)``: the detector runs on the photo framed by a black
    border (as DeepFace frames it, so eye alignment never rotates a face out of the picture), then
    DeepFace's own alignment and crop. Only the detector may be faster (see ``face_detector``).
    Safe to call from several threads when ``detector_is_thread_safe(detector)``.

    With ``detector="skip"`` the whole photo is the face: for inputs that are already face crops.
    """
    import cv2
    from deepface.modules import detection

    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    height, width = bgr.shape[:2]
    if detector == "skip":  # DeepFace's box for the whole photo is one pixel short of it
        return [DetectedFace(0, 0, width - 1, height - 1, 1.0, _scaled(rgb))] if height and width else []
    border_y, border_x = int(0.5 * height), int(0.5 * width)  # as in deepface.modules.detection.detect_faces
    framed = cv2.copyMakeBorder(bgr, border_y, border_y, border_x, border_x, cv2.BORDER_CONSTANT, value=[0, 0, 0])
    faces = []
    for region in face_detector(detector).detect_faces(framed):
        face = detection.extract_face(facial_area=region, img=framed, align=True, expand_percentage=0,
                                      width_border=border_x, height_border=border_y, detector_backend=detector)
        if face.img.shape[0] == 0 or face.img.shape[1] == 0:
            continue  # DeepFace drops empty crops too
        # DeepFace.extract_faces' final clipping, rounding and scaling.
        area = face.facial_area
        x, y = max(0, int(area.x)), max(0, int(area.y))
        faces.append(DetectedFace(
            x=x, y=y, w=min(width - x - 1, int(area.w)), h=min(height - y - 1, int(area.h)),
            confidence=round(float(area.confidence or 0), 2), crop=_scaled(face.img[:, :, ::-1]),
        ))
    return faces


def _scaled(rgb: np.ndarray) -> np.ndarray:
    return rgb / 255 if rgb.max() > 1 else rgb  # DeepFace's crops are RGB in [0, 1]


THREAD_SAFE_DETECTORS = {"mtcnn", "skip"}  # OpenCV's detectors keep per-call state in one shared object


def detector_is_thread_safe(detector: str) -> bool:
    return detector in THREAD_SAFE_DETECTORS


@cache
def face_detector(name: str):
    """DeepFace's detector client; for MTCNN, a separate client whose stages run faster.

    DeepFace's MTCNN calls its Keras networks eagerly a dozen times per photo (one per pyramid scale)
    and converts the photo to a tensor again at every scale; the Python around those calls costs
    more than the convolutions. Here each network is a compiled TensorFlow graph and each stage gets
    the photo as one tensor: the same weights and ops give bit-identical boxes and scores
    (tests/labelling/test_faces.py) at about 2.5x the speed, and graph calls release the GIL, so detection
    threads use every core. DeepFace's own cached client (``DeepFace.analyze``) is left as it is.
    """
    from deepface.modules import modeling

    if name != "mtcnn":
        return modeling.build_model(task="face_detector", model_name=name)
    from deepface.models.face_detection.MtCnn import MtCnnClient

    client = MtCnnClient()
    client.model._stages = [_CompiledStage(stage) for stage in client.model.stages]  # noqa: SLF001
    return client


class _CompiledStage:
    """One MTCNN stage with its network as a graph, fed the normalised photo as one tensor."""

    def __init__(self, stage) -> None:
        import tensorflow as tf

        network = stage._model  # noqa: SLF001 (mtcnn has no public hook for this)
        # One trace for every input size: the pyramid's scales differ photo by photo.
        graph = tf.function(lambda x: network(x, training=False), reduce_retracing=True)

        def run(x):
            if x.shape[0] == 0:  # no candidate left for this stage: the graph must not see an empty batch
                # (TensorFlow logs "Incompatible shapes ... [0,48,48,3]" for it): one blank patch gives
                # the outputs' shapes, cut to zero rows.
                return [out[:0] for out in graph(tf.zeros((1, *x.shape[1:]), x.dtype))]
            return graph(x)

        stage._model = run
        self.stage = stage

    def __call__(self, images_normalized, **kwargs):
        import tensorflow as tf

        return self.stage(images_normalized=tf.convert_to_tensor(images_normalized), **kwargs)


def build_models(actions: tuple[str, ...]) -> dict[str, Any]:
    """Build (once per process: DeepFace caches them) the attribute models for ``actions``.

    A missing weight file is first left to DeepFace to download (users with internet); when that
    fails the error says which file to put where, instead of a bare network traceback.
    """
    from deepface.modules import modeling

    models = {}
    for action in actions:
        try:
            models[action] = modeling.build_model(task="facial_attribute", model_name=MODEL_FOR_ACTION[action])
        except Exception as err:
            target = weights_dir() / WEIGHT_FILE_FOR_ACTION[action]
            if target.is_file():
                raise
            raise MissingWeightsError(
                f"the '{action}' model needs {target.name}, which is not in {target.parent} and could "
                f"not be downloaded ({type(err).__name__}: {err}). Copy the file there (set DEEPFACE_HOME "
                f"to its parent's parent) or remove '{action}' from the actions."
            ) from err
    return models


def model_input(crops: list[np.ndarray]) -> np.ndarray:
    """The batch DeepFace.analyze would feed: each crop to BGR, padded/resized to 224x224."""
    from deepface.modules import preprocessing

    return np.concatenate(
        [preprocessing.resize_image(img=crop[:, :, ::-1], target_size=(224, 224)) for crop in crops]
    )


def analyze_crops(crops: list[np.ndarray], models: dict[str, Any]) -> dict[str, np.ndarray]:
    """Attribute scores for a batch of face crops, on DeepFace's scales (percentages, years)."""
    if not crops:
        return {}
    batch = model_input(crops)
    out: dict[str, np.ndarray] = {}
    for action, model in models.items():
        raw = np.asarray(model.predict(batch), dtype=np.float64)
        out[action] = scores_from_predictions(action, raw, len(crops))
    return out


def scores_from_predictions(action: str, raw: np.ndarray, n: int) -> np.ndarray:
    """Bring a model's output to shape (n, k) on DeepFace's scale. Models return (k,) when n == 1."""
    if action == "age":
        return raw.reshape(n)
    raw = raw.reshape(n, -1)
    if action == "gender":
        return 100.0 * raw
    return 100.0 * raw / raw.sum(axis=1, keepdims=True)  # emotion, race: normalised percentages


def face_record(scores: dict[str, np.ndarray], i: int) -> dict[str, Any]:
    """One face's attribute columns from the batch scores (row ``i``)."""
    record: dict[str, Any] = {}
    if "emotion" in scores:
        emotion = scores["emotion"][i]
        record.update({f"emotion_{name}": float(v) for name, v in zip(EMOTIONS, emotion)})
        record["dominant_emotion"] = EMOTIONS[int(np.argmax(emotion))]
    if "age" in scores:
        record["age"] = int(scores["age"][i])
    if "gender" in scores:
        gender = scores["gender"][i]
        record.update({"gender_woman": float(gender[0]), "gender_man": float(gender[1])})
        record["dominant_gender"] = GENDERS[int(np.argmax(gender))]
    if "race" in scores:
        race = scores["race"][i]
        record.update({f"race_{name.replace(' ', '_')}": float(v) for name, v in zip(RACES, race)})
        record["dominant_race"] = RACES[int(np.argmax(race))]
    return record
