"""A gold set (or new captions) given to a root that already trained reaches the report: evaluate runs
again, and only it and the gold check do; a run with nothing new does no work. Work is counted by the
stages' skipped flags, never timed. Runs on a copy of trained_root, its MLflow store moved with it."""
import dataclasses
import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from emotion_pipeline.core import catalog
from emotion_pipeline.core.config import CLASSES, EMOTIONS, PipelineConfig
from emotion_pipeline.core.manifest import load_manifest
from emotion_pipeline.core.registry import STAGES
from emotion_pipeline.core.storage import open_storage
from emotion_pipeline.local import run as local_run
from emotion_pipeline.stages.all import run_all_stages
from tests.conftest import SHARED, copy_photos
from tests.read_log import ReadLog
from tests.test_read_coverage import undeclared_reads

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]
LABELLED = SHARED / "data" / "labeled_faces"


def copy_root(root: str, to: Path) -> None:
    """A trained root with its MLflow store: the store's paths (artifact locations) moved to the copy,
    so that an evaluation logs into the copy and never into trained_root (read only for its users)."""
    shutil.copytree(root, to)
    with sqlite3.connect(to / catalog.MLFLOW_FOLDER / catalog.MLFLOW_DB) as db:
        for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            for column in [c[1] for c in db.execute(f"PRAGMA table_info({table})") if c[2].upper().startswith(
                    ("VARCHAR", "TEXT"))]:
                db.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?) WHERE {column} LIKE ?",
                           (root, str(to), f"%{root}%"))


def work_done(results: dict) -> set[str]:
    """The stages that did work: a marker stage not skipped, discovery hashing or finding pending
    shards, a drift check of a shard."""
    worked = {name for name, r in results.items() if STAGES[name].marker and not r.skipped}
    if results["discover"].hashed or results["discover"].pending:
        worked.add("discover")
    return worked | ({"check_drift"} if results["check_drift"].checked else set())


def gold_metrics(config: PipelineConfig) -> dict:
    root = open_storage(config.root)
    version = catalog.read_done(root, catalog.EVALUATE_FOLDER)["summary"]["model_version"]
    return json.loads(root.read_bytes(catalog.report_file(version, catalog.REPORT_METRICS)))


def plain_label(scores: np.ndarray, min_margin: float) -> str | None:
    """The label rule written out for one face: the leading emotion of the seven, if it is one of the
    five classes and leads the runner-up by ``min_margin`` of the total."""
    shares = scores / scores.sum()
    first, second = np.sort(shares)[::-1][:2]
    leader = EMOTIONS[int(np.argmax(shares))]
    return leader if leader in CLASSES and first - second >= min_margin else None


def check_gold_by_teacher(config: PipelineConfig, metrics: dict) -> None:
    """Both teachers score the gold faces: each one's (and the mean's) agreement with people,
    recomputed from the gold table's scores, in metrics.json's gold check and teachers table."""
    gold = catalog.read_gold_annotations(open_storage(config.root))
    with_face = gold[gold["status"] == "ok"]
    deepface = with_face[[f"deepface_{e}" for e in EMOTIONS]].to_numpy(float)
    xception = with_face[[f"xception_{e}" for e in EMOTIONS]].to_numpy(float)
    assert np.isfinite(xception).all() and len(with_face) >= 5
    for teacher, scores in (("deepface", deepface), ("mini_xception", xception), ("mean", (deepface + xception) / 2)):
        labels = [plain_label(row, config.min_emotion_margin) for row in scores]
        hits = sum(mine == people for mine, people in zip(labels, with_face["label"]))
        assert metrics["gold"][teacher]["n"] == len(with_face)
        assert metrics["gold"][teacher]["accuracy"] == pytest.approx(hits / len(with_face))
        assert metrics["teachers"]["teachers"][teacher]["gold"] == {
            "n": len(with_face), "agree": hits, "agreement": pytest.approx(hits / len(with_face))}


def test_a_gold_set_and_captions_given_later_reach_the_report(trained_root, tmp_path):
    trained, _ = trained_root
    copy_root(trained.root, tmp_path / "out")
    config = dataclasses.replace(trained, root=str(tmp_path / "out"))
    assert work_done(run_all_stages(config)) == set()  # nothing new
    assert gold_metrics(config)["gold"] is None

    gold = tmp_path / "gold"
    for label in CLASSES:
        copy_photos(LABELLED / label, gold / label, sorted(p.name for p in (LABELLED / label).glob("*"))[:2])
    config = dataclasses.replace(config, gold=str(gold), gold_detector="skip")
    log = ReadLog(config.source, config.root)
    assert work_done(run_all_stages(config, log.storages_for)) == {"check_gold", "evaluate"}
    metrics = gold_metrics(config)
    assert metrics["gold"]["photos"] == 10 and metrics["gold"]["model"]["accuracy"] is not None
    check_gold_by_teacher(config, metrics)
    # What the gold check and the evaluation read with a gold set is covered by their declarations.
    root = open_storage(config.root)
    for name in ("check_gold", "evaluate"):
        assert undeclared_reads(STAGES[name], config, root, load_manifest(root), None, log.reads[(name, None)]) == []
    # The run's summary names the gold check's figures, DeepFace's and the model's.
    summary = local_run.gold_summary(root, config)
    assert summary["photos"] == 10 and summary["model"]["macro_f1"] == metrics["gold"]["model"]["macro_f1"]
    assert f"gold check: 10 photos, DeepFace accuracy {metrics['gold']['deepface']['accuracy']:.3f}" in \
        local_run._gold_line(summary)
    assert work_done(run_all_stages(config)) == set()  # nothing new again

    copy_photos(LABELLED / "sad", gold / "sad", sorted(p.name for p in (LABELLED / "sad").glob("*"))[2:3])
    assert work_done(run_all_stages(config)) == {"check_gold", "evaluate"}  # the gold folder changed
    assert gold_metrics(config)["gold"]["photos"] == 11

    captions = tmp_path / "captions.csv"
    dropped = tuple(f"{p.name}," for p in sorted(Path(trained.source).glob("*.jpg"))[:20])
    lines = [line for line in Path(trained.captions).read_text().splitlines() if not line.startswith(dropped)]
    captions.write_text("\n".join(lines) + "\n")  # no captions for half the photos: fewer covered
    before = gold_metrics(config)["captions"]
    config = dataclasses.replace(config, captions=str(captions))
    # The review queue reads the captions too (a caption that disagrees is a reason to ask a person).
    assert work_done(run_all_stages(config)) == {"evaluate", "review_queue"}
    assert gold_metrics(config)["captions"]["covered"] < before["covered"]
