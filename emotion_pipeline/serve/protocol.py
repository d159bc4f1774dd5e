"""uvicorn's h11 protocol with a deadline on request headers (``emotion-pipeline serve`` passes it
as ``--http``).

uvicorn times out a keep-alive connection only after a response: a connection that never sends a
request, or sends its headers a byte at a time, is otherwise held forever, and a thousand of them
fill the worker's ``--limit-concurrency`` (every later client gets 503). Here a connection whose
next request has not sent all its headers ``EMOTION_PIPELINE_HEADER_TIMEOUT`` seconds (10) after
it opened, or after the previous response, is closed. h11 (not httptools) also bounds the headers'
size (``--h11-max-incomplete-event-size``): httptools takes a 50 MB header.
"""
from __future__ import annotations

import asyncio
import os

from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT = float(os.environ.get("EMOTION_PIPELINE_HEADER_TIMEOUT", "10"))


class HeaderDeadlineProtocol(H11Protocol):
    _header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
        super().connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
        self._header_deadline = self.loop.call_later(HEADER_TIMEOUT, self._close_if_no_request)

    def _close_if_no_request(self) -> None:
        """A request whose headers arrived has a cycle that is not complete: it is left alone (its
        body has the API's own read timeout)."""
        in_request = self.cycle is not None and not self.cycle.response_complete
        if not in_request and not self.transport.is_closing():
            self.transport.close()
