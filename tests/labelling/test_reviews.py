"""People's decisions: one file each, never lost to a concurrent reviewer, the latest one winning,
on a local root and on a real GCS API (the emulator)."""
from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

import pandas as pd
import pytest

from emotion_pipeline.core.errors import InvalidDecision
from emotion_pipeline.core.storage import LocalStorage, open_storage
from emotion_pipeline.labelling import reviews
from emotion_pipeline.labelling.reviews import Decision, decide, decided_photos, read_decisions, record_decision


def _record_many(root_uri: str, reviewer: str, count: int) -> list[str]:
    root = open_storage(root_uri)
    return [record_decision(root, decide(f"{reviewer}-{i:03d}", "c1", 0, "happy", reviewer)) for i in range(count)]


def test_a_decision_round_trips(tmp_path):
    root = LocalStorage(tmp_path)
    assert list(read_decisions(root).columns) == list(reviews.COLUMNS) and read_decisions(root).empty
    assert decided_photos(root) == set()
    decision = Decision("img1", "content1", 2, "no_face", "Ada Lovelace", "2026-12-05T07:00:00.000001+00:00")
    key = record_decision(root, decision)
    assert key.startswith("reviews/decisions/20261205T070000000001Z-ada-lovelace-") and key.endswith(".json")
    assert json.loads((tmp_path / key).read_text()) == asdict(decision)
    table = read_decisions(root)
    assert table.to_dict("records") == [asdict(decision)]
    assert decided_photos(root) == {"img1"} and reviews.decided_versions(root) == {("img1", "content1")}


def test_two_reviewers_at_once_lose_nothing_in_threads_and_processes(tmp_path):
    root = LocalStorage(tmp_path)
    with ThreadPoolExecutor(2) as pool:
        keys = [key for batch in pool.map(_record_many, [root.uri] * 2, ["ann", "bob"], [50, 50]) for key in batch]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        keys += [key for batch in pool.starmap(_record_many, [(root.uri, "cy", 50), (root.uri, "dee", 50)])
                 for key in batch]
    assert len(set(keys)) == 200
    assert sorted(entry.key for entry in root.list("reviews/decisions")) == sorted(keys)
    assert len(read_decisions(root)) == 200
    assert {f"{who}-049" for who in ("ann", "bob", "cy", "dee")} <= decided_photos(root)


def test_the_latest_decision_wins_per_photo_version_and_face(tmp_path):
    root = LocalStorage(tmp_path)
    record_decision(root, Decision("img1", "c1", 0, "sad", "ann", "2026-12-05T10:00:00.000000+00:00"))
    # Recorded later but decided earlier: the decision time counts, not the order of the files.
    record_decision(root, Decision("img1", "c1", 0, "angry", "bob", "2026-12-05T09:00:00.000000+00:00"))
    record_decision(root, Decision("img1", "c1", 1, "happy", "bob", "2026-12-05T08:00:00.000000+00:00"))
    record_decision(root, Decision("img1", "c2", 0, "neutral", "bob", "2026-12-05T08:00:00.000000+00:00"))
    record_decision(root, Decision("img2", "c9", None, "surprise", "ann", "2026-12-05T08:00:00+00:00"))
    record_decision(root, Decision("img2", "c9", None, "no_face", "ann", "2026-12-05T08:30:00Z"))
    table = read_decisions(root)
    assert [(row.image_id, row.content_id, None if pd.isna(row.face_index) else row.face_index, row.label)
            for row in table.itertuples()] == [
        ("img1", "c1", 0, "sad"), ("img1", "c1", 1, "happy"), ("img1", "c2", 0, "neutral"),
        ("img2", "c9", None, "no_face")]
    assert table.loc[0, "reviewer"] == "ann"


@pytest.mark.parametrize("field, value, message", [
    ("label", "fear", "unknown label 'fear': a decision is one of happy, sad, angry, surprise, neutral, no_face"),
    ("label", "Happy", "unknown label 'Happy'"),
    ("reviewer", "  ", "needs the reviewer's name"),
    ("reviewer", "x" * 101, "at most 100 characters"),
    ("reviewer", "ann\nbob", "must be printable"),
    ("face_index", -1, "face_index must be"),
    ("face_index", True, "face_index must be"),
    ("decided_at", "2026-12-05T08:00:00", "must be in UTC"),
    ("decided_at", "2026-12-05T08:00:00+02:00", "must be in UTC"),
    ("decided_at", "yesterday", "ISO 8601"),
    ("image_id", "", "needs a image_id"),
])
def test_a_bad_decision_is_refused_with_a_clear_message(tmp_path, field, value, message):
    fields = dict(image_id="img1", content_id="c1", face_index=0, label="happy", reviewer="ann",
                  decided_at="2026-12-05T08:00:00+00:00")
    with pytest.raises(InvalidDecision, match=message.replace("(", r"\(")):
        Decision(**{**fields, field: value})
    assert issubclass(InvalidDecision, ValueError)


def test_a_broken_decision_file_is_left_out_and_said(tmp_path, caplog):
    root = LocalStorage(tmp_path)
    record_decision(root, decide("img1", "c1", 0, "happy", "ann"))
    root.write_bytes("reviews/decisions/hand-edited.json", b'{"image_id": "img2", "label": "joy"}')
    assert read_decisions(root)["image_id"].tolist() == ["img1"]
    assert "hand-edited.json is left out" in caplog.text


def test_decisions_on_gcs_from_two_writers_lose_nothing(gcs_bucket):
    uri = f"gs://{gcs_bucket}/out"
    with ThreadPoolExecutor(2) as pool:
        keys = [key for batch in pool.map(_record_many, [uri] * 2, ["ann", "bob"], [50, 50]) for key in batch]
    root = open_storage(uri)
    assert sorted(entry.key for entry in root.list("reviews/decisions")) == sorted(keys) and len(set(keys)) == 100
    record_decision(root, decide("ann-000", "c1", 0, "no_face", "bob"))  # bob overrules ann on one photo
    table = read_decisions(root)
    assert len(table) == 100
    assert table.set_index("image_id").loc["ann-000", "label"] == "no_face"
    assert decided_photos(root) == {f"{who}-{i:03d}" for who in ("ann", "bob") for i in range(50)}
