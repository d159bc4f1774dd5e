"""The DAG file parses fast and imports nothing heavy (it is parsed every few seconds); its tasks and
edges are the registry's (``registry.graph()``), built by ``orchestration.dag_builder``."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PARSE = textwrap.dedent("""
    import json, sys
    from airflow.dag_processing.dagbag import DagBag
    bag = DagBag(dag_folder=sys.argv[1])
    dag = bag.dags["emotion_pipeline"]
    heavy = sorted(m for m in ("tensorflow", "deepface", "keras", "mlflow", "shap", "cv2", "pandas")
                   if m in sys.modules)
    print(json.dumps({
        "errors": {k: str(v) for k, v in bag.import_errors.items()},
        "tasks": {t.task_id: {"queue": t.queue, "pool": t.pool, "retries": t.retries,
                              "timeout": t.execution_timeout.total_seconds() if t.execution_timeout else None,
                              "mapped": "Mapped" in type(t).__name__,
                              "mapped_over": [o.task_id for o in t.iter_mapped_dependencies()]
                                             if "Mapped" in type(t).__name__ else [],
                              "parallel": t.max_active_tis_per_dagrun, "trigger_rule": str(t.trigger_rule.value),
                              "outlets": [o.name for o in t.outlets],
                              "has_failure_callback": bool(t.on_failure_callback),
                              "upstream": sorted(t.upstream_task_ids)} for t in dag.tasks},
        "params": sorted(dag.params.keys()),
        "form": {k: [dag.params.get_param(k).schema.get(f) for f in ("title", "section")] for k in dag.params},
        "defaults": {k: dag.params.get_param(k).value for k in ("source", "shard_size", "alert_emails", "gold")},
        "timetable": type(dag.timetable).__name__,
        "assets": [a.name for a in dag.timetable.asset_condition.objects]
                  if getattr(dag.timetable, "asset_condition", None) else [],
        "heavy": heavy,
    }))
""")


def parse_dag(tmp_path, **env) -> dict:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("EMOTION_PIPELINE_")},
           "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"), **env}
    out = subprocess.run([sys.executable, "-c", PARSE, str(REPO / "dags")], env=env,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_dag_parses_with_the_expected_wiring(tmp_path):
    from emotion_pipeline.orchestration.decisions import graph

    parsed = parse_dag(tmp_path)
    assert parsed["errors"] == {}
    tasks = parsed["tasks"]
    assert set(tasks) == set(graph())  # every registered stage and alert, the questions, nothing else
    assert tasks["embed"]["queue"] == "gpu" and tasks["embed"]["pool"] == "gpu"
    assert tasks["annotate"]["queue"] == "gpu" and tasks["annotate"]["pool"] == "gpu"
    assert tasks["resize"]["queue"] != "gpu"
    assert tasks["resize"]["mapped"] and tasks["annotate"]["mapped"] and not tasks["merge"]["mapped"]
    assert all(t["retries"] >= 1 and t["has_failure_callback"] for t in tasks.values())
    assert {"source", "root", "shard_size", "detector", "actions", "drift_threshold", "alert_emails"} <= set(
        parsed["params"])
    assert parsed["heavy"] == []  # TensorFlow, DeepFace, pandas... load inside the tasks only
    # The trigger form: every param titled and in one of the sections, in their order.
    assert all(title and section for title, section in parsed["form"].values())
    assert list(dict.fromkeys(section for _, section in parsed["form"].values())) == [
        "Input", "Annotation", "Drift and alerts", "Embedding", "Training", "Gold check", "Caption check", "Report"]
    assert parsed["form"]["source"] == ["Source", "Input"]


def test_the_dag_wires_what_the_registry_declares(tmp_path):
    from emotion_pipeline.core.registry import STAGES, shards_from, upstream_of
    from emotion_pipeline.orchestration.decisions import graph

    tasks = parse_dag(tmp_path)["tasks"]
    assert {name: tuple(sorted(t["upstream"])) for name, t in tasks.items()} == {
        name: tuple(sorted(waits_for)) for name, waits_for in graph().items()}  # exactly the derived edges

    def ancestors(task: str) -> set[str]:
        found = set(tasks[task]["upstream"])
        for parent in tasks[task]["upstream"]:
            found |= ancestors(parent)
        return found

    for name, stage in STAGES.items():
        assert name in tasks, name  # every registered stage is a task
        assert set(upstream_of(stage)) | set(stage.after) <= ancestors(name), name  # and runs after what it reads
        assert tasks[name]["mapped"] == stage.per_shard, name
        assert tasks[name]["mapped_over"] == ([shards_from(stage)] if stage.per_shard else []), name
        assert tasks[name]["parallel"] == (stage.parallel_shards if stage.per_shard else None), name
        assert (tasks[name]["queue"] == "gpu") == (tasks[name]["pool"] == "gpu") == stage.gpu, name
        assert tasks[name]["outlets"] == ([stage.asset] if stage.asset else []), name
        # A whole-dataset stage runs when nothing upstream failed (a skipped train still gets evaluate).
        whole_dataset = not (stage.per_shard or stage.lists_shards)
        assert tasks[name]["trigger_rule"] == ("none_failed" if whole_dataset else "all_success"), name
        if stage.alert:
            assert tasks[stage.alert.task]["upstream"] == [name] and tasks[stage.alert.task]["timeout"] == (
                stage.alert.minutes * 60)


def test_every_task_has_a_timeout_scaled_by_the_shard_size(tmp_path):
    """A task stuck on a hung mount or service ends (and retries) instead of holding its slot forever."""
    from emotion_pipeline.core.registry import STAGES, execution_timeout

    default = parse_dag(tmp_path)["tasks"]
    assert all(t["timeout"] and t["timeout"] > 0 for t in default.values()), default
    big = parse_dag(tmp_path, EMOTION_PIPELINE_SHARD_SIZE="4000")["tasks"]
    for name, stage in STAGES.items():
        assert default[name]["timeout"] == execution_timeout(stage, 1000).total_seconds(), name
        assert (big[name]["timeout"] > default[name]["timeout"]) == stage.per_shard, name


def test_deployment_defaults_come_from_the_environment_and_enable_the_asset_schedule(tmp_path):
    manual = parse_dag(tmp_path)
    assert manual["timetable"] == "NullTimetable" and manual["defaults"]["shard_size"] == 1000

    deployed = parse_dag(tmp_path, EMOTION_PIPELINE_SOURCE="gs://photos/in", EMOTION_PIPELINE_ROOT="/data/out",
                         EMOTION_PIPELINE_SHARD_SIZE="250", EMOTION_PIPELINE_ALERT_EMAILS='["ops@example.com"]',
                         EMOTION_PIPELINE_GOLD="/data/gold")
    assert deployed["errors"] == {}
    assert deployed["defaults"] == {"source": "gs://photos/in", "shard_size": 250,
                                    "alert_emails": ["ops@example.com"], "gold": "/data/gold"}
    # With a default source and root, an event on the asset (a new batch) is what starts a run.
    assert deployed["timetable"] == "AssetTriggeredTimetable" and deployed["assets"] == ["emotion_photos"]


EMPTIED = textwrap.dedent("""
    import importlib.util, json, sys
    spec = importlib.util.spec_from_file_location("emotion_pipeline_dag", sys.argv[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from emotion_pipeline.orchestration.dag_builder import run_config
    config = run_config({"source": "in", "root": "out", "shard_size": None, "detector": "", "seed": 7}, module.PARAMS)
    print(json.dumps([config.shard_size, config.detector, config.seed]))
""")


def test_a_form_field_left_empty_takes_the_deployments_default_not_the_declared_one(tmp_path):
    """Emptied in the form, shard_size fell back to 1000 while runs without params used the deployment's 5."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("EMOTION_PIPELINE_")},
           "AIRFLOW_HOME": str(tmp_path), "EMOTION_PIPELINE_SHARD_SIZE": "5", "EMOTION_PIPELINE_DETECTOR": "opencv"}
    out = subprocess.run([sys.executable, "-c", EMPTIED, str(REPO / "dags" / "emotion_pipeline_dag.py")], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == [5, "opencv", 7]


def test_the_questions_to_people_sit_between_the_stages_they_concern(tmp_path):
    """The drift question follows check_drift and merge, and train waits for its answers' tasks (an
    exclusion counts in this run's training); the promotion approval follows evaluate, and only its
    approval leads to the task that moves the champion alias. Both are Airflow's HITL operators."""
    from emotion_pipeline.core.registry import graph as stage_graph
    from emotion_pipeline.orchestration.decisions import (
        DRIFT_DECISION,
        DRIFT_TASKS,
        PROMOTE,
        PROMOTION_APPROVAL,
        graph,
    )

    tasks = parse_dag(tmp_path)["tasks"]
    answers = set(DRIFT_TASKS.values())
    assert answers == {"keep_drifted_shards", "exclude_drifted_shards", "reannotate_drifted_shards"}
    assert tasks[DRIFT_DECISION]["upstream"] == ["check_drift", "merge"]
    assert all(tasks[a]["upstream"] == [DRIFT_DECISION] for a in answers)
    assert answers <= set(tasks["train"]["upstream"]) and tasks["train"]["trigger_rule"] == "none_failed"
    assert tasks[PROMOTION_APPROVAL]["upstream"] == ["evaluate", "train"]
    assert tasks[PROMOTE]["upstream"] == [PROMOTION_APPROVAL]
    assert set(graph()) - set(stage_graph()) == {DRIFT_DECISION, *answers, PROMOTION_APPROVAL, PROMOTE}
    # The question's own work has a timeout; the wait for people is its response timeout (not held).
    assert tasks[DRIFT_DECISION]["timeout"] and tasks[PROMOTION_APPROVAL]["timeout"]
    assert all(tasks[t]["has_failure_callback"] for t in (DRIFT_DECISION, PROMOTION_APPROVAL, PROMOTE))


def test_the_questions_are_airflows_hitl_operators_with_the_knobs_defaults():
    from airflow.providers.standard.operators.hitl import ApprovalOperator, HITLBranchOperator
    from airflow.sdk import DAG

    from emotion_pipeline.core.config import DRIFT_DECISIONS
    from emotion_pipeline.orchestration import decisions

    with DAG("questions"):
        made = decisions.tasks({})
    drift, approval = made[decisions.DRIFT_DECISION], made[decisions.PROMOTION_APPROVAL]
    assert isinstance(drift, HITLBranchOperator) and isinstance(approval, ApprovalOperator)
    assert set(decisions.DRIFT_OPTIONS) == set(DRIFT_DECISIONS) == set(decisions.DRIFT_TASKS)
    assert drift.options_mapping == {decisions.DRIFT_OPTIONS[a]: decisions.DRIFT_TASKS[a] for a in DRIFT_DECISIONS}
    assert drift.defaults == [decisions.DRIFT_OPTIONS["keep"]] and approval.defaults == [approval.REJECT]
    assert drift.response_timeout.total_seconds() == approval.response_timeout.total_seconds() == 24 * 3600
