"""``emotion-pipeline ui``: Airflow standalone (LocalExecutor, PostgreSQL) with this DAG and the gpu pool.

What ``ui`` starts, it stops, on SIGTERM (service managers, container stops, CI runners), SIGINT (Ctrl-C)
and SIGHUP (terminal closed): ``airflow standalone`` runs in its own session; it is asked to stop its
components, and whatever is left of its group (scheduler, dag-processor, api-server, triggerer, their
workers and tasks) is killed after a bounded wait; then the PostgreSQL server (``local_postgres``) is
stopped. A lock file in
the Airflow home keeps a second ``ui`` (a second scheduler on the same database) from starting.
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import psutil

from emotion_pipeline.core.errors import StopRequested  # re-exported: its home is core.errors
from emotion_pipeline.local import airflow_home as local_airflow
from emotion_pipeline.local.postgres import LocalPostgres

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
AIRFLOW_GRACE_S = 30  # idle, its components stop in ~25 s on a loaded 2 cores; with tasks running, the
# LocalExecutor waits for them (minutes): those are killed, and the scheduler fails or retries them at next start
REPORT_EVERY_S = 5
PAUSED_BY_UI = "dag-paused-by-ui"  # in the Airflow home while `ui` holds the DAG paused
AIRFLOW_ROLES = ("standalone", "scheduler", "dag-processor", "api-server", "triggerer", "worker", "serve-logs",
                 "task")


def start_ui(source: str, root: str, port: int, airflow_home: Path | None = None) -> int:
    home = (airflow_home or local_airflow.DEFAULT_HOME).resolve()
    home.mkdir(parents=True, exist_ok=True)
    with ui_lock(home, port):
        refuse_taken_port(port)
        signals = StopSignals()
        database = LocalPostgres(home / "postgres")
        standalone = None
        try:
            database.start(atomic=signals.deferred)
            unpause = prepare_airflow(home, database, source, root, port)
            with signals.deferred():  # a started standalone is always one that is stopped
                standalone = subprocess.Popen([sys.executable, "-m", "airflow", "standalone"],
                                              env=os.environ.copy(), start_new_session=True)
            return serve_until_stopped(standalone, home, port, unpause)
        except StopRequested as stop:
            say(f"{stop} received: stopping everything `ui` started")
            return 128 + stop.signum
        except (RuntimeError, subprocess.CalledProcessError) as error:
            say(f"emotion-pipeline ui could not start: {error}")
            return 1
        finally:
            signals.during_shutdown()
            if standalone is not None:
                stop_airflow(standalone)
            database.stop(say=say)
            stop_other_children()
            say("Stopped.")


def prepare_airflow(home: Path, database: LocalPostgres, source: str, root: str, port: int) -> bool:
    """The environment ``airflow standalone`` and its components read, a migrated database, the gpu
    pool and the DAG stored (so it is in the UI at once instead of after the next DAG scan), paused.
    Returns whether to unpause it once the API answers (not when its user had paused it)."""
    os.environ.update({
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://localhost:{port}",
        # Defaults of the trigger form's source/root fields (read when the DAG file is parsed).
        "EMOTION_PIPELINE_SOURCE": source,
        "EMOTION_PIPELINE_ROOT": root,
        # The scheduler's and triggerer's log servers default to 8793 and 8794 on every interface: a
        # second `ui` (another home) or a deployment on this machine would hold them. Free ones instead.
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
    })
    local_airflow.configure(home, executor="LocalExecutor", database_url=database.url(),
                            database_folder=database.folder)
    local_airflow.private_password_file(home)  # 0600 before `airflow standalone` writes the password
    local_airflow.ensure_gpu_pool()
    subprocess.run([sys.executable, "-m", "airflow", "dags", "reserialize"], check=True,
                   stdout=subprocess.DEVNULL)
    return hold_dag_paused(home)


def hold_dag_paused(home: Path) -> bool:
    """Pause the DAG until the API server answers: the scheduler starts first, and a task it started
    before then failed "Connection refused" (a retry for nothing). Returns whether to unpause it then.
    A marker in the home, written before pausing and removed after unpausing, tells a DAG that a `ui`
    stopped or killed in between left paused (unpause it) from one its user paused (it stays so)."""
    marker = home / PAUSED_BY_UI
    left_paused_by_ui = marker.exists()
    marker.touch()
    unpause = should_unpause(local_airflow.set_paused(True), left_paused_by_ui)
    if not unpause:
        marker.unlink()
    return unpause


def should_unpause(was_paused: bool, marker_found: bool) -> bool:
    """Paused with the marker there: an earlier `ui` paused it and did not get to unpause it."""
    return not was_paused or marker_found


def release_dag(home: Path) -> None:
    local_airflow.set_paused(False)
    (home / PAUSED_BY_UI).unlink(missing_ok=True)


def serve_until_stopped(standalone: subprocess.Popen, home: Path, port: int, unpause: bool) -> int:
    url = f"http://localhost:{port}"
    healthy = wait_until_healthy(url, standalone)
    if not healthy and standalone.poll() is None:
        say(f"Airflow's API did not report a healthy database and scheduler on {url}/api/v2/monitor/health "
            "in time (its output is above); still waiting for it (the DAG stays paused until then). "
            "Stop with Ctrl-C.")
        healthy = wait_until_healthy(url, standalone, timeout=float("inf"))
    if healthy:
        if unpause:
            release_dag(home)
        user, password = login(home)
        say(f"\nAirflow UI: {url}/dags/{local_airflow.DAG_ID}   login: {user} / {password}\n"
            "Trigger the DAG with the form (source, root, shard size, detector, ...).\n")
    code = standalone.wait()
    say(f"`airflow standalone` exited by itself with code {code}; its output is above.")
    return code or 1


def wait_until_healthy(url: str, process: subprocess.Popen, timeout: float = 300) -> bool:
    """The API answers and says the metadata database and the scheduler are healthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=2) as response:
                health = json.loads(response.read())
            if all((health.get(part) or {}).get("status") == "healthy" for part in ("metadatabase", "scheduler")):
                return True
        except (OSError, ValueError):
            pass
        time.sleep(1)
    return False


def login(home: Path) -> tuple[str, str]:
    """The admin password ``airflow standalone`` generated (SimpleAuthManager's password file)."""
    passwords = json.loads((home / local_airflow.PASSWORDS_FILE).read_text())
    user = next(iter(passwords))
    return user, passwords[user]


def say(message: str) -> None:
    """Print, and survive a terminal that is gone (SIGHUP): stopping matters more than telling."""
    try:
        print(message, flush=True)
    except OSError:
        pass


class StopSignals:
    """SIGTERM, SIGINT and SIGHUP raise StopRequested in the main thread, except in ``deferred()``: a
    signal that arrived inside Popen would leave a process that nothing records, one inside initdb a
    half-made cluster. There it is raised when the step is done."""

    def __init__(self) -> None:
        self.pending: int | None = None
        self.deferring = False
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, _frame):
        if self.deferring:
            self.pending = signum
            return
        raise StopRequested(signum)

    @contextmanager
    def deferred(self):
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False
        if self.pending is not None:
            raise StopRequested(self.pending)

    def during_shutdown(self) -> None:
        """Once stopping, another Ctrl-C must not cut the cleanup short: it is bounded anyway."""
        def already_stopping(signum, _frame):
            say(f"{signal.Signals(signum).name} received: already stopping (every wait is bounded)")

        for signum in STOP_SIGNALS:
            signal.signal(signum, already_stopping)


@contextmanager
def ui_lock(home: Path, port: int):
    """Held for the life of ``ui``: one scheduler per database. The kernel drops an flock when its
    process dies however it dies, so a killed ``ui`` leaves no stale lock."""
    handle = open(home / "ui.lock", "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise SystemExit(
                f"emotion-pipeline ui is already running on the Airflow home {home} ({holder}). A second "
                "one would start a second scheduler on the same database: use the running one, stop it "
                "first, or give another --airflow-home.") from None
        handle.truncate(0)
        handle.write(f"pid {os.getpid()}, http://localhost:{port}\n")
        handle.flush()
        yield
    finally:
        handle.close()


def refuse_taken_port(port: int) -> None:
    """Before anything starts: Airflow's api-server would fail on a taken port while the rest ran on."""
    holders = port_holders(port)
    if holders or not port_is_free(port):
        named = "; ".join(holders) or "another program (not visible to this user)"
        raise SystemExit(f"port {port} is taken by {named}. Stop it, or start the UI on another port "
                         "with --port.")


def port_holders(port: int) -> list[str]:
    try:
        listeners = {c.pid for c in psutil.net_connections(kind="tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port}
    except psutil.AccessDenied:  # macOS without root
        return []
    return [describe(pid) for pid in sorted(listeners, key=lambda pid: pid or 0)[:3]]


def describe(pid: int | None) -> str:
    if pid is None:
        return "a process of another user"
    try:
        process = psutil.Process(pid)
        return f"pid {pid} ({' '.join(process.cmdline()[:4]) or process.name()})"
    except psutil.Error:
        return f"pid {pid}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("0.0.0.0", 0))
        return probe.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is free
        try:
            probe.bind(("0.0.0.0", port))
            return True
        except OSError:
            return False


def stop_airflow(standalone: subprocess.Popen, grace: float = AIRFLOW_GRACE_S) -> None:
    """SIGINT to standalone, which sends each component one SIGTERM (a second signal, as a Ctrl-C to
    the whole group gives, re-enters the dag-processor's shutdown handler: it then hung past 30 s);
    SIGTERM to any descendant that left the group; SIGKILL to the whole group after ``grace``."""
    group = standalone.pid  # a session leader's pid is its group's id
    escaped = [p for p in descendants(standalone.pid) if process_group(p) != group]
    standalone.send_signal(signal.SIGINT)
    for process in escaped:
        send(process, signal.SIGTERM)
    alive = wait_for_airflow(standalone, group, escaped, grace)
    if alive:
        say(f"Killing what is left of Airflow after {grace:.0f} s: {names(alive)}")
        signal_group(group, signal.SIGKILL)
        for process in alive:
            send(process, signal.SIGKILL)
        wait_for_airflow(standalone, group, escaped, 10, report=False)


def wait_for_airflow(standalone: subprocess.Popen, group: int, escaped: list[psutil.Process],
                     bound: float, report: bool = True) -> list[psutil.Process]:
    """Wait until no process of the group (nor one that left it) runs; say what it waits for."""
    deadline = time.monotonic() + bound
    next_report = time.monotonic()
    while True:
        standalone.poll()  # reap it, or it stays in the group as a zombie
        alive = running([*group_members(group), *escaped])
        if not alive or time.monotonic() >= deadline:
            return alive
        if report and time.monotonic() >= next_report:
            left = deadline - time.monotonic()
            say(f"Stopping Airflow: waiting for {names(alive)} (killed in {left:.0f} s if still running)")
            next_report += REPORT_EVERY_S
        time.sleep(0.5)


def stop_other_children(grace: float = 5) -> None:
    """What else ``ui`` started and still runs: a startup step (``airflow db migrate``, the DAG's
    reserialize) that the signal cut short, possibly inside Popen, where no Popen object was left to
    kill it."""
    left = running(descendants(os.getpid()))
    if not left:
        return
    say(f"Stopping what else `ui` started: {names(left)}")
    for process in left:
        send(process, signal.SIGTERM)
    _, alive = psutil.wait_procs(left, timeout=grace)
    for process in alive:
        send(process, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=5)


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def group_members(group: int) -> list[psutil.Process]:
    members = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == group:
                members.append(process)
        except OSError:
            pass
    return members


def process_group(process: psutil.Process) -> int | None:
    try:
        return os.getpgid(process.pid)
    except OSError:
        return None


def running(processes: list[psutil.Process]) -> list[psutil.Process]:
    alive = {}
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive[process.pid] = process
        except psutil.Error:
            pass
    return list(alive.values())


def names(processes: list[psutil.Process]) -> str:
    """'scheduler, api-server, 3 x task' rather than pids: what a user knows the components by."""
    counts = Counter(component(p) for p in processes)
    return ", ".join(name if n == 1 else f"{n} x {name}" for name, n in counts.most_common())


def component(process: psutil.Process) -> str:
    """Airflow's processes by role; their titles ("airflow worker -- LocalExecutor") carry it."""
    try:
        title = " ".join(process.cmdline())
        name = process.name()
    except psutil.Error:
        return "a process"
    title = title or name  # an exiting process has no command line left
    if "airflow" not in title or name == "postgres":  # a backend's title names its database, airflow
        return name
    return next((role for role in AIRFLOW_ROLES if role in title.replace("_", "-")), "airflow")


def signal_group(group: int, signum: int) -> None:
    try:
        os.killpg(group, signum)
    except (ProcessLookupError, PermissionError):
        pass


def send(process: psutil.Process, signum: int) -> None:
    try:
        process.send_signal(signum)
    except psutil.Error:
        pass
