
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from emotion_pipeline.core import catalog
from emotion_pipeline.core.config import PipelineConfig
from emotion_pipeline.core.storage import LocalStorage
from emotion_pipeline.core.tables import write_json, write_table
from emotion_pipeline.orchestration.airflow_adapter import drift_alert_message
from emotion_pipeline.stages.check_drift import check_label_drift, js_distance

LOG_KEY = catalog.MONITOR_LOG
read_log = catalog.read_monitor_log

HAPPY_WORLD = ["happy"] * 12 + ["neutral"] * 6 + ["sad"] * 2 + ["no_face"] * 10
SAD_WORLD = ["sad"] * 12 + ["angry"] * 6 + ["happy"] * 2 + ["no_face"] * 10
FACE_CLOSEUPS = ["happy"] * 12 + ["neutral"] * 6 + ["sad"] * 2  # same labels, no missing faces


def write_shards(root, shards: dict[int, list[str]], version: str = "v1") -> None:
    """Annotated shards as the annotate stage leaves them: table + done marker."""
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
                         "label": None if no_face or label == "fear" else label})
        write_table(root, catalog.annotations(shard), pd.DataFrame(rows))
        write_json(root, catalog.done_marker(catalog.ANNOTATE_FOLDER, shard), {"fingerprint": f"{version}-{shard}", "summary": {}})
    write_table(root, catalog.MANIFEST, pd.DataFrame(manifest))


@pytest.fixture
def root(tmp_path):
    return LocalStorage(tmp_path)


def config(**kw):
    return PipelineConfig(source="unused", root="unused", **kw)


def test_a_shard_like_the_earlier_ones_does_not_drift_and_a_different_one_does(root):
    write_shards(root, {0: HAPPY_WORLD, 1: HAPPY_WORLD, 2: SAD_WORLD})
    report = check_label_drift(config(), root=root, run_id="r1")
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
    (drifted,) = check_label_drift(config(), root=root).drifted
    assert drifted["shard"] == 1 and drifted["js_distance"] == pytest.approx(0.0, abs=1e-9)
    assert drifted["no_face_change"] == pytest.approx(-10 / 30)


def test_rerun_appends_nothing_and_new_annotations_are_checked_again(root):
    write_shards(root, {0: HAPPY_WORLD, 1: SAD_WORLD})
    check_label_drift(config(), root=root)
    before = root.read_bytes(LOG_KEY)
    assert check_label_drift(config(), root=root).checked == []
    assert root.read_bytes(LOG_KEY) == before
    write_shards(root, {0: HAPPY_WORLD, 1: HAPPY_WORLD}, version="v2")  # re-annotated (e.g. new detector)
    assert check_label_drift(config(), root=root).checked == [0, 1]
    assert len(read_log(root)) == 4


def test_pinned_baseline_is_written_once_and_used_for_every_later_shard(root):
    write_shards(root, {0: HAPPY_WORLD, 1: SAD_WORLD, 2: SAD_WORLD})
    report = check_label_drift(config(drift_reference="baseline"), root=root)
    assert [d["shard"] for d in report.drifted] == [1, 2]  # both far from the pinned shard 0
    assert root.exists("monitoring/baseline.json")


def test_small_reference_is_not_judged(root):
    write_shards(root, {0: HAPPY_WORLD[:5], 1: SAD_WORLD})
    assert check_label_drift(config(min_drift_photos=20), root=root).drifted == []


def test_a_shard_without_labels_or_with_two_photos_is_not_judged_and_never_alerts(root):
    """Before: a shard with 0 labelled photos got distance 0 and counted as judged; a 2-photo shard
    got distance 1.0 and an alert. Both sides need min_drift_photos."""
    write_shards(root, {0: HAPPY_WORLD, 1: HAPPY_WORLD, 2: ["no_face"] * 25, 3: ["sad", "angry"]})
    report = check_label_drift(config(min_drift_photos=20), root=root)
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
    report = check_label_drift(config(), root=root)
    subject, body = drift_alert_message(report.to_dict())  # what the alert task gets from XCom
    (drifted,) = report.drifted
    assert "shard(s) 1" in subject
    assert f"{drifted['js_distance']:.3f}" in body and drifted["chart"] in body
    assert "sad 60% (ref 10%)" in body
