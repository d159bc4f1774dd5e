"""Stage 4: label drift per shard, logged to ``monitoring/label_monitor_log.csv`` with pie charts.

Statistic: the Jensen-Shannon distance (base 2, so 0 = identical, 1 = disjoint) between the shard's
distribution over the five labels and the reference distribution, plus the absolute change of the
no-face rate. Each is judged only when both sides are big enough (``min_drift_photos``: labelled
photos for the label distance, annotated photos for the no-face rate); a side too small, or empty,
makes that statistic "not judged" (NaN in the log, the reason in ``not_judged`` and on the chart),
never a distance of 0 or 1. A shard drifts when a judged statistic passes its threshold. Shard 0 has
no earlier shards: it is logged, never flagged.

Reference (``drift_reference``):
* ``earlier_shards``: every shard before this one, so the check is the same whichever run does it;
* ``baseline``: a pinned distribution in ``monitoring/baseline.json`` (written from the first shard
  checked when it does not exist yet; replace it to pin another baseline).

Like with like: a shard is compared only with annotations made by the same face detector (the
``detector`` column of its annotations). Another detector finds other faces (YuNet finds faces MTCNN
misses), so changing it moves the no-face rate and the labels by itself; that is not drift in the
photos. Earlier shards annotated with another detector are left out of the reference (none left: not
judged), and each detector has its own pinned baseline (``baseline.json`` for the first one pinned,
``baseline.<detector>.json`` for the others; a ``baseline.json`` pinned before the detector was
recorded is MTCNN's, the default of that time).

A shard is checked once per version of its annotations: the log key is (shard, annotations
fingerprint), so re-running a run or the DAG on unchanged data appends nothing.
"""
from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from emotion_pipeline.core import catalog
from emotion_pipeline.core.config import CLASSES, PipelineConfig
from emotion_pipeline.core.errors import MissingUpstream
from emotion_pipeline.core.results import DriftReport
from emotion_pipeline.core.runner import StageRun
from emotion_pipeline.core.storage import Storage
from emotion_pipeline.core.tables import read_json, read_table, write_json
from emotion_pipeline.labelling import teachers
from emotion_pipeline.reporting.charts import drift_timeline_chart, label_pie_chart

log = logging.getLogger(__name__)

DIST_COLUMNS = [f"share_{c}" for c in CLASSES]


def check_drift(run: StageRun) -> DriftReport:
    """The stage function: every annotated shard not yet logged at its current annotations (no done
    marker: the log's (shard, annotations fingerprint) key makes a re-run append nothing).

    Args:
        run: the config (thresholds, ``drift_reference``), the root, and ``run_id`` for the log.

    Returns:
        The shards checked by this call and, ready for the alert, the ones that drifted.

    Raises:
        MissingUpstream: a present shard is not annotated yet.
    """
    config, root = run.config, run.root
    shards = [s for s in run.present_shards() if root.exists(catalog.done_marker(catalog.ANNOTATE_FOLDER, s))]
    monitor_log = catalog.read_monitor_log(root)
    logged = set(zip(monitor_log["shard"].astype(int), monitor_log["annotations_fingerprint"]))
    shard_tables = {s: _labels(root, s, config.teacher) for s in shards}
    # Each shard's detector and counts once, and each shard's reference as a running sum in shard
    # order: recomputing them from every shard's table for each new shard cost shards^2 (minutes at
    # 300 shards on a first run).
    detectors = {s: _detector(table) for s, (table, _) in shard_tables.items()}
    earlier = _earlier_counts(shard_tables, detectors)

    new_rows = []
    for shard, (labels, fingerprint) in shard_tables.items():
        if (shard, fingerprint) in logged:
            continue
        row = _like_with_like(config, root, shard, detectors, earlier[shard], labels)
        row.update(
            checked_at=datetime.now(UTC).isoformat(timespec="seconds"), run_id=run.run_id,
            annotations_fingerprint=fingerprint, reference=config.drift_reference,
            chart=root.uri_for(catalog.shard_chart(shard)),
        )
        root.write_bytes(catalog.shard_chart(shard), label_pie_chart(shard, row))
        new_rows.append(row)

    if new_rows:
        monitor_log = pd.concat([monitor_log, pd.DataFrame(new_rows)], ignore_index=True)
        root.write_bytes(catalog.MONITOR_LOG, monitor_log.to_csv(index=False).encode())
        root.write_bytes(catalog.DRIFT_TIMELINE, drift_timeline_chart(monitor_log, config))
    drifted = [r for r in new_rows if r["drift"]]
    _log_verdicts(new_rows)
    return DriftReport(checked=[int(r["shard"]) for r in new_rows],
                       drifted=[_alert_fields(r) for r in drifted], log_uri=root.uri_for(catalog.MONITOR_LOG),
                       threshold=config.drift_threshold, no_face_threshold=config.no_face_drift_threshold)


def _log_verdicts(rows: list[dict[str, Any]]) -> None:
    """A warning per drifted shard, a line per shard not (fully) judged and why."""
    for r in rows:
        if r["drift"]:
            log.warning("label drift in shard %d: JS distance %.3f, no-face change %+.3f",
                        r["shard"], r["js_distance"], r["no_face_change"])
    for r in rows:
        if r["not_judged"]:
            log.info("drift in shard %d %s: %s", r["shard"], "partly judged" if r["judged"] else "not judged",
                     r["not_judged"])


def distribution(labels: pd.DataFrame) -> dict[str, Any]:
    """Label shares over the five classes, the no-face rate, and the counts they come from."""
    return _shares(_counts(labels))


def _counts(labels: pd.DataFrame) -> dict[str, int]:
    """What ``distribution`` is made of: annotated photos, no-face photos, labelled photos per class.
    Counts add up over shards, so a reference of many shards is a sum, not a concatenation."""
    annotated = labels[labels["status"].isin(["ok", "no_face"])]
    counts = annotated["label"].value_counts()
    return {"images": len(annotated), "no_face": int((annotated["status"] == "no_face").sum()),
            **{c: int(counts.get(c, 0)) for c in CLASSES}}


def _shares(counts: dict[str, int]) -> dict[str, Any]:
    labelled = sum(counts[c] for c in CLASSES)
    shares = {f"share_{c}": (float(counts[c]) / labelled if labelled else 0.0) for c in CLASSES}
    images, no_face = counts["images"], counts["no_face"]
    return {
        "images": images, "labelled": labelled, "no_face": no_face,
        "no_face_rate": no_face / images if images else 0.0, **shares,
    }


def _earlier_counts(shard_tables: dict[int, tuple[pd.DataFrame, str]],
                    detectors: dict[int, str | None]) -> dict[int, dict[str, int]]:
    """For each shard, the summed counts of the shards before it annotated with its detector (the
    ``earlier_shards`` reference), in one pass in shard order."""
    totals: dict[str | None, dict[str, int]] = {}
    earlier = {}
    for shard in sorted(shard_tables):
        running = totals.setdefault(detectors[shard], dict.fromkeys(("images", "no_face", *CLASSES), 0))
        earlier[shard] = dict(running)
        for key, value in _counts(shard_tables[shard][0]).items():
            running[key] += value
    return earlier


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance, base 2 (in [0, 1]); 0 when either side is empty."""
    from scipy.spatial.distance import jensenshannon

    if p.sum() == 0 or q.sum() == 0:
        return 0.0
    return float(jensenshannon(p, q, base=2))


def _labels(root: Storage, shard: int, teacher: str) -> tuple[pd.DataFrame, str]:
    """A shard's statuses and labels under ``teacher`` (the dataset's), and the key it is logged under:
    its annotations' version and the teacher (another teacher's labels are checked and logged anew)."""
    table = read_table(root, catalog.annotations(shard))
    marker = catalog.read_done(root, catalog.ANNOTATE_FOLDER, shard)
    if table is None or marker is None:
        raise MissingUpstream(f"shard {shard} is not annotated yet: run the annotate stage first")
    table = table.assign(label=teachers.chosen_labels(table, teacher))
    return table[[c for c in ("status", "label", "detector") if c in table]], f"{marker['fingerprint']}:{teacher}"


def _detector(table: pd.DataFrame) -> str | None:
    """The face detector a shard was annotated with (None for a table without the column)."""
    if "detector" not in table:
        return None
    named = table["detector"].dropna()
    return str(named.mode().iloc[0]) if len(named) else None


LEGACY_BASELINE_DETECTOR = "mtcnn"  # the default detector when baselines did not record theirs


def _baseline(root: Storage, shard: int, labels: pd.DataFrame, detector: str | None) -> dict[str, Any]:
    """The pinned baseline of the shard's detector, pinned from this shard when there is none yet."""
    first = read_json(root, catalog.DRIFT_BASELINE)
    if first is not None and detector is not None and first.get("detector", LEGACY_BASELINE_DETECTOR) != detector:
        key = f"{catalog.DRIFT_FOLDER}/baseline.{detector}.json"  # another detector's own baseline
        baseline = read_json(root, key)
    else:
        key, baseline = catalog.DRIFT_BASELINE, first
    if baseline is None:
        baseline = {**distribution(labels), "detector": detector}
        write_json(root, key, baseline)
        log.info("pinned drift baseline (%s) from shard %d", detector or "detector not recorded", shard)
    return {k: v for k, v in baseline.items() if k != "detector"}


def _like_with_like(  # noqa: PLR0913 (the shard, its labels, and what every shard's tables gave once)
    config: PipelineConfig, root: Storage, shard: int, detectors: dict[int, str | None],
    earlier: dict[str, int], labels: pd.DataFrame,
) -> dict[str, Any]:
    """The shard compared with annotations by its own detector: earlier shards annotated with another
    are left out of the reference (and the row says so), the baseline is the detector's own.
    ``earlier``: the counts of the earlier shards annotated with its detector (``_earlier_counts``)."""
    mine = detectors[shard]
    row = _compare(config, shard, labels, _reference(config, root, shard, earlier, labels))
    others = sorted({str(d) for s, d in detectors.items() if s < shard and d != mine})
    if others and config.drift_reference == "earlier_shards":
        note = f"earlier shards annotated with {', '.join(others)} are left out of the reference"
        row["not_judged"] = "; ".join(filter(None, [row["not_judged"], note]))
    row["detector"] = mine or ""
    return row


def _reference(
    config: PipelineConfig, root: Storage, shard: int, earlier: dict[str, int], labels: pd.DataFrame,
) -> dict[str, Any]:
    """The distribution the shard is compared with, made with the shard's detector: its pinned
    baseline, or the earlier shards' summed ``earlier`` counts."""
    if config.drift_reference == "baseline":
        return _baseline(root, shard, labels, _detector(labels))
    return _shares(earlier)


def _compare(config: PipelineConfig, shard: int, labels: pd.DataFrame, reference: dict[str, Any]) -> dict[str, Any]:
    current = distribution(labels)
    enough = config.min_drift_photos
    reasons = [f"{side} has {numbers[count]} {what} photos (< {enough})"
               for side, numbers in (("shard", current), ("reference", reference))
               for count, what in (("labelled", "labelled"), ("images", "annotated"))
               if numbers[count] < enough]
    labels_judged = min(current["labelled"], reference["labelled"]) >= enough
    no_face_judged = min(current["images"], reference["images"]) >= enough
    p = np.array([current[c] for c in DIST_COLUMNS]) * current["labelled"]
    q = np.array([reference[c] for c in DIST_COLUMNS]) * reference["labelled"]
    js = js_distance(p, q) if labels_judged else float("nan")
    no_face_change = current["no_face_rate"] - reference["no_face_rate"] if no_face_judged else float("nan")
    drift = ((labels_judged and js > config.drift_threshold)
             or (no_face_judged and abs(no_face_change) > config.no_face_drift_threshold))
    return {
        "shard": shard, **current,
        **{f"reference_{k}": v for k, v in reference.items()},
        "js_distance": round(js, 6), "no_face_change": round(no_face_change, 6),
        "threshold": config.drift_threshold, "no_face_threshold": config.no_face_drift_threshold,
        "judged": labels_judged or no_face_judged, "not_judged": "; ".join(reasons), "drift": bool(drift),
    }


def _alert_fields(row: dict[str, Any]) -> dict[str, Any]:
    keys = ["shard", "images", "labelled", "no_face_rate", "reference_no_face_rate", "js_distance",
            "no_face_change", "chart", *DIST_COLUMNS, *(f"reference_{c}" for c in DIST_COLUMNS)]
    return {k: row[k] for k in keys}


def exclude_shards(root: Storage, shards: list[int], run_id: str, decided_by: str) -> dict[int, dict]:
    """A drift decision's "exclude": record ``shards`` in ``catalog.EXCLUDED_SHARDS``, so that train and
    evaluate leave their photos out from now on (their training data changes: the next train refits).
    Delete a shard's entry from that file to let it train again.

    Returns:
        Every excluded shard with who decided and when.
    """
    with root.lease("dataset"):  # read-modify-write of a root-wide file, as the drift log
        excluded = catalog.read_excluded_shards(root)
        decided_at = datetime.now(UTC).isoformat(timespec="seconds")
        for shard in shards:
            excluded[int(shard)] = {"decided_at": decided_at, "run_id": run_id, "decided_by": decided_by}
        write_json(root, catalog.EXCLUDED_SHARDS, {"shards": {str(k): v for k, v in sorted(excluded.items())}})
    log.info("check_drift: shard(s) %s excluded from training by %s", ", ".join(map(str, shards)), decided_by)
    return excluded
