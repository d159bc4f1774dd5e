"""
### Emotion pipeline

Photos (a folder or `gs://bucket/prefix`) -> 224x224 copies and metadata -> DeepFace annotations in
shards -> near duplicates -> label-drift monitoring with e-mail alerts ->
`datasets/final_emotion_dataset.parquet` -> ResNet50 vectors -> a Keras Tuner classifier tracked in
MLflow -> evaluation, SHAP and `reports/<model version>/report.html`.

Wiring only: every task runs one stage of `emotion_pipeline.core.registry` (`stage_task(name)`), which
says whether it maps over shards, runs on the GPU pool, and when it has nothing to do. Shards are the
unit of dynamic task mapping (never single photos); only shards with work left are mapped, so a
re-run with nothing new launches no shard task. DeepFace, ResNet50 and SHAP run on the `gpu` queue
and pool; unchanged training data retrains nothing unless `force_train` is set. Every task's output
names the worker that ran it (`worker`).

Runs start from the UI's trigger form, the REST API, or an event on the asset `emotion_photos`
(`POST /api/v2/assets/events` when a new batch has landed in the source): such runs use the
form's defaults, $EMOTION_PIPELINE_SOURCE and $EMOTION_PIPELINE_ROOT, and without both the DAG
is started by hand only. With $EMOTION_PIPELINE_SCHEDULE too (a cron expression or preset such as
`@daily`), runs also start on that schedule (asset event or time, whichever comes first), so that
`airflow backfill create --from-date ... --to-date ...` and the UI's Backfill work; with
$EMOTION_PIPELINE_BATCH=`{{ ds }}` a run for date D reads the batch folder `source/D/` only, while the
dataset, the drift log and the model keep covering every batch seen so far.
"""
from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, task

from emotion_pipeline.core.config import PipelineConfig, deployment_default, form_params
from emotion_pipeline.core.registry import STAGES, execution_timeout, stage

# Whoever lands a new batch of photos in the source posts an event on this asset; that starts a run
# with the default params, so it can only be the schedule where the default source and root are set.
NEW_PHOTOS = Asset(name="emotion_photos", uri="emotion-pipeline://photos")
# What the pipeline produces, as assets: every run posts an event on each, with the stage's result as
# extra (rows, vectors, model version and metrics; "skipped": true when nothing changed), so another
# DAG can be scheduled on "a new dataset" or "a new model version".
OUTPUTS = {spec.asset: Asset(name=spec.asset, uri=f"emotion-pipeline://{spec.asset.removeprefix('emotion_')}")
           for spec in STAGES.values() if spec.asset}


# The trigger form, grouped in sections: every knob of emotion_pipeline.core.config with a section. Its
# defaults are the deployment's ($EMOTION_PIPELINE_<NAME>, or `emotion-pipeline ui --<knob> ...`): runs
# that start without params (scheduled, asset-triggered, a backfill without "override") use them.
PARAMS = {name: Param(deployment_default(name, default), **schema) for name, (default, schema) in form_params().items()}


def schedule():
    """Hand-started only, unless the deployment set the defaults a run without params needs (source
    and root): then an asset event starts a run, and with $EMOTION_PIPELINE_SCHEDULE the clock too."""
    if not (PARAMS["source"].value and PARAMS["root"].value):
        return None
    cron = os.environ.get("EMOTION_PIPELINE_SCHEDULE")
    if not cron:
        return [NEW_PHOTOS]
    return AssetOrTimeSchedule(timetable=CronTriggerTimetable(cron, timezone="UTC"), assets=[NEW_PHOTOS])


SCHEDULE = schedule()


def _with_deployment_defaults(params) -> dict:
    """A form field left empty (null) means the deployment's default, as for a run started without
    params, not the knob's declared one."""
    return {name: PARAMS[name].value if name in PARAMS and value in (None, "") else value
            for name, value in params.items()}


def _config(params) -> PipelineConfig:
    return PipelineConfig.from_mapping(_with_deployment_defaults(params))


def _tasks_run_here() -> bool:
    """Whether every task runs on this machine (LocalExecutor: `ui`, `emotion-pipeline run`). With
    Celery, discover's worker is not the GPU worker that embeds: its files say nothing of the other's."""
    from airflow.configuration import conf

    return conf.get("core", "executor").split(".")[-1] in ("LocalExecutor", "SequentialExecutor")


def _on_failure(context) -> None:
    from emotion_pipeline.orchestration.airflow_adapter import notify_failure

    notify_failure(context)


def stage_task(name: str, **options):
    """The task that runs registered stage ``name``: mapped over shards for a per-shard stage (its
    argument is the shard, or the upstream shard task's result), once per run otherwise. GPU stages
    go to the `gpu` queue and pool. Returns the stage's result plus the worker that ran it, so GPU
    routing can be audited from the outputs."""
    spec = stage(name)
    # Scaled by the deployment's shard size (EMOTION_PIPELINE_SHARD_SIZE): a timeout is fixed when the
    # DAG is parsed, so a run with much bigger shards should have the deployment default raised too.
    options = {"execution_timeout": execution_timeout(spec, PARAMS["shard_size"].value), **options}
    if spec.gpu:
        options = {"queue": "gpu", "pool": "gpu", **options}
    if not spec.per_shard:
        options = {"trigger_rule": "none_failed", **options}

    if spec.asset:
        options = {"outlets": [OUTPUTS[spec.asset]], **options}

    @task(task_id=name, doc_md=f"Runs stage `{name}` (`{spec.function}`).", **options)
    def run_stage_task(shard=None, params=None, run_id=None, ti=None, outlet_events=None) -> dict:
        from emotion_pipeline.core.runner import run_stage
        from emotion_pipeline.orchestration.airflow_adapter import asset_extra, fail_fast, skip_without_output

        shard = shard["shard"] if isinstance(shard, dict) else shard
        config = _config(params)
        with fail_fast():  # bad settings, missing weights, no bucket, no permission: no retry
            result = run_stage(name, config, shard, run_id=run_id or "")
        returned = {**result.to_dict(), "worker": ti.hostname}
        if spec.asset:  # the event other DAGs can be scheduled on: what this run made of the output
            skip_without_output(result, returned, ti)  # no model, no event: a skipped task posts none
            outlet_events[OUTPUTS[spec.asset]].extra = asset_extra(result, config)
        return returned

    return run_stage_task


@dag(
    dag_id="emotion_pipeline",
    schedule=SCHEDULE,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,
    params=PARAMS,
    doc_md=__doc__,
    tags=["emotion", "deepface"],
    default_args={
        "retries": 2,
        "retry_delay": timedelta(seconds=20),
        "retry_exponential_backoff": True,
        "on_failure_callback": _on_failure,
    },
)
def emotion_pipeline():
    @task(execution_timeout=execution_timeout(stage("discover"), PARAMS["shard_size"].value))
    def discover(params=None, ti=None, **context) -> list[int]:
        """Returns the shards with work left (what the shard tasks map over); the full summary
        (photos found, new, hashed, all shards) goes to the XCom key ``summary``. The batch folder
        is rendered with the run's context (``{{ ds }}``: the run's date, a backfill's too); a run
        without a date reads the folder its asset event names (``extra.batch``), else everything."""
        from emotion_pipeline.core.runner import run_stage
        from emotion_pipeline.modeling.embedding import check_weights
        from emotion_pipeline.orchestration.airflow_adapter import fail_fast, run_batch_folder

        params = _with_deployment_defaults(params)
        values = {**params, "batch": run_batch_folder(params.get("batch") or "", context)}
        with fail_fast():
            config = PipelineConfig.from_mapping(values)  # the batch as rendered: "" is the whole source
            if _tasks_run_here():
                check_weights(config.embed_weights)  # fail here in a second, not at embed after annotate
            summary = run_stage("discover", config).to_dict()
        ti.xcom_push(key="summary", value=summary)
        return summary["pending"]

    @task(execution_timeout=timedelta(minutes=10))
    def alert_on_drift(report: dict, **context) -> bool:
        from emotion_pipeline.orchestration.airflow_adapter import send_drift_alert

        return send_drift_alert(_config(context["params"]), report, context)

    resized = stage_task("resize", max_active_tis_per_dagrun=4).expand(shard=discover())
    annotated = stage_task("annotate").expand(shard=resized)
    embedded = stage_task("embed").expand(shard=annotated)
    drift = stage_task("check_drift")()
    merged = stage_task("merge")()
    features = stage_task("assemble_features")()
    trained = stage_task("train")()
    resized >> stage_task("dedupe")() >> merged
    annotated >> drift >> merged
    alert_on_drift(drift)
    embedded >> features
    [merged, features, stage_task("check_gold")()] >> trained >> stage_task("evaluate")()


emotion_pipeline()
