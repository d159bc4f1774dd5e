"""
### Emotion pipeline

Photos (a folder or `gs://bucket/prefix`) -> 224x224 copies and metadata -> DeepFace annotations in
shards -> near duplicates -> label-drift monitoring with e-mail alerts ->
`datasets/final_emotion_dataset.parquet` -> ResNet50 vectors -> a Keras Tuner classifier tracked in
MLflow -> evaluation, SHAP and `reports/<model version>/report.html`.

Declaration only: the tasks and their edges come from the stage registry
(`emotion_pipeline.core.registry`), whose declarations say what each stage reads and runs after,
whether it maps over shards, runs on the GPU pool, and when it has nothing to do;
`emotion_pipeline.orchestration.dag_builder` makes them Airflow tasks. Shards are the unit of dynamic
task mapping (never single photos); only shards with work left are mapped, so a re-run with nothing
new launches no shard task. DeepFace, ResNet50 and SHAP run on the `gpu` queue
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

from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable, Param, dag

from emotion_pipeline.core.config import deployment_default, form_params
from emotion_pipeline.orchestration.dag_builder import add_stage_tasks, on_failure

# Whoever lands a new batch of photos in the source posts an event on this asset; that starts a run
# with the default params, so it can only be the schedule where the default source and root are set.
# What the pipeline produces are assets too (the registry's `asset`s): every run posts an event on
# each, with the stage's result as extra, so another DAG can be scheduled on "a new model version".
NEW_PHOTOS = Asset(name="emotion_photos", uri="emotion-pipeline://photos")


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


@dag(
    dag_id="emotion_pipeline",
    schedule=schedule(),
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
        "on_failure_callback": on_failure,
    },
)
def emotion_pipeline():
    add_stage_tasks(PARAMS)  # one task per registered stage (and alert), wired as the registry declares


emotion_pipeline()
