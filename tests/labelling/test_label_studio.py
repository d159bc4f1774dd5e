"""The review queue out to Label Studio and its answers back, on a copy of trained_root (the real
pipeline's queue and dataset): the exported tasks are Label Studio's documented import JSON (a
``predictions`` entry with a ``rectanglelabels`` box in percent of the photo and a ``choices`` label),
and an export written as Label Studio writes it (``annotations[].result[]``: a cancelled annotation,
an unknown label, a task annotated twice, a task that is not ours) becomes the decisions the
dashboard records, which the next merge applies. Label Studio itself is not run here (see README,
"Reviewing in Label Studio"), but ``label_studio_export.json`` beside this file is what Label Studio
1.23.2 exported after importing this module's tasks (of trained_root's queue) and three annotations
made through its API, one of them then skipped: it is imported as it came."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path
from urllib.parse import quote

import pandas as pd
import pytest
from PIL import Image, ImageOps

from emotion_pipeline.core import catalog
from emotion_pipeline.core.config import CLASSES
from emotion_pipeline.core.runner import run_stage
from emotion_pipeline.labelling import reviews
from emotion_pipeline.labelling.label_studio import LABEL_CONFIG, export_tasks, import_export
from emotion_pipeline.local.cli import main
from tests.stages.test_review_queue import copy_of

REAL_EXPORT = Path(__file__).with_name("label_studio_export.json")
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def other_class(label: str) -> str:
    return next(c for c in CLASSES if c != label)


def annotation(choice: str, by, at: str, cancelled: bool = False, box: dict | None = None) -> dict:
    """One annotation as Label Studio's JSON export writes it."""
    result = [{"id": "e1", "from_name": "emotion", "to_name": "image", "type": "choices", "origin": "manual",
               "value": {"choices": [choice]}}]
    if box:
        result.insert(0, {**box, "origin": "prediction"})
    return {"id": zlib.crc32(f"{choice}{at}".encode()), "completed_by": by, "result": result,
            "was_cancelled": cancelled, "ground_truth": False, "created_at": at, "updated_at": at,
            "lead_time": 4.2, "prediction": {}, "result_count": 0, "task": 1, "project": 1,
            "parent_prediction": None, "parent_annotation": None}


def check_task(task: dict, item: pd.Series, photo: pd.Series) -> None:
    """One exported task against its queue row and dataset row (and the photo file's own size)."""
    data, (prediction,) = task["data"], task["predictions"]
    assert data["image"] == photo["source_uri"]
    assert (data["image_id"], data["content_id"], data["face_index"]) == (
        item["image_id"], item["content_id"], int(item["face_index"]))
    assert prediction["model_version"] == f"deepface/{item['label_source']}"
    assert 0 <= prediction["score"] <= 1
    region, choice = prediction["result"]
    assert choice == {"id": "emotion0", "from_name": "emotion", "to_name": "image", "type": "choices",
                      "value": {"choices": [item["machine_label"]]}}
    assert (region["from_name"], region["to_name"], region["type"]) == ("face", "image", "rectanglelabels")
    with Image.open(photo["source_uri"]) as image:
        upright = ImageOps.exif_transpose(image).size
    assert (region["original_width"], region["original_height"]) == upright
    value = region["value"]
    assert value["rectanglelabels"] == [item["machine_label"]] and value["rotation"] == 0
    for name in ("x", "y", "width", "height"):
        assert 0 <= value[name] <= 100
    assert value["x"] + value["width"] <= 100 + 1e-9 and value["y"] + value["height"] <= 100 + 1e-9
    pixels = [value["x"] * upright[0], value["y"] * upright[1], value["width"] * upright[0],
              value["height"] * upright[1]]
    assert [v / 100 for v in pixels] == pytest.approx([float(item[f"box_{c}"]) for c in "xywh"], abs=1e-6)


def test_export_is_label_studios_import_json_with_the_face_as_a_prediction(trained_root, tmp_path):
    config, root = copy_of(trained_root, tmp_path)
    queue = catalog.read_review_queue(root)
    assert len(queue) >= 5, "trained_root's queue is the test's input"
    photos = catalog.read_dataset(root).drop_duplicates("image_id").set_index("image_id")
    tasks = export_tasks(root)
    assert len(tasks) == len(queue)
    for task, (_, item) in zip(tasks, queue.iterrows()):
        check_task(task, item, photos.loc[item["image_id"]])
    json.dumps(tasks, allow_nan=False)  # strict JSON: Label Studio's import refuses NaN

    # The CLI: a local-files prefix (Label Studio's local storage), the tasks and the label config.
    out = tmp_path / "ls" / "tasks.json"
    assert main(["review", "export-label-studio", "--root", config.root, "--out", str(out),
                 "--image-url-prefix", "/data/local-files/?d=photos/"]) == 0
    written = json.loads(out.read_text())
    assert [t["data"]["image"] for t in written] == [
        "/data/local-files/?d=photos/" + quote(key) for key in queue["source_key"]]
    assert [t["predictions"] for t in written] == [t["predictions"] for t in tasks]
    config = ET.fromstring((tmp_path / "ls" / "label_config.xml").read_text())
    assert config.find("Image").get("value") == "$image"
    assert [c.get("value") for c in config.find("Choices").iter("Choice")] == [*CLASSES, reviews.NO_FACE]
    assert [c.get("value") for c in config.find("RectangleLabels").iter("Label")] == list(CLASSES)
    assert (config.find("Choices").get("name"), config.find("RectangleLabels").get("name")) == ("emotion", "face")
    assert (tmp_path / "ls" / "label_config.xml").read_text() == LABEL_CONFIG
    gcs = export_tasks(root, queue.head(1), "gs://bucket/photos/")
    assert gcs[0]["data"]["image"] == "gs://bucket/photos/" + queue["source_key"].iloc[0]
    template = export_tasks(root, queue.head(1), "https://photos.example/{image_id}.jpg")
    assert template[0]["data"]["image"] == f"https://photos.example/{queue['image_id'].iloc[0]}.jpg"


def label_studio_export(tasks: list[dict], queue: pd.DataFrame) -> tuple[list[dict], dict[str, tuple]]:
    """Label Studio's JSON export of the first five exported tasks, annotated by hand, and one task
    that is not ours; with what each of ours should become (label, reviewer, decided_at) or None."""
    labels = [other_class(m) for m in queue["machine_label"].head(5)]
    box = tasks[0]["predictions"][0]["result"][0]
    answers = [
        [annotation(labels[0], {"id": 1, "email": "ada@example.org"}, "2026-12-01T09:00:00.123456Z", box=box)],
        [annotation(CLASSES[0], 2, "2026-12-01T09:05:00Z"), annotation(labels[1], 3, "2026-12-02T10:00:00Z")],
        [annotation(labels[2], 2, "2026-12-01T09:10:00Z", cancelled=True)],
        [annotation("bored", 2, "2026-12-01T09:15:00Z")],
        [annotation(reviews.NO_FACE, {"id": 1, "email": "ada@example.org"}, "2026-12-01T09:20:00Z")],
    ]
    exported = [{"id": 101 + i, "data": task["data"], "annotations": answer, "predictions": [],
                 "drafts": [], "meta": {}, "created_at": "2026-11-30T08:00:00Z", "inner_id": i + 1,
                 "total_annotations": len(answer), "project": 1, "file_upload": None}
                for i, (task, answer) in enumerate(zip(tasks, answers))]
    exported.append({"id": 999, "data": {"image": "/data/upload/1/other.jpg"},
                     "annotations": [annotation(CLASSES[0], 2, "2026-12-01T09:30:00Z")]})
    ids = queue["image_id"].head(5).tolist()
    expected = {ids[0]: (labels[0], "ada@example.org", "2026-12-01T09:00:00.123456+00:00"),
                ids[1]: (labels[1], "label-studio:3", "2026-12-02T10:00:00.000000+00:00"),
                ids[4]: (reviews.NO_FACE, "ada@example.org", "2026-12-01T09:20:00.000000+00:00")}
    return exported, expected


def test_label_studios_export_becomes_decisions_that_merge_applies(trained_root, tmp_path, capsys):
    config, root = copy_of(trained_root, tmp_path)
    queue = catalog.read_review_queue(root)
    exported, expected = label_studio_export(export_tasks(root, queue), queue)
    path = tmp_path / "export.json"
    path.write_text(json.dumps(exported))

    assert main(["review", "import-label-studio", "--root", config.root, str(path)]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert {k: counts[k] for k in ("tasks", "recorded", "already_recorded", "superseded", "not_ours", "unannotated",
                                   "no_choice", "unknown_label", "invalid", "cancelled_annotations")} == {
        "tasks": 6, "recorded": 3, "already_recorded": 0, "superseded": 0, "not_ours": 1, "unannotated": 1,
        "no_choice": 0, "unknown_label": 1, "invalid": 0, "cancelled_annotations": 1}
    assert len(counts["problems"]) == 3 and any("'bored'" in p for p in counts["problems"])

    decisions = reviews.read_decisions(root).set_index("image_id")
    assert sorted(decisions.index) == sorted(expected)
    for image_id, (label, reviewer, decided_at) in expected.items():
        item = queue.set_index("image_id").loc[image_id]
        assert decisions.loc[image_id, ["content_id", "face_index", "label", "reviewer", "decided_at"]].tolist() == [
            item["content_id"], item["face_index"], label, reviewer, decided_at]

    assert run_stage("merge", config).reviewed == 3
    merged = catalog.read_dataset(root).drop_duplicates("image_id").set_index("image_id")
    for image_id, (label, _, _) in expected.items():
        assert merged.loc[image_id, "label_source"] == "person"
        if label == reviews.NO_FACE:
            assert merged.loc[image_id, "status"] == "no_face" and pd.isna(merged.loc[image_id, "label"])
        else:
            assert merged.loc[image_id, "label"] == label

    # The same export again: nothing new is recorded (and the decisions read back are the same).
    files = sorted(e.key for e in root.list(reviews.DECISIONS_FOLDER))
    again = import_export(root, exported)
    assert (again.recorded, again.already_recorded, again.unknown_label, again.not_ours) == (0, 3, 1, 1)
    assert sorted(e.key for e in root.list(reviews.DECISIONS_FOLDER)) == files


def test_a_later_dashboard_decision_is_not_overwritten_by_an_older_annotation(trained_root, tmp_path):
    _, root = copy_of(trained_root, tmp_path)
    queue = catalog.read_review_queue(root)
    exported, _ = label_studio_export(export_tasks(root, queue), queue)
    first = queue.iloc[0]
    dashboard = reviews.NO_FACE  # the export's first task says a class
    reviews.record_decision(root, reviews.Decision(first["image_id"], first["content_id"], int(first["face_index"]),
                                                   dashboard, "grace", "2026-12-03T00:00:00+00:00"))
    result = import_export(root, exported[:1])
    assert (result.recorded, result.superseded) == (0, 1) and "grace" in result.problems[0]
    assert reviews.read_decisions(root).set_index("image_id").loc[first["image_id"], "label"] == dashboard


def test_an_export_label_studio_wrote_becomes_decisions(trained_root, tmp_path):
    """Label Studio 1.23.2's own export (``completed_by`` a user id, a skipped annotation after a
    submitted one): three decisions by ``label-studio:1`` at the annotations' times, applied by merge."""
    config, root = copy_of(trained_root, tmp_path)
    exported = json.loads(REAL_EXPORT.read_text())
    result = import_export(root, exported)
    assert (result.tasks, result.recorded, result.cancelled_annotations, result.problems) == (3, 3, 1, [])
    decisions = reviews.read_decisions(root).set_index("image_id")
    for task in exported:
        submitted = next(a for a in task["annotations"] if not a["was_cancelled"])
        assert decisions.loc[task["data"]["image_id"], ["label", "reviewer", "decided_at"]].tolist() == [
            submitted["result"][0]["value"]["choices"][0], "label-studio:1",
            submitted["updated_at"].replace("Z", "+00:00")]
    assert run_stage("merge", config).reviewed == 3
    merged = catalog.read_dataset(root).drop_duplicates("image_id").set_index("image_id")
    assert set(merged.loc[list(decisions.index), "label_source"]) == {"person"}
