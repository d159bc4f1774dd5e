"""The ``batch`` param is a template anyone allowed to trigger a run writes: it sees the run's dates and
nothing else. Rendered with the whole task context it read connections' passwords, variables and
the config (``{{ conn.smtp_default.password }}``)."""
import pendulum
import pytest
from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException
from airflow.sdk.execution_time.context import ConnectionAccessor, VariableAccessor

from emotion_pipeline.orchestration.airflow_adapter import run_batch_folder

PASSWORD = "s3cret-smtp-pw"


@pytest.fixture
def context(monkeypatch):
    """A task's Airflow context with its real connection and variable accessors (read from the
    environment's secrets backend here, as a worker reads its own)."""
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT",
                       f'{{"conn_type": "smtp", "host": "smtp.example.com", "login": "me", "password": "{PASSWORD}"}}')
    monkeypatch.setenv("AIRFLOW_VAR_API_KEY", "variable-secret")
    day = pendulum.datetime(2026, 11, 2, 3, 4, tz="UTC")
    return {"task": BaseOperator(task_id="discover"), "conn": ConnectionAccessor(), "var": {"value": VariableAccessor(
        deserialize_json=False)}, "params": {"batch": "x"}, "logical_date": day, "ds": "2026-11-02",
        "ds_nodash": "20261102", "data_interval_start": day.subtract(days=1), "data_interval_end": day,
        "triggering_asset_events": {}}


@pytest.mark.parametrize("layout, folder", [
    ("{{ ds }}", "2026-11-02"), ("incoming/{{ ds_nodash }}", "incoming/20261102"),
    ("{{ year }}/{{ month }}/{{ day }}", "2026/11/02"), ("{{ logical_date }}", "2026-11-02"),
    ("{{ data_interval_start }}_{{ data_interval_end }}", "2026-11-01_2026-11-02"),
    ("{{ds}}/x", "2026-11-02/x"),
])
def test_the_batch_folder_renders_the_run_dates(context, layout, folder):
    assert run_batch_folder(layout, context) == folder


@pytest.mark.parametrize("layout", [
    "{{ conn.smtp_default.password }}", "{{ conn }}", "{{ var.value.api_key }}", "{{ params }}", "{{ task }}",
    "{{ ds.__class__ }}", "{{ ds.upper() }}", "{{ ds['0'] }}", "{{ ds | attr('upper') }}", "{{ range(3) }}",
    "{{ ds * 100000000000 }}", "{{ 9 ** 9 ** 9 }}",
    "{% for c in ds %}{{ c }}{% endfor %}{{ lipsum() }}", "{{ ds | replace('-', '/') }}",
    "{{ ds|center(99999999999) }}", "{% for a in ds %}{% for b in ds %}x{% endfor %}{% endfor %}", "{{ nope }}",
])
def test_the_batch_folder_sees_nothing_but_the_dates(context, layout):
    """Today the first renders the SMTP password into the folder name (and the run's logs)."""
    with pytest.raises(AirflowFailException) as raised:  # no retry could fix the template
        folder = run_batch_folder(layout, context)
        assert PASSWORD not in folder
    message = str(raised.value)
    assert "batch" in message and "ds, ds_nodash" in message and PASSWORD not in message
