"""Long work shows progress and keeps every core busy without unbounded memory."""
from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import Executor
from typing import Callable, Iterable, Iterator

log = logging.getLogger(__name__)


class Progress:
    """Logs ``done/total`` with a rate after the first step (an early rate), then at most every ``every``
    seconds and at the end: long shards show progress."""

    def __init__(self, label: str, total: int, every: float = 10.0) -> None:
        self.label, self.total, self.every = label, total, every
        self.start = self.last = time.monotonic()
        self.done = 0

    def step(self, n: int = 1) -> None:
        first = self.done == 0
        self.done += n
        now = time.monotonic()
        if first or now - self.last >= self.every or self.done == self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            log.info("%s: %d/%d (%.1f/s)", self.label, self.done, self.total, rate)


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
