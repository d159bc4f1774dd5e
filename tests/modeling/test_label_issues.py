"""The review queue's computation (modeling/label_issues.py) with the real scikit-learn and cleanlab on
vectors whose classes are known: two well separated clusters, three labels swapped on purpose."""
import numpy as np
import pandas as pd

from emotion_pipeline.modeling.label_issues import WEIGHTS, find_issues, margins


def clusters(per_class: int = 20, dim: int = 64, seed: int = 0) -> tuple[np.ndarray, pd.Series]:
    rng = np.random.default_rng(seed)
    centers = {"happy": rng.normal(0, 1, dim), "sad": rng.normal(0, 1, dim)}
    vectors = np.concatenate([center + rng.normal(0, 0.3, (per_class, dim)) for center in centers.values()])
    return vectors, pd.Series(np.repeat(list(centers), per_class), dtype=object)


def confident_scores(n: int) -> np.ndarray:
    """Seven scores per row with one clear winner (margin 0.9): the teacher's doubt plays no part."""
    scores = np.full((n, 7), 1.0)
    scores[:, 3] = 94.0
    return scores


def test_swapped_labels_come_first_with_the_classifiers_suggestion():
    vectors, labels = clusters()
    swapped = [3, 17, 25]
    labels[swapped] = labels[swapped].map({"happy": "sad", "sad": "happy"})
    found = find_issues(vectors, labels, confident_scores(len(labels)), pd.Series([None] * len(labels)), seed=1)
    table = found.table
    assert found.reason == "" and found.folds == 5 and len(table) == len(labels)
    assert sorted(table["position"].iloc[:3]) == swapped
    top = table.iloc[:3]
    assert top["issue"].all() and (top["suggested"] != top["label"]).all()
    assert top["reasons"].str.startswith("cleanlab: a label issue").all()
    assert not table["issue"].iloc[3:].any()
    assert table["score"].is_monotonic_decreasing


def test_the_teachers_doubt_and_the_captions_raise_a_photo_and_say_why():
    vectors, labels = clusters()
    scores = confident_scores(len(labels))
    scores[5] = [1, 1, 1, 48, 1, 1, 47]  # happy by a hair over neutral
    named = pd.Series([None] * len(labels), dtype=object)
    named[8] = "sad"  # the captions of a happy photo say sad
    table = find_issues(vectors, labels, scores, named, seed=1).table.set_index("position")
    others = table.drop(index=[5, 8])["score"]
    assert table.loc[5, "score"] > others.max() and "the teacher hesitated (margin 0.01)" in table.loc[5, "reasons"]
    assert table.loc[8, "score"] >= others.max() + WEIGHTS["captions"] - 0.05
    assert "the captions say sad" in table.loc[8, "reasons"]


def test_too_few_photos_per_class_is_a_reason_not_a_failure():
    vectors, labels = clusters(per_class=1)
    found = find_issues(vectors, labels, confident_scores(2), pd.Series([None, None]), seed=1)
    assert found.table.empty and "too few labelled photos" in found.reason and found.folds == 0


def test_margins_are_shares_of_the_total():
    assert np.allclose(margins(np.array([[60.0, 30, 10, 0, 0, 0, 0], [np.nan] * 7])), [0.3, 0.0])
