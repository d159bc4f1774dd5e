import numpy as np
import pandas as pd

from emotion_pipeline.modeling.data import assign_splits, hash_position
from emotion_pipeline.modeling.metrics import classification_metrics
from emotion_pipeline.modeling.classifier import class_weights


def frame(n: int, labels: list[str], seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"image_id": [f"{rng.integers(1 << 60):x}" for _ in range(n)],
                         "label": [labels[i % len(labels)] for i in range(n)]})


def test_split_is_derived_from_image_id_not_row_order():
    data = frame(300, ["happy", "sad"])
    split = assign_splits(data, min_rows=10)
    shuffled = data.sample(frac=1, random_state=1)
    assert assign_splits(shuffled, min_rows=10).sort_index().equals(split.sort_index())
    assert set(split) == {"train", "val", "test"}
    assert 0.6 < (split == "train").mean() < 0.8


def test_existing_photos_keep_their_split_when_data_grows():
    old = frame(400, ["happy", "sad", "neutral"], seed=1)
    new = pd.concat([old, frame(400, ["happy", "sad", "neutral"], seed=2)], ignore_index=True)
    before = assign_splits(old, min_rows=10)
    after = assign_splits(new, min_rows=10)
    assert after.iloc[: len(old)].equals(before)


def test_every_class_with_enough_rows_is_in_every_split():
    data = pd.concat([frame(200, ["happy"]), frame(10, ["surprise"], seed=3), frame(2, ["angry"], seed=4)],
                     ignore_index=True)
    split = assign_splits(data, min_rows=10)
    surprise = split[data["label"] == "surprise"]
    assert set(surprise) == {"train", "val", "test"}
    assert 0 <= hash_position("abc") < 1


def test_metrics_and_class_weights():
    y_true = np.array([0, 0, 1, 1, 3])
    y_pred = np.array([0, 1, 1, 1, 0])
    metrics = classification_metrics(y_true, y_pred)
    assert metrics["accuracy"] == 0.6
    assert metrics["per_class"]["happy"]["support"] == 2 and metrics["per_class"]["surprise"]["support"] == 1
    assert metrics["per_class"]["angry"]["support"] == 0
    # macro over the classes present in the truth (happy, sad, surprise): (0.5 + 0.8 + 0) / 3
    assert abs(metrics["macro_f1"] - (0.5 + 0.8 + 0.0) / 3) < 1e-9
    assert np.array(metrics["confusion_matrix"]).sum() == 5
    weights = class_weights(np.array([0, 0, 0, 1]))
    assert weights[1] == 3 * weights[0]


def test_each_root_keeps_its_own_mlflow_store(tmp_path, monkeypatch):
    import os

    from emotion_pipeline.config import PipelineConfig
    from emotion_pipeline.modeling import tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first = PipelineConfig(source="in", root=str(tmp_path / "a"))
    second = PipelineConfig(source="in", root=str(tmp_path / "b"))
    tracking.use_experiment(first)
    assert "MLFLOW_TRACKING_URI" not in os.environ  # nothing leaks to the next config or a child process
    assert tracking.tracking_uri(second) == f"sqlite:///{tmp_path / 'b' / 'mlflow' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert tracking.tracking_uri(second) == "http://mlflow.example:5000"  # a user's server still wins
