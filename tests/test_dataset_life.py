"""The dataset's life: edits, moves, renames, deletions and copies give what a run from scratch gives.

The cheap checks run discovery, resize and merge only; the oracle test runs every stage up to the
assembled vectors, incrementally on root A and from scratch on a fresh root B after each change."""
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from emotion_pipeline.core import catalog
from emotion_pipeline.core.config import PipelineConfig
from emotion_pipeline.core.manifest import discover, shard_fingerprint, shard_rows
from emotion_pipeline.core.runner import run_stage
from emotion_pipeline.core.storage import LocalStorage, open_storage
from tests.conftest import FACES, FLICKR, copy_photos, flickr_names


def resize_and_merge(config: PipelineConfig) -> pd.DataFrame:
    for shard in run_stage("discover", config).pending:
        run_stage("resize", config, shard)
    run_stage("merge", config)
    return catalog.read_dataset(open_storage(config.root)).set_index("source_key")


def rotate_in_place(path) -> None:
    Image.open(path).rotate(90, expand=True).save(path, quality=90)


def test_a_photo_edited_in_place_replaces_its_row(tmp_path):
    """Its earlier content's row (in an earlier shard) must not collide with the new one in merge."""
    src = tmp_path / "src"
    photos = copy_photos(FLICKR, src, flickr_names(4))
    config = PipelineConfig(source=str(src), root=str(tmp_path / "out"), shard_size=10)
    before = resize_and_merge(config)
    rotate_in_place(photos[1])
    after = resize_and_merge(config)
    assert len(after) == 4 and after.index.is_unique
    assert after.loc[photos[1].name, "image_id"] != before.loc[photos[1].name, "image_id"]
    assert after.loc[photos[1].name, "shard"] == 1 and after.loc[photos[1].name, "upright_width"] == \
        before.loc[photos[1].name, "upright_height"]


def test_a_photo_resized_but_not_annotated_is_pending(tmp_path):
    src = tmp_path / "src"
    copy_photos(FLICKR, src, flickr_names(3))
    config = PipelineConfig(source=str(src), root=str(tmp_path / "out"))
    dataset = resize_and_merge(config)  # annotate has not run
    assert set(dataset["status"]) == {"pending"}
    assert set(dataset["error"]) == {"waiting for annotate"}


@pytest.fixture
def folders(tmp_path):
    return LocalStorage(tmp_path / "src"), LocalStorage(tmp_path / "root"), tmp_path / "src"


def rediscover(folders):
    source, root, _ = folders
    return discover(PipelineConfig(source=source.uri, root=root.uri, shard_size=2), source, root).manifest


def test_a_moved_or_renamed_photo_is_not_a_duplicate_of_its_old_name(folders):
    src = folders[2]
    copy_photos(FLICKR, src, flickr_names(3))
    rediscover(folders)
    (src / "batch1").mkdir()
    shutil.move(src / flickr_names(3)[0], src / "batch1" / flickr_names(3)[0])
    shutil.move(src / flickr_names(3)[1], src / "renamed.jpg")
    present = rediscover(folders).query("present").set_index("source_key")
    assert len(present) == 3
    assert (present["duplicate_of"] == "").all(), present["duplicate_of"]


def test_when_the_processing_name_goes_a_present_copy_takes_over_and_its_shard_reruns(folders):
    src = folders[2]
    photos = copy_photos(FLICKR, src, flickr_names(2))
    rediscover(folders)
    shutil.copy(photos[0], src / "zz_copy.jpg")  # a later batch: a new shard
    manifest = rediscover(folders)
    copy_row = manifest.set_index("source_key").loc["zz_copy.jpg"]
    assert copy_row["duplicate_of"] == photos[0].name
    before = shard_fingerprint(shard_rows(manifest, int(copy_row["shard"])))

    photos[0].unlink()
    manifest = rediscover(folders)
    copy_row = manifest.set_index("source_key").loc["zz_copy.jpg"]
    assert copy_row["duplicate_of"] == ""
    assert shard_fingerprint(shard_rows(manifest, int(copy_row["shard"]))) != before


# --- the oracle --------------------------------------------------------------------------------

def settings(src, root, **changes) -> PipelineConfig:
    knobs = {"shard_size": 4, "detector": "opencv", "embed_weights": "none", "embed_input": "face",
             "min_face_confidence": 0.0, "min_rows_per_class": 3, **changes}
    return PipelineConfig(source=str(src), root=str(root), **knobs)


def outcome(config: PipelineConfig) -> tuple[pd.DataFrame, dict[str, np.ndarray], str]:
    """What a run produced: the dataset's rows (with each training row's split), the vectors of the
    present photos by image_id, and the fingerprint of what training would learn from."""
    from emotion_pipeline.modeling.data import load_training_data
    from emotion_pipeline.stages.all import build_dataset_and_features
    from emotion_pipeline.stages.train import training_data_fingerprint

    build_dataset_and_features(config)
    root = open_storage(config.root)
    rows = catalog.read_dataset(root)[["image_id", "source_key", "status", "label"]]
    data = load_training_data(root, config.min_rows_per_class)
    rows = rows.merge(data.frame[["image_id", "split"]], on="image_id", how="left")
    rows = rows.sort_values("source_key").reset_index(drop=True)
    rows = rows.astype(object).where(rows.notna(), None)
    vectors, index = catalog.read_features(root)
    present = set(rows["image_id"])
    # One vector per photo, as training reads them: the first row of an image_id (a moved photo is
    # embedded again under its new name; on some CPUs its new vector differs from the first by ~1e-7).
    first = index.drop_duplicates("image_id")
    by_id = {i: vectors[r] for i, r in zip(first["image_id"], first["row"]) if i in present}
    return rows, by_id, training_data_fingerprint(_Run(root, config))


class _Run:  # what the training fingerprint hook reads of a StageRun
    def __init__(self, root, config):
        self.root, self.config = root, config


def training_set(rows: pd.DataFrame, vectors: dict[str, np.ndarray]) -> tuple[set, dict]:
    trained = rows[rows["split"].notna()]
    return ({(r.image_id, r.label, r.split) for r in trained.itertuples()},
            {i: vectors[i] for i in trained["image_id"]})


@pytest.mark.integration
@pytest.mark.timeout(1200)
def test_incremental_runs_equal_runs_from_scratch(tmp_path):
    src = tmp_path / "src"
    faces = sorted(p.name for p in FACES.glob("img*.jpg"))
    copy_photos(FACES, src, faces[:6])
    copy_photos(FLICKR, src, flickr_names(2))

    def add_batch():
        copy_photos(FACES, src / "batch2", faces[6:9])
        rotate_in_place(src / faces[1])

    def rename_and_move():
        shutil.move(src / faces[2], src / "renamed.jpg")
        (src / "sub").mkdir()
        shutil.move(src / faces[3], src / "sub" / faces[3])

    def delete_and_copy():
        (src / faces[4]).unlink()
        shutil.copy(src / faces[5], src / "0_copy_sorts_first.jpg")

    steps = [("add a batch, edit a photo in place", add_batch, {}),
             ("rename one, move one into a sub-folder", rename_and_move, {}),
             ("delete one, add a byte-identical copy", delete_and_copy, {}),
             ("change the detector", lambda: None, {"detector": "yunet"}),
             ("change embed_input", lambda: None, {"detector": "yunet", "embed_input": "photo"})]

    check_against_scratch(steps, lambda name, **knobs: settings(src, tmp_path / name, **knobs))


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_incremental_runs_equal_runs_from_scratch_on_gcs(tmp_path, gcs_bucket):
    """A shorter sequence with the photos and both roots in a bucket (the real client, the emulator)."""
    source = open_storage(f"gs://{gcs_bucket}/photos")
    faces = sorted(p.name for p in FACES.glob("img*.jpg"))
    for name in faces[:6]:
        source.write_bytes(name, (FACES / name).read_bytes())

    def add_batch_and_edit():
        for name in faces[6:8]:
            source.write_bytes(f"batch2/{name}", (FACES / name).read_bytes())
        rotated = tmp_path / "rotated.jpg"
        shutil.copy(FACES / faces[1], rotated)
        rotate_in_place(rotated)
        source.write_bytes(faces[1], rotated.read_bytes())  # a new generation of the same object

    def rename_delete_and_copy():
        source.write_bytes("renamed.jpg", source.read_bytes(faces[2]))
        source.delete(faces[2])
        source.delete(faces[4])
        source.write_bytes("0_copy_sorts_first.jpg", source.read_bytes(faces[5]))

    steps = [("add a batch, edit a photo in place", add_batch_and_edit, {}),
             ("rename one, delete one, add a byte-identical copy", rename_delete_and_copy, {})]
    check_against_scratch(steps, lambda name, **knobs: settings(source.uri, f"gs://{gcs_bucket}/{name}", **knobs))


def check_against_scratch(steps, config_for) -> None:
    """Apply each (description, change, knobs) to the source; after each, run incrementally on root
    A and from scratch on a fresh root, and compare rows, vectors and the training fingerprint."""
    rows, vectors, last_fingerprint = outcome(config_for("A"))
    last_training = training_set(rows, vectors)
    for number, (what, change, knobs) in enumerate(steps):
        change()
        rows_a, vectors_a, fingerprint_a = outcome(config_for("A", **knobs))
        rows_b, vectors_b, fingerprint_b = outcome(config_for(f"B{number}", **knobs))
        pd.testing.assert_frame_equal(rows_a, rows_b, obj=what)
        assert vectors_a.keys() == vectors_b.keys(), what
        for image_id in vectors_a:
            np.testing.assert_allclose(vectors_a[image_id], vectors_b[image_id], atol=1e-5, err_msg=what)
        # The training rows' part of the fingerprint must match; its vectors' part hashes their bytes,
        # which match across roots only where the CPU's kernels round a row the same whatever batch it
        # is embedded in (Intel Xeon: yes; AMD EPYC: ~1e-7 apart, compared above to 1e-5). Within one
        # root a photo's vector is never recomputed, so its bytes, and the retraining decision, hold.
        assert fingerprint_a.split("-")[0] == fingerprint_b.split("-")[0], what
        # Training would run again exactly when its rows (id, label, split) or their vectors changed.
        ids, by_id = training_set(rows_a, vectors_a)
        changed = ids != last_training[0] or any(
            not np.array_equal(v, last_training[1].get(i)) for i, v in by_id.items())
        assert (fingerprint_a != last_fingerprint) == changed, what
        last_fingerprint, last_training = fingerprint_a, (ids, by_id)


SMALL_FACES = sorted(p.name for p in FACES.glob("img*.jpg"))


def small_training_root(tmp_path, monkeypatch, **settings) -> PipelineConfig:
    """40 of the shared faces in a new root with its own state home (tuner checkpoints), trained on
    random weights with a 2-epoch search; ``add_second_batch`` lands 8 more."""
    monkeypatch.setenv("EMOTION_PIPELINE_HOME", str(tmp_path / "state"))
    copy_photos(FACES, tmp_path / "src", SMALL_FACES[:40])
    return PipelineConfig(source=str(tmp_path / "src"), root=str(tmp_path / "out"), detector="skip",
                          embed_input="photo", embed_weights="none", tuner_max_epochs=2, min_rows_per_class=3,
                          shard_size=20, **settings)


def add_second_batch(config: PipelineConfig) -> None:
    copy_photos(FACES, Path(config.source) / "batch2", SMALL_FACES[40:48])


def train(config: PipelineConfig):
    """Everything training reads, then the train stage, in this process."""
    from emotion_pipeline.stages.all import build_dataset_and_features

    build_dataset_and_features(config)
    return run_stage("train", config, run_id="in-process")


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_a_new_batch_refits_the_champion_and_force_searches_afresh(tmp_path, monkeypatch):
    """Retraining after a batch used to repeat the whole search (88% of a cold run); a forced
    retrain reloaded the finished search (same tuner project) instead of searching again."""
    from emotion_pipeline.core.config import state_home

    # promote_below_baseline: a refit of the champion needs one, random weights or not.
    config = small_training_root(tmp_path, monkeypatch, promote_below_baseline=True)
    first = train(config)
    assert first.trained and first.mode == "search" and first.trials > 0, first
    searches = set((state_home() / "tuner").iterdir())

    add_second_batch(config)
    refit = train(config)
    assert refit.mode == "refit" and refit.trials == 0, refit
    assert refit.model_version == "2" and refit.data_fingerprint != first.data_fingerprint
    strip = {k: v for k, v in first.best_hyperparameters.items() if not k.startswith("tuner/")}
    assert refit.best_hyperparameters == strip
    assert set((state_home() / "tuner").iterdir()) == searches  # no search ran

    forced = train(config.replace(force_train=True))
    assert forced.mode == "search" and forced.mode_reason == "force_train" and forced.trials > 0
    assert len(set((state_home() / "tuner").iterdir()) - searches) == 1  # a fresh search, not the old one
    assert forced.model_version == "3"


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_a_new_batch_refits_the_last_model_when_none_was_promoted(tmp_path, monkeypatch):
    """With no champion (every model below its baseline, as with random embedding weights, or one
    waiting for a person's approval) each new batch paid a whole search again: 373 of the 507 s of a
    +10% run at 2,000 photos (make bench-scale). It refits the newest version's hyperparameters."""
    # approve_promotion: every model waits for a person, so none becomes champion.
    config = small_training_root(tmp_path, monkeypatch, promote_below_baseline=True, approve_promotion=True)
    first = train(config)
    assert first.trained and first.mode == "search" and not first.champion, first
    add_second_batch(config)
    refit = train(config)
    assert refit.mode == "refit" and refit.trials == 0 and refit.model_version == "2", refit
    strip = {k: v for k, v in first.best_hyperparameters.items() if not k.startswith("tuner/")}
    assert refit.best_hyperparameters == strip


def test_a_run_before_any_photo_landed_succeeds_with_nothing(tmp_path):
    """A scheduled run for a date whose batch folder is still empty, on a new root: every stage
    succeeds (assemble used to fail with "No objects to concatenate" on every retry), no model."""
    from emotion_pipeline.stages.all import run_all_stages

    (tmp_path / "photos" / "2026-11-02").mkdir(parents=True)  # another date's folder, not this run's
    config = PipelineConfig(source=str(tmp_path / "photos"), root=str(tmp_path / "out"), batch="2026-11-01",
                            embed_weights="none")
    results = run_all_stages(config)
    root = open_storage(config.root)
    assert results["discover"].images == 0 and len(catalog.read_dataset(root)) == 0
    assert results["assemble_features"].vectors == 0
    assert results["train"].trained is False and results["train"].reason
    assert results["evaluate"].evaluated is False
