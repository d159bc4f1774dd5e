"""What the answers to the DAG's questions do to a root, and the drift e-mail's link to the question
(the questions themselves, answered through Airflow's REST API: test_airflow_ui.py)."""
from emotion_pipeline.core import catalog
from emotion_pipeline.core.config import PipelineConfig
from emotion_pipeline.core.manifest import discover
from emotion_pipeline.core.storage import open_storage
from emotion_pipeline.orchestration.airflow_adapter import drift_alert_message
from emotion_pipeline.orchestration.decisions import apply_drift_answer, drift_question
from tests.conftest import FLICKR, copy_photos, flickr_names

REPORT = {"drifted": [{"shard": 1, "images": 3, "labelled": 2, "no_face_rate": 0.3, "reference_no_face_rate": 0.1,
                       "js_distance": float("nan"), "no_face_change": 0.2, "chart": "c.png",
                       **{f"share_{c}": 0.2 for c in ("happy", "sad", "angry", "surprise", "neutral")},
                       **{f"reference_share_{c}": 0.2 for c in ("happy", "sad", "angry", "surprise", "neutral")}}],
          "log_uri": "/out/monitoring/label_monitor_log.csv", "threshold": 0.2, "no_face_threshold": 0.15}


def a_root_of_two_shards(tmp_path):
    src = tmp_path / "src"
    copy_photos(FLICKR, src, flickr_names(6))
    config = PipelineConfig(source=str(src), root=str(tmp_path / "out"), shard_size=3)
    root = open_storage(config.root)
    manifest = discover(config, open_storage(config.source), root).manifest
    return root, manifest


def test_excluding_a_shard_records_it_and_names_exactly_its_photos(tmp_path):
    root, manifest = a_root_of_two_shards(tmp_path)
    assert catalog.excluded_shard_photos(root) == set()
    done = apply_drift_answer("exclude", root, [1], "run-1", "ana")
    assert "shard(s) 1 excluded from training by ana" in done["said"]
    assert set(catalog.read_excluded_shards(root)) == {1}
    assert catalog.read_excluded_shards(root)[1]["decided_by"] == "ana"
    shard_1 = set(manifest.loc[manifest["shard"] == 1, "image_id"])
    assert len(shard_1) == 3 and catalog.excluded_shard_photos(root) == shard_1
    apply_drift_answer("exclude", root, [0], "run-2", "bo")  # a later decision adds to the earlier ones
    assert set(catalog.read_excluded_shards(root)) == {0, 1}


def test_annotating_again_removes_only_those_shards_annotate_markers(tmp_path):
    root, _ = a_root_of_two_shards(tmp_path)
    for shard in (0, 1):
        root.write_bytes(catalog.done_marker(catalog.ANNOTATE_FOLDER, shard), b"{}")
    done = apply_drift_answer("reannotate", root, [1], "run-1", "ana")
    assert done["removed_markers"] == [root.uri_for(catalog.done_marker(catalog.ANNOTATE_FOLDER, 1))]
    assert not root.exists(catalog.done_marker(catalog.ANNOTATE_FOLDER, 1))
    assert root.exists(catalog.done_marker(catalog.ANNOTATE_FOLDER, 0))
    assert "next run annotates them again" in done["said"]
    assert apply_drift_answer("keep", root, [1], "run-1", "ana")["said"] == "shard(s) 1 kept as they are (ana)"
    assert catalog.read_excluded_shards(root) == {}


def test_the_question_and_the_alert_name_the_shards_and_the_default():
    config = PipelineConfig(source="in", root="out", drift_decision_default="exclude", drift_decision_timeout_hours=2)
    body = drift_question(REPORT, config)
    assert "| 1 | 3 | 2 | not judged | 30% (ref 10%) |" in body
    assert "Without one in 2 hours: **Exclude them from training**" in body
    url = "http://airflow:8080/dags/emotion_pipeline/runs/r1/tasks/drift_decision/required_actions"
    _, with_link = drift_alert_message(REPORT, url)
    assert f'<a href="{url}">answer in the Airflow UI</a>' in with_link
    assert "answer in the Airflow UI" not in drift_alert_message(REPORT)[1]
