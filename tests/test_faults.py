"""Faults injected for real, each judged by comparing outputs (rows, content hashes), never logs:
storage errors through a faulty proxy in front of the GCS emulator, a full and a read-only disk
(real tmpfs mounts), hostile names, a stage process killed with SIGKILL mid-shard, two runs holding
one root, and a training killed mid-search."""
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from emotion_pipeline.core import catalog
from emotion_pipeline.core.config import PipelineConfig
from emotion_pipeline.core.runner import run_stage
from emotion_pipeline.core.storage import GCSStorage, LocalStorage, StorageError, _gcs_client, open_storage
from tests.conftest import FLICKR, copy_photos, flickr_names
from tests.faulty_proxy import FaultyProxy

EMOTION_PIPELINE = str(Path(sys.executable).parent / "emotion-pipeline")


def first_half(config, source=None, root=None) -> pd.DataFrame:
    """discover -> resize every pending shard -> merge; returns the dataset table."""
    found = run_stage("discover", config, source=source, root=root)
    for shard in found.pending:
        run_stage("resize", config, shard, source=source, root=root)
    run_stage("merge", config, root=root)
    root = root or open_storage(config.root)
    return comparable(pd.read_parquet(io.BytesIO(root.read_bytes("datasets/final_emotion_dataset.parquet"))))


def comparable(dataset: pd.DataFrame) -> pd.DataFrame:
    """The dataset without the columns that name the root (two roots, same content)."""
    return dataset.drop(columns=["processed_uri"]).sort_values("image_id").reset_index(drop=True)


def digests(storage, prefix: str) -> dict[str, str]:
    return {o.key: hashlib.sha256(storage.read_bytes(o.key)).hexdigest() for o in storage.list(prefix)}


def upload(bucket: str, prefix: str, files: dict[str, bytes]) -> None:
    client = _gcs_client()
    for name, data in files.items():
        client.bucket(bucket).blob(f"{prefix}/{name}").upload_from_string(data)


# -- 2. storage errors ---------------------------------------------------------------------------

def every_third_request_fails(n: int, method: str, path: str):
    return [None, None, [503, 429, "drop"][(n // 3) % 3]][n % 3]


def test_transient_gcs_errors_are_retried_and_outputs_equal_a_clean_run(gcs_emulator, gcs_bucket):
    upload(gcs_bucket, "photos", {n: (FLICKR / n).read_bytes() for n in flickr_names(6)})
    source_uri = f"gs://{gcs_bucket}/photos"
    clean = first_half(PipelineConfig(source=source_uri, root=f"gs://{gcs_bucket}/clean", shard_size=4),
                       root=GCSStorage(f"gs://{gcs_bucket}/clean"))

    with FaultyProxy(gcs_emulator, every_third_request_fails) as proxy:
        source = GCSStorage(source_uri, client=proxy.client())
        root = GCSStorage(f"gs://{gcs_bucket}/faulty", client=proxy.client())
        config = PipelineConfig(source=source_uri, root=root.uri, shard_size=4)
        faulty = first_half(config, source=source, root=root)

    assert proxy.counts[503] and proxy.counts[429] and proxy.counts["drop"]  # the faults happened
    assert proxy.faulted_methods["POST"] and proxy.faulted_methods["GET"]  # on uploads and downloads
    pd.testing.assert_frame_equal(faulty, clean)
    direct = GCSStorage(f"gs://{gcs_bucket}/faulty")
    clean_root = GCSStorage(f"gs://{gcs_bucket}/clean")
    assert list(digests(direct, "processed").values()) == list(digests(clean_root, "processed").values())


def test_gcs_failing_after_its_retries_fails_the_task_not_the_photos(gcs_emulator, gcs_bucket):
    """A server error the client does not retry (or one still failing after its retries) was taken
    for the photo's own fault: every photo of the shard 'failed' under a done marker, never retried."""
    upload(gcs_bucket, "photos", {n: (FLICKR / n).read_bytes() for n in flickr_names(3)})
    source_uri, root = f"gs://{gcs_bucket}/photos", GCSStorage(f"gs://{gcs_bucket}/out")
    config = PipelineConfig(source=source_uri, root=root.uri, shard_size=4)
    run_stage("discover", config, source=GCSStorage(source_uri), root=root)

    def photo_downloads_fail(n, method, path):
        return 400 if method == "GET" and "alt=media" in path and "/photos%2F" in path else None

    with FaultyProxy(gcs_emulator, photo_downloads_fail) as proxy:
        with pytest.raises(StorageError, match="GCS did not serve .*photos.*BadRequest"):
            run_stage("resize", config, 0, source=GCSStorage(source_uri, client=proxy.client()), root=root)
    assert proxy.counts[400]
    assert not root.exists(catalog.done_marker(catalog.RESIZE_FOLDER, 0))  # nothing recorded: a retry redoes it


def test_permanent_gcs_errors_fail_at_once_with_what_to_fix(gcs_emulator, gcs_bucket):
    with FaultyProxy(gcs_emulator, lambda n, method, path: 403) as proxy:
        source = GCSStorage(f"gs://{gcs_bucket}/photos", client=proxy.client())
        config = PipelineConfig(source=source.uri, root=f"gs://{gcs_bucket}/out")
        with pytest.raises(StorageError, match="Storage Object Admin"):
            run_stage("discover", config, source=source, root=GCSStorage(config.root, client=proxy.client()))
    paths = [path for _, path, _ in proxy.requests]
    assert len(paths) == len(set(paths)), proxy.requests  # each request denied once: never retried

    config = PipelineConfig(source="gs://no-such-bucket-here/photos", root=f"gs://{gcs_bucket}/out")
    with pytest.raises(StorageError, match="does not exist: create it first"):
        run_stage("discover", config)


# -- 4. a full disk, an unwritable folder -------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A real 2 MiB tmpfs (needs root, as on the CI machines); unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True,
                            text=True)
    assert result.returncode == 0, f"this test mounts a tmpfs and needs root: {result.stderr}"
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_and_read_only_folder_fail_clearly_and_keep_the_previous_outputs(tmp_path, small_disk):
    src = tmp_path / "photos"
    copy_photos(FLICKR, src, flickr_names(5))
    config = PipelineConfig(source=str(src), root=str(small_disk / "out"), shard_size=5)
    first_half(config)
    before = outputs(config)

    copy_photos(FLICKR, src, flickr_names(40, offset=5))
    filler = small_disk / "filler"
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    filler.write_bytes(b"\0" * (free - 48 * 1024))  # leave room for the manifest, not for 40 photos
    with pytest.raises(StorageError, match="No space left on device"):
        first_half(config)
    after = outputs(config)
    assert {k: after[k] for k in before} == before  # every earlier output intact
    assert not list(small_disk.rglob("*.tmp"))  # no half-written file left

    filler.unlink()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    with pytest.raises(StorageError, match="Read-only file system"):
        first_half(config)
    assert outputs(config) == after
    subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    assert len(first_half(config)) == 45  # space back: the run completes


def outputs(config) -> dict[str, str]:
    """Digests of every output but the manifest (which a failed run may extend: rows are only added)
    and the lease files (who held the root last: bookkeeping, not outputs)."""
    return {k: v for k, v in digests(LocalStorage(config.root), "").items()
            if not k.startswith(("manifest/", "locks/"))}


# -- 5. hostile names ------------------------------------------------------------------------------

def test_hostile_names_stay_inside_the_root_and_duplicates_are_found_by_content(gcs_emulator, gcs_bucket, tmp_path):
    photos = [(FLICKR / name).read_bytes() for name in flickr_names(6)]
    names = {
        "with space.jpg": photos[0],
        "ünïcödé 写真 😀.jpg": photos[1],
        "deep//double//slash.jpg": photos[2],
        ("x" * 900) + ".jpg": photos[3],  # GCS names go up to 1,024 bytes
        "..dots..jpg": photos[4],
        "-rf --no-preserve-root.jpg": photos[5],
        "copy of with space.JPG": photos[0],  # the same photo under a second name
    }
    # (gcp-storage-emulator cannot store names with ".." segments; GCS can: they are read as they
    # are and never used to build an output key, which check_key() would refuse anyway.)
    upload(gcs_bucket, "photos", names)
    config = PipelineConfig(source=f"gs://{gcs_bucket}/photos", root=f"gs://{gcs_bucket}/out")
    check_hostile(first_half(config), names)
    written = [b.name for b in _gcs_client().list_blobs(gcs_bucket)]
    assert all(n.startswith("photos/") or n.startswith("out/") for n in written)

    # The local file system's own hostile names: a newline, 250 bytes, nested folders.
    local = {"line\nbreak.jpg": photos[0], "a" * 246 + ".jpg": photos[1], "x/y/z/é à.jpg": photos[2],
             "same.jpg": photos[3], "dup/same again.jpg": photos[3]}
    for name, data in local.items():
        (tmp_path / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / name).write_bytes(data)
    config = PipelineConfig(source=str(tmp_path / "src"), root=str(tmp_path / "out"))
    dataset = check_hostile(first_half(config), local, same_photo=("dup/same again.jpg", "same.jpg"))
    written = {p.relative_to(tmp_path).parts[0] for p in tmp_path.rglob("*") if p.is_file()}
    assert written == {"src", "out"}  # nothing outside the root
    assert pd.read_csv(tmp_path / "out/datasets/final_emotion_dataset.csv")["source_key"].tolist().count(
        "line\nbreak.jpg") == 1  # the CSV survives a newline in a name
    assert len(dataset) == len(local)


def check_hostile(dataset, names, same_photo=("copy of with space.JPG", "with space.jpg")):
    dataset = dataset.set_index("source_key")
    assert set(dataset.index) == set(names)  # every file accounted for, by its exact name
    # Resized and waiting for annotate (which first_half does not run): "pending".
    pair = dataset.loc[list(same_photo)].sort_values("status")  # "duplicate" < "pending"
    assert pair["status"].tolist() == ["duplicate", "pending"]  # recognised by content, whatever the names
    assert pair["duplicate_of"].iloc[0] == pair.index[1]  # names the photo it repeats
    others = dataset.drop(index=list(same_photo))[["status", "error"]]
    assert others["status"].eq("pending").all() and others["error"].eq("waiting for annotate").all(), \
        others.to_dict("index")
    return dataset


# -- 1. a stage process killed mid-shard ---------------------------------------------------------

def test_resize_killed_mid_shard_leaves_no_partial_file_and_the_retry_equals_an_undisturbed_run(tmp_path):
    src = tmp_path / "photos"
    copy_photos(FLICKR, src, flickr_names(400))
    args = ["--source", str(src), "--shard-size", "400"]
    for root in ("killed", "clean"):
        subprocess.run([EMOTION_PIPELINE, "stage", "discover", *args, "--root", str(tmp_path / root)],
                       check=True, capture_output=True)

    processed = tmp_path / "killed" / "processed"
    victim = subprocess.Popen([EMOTION_PIPELINE, "stage", "resize", "--shard", "0", *args, "--root",
                               str(tmp_path / "killed")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    written = 0
    while victim.poll() is None and written < 50:  # some photos done, most not: mid-shard
        written = len(list(processed.glob("*.jpg"))) if processed.is_dir() else 0
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL and 0 < len(list(processed.glob("*.jpg"))) < 400
    assert not (tmp_path / "killed" / "metadata" / "shard=00000" / "_done.json").exists()

    for root in ("killed", "clean"):  # the retry, and an undisturbed run to compare with
        subprocess.run([EMOTION_PIPELINE, "stage", "resize", "--shard", "0", *args, "--root", str(tmp_path / root)],
                       check=True, capture_output=True)
        subprocess.run([EMOTION_PIPELINE, "stage", "merge", *args, "--root", str(tmp_path / root)],
                       check=True, capture_output=True)
    killed, clean = LocalStorage(tmp_path / "killed"), LocalStorage(tmp_path / "clean")
    assert digests(killed, "processed") == digests(clean, "processed")
    assert not list((tmp_path / "killed").rglob("*.tmp"))  # the dead writer's temp files are gone
    kept = pd.read_parquet(tmp_path / "killed/datasets/final_emotion_dataset.parquet")
    assert len(kept) == kept["image_id"].nunique() == 400  # nothing lost, nothing twice
    pd.testing.assert_frame_equal(
        comparable(kept), comparable(pd.read_parquet(tmp_path / "clean/datasets/final_emotion_dataset.parquet")))


def test_embed_killed_mid_shard_leaves_no_vectors_and_the_retry_equals_an_undisturbed_run(tmp_path):
    src = tmp_path / "photos"
    copy_photos(FLICKR, src, flickr_names(48, offset=40))  # two batches of 32 and 16
    # yunet: the fastest detector, so the annotations this test needs cost little.
    args = ["--source", str(src), "--shard-size", "48", "--detector", "yunet", "--embed-weights", "none"]
    killed = tmp_path / "killed"
    for stage in ("discover", "resize", "annotate"):
        subprocess.run([EMOTION_PIPELINE, "stage", stage, *args, "--root", str(killed),
                        *(["--shard", "0"] if stage != "discover" else [])], check=True, capture_output=True)
    shutil.copytree(killed, tmp_path / "clean")  # the same annotated root, for the undisturbed run

    victim = subprocess.Popen([EMOTION_PIPELINE, "stage", "embed", "--shard", "0", *args, "--root", str(killed)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(victim.stdout), daemon=True).start()
    deadline = time.monotonic() + 300
    # The first batch's progress line: vectors computed in memory, the shard not finished.
    while not any("embed shard 0: 32/" in line for line in lines):
        assert victim.poll() is None and time.monotonic() < deadline, "".join(lines[-30:])
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    shard = killed / "features" / "shard=00000"
    assert not (shard / "_done.json").exists() and not (shard / "vectors.npy").exists()

    for root in (killed, tmp_path / "clean"):  # the retry, and an undisturbed run to compare with
        for stage in (["embed", "--shard", "0"], ["assemble_features"]):
            subprocess.run([EMOTION_PIPELINE, "stage", *stage, *args, "--root", str(root)],
                           check=True, capture_output=True)
    retried, clean = LocalStorage(killed), LocalStorage(tmp_path / "clean")
    # Vectors and index byte for byte (the assembly marker names its root, so it differs by design).
    same = {k: v for k, v in digests(retried, "features").items() if k != "features/_done.json"}
    assert same == {k: v for k, v in digests(clean, "features").items() if k != "features/_done.json"}
    assert not list(killed.rglob("*.tmp"))
    index = pd.read_parquet(killed / "features/image_index.parquet")
    assert len(index) == index["image_id"].nunique() == len(np.load(killed / "features/image_vectors.npy"))


# -- 3. two runs on one root -------------------------------------------------------------------------

HOLD = textwrap.dedent("""
    import json, sys, time
    from emotion_pipeline.core.storage import open_storage
    root, log, hold = sys.argv[1], sys.argv[2], float(sys.argv[3])
    with open_storage(root).lease("run", poll=0.1):
        with open(log, "a") as f:
            f.write(json.dumps(["in", time.time()]) + "\\n")
        time.sleep(hold)
        with open(log, "a") as f:
            f.write(json.dumps(["out", time.time()]) + "\\n")
""")


def hold_lease(root: str, log: Path, seconds: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLD, root, str(log), str(seconds)])


def test_runs_on_one_root_take_turns_and_a_killed_holder_frees_the_root(tmp_path):
    # Local roots only: gcp-storage-emulator ignores ifGenerationMatch, which the GCS lease rests on.
    root = str(tmp_path / "out")
    log = tmp_path / "lease.log"
    holders = [hold_lease(root, log, 1.5) for _ in range(3)]
    assert all(h.wait(timeout=120) == 0 for h in holders)
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e for e, _ in events] == ["in", "out"] * 3  # never two holders at once

    # A holder killed with SIGKILL: the kernel drops its flock, the next run gets the root at once.
    log.unlink()
    dead = hold_lease(root, log, 600)
    while not log.exists():
        time.sleep(0.1)
    dead.send_signal(signal.SIGKILL)
    dead.wait()
    survivor = hold_lease(root, log, 0)
    assert survivor.wait(timeout=120) == 0
    assert [e for e, _ in (json.loads(line) for line in log.read_text().splitlines())] == ["in", "in", "out"]


# -- 6. a training killed mid-search ------------------------------------------------------------

TRAIN = textwrap.dedent("""
    import json, sys
    from emotion_pipeline.core.config import PipelineConfig
    from emotion_pipeline.core.runner import run_stage
    config = PipelineConfig(source=sys.argv[1], root=sys.argv[1], tuner_max_epochs=4, min_rows_per_class=3)
    print(json.dumps(run_stage("train", config).to_dict(), default=str))
""")


def write_training_inputs(root: Path, rows: int = 150, signal: str = "dimension") -> None:
    """A dataset and its vectors as merge and embed write them: 2048-d vectors with a class signal,
    in one dimension per class, or (``signal="offset"``) as the class index added to every dimension:
    the logistic baseline reads that, the head's LayerNormalization erases it, so the head loses."""
    import numpy as np

    from emotion_pipeline.core import catalog
    from emotion_pipeline.core.arrays import write_array
    from emotion_pipeline.core.config import CLASSES
    from emotion_pipeline.core.tables import write_table

    rng = np.random.default_rng(0)
    labels = [CLASSES[i % len(CLASSES)] for i in range(rows)]
    ids = [f"{i:020d}" for i in range(rows)]
    vectors = rng.normal(size=(rows, 2048)).astype(np.float32)
    classes = np.array([CLASSES.index(label) for label in labels])
    if signal == "offset":
        vectors += classes[:, None].astype(np.float32)
    else:
        vectors[np.arange(rows), classes] += 3
    storage = LocalStorage(root)
    write_table(storage, catalog.DATASET, pd.DataFrame(
        {"image_id": ids, "source_key": [f"{i}.jpg" for i in ids], "label": labels, "status": "ok"}))
    write_array(storage, catalog.IMAGE_VECTORS, vectors)
    write_table(storage, catalog.IMAGE_INDEX, pd.DataFrame({"image_id": ids, "row": range(rows)}))


def test_training_killed_mid_search_restarts_cleanly_and_its_mlflow_run_is_marked_failed(tmp_path):
    from mlflow.tracking import MlflowClient

    root = tmp_path / "out"
    write_training_inputs(root)
    env = {**os.environ, "EMOTION_PIPELINE_HOME": str(tmp_path / "state")}
    env.pop("MLFLOW_TRACKING_URI", None)
    victim = subprocess.Popen([sys.executable, "-c", TRAIN, str(root)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tuner = tmp_path / "state" / "tuner"
    while victim.poll() is None and not list(tuner.glob("*/trial_*/checkpoint*")):
        time.sleep(0.05)  # killed once the first trial has saved a model: mid-search
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL

    client = MlflowClient(f"sqlite:///{root / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("emotion-pipeline")
    crashed = client.search_runs([experiment.experiment_id])
    assert [r.info.status for r in crashed] == ["RUNNING"]  # what a crash leaves behind

    done = subprocess.run([sys.executable, "-c", TRAIN, str(root)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["trained"] is True and result["model_version"] == "1"
    runs = {r.info.run_id: r for r in client.search_runs([experiment.experiment_id])}
    assert runs[crashed[0].info.run_id].info.status == "FAILED"
    assert "abandoned" in runs[crashed[0].info.run_id].data.tags["failure"]
    assert runs[result["run_id"]].info.status == "FINISHED"
    assert not [r for r in runs.values() if r.info.status == "RUNNING"]
    assert [v.version for v in client.search_model_versions("name='emotion-classifier'")] == [1]
