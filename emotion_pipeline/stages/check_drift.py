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
from emotion_pipeline.core.runner import StageRun, run_stage
from emotion_pipeline.core.storage import Storage
from emotion_pipeline.core.tables import read_json, read_table, write_json
from emotion_pipeline.labelling import teachers
from emotion_pipeline.reporting.charts import drift_timeline_chart, label_pie_chart

log = logging.getLogger(__name__)

DIST_COLUMNS = [f"share_{c}" for c in CLASSES]


def check_label_drift(
    config: PipelineConfig, *, root: Storage | None = None, run_id: str = ""
) -> DriftReport:
    """``run_stage("check_drift", config, run_id=run_id)``: check the shards not yet logged."""
    return run_stage("check_drift", config, root=root, run_id=run_id)


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

    new_rows = []
    for shard, (labels, fingerprint) in shard_tables.items():
        if (shard, fingerprint) in logged:
            continue
        reference = _reference(config, root, shard, shard_tables, labels)
        row = _compare(config, shard, labels, reference)
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
    for r in drifted:
        log.warning("label drift in shard %d: JS distance %.3f, no-face change %+.3f",
                    r["shard"], r["js_distance"], r["no_face_change"])
    for r in new_rows:
        if r["not_judged"]:
            log.info("drift in shard %d %s: %s", r["shard"], "partly judged" if r["judged"] else "not judged",
                     r["not_judged"])
    return DriftReport(checked=[int(r["shard"]) for r in new_rows],
                       drifted=[_alert_fields(r) for r in drifted], log_uri=root.uri_for(catalog.MONITOR_LOG),
                       threshold=config.drift_threshold, no_face_threshold=config.no_face_drift_threshold)


def distribution(labels: pd.DataFrame) -> dict[str, Any]:
    """Label shares over the five classes, the no-face rate, and the counts they come from."""
    annotated = labels[labels["status"].isin(["ok", "no_face"])]
    counts = annotated["label"].value_counts()
    labelled = int(counts.reindex(CLASSES).fillna(0).sum())
    shares = {f"share_{c}": (float(counts.get(c, 0)) / labelled if labelled else 0.0) for c in CLASSES}
    no_face = int((annotated["status"] == "no_face").sum())
    return {
        "images": len(annotated), "labelled": labelled, "no_face": no_face,
        "no_face_rate": no_face / len(annotated) if len(annotated) else 0.0, **shares,
    }


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
    return table[["status", "label"]], f"{marker['fingerprint']}:{teacher}"


def _reference(
    config: PipelineConfig, root: Storage, shard: int,
    shard_tables: dict[int, tuple[pd.DataFrame, str]], labels: pd.DataFrame,
) -> dict[str, Any]:
    if config.drift_reference == "baseline":
        baseline = read_json(root, catalog.DRIFT_BASELINE)
        if baseline is None:
            baseline = distribution(labels)
            write_json(root, catalog.DRIFT_BASELINE, baseline)
            log.info("pinned drift baseline from shard %d", shard)
        return baseline
    earlier = [table for s, (table, _) in shard_tables.items() if s < shard]
    if not earlier:
        return distribution(labels.iloc[0:0])
    return distribution(pd.concat(earlier, ignore_index=True))


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
