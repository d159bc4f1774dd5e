"""Plots people look at instead of tables: label pies per shard and the drift timeline (PNG bytes)."""
from __future__ import annotations

import io
from typing import Any

import pandas as pd

from emotion_pipeline.core.config import CLASSES

DARK_CELL_RATE = 0.6  # a confusion matrix cell darker than this gets white text
CLASS_COLORS = {
    "happy": "#f2b701", "sad": "#3969ac", "angry": "#e73f74", "surprise": "#7f3c8d",
    "neutral": "#a5aa99", "no face": "#e0e0e0",
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on workers
    import matplotlib.pyplot as plt

    return plt


def _figure(ncols: int, width: float, height: float):
    plt = _pyplot()
    return plt, plt.subplots(1, ncols, figsize=(width, height))


def _png(plt, fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def label_pie_chart(shard: int, row: dict[str, Any]) -> bytes:
    """The shard's labels (and no-face photos) next to the reference's."""
    fig = label_pie_figure(shard, row)
    return _png(_pyplot(), fig)


def label_pie_figure(shard: int, row: dict[str, Any]):
    """``label_pie_chart``'s figure. Constrained layout: the verdict (two lines when not judged) sits
    above the pie titles instead of on them."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), layout="constrained")
    for ax, prefix, title in ((axes[0], "", f"shard {shard}"), (axes[1], "reference_", "reference")):
        labelled = row[f"{prefix}labelled"]
        counts = {c: row[f"{prefix}share_{c}"] * labelled for c in CLASSES}
        counts["no face"] = row[f"{prefix}no_face"]
        counts = {k: v for k, v in counts.items() if v > 0}
        if counts:
            ax.pie(list(counts.values()), labels=list(counts.keys()), autopct="%1.0f%%",
                   colors=[CLASS_COLORS[k] for k in counts], startangle=90, counterclock=False)
        else:
            ax.text(0.5, 0.5, "no annotated photos", ha="center", va="center")
            ax.axis("off")
        ax.set_title(f"{title}: {row[f'{prefix}images']:.0f} photos", pad=12)
    verdict = "DRIFT" if row["drift"] else ("ok" if row["judged"] else "not judged")
    js = "not judged" if pd.isna(row["js_distance"]) else f"{row['js_distance']:.3f}"
    change = "not judged" if pd.isna(row["no_face_change"]) else f"{row['no_face_change']:+.2f}"
    reason = row.get("not_judged")  # NaN when the row comes back from the log's CSV with no reason
    fig.suptitle(
        f"Shard {shard}: JS distance {js} (threshold {row['threshold']}), no-face change {change} -> {verdict}"
        + (f"\n{reason}" if isinstance(reason, str) and reason else ""),
        color="#b00020" if row["drift"] else "black",
    )
    return fig


def drift_timeline_chart(monitor_log: pd.DataFrame, config) -> bytes:
    """JS distance and no-face change per shard, thresholds dashed, drifted shards in red."""
    fig = drift_timeline_figure(monitor_log, config)
    return _png(_pyplot(), fig)


def drift_timeline_figure(monitor_log: pd.DataFrame, config):
    """``drift_timeline_chart``'s figure. The no-face change keeps its sign (shard minus reference, as in
    the log, the pie titles and the dashboard), so its threshold is drawn on both sides of zero."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    from matplotlib.ticker import MaxNLocator

    latest = monitor_log.sort_values("checked_at").groupby("shard").tail(1).sort_values("shard")
    judged = latest[latest["judged"].astype(bool)]
    unjudged = latest[~latest["judged"].astype(bool)]
    ax.plot(judged["shard"], judged["js_distance"], marker="o", label="JS distance (labels)")
    ax.plot(judged["shard"], judged["no_face_change"], marker="s", label="no-face change (shard - reference)")
    ax.scatter(unjudged["shard"], [0.0] * len(unjudged), marker="x", color="grey",
               label="not judged (too few photos)")
    ax.axhline(config.drift_threshold, ls="--", color="C0", lw=1)
    for side in (1, -1):
        ax.axhline(side * config.no_face_drift_threshold, ls="--", color="C1", lw=1)
    drifted = latest[latest["drift"].astype(bool)]
    ax.scatter(drifted["shard"], drifted["js_distance"], s=120, facecolors="none", edgecolors="red",
               label="drift", zorder=3)
    # Half a shard of room each side: one shard alone would otherwise get an axis of +-0.045 around it.
    ax.set_xlim(latest["shard"].min() - 0.5, latest["shard"].max() + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # shard numbers only
    ax.set_xlabel("shard")
    ax.set_ylabel("distance / change to reference")
    ax.set_title("Label drift by shard")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the axes: never over a point
    return fig


def confusion_matrix_chart(matrix: list[list[int]], title: str, truth: str = "DeepFace label") -> bytes:
    """Counts with row-normalised colour: each row shows where the photos of one true class went.
    A sixth column, when there is one, holds the photos given no label (``labels.NO_LABEL``)."""
    import numpy as np

    from emotion_pipeline.labelling.labels import NO_LABEL

    counts = np.asarray(matrix)
    columns = [*CLASSES, NO_LABEL][: counts.shape[1]]
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    plt, (fig, ax) = _figure(1, 6 + (len(columns) - len(CLASSES)), 5)
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(CLASSES)):
        for j in range(len(columns)):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center",
                    color="white" if rates[i, j] > DARK_CELL_RATE else "black")
    ax.set_xticks(range(len(columns)), columns, rotation=30)
    ax.set_yticks(range(len(CLASSES)), CLASSES)
    ax.set_xlabel("predicted")
    ax.set_ylabel(f"true ({truth})")
    ax.set_title(title)
    return _png(plt, fig)


def boxed_photos_chart(examples: list[tuple[Any, tuple[float, float, float, float], str]]) -> bytes:
    """Photos side by side, each with one face boxed and a title: (PIL image, (x, y, w, h), title)."""
    from matplotlib.patches import Rectangle

    columns = min(3, len(examples))
    rows = -(-len(examples) // columns)
    plt = _pyplot()
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 4.4 * rows), squeeze=False)
    for ax, (photo, box, title) in zip(axes.ravel(), examples):
        ax.imshow(photo)
        if not any(pd.isna(v) for v in box):
            x, y, w, h = box
            ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor="red", linewidth=2))
        ax.set_title(title, fontsize=9)
    for ax in axes.ravel():
        ax.axis("off")
    return _png(plt, fig)


TEACHER_TITLES = {"deepface": "DeepFace", "mini_xception": "mini-Xception", "mean": "mean of the two"}


def label_policy_chart(curves: dict[str, list[dict[str, Any]]], chosen: dict[str, dict[str, Any]]) -> bytes:
    """Per label-policy knob: agreement (gold, captions) against coverage, each point its threshold,
    the run's own setting starred."""
    return teacher_policy_chart({"": curves}, {"": chosen})


def teacher_policy_chart(curves: dict[str, dict[str, list[dict[str, Any]]]],
                         chosen: dict[str, dict[str, dict[str, Any]]]) -> bytes:
    """``label_policy_chart`` with one row of knobs per teacher (``label_policy.teacher_curves``), each
    row's titles naming its teacher; ``chosen``: each teacher's points at the run's settings."""
    plt = _pyplot()
    knobs = max(len(per_knob) for per_knob in curves.values())
    fig, axes = plt.subplots(len(curves), knobs, figsize=(5 * knobs, 4.4 * len(curves)), squeeze=False)
    for row, (teacher, per_knob) in zip(axes, curves.items()):
        for ax, (knob, points) in zip(row, per_knob.items()):
            _policy_axis(ax, points, chosen[teacher][knob])
            title = f"{knob} (star: this run's setting, {chosen[teacher][knob]['value']:g})"
            ax.set_title(f"{TEACHER_TITLES.get(teacher, teacher)}: {title}" if teacher else title, fontsize=10)
    return _png(plt, fig)


def _policy_axis(ax, points: list[dict[str, Any]], mine: dict[str, Any]) -> None:
    """One knob's curves (gold, captions) on ``ax``, the point at the run's setting (``mine``) starred."""
    for reference, marker in (("gold", "o"), ("caption", "s")):
        shown = [p for p in points if p.get(f"{reference}_agreement") is not None]
        if not shown:
            continue
        xs, ys = [p["coverage"] for p in shown], [p[f"{reference}_agreement"] for p in shown]
        ax.plot(xs, ys, marker=marker, label=f"{reference} ({max(p[f'{reference}_n'] for p in shown)} photos)")
        for p, x, y in zip(shown, xs, ys):
            ax.annotate(f"{p['value']:g}", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
        if mine.get(f"{reference}_agreement") is not None:
            ax.scatter([mine["coverage"]], [mine[f"{reference}_agreement"]], marker="*", s=220, color="red",
                       zorder=3)
    ax.set_xlabel("coverage: share of annotated photos with a label")
    ax.set_ylabel("agreement of the labels kept")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
