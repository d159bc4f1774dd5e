"""The per-photo error boundary: whatever one photo makes a step raise costs that photo only.

    boundary = PhotoBoundary("annotate")
    row = boundary.run(row, lambda: detect(row))   # row, or row with status and error
    ...
    boundary.check()                                # after the shard: fail loudly on a systematic error

Bad input is ``images.ImageError`` and keeps its status (``corrupt``, ``too_large``, ...). Any other
exception a step raises on one photo (a decoder's ``ValueError`` on a 1x4000 PNG, a model's resize
that asserts on a face one pixel wide) becomes status ``failed`` with the step, the exception's type
and its message: a shard is never failed on every retry by one photo.

Two kinds of error still fail the task, because every photo would meet them alike and a shard of
``failed`` rows would hide them: the environment's (``PASSED_THROUGH``: the root cannot be written,
a weight file is missing, the lease is lost, a setting is invalid), raised as they come; and a step
that raised on *every* photo it ran on, at least ``SYSTEMATIC_MIN`` of them, with one exception
type (a bug, a broken install): ``check`` re-raises the first, with a note saying so.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from emotion_pipeline.core.errors import ConfigError, ImageError, MissingWeightsError, StorageError

log = logging.getLogger(__name__)

FAILED = "failed"  # the status of a photo a step raised an unexpected error on
PASSED_THROUGH = (StorageError, MissingWeightsError, ConfigError, MemoryError)
SYSTEMATIC_MIN = 3  # fewer photos all failing alike may just be that many bad photos


class PhotoBoundary:
    """Counts, for one step over one shard, the photos it got through and the errors it raised.

    Safe to share between the threads of a shard (the counts are locked)."""

    def __init__(self, step: str) -> None:
        self.step = step
        self.passed = 0
        self.errors: list[Exception] = []  # the unexpected ones, in the order they came
        self._lock = threading.Lock()

    def run(self, record: dict[str, Any], work: Callable[[], Any]) -> Any:
        """``work()``'s result; when it raises for this photo, ``record`` with the status and error."""
        try:
            result = work()
        except ImageError as err:
            return {**record, "status": err.status, "error": str(err)}
        except PASSED_THROUGH:
            raise
        except Exception as err:  # noqa: BLE001 (the boundary's purpose; check() catches bugs)
            return self.failed(record, err)
        self.count_passed()
        return result

    def failed(self, record: dict[str, Any], err: Exception) -> dict[str, Any]:
        """``record`` marked ``failed`` by ``err`` (counted for ``check``)."""
        with self._lock:
            self.errors.append(err)
        log.warning("%s failed on %s: %s: %s", self.step, record.get("source_key") or record.get("key"),
                    type(err).__name__, err)
        return {**record, "status": FAILED, "error": f"{self.step}: {type(err).__name__}: {err}"}

    def count_passed(self, photos: int = 1) -> None:
        with self._lock:
            self.passed += photos

    def check(self) -> None:
        """Re-raise the first error when the step failed on every photo it ran on, at least
        ``SYSTEMATIC_MIN`` of them, with one exception type: a bug or a broken install, not bad photos."""
        kinds = {type(err) for err in self.errors}
        if self.passed or len(self.errors) < SYSTEMATIC_MIN or len(kinds) != 1:
            return
        first = self.errors[0]
        first.add_note(f"{self.step} failed on all {len(self.errors)} photos it ran on with "
                       f"{type(first).__name__}: a bug or a broken install, not bad photos (photo_boundary)")
        raise first
