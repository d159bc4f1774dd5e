"""Likely label errors: which labelled photos a person should look at first (the review queue).

Three signals, each a share of 1, higher = more doubt about the machine's label:

* ``cleanlab``: 1 - cleanlab's label quality (self-confidence) of out-of-fold predicted
  probabilities. A logistic regression on the standardized vectors is fitted in stratified folds, so
  every photo is scored by a model that never saw it (a model that trained on a photo agrees with its
  label whatever it is). cleanlab's ``find_label_issues`` also flags the photos it counts as errors.
* ``margin``: 1 - the teacher's margin (top score minus the runner-up, as shares): a near tie is a
  guess, whatever the classifier says.
* ``captions``: 1 where enough of the photo's captions name another emotion than its label.

The score weighs them ``WEIGHTS``: the classifier first (it sees every photo's neighbours), the
teacher's own doubt and the captions after it. No storage here: the stage ``review_queue`` reads
and writes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

WEIGHTS = {"cleanlab": 0.6, "margin": 0.2, "captions": 0.2}
MAX_FOLDS = 5
LOW_MARGIN = 0.2  # below this margin (shares of 1) the teacher's doubt is named among the reasons
MIN_PER_CLASS = 2  # a class is cross-validated from 2 photos: one to fit on, one to score
MIN_CLASSES = 2  # a classifier needs two classes at least
REGULARIZATION = 0.1  # logistic regression's C: 2048 dimensions for tens to thousands of photos


@dataclass
class LabelIssues:
    """Per scored row: ``quality``, ``issue``, ``suggested``, ``score``, ``reasons`` (aligned with the
    input rows); ``reason`` says why nothing was scored (too few photos per class)."""
    table: pd.DataFrame
    reason: str = ""
    folds: int = 0


def scorable_classes(labels: pd.Series) -> tuple[list[str], int]:
    """The classes with enough photos to cross-validate (2 at least: one to fit, one to score) and
    the number of folds (at most ``MAX_FOLDS``, at most the smallest kept class's count)."""
    counts = labels.value_counts()
    kept = sorted(str(c) for c in counts.index[counts >= MIN_PER_CLASS])
    return kept, int(min(MAX_FOLDS, counts[kept].min())) if kept else 0


def out_of_fold_probabilities(vectors: np.ndarray, y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each row's class probabilities from a model fitted on the other folds only."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=REGULARIZATION, max_iter=2000))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return cross_val_predict(model, vectors, y, cv=splitter, method="predict_proba")


def margins(scores: np.ndarray) -> np.ndarray:
    """Top score minus the runner-up, as shares of each row's total (0 where there are no scores)."""
    values = np.nan_to_num(np.asarray(scores, dtype=float), nan=0.0)
    totals = values.sum(axis=1, keepdims=True)
    shares = np.where(totals > 0, values / np.where(totals > 0, totals, 1), 0.0)
    top = -np.sort(-shares, axis=1)
    return top[:, 0] - top[:, 1]


def find_issues(vectors: np.ndarray, labels: pd.Series, teacher_scores: np.ndarray,
                caption_labels: pd.Series, seed: int) -> LabelIssues:
    """Score every row whose class can be cross-validated.

    Args:
        vectors: one embedding per row.
        labels: the machine's label of each row (one of the classes).
        teacher_scores: the teacher's seven emotion scores per row (the label's source).
        caption_labels: the captions' label per row (None where the captions name none, or there are none).
        seed: the folds' shuffle.

    Returns:
        The scored rows (a subset of the input's, by position in ``table["position"]``), or none and why.
    """
    labels = pd.Series(labels).reset_index(drop=True).astype(str)
    classes, folds = scorable_classes(labels)
    if len(classes) < MIN_CLASSES or folds < MIN_PER_CLASS:
        counts = labels.value_counts().to_dict()
        return LabelIssues(_empty(), reason="too few labelled photos to cross-validate: each of two classes "
                                            f"or more needs 2 at least (labelled: {counts or 'none'})")
    kept = np.flatnonzero(labels.isin(classes).to_numpy())
    y = labels.iloc[kept].map({c: i for i, c in enumerate(classes)}).to_numpy(dtype=int)
    probabilities = out_of_fold_probabilities(np.asarray(vectors)[kept], y, folds, seed)
    table = _signals(labels.iloc[kept], y, probabilities, classes)
    table["margin"] = margins(np.asarray(teacher_scores)[kept])
    captions = pd.Series(caption_labels).reset_index(drop=True).iloc[kept].to_numpy()
    table["caption_label"] = captions
    disagrees = pd.notna(captions) & (captions != table["label"].to_numpy())
    table["score"] = (WEIGHTS["cleanlab"] * (1 - table["quality"]) + WEIGHTS["margin"] * (1 - table["margin"])
                      + WEIGHTS["captions"] * disagrees)
    table["reasons"] = [_reasons(row, bool(d)) for row, d in zip(table.itertuples(), disagrees)]
    table.insert(0, "position", kept)
    return LabelIssues(table.sort_values("score", ascending=False, kind="stable").reset_index(drop=True),
                       folds=folds)


def _signals(labels: pd.Series, y: np.ndarray, probabilities: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """cleanlab's quality and issue flag, and the classifier's suggestion, per row."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    return pd.DataFrame({
        "label": labels.to_numpy(),
        "quality": get_label_quality_scores(y, probabilities),
        # n_jobs=1: cleanlab's default forks a multiprocessing pool, and a fork of a task process that
        # already runs TensorFlow's threads deadlocked (`emotion-pipeline run` hung in review_queue).
        "issue": find_label_issues(y, probabilities, n_jobs=1),
        "suggested": np.asarray(classes)[probabilities.argmax(axis=1)],
        "suggested_probability": probabilities.max(axis=1),
    })


def _reasons(row, captions_disagree: bool) -> str:
    """Why a row is in doubt, in words (``; ``-separated)."""
    reasons = []
    if row.issue:
        reasons.append(f"cleanlab: a label issue (the label's out-of-fold probability {row.quality:.2f})")
    elif row.suggested != row.label:
        reasons.append(f"the classifier suggests {row.suggested} ({row.suggested_probability:.2f})")
    if row.margin < LOW_MARGIN:
        reasons.append(f"the teacher hesitated (margin {row.margin:.2f})")
    if captions_disagree:
        reasons.append(f"the captions say {row.caption_label}")
    return "; ".join(reasons)


def _empty() -> pd.DataFrame:
    return pd.DataFrame({"position": pd.Series(dtype="int64"), "label": pd.Series(dtype=object),
                         "quality": pd.Series(dtype=float), "issue": pd.Series(dtype=bool),
                         "suggested": pd.Series(dtype=object), "suggested_probability": pd.Series(dtype=float),
                         "margin": pd.Series(dtype=float), "caption_label": pd.Series(dtype=object),
                         "score": pd.Series(dtype=float), "reasons": pd.Series(dtype=object)})
