"""Loads the registered model and turns one photo into per-face emotion probabilities.

Same path as the pipeline: DeepFace detection on the photo, the face crop (or the whole photo, as the
model was trained) through ResNet50, then the trained head. It only reads the MLflow store: a root
without one (or no root at all) is an error, never an empty store created.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from emotion_pipeline.core import catalog
from emotion_pipeline.core.config import CLASSES, PipelineConfig, detector_min_confidence
from emotion_pipeline.core.errors import ClientGone, StoreMissing  # re-exported: their home is core.errors
from emotion_pipeline.core.storage import GCS_SCHEME
from emotion_pipeline.labelling.faces import build_models, detect_faces
from emotion_pipeline.labelling.images import scaled_size
from emotion_pipeline.labelling.labels import label_of
from emotion_pipeline.modeling import tracking
from emotion_pipeline.modeling.embedding import decode_photo, image_vectors, model_input, resnet50

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
    # A request's cost is bounded: at most this many pixels (below the pipeline's 60 Mpx: a 60 Mpx
    # photo costs a serving worker 11-14 s and 1.4 GB) and this many faces through ResNet50 (the
    # largest; an 8x8 grid of one face would otherwise cost 64 passes).
    pixel_cap: int = 16_000_000
    max_faces: int = 20
    reload_interval: float = 60.0  # seconds between checks of where the champion alias points; 0: never


def read_only_client(root: str):
    """An MLflow client on the root's store, or None when the root has none yet: opening a missing
    SQLite store creates it, and a server (or dashboard) only reads. A tracking server is read as it is."""
    from mlflow import MlflowClient

    from emotion_pipeline.modeling import tracking

    config = PipelineConfig(source=root, root=root)
    explicit = config.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if explicit and not explicit.startswith("sqlite:"):
        return MlflowClient(tracking_uri=explicit)
    database = (Path(explicit.split(":///", 1)[1]) if explicit
                else tracking._local_mlflow_folder(config) / catalog.MLFLOW_DB)  # the path tracking_uri makes
    if not database.is_file():
        return None
    if not explicit:
        tracking.relocate_local_store(config)  # a moved or restored root reads its own files, not the old root's
    return MlflowClient(tracking_uri=f"sqlite:///{database}")


def store_client(root: str):
    """``read_only_client``, or ``StoreMissing`` saying which of root and store is missing."""
    if not root.startswith(GCS_SCHEME) and not Path(root).expanduser().is_dir():
        raise StoreMissing(f"the storage root {root} does not exist")
    client = read_only_client(root)
    if client is None:
        raise StoreMissing(f"no MLflow store under {root}: run the pipeline first")
    return client


MODEL_URI_FORMS = "models:/<name>@<alias> or models:/<name>/<version>"


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """(registered model name, alias, version) of ``models:/<name>@<alias>`` (version None) or
    ``models:/<name>/<version>`` (alias None); a ValueError for anything else. The name is the URI's,
    whatever the pipeline's own registered model is called."""
    rest = uri.removeprefix("models:/") if uri.startswith("models:/") else ""
    if "@" in rest:
        name, alias = rest.rsplit("@", 1)
        if name and alias and "/" not in alias:
            return name, alias, None
    elif "/" in rest:
        name, version = rest.rsplit("/", 1)
        if name and version.isdigit():
            return name, None, version
    raise ValueError(f"model URI {uri!r}: expected {MODEL_URI_FORMS}")


def registered_version(client, uri: str):
    """The model version ``uri`` names (``models:/name@alias`` or ``models:/name/N``) in the registry."""
    name, alias, version = parse_model_uri(uri)
    if alias is not None:
        return client.get_model_version_by_alias(name, alias)
    return client.get_model_version(name, version)


def model_uri(settings: ServeSettings) -> str:
    name = PipelineConfig(source=settings.root, root=settings.root).registered_model
    return settings.model_uri or f"models:/{name}@{tracking.CHAMPION}"


def _use_tracking_uri(uri: str) -> None:
    """Point mlflow's model loading at the store without exporting MLFLOW_TRACKING_URI (mlflow's
    set_tracking_uri does; see tracking.use_experiment)."""
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


class Predictor:
    """Everything TensorFlow, built once; ``predict`` is serialised (TF objects are not shared across threads)."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        uri = model_uri(settings)
        name = parse_model_uri(uri)[0]  # a bad URI fails before anything is read
        client = store_client(settings.root)
        version = registered_version(client, uri)
        run = client.get_run(version.run_id)
        params = run.data.params
        self.info = {
            "model_uri": uri, "model_name": name, "model_version": str(version.version), "run_id": version.run_id,
            "classes": list(CLASSES), "metrics": dict(run.data.metrics),
            "embed_input": params.get("config.embed_input", "face"),
            "detector": params.get("config.detector", "mtcnn"),
            "min_face_confidence": float(params.get("config.min_face_confidence") or detector_min_confidence(
                params.get("config.detector", "mtcnn"))),
            "max_image_pixels": settings.max_image_pixels or min(settings.pixel_cap, int(
                params.get("config.max_image_pixels", _PIPELINE.max_image_pixels))),
            "max_faces": settings.max_faces,
            "detect_max_side": settings.detect_max_side or int(
                params.get("config.detect_max_side", _PIPELINE.detect_max_side)),
        }
        weights = settings.embed_weights or params.get("config.embed_weights", "imagenet")
        self.batch_size = int(params.get("config.embed_batch_size", _PIPELINE.embed_batch_size))
        _use_tracking_uri(client.tracking_uri)
        self.head = tracking.load_model(f"models:/{name}/{version.version}")  # the version resolved above
        # The precision the training vectors were made with (it only differs from float32 on a GPU).
        self.resnet = resnet50(weights, params.get("config.mixed_precision", "True") == "True")
        build_models(("emotion",))  # fail now, not on the first request, if DeepFace weights are missing
        log.info("model %s (version %s) loaded", uri, self.info["model_version"])

    def decode(self, data: bytes) -> Image.Image:
        """Photo bytes -> the upright RGB photo ``predict`` works on, within this model's pixel cap
        (ImageError otherwise). For a caller that shows the photo too: decoded once, not twice."""
        return decode_photo(data, self.info["max_image_pixels"])

    def predict(self, data: bytes | Image.Image, cancelled: threading.Event | None = None) -> dict[str, Any]:
        """Faces with boxes (original pixels) and the five probabilities, of photo bytes or a photo
        ``decode`` returned. Raises ImageError on bad input, and ClientGone between steps once
        ``cancelled`` is set (its client left)."""
        cancelled = cancelled or threading.Event()
        with self._lock:
            boxes, confidences, vectors, found = self.face_vectors(data, cancelled)
            probabilities: np.ndarray | list = np.asarray(self.head.predict(vectors, verbose=0)) if boxes else []
        return {**self._response(boxes, confidences, probabilities), "faces_found": found}

    def face_vectors(self, data: bytes | Image.Image,
                     cancelled: threading.Event) -> tuple[list, list[float], np.ndarray, int]:
        """The largest ``max_faces`` confident faces of a photo, as the pipeline finds them, the vector
        of each (the same model-input path as embed, ``modeling.embedding``, so the head sees what it
        was trained on), and how many confident faces there were."""
        _stop_if(cancelled, "before decoding")
        photo = data if isinstance(data, Image.Image) else self.decode(data)
        _stop_if(cancelled, "before detection")
        scale = min(1.0, self.info["detect_max_side"] / max(photo.size))
        small = photo if scale == 1.0 else photo.resize(scaled_size(photo.size, scale), Image.Resampling.BICUBIC)
        found = [f for f in detect_faces(np.asarray(small), self.info["detector"])
                 if f.confidence >= self.info["min_face_confidence"]]
        kept = sorted(found, key=lambda f: f.w * f.h, reverse=True)[:self.settings.max_faces]
        kept.sort(key=found.index)  # in the detector's order, as without a cap
        boxes = [tuple(round(v / scale) for v in (f.x, f.y, f.w, f.h)) for f in kept]
        if not boxes:
            return [], [], np.zeros((0, 2048), dtype=np.float32), 0
        whole = self.info["embed_input"] == "photo"
        inputs = [model_input(photo, None if whole else box) for box in boxes]
        vectors = []
        for start in range(0, len(inputs), self.batch_size):  # a departed client stops between batches
            _stop_if(cancelled, f"after {start} of {len(inputs)} faces")
            vectors.append(image_vectors(self.resnet, inputs[start:start + self.batch_size], self.batch_size))
        return boxes, [f.confidence for f in kept], np.concatenate(vectors), len(found)

    def _response(self, boxes, confidences, probabilities) -> dict[str, Any]:
        faces = [
            {"box": {"x": x, "y": y, "w": w, "h": h}, "confidence": round(float(c), 4),
             "emotion": label_of(p),  # the model's five probabilities: always a class
             "probabilities": {name: round(float(v), 6) for name, v in zip(CLASSES, p)}}
            for (x, y, w, h), c, p in zip(boxes, confidences, probabilities)
        ]
        return {"model_version": self.info["model_version"], "faces": faces}


def _stop_if(cancelled: threading.Event, where: str) -> None:
    if cancelled.is_set():
        raise ClientGone(where)
