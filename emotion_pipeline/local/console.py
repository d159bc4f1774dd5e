"""What ``emotion-pipeline run`` shows a person: one line per task state change, a progress bar while a
shard stage works, and (run.py) a summary naming each failed task's error. Everything else the
run writes (Airflow's scheduling loop, task logs, TensorFlow's C++ messages) goes to a log file whose
path is printed; ``--verbose`` keeps it all on the terminal instead.

Stopping: Ctrl-C and SIGTERM are blocked in every thread and taken by a thread of ours (``sigwait``).
Two things in Airflow's in-process task runner would otherwise keep a run going: during a task it
replaces SIGTERM's handler with one that only calls ``on_kill``, and it turns a KeyboardInterrupt into
a failed try that ``dag.test`` retries. Our thread interrupts the main thread; once the runner has
recorded the task as failed, the task listener below lets the interruption out of ``dag.test``. Every
output is written whole or not at all (temp file and rename), so a stopped run leaves nothing partial.
"""
from __future__ import annotations

import _thread
import os
import signal
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from emotion_pipeline.core.progress import eta, watch

STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
MAX_ERROR_LINE = 160  # a failed task's first error line, cut to stay on a wide terminal's line


def block_stop_signals() -> None:
    """Block Ctrl-C and SIGTERM in this thread and in every thread started from now on: call it
    before anything starts threads (TensorFlow, Airflow), so that only RunConsole's thread takes them."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def task_label(task_id: str, map_index: int) -> str:
    return f"{task_id}[{map_index}]" if map_index is not None and map_index >= 0 else task_id


def error_text(error: Any) -> str:
    """``Type: message`` (an AirflowFailException from fail_fast already starts with the type)."""
    if error is None:
        return "no error recorded (see the log)"
    if isinstance(error, BaseException):
        name = type(error).__name__
        text = str(error).strip()
        return text if name == "AirflowFailException" and text else f"{name}: {text}" if text else name
    return str(error)


class RunConsole:
    """The terminal of one run (a context manager); ``errors`` holds each failed task's last error."""

    def __init__(self, log_path: Path, verbose: bool = False) -> None:
        self.log_path, self.verbose = log_path, verbose
        self.errors: dict[tuple[str, int], str] = {}
        self.stopping: str | None = None  # the signal's name once one came
        self._lock = threading.RLock()
        self._running = ""  # the line of the task running now (a bar is drawn after it)
        self._started = 0.0
        self._drawn = 0.0

    # -- setup ------------------------------------------------------------------------------------
    def __enter__(self) -> RunConsole:
        block_stop_signals()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # what interrupt_main raises
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = (os.dup(1), os.dup(2))
        self.terminal = open(os.dup(1), "w", buffering=1, errors="replace")
        self.tty = self.terminal.isatty()
        if not self.verbose:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(log_fd, 1)  # at the descriptor: C++ logs and child processes follow too
            os.dup2(log_fd, 2)
            os.close(log_fd)
        threading.Thread(target=self._take_signals, name="stop-signals", daemon=True).start()
        self._unwatch = watch(self._progress)
        self._listener = None
        return self

    def follow_tasks(self) -> None:
        """Hear every task state change (call it once Airflow is configured: importing Airflow reads
        its configuration)."""
        from airflow.sdk.listener import get_listener_manager

        self._listener = _task_listener(self)
        get_listener_manager().add_listener(self._listener)

    def __exit__(self, *exc) -> None:
        if self._listener is not None:
            from airflow.sdk.listener import get_listener_manager

            get_listener_manager().pm.unregister(self._listener)
        self._unwatch()
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in zip((1, 2), self._saved):
            os.dup2(saved, fd)
            os.close(saved)
        self.terminal.close()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    # -- output -----------------------------------------------------------------------------------
    def say(self, text: str) -> None:
        """A line of its own (it ends a bar being drawn)."""
        self._write(text, final=True)

    def _write(self, text: str, final: bool) -> None:
        with self._lock:
            if self.tty:  # rewrite the current line: the task's line, then its bar, then its end state
                self.terminal.write("\r\033[K" + text + ("\n" if final else ""))
            else:
                self.terminal.write(text + "\n")
            self.terminal.flush()

    def _stamp(self, label: str, what: str) -> str:
        return f"{datetime.now():%H:%M:%S}  {label:<22} {what}"

    # -- task state changes (called from the task listener, in the main thread) --------------------
    def task_started(self, ti) -> None:
        tries = f" (try {ti.try_number} of {ti.max_tries + 1})" if ti.try_number > 1 else ""
        self._started = self._drawn = time.monotonic()
        self._running = self._stamp(task_label(ti.task_id, ti.map_index), "running" + tries)
        self._write(self._running, final=not self.tty)

    def task_ended(self, ti, state: str, error: Any = None) -> None:
        seconds = time.monotonic() - self._started
        self._running = ""
        label = task_label(ti.task_id, ti.map_index)
        if state in ("failed", "up_for_retry"):
            text = error_text(error)
            self.errors[(ti.task_id, ti.map_index)] = text
            first = text.splitlines()[0] if text else ""
            first = first if len(first) <= MAX_ERROR_LINE else first[:MAX_ERROR_LINE - 3] + "..."
            what = ("failed, will retry" if state == "up_for_retry" else "failed") + f"  {seconds:.1f} s: {first}"
        else:
            what = f"{state}  {seconds:.1f} s"
        self._write(self._stamp(label, what), final=True)

    def _progress(self, label: str, done: int, total: int, rate: float) -> None:
        """A bar after the running task's line (a terminal), or a line every 10 s (a pipe or file)."""
        now = time.monotonic()
        if now - self._drawn < (0.2 if self.tty else 10.0) and done < total:
            return
        if not self.tty and done >= total:
            return  # the task's end line follows at once
        self._drawn = now
        filled = int(20 * done / max(total, 1))
        bar = (f"[{'#' * filled}{'.' * (20 - filled)}] {done}/{total}  {rate:.1f} photos/s, "
               f"{eta(done, total, rate)} left")
        if self.tty and self._running:
            self._write(f"{self._running}  {bar}", final=False)
        else:
            self._write(f"{'':10}{label}: {bar}", final=True)

    # -- stopping ---------------------------------------------------------------------------------
    def _take_signals(self) -> None:
        while True:
            number = signal.sigwait(STOP_SIGNALS)
            name = signal.Signals(number).name
            if self.stopping:  # the second one: stop now (a later run sweeps any temp file left)
                self.say(f"{name} again: stopped at once")
                os._exit(128 + number)
            self.stopping = name
            self.say(f"{name}: stopping the run ({name} again to stop at once)")
            _thread.interrupt_main()


def _task_listener(console: RunConsole):
    """An Airflow task listener: the in-process task runner calls it on every state change."""
    from airflow.listeners import hookimpl

    class TaskStates:
        @hookimpl
        def on_task_instance_running(self, previous_state, task_instance) -> None:
            console.task_started(task_instance)

        @hookimpl
        def on_task_instance_success(self, previous_state, task_instance) -> None:
            console.task_ended(task_instance, "success")

        @hookimpl
        def on_task_instance_skipped(self, previous_state, task_instance) -> None:
            console.task_ended(task_instance, "skipped")

        @hookimpl
        def on_task_instance_failed(self, previous_state, task_instance, error) -> None:
            state = str(getattr(task_instance, "state", "") or "")
            console.task_ended(task_instance, "up_for_retry" if state.endswith("up_for_retry") else "failed", error)
            if console.stopping:
                # The runner caught the interruption as a task error; out of dag.test with it (its
                # finalize lets a BaseException from a listener through).
                raise KeyboardInterrupt(console.stopping)

    return TaskStates()
