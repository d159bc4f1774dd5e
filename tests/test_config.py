import pytest

from emotion_pipeline.config import PipelineConfig


def test_from_mapping_reads_params_and_ignores_unknown_and_empty():
    config = PipelineConfig.from_mapping({
        "source": "in", "root": "out", "shard_size": 7, "actions": "emotion, age", "alert_emails": ["a@x"],
        "limit": None, "detector": "", "not_a_knob": 1,
    })
    assert config.shard_size == 7
    assert config.actions == ("emotion", "age")
    assert config.alert_emails == ("a@x",)
    assert config.detector == "mtcnn" and config.limit is None


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
