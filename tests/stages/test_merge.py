import pandas as pd

from emotion_pipeline.core.config import PipelineConfig
from emotion_pipeline.core.runner import run_stage
from emotion_pipeline.core.storage import open_storage
from tests.bad_inputs import write_bad_inputs
from tests.conftest import FLICKR, copy_photos, flickr_names


def test_every_photo_has_a_row_even_before_annotation(tmp_path):
    src = tmp_path / "src"
    photos = copy_photos(FLICKR, src, flickr_names(4))
    expected = write_bad_inputs(src, photos[0])
    config = PipelineConfig(source=str(src), root=str(tmp_path / "out"), shard_size=5)
    shards = run_stage("discover", config).shards
    run_stage("resize", config, shards[0])  # shard 1 is neither resized nor annotated

    summary = run_stage("merge", config)
    dataset = pd.read_parquet(open_storage(config.root).uri_for("datasets/final_emotion_dataset.parquet"))
    assert summary.images == len(dataset) == 4 + len(expected)
    assert dataset["source_key"].is_unique
    in_shard_1 = dataset[dataset["shard"] == 1]
    # Not resized yet: pending, except a second name of a photo, a duplicate from discovery on.
    waiting = in_shard_1[in_shard_1["duplicate_of"] == ""]
    assert len(waiting) > 0 and (waiting["status"] == "pending").all()
    assert (in_shard_1.loc[in_shard_1["duplicate_of"] != "", "status"] == "duplicate").all()
    in_shard_0 = dataset[dataset["shard"] == 0].set_index("source_key")
    for name, status in expected.items():
        if name in in_shard_0.index:
            assert in_shard_0.loc[name, "status"] == status

    assert run_stage("merge", config).skipped is True  # same inputs: nothing rewritten
    run_stage("resize", config, shards[1])
    assert run_stage("merge", config).skipped is False  # a stage finished a shard: merged again
