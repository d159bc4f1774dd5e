"""bench-scale's photos and figures, without running the DAG: mosaics are deterministic and distinct
(the near-duplicate stage's own hash keeps them apart), and the growth slopes read the cold runs."""
import numpy as np
from PIL import Image

from bench.mosaics import generate_pool, link_photos, make_mosaic, mosaic_name
from bench.scale import ratios, slopes
from emotion_pipeline.stages.dedupe import perceptual_hash
from tests.conftest import FLICKR


def test_mosaic_is_the_same_for_the_same_index_and_seed():
    originals = sorted(FLICKR.glob("*.jpg"))
    first, again = make_mosaic(originals, 7), make_mosaic(originals, 7)
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(np.asarray(first), np.asarray(make_mosaic(originals, 7, seed=1)))


def test_mosaics_are_not_near_duplicates_of_each_other():
    originals = sorted(FLICKR.glob("*.jpg"))
    hashes = []
    for index in range(60):
        mosaic = make_mosaic(originals, index)
        mosaic.thumbnail((224, 224))  # what dedupe hashes: the processed copy
        hashes.append(perceptual_hash(mosaic))
    values = np.array(hashes, dtype=np.uint64)
    nearest = [int(np.delete(np.bitwise_count(values ^ v), i).min()) for i, v in enumerate(values)]
    assert min(nearest) > 10  # dedupe's default --dedupe-max-distance


def test_pool_is_reused_by_prefix_and_linked(tmp_path):
    pool, source = tmp_path / "pool", tmp_path / "photos"
    generate_pool(FLICKR, pool, 3, workers=1)
    made = (pool / mosaic_name(0)).stat().st_mtime_ns
    generate_pool(FLICKR, pool, 5, workers=1)  # only the two missing ones are made
    assert (pool / mosaic_name(0)).stat().st_mtime_ns == made
    link_photos(pool, source, 1, 4)
    assert sorted(p.name for p in source.iterdir()) == [mosaic_name(i) for i in (1, 2, 3)]
    with Image.open(source / mosaic_name(1)) as image:
        assert image.size in ((800, 400), (400, 800))


def test_slopes_and_ratios_read_the_cold_runs():
    runs = [{"kind": "cold", "photos": 1000, "seconds": 100.0, "tasks": {"annotate": 10.0, "train": 50.0}},
            {"kind": "cold", "photos": 4000, "seconds": 400.0, "tasks": {"annotate": 40.0, "train": 800.0}},
            {"kind": "extra", "photos": 4400, "new_photos": 400, "seconds": 20.0, "tasks": {}},
            {"kind": "no-op", "photos": 4400, "new_photos": 0, "seconds": 2.0, "tasks": {}},
            {"kind": "cold", "photos": 8000, "seconds": 800.0, "tasks": {}}]  # a larger size measured later
    found = slopes(runs)
    assert found["annotate"] == 1.0 and found["train"] == 2.0 and found["whole run"] == 1.0
    # against the cold run the +10% started from, not the largest
    assert ratios(runs) == {"extra": 0.05, "no-op": 0.005}
