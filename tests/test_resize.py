import numpy as np
import pandas as pd
from PIL import Image

from emotion_pipeline.config import PipelineConfig
from emotion_pipeline.stages.discover import discover_images
from emotion_pipeline.stages.resize import resize_shard
from emotion_pipeline.storage import open_storage

from .bad_inputs import write_bad_inputs, write_odd_modes
from .conftest import FLICKR, copy_photos, flickr_names


def test_resize_accounts_for_every_file_and_skips_done_shards(tmp_path):
    src = tmp_path / "src"
    good = copy_photos(FLICKR, src, flickr_names(3))
    expected = write_bad_inputs(src, good[0])
    odd = write_odd_modes(src, good[0])
    config = PipelineConfig(source=str(src), root=str(tmp_path / "root"), shard_size=100)

    assert discover_images(config).pending == [0]
    summary = resize_shard(config, 0)
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

    again = resize_shard(config, 0)
    assert again.skipped is True and again.statuses == summary.statuses
    assert discover_images(config).pending == [0]  # annotate has not run yet
