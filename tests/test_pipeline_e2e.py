"""The real DAG, end to end on real photos, with the real DeepFace model, on a local root and on GCS."""
import shutil

import pytest

from emotion_pipeline.core.storage import LocalStorage, open_storage
from tests.bad_inputs import write_bad_inputs, write_hostile_entries, write_odd_modes
from tests.conftest import FACES, FLICKR, copy_photos, flickr_names
from tests.pipeline_run import (
    SECOND_HALF_ARGS,
    check_mlflow,
    check_outputs,
    check_second_half,
    photo_entries,
    run_pipeline,
    screenshot,
    shard_results,
    smtp_connection,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]


def assert_nothing_reran(second: dict) -> None:
    """A run over an unchanged source: nothing is hashed, no shard task runs, nothing retrains."""
    assert second["state"] == "success"
    assert second["discovery"]["hashed"] == 0 and second["discovery"]["pending"] == []
    assert shard_results(second, "resize") == [] and shard_results(second, "annotate") == []
    drift = shard_results(second, "check_drift")[0]
    merge = shard_results(second, "merge")[0]
    assert drift["checked"] == [] and merge["skipped"] is True
    assert shard_results(second, "embed") == []
    assert shard_results(second, "train")[0]["skipped"] is True  # same data: no retraining
    assert shard_results(second, "evaluate")[0]["skipped"] is True


def assert_one_drift_mail(mails: list, report: dict) -> None:
    """Of ``mails`` (the new ones), exactly one is the drift alert, and it shows each drifted shard."""
    drift_mails = [m for m in mails if "label drift" in m["Subject"]]
    assert len(drift_mails) == 1 and drift_mails[0]["To"] == "ops@example.com"
    body = "".join(part.get_payload(decode=True).decode() for part in drift_mails[0].walk()
                   if part.get_content_type() == "text/html")
    for drifted in report["drifted"]:
        assert f"shard {drifted['shard']}" in body and drifted["chart"] in body
        assert f"{drifted['js_distance']:.3f}" in body


def test_local_run_rerun_and_backfill(tmp_path, smtp_sink):
    smtp_port, received = smtp_sink
    env = {"AIRFLOW_CONN_SMTP_DEFAULT": smtp_connection(smtp_port)}
    src, root_dir = tmp_path / "photos", tmp_path / "out"
    photos = copy_photos(FLICKR, src, flickr_names(60))
    expected = write_bad_inputs(src, photos[0])
    odd = write_odd_modes(src, [FLICKR / name for name in flickr_names(7, offset=300)])  # not in src
    hostile, skipped = write_hostile_entries(src, FLICKR / flickr_names(1, offset=320)[0])  # links, a pipe, ...
    expected.update({name: status for name, status in hostile.items() if status != "ok"})
    args = ("--shard-size", "25", "--alert-emails", "ops@example.com", *SECOND_HALF_ARGS)

    # 1. Cold run: 83 entries named like photos -> shards 0..3, every output written; a broken link, a
    #    pipe or a socket never stops (or blocks) a task, and what is not a photo is counted.
    first = run_pipeline(str(src), str(root_dir), tmp_path, *args, env=env)
    assert first["state"] == "success"
    files = photo_entries(src)
    dataset = check_outputs(LocalStorage(root_dir), expected, files)
    assert first["images"] == len(files) == 60 + len(expected) + len(odd) + 2  # + a link, + back\slash.jpg
    assert first["discovery"]["skipped"] == skipped
    assert sorted(r["shard"] for r in shard_results(first, "annotate")) == [0, 1, 2, 3]
    assert dataset["label"].notna().sum() >= 10 and (dataset["status"] == "no_face").sum() >= 5
    assert set(dataset.set_index("source_key").loc[odd, "status"]) <= {"ok", "no_face"}
    train = check_second_half(LocalStorage(root_dir), dataset, first)
    assert train["model_version"] == "1" and train["champion"] is True
    check_mlflow(f"sqlite:///{root_dir / 'mlflow' / 'mlflow.db'}", train)
    pixels = screenshot((root_dir / "reports/1/report.html").as_uri(), tmp_path / "report.png")
    assert pixels.shape[0] >= 2000 and pixels.std() > 20  # a rendered page with figures, not a blank one
    seen_mails = set(received())

    # 2. Same source again: nothing is hashed, no shard task runs, nothing is rewritten.
    log_before = (root_dir / "monitoring/label_monitor_log.csv").read_bytes()
    assert_nothing_reran(run_pipeline(str(src), str(root_dir), tmp_path, *args, env=env))
    assert (root_dir / "monitoring/label_monitor_log.csv").read_bytes() == log_before

    # 3. A new batch of close-up portraits: only the new shards run, and their no-face rate
    #    (near 0 against ~40% in Flickr30k) is drift that reaches the SMTP sink.
    faces = sorted(p.name for p in FACES.glob("img*.jpg"))[:40]
    copy_photos(FACES, src / "batch2", faces)
    third = run_pipeline(str(src), str(root_dir), tmp_path, *args, env=env)
    assert third["discovery"]["hashed"] == 40 and third["discovery"]["new_images"] == 40
    assert sorted(r["shard"] for r in shard_results(third, "resize")) == [4, 5]
    assert sorted(r["shard"] for r in shard_results(third, "annotate")) == [4, 5]
    assert sorted(r["shard"] for r in shard_results(third, "embed")) == [4, 5]
    report = shard_results(third, "check_drift")[0]
    assert report["checked"] == [4, 5] and report["drifted"]
    dataset = check_outputs(LocalStorage(root_dir), expected, photo_entries(src))
    retrained = check_second_half(LocalStorage(root_dir), dataset, third)
    assert retrained["model_version"] == "2" and retrained["data_fingerprint"] != train["data_fingerprint"]
    check_mlflow(f"sqlite:///{root_dir / 'mlflow' / 'mlflow.db'}", retrained)

    assert_one_drift_mail([m for key, m in received().items() if key not in seen_mails], report)


def test_run_on_gcs(tmp_path, gcs_bucket):
    local = tmp_path / "photos"
    photos = copy_photos(FLICKR, local, flickr_names(30, offset=100))
    expected = write_bad_inputs(local, photos[0])
    copy_photos(FACES, local / "faces", ["img1.jpg", "couple.jpg", "img5.jpg"])
    source = open_storage(f"gs://{gcs_bucket}/raw")
    files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    for name in files:
        source.write_bytes(name, (local / name).read_bytes())
    shutil.rmtree(local)  # the pipeline only sees the bucket

    summary = run_pipeline(source.uri, f"gs://{gcs_bucket}/out", tmp_path, "--shard-size", "20", *SECOND_HALF_ARGS)
    assert summary["state"] == "success" and summary["images"] == len(files)
    root = open_storage(f"gs://{gcs_bucket}/out")
    dataset = check_outputs(root, expected, files)
    assert dataset["processed_uri"].dropna().str.startswith(f"gs://{gcs_bucket}/out/processed/").all()
    assert dataset["source_uri"].str.startswith(f"gs://{gcs_bucket}/raw/").all()
    train = check_second_half(root, dataset, summary)
    check_mlflow(train["tracking_uri"], train)
