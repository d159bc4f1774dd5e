import dataclasses
import json

import pandas as pd
import pytest

from emotion_pipeline.core.config import (
    PipelineConfig,
    deployment_default,
    deployment_environment,
    form_params,
    knobs,
)
from emotion_pipeline.core.manifest import shard_fingerprint


def test_from_mapping_reads_params_and_ignores_unknown_and_empty():
    config = PipelineConfig.from_mapping({
        "source": "in", "root": "out", "shard_size": 7, "actions": "emotion, age", "alert_emails": ["a@x"],
        "limit": None, "detector": "", "not_a_knob": 1,
    })
    assert config.shard_size == 7
    assert config.actions == ("emotion", "age")
    assert config.alert_emails == ("a@x",)
    assert config.detector == "yunet" and config.limit is None


def test_the_face_confidence_threshold_is_the_detectors_own_unless_set():
    """A confidence means something different to each detector (YuNet's scores stop below 0.95):
    left empty, min_face_confidence is the detector's own, and follows the detector on replace()."""
    config = PipelineConfig(source="in", root="out")
    assert (config.detector, config.min_face_confidence) == ("yunet", 0.7)
    assert PipelineConfig(source="in", root="out", detector="mtcnn").min_face_confidence == 0.9
    assert PipelineConfig(source="in", root="out", detector="opencv").min_face_confidence == 0.9
    assert PipelineConfig.from_mapping({"source": "in", "root": "out", "detector": "mtcnn",
                                        "min_face_confidence": ""}).min_face_confidence == 0.9
    assert config.replace(detector="mtcnn").min_face_confidence == 0.9
    assert config.replace(detector="mtcnn").replace(detector="yunet").min_face_confidence == 0.7
    chosen = PipelineConfig(source="in", root="out", min_face_confidence=0.8)
    assert chosen.replace(detector="mtcnn").min_face_confidence == 0.8  # a value someone set stays
    assert form_params()["min_face_confidence"][0] is None  # the form's empty field: the detector's own


def test_round_trip_through_params():
    config = PipelineConfig(source="in", root="out", actions=("emotion", "race"), alert_emails=("a@x",))
    assert PipelineConfig.from_mapping(config.to_dict()) == config


@pytest.mark.parametrize("bad, message", [
    ({"shard_size": 0}, "shard_size"),
    ({"detector": "nope"}, "detector"),
    ({"actions": ("age",)}, "emotion"),
    ({"actions": ("emotion", "mood")}, "unknown actions"),
    ({"drift_reference": "yesterday"}, "drift_reference"),
    ({"drift_threshold": 0}, "drift_threshold"),
    ({"limit": -1}, "limit"),
    ({"label_unit": "face", "embed_input": "photo"}, "needs embed_input=face"),
])
def test_bad_values_are_clear_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        PipelineConfig(source="in", root="out", **bad)


def _carriers(value):
    """The same value as other JSON types could carry it: the trigger form sends 0 for 0.0, the CLI
    and $EMOTION_PIPELINE_* send text, a backfill's conf a list for a tuple."""
    if isinstance(value, bool):
        return [value, str(value).lower(), str(value), int(value)]
    if isinstance(value, (int, float)):
        return [value, int(value) if float(value).is_integer() else value, float(value), str(value),
                json.dumps(float(value))]
    if isinstance(value, tuple):
        return [value, list(value), ",".join(value), ", ".join(value)]
    return [value]


def _knob_cases():
    for k in knobs():
        samples = [k.default] if k.default is not None else []
        if k.choices and k.type is str:
            samples.append(k.choices[-1])
        elif k.type is int and not isinstance(k.default, bool):
            samples.append(int(max(k.minimum or 0, k.exclusive_minimum or 0)) + 3 if k.maximum is None
                           else int(k.maximum))
        elif k.type is float:
            samples.append(float(k.maximum if k.maximum is not None else (k.minimum or 0) + 1))
        for sample in samples:
            if sample is not dataclasses.MISSING:
                yield pytest.param(k, sample, id=f"{k.name}={sample!r}")


@pytest.mark.parametrize("k, value", list(_knob_cases()))
def test_every_knob_means_one_fingerprint_whatever_json_type_carries_it(k, value):
    """A form-started run (0), a scheduled one (0.0) and a CLI one ("0") share their done work."""
    base = {"source": "in", "root": "out"}
    fingerprints = set()
    for carried in _carriers(value):
        config = PipelineConfig.from_mapping({**base, k.name: carried})
        assert type(getattr(config, k.name)) is type(value), (carried, getattr(config, k.name))
        fingerprints.add(shard_fingerprint(pd.DataFrame({"source_key": [], "image_id": []}),
                                           **{k.name: getattr(config, k.name)}))
        # and the same when the config is built directly, as tests and the API do
        assert PipelineConfig(**{**base, k.name: carried}) == config
    assert len(fingerprints) == 1, k.name


@pytest.mark.parametrize("name, value", [("shard_size", 2.5), ("shard_size", "many"), ("force_train", "maybe"),
                                         ("min_emotion_margin", "x"), ("seed", True), ("gold", 3)])
def test_a_value_of_the_wrong_kind_is_a_clear_error(name, value):
    with pytest.raises(ValueError, match=name):
        PipelineConfig.from_mapping({"source": "in", "root": "out", name: value})


@pytest.mark.parametrize("k, value", list(_knob_cases()))
def test_a_deployment_default_reads_back_as_the_knob_value(k, value):
    """`ui --shard-size 5` and $EMOTION_PIPELINE_SHARD_SIZE=5 set the form's default as the typed value."""
    if k.section is None or value in (None, ""):
        return  # an empty variable leaves the declared default
    environ = deployment_environment({k.name: value})
    read = deployment_default(k.name, "unset", environ)
    assert PipelineConfig.from_mapping({"source": "in", "root": "out", k.name: read}) == \
        PipelineConfig.from_mapping({"source": "in", "root": "out", k.name: value})
    assert type(read) is (list if k.type is tuple else type(value))


@pytest.mark.parametrize("text, expected", [("a@x, b@y", ["a@x", "b@y"]), ('["a@x"]', ["a@x"])])
def test_a_list_default_is_json_or_comma_separated(text, expected):
    assert deployment_default("alert_emails", [], {"EMOTION_PIPELINE_ALERT_EMAILS": text}) == expected


def test_a_bad_deployment_default_names_the_variable_s_knob():
    with pytest.raises(ValueError, match="shard_size"):
        deployment_default("shard_size", 1000, {"EMOTION_PIPELINE_SHARD_SIZE": "lots"})
    assert deployment_default("batch", "", {"EMOTION_PIPELINE_BATCH": "2026"}) == "2026"
    assert deployment_default("gold", None, {"EMOTION_PIPELINE_GOLD": "null"}) is None
