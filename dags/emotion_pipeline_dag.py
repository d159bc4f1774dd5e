"""
### Emotion pipeline

Photos (a folder or `gs://bucket/prefix`) -> 224x224 copies and metadata -> DeepFace annotations in
shards -> label-drift monitoring with e-mail alerts -> `datasets/final_emotion_dataset.parquet`
-> ResNet50 vectors -> a Keras Tuner classifier tracked in MLflow -> evaluation, SHAP and
`reports/<model version>/report.html`.

Wiring only: every task calls one stage function of the `emotion_pipeline` package. Shards are the
unit of dynamic task mapping (never single photos); only shards with work left are mapped, so a
re-run with nothing new launches no shard task. DeepFace, ResNet50 and SHAP run on the `gpu` queue
and pool; unchanged training data retrains nothing unless `force_train` is set. Every task's output
names the worker that ran it (`worker`).

Runs start from the UI's trigger form, the REST API, or an event on the asset `emotion_photos`
(`POST /api/v2/assets/events` when a new batch has landed in the source): such runs use the
form's defaults, $EMOTION_PIPELINE_SOURCE and $EMOTION_PIPELINE_ROOT, and without both the DAG
is started by hand only.
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timedelta

from airflow.sdk import Asset, Param, dag, task

from emotion_pipeline.config import ACTIONS, DETECTORS, DRIFT_REFERENCES, EMBED_INPUTS, TUNERS, PipelineConfig

GPU = {"queue": "gpu", "pool": "gpu"}
# Whoever lands a new batch of photos in the source posts an event on this asset; that starts a run
# with the default params, so it can only be the schedule where the default source and root are set.
NEW_PHOTOS = Asset(name="emotion_photos", uri="emotion-pipeline://photos")


def deployment_default(name: str, default):
    """A deployment sets the trigger form's defaults (and so those of asset-triggered runs) with
    $EMOTION_PIPELINE_<NAME>: the text itself for strings, JSON for numbers, lists and booleans."""
    raw = os.environ.get(f"EMOTION_PIPELINE_{name.upper()}")
    if raw is None or isinstance(default, str):
        return default if raw is None else raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw  # a nullable string param (gold, gold_detector)


PARAMS = {
    "source": Param("", type="string", minLength=1,
                    description="Folder or gs://bucket/prefix with the input photos (read only)."),
    "root": Param("", type="string", minLength=1,
                  description="Folder or gs://bucket/prefix where every output is written."),
    "shard_size": Param(1000, type="integer", minimum=1, description="Photos per shard (one task each)."),
    "limit": Param(None, type=["null", "integer"], minimum=0,
                   description="Only the first N photos, sorted by name (trials)."),
    "detector": Param("mtcnn", enum=list(DETECTORS), description="DeepFace face detector."),
    "actions": Param(["emotion"], type="array", items={"type": "string", "enum": list(ACTIONS)},
                     description="DeepFace actions; age/gender/race need their ~500 MB weight files."),
    "min_face_confidence": Param(0.9, type="number", minimum=0, maximum=1,
                                 description="Faces below this never label a photo."),
    "drift_reference": Param("earlier_shards", enum=list(DRIFT_REFERENCES),
                             description="Compare each shard with all earlier shards or a pinned baseline."),
    "drift_threshold": Param(0.2, type="number", exclusiveMinimum=0, maximum=1,
                             description="Jensen-Shannon distance (base 2) above which a shard drifts."),
    "no_face_drift_threshold": Param(0.15, type="number", minimum=0, maximum=1,
                                     description="Absolute change of the no-face rate that counts as drift."),
    "alert_emails": Param([], type="array", items={"type": "string"},
                          description="Who gets drift and failure e-mails (SMTP connection smtp_default)."),
    "embed_input": Param("face", enum=list(EMBED_INPUTS),
                         description="Embed the label face's crop (default) or the whole 224x224 photo."),
    "embed_weights": Param("imagenet", type="string",
                           description="ResNet50 weights: imagenet, a local .h5 path, or none (random)."),
    "tuner": Param("hyperband", enum=list(TUNERS), description="Keras Tuner search algorithm."),
    "tuner_max_epochs": Param(30, type="integer", minimum=1, description="Epoch budget per model."),
    "tuner_max_trials": Param(12, type="integer", minimum=1, description="Trials (bayesian tuner)."),
    "force_train": Param(False, type="boolean", description="Retrain even if the training data is unchanged."),
    "gold": Param(None, type=["null", "string"],
                  description="Photos labelled by people (<label>/<photo> folder or CSV) to check labels against."),
    "gold_detector": Param(None, type=["null", "string"], description="Detector for the gold photos ('skip' for face crops)."),
    "shap_images": Param(3, type="integer", minimum=0, description="Test photos explained with a SHAP heat map."),
    "shap_image_evals": Param(300, type="integer", minimum=10, description="Model calls per SHAP heat map."),
}
PARAMS = {name: Param(deployment_default(name, p.value), description=p.description, **p.schema)
          for name, p in PARAMS.items()}
SCHEDULE = [NEW_PHOTOS] if PARAMS["source"].value and PARAMS["root"].value else None


def _config(params) -> PipelineConfig:
    return PipelineConfig.from_mapping(params)


def _ran_on(ti, result: dict) -> dict:
    """The task's output plus the worker that ran it: GPU routing can be audited from the outputs."""
    return {**result, "worker": ti.hostname}


def _on_failure(context) -> None:
    from emotion_pipeline.airflow_adapter import notify_failure

    notify_failure(context)


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
    @task
    def discover(params=None, ti=None) -> list[int]:
        """Returns the shards with work left (what the shard tasks map over); the full summary
        (photos found, new, hashed, all shards) goes to the XCom key ``summary``."""
        from emotion_pipeline.stages.discover import discover_images

        summary = discover_images(_config(params))
        ti.xcom_push(key="summary", value=summary)
        return summary["pending"]

    @task(max_active_tis_per_dagrun=4)
    def resize(shard: int, params=None, ti=None) -> dict:
        from emotion_pipeline.stages.resize import resize_shard

        return _ran_on(ti, resize_shard(_config(params), shard))

    @task(**GPU)
    def annotate(resized: dict, params=None, ti=None) -> dict:
        from emotion_pipeline.stages.annotate import annotate_shard

        return _ran_on(ti, annotate_shard(_config(params), resized["shard"]))

    @task(trigger_rule="none_failed")
    def check_drift(params=None, run_id=None, ti=None) -> dict:
        from emotion_pipeline.stages.drift import check_label_drift

        return _ran_on(ti, check_label_drift(_config(params), run_id=run_id))

    @task
    def alert_on_drift(report: dict, **context) -> bool:
        from emotion_pipeline.airflow_adapter import send_drift_alert

        return send_drift_alert(_config(context["params"]), report, context)

    @task(trigger_rule="none_failed")
    def merge(params=None, ti=None) -> dict:
        from emotion_pipeline.stages.merge import merge_dataset

        return _ran_on(ti, merge_dataset(_config(params)))

    @task(**GPU)
    def embed(annotated: dict, params=None, ti=None) -> dict:
        from emotion_pipeline.stages.embed import embed_shard

        return _ran_on(ti, embed_shard(_config(params), annotated["shard"]))

    @task(trigger_rule="none_failed")
    def assemble_features(params=None, ti=None) -> dict:
        from emotion_pipeline.stages.embed import assemble_features

        return _ran_on(ti, assemble_features(_config(params)))

    @task(trigger_rule="none_failed", **GPU)
    def check_gold(params=None, ti=None) -> dict:
        config = _config(params)
        if not config.gold:
            return _ran_on(ti, {"stage": "gold", "skipped": True})
        from emotion_pipeline.stages.gold import annotate_gold

        return _ran_on(ti, annotate_gold(config))

    @task(trigger_rule="none_failed")
    def train(params=None, ti=None) -> dict:
        from emotion_pipeline.stages.train import train_classifier

        return _ran_on(ti, train_classifier(_config(params)))

    @task(trigger_rule="none_failed", **GPU)
    def evaluate(trained: dict, params=None, ti=None) -> dict:
        from emotion_pipeline.stages.evaluate import evaluate_model

        return _ran_on(ti, evaluate_model(_config(params), trained))

    annotated = annotate.expand(resized=resize.expand(shard=discover()))
    drift = check_drift()
    annotated >> drift
    alert_on_drift(drift)
    merged = merge()
    drift >> merged
    features = assemble_features()
    embed.expand(annotated=annotated) >> features
    trained = train()
    [merged, features, check_gold()] >> trained
    evaluate(trained)


emotion_pipeline()
