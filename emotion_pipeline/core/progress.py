"""Long work shows progress and keeps every core busy without unbounded memory."""
from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from contextlib import contextmanager

log = logging.getLogger(__name__)

# Called on every step with (label, done, total, photos per second): `emotion-pipeline run` draws its
# progress bar from them (run_console.py); in Airflow's workers nobody watches and the log line does.
Watcher = Callable[[str, int, int, float], None]
_watchers: list[Watcher] = []


def watch(watcher: Watcher) -> Callable[[], None]:
    """Call ``watcher`` on every step of every Progress in this process; returns the way to stop."""
    _watchers.append(watcher)
    return lambda: _watchers.remove(watcher)


SECONDS_PER_MINUTE = MINUTES_PER_HOUR = 60


def eta(done: int, total: int, rate: float) -> str:
    """Time left at this rate, as m:ss (h:mm:ss past an hour)."""
    seconds = round((total - done) / rate) if rate > 0 else 0
    minutes, seconds = divmod(seconds, SECONDS_PER_MINUTE)
    if minutes < MINUTES_PER_HOUR:
        return f"{minutes}:{seconds:02d}"
    hours, minutes = divmod(minutes, MINUTES_PER_HOUR)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


class Progress:
    """Logs ``done/total`` with a rate and the time left after the first step (an early rate), then
    at most every ``every`` seconds and at the end: long shards show progress."""

    def __init__(self, label: str, total: int, every: float = 10.0) -> None:
        self.label, self.total, self.every = label, total, every
        self.start = self.last = time.monotonic()
        self.done = 0

    def step(self, n: int = 1) -> None:
        first = self.done == 0
        self.done += n
        now = time.monotonic()
        rate = self.done / max(now - self.start, 1e-9)
        for watcher in list(_watchers):
            watcher(self.label, self.done, self.total, rate)
        if first or now - self.last >= self.every or self.done == self.total:
            self.last = now
            log.info("%s: %d/%d (%.1f/s, %s left)", self.label, self.done, self.total, rate,
                     eta(self.done, self.total, rate))


def in_order_ahead(pool: Executor, fn: Callable, items: Iterable, ahead: int) -> Iterator:
    """``fn(item)`` for every item, in order, computed by ``pool`` at most ``ahead`` items in advance:
    the workers stay busy while the caller consumes, and memory stays bounded whatever the shard size."""
    running: deque = deque()
    for item in items:
        running.append(pool.submit(fn, item))
        if len(running) > ahead:
            yield running.popleft().result()
    while running:
        yield running.popleft().result()


@contextmanager
def timed(label: str) -> Iterator[None]:
    """Logs how long the block took: the parts of a stage that is one long step (evaluate)."""
    start = time.monotonic()
    yield
    log.info("%s: %.1f s", label, time.monotonic() - start)
