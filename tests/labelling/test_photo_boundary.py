"""No exception raised while handling one photo fails its shard (resize, annotate, embed, the gold
check): the photo gets a row with a status and the error. Real hostile files make the real steps
raise (a 1x4000 PNG broke detection's downscale; the emotion model's own resize raises on a face one
pixel wide; a source photo truncated after annotate breaks embed). An error every photo of a shard
meets alike (a bug, a broken install) still fails the task: that rule is tested by injecting a
failing step into a real stage run, the only way to make every photo fail the same way."""
import numpy as np
import pandas as pd
import pytest

from emotion_pipeline.core import catalog
from emotion_pipeline.core.config import PipelineConfig
from emotion_pipeline.core.runner import run_stage
from emotion_pipeline.core.storage import open_storage
from emotion_pipeline.core.tables import read_table
from emotion_pipeline.stages import resize as resize_module
from tests.bad_inputs import write_degenerate_photos
from tests.conftest import FACES, copy_photos

pytestmark = pytest.mark.timeout(300)


def face_crop(path, side: int = 48):
    """A real face crop, as the skip detector takes them (the whole photo is the face)."""
    from PIL import Image

    return Image.open(path).convert("L").resize((side, side))


def test_degenerate_photos_each_get_a_row_and_never_fail_the_shard(tmp_path):
    src = tmp_path / "src"
    expected = write_degenerate_photos(src, FACES / "img1.jpg")
    copy_photos(FACES, src, ["img1.jpg"])
    config = PipelineConfig(source=str(src), root=str(tmp_path / "root"))
    run_stage("discover", config)
    run_stage("resize", config, 0)
    annotated = run_stage("annotate", config, 0)  # today: ValueError "height and width must be > 0", every retry

    root = open_storage(config.root)
    metadata = read_table(root, catalog.metadata(0)).set_index("source_key")
    notes = read_table(root, catalog.annotations(0)).set_index("source_key")
    assert sorted(notes.index) == sorted(metadata.index) == sorted([*expected, "img1.jpg"])
    for name, status in expected.items():
        assert metadata.loc[name, "status"] == status, (name, metadata.loc[name, "error"])
        assert notes.loc[name, "status"] == ("no_face" if status == "ok" else status), notes.loc[name, "error"]
    assert notes.loc["img1.jpg", "status"] == "ok" and annotated.faces >= 1


def test_a_photo_the_emotion_model_raises_on_fails_alone(tmp_path):
    """With the skip detector a 1x4000 photo is its own face, and the emotion model's input step
    (DeepFace's resize to 48 px) raises on a crop one pixel wide: that photo fails, not its batch."""
    src = tmp_path / "src"
    src.mkdir()
    face_crop(FACES / "img1.jpg").save(src / "crop.png")
    write_degenerate_photos(tmp_path / "odd", FACES / "img1.jpg")
    (src / "thin.png").write_bytes((tmp_path / "odd" / "thin.png").read_bytes())
    config = PipelineConfig(source=str(src), root=str(tmp_path / "root"), detector="skip")
    run_stage("discover", config)
    run_stage("resize", config, 0)
    annotated = run_stage("annotate", config, 0)  # today: cv2.error fails the shard

    notes = read_table(open_storage(config.root), catalog.annotations(0)).set_index("source_key")
    faces = read_table(open_storage(config.root), catalog.faces(0))
    assert notes.loc["thin.png", "status"] == "failed" and "resize" in notes.loc["thin.png", "error"]
    assert notes.loc["crop.png", "status"] == "ok" and notes.loc["crop.png", "dominant_emotion"]
    assert list(faces["source_key"]) == ["crop.png"] and annotated.statuses == {"ok": 1, "failed": 1}


def test_a_photo_broken_after_annotate_fails_alone_in_embed(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name, side in (("a.png", 48), ("b.png", 60), ("c.png", 72)):
        face_crop(FACES / "img1.jpg", side).save(src / name)
    config = PipelineConfig(source=str(src), root=str(tmp_path / "root"), detector="skip", embed_weights="none")
    run_stage("discover", config)
    run_stage("resize", config, 0)
    run_stage("annotate", config, 0)
    whole = (src / "b.png").read_bytes()
    (src / "b.png").write_bytes(whole[: len(whole) // 2])  # rewritten (truncated) after annotate read it
    embedded = run_stage("embed", config, 0)  # today: ImageError escapes and fails the shard

    root = open_storage(config.root)
    index = read_table(root, catalog.vector_index(0)).set_index("source_key")
    vectors = np.load(root.uri_for(catalog.shard_vectors(0)))
    assert list(index["status"]) == ["ok", "corrupt", "ok"] and "truncated" in index.loc["b.png", "error"].lower()
    assert len(vectors) == 3 and not vectors[1].any() and vectors[[0, 2]].any(axis=1).all()
    assert embedded.vectors == 2
    assembled = run_stage("assemble_features", config)  # only the photos embed could read reach training
    assert assembled.vectors == 2
    assert sorted(read_table(root, catalog.IMAGE_INDEX)["source_key"]) == ["a.png", "c.png"]


def test_a_gold_photo_the_emotion_model_raises_on_fails_alone(tmp_path):
    gold = tmp_path / "gold"
    for label, name in (("happy", "img1.jpg"), ("sad", "couple.jpg")):
        (gold / label).mkdir(parents=True)
        face_crop(FACES / name).save(gold / label / f"{name}.png")
    write_degenerate_photos(tmp_path / "odd", FACES / "img1.jpg")
    (gold / "happy" / "thin.png").write_bytes((tmp_path / "odd" / "thin.png").read_bytes())
    (tmp_path / "src").mkdir()
    config = PipelineConfig(source=str(tmp_path / "src"), root=str(tmp_path / "root"), gold=str(gold),
                            gold_detector="skip")
    run_stage("discover", config)
    result = run_stage("check_gold", config)  # today: cv2.error fails the gold check

    table = read_table(open_storage(config.root), catalog.GOLD_ANNOTATIONS).set_index("key")
    assert result.photos == 3 and table.loc["happy/thin.png", "status"] == "failed"
    assert "resize" in table.loc["happy/thin.png", "error"] and pd.isna(table.loc["happy/thin.png", "deepface_label"])
    assert set(table.loc[["happy/img1.jpg.png", "sad/couple.jpg.png"], "status"]) == {"ok"}
    assert table.loc["sad/couple.jpg.png", "deepface_happy"] >= 0


def failing_letterbox(fail_when):
    """resize's letterbox step, raising a programming error for the images ``fail_when`` picks."""
    real = resize_module.letterbox

    def letterbox(image, size):
        if fail_when(image):
            raise ZeroDivisionError("injected: a bug in the resize step")
        return real(image, size)
    return letterbox


def test_one_photo_a_step_raises_on_fails_alone_but_every_photo_failing_alike_fails_the_task(tmp_path,
                                                                                              monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    for side in (40, 50, 60, 70):
        face_crop(FACES / "img1.jpg", side).save(src / f"crop{side}.png")
    config = PipelineConfig(source=str(src), root=str(tmp_path / "root"))
    run_stage("discover", config)

    monkeypatch.setattr(resize_module, "letterbox", failing_letterbox(lambda image: image.width == 50))
    result = run_stage("resize", config, 0)
    metadata = read_table(open_storage(config.root), catalog.metadata(0)).set_index("source_key")
    assert result.statuses == {"ok": 3, "failed": 1} and metadata.loc["crop50.png", "status"] == "failed"
    assert metadata.loc["crop50.png", "error"] == "resize: ZeroDivisionError: injected: a bug in the resize step"
    assert metadata.loc["crop50.png", "orig_width"] == 50  # what was learnt before the step raised stays

    monkeypatch.setattr(resize_module, "letterbox", failing_letterbox(lambda image: True))
    again = PipelineConfig(source=str(src), root=str(tmp_path / "again"))
    run_stage("discover", again)
    with pytest.raises(ZeroDivisionError) as raised:  # a bug, not four bad photos: the task fails
        run_stage("resize", again, 0)
    assert "all 4 photos" in "".join(raised.value.__notes__)
