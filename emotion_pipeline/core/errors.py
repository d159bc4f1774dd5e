"""Every exception class of the package, in one place (the modules that raise them re-export them,
so ``from emotion_pipeline.core.storage import StorageError`` keeps working).

Under Airflow the errors no retry can fix (``orchestration.airflow_adapter.PERMANENT_ERRORS``) fail
their task at once; any other error is retried with backoff. The per-photo boundary
(``labelling.photo_boundary``) turns an ``ImageError`` into that photo's status and lets the errors
of the environment (storage, weights, settings) fail the task.
"""
from __future__ import annotations

import signal

# -- the pipeline's settings and inputs -------------------------------------------------------------


class ConfigError(ValueError):
    """A setting out of its bounds or choices: the run cannot start until it is fixed."""


class MissingUpstream(RuntimeError):
    """A stage's input is not there: the upstream stage that writes it has not run (or not on this
    shard, or not with these settings). The message names the stage to run first."""


class CaptionError(ValueError):
    """A captions file or lexicon that cannot be read as one (says which and why)."""


class InvalidDecision(ValueError):
    """A reviewer's decision that cannot be recorded (an unknown label, no reviewer name, a face
    index or time that is not one): the message says which field and what it accepts."""


class ImageError(Exception):
    """One photo cannot be read or decoded; ``status`` is what the tables record for it
    (``empty``, ``corrupt``, ``unsupported``, ``too_large``, ``missing``, ...: see ``labelling.images``)."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


class MissingWeightsError(RuntimeError):
    """A model's weight file (DeepFace's, ResNet50's) is not on this machine and could not be downloaded."""


# -- storage ----------------------------------------------------------------------------------------


class StorageError(RuntimeError):
    """A storage operation failed in a way the user has to fix (permissions, missing bucket, ...)."""


class NotARegularFile(OSError):
    """Raised instead of opening a FIFO, socket or device as a photo."""


class BucketNotFound(StorageError):
    """The bucket does not exist: no retry can help."""


class AccessDenied(StorageError):
    """The credentials may not do this (403): no retry can help."""


class LeaseTimeout(StorageError):
    """Another run held the root's lease for longer than we were willing to wait."""


class LeaseLost(StorageError):
    """Our lease was taken over, or could not be renewed in time: the work it protected was stopped."""


# -- serving ----------------------------------------------------------------------------------------


class BadRequest(Exception):
    """A request the API refuses, with the HTTP ``status`` to answer (400, 408, 413, ...)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Busy(Exception):
    """The queue is full: retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"busy: retry after {retry_after} s")
        self.retry_after = retry_after


class ClientGone(Exception):
    """The client of a prediction left: the work still to do is dropped."""


class StoreMissing(Exception):
    """The storage root, or the MLflow store under it, does not exist (nothing is created)."""


class StoreMoved(RuntimeError):
    """A local root was moved or restored elsewhere and its MLflow store could not be pointed at it."""


# -- the local UI -----------------------------------------------------------------------------------


class StopRequested(Exception):
    """A stop signal (SIGTERM, SIGINT, SIGHUP) arrived: ``emotion-pipeline ui`` stops what it started."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

