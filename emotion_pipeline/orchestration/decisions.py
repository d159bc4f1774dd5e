"""The questions the DAG asks people in the Airflow UI (Airflow's human-in-the-loop operators), and the
tasks that carry out the answers.

- ``drift_decision`` (a ``HITLBranchOperator``), once the dataset is merged, when check_drift found
  drifted shards: keep them, exclude their photos from training, or annotate them again on the next
  run. One task per answer follows it (``keep_drifted_shards``...); train waits for them, so an
  exclusion counts in this run's training. No drift: the question is not asked (the task skips).
- ``promotion_approval`` (an ``ApprovalOperator``), after evaluate, with ``approve_promotion`` on and a
  model that beat the champion: the challenger's and the champion's figures side by side; on
  approval ``promote_champion`` moves the ``champion`` alias (train left it where it was).

While a question waits (``AWAITING_INPUT``: Airflow 3.3) no worker slot is held; after its timeout
knob Airflow takes the default knob's answer. With ``ask_people`` off (``emotion-pipeline run``:
``dag.test`` has no UI) the default answer is taken at once, without asking.

The DAG file is parsed every few seconds: nothing heavy is imported here (stages, MLflow and pandas
load inside the tasks).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator, HITLBranchOperator
from airflow.sdk import Param, task

from emotion_pipeline.core import catalog, registry
from emotion_pipeline.core.config import PipelineConfig

log = logging.getLogger(__name__)

DRIFT_DECISION = "drift_decision"
# Each answer (the knob's value) as the UI's button shows it, and the task that carries it out.
DRIFT_OPTIONS = {"keep": "Keep the shards", "exclude": "Exclude them from training",
                 "reannotate": "Annotate them again"}
DRIFT_TASKS = {"keep": "keep_drifted_shards", "exclude": "exclude_drifted_shards",
               "reannotate": "reannotate_drifted_shards"}
PROMOTION_APPROVAL = "promotion_approval"
PROMOTE = "promote_champion"
QUESTION_MINUTES = 10  # execution_timeout of a question's own work (the wait for people is not counted)


def graph() -> dict[str, tuple[str, ...]]:
    """``registry.graph()`` with the questions and their answers' tasks: the DAG's tasks in order and
    the tasks each waits for. The drift question waits for merge (annotating again removes markers
    merge covers), train for its answers; the approval waits for train and evaluate. A question whose
    stages are not all registered is left out."""
    stages = registry.graph()
    drift = {"check_drift", "merge", "train"} <= stages.keys()
    promotion = {"train", "evaluate"} <= stages.keys()
    waits: dict[str, tuple[str, ...]] = {}
    for name, waits_for in stages.items():
        waits[name] = (*waits_for, *DRIFT_TASKS.values()) if drift and name == "train" else waits_for
        if drift and name == "merge":
            waits[DRIFT_DECISION] = ("check_drift", "merge")
            waits |= {branch: (DRIFT_DECISION,) for branch in DRIFT_TASKS.values()}
        if promotion and name == "evaluate":
            waits[PROMOTION_APPROVAL] = ("train", "evaluate")
            waits[PROMOTE] = (PROMOTION_APPROVAL,)
    return waits


def tasks(params: Mapping[str, Param]) -> dict[str, Any]:
    """The questions of ``graph()`` and their answers' tasks, by task id (``dag_builder`` wires them)."""
    wanted = graph()
    made: dict[str, Any] = {}
    if DRIFT_DECISION in wanted:
        made[DRIFT_DECISION] = DriftDecision(task_id=DRIFT_DECISION, form_defaults=params)
        made |= {branch: _drift_answer_task(answer, params)() for answer, branch in DRIFT_TASKS.items()}
    if PROMOTION_APPROVAL in wanted:
        made[PROMOTION_APPROVAL] = PromotionApproval(task_id=PROMOTION_APPROVAL, form_defaults=params)
        made[PROMOTE] = _promote_task(params)()
    return made


def _config(context: Any, defaults: Mapping[str, Param]) -> PipelineConfig:
    from emotion_pipeline.orchestration.dag_builder import run_config

    return run_config(context["params"], defaults)


def _skip(reason: str) -> None:
    from airflow.sdk.exceptions import AirflowSkipException

    raise AirflowSkipException(reason)


class _AnswersWithoutPeople:
    """What both questions add to Airflow's operators: ``answer_now`` takes ``option`` at once, as if
    someone had chosen it, when nobody is asked (``ask_people`` off); the answer's author goes to the
    XCom key ``responder`` (the branch operator's own result is the branch taken, without it)."""

    log: Any  # the operator's logger, from Airflow's BaseOperator beside which this mixin is used

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        # Pushed first: the branch operator's execute_complete ends by skipping the branches not
        # taken, which in Airflow 3 raises (DownstreamTasksSkipped), so nothing after it would run.
        user = event.get("responded_by_user") or {}
        who = user.get("name") or user.get("id")
        context["ti"].xcom_push(key="responder", value=who or f"the default ({_why_default(event)})")
        return super().execute_complete(context, event)  # type: ignore[misc]  # the HITL operator's

    def answer_now(self, context: Any, option: str) -> Any:
        from airflow.sdk.timezone import utcnow

        self.log.info("ask_people is off: taking the default answer %r without asking", option)
        return self.execute_complete(context, {"chosen_options": [option], "params_input": {},
                                               "responded_at": utcnow(), "responded_by_user": None})


class DriftDecision(_AnswersWithoutPeople, HITLBranchOperator):
    """Keep, exclude or re-annotate the shards check_drift found drifted; skips when none drifted."""

    def __init__(self, *, form_defaults: Mapping[str, Param], **kwargs: Any) -> None:
        options = list(DRIFT_OPTIONS.values())
        super().__init__(subject="Label drift", options=options,
                         options_mapping={DRIFT_OPTIONS[a]: DRIFT_TASKS[a] for a in DRIFT_OPTIONS},
                         defaults=DRIFT_OPTIONS["keep"], response_timeout=timedelta(hours=24),
                         execution_timeout=timedelta(minutes=QUESTION_MINUTES),
                         doc_md="Asks people what to do with drifted shards (skips when none drifted).", **kwargs)
        self.form_defaults = form_defaults  # the deployment's defaults, for a form field left empty

    def execute(self, context: Any) -> Any:
        config = _config(context, self.form_defaults)
        report = context["ti"].xcom_pull(task_ids="check_drift") or {}
        shards = [int(d["shard"]) for d in report.get("drifted") or []]
        if not shards:
            _skip("no shard drifted: nothing to decide")
        default = DRIFT_OPTIONS[config.drift_decision_default]
        if not config.ask_people:
            return self.answer_now(context, default)
        self.defaults = [default]
        self.response_timeout = timedelta(hours=config.drift_decision_timeout_hours)
        self.subject = f"Label drift in shard(s) {', '.join(map(str, shards))}: what should training do?"
        self.body = drift_question(report, config)
        return super().execute(context)


def drift_question(report: dict[str, Any], config: PipelineConfig) -> str:
    """The question's body (Markdown): each drifted shard's figures, what each answer does, the default."""
    rows = "\n".join(
        f"| {d['shard']} | {d['images']} | {d['labelled']} | {_figure(d['js_distance'])} | "
        f"{d['no_face_rate']:.0%} (ref {d['reference_no_face_rate']:.0%}) |" for d in report["drifted"])
    return (
        f"The label distribution of these shards moved away from the reference (JS distance threshold "
        f"{report['threshold']}, no-face change threshold {report['no_face_threshold']}; charts and log: "
        f"`{report['log_uri']}`).\n\n| shard | photos | labelled | JS distance | no-face rate |\n"
        f"|---|---|---|---|---|\n"
        f"{rows}\n\n- **{DRIFT_OPTIONS['keep']}**: they train as they are.\n"
        f"- **{DRIFT_OPTIONS['exclude']}**: their photos leave the training rows from this run on "
        f"(`{catalog.EXCLUDED_SHARDS}`; delete a shard's entry to take it back).\n"
        f"- **{DRIFT_OPTIONS['reannotate']}**: the next run annotates them again (its detector and label "
        f"settings: e.g. trigger it with another face detector); this run trains on them as they are.\n\n"
        f"Training waits for the answer. Without one in {config.drift_decision_timeout_hours:g} hours: "
        f"**{DRIFT_OPTIONS[config.drift_decision_default]}**.")


def _figure(value: Any) -> str:
    return "not judged" if value is None or math.isnan(value) else f"{value:.3f}"  # NaN: too few photos


def _drift_answer_task(answer: str, defaults: Mapping[str, Param]):
    """The task that carries out one answer on the drifted shards; returns what it did."""

    @task(task_id=DRIFT_TASKS[answer], execution_timeout=timedelta(minutes=QUESTION_MINUTES),
          doc_md=f"Runs when the drift question's answer is '{DRIFT_OPTIONS[answer]}'.")
    def carry_out(params=None, ti=None, run_id=None) -> dict:
        from emotion_pipeline.core.storage import open_storage

        config = _config({"params": params}, defaults)
        report = ti.xcom_pull(task_ids="check_drift") or {}
        shards = sorted(int(d["shard"]) for d in report.get("drifted") or [])
        decided_by = _responder(ti, DRIFT_DECISION)
        done = apply_drift_answer(answer, open_storage(config.root), shards, run_id or "", decided_by)
        log.info("%s", done["said"])
        return done

    return carry_out


def apply_drift_answer(answer: str, root, shards: list[int], run_id: str, decided_by: str) -> dict[str, Any]:
    """What an answer to the drift question does to the root (the stages' own functions); returns it
    in words (``said``) with the shards and, for a re-annotation, the markers removed."""
    listed = ", ".join(map(str, shards))
    if answer == "exclude":
        from emotion_pipeline.stages.check_drift import exclude_shards

        excluded = exclude_shards(root, shards, run_id, decided_by)
        said = (f"shard(s) {listed} excluded from training by {decided_by}; excluded now: "
                f"{', '.join(map(str, sorted(excluded)))}")
        return {"answer": answer, "shards": shards, "said": said}
    if answer == "reannotate":
        from emotion_pipeline.stages.annotate import annotate_again

        removed = annotate_again(root, shards)
        said = (f"shard(s) {listed}: annotate's done markers removed ({decided_by}), so the next run "
                f"annotates them again; this run trains on their current labels")
        return {"answer": answer, "shards": shards, "removed_markers": removed, "said": said}
    return {"answer": answer, "shards": shards, "said": f"shard(s) {listed} kept as they are ({decided_by})"}


def _why_default(event: dict[str, Any]) -> str:
    return "nobody answered in time" if event.get("timedout") else "nobody was asked: ask_people is off"


def _responder(ti: Any, question: str) -> str:
    """Who answered ``question`` (its task's XCom ``responder``)."""
    return ti.xcom_pull(task_ids=question, key="responder") or "unknown"


class PromotionApproval(_AnswersWithoutPeople, ApprovalOperator):
    """With ``approve_promotion``: approve the model that beat the champion; skips otherwise."""

    def __init__(self, *, form_defaults: Mapping[str, Param], **kwargs: Any) -> None:
        super().__init__(subject="Promote the new model?", defaults=self.REJECT,
                         response_timeout=timedelta(hours=24), execution_timeout=timedelta(minutes=QUESTION_MINUTES),
                         doc_md="Asks people to approve a new champion (approve_promotion on).", **kwargs)
        self.form_defaults = form_defaults

    def execute(self, context: Any) -> Any:
        config = _config(context, self.form_defaults)
        if not config.approve_promotion:
            _skip("approve_promotion is off: train promotes automatically")
        trained = context["ti"].xcom_pull(task_ids="train") or {}
        if not trained.get("awaiting_approval"):
            _skip(f"no model awaits approval ({trained.get('promotion') or trained.get('reason') or 'no model'})")
        if _champion_version(config) == str(trained["model_version"]):  # train's result recorded, approved since
            _skip(f"version {trained['model_version']} is the champion already")
        default = self.APPROVE if config.promotion_decision_default == "approve" else self.REJECT
        if not config.ask_people:
            return self.answer_now(context, default)
        self.defaults = [default]
        self.response_timeout = timedelta(hours=config.promotion_decision_timeout_hours)
        self.subject = f"Make version {trained['model_version']} of {config.registered_model} the champion?"
        self.body = promotion_question(config, trained, context["ti"].xcom_pull(task_ids="evaluate") or {})
        return super().execute(context)


def _champion_version(config: PipelineConfig) -> str | None:
    from emotion_pipeline.modeling import tracking

    mlflow = tracking.use_experiment(config)
    try:
        return str(mlflow.MlflowClient().get_model_version_by_alias(config.registered_model, tracking.CHAMPION).version)
    except mlflow.exceptions.MlflowException:
        return None


def promotion_question(config: PipelineConfig, trained: dict[str, Any], evaluated: dict[str, Any]) -> str:
    """The approval's body (Markdown): the challenger's and the champion's figures side by side."""
    figures = promotion_figures(config, trained)
    rows = "\n".join(f"| {name} | {_f1(challenger)} | {_f1(champion)} |" for name, challenger, champion in figures)
    version = trained["model_version"]
    return (f"Version {version} beat the champion ({trained['promotion']}). Macro-F1 (n):\n\n"
            f"| | version {version} | champion |\n|---|---|---|\n{rows}\n\n"
            f"Report: `{evaluated.get('report_uri', 'not written')}`. Approve: the `champion` alias moves to "
            f"version {version} (the API serves it). Reject: the champion stays. Without an answer in "
            f"{config.promotion_decision_timeout_hours:g} hours: **{config.promotion_decision_default}**.")


def _f1(figure: tuple[float, int] | None) -> str:
    return "-" if figure is None else f"{figure[0]:.3f} ({figure[1]})"


def promotion_figures(config: PipelineConfig, trained: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(what, the challenger's (macro-F1, n), the champion's) for the test photos neither trained on
    (train's comparison, in its MLflow run), the gold set, the reviewed split (people's labels) and the
    captions where checked (each version's evaluation, ``metrics.json``)."""
    from emotion_pipeline.core.storage import open_storage
    from emotion_pipeline.core.tables import read_json
    from emotion_pipeline.modeling import tracking

    metrics = tracking.use_experiment(config).MlflowClient().get_run(trained["run_id"]).data.metrics
    rows = int(metrics.get("champion_comparison_rows", 0))
    tested = sum((trained.get("counts") or {}).get("test", {}).values())
    same: list[tuple[str, Any, Any]] = [("its test split", (trained["test_macro_f1"], tested), None)]
    if rows:  # the champion on the same photos (train's comparison)
        same.append(("test photos neither trained on", (metrics["challenger_test_macro_f1"], rows),
                     (metrics["champion_test_macro_f1"], rows)))
    champion = _champion_version(config)
    root = open_storage(config.root)
    documents = [read_json(root, catalog.report_file(v, catalog.REPORT_METRICS)) or {} if v else {}
                 for v in (str(trained["model_version"]), champion)]
    for check, name in (("gold", "gold set (people's labels)"), ("reviewed", "reviewed photos (people's labels)"),
                        ("captions", "captions")):
        found = [((d.get(check) or {}).get("model") or {}) for d in documents]
        if any(found):
            challenger, champion_figures = ((f["macro_f1"], f["n"]) if f else None for f in found)
            same.append((name, challenger, champion_figures))
    return same


def _promote_task(defaults: Mapping[str, Param]):
    @task(task_id=PROMOTE, execution_timeout=timedelta(minutes=QUESTION_MINUTES),
          doc_md="Moves the champion alias to the approved model (runs only on approval).")
    def promote(params=None, ti=None) -> str:
        from emotion_pipeline.stages.train import promote_approved

        config = _config({"params": params}, defaults)
        return promote_approved(config, ti.xcom_pull(task_ids="train"),
                                _responder(ti, PROMOTION_APPROVAL))

    return promote
