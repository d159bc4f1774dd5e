"""Where a gold set can come from: a labelled folder or a CSV (paths or image_ids)."""
import shutil

import pytest

from emotion_pipeline.core.config import PipelineConfig
from emotion_pipeline.core.manifest import discover
from emotion_pipeline.core.storage import LocalStorage
from emotion_pipeline.stages.check_gold import list_gold
from tests.conftest import FACES, SHARED, copy_photos

LABELLED = SHARED / "data" / "labeled_faces"


def test_labelled_folder(tmp_path):
    for label in ("happy", "sad"):
        names = sorted(p.name for p in (LABELLED / label).iterdir())[:3]
        copy_photos(LABELLED / label, tmp_path / "gold" / label, names)
    (tmp_path / "gold" / "README.txt").write_text("not a photo")
    gold = list_gold(str(tmp_path / "gold"), LocalStorage(tmp_path / "root"))
    assert sorted(gold["label"]) == ["happy"] * 3 + ["sad"] * 3


def test_csv_with_paths_and_image_ids(tmp_path):
    src = tmp_path / "src"
    copy_photos(FACES, src, ["img1.jpg", "img2.jpg"])
    root = LocalStorage(tmp_path / "root")
    manifest = discover(PipelineConfig(source=str(src), root=root.uri), LocalStorage(src), root).manifest
    crop = sorted((LABELLED / "angry").iterdir())[0]
    shutil.copy2(crop, tmp_path / "crop.jpg")
    image_id = manifest.set_index("source_key").loc["img2.jpg", "image_id"]
    (tmp_path / "gold.csv").write_text(f"path,image_id,label\ncrop.jpg,,angry\n,{image_id},neutral\n")
    gold = list_gold(str(tmp_path / "gold.csv"), root)
    assert list(gold["label"]) == ["angry", "neutral"]
    assert gold.iloc[0]["storage"].read_bytes(gold.iloc[0]["key"]) == crop.read_bytes()
    assert gold.iloc[1]["storage"].read_bytes(gold.iloc[1]["key"]) == (FACES / "img2.jpg").read_bytes()


@pytest.mark.parametrize("csv, message", [
    ("path,label\nx.jpg,bored\n", "not among the five classes"),
    ("file,label\nx.jpg,happy\n", "'path' or 'image_id'"),
    ("image_id,label\nfeedbeef,happy\n", "not in the pipeline's manifest"),
])
def test_bad_gold_sets_are_clear_errors(tmp_path, csv, message):
    (tmp_path / "gold.csv").write_text(csv)
    with pytest.raises(ValueError, match=message):
        list_gold(str(tmp_path / "gold.csv"), LocalStorage(tmp_path / "root"))
