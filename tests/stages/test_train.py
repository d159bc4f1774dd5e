"""What train says and does when a model cannot be trusted: a skip names the rule that emptied the
splits, a run without a model posts no model event, a head that loses to its logistic baseline is not
promoted (unless allowed, then flagged), and the report says what its figures rest on (issue 24)."""
import json
import re
import sqlite3

import pytest

from emotion_pipeline.core import catalog
from emotion_pipeline.core.config import PipelineConfig
from emotion_pipeline.core.storage import open_storage
from emotion_pipeline.modeling import tracking
from tests.conftest import FACES, copy_photos
from tests.pipeline_run import run_pipeline
from tests.test_faults import write_training_inputs


def test_a_skip_names_the_classes_min_rows_per_class_left_out(tmp_path):
    """It said "every split needs rows of at least 2 classes ({'test': 0, 'val': 0, 'train': 0})" when
    min_rows_per_class had dropped every class: nothing said so."""
    from emotion_pipeline.core.runner import run_stage

    write_training_inputs(tmp_path / "out", rows=12)  # happy, sad, 3 rows each; the others 2
    result = run_stage("train", PipelineConfig(source="in", root=str(tmp_path / "out"), min_rows_per_class=10))
    assert result.trained is False
    assert "min_rows_per_class=10 left out" in result.reason, result.reason
    assert re.search(r"happy 3, sad 3, angry 2, surprise 2, neutral 2", result.reason), result.reason


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_a_model_that_loses_to_its_baseline_is_not_promoted_unless_allowed_and_is_flagged(tmp_path):
    """A champion with test macro-F1 0.148, below its baseline's 0.552, was promoted, flagged nowhere."""
    import mlflow

    from emotion_pipeline.core.runner import run_stage

    write_training_inputs(tmp_path / "out", rows=60, signal="offset")  # the head cannot read the offset
    config = PipelineConfig(source="in", root=str(tmp_path / "out"), min_rows_per_class=3, tuner_max_epochs=2,
                            tuner="bayesian", tuner_max_trials=1, embed_weights="none")  # one short trial
    client = mlflow.MlflowClient(tracking.tracking_uri(config))

    refused = run_stage("train", config)
    assert refused.trained and refused.champion is False, refused
    assert refused.test_macro_f1 < refused.baseline_test_macro_f1 and "below the logistic baseline" in refused.promotion
    assert refused.flags == ["random_embedding_weights", "below_baseline", "few_test_rows"]
    with pytest.raises(mlflow.exceptions.MlflowException):  # registered, never promoted
        client.get_model_version_by_alias(config.registered_model, tracking.CHAMPION)
    run = client.get_run(refused.run_id)
    assert run.data.tags["flag.below_baseline"] == "true" and run.data.tags["flag.random_embedding_weights"] == "true"
    assert run.data.tags["champion"] == "False" and run.data.tags["promotion"] == refused.promotion
    assert run.data.metrics["baseline.test_macro_f1"] == pytest.approx(refused.baseline_test_macro_f1)

    allowed = run_stage("train", config.replace(promote_below_baseline=True, force_train=True))
    assert allowed.champion is True and "promote_below_baseline" in allowed.promotion, allowed.promotion
    assert "below_baseline" in allowed.flags
    champion = client.get_model_version_by_alias(config.registered_model, tracking.CHAMPION)
    assert str(champion.version) == allowed.model_version == "2"
    assert client.get_run(allowed.run_id).data.tags["flag.below_baseline"] == "true"


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_a_run_that_trains_nothing_posts_no_model_event_and_says_why(tmp_path):
    """A green run with 17 labelled photos trained nothing and still posted an emotion_model event with
    model_version null: a deploy DAG scheduled on it would have fired with no model."""
    src = tmp_path / "photos"
    copy_photos(FACES, src, [f"img{i}.jpg" for i in range(1, 5)])  # close-ups: labelled, too few to train
    summary = run_pipeline(str(src), str(tmp_path / "out"), tmp_path, "--detector", "yunet", "--embed-weights",
                           "none", "--min-rows-per-class", "1000")
    assert summary["state"] == "success"
    with sqlite3.connect(tmp_path / "airflow" / "airflow.db") as db:
        posted = dict(db.execute("SELECT asset.name, asset_event.extra FROM asset_event JOIN asset "
                                 "ON asset.id = asset_event.asset_id WHERE source_run_id = ?",
                                 (summary["run_id"],)).fetchall())
    assert json.loads(posted["emotion_dataset"])["images"] == 4  # the run posts its other events
    assert "emotion_model" not in posted, posted["emotion_model"]

    tasks = {t["task"]: t for t in summary["tasks"] if t["map_index"] == -1}
    assert tasks["train"]["state"] == "skipped", tasks["train"]  # how Airflow posts no event
    reason = tasks["train"]["result"]["reason"]  # the XCom a skipped train still leaves, in the run's summary
    assert "min_rows_per_class=1000 left out" in reason and summary["model"]["reason"] == reason
    assert tasks["evaluate"]["state"] == "success" and tasks["evaluate"]["result"]["evaluated"] is False


@pytest.mark.integration
def test_the_report_flags_random_weights_few_rows_and_classes_without_data(trained_root):
    """Random ResNet50 weights were flagged nowhere, figures on 7 photos read like measurements, and a
    class no captioned photo had showed an agreement of 0."""
    import mlflow

    config, results = trained_root
    root, version = open_storage(config.root), results["train"].model_version
    document = json.loads(root.read_bytes(catalog.report_file(version, catalog.REPORT_METRICS)))
    page = root.read_bytes(catalog.report_file(version, catalog.REPORT_PAGE)).decode()
    assert {"random_embedding_weights", "few_test_rows"} <= set(document["flags"]), document["flags"]
    assert document["embed_weights"] == "none" and "ResNet50 ran with random weights" in page
    run = mlflow.MlflowClient(tracking.tracking_uri(config)).get_run(results["train"].run_id)
    assert run.data.tags["flag.random_embedding_weights"] == "true"

    test_rows = document["metrics"]["model"]["n"]
    assert test_rows < 30 and document["figure_rows"]["confusion_matrix"] == test_rows
    assert f"{test_rows} (too few: under 30)" in page and f"Computed on {test_rows} photos (too few" in page

    # A class without caption photos: its support is 0 in metrics.json, "no data" in the report.
    check = document["captions"]
    empty = [c for c, v in check["per_class"].items() if not v["with_face"]]
    assert empty and all(check["deepface"]["per_class"][c]["support"] == 0 for c in empty)
    section = page[page.index("Caption check"):]
    for c in empty:
        row = re.search(rf"<tr><td>{c}</td>(.*?)</tr>", section).group(1)
        assert "no data" in row and ">0.000<" not in row, row
