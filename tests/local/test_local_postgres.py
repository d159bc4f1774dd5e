"""The local UI's PostgreSQL directories: private to the server, nothing opened to other users, no
name in the shared temp dir that another user could make first (unit tests, no server started)."""
from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from emotion_pipeline.local import postgres as local_postgres
from emotion_pipeline.local.postgres import LocalPostgres, as_user, server_user

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="the server user exists only when run as root")


def other_bits(path: Path) -> dict[Path, int]:
    return {p: p.stat().st_mode & 0o007 for p in [*path.parents, path]}


@as_root
def test_as_root_only_the_server_user_may_traverse_to_its_data(tmp_path):
    private = tmp_path / "private"  # stands for /root (700) with the home and its password file below
    private.mkdir(mode=0o700)
    data = private / "home" / "postgres" / "data"
    data.parent.mkdir(parents=True)
    data.mkdir(mode=0o700)
    user = server_user()
    os.chown(data, user.pw_uid, user.pw_gid)
    before = other_bits(data)

    local_postgres.let_user_traverse(data)

    assert other_bits(data) == before  # no o+x anywhere: other users get nothing
    reach = subprocess.run(["/bin/sh", "-c", f'[ -x "{data}" ]'], **as_user(user))
    assert reach.returncode == 0  # the server user alone gets through
    acl = subprocess.run(["getfacl", "-cp", str(private)], capture_output=True, text=True).stdout
    assert f"user:{user.pw_name}:--x" in acl
    local_postgres.let_user_traverse(data)  # idempotent: nothing more to grant


@pytest.mark.parametrize("planted", ["symlink", "foreign", "open"])
def test_a_planted_socket_directory_is_refused_and_not_followed(tmp_path, planted):
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    folder = tmp_path / "postgres"
    folder.mkdir()
    socket_dir = folder / "socket"
    if planted == "symlink":
        socket_dir.symlink_to(target)
    else:
        socket_dir.mkdir(mode=0o700)
        if planted == "foreign":
            if os.geteuid() != 0:
                pytest.skip("chown to another user needs root")
            os.chown(socket_dir, 12345, 12345)
        else:
            socket_dir.chmod(0o777)

    with pytest.raises(RuntimeError, match=str(socket_dir)):
        LocalPostgres(folder).prepare_folders(server_user())
    assert target.stat().st_uid == os.geteuid()  # the symlink's target was not handed over


def test_a_long_path_gets_an_unpredictable_private_socket_dir_removed_at_stop(tmp_path):
    folder = (tmp_path / ("deep" * 30) / "postgres").resolve()
    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:12]
    predictable = Path(tempfile.gettempdir()) / f"emotion-pipeline-pg-{digest}"  # today's name
    target = tmp_path / "target"
    target.mkdir(mode=0o700)
    predictable.symlink_to(target)
    try:
        database = LocalPostgres(folder)
        user = server_user()
        database.prepare_folders(user)
        socket_dir = database.socket_dir
        info = os.lstat(socket_dir)
        assert socket_dir != predictable and stat.S_ISDIR(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o700
        assert info.st_uid == (user.pw_uid if user else os.geteuid())
        assert target.stat().st_uid == os.geteuid()
        assert len(str(socket_dir / ".s.PGSQL.5432").encode()) <= local_postgres.SOCKET_PATH_MAX
        database.stop()
        assert not socket_dir.exists()
    finally:
        predictable.unlink()
