"""DeepFace, used the way a pipeline needs it: detect per photo, then analyse face crops in batches.

``DeepFace.analyze`` runs the emotion network on one face at a time. Here the faces of many photos
are collected and each attribute model sees them as one batch, with exactly the preprocessing
``analyze`` applies (RGB->BGR, pad to 224, the model's own grayscale/48 px step), so the scores
match. DeepFace caches built models per process, so each model is built once per worker.

TensorFlow and DeepFace are imported inside functions: the DAG file must parse in milliseconds.
"""
from __future__ import annotations

import os
import threading
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
    """Every face the detector finds; ``[]`` when there is none (never the whole photo).

    DeepFace's ``extract_faces(align=True)`` rules: the photo is framed by a black border (as DeepFace
    frames it, so eye alignment never rotates a face out of the picture), each face is aligned on its
    eyes and cropped from the framed photo, and the box is clipped to the photo. For every detector
    but YuNet this is exactly ``DeepFace.extract_faces``: the detector runs on the framed photo.

    YuNet runs on the photo itself at its own resolution (``YuNet``), not on the framed photo that
    DeepFace's wrapper shrinks to 640 px: its boxes are offset into the framed photo's coordinates,
    and the frame serves only the alignment crop. Its scores are kept as YuNet gives them (DeepFace
    rounds to 2 decimals), so ``confidence >= t`` keeps exactly the faces YuNet keeps at threshold t.
    Safe to call from several threads when ``detector_is_thread_safe(detector)``.

    With ``detector="skip"`` the whole photo is the face: for inputs that are already face crops.
    """
    import cv2
    from deepface.modules import detection

    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    height, width = bgr.shape[:2]
    if detector == "skip":  # DeepFace's box for the whole photo is one pixel short of it
        return [DetectedFace(0, 0, width - 1, height - 1, 1.0, _scaled(rgb))] if height and width else []
    if not height or not width:
        return []
    border_y, border_x = int(0.5 * height), int(0.5 * width)  # as in deepface.modules.detection.detect_faces
    if detector == "yunet":
        regions = face_detector("yunet").detect_faces(bgr, offset=(border_x, border_y))
        if not regions:
            return []
    framed = cv2.copyMakeBorder(bgr, border_y, border_y, border_x, border_x, cv2.BORDER_CONSTANT, value=[0, 0, 0])
    if detector != "yunet":
        regions = face_detector(detector).detect_faces(framed)
    faces = []
    for region in regions:
        face = detection.extract_face(facial_area=region, img=framed, align=True, expand_percentage=0,
                                      width_border=border_x, height_border=border_y, detector_backend=detector)
        if face.img.shape[0] == 0 or face.img.shape[1] == 0:
            continue  # DeepFace drops empty crops too
        # DeepFace.extract_faces' final clipping, rounding and scaling.
        area = face.facial_area
        x, y = max(0, int(area.x)), max(0, int(area.y))
        confidence = float(area.confidence or 0)
        faces.append(DetectedFace(
            x=x, y=y, w=min(width - x - 1, int(area.w)), h=min(height - y - 1, int(area.h)),
            confidence=confidence if detector == "yunet" else round(confidence, 2),
            crop=_scaled(face.img[:, :, ::-1]),
        ))
    return faces


def _scaled(rgb: np.ndarray) -> np.ndarray:
    return rgb / 255 if rgb.max() > 1 else rgb  # DeepFace's crops are RGB in [0, 1]


# OpenCV's detectors keep per-call state in one shared object; YuNet here has one per thread.
THREAD_SAFE_DETECTORS = {"mtcnn", "yunet", "skip"}


def detector_is_thread_safe(detector: str) -> bool:
    return detector in THREAD_SAFE_DETECTORS


@cache
def face_detector(name: str):
    """DeepFace's detector client; for MTCNN, a separate client whose stages run faster; for YuNet,
    ``YuNet`` (the photo at its own resolution, not DeepFace's 640 px wrapper).

    DeepFace's MTCNN calls its Keras networks eagerly a dozen times per photo (one per pyramid scale)
    and converts the photo to a tensor again at every scale; the Python around those calls costs
    more than the convolutions. Here each network is a compiled TensorFlow graph and each stage gets
    the photo as one tensor: the same weights and ops give bit-identical boxes and scores
    (tests/labelling/test_faces.py) at about 2.5x the speed, and graph calls release the GIL, so detection
    threads use every core. DeepFace's own cached client (``DeepFace.analyze``) is left as it is.
    """
    from deepface.modules import modeling

    if name == "yunet":
        return YuNet()
    if name != "mtcnn":
        return modeling.build_model(task="face_detector", model_name=name)
    from deepface.models.face_detection.MtCnn import MtCnnClient

    client = MtCnnClient()
    client.model._stages = [_CompiledStage(stage) for stage in client.model.stages]  # noqa: SLF001
    return client


YUNET_WEIGHTS = "face_detection_yunet_2023mar.onnx"  # OpenCV Zoo's, the file DeepFace's YuNet uses
# The lowest score YuNet reports to the pipeline: under its default threshold (``min_face_confidence``
# 0.7 for YuNet) so that the faces table and the report's label-policy curves see the faces just
# below it (about half of those between 0.6 and 0.7 are not faces: README), which never label a
# photo. Lower would cost emotion-model time on junk: 1.95 faces per sample photo at 0.6, 2.39 at 0.5.
# A ``min_face_confidence`` under 0.6 finds no more faces than 0.6.
YUNET_FLOOR = 0.6


class YuNet:
    """YuNet (``cv2.FaceDetectorYN``) on the photo at its own resolution, one OpenCV detector per thread.

    DeepFace's YuNet wrapper sees the photo framed in black (four times the pixels), shrinks anything
    over 640 px and keeps scores of 0.9 and up, so the small faces of a street or a crowd are gone
    before YuNet looks. Here YuNet sees the photo as it is (annotate caps its long side at
    ``detect_max_side``), and each face becomes the ``FacialAreaRegion`` DeepFace's wrapper makes of
    it (integer box, eyes in DeepFace's order), offset by the frame DeepFace's alignment crop uses.
    The weight file is the one DeepFace downloads, at the path DeepFace downloads it to
    (``$DEEPFACE_HOME/.deepface/weights``, by default in the home folder).
    """

    def __init__(self, floor: float = YUNET_FLOOR) -> None:
        from deepface.commons import weight_utils
        from deepface.models.face_detection.YuNet import WEIGHTS_URL

        self.floor = floor
        try:
            self.weights = weight_utils.download_weights_if_necessary(file_name=YUNET_WEIGHTS, source_url=WEIGHTS_URL)
        except Exception as err:
            raise MissingWeightsError(
                f"the yunet detector needs {YUNET_WEIGHTS}, which is not in {weights_dir()} and could not be "
                f"downloaded ({type(err).__name__}: {err}). Copy the file there (set DEEPFACE_HOME to its "
                f"parent's parent) or choose another detector."
            ) from err
        self._local = threading.local()
        self._model()  # a missing or broken file fails here, not in a worker thread

    def _model(self):
        import cv2

        model = getattr(self._local, "model", None)
        if model is None:
            model = self._local.model = cv2.FaceDetectorYN.create(self.weights, "", (320, 320), self.floor)
        return model

    def raw(self, bgr: np.ndarray, score_threshold: float | None = None) -> np.ndarray:
        """YuNet's own output on the photo: rows of x, y, w, h, 5 landmarks (x, y), score (n x 15)."""
        model = self._model()
        model.setInputSize((bgr.shape[1], bgr.shape[0]))
        model.setScoreThreshold(self.floor if score_threshold is None else score_threshold)
        _, found = model.detect(np.ascontiguousarray(bgr))
        return np.zeros((0, 15), np.float32) if found is None else found

    def detect_faces(self, bgr: np.ndarray, offset: tuple[int, int] = (0, 0)) -> list:
        """Faces as DeepFace's regions, in the coordinates of the photo framed by ``offset`` (x, y)."""
        from deepface.models.Detector import FacialAreaRegion

        dx, dy = offset
        regions = []
        for face in self.raw(bgr):
            # As DeepFace's YuNetClient: YuNet gives the right eye first; truncation to int; x, y >= 0.
            x, y, x_re, y_re, x_le, y_le = (int(v + d) for v, d in zip(face[[0, 1, 4, 5, 6, 7]], (dx, dy) * 3))
            w, h = int(face[2]), int(face[3])
            regions.append(FacialAreaRegion(x=max(x, 0), y=max(y, 0), w=w, h=h, confidence=float(face[-1]),
                                            left_eye=(x_le, y_le), right_eye=(x_re, y_re)))
        return regions


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


def analyze_crops(crops: list[np.ndarray], models: dict[str, Any], batch: np.ndarray | None = None
                  ) -> dict[str, np.ndarray]:
    """Attribute scores for a batch of face crops, on DeepFace's scales (percentages, years);
    ``batch``: their ``model_input`` when the caller already made it (annotate, for both teachers)."""
    if not crops:
        return {}
    batch = model_input(crops) if batch is None else batch
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
