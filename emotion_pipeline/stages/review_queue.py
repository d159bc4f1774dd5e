"""Stage: ``reviews/queue``, the labelled photos whose machine label is most likely wrong, most doubtful first.

Every labelled ``ok`` photo with a vector is scored (``modeling.label_issues``: out-of-fold
probabilities of a logistic regression on the vectors through cleanlab, the teacher's margin, and
the captions where they name an emotion); the photos a person already decided on, in this content,
are scored (their person's label teaches the classifier) but not queued again. A photo whose content
changed has a new ``image_id`` (the content id), so it is asked again. Nothing downstream waits for
the queue: training goes on whatever it says, and too few labelled photos write an empty queue and
the reason, never a failure.
"""
from __future__ import annotations

import hashlib
import logging

import numpy as np
import pandas as pd

from emotion_pipeline.core import catalog
from emotion_pipeline.core.config import CLASSES
from emotion_pipeline.core.results import ReviewQueueResult
from emotion_pipeline.core.runner import StageRun
from emotion_pipeline.core.tables import write_table
from emotion_pipeline.labelling import captions, reviews, teachers
from emotion_pipeline.modeling.label_issues import find_issues

log = logging.getLogger(__name__)

# The box is the label face's, in pixels of the upright source photo (the dataset's face_x..face_h).
QUEUE_COLUMNS = ["image_id", "content_id", "source_key", "face_index", "box_x", "box_y", "box_w", "box_h",
                 "machine_label", "label_source", "suggested_label", "score", "reasons", "label_quality",
                 "label_issue", "margin", "caption_label"]


def review_queue_inputs(run: StageRun) -> str:
    """What the queue reads besides the dataset and the vectors (whose markers it covers): the
    decided photo versions (the queue leaves them out) and the captions file and lexicon."""
    decided = "\n".join(sorted(f"{i}\0{c}" for i, c in reviews.decided_versions(run.root)))
    return (hashlib.sha256(decided.encode()).hexdigest()[:16] + "-captions-"
            + captions.fingerprint(run.config.captions, run.config.caption_lexicon))


def review_queue(run: StageRun) -> ReviewQueueResult:
    """The stage function: score the labelled photos, queue the undecided ones by score.

    Args:
        run: the config and both storages (``runner.StageRun``).

    Returns:
        How many photos were scored and queued, how many cleanlab flags, and why the queue is empty
        when it is.
    """
    rows, vectors = labelled_rows(run)
    found = find_issues(vectors, rows["label"], teachers.teacher_scores(rows, run.config.teacher),
                        caption_labels(run, rows), run.config.seed)
    scored = rows.iloc[found.table["position"].to_numpy()].reset_index(drop=True)
    queue = queue_table(scored, found.table)
    decided_versions = reviews.decided_versions(run.root)
    is_decided = pd.Series([(i, c) in decided_versions for i, c in zip(queue["image_id"], queue["content_id"])],
                           dtype=bool)
    queue = queue[~is_decided.to_numpy()].reset_index(drop=True)
    write_table(run.root, catalog.REVIEW_QUEUE, queue)
    if found.reason:
        log.warning("review_queue: an empty queue: %s", found.reason)
    return ReviewQueueResult(queued=len(queue), scored=len(scored), issues=int(queue["label_issue"].sum()),
                             decided=int(is_decided.sum()), reason=found.reason,
                             queue_uri=run.root.uri_for(f"{catalog.REVIEW_QUEUE}.parquet"))


def labelled_rows(run: StageRun) -> tuple[pd.DataFrame, np.ndarray]:
    """The dataset's ``ok`` photos with a label and a vector (one row per content), and their vectors."""
    dataset = catalog.read_dataset(run.root)
    vectors, index = catalog.read_features(run.root)
    if dataset is None:
        dataset = pd.DataFrame(columns=["image_id", "status", "label"])
    labelled = dataset[(dataset["status"] == "ok") & dataset["label"].isin(CLASSES)].drop_duplicates("image_id")
    rows = labelled.merge(index[["image_id", "row"]].drop_duplicates("image_id"), on="image_id", how="inner")
    rows = rows.sort_values("image_id").reset_index(drop=True)
    return rows, vectors[rows["row"].to_numpy(dtype=int)] if len(rows) else np.zeros((0, vectors.shape[1]))


def caption_labels(run: StageRun, rows: pd.DataFrame) -> pd.Series:
    """Each row's caption label (None where the captions name no emotion, or without captions)."""
    config = run.config
    if not config.captions or rows.empty:
        return pd.Series([None] * len(rows), dtype=object)
    labels = captions.caption_labels(captions.read_captions(config.captions),
                                     captions.read_lexicon(config.caption_lexicon), config.caption_min_agree)
    matched = captions.match_photos(labels, rows).drop_duplicates("image_id").set_index("image_id")
    return rows["image_id"].map(matched["caption_label"]).astype(object).where(lambda s: s.notna(), None)


def queue_table(scored: pd.DataFrame, issues: pd.DataFrame) -> pd.DataFrame:
    """The queue's columns (``QUEUE_COLUMNS``) from the scored dataset rows and their signals (aligned)."""
    face_index = scored.reindex(columns=["label_face_index"])["label_face_index"]
    table = pd.DataFrame({
        "image_id": scored["image_id"].astype(object),
        # The manifest's image_id is the photo's content id: a changed photo is a new id, asked again.
        "content_id": scored["image_id"].astype(object),
        "source_key": scored.reindex(columns=["source_key"])["source_key"],
        "face_index": pd.array(face_index, dtype="Int64"),
        **{f"box_{c}": pd.array(pd.to_numeric(scored.reindex(columns=[f"face_{c}"])[f"face_{c}"]).round(),
                                dtype="Int64") for c in "xywh"},
        "machine_label": issues["label"],
        "label_source": scored.reindex(columns=["label_source"])["label_source"].fillna("machine"),
        "suggested_label": issues["suggested"],
        "score": issues["score"].astype(float),
        "reasons": issues["reasons"],
        "label_quality": issues["quality"].astype(float),
        "label_issue": issues["issue"].astype(bool),
        "margin": issues["margin"].astype(float),
        "caption_label": issues["caption_label"].astype(object),
    })
    return table.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)[QUEUE_COLUMNS]
