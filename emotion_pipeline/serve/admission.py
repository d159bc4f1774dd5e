"""Admission of predictions in one API worker process: one runs at a time (TensorFlow uses the cores),
at most ``max_waiting`` wait their turn, the rest are refused at once with a time to retry; a
prediction whose client has left is dropped, while it waits or between the steps of its work."""
from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.types import Receive

from emotion_pipeline.core.errors import Busy, ClientGone  # Busy re-exported: its home is core.errors

log = logging.getLogger(__name__)


async def until_client_leaves(receive: Receive, left: threading.Event) -> None:
    """Sets ``left`` once the client has closed its connection. The request body has been read, so
    the next ASGI message is ``http.disconnect``, and only when the client goes."""
    while (await receive())["type"] != "http.disconnect":
        pass
    left.set()


class PredictionQueue:
    def __init__(self, max_waiting: int) -> None:
        self.max_waiting = max_waiting
        self._turn = asyncio.Lock()
        self._admitted = 0  # running + waiting
        self._seconds_per_prediction = 2.0  # a moving average, for Retry-After

    def retry_after(self) -> int:
        return max(1, math.ceil(self._admitted * self._seconds_per_prediction))

    async def run(self, work: Callable[[threading.Event], Any], receive: Receive) -> Any:
        """``work(left)`` in a thread once it is this request's turn; ``Busy`` when the queue is full,
        ``ClientGone`` when the client left first (``work`` sees ``left`` set and stops too)."""
        if self._admitted > self.max_waiting:
            raise Busy(self.retry_after())
        self._admitted += 1
        left = threading.Event()
        watcher = asyncio.ensure_future(until_client_leaves(receive, left))
        try:
            return await self._in_turn(work, left, watcher)
        finally:
            watcher.cancel()
            self._admitted -= 1

    async def _in_turn(self, work, left: threading.Event, watcher: asyncio.Future) -> Any:
        waiting_since = time.monotonic()
        acquire = asyncio.ensure_future(self._turn.acquire())
        await asyncio.wait({acquire, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not acquire.done():  # the client left while waiting: its place goes to the next one
            acquire.cancel()
            raise ClientGone(f"left after waiting {time.monotonic() - waiting_since:.1f} s")
        try:
            if left.is_set():
                raise ClientGone("left before its turn")
            started = time.monotonic()
            # A cancelled request still waits for its thread here (anyio shields it): the turn is
            # only handed on once TensorFlow is free.
            result = await run_in_threadpool(work, left)
            self._seconds_per_prediction = 0.8 * self._seconds_per_prediction + 0.2 * (time.monotonic() - started)
            return result
        finally:
            self._turn.release()
