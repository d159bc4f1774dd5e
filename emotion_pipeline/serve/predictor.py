"""Loads the registered model once per process and turns one photo into per-face emotion probabilities.

Same path as the pipeline: DeepFace detection on the photo, the face crop (or the whole photo, as the
model was trained) through ResNet50, then the trained head.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..config import CLASSES, PipelineConfig
from ..faces import build_models, detect_faces
from ..labels import label_of
from ..modeling import tracking
from ..modeling.embedding import decode_photo, image_vectors, model_input, resnet50

_PIPELINE = PipelineConfig(source="", root="")  # the pipeline's defaults, shared with the API

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeSettings:
    root: str  # the pipeline's storage root: MLflow store, reports
    model_uri: str | None = None  # default: models:/emotion-classifier@champion
    embed_weights: str | None = None  # default: what the model was trained with
    max_upload_bytes: int = 10 * 1024 * 1024
    read_timeout: float = 30.0  # seconds a client has to send its whole request body
    # Default: the values the model's pipeline run used (logged in MLflow), so that a photo the
    # pipeline takes, the API takes, and faces are found at the same detection size.
    max_image_pixels: int | None = None
    detect_max_side: int | None = None


class Predictor:
    """Everything TensorFlow, built once; ``predict`` is serialised (TF objects are not shared across threads)."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        config = PipelineConfig(source=settings.root, root=settings.root)
        mlflow = tracking.use_experiment(config)
        uri = settings.model_uri or f"models:/{config.registered_model}@{tracking.CHAMPION}"
        client = mlflow.MlflowClient()
        if uri.startswith(f"models:/{config.registered_model}@"):
            version = client.get_model_version_by_alias(config.registered_model, uri.rsplit("@", 1)[1])
        else:
            version = client.get_model_version(config.registered_model, uri.rsplit("/", 1)[1])
        run = client.get_run(version.run_id)
        params = run.data.params
        self.info = {
            "model_uri": uri, "model_version": str(version.version), "run_id": version.run_id,
            "classes": list(CLASSES), "metrics": dict(run.data.metrics),
            "embed_input": params.get("config.embed_input", "face"),
            "detector": params.get("config.detector", "mtcnn"),
            "min_face_confidence": float(params.get("config.min_face_confidence", 0.9)),
            "max_image_pixels": settings.max_image_pixels or int(
                params.get("config.max_image_pixels", _PIPELINE.max_image_pixels)),
            "detect_max_side": settings.detect_max_side or int(
                params.get("config.detect_max_side", _PIPELINE.detect_max_side)),
        }
        weights = settings.embed_weights or params.get("config.embed_weights", "imagenet")
        self.batch_size = int(params.get("config.embed_batch_size", _PIPELINE.embed_batch_size))
        self.head = tracking.load_model(f"models:/{config.registered_model}/{version.version}")
        # The precision the training vectors were made with (it only differs from float32 on a GPU).
        self.resnet = resnet50(weights, params.get("config.mixed_precision", "True") == "True")
        build_models(("emotion",))  # fail now, not on the first request, if DeepFace weights are missing
        log.info("model %s (version %s) loaded", uri, self.info["model_version"])

    def predict(self, data: bytes) -> dict[str, Any]:
        """Faces with boxes (original pixels) and the five probabilities. Raises ImageError on bad input."""
        with self._lock:
            boxes, confidences, vectors = self.face_vectors(data)
            probabilities = np.asarray(self.head.predict(vectors, verbose=0)) if boxes else []
        return self._response(boxes, confidences, probabilities)

    def face_vectors(self, data: bytes) -> tuple[list[tuple[int, int, int, int]], list[float], np.ndarray]:
        """The confident faces of a photo, as the pipeline finds them, and the vector of each: the same
        model-input path as embed (``modeling.embedding``), so the head sees what it was trained on."""
        photo = decode_photo(data, self.info["max_image_pixels"])
        scale = min(1.0, self.info["detect_max_side"] / max(photo.size))
        small = photo if scale == 1.0 else photo.resize(
            (max(1, round(photo.width * scale)), max(1, round(photo.height * scale))), Image.Resampling.BICUBIC)
        found = [f for f in detect_faces(np.asarray(small), self.info["detector"])
                 if f.confidence >= self.info["min_face_confidence"]]
        boxes = [tuple(round(v / scale) for v in (f.x, f.y, f.w, f.h)) for f in found]
        if not boxes:
            return [], [], np.zeros((0, 2048), dtype=np.float32)
        whole = self.info["embed_input"] == "photo"
        inputs = [model_input(photo, None if whole else box) for box in boxes]
        return boxes, [f.confidence for f in found], image_vectors(self.resnet, inputs, self.batch_size)

    def _response(self, boxes, confidences, probabilities) -> dict[str, Any]:
        faces = [
            {"box": {"x": x, "y": y, "w": w, "h": h}, "confidence": round(float(c), 4),
             "emotion": label_of(p),  # the model's five probabilities: always a class
             "probabilities": {name: round(float(v), 6) for name, v in zip(CLASSES, p)}}
            for (x, y, w, h), c, p in zip(boxes, confidences, probabilities)
        ]
        return {"model_version": self.info["model_version"], "faces": faces}

