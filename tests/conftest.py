"""Shared fixtures: the real photos in ../shared (read only), and real services on loopback."""
from __future__ import annotations

import fcntl
import os
import pickle
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FLICKR = SHARED / "data" / "flickr30k_sample" / "images"
FACES = SHARED / "data" / "faces"

# DeepFace finds the shared emotion weights and detector files offline. It only reads there.
os.environ.setdefault("DEEPFACE_HOME", str(SHARED / "models" / "deepface"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _absl_handler_writes_to_the_real_stderr() -> None:
    """absl (TensorFlow's logging) makes one handler when first imported, writing to the sys.stderr of
    that moment: under pytest, pytest's capture file. Its close() closes that stream unless it is the
    sys.stderr of the later moment, and Airflow's logging setup closes every handler there is. So a
    test that imported TensorFlow, then one that built the DAG (importing Airflow) under capsys, closed
    pytest's own capture file and the worker died ("lost sys.stderr"). The real stderr is never closed."""
    import absl.logging

    absl.logging.get_absl_handler().python_handler.stream = sys.__stderr__


_absl_handler_writes_to_the_real_stderr()


@pytest.fixture(autouse=True, scope="module")
def mlflow_tracking_uri_as_it_was():
    """mlflow keeps the last ``set_tracking_uri`` process-wide (``tracking.use_experiment`` calls it):
    a test module that points it at a server it then stops must not leave the next module of its
    worker resolving ``models:/`` sources at that dead port (test_mlflow_auth, then test_model_uri)."""
    before = _mlflow_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI")
    yield
    utils = sys.modules.get("mlflow.tracking._tracking_service.utils")
    if utils is not None and _mlflow_tracking_uri() != before[0]:
        utils.set_tracking_uri(before[0])
    if before[1] is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before[1]


def _mlflow_tracking_uri() -> str | None:
    utils = sys.modules.get("mlflow.tracking._tracking_service.utils")
    return None if utils is None else utils._tracking_uri


@pytest.fixture(autouse=True, scope="session")
def isolated_state_home(tmp_path_factory):
    """Tuner checkpoints, Airflow and MLflow state of the tests never touch the user's ~/.emotion-pipeline."""
    os.environ["EMOTION_PIPELINE_HOME"] = str(tmp_path_factory.mktemp("state-home"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"service exited with {process.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def gcs_emulator():
    """A real GCS JSON API on loopback (gcp-storage-emulator, in memory); yields its URL."""
    port = free_port()
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "gcp-storage-emulator"), "start", "--host", "127.0.0.1",
         "--port", str(port), "--in-memory"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process)
        url = f"http://127.0.0.1:{port}"
        previous = os.environ.get("STORAGE_EMULATOR_HOST")
        os.environ["STORAGE_EMULATOR_HOST"] = url
        yield url
        if previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = previous
    finally:
        stop(process)


@pytest.fixture
def gcs_bucket(gcs_emulator, request):
    """A fresh bucket on the emulator; yields its name."""
    from emotion_pipeline.core.storage import _gcs_client

    name = f"test-{request.node.name.lower().replace('_', '-').replace('[', '-').replace(']', '')}"[:60].rstrip("-")
    client = _gcs_client()
    bucket = client.bucket(name)
    if bucket.exists():
        for blob in client.list_blobs(bucket):
            blob.delete()
    else:
        client.create_bucket(name)
    return name


@pytest.fixture
def smtp_sink(tmp_path):
    """A real SMTP server on loopback (aiosmtpd) storing every message in a Maildir."""
    import mailbox

    port = free_port()
    maildir = tmp_path / "maildir"
    process = subprocess.Popen(
        [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{port}",
         "-c", "aiosmtpd.handlers.Mailbox", str(maildir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process)
        # {maildir key: message}: keys are unique per delivered message
        yield port, lambda: dict(mailbox.Maildir(str(maildir), create=False).items()) if maildir.exists() else {}
    finally:
        stop(process)


@pytest.fixture(scope="session")
def trained_root(tmp_path_factory):
    """A storage root the whole pipeline ran on (in-process): a registered champion model, a report.

    Built once per test run: under pytest-xdist the first worker that needs it builds it in the run's
    shared folder while holding a lock, the others wait and read it (its users only read)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    shared = tmp_path_factory.getbasetemp().parent if worker else tmp_path_factory.getbasetemp()
    with open(shared / "trained.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        base, built = shared / "trained", shared / "trained" / "results.pickle"
        if not built.exists():
            config, results, reads = _train_a_root(base)
            (base / "reads.pickle").write_bytes(pickle.dumps(reads))
            built.write_bytes(pickle.dumps((config, results)))
        config, results = pickle.loads(built.read_bytes())
    assert results["train"].trained, results["train"]
    return config, results


@pytest.fixture(scope="session")
def trained_root_reads(trained_root) -> dict[tuple[str, int | None], dict[str, set[str]]]:
    """The keys each stage read on each shard while trained_root was built (``read_log.ReadLog.reads``)."""
    config, _ = trained_root
    return pickle.loads((Path(config.root).parent / "reads.pickle").read_bytes())


def _train_a_root(base: Path):
    from emotion_pipeline.core.config import PipelineConfig
    from emotion_pipeline.stages.all import run_all_stages
    from tests.read_log import ReadLog

    src = base / "photos"
    copy_photos(FLICKR, src, flickr_names(40, offset=200))
    copy_photos(FACES, src / "faces", sorted(p.name for p in FACES.glob("img*.jpg"))[:30])
    config = PipelineConfig(source=str(src), root=str(base / "out"), shard_size=40, embed_weights="none",
                            tuner_max_epochs=2, shap_images=1, shap_image_evals=40, min_rows_per_class=3,
                            captions=str(SHARED / "data" / "flickr30k_sample" / "captions.csv"),
                            caption_min_agree=1,  # 5 of these 40 photos have a caption label at 1, 1 at 2
                            soft_labels=True,  # a second head on DeepFace's scores, compared in the report
                            # Random weights on 70 photos may lose to the baseline: its users need a champion.
                            promote_below_baseline=True)
    # Every temp file or folder any stage (or MLflow, Keras, SHAP under it) makes lands here, so that
    # test_stages_leave_no_temp_files can see what was left behind.
    (base / "tmp").mkdir(parents=True)
    saved, tempfile.tempdir = tempfile.tempdir, str(base / "tmp")
    log = ReadLog(config.source, config.root)  # what each stage reads: tests/test_read_coverage.py
    try:
        results = run_all_stages(config, log.storages_for)
    finally:
        tempfile.tempdir = saved
    return config, results, log.reads


def copy_photos(src: Path, dst: Path, names: list[str]) -> list[Path]:
    dst.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy2(src / name, dst / name)) for name in names]


def flickr_names(n: int, offset: int = 0) -> list[str]:
    return sorted(p.name for p in FLICKR.glob("*.jpg"))[offset:offset + n]


# `make test` runs the suite on every core (pytest-xdist, --dist loadfile: a module's tests share a
# worker, so its module fixtures are built once). The longest modules are handed out first (measured
# with `--durations`; --no-loadscope-reorder keeps this order), so the last to finish does not start last.
LONGEST_FIRST = ("test_airflow_ui", "test_pipeline_e2e", "test_scale_out", "test_backfill", "test_gold",
                 "test_ui_lifecycle", "test_api", "test_gold_added_later", "test_faults", "test_dataset_life",
                 "test_run_console", "test_fail_fast", "test_faces")


def pytest_collection_modifyitems(config, items):
    if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
        for item in items:
            timeout = item.get_closest_marker("timeout")
            if timeout and timeout.args:
                # A hang guard, not a speed bound: two workers share the cores, so allow twice as long.
                item.add_marker(pytest.mark.timeout(timeout.args[0] * 2), append=False)

    def rank(item):
        name = item.module.__name__.rsplit(".", 1)[-1]
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within a module is kept


def pytest_terminal_summary(terminalreporter):
    """Say whether the machine's PostgreSQL still answers at the end: a test that failed with
    'Connection refused' on 127.0.0.1:5432 is then told apart from a server that went away (its log's
    tail is shown, where this user can read it)."""
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=5):
            return
    except OSError as err:
        terminalreporter.write_line(f"PostgreSQL on 127.0.0.1:5432 does not answer at the end of the run: {err}")
    for log in sorted(Path("/var/log/postgresql").glob("*.log")):
        try:
            terminalreporter.write_line(f"{log}:\n" + "".join(log.read_text().splitlines(True)[-30:]))
        except OSError:
            pass
