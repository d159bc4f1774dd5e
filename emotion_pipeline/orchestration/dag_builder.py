"""How the stage registry becomes Airflow tasks: the one place that knows it.

``dags/emotion_pipeline_dag.py`` declares the DAG (its schedule, the trigger form's params, the
defaults every task gets: retries, the failure callback) and calls ``add_stage_tasks`` in it. From
``registry.graph()`` that makes one task per registered stage, wired as the stages declare (what
they read, what they run ``after``), one per declared ``Alert``, and the questions people answer in
the UI with the tasks that carry out their answers (``decisions.graph()``: drift, promotion):

- the stage that lists the shards (discover) returns the shards with work left, which is what the
  per-shard stages map over; its full summary goes to the XCom key ``summary``;
- a per-shard stage is mapped over the shards its ``shards_from`` stage returns (at most
  ``parallel_shards`` of them at once); a whole-dataset one runs once per run, when no upstream
  task failed (``none_failed``: a stage with nothing to do skips none of its downstream);
- GPU stages go to the ``gpu`` queue and pool; every task's ``execution_timeout`` comes from the
  registry, scaled by the deployment's shard size;
- a stage with an ``asset`` posts an event on it (its result as extra) when it succeeds;
- every stage task returns the stage's result plus the worker that ran it (``worker``), so GPU
  routing can be audited from the outputs.

It is imported when the DAG file is parsed: it imports nothing heavy (the stage functions, TensorFlow,
pandas... load inside the tasks only).
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from airflow.sdk import Asset, Param, XComArg, task

from emotion_pipeline.core.config import PipelineConfig
from emotion_pipeline.core.registry import STAGES, Alert, Stage, execution_timeout, shards_from
from emotion_pipeline.orchestration import decisions


def outputs() -> dict[str, Asset]:
    """The assets the pipeline produces, by name (``emotion_dataset`` -> ``emotion-pipeline://dataset``):
    another DAG can be scheduled on "a new dataset" or "a new model version"."""
    return {spec.asset: Asset(name=spec.asset, uri=f"emotion-pipeline://{spec.asset.removeprefix('emotion_')}")
            for spec in STAGES.values() if spec.asset}


def with_deployment_defaults(params: Mapping[str, Any], defaults: Mapping[str, Param]) -> dict[str, Any]:
    """A form field left empty (null) means the deployment's default, as for a run started without
    params, not the knob's declared one."""
    return {name: defaults[name].value if name in defaults and value in (None, "") else value
            for name, value in params.items()}


def run_config(params: Mapping[str, Any], defaults: Mapping[str, Param]) -> PipelineConfig:
    """The settings a task runs with: the run's params, the deployment's defaults where left empty."""
    return PipelineConfig.from_mapping(with_deployment_defaults(params, defaults))


def on_failure(context: Any) -> None:
    """``on_failure_callback``: mails the failed task to the run's ``alert_emails``."""
    from emotion_pipeline.orchestration.airflow_adapter import notify_failure

    notify_failure(context)


def add_stage_tasks(params: Mapping[str, Param]) -> dict[str, XComArg]:
    """Inside a ``@dag`` function: every task of ``decisions.graph()`` (``registry.graph()`` and the
    questions to people), in order, and its edges.

    Args:
        params: the DAG's params (the trigger form), whose values are the deployment's defaults.

    Returns:
        Each task's output by task id.
    """
    made: dict[str, XComArg] = {}
    assets = outputs()
    questions = decisions.tasks(params)  # people's decisions: they read the results they need from XCom
    for name, waits_for in decisions.graph().items():
        spec = STAGES.get(name)
        argument = None  # the task whose output it takes: that edge comes with the argument
        if name in questions:
            made[name] = questions[name]
        elif spec is None:  # an alert task: it reads its stage's result
            stage = STAGES[argument := waits_for[0]]
            assert stage.alert is not None
            made[name] = _alert_task(stage.alert, params)(made[argument])
        elif spec.lists_shards:
            made[name] = _shard_listing_task(spec, params)()
        elif spec.per_shard:
            made[name] = _stage_task(spec, params, assets).expand(shard=made[argument := shards_from(spec)])
        else:
            made[name] = _stage_task(spec, params, assets)()
        for upstream in waits_for:
            if upstream != argument:
                made[upstream] >> made[name]
    return made


def _timeout(spec: Stage, defaults: Mapping[str, Param]) -> timedelta:
    # Scaled by the deployment's shard size (EMOTION_PIPELINE_SHARD_SIZE): a timeout is fixed when the
    # DAG is parsed, so a run with much bigger shards should have the deployment default raised too.
    return execution_timeout(spec, defaults["shard_size"].value)


def _stage_task(spec: Stage, defaults: Mapping[str, Param], assets: dict[str, Asset]):
    """The task that runs stage ``spec``: mapped over shards for a per-shard stage (its argument is the
    shard, or the upstream shard task's result), once per run otherwise."""
    options: dict[str, Any] = {"execution_timeout": _timeout(spec, defaults)}
    if spec.gpu:
        options |= {"queue": "gpu", "pool": "gpu"}
    if spec.per_shard and spec.parallel_shards:
        options["max_active_tis_per_dagrun"] = spec.parallel_shards
    if not spec.per_shard:
        options["trigger_rule"] = "none_failed"
    asset = assets[spec.asset] if spec.asset else None
    if asset:
        options["outlets"] = [asset]

    @task(task_id=spec.name, doc_md=f"Runs stage `{spec.name}` (`{spec.function}`).", **options)
    def run_stage_task(shard=None, params=None, run_id=None, ti=None, outlet_events=None) -> dict:
        from emotion_pipeline.core.runner import run_stage
        from emotion_pipeline.orchestration.airflow_adapter import asset_extra, fail_fast, skip_without_output

        shard = shard["shard"] if isinstance(shard, dict) else shard
        config = run_config(params, defaults)
        with fail_fast():  # bad settings, missing weights, no bucket, no permission: no retry
            result = run_stage(spec.name, config, shard, run_id=run_id or "")
        returned = {**result.to_dict(), "worker": ti.hostname}
        if asset:  # the event other DAGs can be scheduled on: what this run made of the output
            skip_without_output(result, returned, ti)  # no model, no event: a skipped task posts none
            outlet_events[asset].extra = asset_extra(result, config)
        return returned

    return run_stage_task


def _shard_listing_task(spec: Stage, defaults: Mapping[str, Param]):
    """The task of the stage that lists the shards (discover): it returns those with work left."""

    @task(task_id=spec.name, execution_timeout=_timeout(spec, defaults))
    def list_shards(params=None, ti=None, **context) -> list[int]:
        """Returns the shards with work left (what the shard tasks map over); the full summary
        (photos found, new, hashed, all shards) goes to the XCom key ``summary``. The batch folder
        is rendered with the run's context (``{{ ds }}``: the run's date, a backfill's too); a run
        without a date reads the folder its asset event names (``extra.batch``), else everything."""
        from emotion_pipeline.core.runner import run_stage
        from emotion_pipeline.modeling.embedding import check_weights
        from emotion_pipeline.orchestration.airflow_adapter import fail_fast, run_batch_folder

        params = with_deployment_defaults(params, defaults)
        values = {**params, "batch": run_batch_folder(params.get("batch") or "", context)}
        with fail_fast():
            config = PipelineConfig.from_mapping(values)  # the batch as rendered: "" is the whole source
            if _tasks_run_here():
                check_weights(config.embed_weights)  # fail here in a second, not at embed after annotate
            summary = run_stage(spec.name, config).to_dict()
        ti.xcom_push(key="summary", value=summary)
        return summary["pending"]

    return list_shards


def _alert_task(alert: Alert, defaults: Mapping[str, Param]):
    """The task that hands a stage's result to its ``Alert`` function (check_drift's e-mail)."""

    @task(task_id=alert.task, execution_timeout=timedelta(minutes=alert.minutes))
    def send_alert(report: dict, **context) -> bool:
        return _function(alert.function)(run_config(context["params"], defaults), report, context)

    return send_alert


def _tasks_run_here() -> bool:
    """Whether every task runs on this machine (LocalExecutor: `ui`, `emotion-pipeline run`). With
    Celery, discover's worker is not the GPU worker that embeds: its files say nothing of the other's."""
    from airflow.configuration import conf

    return conf.get("core", "executor").split(".")[-1] in ("LocalExecutor", "SequentialExecutor")


def _function(target: str) -> Callable[..., Any]:
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)
