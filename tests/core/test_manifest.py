import shutil

import pytest

from emotion_pipeline.core.config import ConfigError, PipelineConfig
from emotion_pipeline.core.manifest import discover, shard_fingerprint, shard_rows
from emotion_pipeline.core.storage import LocalStorage
from tests.conftest import FLICKR, copy_photos, flickr_names


@pytest.fixture
def folders(tmp_path):
    return LocalStorage(tmp_path / "src"), LocalStorage(tmp_path / "root"), tmp_path / "src"


def run(folders, **kw):
    source, root, _ = folders
    return discover(PipelineConfig(source=source.uri, root=root.uri, **kw), source, root)


def test_ids_are_content_hashes_and_shards_follow_sorted_names(folders):
    copy_photos(FLICKR, folders[2], flickr_names(5))
    (folders[2] / "notes.txt").write_text("not an image: never listed")
    found = run(folders, shard_size=2)
    manifest = found.manifest
    assert list(manifest["source_key"]) == flickr_names(5)
    assert list(manifest["shard"]) == [0, 0, 1, 1, 2]
    assert manifest["image_id"].is_unique and manifest["image_id"].str.len().eq(20).all()
    assert found.rehashed == 5 and found.new_files == 5 and found.shards == [0, 1, 2]


def test_new_files_form_new_shards_and_old_shards_keep_their_members(folders):
    names = flickr_names(6)
    copy_photos(FLICKR, folders[2], names[1:5])
    before = run(folders, shard_size=3).manifest
    # A new batch, including a name that sorts before every existing one.
    copy_photos(FLICKR, folders[2], [names[0], names[5]])
    after = run(folders, shard_size=3)
    old = after.manifest[after.manifest["source_key"].isin(before["source_key"])]
    assert old[["source_key", "image_id", "shard"]].reset_index(drop=True).equals(
        before[["source_key", "image_id", "shard"]].reset_index(drop=True))
    new = after.manifest[~after.manifest["source_key"].isin(before["source_key"])]
    assert set(new["shard"]) == {2} and after.new_files == 2
    assert after.rehashed == 2  # unchanged files are not read again


def test_rediscovery_reads_nothing(folders):
    copy_photos(FLICKR, folders[2], flickr_names(3))
    run(folders)
    again = run(folders)
    assert again.rehashed == 0 and again.new_files == 0


def test_same_photo_under_two_names_is_one_id_and_one_duplicate(folders):
    name = flickr_names(1)[0]
    copy_photos(FLICKR, folders[2], [name])
    (folders[2] / "sub dir").mkdir()
    shutil.copy2(FLICKR / name, folders[2] / "sub dir" / "copy ünïcode.JPG")
    manifest = run(folders).manifest.set_index("source_key")
    assert manifest.loc[name, "image_id"] == manifest.loc["sub dir/copy ünïcode.JPG", "image_id"]
    assert manifest.loc[name, "duplicate_of"] == ""
    assert manifest.loc["sub dir/copy ünïcode.JPG", "duplicate_of"] == name


def test_empty_files_are_not_duplicates_of_each_other(folders):
    folders[2].mkdir()
    (folders[2] / "a.jpg").write_bytes(b"")
    (folders[2] / "b.jpg").write_bytes(b"")
    manifest = run(folders).manifest
    assert manifest["image_id"].is_unique and (manifest["duplicate_of"] == "").all()


def test_removed_files_stay_in_their_shard_but_are_not_present(folders):
    paths = copy_photos(FLICKR, folders[2], flickr_names(3))
    run(folders)
    paths[1].unlink()
    found = run(folders)
    assert found.manifest["present"].tolist() == [True, False, True]


def test_limit_takes_the_first_names(folders):
    copy_photos(FLICKR, folders[2], flickr_names(4))
    assert list(run(folders, limit=2).manifest["source_key"]) == flickr_names(2)


def test_fingerprint_changes_with_members_and_params(folders):
    copy_photos(FLICKR, folders[2], flickr_names(2))
    rows = shard_rows(run(folders).manifest, 0)
    assert shard_fingerprint(rows, a=1) == shard_fingerprint(rows, a=1)
    assert shard_fingerprint(rows, a=1) != shard_fingerprint(rows, a=2)
    assert shard_fingerprint(rows, a=1) != shard_fingerprint(rows.iloc[:1], a=1)
    with pytest.raises(KeyError):
        shard_rows(rows, 9)


def test_a_batch_run_lists_its_folder_only_and_leaves_other_batches_as_they_were(folders):
    """Backfill by date: the run for D reads source/D/; the dataset keeps every batch seen so far."""
    names = flickr_names(5)
    copy_photos(FLICKR, folders[2] / "2026-11-01", names[:2])
    copy_photos(FLICKR, folders[2] / "2026-11-02", names[2:4])
    copy_photos(FLICKR, folders[2] / "2026-11-010", names[4:])  # a folder whose name extends the first
    first = run(folders, batch="2026-11-01", shard_size=10)
    assert sorted(first.manifest["source_key"]) == [f"2026-11-01/{n}" for n in names[:2]]
    second = run(folders, batch="{}/".format("2026-11-02"), shard_size=10)  # a trailing slash is the same
    assert second.new_files == 2 and second.manifest["present"].all() and second.shards == [0, 1]
    # The first batch's folder is gone from this machine (archived): a later batch run keeps its rows,
    (folders[2] / "2026-11-01" / names[0]).unlink()
    third = run(folders, batch="2026-11-010", shard_size=10)
    assert third.manifest.set_index("source_key")["present"].all()
    # ...and only a run over the whole source sees that it went.
    whole = run(folders, shard_size=10).manifest.set_index("source_key")["present"]
    assert not whole[f"2026-11-01/{names[0]}"] and whole.drop(f"2026-11-01/{names[0]}").all()
    # A batch folder that does not exist is a run with nothing new, not an error.
    assert run(folders, batch="2026-12-25", shard_size=10).new_files == 0
    with pytest.raises(ConfigError, match="inside the source"):
        run(folders, batch="../elsewhere")


def test_two_runs_discovering_at_once_lose_no_batch(tmp_path):
    """A backfill's run and a scheduled run overlap (Airflow's max_active_runs=1 does not cover
    backfills): both read-modify-write the manifest; without the root's lease one batch was lost."""
    import threading

    from emotion_pipeline.core.runner import run_stage

    src = tmp_path / "src"
    for batch, offset in (("a", 0), ("b", 200)):
        copy_photos(FLICKR, src / batch, flickr_names(200, offset=offset))
    configs = [PipelineConfig(source=str(src), root=str(tmp_path / "root"), batch=b, shard_size=50) for b in "ab"]
    run_stage("discover", configs[0].replace(root=str(tmp_path / "warm-up")))  # imports done: both really overlap
    start = threading.Barrier(2)

    def discover_batch(config):
        start.wait()
        run_stage("discover", config)

    threads = [threading.Thread(target=discover_batch, args=(c,)) for c in configs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    manifest = run(folders=(LocalStorage(src), LocalStorage(tmp_path / "root"), src), batch="a", shard_size=50).manifest
    assert len(manifest) == 400 and manifest["present"].all()
    assert sorted(manifest["shard"].unique()) == list(range(8))
