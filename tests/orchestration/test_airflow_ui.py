"""The first hour in the Airflow UI, as a data engineer meets it, clicked through in headless Chromium.

One `emotion-pipeline ui` serves the module, started as a deployment would be: the folders, offline
weights, a small shard size and a daily schedule given once on its command line. The tests run in
order on it: the scheduled run Airflow starts on unpause, a run from the trigger form with nothing
filled in, then a backfill from the Backfill dialog while another run is going.
"""
import json
import os
import re
import stat
import time
import urllib.parse

import pytest

from tests.airflow_ui import (
    DAG,
    LocalAirflow,
    choose_backfill_dates,
    log_in,
    open_browser,
    open_trigger_dialog,
    summary,
)
from tests.conftest import FLICKR, copy_photos, flickr_names

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

# What the deployment gives `ui`: the form's defaults and those of every run without params.
DEPLOYMENT = {"embed_weights": "none", "shard_size": 2, "detector": "opencv", "min_rows_per_class": 1000}


@pytest.fixture(scope="module")
def local_ui(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("local-ui")
    src = tmp / "photos"
    copy_photos(FLICKR, src, flickr_names(2, offset=20))
    args = ["--source", str(src), "--root", str(tmp / "out")]
    for name, value in DEPLOYMENT.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    airflow = LocalAirflow(tmp / "airflow", args, {**os.environ, "EMOTION_PIPELINE_SCHEDULE": "@daily"})
    try:
        yield airflow
    finally:
        airflow.stop()


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser, page = open_browser(playwright, tmp_path_factory.mktemp("chromium"))
        failures: list[str] = []  # every 5xx the pages got from Airflow's API
        page.on("response", lambda r: r.status >= 500 and failures.append(f"{r.status} {r.request.method} {r.url}"))
        page.server_errors = failures
        yield page
        browser.close()


def test_the_admin_password_file_is_readable_by_its_user_alone(local_ui):
    from emotion_pipeline.local.airflow_home import PASSWORDS_FILE

    path = local_ui.home / PASSWORDS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it was 0644: anyone on the machine read it
    assert json.loads(path.read_text()) == {local_ui.user: local_ui.password}


def test_the_run_airflow_schedules_on_unpause_uses_the_deployments_defaults(local_ui):
    """It used to run with the DAG's own defaults (imagenet weights: failing at embed offline)."""
    details = local_ui.call(f"/api/v2/dags/{DAG}/details")
    assert {name: details["params"][name]["value"] for name in DEPLOYMENT} == DEPLOYMENT
    assert details["is_paused"] is False  # unpaused once the API answered
    pools = {p["name"]: p["slots"] for p in local_ui.call("/api/v2/pools")["pools"]}
    assert pools.get("gpu", 0) >= 1  # tasks in a pool that does not exist never start
    (run,) = local_ui.wait_for_runs("scheduled", 1)
    state, tasks = local_ui.wait_for_run(run["dag_run_id"])
    assert state == "success", summary(tasks)
    # No task needed a retry: they used to start before the API server and fail "Connection refused".
    assert [(t["task_id"], t["try_number"]) for t in tasks if t["try_number"] > 1] == []
    annotated = [t for t in tasks if t["task_id"] == "annotate"]
    assert len(annotated) == 1 and annotated[0]["state"] == "success", summary(tasks)  # 2 photos, shards of 2
    assert annotated[0]["pool"] == "gpu"
    # The merged dataset is an Airflow asset: the run posted an event with what it made.
    events = local_ui.call(f"/api/v2/assets/events?source_dag_id={DAG}&source_run_id="
                           f"{urllib.parse.quote(run['dag_run_id'])}")["asset_events"]
    (dataset_event,) = [e for e in events if e["name"] == "emotion_dataset"]
    assert dataset_event["extra"]["images"] == 2 and dataset_event["extra"]["skipped"] is False
    assert dataset_event["extra"]["dataset_uri"].endswith("final_emotion_dataset.parquet")


def test_the_trigger_form_submits_with_its_defaults_and_redoes_no_work(local_ui, browser_page):
    """The form could not be submitted (Batch folder was required), and its 0 for 0.0 re-annotated
    every shard a run with defaults had annotated."""
    page = browser_page
    log_in(page, local_ui)
    dialog = open_trigger_dialog(page)
    required = dialog.locator("label[data-required]").evaluate_all("labels => labels.map(l => l.textContent)")
    assert {re.sub(r"\W+$", "", text).strip() for text in required} == {"Source", "Output root"}
    assert "same as the face detector" in dialog.text_content()  # the Gold detector's empty choice
    assert "null" not in re.findall(r"\bnull\b", dialog.text_content())
    trigger = dialog.get_by_role("button", name="Trigger")
    assert trigger.is_enabled()
    with page.expect_response(lambda r: r.url.endswith("/dagRuns") and r.request.method == "POST") as sent:
        trigger.click()
    assert sent.value.status == 200, sent.value.text()
    run_id = sent.value.json()["dag_run_id"]
    state, tasks = local_ui.wait_for_run(run_id)
    assert state == "success", summary(tasks)
    # The work counted: discover found no shard left to do, so no shard task was mapped.
    assert local_ui.xcom(run_id, "discover", "summary")["pending"] == []
    assert not [t for t in tasks if t["task_id"] in ("resize", "annotate", "embed") and t["state"] == "success"]
    assert page.server_errors == []


def test_a_backfill_from_the_dialog_while_a_run_is_going_uses_the_deployments_defaults(local_ui, browser_page):
    """The dialog drops its params unless 'Override parameters' is ticked: the backfill's runs use the
    DAG's defaults, which are the deployment's. SQLite answered this request 503 while a run was going."""
    page = browser_page
    going = local_ui.call(f"/api/v2/dags/{DAG}/dagRuns", {"logical_date": None, "conf": {}})
    page.goto(f"{local_ui.base}/dags/{DAG}")
    dialog = choose_backfill_dates(page, open_trigger_dialog(page), ["2026-11-01", "2026-11-02"])
    assert local_ui.call(f"/api/v2/dags/{DAG}/dagRuns/{going['dag_run_id']}")["state"] in ("queued", "running")
    with page.expect_response(lambda r: r.url.endswith("/backfills") and r.request.method == "POST") as sent:
        dialog.get_by_role("button", name="Run Backfill").click()
    assert sent.value.status == 200, sent.value.text()
    backfill = sent.value.json()
    assert backfill["dag_run_conf"] in (None, {})  # nothing of the dialog's form was sent

    runs = sorted(local_ui.wait_for_runs("backfill", 2), key=lambda r: r["logical_date"])
    assert [r["logical_date"][:10] for r in runs] == ["2026-11-01", "2026-11-02"]
    for run in [going, *runs]:
        state, tasks = local_ui.wait_for_run(run["dag_run_id"])
        assert state == "success", (run["dag_run_id"], summary(tasks))
        assert local_ui.xcom(run["dag_run_id"], "discover", "summary")["pending"] == []
    deadline = time.monotonic() + 120  # the scheduler marks a backfill complete on its next loop
    while not local_ui.call(f"/api/v2/backfills/{backfill['id']}")["completed_at"]:
        assert time.monotonic() < deadline, local_ui.call(f"/api/v2/backfills/{backfill['id']}")
        time.sleep(2)
    assert page.server_errors == []


# People's decisions (orchestration/decisions.py), answered through Airflow's REST API (the HITL
# endpoints the UI's "Required actions" page uses). Each run has its own source and root in its conf.
QUICK = {"detector": "yunet", "min_rows_per_class": 3, "tuner_max_epochs": 2, "shap_images": 0, "shap_samples": 10}


def decision_photos(tmp, shard_size: int) -> dict:
    """70 photos (40 Flickr30k, 30 face crops) with their source and root: the conf of a run on them."""
    from tests.conftest import FACES

    src = tmp / "photos"
    copy_photos(FLICKR, src, flickr_names(40, offset=200))
    copy_photos(FACES, src / "faces", sorted(p.name for p in FACES.glob("img*.jpg"))[:30])
    return {**QUICK, "source": str(src), "root": str(tmp / "out"), "shard_size": shard_size}


def wait_for_question(airflow: LocalAirflow, run_id: str, task_id: str, timeout: float = 1500) -> dict:
    """Waits until ``task_id`` waits for people (awaiting_input); returns its HITL detail (a hang guard)."""
    import urllib.error

    def state_of_task() -> str | None:
        try:
            return {t["task_id"]: t["state"] for t in airflow.tasks(run_id)}.get(task_id)
        except urllib.error.HTTPError as err:  # the API server's log says why
            raise AssertionError(f"{err}: {err.read()[:2000]!r}\n{''.join(airflow.lines[-150:])}") from err

    deadline = time.monotonic() + timeout
    while (state := state_of_task()) != "awaiting_input":
        assert state not in ("skipped", "success", "failed", "upstream_failed"), summary(airflow.tasks(run_id))
        assert time.monotonic() < deadline, summary(airflow.tasks(run_id))
        time.sleep(3)
    return airflow.call(hitl_path(run_id, task_id))


def hitl_path(run_id: str, task_id: str) -> str:
    return f"/api/v2/dags/{DAG}/dagRuns/{urllib.parse.quote(run_id)}/taskInstances/{task_id}/-1/hitlDetails"


def test_a_person_answers_the_drift_question_and_the_promotion_through_the_rest_api(local_ui, tmp_path):
    """One run asks both questions (one run, not two: each is a whole DAG run on 2 cores).
    A drift forced by tiny thresholds: the question lists shard 1, the answer "exclude" (PATCH, as the
    UI sends it) runs that branch only, and train's rows hold no photo of shard 1. approve_promotion
    on: train registers version 1 without the alias, the approval after evaluate shows its figures,
    and only the approval (PATCH) moves the alias."""
    from emotion_pipeline.core.config import PipelineConfig
    from emotion_pipeline.modeling import tracking
    from emotion_pipeline.orchestration.decisions import DRIFT_DECISION, DRIFT_OPTIONS, PROMOTE, PROMOTION_APPROVAL

    conf = {**decision_photos(tmp_path, 35), "drift_threshold": 0.001, "no_face_drift_threshold": 0.0,
            "min_drift_photos": 1, "approve_promotion": True, "registered_model": "approved-model",
            "promote_below_baseline": True}  # random weights on 70 photos may lose to the baseline
    run_id = local_ui.call(f"/api/v2/dags/{DAG}/dagRuns", {"logical_date": None, "conf": conf})["dag_run_id"]
    question = wait_for_question(local_ui, run_id, DRIFT_DECISION)
    assert question["options"] == list(DRIFT_OPTIONS.values()) and question["defaults"] == [DRIFT_OPTIONS["keep"]]
    assert "shard(s) 1" in question["subject"] and "| 1 |" in question["body"]
    assert {t["task_id"]: t["state"] for t in local_ui.tasks(run_id)}["train"] not in ("running", "success")
    local_ui.call(hitl_path(run_id, DRIFT_DECISION), {"chosen_options": [DRIFT_OPTIONS["exclude"]]}, "PATCH")

    question = wait_for_question(local_ui, run_id, PROMOTION_APPROVAL)
    assert question["options"] == ["Approve", "Reject"] and question["defaults"] == ["Reject"]
    assert "version 1" in question["subject"] and "no champion to beat" in question["body"]
    mlflow = tracking.use_experiment(PipelineConfig(source=conf["source"], root=conf["root"]))
    client = mlflow.MlflowClient()
    assert client.get_registered_model("approved-model").aliases == {}  # train left it to the approval
    local_ui.call(hitl_path(run_id, PROMOTION_APPROVAL), {"chosen_options": ["Approve"]}, "PATCH")

    state, tasks = local_ui.wait_for_run(run_id)
    assert state == "success", summary(tasks)
    drift_answer_was_followed(local_ui, run_id, conf["root"], tasks)
    assert {t["task_id"]: t["state"] for t in tasks}[PROMOTE] == "success"
    assert str(client.get_model_version_by_alias("approved-model", tracking.CHAMPION).version) == "1"
    assert client.get_run(local_ui.xcom(run_id, "train")["run_id"]).data.tags["promotion"].startswith(
        f"approved by {local_ui.user}")


def drift_answer_was_followed(local_ui: LocalAirflow, run_id: str, root_uri: str, tasks: list[dict]) -> None:
    """Only the "exclude" branch ran, shard 1 is recorded as excluded, and train's rows are the
    labelled photos of shard 0 alone (classes under 3 rows dropped), counted independently of train."""
    from emotion_pipeline.core import catalog
    from emotion_pipeline.core.config import CLASSES
    from emotion_pipeline.core.storage import open_storage
    from emotion_pipeline.orchestration.decisions import DRIFT_DECISION, DRIFT_TASKS

    states = {t["task_id"]: t["state"] for t in tasks}
    assert [states[DRIFT_TASKS[a]] for a in ("keep", "exclude", "reannotate")] == ["skipped", "success", "skipped"]
    assert local_ui.xcom(run_id, DRIFT_DECISION, "responder") == local_ui.user
    root = open_storage(root_uri)
    assert set(catalog.read_excluded_shards(root)) == {1}
    manifest = read_manifest(root_uri)
    dataset = catalog.read_dataset(root)
    labelled = dataset[(dataset["status"] == "ok") & dataset["label"].isin(CLASSES)].drop_duplicates("image_id")
    kept = labelled[labelled["image_id"].isin(manifest.loc[manifest["shard"] == 0, "image_id"])]
    per_class = kept["label"].value_counts()
    trained = local_ui.xcom(run_id, "train")
    assert sum(sum(c.values()) for c in trained["counts"].values()) == int(per_class[per_class >= 3].sum())
    assert len(kept) < len(labelled)  # shard 1 had labelled photos: the exclusion removed some


def read_manifest(root: str):
    from emotion_pipeline.core import catalog
    from emotion_pipeline.core.storage import open_storage
    from emotion_pipeline.core.tables import read_table

    return read_table(open_storage(root), catalog.MANIFEST)
