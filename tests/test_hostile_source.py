"""No entry of a source folder stops discovery or resize, and none is silently ignored.

Broken and looping links, a named pipe, a socket, photos in formats the pipeline cannot take, files
that are not photos, and (as an unprivileged process) a file and a folder it may not read: every
entry named like a photo gets a row with its status, every other entry is counted with its reason,
and nothing blocks (a FIFO opened for reading waits forever for a writer)."""
import subprocess

import pandas as pd
import pytest

from emotion_pipeline.core import catalog
from emotion_pipeline.core.config import PipelineConfig
from emotion_pipeline.core.runner import run_stage
from emotion_pipeline.core.storage import open_storage
from tests.bad_inputs import without_file_privileges, write_hostile_entries, write_unreadable_entries
from tests.conftest import FLICKR, copy_photos, flickr_names
from tests.pipeline_run import CLI

pytestmark = pytest.mark.timeout(180)  # a blocked read fails the test instead of hanging CI


def metadata_of(root_uri: str) -> pd.DataFrame:
    root = open_storage(root_uri)
    return pd.read_parquet(root.uri_for(f"{catalog.metadata(0)}.parquet")).set_index("source_key")


def test_every_hostile_entry_gets_a_row_or_a_skip_reason_and_nothing_blocks(tmp_path):
    src = tmp_path / "src"
    good = copy_photos(FLICKR, src, flickr_names(3))
    rows, skipped = write_hostile_entries(src, FLICKR / flickr_names(1, offset=200)[0])
    config = PipelineConfig(source=str(src), root=str(tmp_path / "root"), shard_size=100)

    found = run_stage("discover", config)
    assert found.images == len(good) + len(rows) and found.skipped == skipped
    resized = run_stage("resize", config, 0)
    metadata = metadata_of(config.root)
    assert sorted(metadata.index) == sorted([p.name for p in good] + list(rows))
    for name, status in rows.items():
        assert metadata.loc[name, "status"] == status, (name, metadata.loc[name, "error"])
        if status != "ok":
            assert metadata.loc[name, "error"], name
    assert "pipe" in metadata.loc["pipe.jpg", "error"] and "socket" in metadata.loc["socket.png", "error"]
    assert resized.statuses["ok"] == len(good) + 2  # the link to a photo is that photo; back\slash.jpg

    listed = pd.read_parquet(open_storage(config.root).uri_for(f"{catalog.SKIPPED_ENTRIES}.parquet"))
    assert sorted(listed["source_key"]) == ["README", "clip.mp4", "notes.txt"]

    again = run_stage("discover", config)  # nothing changed: nothing new, nothing read
    assert again.new_images == 0 and again.hashed == 0 and again.skipped == skipped


def test_photo_extensions_decide_what_is_a_photo(tmp_path):
    src = tmp_path / "src"
    copy_photos(FLICKR, src, flickr_names(2))
    write_hostile_entries(src, FLICKR / flickr_names(1, offset=200)[0])
    config = PipelineConfig(source=str(src), root=str(tmp_path / "root"), photo_extensions=("jpg", ".PNG"))
    found = run_stage("discover", config)
    assert found.images == 2 + 6  # the photos, three links, back\slash.jpg, the pipe and the socket
    assert found.skipped["extension .gif"] == 1 and found.skipped["extension .heic"] == 1


def test_unreadable_file_and_folder_as_an_unprivileged_process(tmp_path):
    src, root = tmp_path / "src", tmp_path / "root"
    good = copy_photos(FLICKR, src, flickr_names(2))
    rows, skipped = write_unreadable_entries(src, good[0])
    try:
        denied = subprocess.run(["cat", str(src / "unreadable.jpg")], preexec_fn=without_file_privileges,
                                capture_output=True)
        assert denied.returncode != 0  # the test's premise: this process really may not read it
        for args in (["discover"], ["resize", "--shard", "0"]):
            done = subprocess.run([CLI, "stage", *args, "--source", str(src), "--root", str(root)],
                                  preexec_fn=without_file_privileges, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    finally:
        (src / "locked").chmod(0o755)

    metadata = metadata_of(str(root))
    assert sorted(metadata.index) == sorted([p.name for p in good] + list(rows))
    assert metadata.loc["unreadable.jpg", "status"] == "unreadable"
    assert "Permission denied" in metadata.loc["unreadable.jpg", "error"]
    assert set(metadata.loc[[p.name for p in good], "status"]) == {"ok"}
    listed = pd.read_parquet(root / f"{catalog.SKIPPED_ENTRIES}.parquet")
    assert list(listed["source_key"]) == ["locked"] and listed["reason"][0].startswith("unreadable folder")
    assert skipped == {"unreadable folder": 1}
