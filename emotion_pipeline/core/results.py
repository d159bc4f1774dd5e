"""What each stage returns: small typed summaries, recorded in done markers and passed as XCom dicts.

Only counts, ids and URIs: the data itself lives in storage (see ``catalog``). ``skipped`` is True
when the stage found its done marker for the same input and did no work.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

R = TypeVar("R", bound="StageResult")


@dataclass(kw_only=True)
class StageResult:
    stage: str = ""  # the registry's name of the stage (set by runner.run_stage)
    skipped: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (what a done marker records and an Airflow task returns)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[R], values: dict[str, Any]) -> R:
        """Rebuild from ``to_dict``'s output; keys this version does not know are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


@dataclass(kw_only=True)
class DiscoverResult(StageResult):
    images: int  # photos found by this discovery
    new_images: int
    hashed: int  # files whose bytes were read (new or changed)
    shards: list[int]
    pending: list[int]  # shards a per-shard stage still has to run on: what the DAG maps over
    # Entries that are not photos, by reason: the XCom's and the run summary's "skipped" key, read by
    # `emotion-pipeline run`. It replaces the base's bool, which discover never sets: it has no done
    # marker to skip on (registry: marker=False). Renaming it would change that key.
    skipped: dict[str, int] = field(default_factory=dict)  # type: ignore[assignment]
    batch: str = ""  # the batch folder this run listed ("": the whole source)


@dataclass(kw_only=True)
class ResizeResult(StageResult):
    shard: int
    images: int
    resized: int
    statuses: dict[str, int]


@dataclass(kw_only=True)
class AnnotateResult(StageResult):
    shard: int
    images: int
    annotated: int  # photos DeepFace looked at (status ok or no_face)
    faces: int
    statuses: dict[str, int]
    labels: dict[str, int]


@dataclass(kw_only=True)
class EmbedResult(StageResult):
    shard: int
    vectors: int
    inputs: dict[str, int]  # how many vectors came from a face crop and how many from the whole photo
    faces: int = 0  # face vectors (label_unit=face): every eligible labelled face
    failed: int = 0  # photos (and faces) whose input could not be made: a row with status, a zero vector


@dataclass(kw_only=True)
class DedupeResult(StageResult):
    photos: int  # photos with a perceptual hash (resized ok)
    hashed: int  # hashed by this call (the others were known)
    near_duplicates: int
    max_distance: int


@dataclass(kw_only=True)
class DriftReport(StageResult):
    checked: list[int]  # shards checked by this call (each shard once per version of its annotations)
    drifted: list[dict[str, Any]]  # alert-ready fields of the drifted ones
    log_uri: str
    threshold: float
    no_face_threshold: float


@dataclass(kw_only=True)
class MergeResult(StageResult):
    images: int
    statuses: dict[str, int]
    labels: dict[str, int]
    dataset_uri: str
    reviewed: int = 0  # photos whose label (or "no usable face") a person gave


@dataclass(kw_only=True)
class FeaturesResult(StageResult):
    vectors: int
    dim: int
    vectors_uri: str
    face_vectors: int = 0  # label_unit=face: rows of features/face_vectors.npy


@dataclass(kw_only=True)
class ReviewQueueResult(StageResult):
    queued: int  # photos in reviews/queue, most doubtful first
    scored: int = 0  # labelled photos the out-of-fold classifier scored (decided ones included)
    issues: int = 0  # of the queued, those cleanlab's find_label_issues flags
    decided: int = 0  # labelled photos left out because a person decided on this content already
    reason: str = ""  # why the queue is empty when it is (too few labelled photos per class)
    queue_uri: str = ""


@dataclass(kw_only=True)
class GoldResult(StageResult):
    checked: bool  # False when no gold set is configured
    photos: int = 0
    detector: str | None = None
    no_face_share: float | None = None
    no_label_share: float | None = None  # of the photos with a face: DeepFace gave no label (a miss)
    deepface: dict[str, Any] | None = None  # DeepFace's figures against people's labels


@dataclass(kw_only=True)
class TrainResult(StageResult):
    trained: bool
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # rows per split and class
    reason: str | None = None  # why nothing was trained
    run_id: str | None = None
    model_version: str | None = None
    model_uri: str | None = None
    champion: bool = False
    promotion: str | None = None  # why it became champion, or why not (the baseline, the champion)
    awaiting_approval: bool = False  # it beat the champion; approve_promotion: it moves only on approval
    val_macro_f1: float | None = None
    test_macro_f1: float | None = None
    baseline_test_macro_f1: float | None = None  # the logistic baseline's, on the same test split
    flags: list[str] = field(default_factory=list)  # training.model_flags: what to know before trusting it
    trials: int = 0
    mode: str | None = None  # "search" (a Keras Tuner search) or "refit" (the champion's hyperparameters)
    mode_reason: str | None = None
    best_hyperparameters: dict[str, Any] = field(default_factory=dict)
    data_fingerprint: str | None = None
    tracking_uri: str | None = None
    gold_excluded: int = 0
    soft_model_uri: str | None = None  # the head trained on soft labels (soft_labels), not registered
    photo_model_uri: str | None = None  # label_unit=face: a head trained on photos beside it, not registered
    label_unit: str = "photo"  # what its rows are: photos or faces (evaluate reads the same rows)


@dataclass(kw_only=True)
class EvaluateResult(StageResult):
    evaluated: bool
    report_uri: str
    model_version: str | None = None
    macro_f1: float | None = None
