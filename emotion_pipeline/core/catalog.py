"""The storage catalog: every key and folder under the storage root is spelled here and nowhere else.

A key is relative to the root (a local folder or ``gs://bucket/prefix``). Tables are written as
``<key>.parquet`` with a ``<key>.csv`` twin (``tables.write_table``), so table keys have no suffix.
Stages, consumers (report, dashboard, API) and tests ask this module where a thing lives; a test fails
if a key literal appears anywhere else in the package.

    manifest/images                           every source file, its content id and shard
    processed/<image_id>.jpg                  the letterboxed copies (stage resize)
    <stage folder>/shard=<k>/<table>          per-shard outputs of a per-shard stage
    <stage folder>/shard=<k>/_done.json       its done marker
    <stage folder>/_done.json                 the done marker of a whole-dataset stage
    dedupe/near_duplicates                    perceptual hashes and near-duplicate verdicts
    monitoring/label_monitor_log.csv          drift log; monitoring/charts/*.png its plots
    monitoring/excluded_shards.json           shards people kept out of training after they drifted
    datasets/final_emotion_dataset            one row per photo
    features/image_vectors.npy + image_index  all vectors, row i of the index = vector i
    features/face_vectors.npy + face_index    every labelled face's vector (label_unit=face)
    models/<version>/training_rows            which photos trained, validated and tested a version
    reports/<version>/...                     metrics.json, report.html, figures
    gold/annotations                          the gold set through DeepFace
    reviews/queue                             photos whose label is likely wrong, most doubtful first
    reviews/decisions/                        people's labels, one file per decision (appended, never edited)
    mlflow/                                   the default MLflow store of a local root
"""
# No `from __future__ import annotations`: it would bind the name ``annotations``, which the
# function below (the annotate table's key) takes; the type-checking names are quoted instead.
import io
from typing import TYPE_CHECKING

from emotion_pipeline.core.errors import MissingUpstream

if TYPE_CHECKING:  # keeps this module free of heavy imports: the DAG file reads the registry
    import numpy as np
    import pandas as pd

    from emotion_pipeline.core.storage import Storage

# Output folders, one per stage (two stages may share one: embed's shards and assemble's matrix).
RESIZE_FOLDER = "metadata"
ANNOTATE_FOLDER = "annotations"
DEDUPE_FOLDER = "dedupe"
EMBED_FOLDER = "features"
ASSEMBLE_FOLDER = "features"
MERGE_FOLDER = "datasets"
DRIFT_FOLDER = "monitoring"
GOLD_FOLDER = "gold"
TRAIN_FOLDER = "models"
EVALUATE_FOLDER = "reports"
MLFLOW_FOLDER = "mlflow"
PROCESSED_FOLDER = "processed"
REVIEWS_FOLDER = "reviews"  # the review queue (stage review_queue) and people's decisions

MANIFEST_FOLDER = "manifest"
MANIFEST = f"{MANIFEST_FOLDER}/images"
SKIPPED_ENTRIES = f"{MANIFEST_FOLDER}/skipped_entries"  # source entries that are not photos, with the reason

# Per-shard tables (under shard_folder(<stage folder>, k)).
METADATA_TABLE = "metadata"  # resize: one row per photo
ANNOTATIONS_TABLE = "annotations"  # annotate: one row per photo
FACES_TABLE = "faces"  # annotate: one row per face
VECTOR_INDEX_TABLE = "index"  # embed: row i describes the shard's vector i
FACE_INDEX_TABLE = "face_index"  # embed with label_unit=face: row i describes the shard's face vector i
DATASET = f"{MERGE_FOLDER}/final_emotion_dataset"
NEAR_DUPLICATES = f"{DEDUPE_FOLDER}/near_duplicates"
IMAGE_VECTORS = f"{ASSEMBLE_FOLDER}/image_vectors.npy"
IMAGE_INDEX = f"{ASSEMBLE_FOLDER}/image_index"
FACE_VECTORS = f"{ASSEMBLE_FOLDER}/face_vectors.npy"  # label_unit=face: every labelled face's vector
FACE_INDEX = f"{ASSEMBLE_FOLDER}/face_index"
GOLD_ANNOTATIONS = f"{GOLD_FOLDER}/annotations"
REVIEW_QUEUE = f"{REVIEWS_FOLDER}/queue"  # review_queue: one row per photo to ask a person about
REVIEW_DECISIONS = f"{REVIEWS_FOLDER}/decisions"  # a folder: one small file per decision a person made


def gold_vectors(key: str) -> str:
    """The gold faces' ResNet50 vectors for one gold set and embedding settings (``key``)."""
    return f"{GOLD_FOLDER}/vectors-{key}.npy"
MONITOR_LOG = f"{DRIFT_FOLDER}/label_monitor_log.csv"
DRIFT_BASELINE = f"{DRIFT_FOLDER}/baseline.json"
# Shards whose photos people chose to keep out of training after they drifted (the drift decision in the
# Airflow UI): {"shards": {"<k>": {decided_at, run_id, by}}}; train and evaluate leave their photos out.
EXCLUDED_SHARDS = f"{DRIFT_FOLDER}/excluded_shards.json"
CHARTS = f"{DRIFT_FOLDER}/charts"
DRIFT_TIMELINE = f"{CHARTS}/drift_timeline.png"
MLFLOW_ARTIFACTS = f"{MLFLOW_FOLDER}/artifacts"
MLFLOW_EVALUATION = "evaluation"  # the artifact folder of a training run that holds its evaluation
MLFLOW_DB = "mlflow.db"  # inside MLFLOW of a local root


def processed_photo(image_id: str) -> str:
    return f"{PROCESSED_FOLDER}/{image_id}.jpg"


def shard_folder(folder: str, shard: int) -> str:
    return f"{folder}/shard={shard:05d}"


def shard_table(folder: str, shard: int, table: str) -> str:
    return f"{shard_folder(folder, shard)}/{table}"


def shard_vectors(shard: int) -> str:
    return shard_table(EMBED_FOLDER, shard, "vectors.npy")


def shard_face_vectors(shard: int) -> str:
    return shard_table(EMBED_FOLDER, shard, "face_vectors.npy")


def face_vector_index(shard: int) -> str:
    return shard_table(EMBED_FOLDER, shard, FACE_INDEX_TABLE)


def metadata(shard: int) -> str:
    return shard_table(RESIZE_FOLDER, shard, METADATA_TABLE)


def annotations(shard: int) -> str:
    return shard_table(ANNOTATE_FOLDER, shard, ANNOTATIONS_TABLE)


def faces(shard: int) -> str:
    return shard_table(ANNOTATE_FOLDER, shard, FACES_TABLE)


def vector_index(shard: int) -> str:
    return shard_table(EMBED_FOLDER, shard, VECTOR_INDEX_TABLE)


def done_marker(folder: str, shard: int | None = None) -> str:
    """The done marker of a stage: per shard, or for the whole dataset when ``shard`` is None."""
    return f"{folder if shard is None else shard_folder(folder, shard)}/_done.json"


def shard_chart(shard: int) -> str:
    return f"{CHARTS}/shard={shard:05d}.png"


def training_rows(version: str) -> str:
    return f"{TRAIN_FOLDER}/{version}/training_rows"


SPLIT_ASSIGNMENTS = f"{TRAIN_FOLDER}/split_assignments"  # image_id -> split, decided once, never moved


REPORT_PAGE = "report.html"
REPORT_METRICS = "metrics.json"


def report_file(version: str, name: str) -> str:
    """A file of one model version's report: ``REPORT_PAGE``, ``REPORT_METRICS`` or a figure."""
    return f"{EVALUATE_FOLDER}/{version}/{name}"


def report_figure(version: str, figure: str) -> str:
    return report_file(version, f"{figure}.png")


# Readers of outputs that later stages and the consumers (report, dashboard, API) share.

def read_dataset(root: "Storage") -> "pd.DataFrame | None":
    from emotion_pipeline.core.tables import read_table

    return read_table(root, DATASET)


def require_dataset(root: "Storage") -> "pd.DataFrame":
    """``read_dataset`` for the readers after merge: ``MissingUpstream`` when merge has not run."""
    dataset = read_dataset(root)
    if dataset is None:
        raise MissingUpstream("no final dataset yet: run the merge stage first")
    return dataset


def read_monitor_log(root: "Storage") -> "pd.DataFrame":
    import pandas as pd

    try:
        return pd.read_csv(io.BytesIO(root.read_bytes(MONITOR_LOG)))
    except FileNotFoundError:
        return pd.DataFrame(columns=["shard", "annotations_fingerprint"])


def read_features(root: "Storage") -> "tuple[np.ndarray, pd.DataFrame]":
    """All vectors and their index (row i of the index describes vector i)."""
    from emotion_pipeline.core.arrays import read_array
    from emotion_pipeline.core.tables import read_table

    return read_array(root, IMAGE_VECTORS), read_table(root, IMAGE_INDEX)


def read_face_features(root: "Storage") -> "tuple[np.ndarray, pd.DataFrame]":
    """Every labelled face's vector and their index (``label_unit=face``; empty for ``photo``)."""
    from emotion_pipeline.core.arrays import read_array
    from emotion_pipeline.core.tables import read_table

    if not table_exists(root, FACE_INDEX):
        raise MissingUpstream("no face vectors: run embed and assemble_features with label_unit=face")
    return read_array(root, FACE_VECTORS), read_table(root, FACE_INDEX)


def read_faces(root: "Storage", shards) -> "pd.DataFrame":
    """Every face annotate found in ``shards`` (one table; shards not annotated are left out)."""
    from emotion_pipeline.core.tables import read_table, stack_tables

    return stack_tables(read_table(root, faces(int(s))) for s in sorted(set(shards)))


def read_gold_annotations(root: "Storage") -> "pd.DataFrame | None":
    from emotion_pipeline.core.tables import read_table

    return read_table(root, GOLD_ANNOTATIONS)


def read_excluded_shards(root: "Storage") -> dict[int, dict]:
    """The shards kept out of training by a drift decision, with who decided and when (empty: none)."""
    from emotion_pipeline.core.tables import read_json

    document = read_json(root, EXCLUDED_SHARDS) or {}
    return {int(shard): decision for shard, decision in (document.get("shards") or {}).items()}


def excluded_shard_photos(root: "Storage") -> set[str]:
    """Content ids of the photos of the shards a drift decision kept out of training."""
    from emotion_pipeline.core.tables import read_table

    shards = read_excluded_shards(root)
    manifest = read_table(root, MANIFEST) if shards else None
    if manifest is None:
        return set()
    return set(manifest.loc[manifest["shard"].astype(int).isin(shards), "image_id"].dropna())


def read_review_queue(root: "Storage") -> "pd.DataFrame | None":
    """The review queue (most doubtful first), or None before the review_queue stage ran."""
    from emotion_pipeline.core.tables import read_table

    return read_table(root, REVIEW_QUEUE)


def report_versions(root: "Storage") -> list[str]:
    """The model versions with an evaluation report, oldest first."""
    versions = {o.key.split("/")[1] for o in root.list(EVALUATE_FOLDER) if o.key.endswith(f"/{REPORT_METRICS}")}
    return sorted(versions, key=lambda v: (not v.isdigit(), int(v) if v.isdigit() else 0, v))


def table_exists(root: "Storage", key: str) -> bool:
    return root.exists(f"{key}.parquet")


def read_done(root: "Storage", folder: str, shard: int | None = None) -> dict | None:
    """A stage's done marker ({fingerprint, summary}), or None when it has not completed."""
    from emotion_pipeline.core.tables import read_json

    return read_json(root, done_marker(folder, shard))
