import numpy as np
import pandas as pd
from PIL import Image

from emotion_pipeline.core.config import PipelineConfig
from emotion_pipeline.core.runner import run_stage
from emotion_pipeline.core.storage import open_storage
from tests.bad_inputs import write_bad_inputs, write_odd_modes
from tests.conftest import FLICKR, copy_photos, flickr_names


def test_resize_accounts_for_every_file_and_skips_done_shards(tmp_path):
    src = tmp_path / "src"
    good = copy_photos(FLICKR, src, flickr_names(3))
    expected = write_bad_inputs(src, good[0])
    odd = write_odd_modes(src, good[0])
    config = PipelineConfig(source=str(src), root=str(tmp_path / "root"), shard_size=100)

    assert run_stage("discover", config).pending == [0]
    summary = run_stage("resize", config, 0)
    assert summary.skipped is False and summary.images == 3 + len(expected) + len(odd)

    root = open_storage(config.root)
    metadata = pd.read_parquet(root.uri_for("metadata/shard=00000/metadata.parquet")).set_index("source_key")
    csv = pd.read_csv(root.uri_for("metadata/shard=00000/metadata.csv"))
    assert len(csv) == len(metadata)
    for name, status in expected.items():
        assert metadata.loc[name, "status"] == status, name
        assert isinstance(metadata.loc[name, "error"], str) and metadata.loc[name, "error"]
    for name in [p.name for p in good] + odd:
        row = metadata.loc[name]
        assert row["status"] == "ok", (name, row["error"])
        with Image.open(row["processed_uri"]) as image:
            assert image.size == (224, 224) and image.mode == "RGB"
    assert metadata.loc[good[0].name, "orig_format"] == "JPEG"
    assert metadata.loc["mode_cmyk.jpg", "orig_mode"] == "CMYK"
    assert metadata.loc["mode_16bit.png", "orig_mode"].startswith("I")

    # Orientation: a photo stored w x h with "rotate 90" displays h x w, so the padding moves axis.
    rotated = np.asarray(Image.open(metadata.loc["mode_exif_rotated.jpg", "processed_uri"]))
    stored_w, stored_h = Image.open(good[0]).size
    bars = rotated[:, :8] if stored_w > stored_h else rotated[:8, :]
    assert bars.max() < 40 and rotated[100:124, 100:124].mean() > 20

    processed = sorted(o.key for o in root.list("processed"))
    assert len(processed) == 3 + len(odd)  # duplicates and bad files write nothing

    again = run_stage("resize", config, 0)
    assert again.skipped is True and again.statuses == summary.statuses
    assert run_stage("discover", config).pending == [0]  # annotate has not run yet


def test_both_frames_are_recorded_and_boxes_map_onto_the_processed_copy(tmp_path):
    """A landscape file with EXIF "rotate 90" displays as a portrait: orig_* are the stored sides,
    upright_* the displayed ones, the frame every face box is in. A box over the whole upright photo
    lands exactly on the processed copy's picture (not on its letterbox bars)."""
    from emotion_pipeline.labelling.images import letterbox_box

    src = tmp_path / "src"
    src.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.full((200, 300, 3), 200, np.uint8)).save(src / "turned.jpg", exif=exif)
    config = PipelineConfig(source=str(src), root=str(tmp_path / "root"))
    run_stage("discover", config)
    run_stage("resize", config, 0)
    row = pd.read_parquet(open_storage(config.root).uri_for("metadata/shard=00000/metadata.parquet")).iloc[0]
    assert (row["orig_width"], row["orig_height"]) == (300, 200)
    assert (row["upright_width"], row["upright_height"]) == (200, 300)

    pixels = np.asarray(Image.open(row["processed_uri"]).convert("L")) > 100  # the picture, not the bars
    columns, rows = np.flatnonzero(pixels.any(axis=0)), np.flatnonzero(pixels.any(axis=1))
    left, top, right, bottom = letterbox_box((0, 0, 200, 300), row["upright_width"], row["upright_height"], 224)
    assert abs(left - columns[0]) <= 1 and abs(right - 1 - columns[-1]) <= 1
    assert abs(top - rows[0]) <= 1 and abs(bottom - 1 - rows[-1]) <= 1
