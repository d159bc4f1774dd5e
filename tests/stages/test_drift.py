
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from emotion_pipeline.core import catalog
from emotion_pipeline.core.config import PipelineConfig
from emotion_pipeline.core.runner import run_stage
from emotion_pipeline.core.storage import LocalStorage
from emotion_pipeline.core.tables import read_json, write_json, write_table
from emotion_pipeline.orchestration.airflow_adapter import drift_alert_message
from emotion_pipeline.stages.check_drift import js_distance

LOG_KEY = catalog.MONITOR_LOG
read_log = catalog.read_monitor_log

HAPPY_WORLD = ["happy"] * 12 + ["neutral"] * 6 + ["sad"] * 2 + ["no_face"] * 10
SAD_WORLD = ["sad"] * 12 + ["angry"] * 6 + ["happy"] * 2 + ["no_face"] * 10
FACE_CLOSEUPS = ["happy"] * 12 + ["neutral"] * 6 + ["sad"] * 2  # same labels, no missing faces


def write_shards(root, shards: dict[int, list[str]], version: str = "v1",
                 detectors: dict[int, str] | None = None) -> None:
    """Annotated shards as the annotate stage leaves them: table + done marker (and, given
    ``detectors``, the detector each shard was annotated with)."""
    manifest = []
    for shard, labels in shards.items():
        rows = []
        for i, label in enumerate(labels):
            key = f"s{shard}/p{i}.jpg"
            manifest.append({"source_key": key, "image_id": f"{shard}-{i}", "shard": shard, "present": True,
                             "size_bytes": 1, "version": "1", "source_uri": key, "duplicate_of": ""})
            no_face = label == "no_face"
            rows.append({"image_id": f"{shard}-{i}", "source_key": key, "shard": shard,
                         "status": "no_face" if no_face else "ok",
                         "label": None if no_face or label == "fear" else label,
                         **({"detector": detectors[shard]} if detectors else {})})
        write_table(root, catalog.annotations(shard), pd.DataFrame(rows))
        write_json(root, catalog.done_marker(catalog.ANNOTATE_FOLDER, shard),
                   {"fingerprint": f"{version}-{shard}", "summary": {}})
    write_table(root, catalog.MANIFEST, pd.DataFrame(manifest))


@pytest.fixture
def root(tmp_path):
    return LocalStorage(tmp_path)


def config(**kw):
    return PipelineConfig(source="unused", root="unused", **kw)


def test_a_shard_like_the_earlier_ones_does_not_drift_and_a_different_one_does(root):
    write_shards(root, {0: HAPPY_WORLD, 1: HAPPY_WORLD, 2: SAD_WORLD})
    report = run_stage("check_drift", config(), root=root, run_id="r1")
    assert report.checked == [0, 1, 2]
    assert [d["shard"] for d in report.drifted] == [2]
    monitor_log = read_log(root).set_index("shard")
    assert monitor_log.loc[1, "js_distance"] == pytest.approx(0.0, abs=1e-9)
    assert monitor_log.loc[2, "js_distance"] > 0.2 and bool(monitor_log.loc[2, "drift"])
    assert not bool(monitor_log.loc[0, "judged"])  # nothing earlier to compare with
    assert monitor_log.loc[2, "share_sad"] == pytest.approx(12 / 20)
    assert monitor_log.loc[2, "reference_share_happy"] == pytest.approx(12 / 20)
    assert (monitor_log["run_id"] == "r1").all()
    for shard in (0, 1, 2):
        chart = Image.open(root.uri_for(f"monitoring/charts/shard={shard:05d}.png"))
        assert chart.size[0] > 500
    assert root.exists("monitoring/charts/drift_timeline.png")


def test_a_change_in_the_no_face_rate_alone_is_drift(root):
    write_shards(root, {0: HAPPY_WORLD, 1: FACE_CLOSEUPS})
    (drifted,) = run_stage("check_drift", config(), root=root).drifted
    assert drifted["shard"] == 1 and drifted["js_distance"] == pytest.approx(0.0, abs=1e-9)
    assert drifted["no_face_change"] == pytest.approx(-10 / 30)


def test_rerun_appends_nothing_and_new_annotations_are_checked_again(root):
    write_shards(root, {0: HAPPY_WORLD, 1: SAD_WORLD})
    run_stage("check_drift", config(), root=root)
    before = root.read_bytes(LOG_KEY)
    assert run_stage("check_drift", config(), root=root).checked == []
    assert root.read_bytes(LOG_KEY) == before
    write_shards(root, {0: HAPPY_WORLD, 1: HAPPY_WORLD}, version="v2")  # re-annotated (e.g. new detector)
    assert run_stage("check_drift", config(), root=root).checked == [0, 1]
    assert len(read_log(root)) == 4


def test_pinned_baseline_is_written_once_and_used_for_every_later_shard(root):
    write_shards(root, {0: HAPPY_WORLD, 1: SAD_WORLD, 2: SAD_WORLD})
    report = run_stage("check_drift", config(drift_reference="baseline"), root=root)
    assert [d["shard"] for d in report.drifted] == [1, 2]  # both far from the pinned shard 0
    assert root.exists("monitoring/baseline.json")


# YuNet finds faces MTCNN misses: the same photos have fewer no-face photos and other labels.
MTCNN_VIEW = ["happy"] * 10 + ["neutral"] * 4 + ["no_face"] * 16
YUNET_VIEW = ["happy"] * 10 + ["neutral"] * 8 + ["sad"] * 6 + ["no_face"] * 6


def test_a_new_detector_alone_raises_no_drift_alarm(root):
    """Shards 0-1 annotated with MTCNN, then 2-3 (say a new batch) with YuNet: each is compared with
    the earlier shards of its own detector, so the change of detector is no alarm; a real change of
    the photos under the new detector still is."""
    write_shards(root, {0: MTCNN_VIEW, 1: MTCNN_VIEW, 2: YUNET_VIEW, 3: YUNET_VIEW, 4: SAD_WORLD},
                 detectors={0: "mtcnn", 1: "mtcnn", 2: "yunet", 3: "yunet", 4: "yunet"})
    report = run_stage("check_drift", config(), root=root)
    assert [d["shard"] for d in report.drifted] == [4]
    monitor_log = read_log(root).set_index("shard")
    assert list(monitor_log["detector"]) == ["mtcnn", "mtcnn", "yunet", "yunet", "yunet"]
    assert not bool(monitor_log.loc[2, "judged"])  # the first YuNet shard has no YuNet reference
    assert "earlier shards annotated with mtcnn are left out" in monitor_log.loc[2, "not_judged"]
    assert monitor_log.loc[3, "reference_images"] == len(YUNET_VIEW)  # shard 2 only
    assert monitor_log.loc[3, "js_distance"] == pytest.approx(0.0, abs=1e-9)
    # Compared with the MTCNN shards, the same photos would have been an alarm (the no-face rate).
    assert abs(16 / 30 - 6 / 30) > config().no_face_drift_threshold


def test_each_detector_has_its_own_pinned_baseline(root):
    write_json(root, catalog.DRIFT_BASELINE, {  # pinned before baselines recorded their detector: MTCNN's
        "images": 30, "labelled": 14, "no_face": 16, "no_face_rate": 16 / 30, "share_happy": 10 / 14,
        "share_sad": 0.0, "share_angry": 0.0, "share_surprise": 0.0, "share_neutral": 4 / 14})
    write_shards(root, {0: MTCNN_VIEW, 1: YUNET_VIEW, 2: YUNET_VIEW, 3: SAD_WORLD},
                 detectors={0: "mtcnn", 1: "yunet", 2: "yunet", 3: "yunet"})
    report = run_stage("check_drift", config(drift_reference="baseline"), root=root)
    assert [d["shard"] for d in report.drifted] == [3]
    assert read_json(root, "monitoring/baseline.yunet.json")["images"] == len(YUNET_VIEW)  # pinned from shard 1
    assert "detector" not in read_json(root, catalog.DRIFT_BASELINE)  # the user's file is left as it was


def test_small_reference_is_not_judged(root):
    write_shards(root, {0: HAPPY_WORLD[:5], 1: SAD_WORLD})
    assert run_stage("check_drift", config(min_drift_photos=20), root=root).drifted == []


def test_a_shard_without_labels_or_with_two_photos_is_not_judged_and_never_alerts(root):
    """Before: a shard with 0 labelled photos got distance 0 and counted as judged; a 2-photo shard
    got distance 1.0 and an alert. Both sides need min_drift_photos."""
    write_shards(root, {0: HAPPY_WORLD, 1: HAPPY_WORLD, 2: ["no_face"] * 25, 3: ["sad", "angry"]})
    report = run_stage("check_drift", config(min_drift_photos=20), root=root)
    monitor_log = read_log(root).set_index("shard")
    assert np.isnan(monitor_log.loc[2, "js_distance"])  # no label: the label distance is not judged
    assert "shard has 0 labelled photos" in monitor_log.loc[2, "not_judged"]
    assert bool(monitor_log.loc[2, "drift"])  # ... while the no-face rate (25 photos) is, and moved
    assert not bool(monitor_log.loc[3, "judged"]) and not bool(monitor_log.loc[3, "drift"])
    assert "shard has 2 annotated photos" in monitor_log.loc[3, "not_judged"]
    assert [d["shard"] for d in report.drifted] == [2]
    subject, body = drift_alert_message(report.to_dict())
    assert "JS distance not judged" in body


def test_js_distance_bounds():
    assert js_distance(np.array([1, 0.0]), np.array([0, 1.0])) == pytest.approx(1.0)
    assert js_distance(np.array([2, 2.0]), np.array([1, 1.0])) == pytest.approx(0.0)
    assert js_distance(np.zeros(2), np.array([1, 1.0])) == 0.0


def test_alert_message_names_the_numbers_and_the_chart(root):
    write_shards(root, {0: HAPPY_WORLD, 1: SAD_WORLD})
    report = run_stage("check_drift", config(), root=root)
    subject, body = drift_alert_message(report.to_dict())  # what the alert task gets from XCom
    (drifted,) = report.drifted
    assert "shard(s) 1" in subject
    assert f"{drifted['js_distance']:.3f}" in body and drifted["chart"] in body
    assert "sad 60% (ref 10%)" in body


def test_a_first_run_over_many_shards_reads_each_shard_once(root, monkeypatch):
    """Every shard's detector and counts are taken once, and each reference is a running sum: the
    check used to recompute every shard's detector and concatenate every earlier table for each new
    shard (shards^2: minutes at 300 shards). The verdicts are those of the concatenation."""
    from emotion_pipeline.stages import check_drift as module

    shards = {s: (SAD_WORLD if s == 9 else HAPPY_WORLD) for s in range(12)}
    write_shards(root, shards, detectors={s: ("mtcnn" if s < 3 else "yunet") for s in shards})
    seen: list[int] = []
    real = module._detector
    monkeypatch.setattr(module, "_detector", lambda table: seen.append(1) or real(table))
    report = run_stage("check_drift", config(), root=root)
    assert len(seen) == len(shards)
    assert [d["shard"] for d in report.drifted] == [9]
    monitor_log = read_log(root).set_index("shard")
    annotated = len(HAPPY_WORLD)
    # yunet shards 3..: the reference is the earlier yunet shards only (3-9 for 10: six happy, one sad), summed.
    assert list(monitor_log.loc[[3, 4, 10], "reference_images"]) == [0, annotated, 7 * annotated]
    assert monitor_log.loc[10, "reference_share_sad"] == pytest.approx((6 * 2 + 12) / (6 * 20 + 20))
