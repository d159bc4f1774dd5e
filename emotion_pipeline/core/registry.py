"""The stage registry: one declaration per stage, read by everything that runs or reasons about stages.

Discovery (which shards still have work), the DAG (its tasks and edges, which map over shards, which
run on the GPU pool: ``orchestration.dag_builder`` builds it from ``graph()``), ``emotion-pipeline
stage NAME``, the in-process runner (``stages.all``) and merge (which per-photo tables make the
dataset, in which order) all read ``STAGES``. ``runner.run_stage`` gives
every stage the same done-marker contract:

    fingerprint = its photos (the shard's members, or every present photo for a whole-dataset stage)
                + the knobs it declares + the done markers of the upstream stages it covers
                + ``inputs`` (anything else it reads: the gold folder, the training rows and vectors)

A stage whose fingerprint matches its marker returns the recorded result and does no work; a crash
before the marker means the stage simply runs again.

Adding a stage = its module under ``stages/`` (a function ``(StageRun) -> a StageResult``, named as
the stage), its result type, its catalog names and one line here: the DAG file is not edited, its
tasks and edges come from these declarations.

This module is imported when the DAG file is parsed: it imports nothing heavy (stage functions are
named, and imported only when they run).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from emotion_pipeline.core import catalog
from emotion_pipeline.core.results import (
    AnnotateResult,
    DedupeResult,
    DiscoverResult,
    DriftReport,
    EmbedResult,
    EvaluateResult,
    FeaturesResult,
    GoldResult,
    MergeResult,
    ResizeResult,
    ReviewQueueResult,
    StageResult,
    TrainResult,
)


@dataclass(frozen=True)
class Alert:
    """A task beside a stage that reads the stage's result and tells people (check_drift's e-mail)."""
    task: str  # its task id
    function: str  # "module:function", (config, the stage's result as a dict, the task's context) -> bool (sent)
    minutes: int = 10  # its execution_timeout


@dataclass(frozen=True)
class Stage:
    name: str  # the DAG's task id and `emotion-pipeline stage NAME`
    function: str  # "module:function" of the stage function, (StageRun) -> its result
    result: type[StageResult]
    folder: str  # catalog folder of its outputs and done markers
    per_shard: bool = False  # one task per shard (mapped), or one for the whole dataset
    upstream: tuple[str, ...] = ()  # stages that run first: it reads their outputs
    after: tuple[str, ...] = ()  # stages that run first (where registered) though it reads nothing of theirs
    # What its done-fingerprint covers, beyond the knobs:
    knobs: tuple[str, ...] = ()  # config fields its output depends on
    covers: tuple[str, ...] = ()  # upstream stages whose done markers are part of its input
    photos: bool = True  # its photos (the shard's members, or every present photo)
    inputs: str | None = None  # "module:function", (StageRun) -> str: any other input it reads
    reads_photo_tables: bool = False  # merge: every stage with a photo table is upstream and covered
    photo_table: str | None = None  # its per-photo table with a status: a table name in each shard
    #                                 folder for a per-shard stage, a catalog key for a whole-dataset one;
    #                                 keyed by source_key *and* image_id (a name's content can change)
    gpu: bool = False  # runs on the `gpu` queue and pool
    marker: bool = True  # False: the stage keeps its own idempotence (discover lists, drift logs)
    force: str | None = None  # a boolean knob that makes it run even when its marker matches
    # A root-wide lease held around it: one at a time per root. "dataset" for the stages that
    # read-modify-write the whole dataset's files (the manifest, the drift log, the dataset, the
    # vectors): Airflow's max_active_runs=1 does not cover a backfill's runs, which can overlap a
    # scheduled or manual run.
    lease: str | None = None
    # Airflow's execution_timeout: ``minutes``, plus ``seconds_per_photo`` x the shard size for a
    # per-shard stage. Generous (about 10x the CPU cost measured on 2 cores): it is there to end a
    # task stuck on a hung mount or service, not to race a slow but working one.
    minutes: int = 30
    seconds_per_photo: float = 0.0
    asset: str | None = None  # the Airflow asset its output is: an event (with the result as extra) per run
    lists_shards: bool = False  # its result's ``pending`` is what the per-shard stages map over (discover)
    parallel_shards: int | None = None  # at most this many of its shard tasks at once in a run
    alert: Alert | None = None  # a task on its result that e-mails when the result calls for it


S = "emotion_pipeline.stages."
# Knobs added after roots existed, with the value that does what the stages did before them: at that
# value a knob is left out of fingerprints (runner.fingerprint), so an upgrade redoes no done work.
LEGACY_DEFAULTS: dict[str, object] = {"label_unit": "photo", "search_budget_minutes": 0.0}
# Which faces may label a photo and how (labels.py): annotate and the gold check apply them alike.
LABEL_POLICY = ("min_face_size", "min_emotion_margin", "label_face")
STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("discover", S + "discover:discover", DiscoverResult, catalog.MANIFEST_FOLDER, marker=False, minutes=120,
          lease="dataset", lists_shards=True),
    Stage("resize", S + "resize:resize", ResizeResult, catalog.RESIZE_FOLDER, per_shard=True,
          knobs=("image_size", "max_image_pixels"), photo_table=catalog.METADATA_TABLE, seconds_per_photo=0.5,
          parallel_shards=4),
    Stage("annotate", S + "annotate:annotate", AnnotateResult, catalog.ANNOTATE_FOLDER, per_shard=True,
          upstream=("resize",), knobs=("detector", "actions", "min_face_confidence", "detect_max_side",
                                        "max_image_pixels", *LABEL_POLICY), photo_table=catalog.ANNOTATIONS_TABLE,
          # Not `teacher`: both teachers always score (the second one's file is its input), merge picks.
          inputs="emotion_pipeline.labelling.teachers:annotate_input",
          gpu=True, seconds_per_photo=5),
    Stage("embed", S + "embed:embed", EmbedResult, catalog.EMBED_FOLDER, per_shard=True, upstream=("annotate",),
          covers=("annotate",), knobs=("embed_input", "embed_weights", "max_image_pixels", "label_unit"), gpu=True,
          seconds_per_photo=2),
    Stage("dedupe", S + "dedupe:dedupe", DedupeResult, catalog.DEDUPE_FOLDER, upstream=("resize",),
          knobs=("dedupe_max_distance", "image_size", "max_image_pixels"), photo_table=catalog.NEAR_DUPLICATES,
          minutes=120),
    Stage("check_drift", S + "check_drift:check_drift", DriftReport, catalog.DRIFT_FOLDER, upstream=("annotate",),
          marker=False, lease="dataset",
          alert=Alert("alert_on_drift", "emotion_pipeline.orchestration.airflow_adapter:send_drift_alert")),
    # The dataset is made once the new shards' drift is logged (the pipeline's order: monitor, then merge).
    Stage("merge", S + "merge:merge", MergeResult, catalog.MERGE_FOLDER, reads_photo_tables=True,
          after=("check_drift",),
          knobs=("teacher",),  # the label is the teacher's (annotate stores every teacher's label)
          inputs=S + "merge:decisions_input",  # ... or a person's (labelling/reviews.py): people's labels win
          asset="emotion_dataset", lease="dataset"),
    Stage("assemble_features", S + "assemble_features:assemble_features", FeaturesResult, catalog.ASSEMBLE_FOLDER,
          upstream=("embed",), covers=("embed",), asset="emotion_features", lease="dataset"),
    Stage("check_gold", S + "check_gold:check_gold", GoldResult, catalog.GOLD_FOLDER, photos=False,
          inputs=S + "check_gold:gold_files", knobs=("gold", "gold_detector", "detector", "min_face_confidence",
                                               "detect_max_side", "max_image_pixels", *LABEL_POLICY),
          gpu=True, minutes=120),
    Stage("train", S + "train:train", TrainResult, catalog.TRAIN_FOLDER, photos=False,
          upstream=("merge", "assemble_features", "check_gold"), inputs=S + "train:training_data_fingerprint",
          knobs=("tuner", "tuner_max_epochs", "tuner_max_trials", "search_max_rows", "search_budget_minutes", "seed",
                 "min_rows_per_class", "soft_labels", "registered_model"),
          force="force_train", lease="train", minutes=360, asset="emotion_model"),
    Stage("evaluate", S + "evaluate:evaluate", EvaluateResult, catalog.EVALUATE_FOLDER, photos=False,
          # It reads the model (train), the gold check's table, the dataset and its faces (merge, which
          # covers annotate), the vectors and the drift log (inputs): tests/test_read_coverage.py checks it.
          upstream=("merge", "assemble_features", "check_gold", "train"),
          covers=("merge", "assemble_features", "check_gold", "train"),
          inputs=S + "evaluate:evaluation_inputs",
          knobs=("shap_samples", "shap_images", "shap_image_evals", "seed", "captions", "caption_lexicon",
                 "caption_min_agree"), gpu=True, minutes=120),
    # Photos for people to check (labelling/reviews.py records their answers, merge applies them):
    # nothing waits for it, so training never waits for people.
    Stage("review_queue", S + "review_queue:review_queue", ReviewQueueResult, catalog.REVIEWS_FOLDER, photos=False,
          upstream=("merge", "assemble_features"), covers=("merge", "assemble_features"),
          inputs=S + "review_queue:review_queue_inputs",
          knobs=("teacher", "seed", "captions", "caption_lexicon", "caption_min_agree"), minutes=60),
)}


def stage(name: str) -> Stage:
    """The declaration of a stage.

    Args:
        name: its name (the DAG's task id, and ``emotion-pipeline stage NAME``).

    Returns:
        The stage's declaration.

    Raises:
        KeyError: no such stage (the message lists them).
    """
    found = STAGES.get(name)
    if found is None:
        raise KeyError(f"no stage {name!r}: choose from {', '.join(STAGES)}")
    return found


def execution_timeout(spec: Stage, shard_size: int) -> timedelta:
    """The Airflow ``execution_timeout`` of a stage's task for shards of ``shard_size`` photos."""
    return timedelta(minutes=spec.minutes, seconds=spec.seconds_per_photo * shard_size if spec.per_shard else 0)


def upstream_of(spec: Stage) -> tuple[str, ...]:
    """The stages whose outputs ``spec`` reads: they run before it (``graph()``)."""
    return spec.upstream + (tuple(s.name for s in photo_tables()) if spec.reads_photo_tables else ())


def covered_by(spec: Stage) -> tuple[str, ...]:
    """The upstream stages whose done markers are part of ``spec``'s fingerprint."""
    return spec.covers + (tuple(s.name for s in photo_tables()) if spec.reads_photo_tables else ())


def shard_stages() -> list[Stage]:
    """The per-shard stages with a done marker, in pipeline order: what makes a shard pending."""
    return [s for s in STAGES.values() if s.per_shard and s.marker]


def photo_tables() -> list[Stage]:
    """Stages whose per-photo tables (with a status) make up the dataset, in pipeline order: a later
    stage's status overrides an earlier one's where it has one."""
    return [s for s in STAGES.values() if s.photo_table]


def shards_from(spec: Stage) -> str:
    """The stage whose result a per-shard stage maps over: its last per-shard upstream stage (its
    tasks return the shards they did), else the stage that lists the shards with work left (discover).

    Raises:
        KeyError: no registered stage lists the shards.
    """
    mapped = [s.name for s in STAGES.values() if s.per_shard and s.name in spec.upstream]
    listing = [s.name for s in STAGES.values() if s.lists_shards]
    if not mapped and not listing:
        raise KeyError(f"stage {spec.name} runs per shard but no registered stage lists the shards")
    return (mapped or listing)[-1]


def graph() -> dict[str, tuple[str, ...]]:
    """The pipeline's tasks in order (each stage, then its alert task) and those each one waits for
    directly: what it reads (``upstream_of``), what it runs ``after``, the one a per-shard stage maps
    over (``shards_from``), less any that another of these already waits for (merge waits for dedupe
    and check_drift, which wait for resize and annotate).

    Raises:
        KeyError: a stage waits for one that is not registered, or registered after it (the registry
            is in pipeline order), or an alert task takes a name already in use.
    """
    waits: dict[str, tuple[str, ...]] = {}
    before: dict[str, set[str]] = {}  # every task a task waits for, directly or not
    for spec in STAGES.values():
        direct = [*upstream_of(spec), *(name for name in spec.after if name in STAGES)]
        if spec.per_shard:
            direct.append(shards_from(spec))
        missing = sorted(set(direct) - before.keys())
        if missing:
            raise KeyError(f"stage {spec.name} waits for {', '.join(missing)}: not registered before it")
        kept = [name for name in STAGES if name in direct and (  # registry order
            name == (shards_from(spec) if spec.per_shard else None)
            or not any(name in before[other] for other in direct))]
        waits[spec.name] = tuple(kept)
        before[spec.name] = set(direct).union(*(before[name] for name in direct))
        if spec.alert:
            if spec.alert.task in STAGES or spec.alert.task in waits:
                raise KeyError(f"alert task {spec.alert.task} of stage {spec.name}: the name is taken")
            waits[spec.alert.task] = (spec.name,)
            before[spec.alert.task] = {spec.name, *before[spec.name]}
    return waits
