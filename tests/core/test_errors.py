"""The package's exceptions live in core/errors.py; the modules that raised them before still export
them; a stage whose input is missing says which stage to run first, and Airflow does not retry it."""
import importlib

import pandas as pd
import pytest

from emotion_pipeline.core import errors
from emotion_pipeline.core.config import PipelineConfig
from emotion_pipeline.core.registry import STAGES
from emotion_pipeline.core.runner import StageRun
from emotion_pipeline.core.storage import LocalStorage

# Where each was defined before core/errors.py: users import them from there.
FORMER_HOMES = {
    "core.storage": ["StorageError", "NotARegularFile", "BucketNotFound", "AccessDenied", "LeaseTimeout",
                     "LeaseLost"],
    "core.config": ["ConfigError"],
    "labelling.images": ["ImageError"],
    "labelling.faces": ["MissingWeightsError"],
    "labelling.captions": ["CaptionError"],
    "serve.admission": ["Busy"],
    "serve.predictor": ["ClientGone", "StoreMissing"],
    "serve.api": ["BadRequest"],
    "local.ui": ["StopRequested"],
}


@pytest.mark.parametrize("module", sorted(FORMER_HOMES))
def test_exceptions_are_still_importable_from_where_they_were_defined(module):
    found = importlib.import_module(f"emotion_pipeline.{module}")
    for name in FORMER_HOMES[module]:
        assert getattr(found, name) is getattr(errors, name), (module, name)


def shard_run(tmp_path, stage: str) -> StageRun:
    root = LocalStorage(tmp_path)
    config = PipelineConfig(source=str(tmp_path), root=str(tmp_path))
    return StageRun(STAGES[stage], config, root, root, pd.DataFrame(), shard=0)


def test_a_missing_upstream_table_names_the_stage_to_run_first(tmp_path):
    with pytest.raises(errors.MissingUpstream, match="shard 0 has no metadata/metadata yet: run the resize stage"):
        shard_run(tmp_path, "annotate").table("resize")
    assert issubclass(errors.MissingUpstream, RuntimeError)  # what it was raised as before


def test_airflow_fails_a_missing_upstream_at_once_without_retries(tmp_path):
    """A retry cannot create an upstream output: in the DAG a task starts once its upstream tasks
    succeeded, so the output it misses was deleted or the task was run out of order."""
    pytest.importorskip("airflow")
    from airflow.sdk.exceptions import AirflowFailException

    from emotion_pipeline.orchestration.airflow_adapter import fail_fast

    with pytest.raises(AirflowFailException, match="^MissingUpstream: shard 0 has no metadata"), fail_fast():
        shard_run(tmp_path, "annotate").table("resize")
    with pytest.raises(ValueError, match="other"), fail_fast():  # anything else: retried as before
        raise ValueError("other")
