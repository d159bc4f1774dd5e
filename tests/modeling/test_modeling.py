import numpy as np
import pandas as pd

from emotion_pipeline.modeling.classifier import class_weights
from emotion_pipeline.modeling.data import assign_splits, hash_position
from emotion_pipeline.modeling.metrics import classification_metrics


def frame(n: int, labels: list[str], seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"image_id": [f"{rng.integers(1 << 60):x}" for _ in range(n)],
                         "label": [labels[i % len(labels)] for i in range(n)]})


def test_split_is_derived_from_image_id_not_row_order():
    data = frame(300, ["happy", "sad"])
    split = assign_splits(data)
    shuffled = data.sample(frac=1, random_state=1)
    assert assign_splits(shuffled).sort_index().equals(split.sort_index())
    assert set(split) == {"train", "val", "test"}
    assert 0.6 < (split == "train").mean() < 0.8


def test_existing_photos_keep_their_split_when_data_grows():
    old = frame(400, ["happy", "sad", "neutral"], seed=1)
    new = pd.concat([old, frame(400, ["happy", "sad", "neutral"], seed=2)], ignore_index=True)
    before = assign_splits(old)
    after = assign_splits(new)
    assert after.iloc[: len(old)].equals(before)


def test_a_growing_class_never_moves_a_photo_between_splits():
    """The old rule "every class with min_rows photos in every split" moved photos when a class reached
    min_rows: 9 surprise photos all in train, the 10th arrived, and two the model trained on went to
    test and val."""
    happy = frame(200, ["happy"])
    surprise = frame(40, ["surprise"], seed=3)
    in_train = surprise[surprise["image_id"].map(hash_position) >= 0.30]
    nine = pd.concat([happy, in_train.iloc[:9]], ignore_index=True)
    ten = pd.concat([nine, surprise[surprise["image_id"].map(hash_position) < 0.15].iloc[:1]], ignore_index=True)
    before, after = assign_splits(nine), assign_splits(ten)
    assert after.iloc[: len(nine)].equals(before)
    assert 0 <= hash_position("abc") < 1


def test_recorded_assignments_win_over_the_hash():
    data = frame(50, ["happy", "sad"])
    recorded = pd.Series({data["image_id"][0]: "test", data["image_id"][1]: "val"})
    split = assign_splits(data, recorded)
    assert split[0] == "test" and split[1] == "val"
    assert split.iloc[2:].equals(assign_splits(data).iloc[2:])


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

    from emotion_pipeline.core.config import PipelineConfig
    from emotion_pipeline.modeling import tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first = PipelineConfig(source="in", root=str(tmp_path / "a"))
    second = PipelineConfig(source="in", root=str(tmp_path / "b"))
    tracking.use_experiment(first)
    assert "MLFLOW_TRACKING_URI" not in os.environ  # nothing leaks to the next config or a child process
    assert tracking.tracking_uri(second) == f"sqlite:///{tmp_path / 'b' / 'mlflow' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert tracking.tracking_uri(second) == "http://mlflow.example:5000"  # a user's server still wins


def test_a_soft_label_head_learns_deepface_s_distribution_not_only_its_argmax():
    """Every photo's label is happy, but DeepFace's scores say 60% happy, 40% neutral: the hard head
    learns 'happy, surely', the soft head the 60/40 split (distillation)."""
    import pandas as pd

    from emotion_pipeline.core.config import CLASSES, PipelineConfig
    from emotion_pipeline.modeling.classifier import refit, refit_soft
    from emotion_pipeline.modeling.data import TrainingData

    rng = np.random.default_rng(0)
    n = 300
    scores = {f"score_{c}": {"happy": 60.0, "neutral": 40.0}.get(c, 0.0) for c in CLASSES}
    labels = ["happy"] * (n - 30) + ["sad"] * 30  # the hard head needs two classes
    frame = pd.DataFrame({"image_id": [f"i{k}" for k in range(n)], "label": labels,
                          "split": ["train"] * 200 + ["val"] * 50 + ["test"] * 50,
                          "y": [CLASSES.index(label) for label in labels], **scores})
    frame.loc[frame["label"] == "sad", "score_happy"], frame.loc[frame["label"] == "sad", "score_sad"] = 10.0, 90.0
    frame.loc[frame["label"] == "sad", "score_neutral"] = 0.0
    frame = frame.sample(frac=1, random_state=0).reset_index(drop=True)
    frame["split"] = ["train"] * 200 + ["val"] * 50 + ["test"] * 50
    vectors = rng.normal(size=(n, 2048)).astype(np.float32)
    vectors[frame["label"] == "sad", :8] += 4.0  # sad photos are told apart by their vectors
    data = TrainingData(frame=frame, vectors=vectors)
    config = PipelineConfig(source="s", root="r", tuner_max_epochs=60)
    hp = {"l2": 1e-6, "units": 64, "dropout": 0.0, "learning_rate": 3e-3}

    x_test, _ = data.part("test")
    happy = (frame.loc[frame["split"] == "test", "label"] == "happy").to_numpy()
    soft = refit_soft(config, data, hp).predict(x_test[happy], verbose=0).mean(axis=0)
    hard = refit(config, data, hp).predict(x_test[happy], verbose=0).mean(axis=0)
    i_happy, i_neutral = CLASSES.index("happy"), CLASSES.index("neutral")
    assert abs(soft[i_happy] - 0.6) < 0.15 and abs(soft[i_neutral] - 0.4) < 0.15, soft
    assert hard[i_neutral] < 0.1 < soft[i_neutral], (hard, soft)
