import numpy as np
import pandas as pd
from PIL import Image

from emotion_pipeline.core.config import PipelineConfig
from emotion_pipeline.core.runner import run_stage
from emotion_pipeline.core.storage import open_storage
from tests.conftest import FACES, copy_photos


def test_annotate_labels_the_largest_confident_face_and_never_labels_no_face(tmp_path):
    src = tmp_path / "src"
    copy_photos(FACES, src, ["couple.jpg", "img1.jpg"])
    Image.fromarray(np.full((300, 400, 3), 90, dtype=np.uint8)).save(src / "wall.jpg")
    config = PipelineConfig(source=str(src), root=str(tmp_path / "out"))
    run_stage("discover", config)
    run_stage("resize", config, 0)
    summary = run_stage("annotate", config, 0)
    assert summary.skipped is False and summary.images == 3

    root = open_storage(config.root)
    photos = pd.read_parquet(root.uri_for("annotations/shard=00000/annotations.parquet")).set_index("source_key")
    faces = pd.read_parquet(root.uri_for("annotations/shard=00000/faces.parquet"))
    assert photos.loc["wall.jpg", "status"] == "no_face" and pd.isna(photos.loc["wall.jpg", "label"])
    assert photos.loc["wall.jpg", "n_faces"] == 0

    couple = faces[faces["source_key"] == "couple.jpg"]
    confident = couple[couple["confident"]]
    assert len(confident) >= 2
    largest = confident.loc[(confident["w"] * confident["h"]).idxmax()]
    row = photos.loc["couple.jpg"]
    assert row["status"] == "ok" and row["label_face_index"] == largest["face_index"]
    assert (row["face_w"], row["face_h"]) == (largest["w"], largest["h"])
    assert row["dominant_emotion"] == largest["dominant_emotion"]
    assert row["label"] == (row["dominant_emotion"] if row["dominant_emotion"] not in ("fear", "disgust") else None)
    assert run_stage("annotate", config, 0).skipped is True


def test_skip_detector_annotates_face_crops(tmp_path):
    src = tmp_path / "src"
    crop = Image.open(FACES / "img1.jpg").convert("L").resize((48, 48))
    src.mkdir()
    crop.save(src / "crop.png")
    config = PipelineConfig(source=str(src), root=str(tmp_path / "out"), detector="skip")
    run_stage("discover", config)
    run_stage("resize", config, 0)
    run_stage("annotate", config, 0)
    photos = pd.read_parquet(open_storage(config.root).uri_for("annotations/shard=00000/annotations.parquet"))
    assert photos.loc[0, "status"] == "ok" and photos.loc[0, "n_faces"] == 1
    assert photos.loc[0, "dominant_emotion"] in ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
