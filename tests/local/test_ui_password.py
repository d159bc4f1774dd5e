"""`emotion-pipeline ui`'s admin password file (SimpleAuthManager writes the generated password there)
is private to its user from the moment it exists: created 0600 (whatever the umask, never chmod'ed
after), then filled by Airflow's own SimpleAuthManager, which keeps that mode. The real `ui` is
checked in tests/orchestration/test_airflow_ui.py."""
import json
import os
import stat
import subprocess
import sys

import pytest

from emotion_pipeline.local.airflow_home import PASSWORDS_FILE, private_password_file


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def generate_admin_password(home) -> None:
    """What `airflow standalone` does at start: SimpleAuthManager's init, in a fresh process."""
    code = ("from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager; "
            "SimpleAuthManager().init()")
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}"}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, timeout=300)


def test_the_generated_admin_password_is_readable_by_its_user_alone(tmp_path, monkeypatch):
    def no_chmod(*args, **kwargs):
        raise AssertionError("the file must be created private, not chmod'ed after")

    monkeypatch.setattr(os, "chmod", no_chmod)
    monkeypatch.setattr(os, "fchmod", no_chmod)
    old_umask = os.umask(0)  # a permissive umask does not open it either
    try:
        path = private_password_file(tmp_path)
    finally:
        os.umask(old_umask)
    monkeypatch.undo()
    assert path == tmp_path / PASSWORDS_FILE and mode(path) == 0o600

    generate_admin_password(tmp_path)
    assert mode(path) == 0o600
    password = json.loads(path.read_text())["admin"]
    assert len(password) >= 12
    assert private_password_file(tmp_path) == path and json.loads(path.read_text())["admin"] == password


def test_a_file_left_readable_by_an_earlier_version_is_replaced_by_a_private_copy(tmp_path):
    path = tmp_path / PASSWORDS_FILE
    path.write_text('{"admin": "kept"}\n')
    path.chmod(0o644)  # what Airflow made it before
    before = os.stat(path).st_ino
    assert private_password_file(tmp_path) == path
    assert mode(path) == 0o600 and json.loads(path.read_text()) == {"admin": "kept"}
    assert os.stat(path).st_ino != before  # a new file renamed over it, not the old one chmod'ed
    assert [p.name for p in tmp_path.iterdir()] == [PASSWORDS_FILE]


def test_a_symlink_in_its_place_is_refused(tmp_path):
    target = tmp_path / "elsewhere.json"
    target.write_text("{}")
    (tmp_path / PASSWORDS_FILE).symlink_to(target)
    with pytest.raises(RuntimeError, match="not a regular file"):
        private_password_file(tmp_path)

