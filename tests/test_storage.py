import pytest

from emotion_pipeline.storage import GCSStorage, LocalStorage, StorageError, check_key, open_storage


@pytest.fixture(params=["local", "gcs"])
def storage(request, tmp_path):
    if request.param == "local":
        return LocalStorage(tmp_path / "root")
    bucket = request.getfixturevalue("gcs_bucket")
    return open_storage(f"gs://{bucket}/some/prefix")


def test_write_read_list_delete(storage):
    storage.write_bytes("a/b/one.jpg", b"1")
    storage.write_bytes("a/two.txt", b"22")
    storage.write_bytes("a/two.txt", b"333")  # overwrite
    assert storage.read_bytes("a/two.txt") == b"333"
    assert storage.exists("a/b/one.jpg") and not storage.exists("a/b/none.jpg")
    listed = {o.key: o.size for o in storage.list()}
    assert listed == {"a/b/one.jpg": 1, "a/two.txt": 3}
    assert [o.key for o in storage.list("a/b")] == ["a/b/one.jpg"]
    storage.delete("a/two.txt")
    storage.delete("a/two.txt")  # deleting twice is fine
    assert [o.key for o in storage.list()] == ["a/b/one.jpg"]
    with pytest.raises(FileNotFoundError):
        storage.read_bytes("a/two.txt")


def test_uri_for_names_the_object(storage):
    uri = storage.uri_for("x/y.jpg")
    assert uri.endswith("x/y.jpg")
    assert uri.startswith(storage.uri)


@pytest.mark.parametrize("key", ["../escape.jpg", "/etc/passwd", "a/../../b", "", "a\\b", "nul\x00byte"])
def test_keys_cannot_escape_the_root(key):
    with pytest.raises(ValueError):
        check_key(key)


def test_a_crash_during_write_keeps_the_old_file(tmp_path, monkeypatch):
    storage = LocalStorage(tmp_path)
    storage.write_bytes("out/table.csv", b"old")

    def crash(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("emotion_pipeline.storage.os.replace", crash)
    with pytest.raises(StorageError, match="No space left"):
        storage.write_bytes("out/table.csv", b"new")
    assert storage.read_bytes("out/table.csv") == b"old"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["table.csv"]  # no temp file left


def test_unwritable_target_is_a_clear_error(tmp_path):
    (tmp_path / "taken").write_bytes(b"a file where a folder should be")
    with pytest.raises(StorageError, match="cannot write"):
        LocalStorage(tmp_path).write_bytes("taken/x.bin", b"1")


def test_missing_bucket_fails_with_a_message(gcs_emulator):
    storage = GCSStorage("gs://no-such-bucket-here/x")
    with pytest.raises(StorageError, match="does not exist"):
        storage.write_bytes("a.txt", b"1")


def test_open_storage_rejects_other_schemes():
    with pytest.raises(ValueError, match="unsupported storage URI"):
        open_storage("s3://bucket/x")
