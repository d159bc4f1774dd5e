"""The suite's own harness: a test that imported TensorFlow, then one that set up Airflow's logging
under capsys, closed pytest's capture file, and the worker died ("lost sys.stderr"; tests/conftest.py
says why). Run in a pytest of its own, so that the order is the one that failed."""
import os
import subprocess
import sys

from tests.conftest import REPO

ORDER = '''
import tests.conftest  # the suite's conftest, as every test file under tests/ gets it


def test_1_tensorflow_s_logging_is_imported():
    import absl.logging  # TensorFlow imports it: its handler is made now, outside capsys

    assert absl.logging.get_absl_handler()


def test_2_airflow_sets_up_its_logging_under_capsys(capsys):
    from airflow.logging_config import configure_logging

    configure_logging()  # dictConfig: every existing handler is closed, as when Airflow is imported
    print("captured")
    assert capsys.readouterr().out == "captured\\n"


def test_3_pytest_s_capture_still_works():
    print("still captured")
'''


def test_tensorflow_then_airflow_logging_under_capsys_leaves_pytest_s_capture_open(tmp_path):
    (tmp_path / "test_order.py").write_text(ORDER)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", "-c", os.devnull,
         "--basetemp", str(tmp_path / "bt"), "--rootdir", str(tmp_path), str(tmp_path / "test_order.py")],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "3 passed" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]
