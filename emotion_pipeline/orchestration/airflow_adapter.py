"""What the tasks do with Airflow beyond running a stage (``dag_builder`` makes the tasks): alerts
through the SMTP provider's notifier, and failing at once, without retries, on errors no retry can fix.

Recipients come from the run's params (``alert_emails``), the SMTP server from the Airflow connection
``smtp_default`` (or ``smtp_conn_id``), e.g.
``AIRFLOW_CONN_SMTP_DEFAULT='{"conn_type": "smtp", "host": "smtp.example.com", "port": 587,
"login": "...", "password": "...", "extra": {"from_email": "pipeline@example.com"}}'``.
"""
from __future__ import annotations

import html
import logging
import math
import os
import re
import urllib.parse
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from emotion_pipeline.core.config import CLASSES, PipelineConfig
from emotion_pipeline.core.errors import AccessDenied, BucketNotFound, ConfigError, MissingUpstream, MissingWeightsError
from emotion_pipeline.core.results import TrainResult

# Errors that the same task would meet again on every retry: invalid settings, a weight file that is
# not there and cannot be downloaded, a bucket that does not exist, a denied permission, and an input
# whose upstream stage has not run (MissingUpstream). A task starts only once its upstream tasks in
# the run succeeded, so what it misses no wait creates: an output deleted, a task run out of order
# (cleared alone, or a stage run by hand), or shards an overlapping run (a backfill) discovered and has
# not processed yet; that run runs the same whole-dataset stage after its own shards, covering them.
PERMANENT_ERRORS = (ConfigError, MissingWeightsError, BucketNotFound, AccessDenied, MissingUpstream)

log = logging.getLogger(__name__)


def asset_extra(result, config: PipelineConfig) -> dict[str, Any]:
    """A stage result as an asset event's extra: its scalar fields (rows, URIs, model version,
    metrics, ``skipped``), its lists of names (a model's ``flags``, for a deploy DAG to refuse a
    random-weights one) and the root, small enough for the metadata database."""
    fields = {k: v for k, v in result.to_dict().items() if v is None or isinstance(v, (str, int, float, bool))
              or (isinstance(v, list) and all(isinstance(item, str) for item in v))}
    return {**fields, "root": config.root}


def skip_without_output(result, returned: dict[str, Any], ti: Any) -> None:
    """Skip the task when ``result`` holds none of what its asset stands for (a train that made no
    model): Airflow posts an outlet's asset event only when its task succeeds, so a skipped one posts
    none and a DAG scheduled on ``emotion_model`` never starts without a model. The task's XCom is
    still ``returned`` (the run's summary shows why), and downstream ``none_failed`` tasks still run
    (evaluate writes its no-model report).

    Raises:
        airflow.sdk.exceptions.AirflowSkipException: with the reason, when nothing was made.
    """
    if not isinstance(result, TrainResult) or result.model_version is not None:
        return
    from airflow.sdk.exceptions import AirflowSkipException

    ti.xcom_push(key="return_value", value=returned)
    raise AirflowSkipException(f"no model: {result.reason or 'nothing was trained'}")


def batch_folder(layout: str, has_date: bool, render: Callable[[str], str],
                 event_batches: list[str | None]) -> str:
    """The batch folder a run reads (``batch``), from the layout the deployment set.

    Args:
        layout: the ``batch`` param: "" (the whole source), a folder, or an Airflow template such as
            ``{{ ds }}``.
        has_date: whether the run has a logical date (scheduled and backfill runs do; asset-triggered
            runs and manual ones triggered with ``logical_date: null`` do not).
        render: renders a template with the run's context.
        event_batches: ``extra["batch"]`` of the asset events that triggered the run.

    Returns:
        The rendered folder for a dated run; for a run without a date, the one folder its asset
        events name (``{"batch": "2026-11-03"}``), else "" (the whole source: every batch).
    """
    if not layout or ("{{" not in layout and "{%" not in layout):
        return layout
    if has_date:
        return render(layout).strip()
    named = sorted({str(b) for b in event_batches if b})
    if len(named) == 1:
        return named[0]
    log.info("batch %r needs a run date; this run has none%s: it reads the whole source", layout,
             f" and its events name {named}" if named else "")
    return ""


def run_batch_folder(layout: str, context: Any) -> str:
    """``batch_folder`` for the running task (its Airflow context), rendered with the run's dates only.

    Raises:
        airflow.sdk.exceptions.AirflowFailException: the template names anything but the dates.
    """
    events = context.get("triggering_asset_events") or {}
    with fail_fast():
        return batch_folder(layout, context.get("logical_date") is not None,
                            lambda text: render_batch(text, batch_dates(context)),
                            [(event.extra or {}).get("batch") for batch in events.values() for event in batch])


def batch_dates(context: Any) -> dict[str, str]:
    """The variables a ``batch`` template may use: the run's dates as plain strings, so that whoever
    may trigger a run (and so write the template) reads nothing else of the task's context."""
    logical = context["logical_date"]
    start, end = context.get("data_interval_start") or logical, context.get("data_interval_end") or logical
    ds = logical.strftime("%Y-%m-%d")
    return {"ds": ds, "ds_nodash": logical.strftime("%Y%m%d"), "logical_date": ds,
            "year": f"{logical.year:04d}", "month": f"{logical.month:02d}", "day": f"{logical.day:02d}",
            "data_interval_start": start.strftime("%Y-%m-%d"), "data_interval_end": end.strftime("%Y-%m-%d")}


def render_batch(layout: str, dates: dict[str, str]) -> str:
    """``layout`` with each ``{{ name }}`` of ``dates`` replaced by its value, and nothing else: no
    Jinja at all. A sandbox still let whoever triggers a run tie up a worker (``{{ ds|center(10**11) }}``,
    nested loops); a folder name needs no more than the run's dates.

    Raises:
        ConfigError: an unknown name, or any other template syntax, naming the variables it may use.
    """
    def value(match: re.Match) -> str:
        if match.group(1) not in dates:
            raise ConfigError(f"batch {layout!r}: unknown variable {match.group(1)!r}; it may use only the "
                              f"run's dates ({', '.join(dates)}), as in {{{{ ds }}}}")
        return dates[match.group(1)]

    rendered = re.sub(r"\{\{\s*(\w+)\s*\}\}", value, layout)
    if any(mark in rendered for mark in ("{{", "{%", "{#")):
        raise ConfigError(f"batch {layout!r} cannot be rendered: only {{{{ name }}}} of the run's dates "
                          f"({', '.join(dates)}) is allowed, no filters, expressions or statements")
    return rendered


@contextmanager
def fail_fast():
    """Turn a ``PERMANENT_ERRORS`` error into Airflow's "fail now, no retries", with its message:
    retrying it (twice, with backoff: about 100 s) could not fix it."""
    try:
        yield
    except PERMANENT_ERRORS as err:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(f"{type(err).__name__}: {err}") from err


def _judged(value: float, spec: str) -> str:
    """A drift statistic, or why it has no value (too few photos on a side to judge it)."""
    return "not judged" if math.isnan(value) else format(value, spec)


def drift_alert_message(report: dict[str, Any], question_url: str | None = None) -> tuple[str, str]:
    """Subject and HTML body naming every drifted shard with its numbers and its chart, and the link to
    the question about them in the Airflow UI (``question_url``) when one is asked."""
    drifted = report["drifted"]
    shards = ", ".join(str(d["shard"]) for d in drifted)
    subject = f"[emotion-pipeline] label drift in shard(s) {shards}"
    rows = []
    for d in drifted:
        shares = " ".join(f"{c} {d[f'share_{c}']:.0%} (ref {d[f'reference_share_{c}']:.0%})" for c in CLASSES)
        rows.append(
            f"<li><b>shard {d['shard']}</b>: JS distance {_judged(d['js_distance'], '.3f')} "
            f"(threshold {report['threshold']}), no-face rate {d['no_face_rate']:.0%} "
            f"(ref {d['reference_no_face_rate']:.0%}, change {_judged(d['no_face_change'], '+.2f')}, "
            f"threshold {report['no_face_threshold']}); {d['labelled']} labelled of {d['images']} photos."
            f"<br>{html.escape(shares)}<br>chart: {html.escape(d['chart'])}</li>"
        )
    body = (
        f"<p>The label distribution of {len(drifted)} shard(s) moved away from the reference.</p>"
        f"<ul>{''.join(rows)}</ul><p>Monitoring log: {html.escape(report['log_uri'])}</p>"
    )
    if question_url:
        body += (f'<p>Keep these shards, exclude them from training or annotate them again: '
                 f'<a href="{html.escape(question_url)}">answer in the Airflow UI</a> (training waits for it).</p>')
    return subject, body


def send_drift_alert(config: PipelineConfig, report: dict[str, Any], context: Any) -> bool:
    """E-mail the drift report through Airflow's SmtpNotifier.

    Args:
        config: ``alert_emails`` (the recipients) and ``smtp_conn_id`` (the SMTP server's connection).
        report: the check_drift task's result (``DriftReport.to_dict()``, as XCom holds it).
        context: the Airflow task context (the notifier renders with it).

    Returns:
        True when a mail went out; False when nothing drifted or nobody is configured to receive it.

    Raises:
        smtplib.SMTPException, OSError: the SMTP server refused the mail or cannot be reached.
    """
    if not report["drifted"]:
        return False
    if not config.alert_emails:
        log.warning("label drift in %d shard(s) but no alert_emails configured", len(report["drifted"]))
        return False
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    subject, body = drift_alert_message(report, drift_question_url(config, context))
    charts = [d["chart"] for d in report["drifted"] if Path(d["chart"]).is_file()]  # local roots
    SmtpNotifier(
        to=list(config.alert_emails), subject=subject, html_content=body, files=charts,
        smtp_conn_id=config.smtp_conn_id,
    ).notify(context)
    log.info("drift alert sent to %s", ", ".join(config.alert_emails))
    return True


def drift_question_url(config: PipelineConfig, context: Any) -> str | None:
    """The page of this run's drift question in the Airflow UI (its "required actions"), from
    ``[api] base_url``; None when no question is asked (``ask_people`` off) or the URL is unknown."""
    from airflow.configuration import conf

    from emotion_pipeline.orchestration.decisions import DRIFT_DECISION

    base = conf.get("api", "base_url", fallback=None)
    if not config.ask_people or not base:
        return None
    ti = context["ti"]
    return (f"{base.rstrip('/')}/dags/{ti.dag_id}/runs/{urllib.parse.quote(ti.run_id, safe='')}/tasks/"
            f"{DRIFT_DECISION}/required_actions")


def notify_failure(context: Any) -> None:
    """``on_failure_callback``: mail the failed task and its error to the run's ``alert_emails``.

    Args:
        context: the failed task's Airflow context (its params give the recipients).

    Raises:
        smtplib.SMTPException, OSError: the mail could not be sent (Airflow logs a failing callback;
            the task's state stays failed).
    """
    config = PipelineConfig.from_mapping(context["params"])
    if not config.alert_emails:
        return
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    ti = context["ti"]
    error = html.escape(str(context.get("exception") or "see the task log"))
    SmtpNotifier(
        to=list(config.alert_emails),
        subject=f"[emotion-pipeline] task {ti.task_id} failed in run {ti.run_id}",
        html_content=f"<p>Task <b>{ti.task_id}</b> (map index {ti.map_index}) failed: {error}</p>",
        smtp_conn_id=config.smtp_conn_id,
    ).notify(context)


def worker_name() -> str:
    """This worker's name for Airflow (``[core] hostname_callable``): $EMOTION_PIPELINE_WORKER_NAME, else the
    host's FQDN. Containers each have a host name; several workers on one host need the variable."""
    import socket

    return os.environ.get("EMOTION_PIPELINE_WORKER_NAME") or socket.getfqdn()
