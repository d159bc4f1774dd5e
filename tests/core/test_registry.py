"""The stage contract: a new stage is a module and a registry line, and everything else follows (the
DAG's tasks and edges too, with no edit of dags/); every knob is declared once and the trigger form
and the CLI come from that declaration."""
import contextlib
import dataclasses
import importlib.util
import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from emotion_pipeline.core import catalog
from emotion_pipeline.core.config import SECTIONS, PipelineConfig, form_params, knobs
from emotion_pipeline.core.registry import (
    STAGES,
    Stage,
    covered_by,
    execution_timeout,
    graph,
    photo_tables,
    shard_stages,
    upstream_of,
)
from emotion_pipeline.core.results import StageResult
from emotion_pipeline.core.runner import StageRun, run_stage
from emotion_pipeline.core.storage import open_storage
from emotion_pipeline.core.tables import read_table, write_table
from emotion_pipeline.local import cli
from tests.conftest import FLICKR, REPO, copy_photos, flickr_names


@dataclasses.dataclass(kw_only=True)
class BrightnessResult(StageResult):
    shard: int
    dark: int


def brightness(run: StageRun) -> BrightnessResult:
    """A toy per-shard stage, written as a user would: read resize's table, write a per-photo table."""
    metadata = run.table("resize")
    rows = []
    for row in metadata[metadata["status"] == "ok"].itertuples(index=False):
        with Image.open(io.BytesIO(run.root.read_bytes(catalog.processed_photo(row.image_id)))) as image:
            level = float(np.asarray(image.convert("L")).mean())
        rows.append({"source_key": row.source_key, "image_id": row.image_id, "brightness": level,
                     "status": "dark" if level < 20 else None})
    write_table(run.root, catalog.shard_table("brightness", run.shard, "brightness"), pd.DataFrame(rows))
    return BrightnessResult(shard=run.shard, dark=sum(r["status"] == "dark" for r in rows))


# The new stage's one registry line.
BRIGHTNESS = Stage("brightness", f"{__name__}:brightness", BrightnessResult, "brightness", per_shard=True,
                   upstream=("resize",), knobs=("image_size",), photo_table="brightness")


@contextlib.contextmanager
def registered(stages: dict[str, Stage]):
    """The registry holding ``stages`` (in their order) for a while."""
    saved = dict(STAGES)
    STAGES.clear()
    STAGES.update(stages)
    try:
        yield
    finally:
        STAGES.clear()
        STAGES.update(saved)


@pytest.fixture
def pipeline_with_a_new_stage():
    """The registry with the new stage's one line (and, to keep the test short, without DeepFace's stages)."""
    kept = {name: STAGES[name] for name in ("discover", "resize")}
    with registered({**kept, "brightness": BRIGHTNESS, "merge": STAGES["merge"]}):  # merge as it is declared
        yield


def the_real_dag():
    """dags/emotion_pipeline_dag.py as it is, run in this process: its tasks come from the registry as it
    is now, through orchestration.dag_builder, as when Airflow parses it."""
    spec = importlib.util.spec_from_file_location("dag_under_test", REPO / "dags" / "emotion_pipeline_dag.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.emotion_pipeline()  # the @dag function: a fresh DAG


def wiring(dag) -> dict[str, set[str]]:
    return {task_id: set(t.upstream_task_ids) for task_id, t in dag.task_dict.items()}


def mapped_over(task) -> list[str]:
    return [t.task_id for t in task.iter_mapped_dependencies()] if "Mapped" in type(task).__name__ else []


def test_a_new_stage_is_a_module_and_a_registry_line(tmp_path, pipeline_with_a_new_stage, capsys):
    src = tmp_path / "src"
    copy_photos(FLICKR, src, flickr_names(4))
    Image.new("RGB", (300, 200), (3, 3, 3)).save(src / "night.jpg")
    config = PipelineConfig(source=str(src), root=str(tmp_path / "out"), shard_size=10)
    assert [s.name for s in shard_stages()] == ["resize", "brightness"]
    assert [s.name for s in photo_tables()] == ["resize", "brightness"]
    assert upstream_of(STAGES["merge"]) == covered_by(STAGES["merge"]) == ("resize", "brightness")

    assert run_stage("discover", config).pending == [0]
    run_stage("resize", config, 0)
    assert run_stage("discover", config).pending == [0]  # discovery sees the new stage's work
    cli.main(["stage", "brightness", "--source", config.source, "--root", config.root, "--shard", "0"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["dark"] == 1 and printed["skipped"] is False
    marker = catalog.read_done(open_storage(config.root), "brightness", 0)
    assert marker["summary"]["dark"] == 1  # the same done marker as every stage
    assert run_stage("discover", config).pending == []
    assert run_stage("brightness", config, 0).skipped is True
    assert run_stage("brightness", config.replace(image_size=128), 0).skipped is False  # its knob changed
    assert run_stage("brightness", config, 0).skipped is False  # and back

    merged = run_stage("merge", config)
    assert run_stage("merge", config).skipped is True
    Image.new("RGB", (200, 300), (2, 2, 2)).save(src / "night 2.jpg")  # a new batch: shard 1
    assert run_stage("discover", config).pending == [1]
    run_stage("resize", config, 1)
    before = run_stage("merge", config)  # resize done, the new stage not yet: its photo is "ok" so far
    run_stage("brightness", config, 1)
    merged = run_stage("merge", config)  # merge covers the new stage's output: it runs again
    assert (before.skipped, merged.skipped) == (False, False)
    dataset = read_table(open_storage(config.root), catalog.DATASET).set_index("source_key")
    assert merged.statuses == {"ok": 4, "dark": 2}
    assert dataset.loc["night.jpg", "status"] == "dark" and dataset["brightness"].notna().all()

    # The DAG, with no edit of dags/: a task mapped over resize's shards, which merge waits for.
    dag = the_real_dag()
    assert wiring(dag) == {"discover": set(), "resize": {"discover"}, "brightness": {"resize"},
                           "merge": {"brightness"}}  # merge reads resize's table too: brightness runs after it
    task = dag.task_dict["brightness"]
    assert mapped_over(task) == ["resize"] and task.queue != "gpu" and task.retries == 2
    assert task.execution_timeout == execution_timeout(BRIGHTNESS, dag.params["shard_size"])


def test_a_new_stage_joins_the_whole_real_dag_with_no_edit_of_it():
    """The whole pipeline plus the new stage's line: its task and its edges, every other edge as it was."""
    from emotion_pipeline.orchestration.decisions import graph as dag_graph  # the stages' and the questions'

    as_it_is = wiring(the_real_dag())
    assert as_it_is == {name: set(waits_for) for name, waits_for in dag_graph().items()}
    with_it = {}
    for name, spec in STAGES.items():
        with_it[name] = spec
        if name == "resize":
            with_it["brightness"] = BRIGHTNESS  # its line after resize's
    with registered(with_it):
        dag = the_real_dag()
    assert wiring(dag) == {**as_it_is, "brightness": {"resize"}, "merge": as_it_is["merge"] | {"brightness"}}
    assert mapped_over(dag.task_dict["brightness"]) == ["resize"]


def test_every_stage_function_and_input_hook_is_importable():
    from emotion_pipeline.core.runner import _function

    for stage in STAGES.values():
        assert callable(_function(stage)), stage.name
        assert stage.function.endswith(f":{stage.name}"), stage.name  # one name: the stage's, its function's
        if stage.inputs:
            assert callable(_function(stage, stage.inputs)), stage.name
        if stage.alert:
            assert callable(_function(stage, stage.alert.function)), stage.name
        waits_for = stage.upstream + stage.after
        assert set(waits_for) <= set(STAGES) and list(STAGES).index(stage.name) > max(
            [list(STAGES).index(u) for u in waits_for], default=-1), stage.name  # upstream comes first
        assert set(stage.knobs) <= {f.name for f in dataclasses.fields(PipelineConfig)}, stage.name
    assert set(STAGES) <= set(graph())  # every stage is a task of the DAG


def test_the_trigger_form_comes_from_the_knobs_grouped_in_sections():
    form = form_params()
    declared = [k for k in knobs() if k.section]
    assert list(form) == [k.name for k in sorted(declared, key=lambda k: SECTIONS.index(k.section))]
    assert {schema["section"] for _, schema in form.values()} == set(SECTIONS)
    for name, (default, schema) in form.items():
        assert schema["title"] and schema["description"], name
    assert form["shard_size"] == (1000, {"title": "Shard size", "description": "Photos per shard (one task per "
                                        "shard and stage).", "section": "Input", "type": ["null", "integer"],
                                        "minimum": 1})
    assert form["gold_detector"][1]["type"] == ["null", "string"] and None in form["gold_detector"][1]["enum"]
    assert form["gold_detector"][1]["values_display"]["null"] == "same as the face detector"


def test_only_a_knob_without_default_is_required_on_the_form():
    """Airflow's form marks a field required (and keeps Trigger disabled while it is empty) unless its
    type admits null; an empty optional field means the knob's default (from_mapping skips it)."""
    form = form_params()
    required = {name for name, (_, schema) in form.items() if "null" not in schema["type"]}
    assert required == {k.name for k in knobs() if k.section and k.required} == {"source", "root"}
    empty = {name: None for name in form} | {"source": "in", "root": "out"}
    assert PipelineConfig.from_mapping(empty) == PipelineConfig(source="in", root="out")
    assert form["actions"][1]["items"]["enum"] == ["emotion", "age", "gender", "race"]


def test_cli_options_come_from_the_knobs():
    args = cli.build_parser().parse_args([
        "stage", "resize", "--source", "in", "--root", "out", "--shard", "0", "--shard-size", "5",
        "--actions", "emotion,age", "--force-train", "--no-mixed-precision", "--drift-threshold", "0.3"])
    config = PipelineConfig.from_mapping(cli.config_values(args))
    assert (config.shard_size, config.actions, config.force_train, config.mixed_precision, config.drift_threshold) == (
        5, ("emotion", "age"), True, False, 0.3)
    assert config.detector == "yunet"  # not given: the declared default
    with pytest.raises(SystemExit):  # choices come from the declaration too
        cli.build_parser().parse_args(["stage", "resize", "--source", "a", "--root", "b", "--detector", "nope"])
    with pytest.raises(ValueError, match="min_rows_per_class must be >= 3"):  # and bounds
        PipelineConfig(source="a", root="b", min_rows_per_class=2)


def test_a_knob_added_later_leaves_fingerprints_of_the_old_behaviour_alone(tmp_path):
    """label_unit (added 2026-12-01) at "photo", what embed did before it existed, must not change
    embed's fingerprint: an upgrade would otherwise re-embed every shard of every root. The value was
    computed with the code before the knob existed (commit 726b449); "face" must change it."""
    from emotion_pipeline.core.runner import StageRun, fingerprint
    from emotion_pipeline.core.storage import open_storage

    root = open_storage(str(tmp_path))
    config = PipelineConfig(source=str(tmp_path), root=str(tmp_path))
    rows = pd.DataFrame({"source_key": ["a.jpg", "b/c.jpg"], "image_id": ["1" * 16, "2" * 16], "shard": [0, 0],
                         "present": [True, True], "duplicate_of": ["", ""]})
    embed = STAGES["embed"]
    assert fingerprint(StageRun(embed, config, root, root, rows, 0, manifest=rows)) == "55295d53fd17775cd50f"
    faces = dataclasses.replace(config, label_unit="face")
    assert fingerprint(StageRun(embed, faces, root, root, rows, 0, manifest=rows)) != "55295d53fd17775cd50f"
