"""The one typed configuration object: every knob of the pipeline lives here.

The same object is built from the DAG's trigger-form params, from the CLI and from tests, so a stage
function behaves identically wherever it is called from.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")  # DeepFace's 7 scores
CLASSES = ("happy", "sad", "angry", "surprise", "neutral")  # the project's training labels
ACTIONS = ("emotion", "age", "gender", "race")
DETECTORS = (
    "opencv", "yunet", "mtcnn", "ssd", "dlib", "retinaface", "mediapipe", "centerface",
    "yolov8n", "yolov11n", "skip",
)
DRIFT_REFERENCES = ("earlier_shards", "baseline")
EMBED_INPUTS = ("face", "photo")
TUNERS = ("hyperband", "bayesian")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


def state_home() -> Path:
    """Where local state lives (Airflow home, tuner checkpoints, MLflow for gs:// roots)."""
    return Path(os.environ.get("EMOTION_PIPELINE_HOME") or Path.home() / ".emotion-pipeline")


@dataclass(frozen=True)
class PipelineConfig:
    source: str  # folder or gs:// URI of the input photos (read only)
    root: str  # folder or gs:// URI where every output goes
    shard_size: int = 1000
    limit: int | None = None  # only the first N photos (sorted by name): trials and tests

    # threads per task for decoding, resizing and face detection (one task per shard)
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)

    # resize
    image_size: int = 224
    max_image_pixels: int = 60_000_000  # a larger declared size is "too_large", never decoded

    # annotate
    detector: str = "mtcnn"  # chosen from bench/detectors.py on Flickr30k, see README
    actions: tuple[str, ...] = ("emotion",)
    min_face_confidence: float = 0.9  # faces below it are kept in the table but never label a photo
    detect_max_side: int = 1600  # larger photos are downscaled for detection; boxes map back
    emotion_batch_size: int = 64

    # drift
    drift_reference: str = "earlier_shards"
    drift_threshold: float = 0.2  # Jensen-Shannon distance (base 2, 0..1) of the label distributions
    no_face_drift_threshold: float = 0.15  # absolute change of the no-face rate
    min_reference_images: int = 20  # below this the reference is too small to judge drift
    alert_emails: tuple[str, ...] = ()
    smtp_conn_id: str = "smtp_default"

    # embed
    embed_input: str = "face"  # the label face's crop (photos without one: the whole photo), or "photo"
    embed_weights: str = "imagenet"  # "imagenet" (Keras downloads and caches it), a local .h5 path, or "none"
    embed_batch_size: int = 32
    mixed_precision: bool = True  # only takes effect on a GPU

    # train
    tuner: str = "hyperband"
    tuner_max_epochs: int = 30  # Hyperband's budget per model; Bayesian uses it as epochs per trial
    tuner_max_trials: int = 12  # Bayesian only
    seed: int = 42
    force_train: bool = False  # retrain even when the training data did not change
    min_rows_per_class: int = 10  # classes with fewer labelled rows are left out of training
    mlflow_tracking_uri: str | None = None  # default: $MLFLOW_TRACKING_URI, else SQLite under the root
    registered_model: str = "emotion-classifier"

    # gold check: photos labelled by people (a <label>/<photo> folder or a CSV), never trained on
    gold: str | None = None
    gold_detector: str | None = None  # default: `detector`; "skip" for photos that are face crops

    # explain
    shap_samples: int = 50  # embedding rows explained for the summary plot
    shap_images: int = 3  # test photos explained with an image heat map
    shap_image_evals: int = 300  # model evaluations per heat map (more = finer, slower)

    def __post_init__(self) -> None:
        _check(self.shard_size >= 1, f"shard_size must be >= 1, got {self.shard_size}")
        _check(self.limit is None or self.limit >= 0, f"limit must be >= 0, got {self.limit}")
        _check(self.detector in DETECTORS, f"detector {self.detector!r} is not one of {DETECTORS}")
        unknown = set(self.actions) - set(ACTIONS)
        _check(not unknown, f"unknown actions {sorted(unknown)}: choose from {ACTIONS}")
        _check("emotion" in self.actions, "the 'emotion' action is required: labels come from it")
        _check(
            self.drift_reference in DRIFT_REFERENCES,
            f"drift_reference {self.drift_reference!r} is not one of {DRIFT_REFERENCES}",
        )
        _check(0 < self.drift_threshold <= 1, "drift_threshold is a JS distance in (0, 1]")
        _check(self.max_image_pixels > 0, "max_image_pixels must be positive")
        _check(self.embed_input in EMBED_INPUTS, f"embed_input {self.embed_input!r} is not one of {EMBED_INPUTS}")
        _check(self.tuner in TUNERS, f"tuner {self.tuner!r} is not one of {TUNERS}")
        _check(self.gold_detector in (None, *DETECTORS), f"gold_detector {self.gold_detector!r} is not one of {DETECTORS}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "PipelineConfig":
        """Build from DAG params / CLI options, ignoring unknown keys and ``None`` values."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for name, value in values.items():
            if name not in known or value is None or value == "":
                continue
            if name in ("actions", "alert_emails"):
                value = _as_tuple(value)
            kwargs[name] = value
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def replace(self, **changes: Any) -> "PipelineConfig":
        return dataclasses.replace(self, **changes)


def _as_tuple(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.split(",")
    return tuple(str(v).strip() for v in value if str(v).strip())


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
