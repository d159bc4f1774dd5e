"""One small interface over a local folder and ``gs://bucket/prefix``.

Every stage reads and writes through a ``Storage`` rooted at a URI, using relative POSIX keys
(``processed/ab12.jpg``). This is the only module that knows about GCS. Writes are atomic: locally
a temp file in the same folder is renamed over the target; on GCS an object upload is atomic by itself.
Every GCS call, uploads included (our writes are whole-object and idempotent), is retried with
exponential backoff on 429, 5xx and dropped connections; 403 and a missing bucket fail at once.
"""
from __future__ import annotations

import errno
import fcntl
import functools
import hashlib
import io
import json
import logging
import os
import signal
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

from emotion_pipeline.core.errors import (  # re-exported: their home is core.errors
    AccessDenied,
    BucketNotFound,
    LeaseLost,
    LeaseTimeout,
    NotARegularFile,
    StorageError,
)

GCS_SCHEME = "gs://"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # relative to the storage root, POSIX separators
    size: int
    version: str  # changes whenever the content may have changed (mtime / GCS generation)
    problem: str = ""  # why the entry cannot be read as a file: one of ENTRY_PROBLEMS, else ""
    error: str = ""  # the OS's words for the problem


# What a listed entry can be instead of a readable file. Listing never raises on one entry: such an
# entry is listed with its problem, and is never opened (a FIFO would block the reader forever).
ENTRY_PROBLEMS = {
    "broken_link": "a symbolic link to nothing (or a link loop)",
    "not_a_file": "not a regular file (a named pipe, a socket, a device)",
    "unreadable": "the file exists but this process may not read it",
    "unreadable_folder": "a folder this process may not list",
}


def entry_problem(err: OSError) -> str:
    """The ``ENTRY_PROBLEMS`` key for an OS error met reading or stat-ing one entry."""
    if isinstance(err, NotARegularFile):
        return "not_a_file"
    if err.errno in (errno.ENOENT, errno.ELOOP):
        return "broken_link"
    return "unreadable"


def check_key(key: str) -> str:
    """Reject keys that could escape the storage root (absolute paths, ``..`` segments). A backslash
    is an ordinary character of a POSIX file name (``a\\b.jpg`` stays inside the root)."""
    path = PurePosixPath(key)
    if not key or path.is_absolute() or ".." in path.parts or "\x00" in key:
        raise ValueError(f"invalid storage key {key!r}: keys are relative and stay inside the root")
    return path.as_posix()


class Storage(Protocol):
    uri: str

    def read_bytes(self, key: str) -> bytes: ...
    def write_bytes(self, key: str, data: bytes, durable: bool = True) -> None: ...
    def make_durable(self) -> None: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]: ...
    def delete(self, key: str) -> None: ...
    def uri_for(self, key: str) -> str: ...
    def lease(self, name: str, wait: float = ...): ...
    def sweep_temp_files(self, prefix: str) -> int: ...


def _lease_owner() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}


_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    """This process's umask, read without changing it (os.umask can only be read by setting it)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def _say_waiting(where: str, first: bool) -> None:
    if first:
        log.warning("another run holds %s; waiting for it to finish", where)


class LocalStorage:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def uri_for(self, key: str) -> str:
        return str(self._path(key))

    def read_bytes(self, key: str) -> bytes:
        """The file's bytes. A FIFO, socket or device raises ``NotARegularFile`` without blocking:
        the non-blocking open returns at once even for a pipe nobody writes to."""
        path = self._path(key)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise NotARegularFile(errno.EINVAL, "not a regular file", str(path))
            with os.fdopen(fd, "rb", closefd=False) as handle:
                return handle.read()
        finally:
            os.close(fd)

    def write_bytes(self, key: str, data: bytes, durable: bool = True) -> None:
        """Atomic (a temp file renamed). ``durable=False`` skips the per-file fsync for the many
        small files of a shard; the stage calls ``make_durable`` once before its done marker."""
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # Same folder, so the rename is atomic; unique name, so concurrent writers never share it.
            # The writer's host and pid in the name: a later run can tell a dead writer's leftover.
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.{_HOST}-{os.getpid()}.",
                                        suffix=".tmp")
        except OSError as err:
            raise StorageError(f"cannot write {target}: {err.strerror or err}") from err
        try:
            # mkstemp makes the file 0600; an output gets the mode any file of this process would
            # (0644 under the usual umask), so that another user (the host reading what Airflow's
            # uid 50000 wrote in compose) can read it.
            os.fchmod(fd, 0o666 & ~_umask())
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                if durable:
                    handle.flush()
                    os.fsync(handle.fileno())
            os.replace(tmp, target)
        except OSError as err:
            Path(tmp).unlink(missing_ok=True)
            raise StorageError(f"cannot write {target}: {err.strerror or err}") from err
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def make_durable(self) -> None:
        """Everything written so far survives a power cut: one sync instead of one fsync per file."""
        os.sync()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def sweep_temp_files(self, prefix: str) -> int:
        """Delete the temp files that writers on this host left when they were killed mid-write."""
        base = self._path(prefix)
        swept = 0
        for tmp in base.glob(f".*.{_HOST}-*.tmp") if base.is_dir() else ():
            pid = int(tmp.name.rsplit(f".{_HOST}-", 1)[1].split(".", 1)[0])
            if not _alive(pid):
                tmp.unlink(missing_ok=True)
                swept += 1
        return swept

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    @contextmanager
    def lease(self, name: str, wait: float = 6 * 3600, poll: float = 1.0):
        """Hold ``locks/<name>`` exclusively (one run per root at a time). A ``flock``: the kernel
        releases it when its holder dies, even by ``kill -9``, so a crash never leaves it stale."""
        path = self._path(f"locks/{check_key(name)}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(path, "a+")
        except OSError as err:
            raise StorageError(f"cannot create the lock file {path}: {err.strerror or err}") from err
        with handle:
            deadline = time.monotonic() + wait
            tries = 0
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    tries += 1
                    _say_waiting(str(path), first=tries == 1)
                    if time.monotonic() > deadline:
                        handle.seek(0)
                        raise LeaseTimeout(f"{path} is still held by {handle.read().strip() or 'another run'}")
                    time.sleep(poll)
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps(_lease_owner()))
            handle.flush()
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every entry under ``prefix``, sorted; never raises on one entry (see ``ENTRY_PROBLEMS``)."""
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir():
            return
        unlistable: list[OSError] = []
        for dirpath, dirnames, filenames in os.walk(base, onerror=unlistable.append):
            yield from (self._folder_problem(err) for err in unlistable)
            unlistable.clear()
            dirnames.sort()
            for name in sorted(filenames):
                if name.startswith(".") and name.endswith(".tmp"):
                    continue  # another writer's in-flight temp file
                yield self._entry(Path(dirpath) / name)
        yield from (self._folder_problem(err) for err in unlistable)

    def _entry(self, path: Path) -> ObjectInfo:
        key = path.relative_to(self.root).as_posix()
        try:
            info = path.stat()  # follows a symbolic link: a link to a photo is that photo
        except OSError as err:
            try:
                version = str(path.lstat().st_mtime_ns)
            except OSError:
                version = ""
            return ObjectInfo(key, 0, version, entry_problem(err), err.strerror or str(err))
        if not stat.S_ISREG(info.st_mode):
            return ObjectInfo(key, 0, str(info.st_mtime_ns), "not_a_file", _file_type(info.st_mode))
        return ObjectInfo(key, info.st_size, str(info.st_mtime_ns))

    def _folder_problem(self, err: OSError) -> ObjectInfo:
        key = Path(err.filename).relative_to(self.root).as_posix()
        return ObjectInfo(key, 0, "", "unreadable_folder", err.strerror or str(err))


def _file_type(mode: int) -> str:
    kinds = {stat.S_ISFIFO: "a named pipe", stat.S_ISSOCK: "a socket", stat.S_ISCHR: "a character device",
             stat.S_ISBLK: "a block device", stat.S_ISDIR: "a folder"}
    return next((f"{name}, not a regular file" for test, name in kinds.items() if test(mode)),
                "not a regular file")


class GCSStorage:
    """``gs://bucket/prefix`` through the google-cloud-storage client.

    Credentials come from the standard Google chain (ADC, ``GOOGLE_APPLICATION_CREDENTIALS``). When
    ``STORAGE_EMULATOR_HOST`` is set (tests, local emulators) the client talks to it anonymously.
    """

    def __init__(self, uri: str, client=None) -> None:
        bucket, _, prefix = uri[len(GCS_SCHEME):].partition("/")
        if not bucket:
            raise ValueError(f"invalid GCS URI {uri!r}: expected gs://bucket[/prefix]")
        self.prefix = prefix.strip("/")
        self.uri = f"{GCS_SCHEME}{bucket}" + (f"/{self.prefix}" if self.prefix else "")
        self._client = client or _gcs_client()
        self._bucket = self._client.bucket(bucket)

    def _name(self, key: str) -> str:
        key = check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _listed_name(self, key: str) -> str:
        """A key that came from ``list`` may hold ``..`` or ``//`` (legal in object names, meaningless to
        GCS): read it as it is. Writes always go through ``check_key``."""
        if not key or "\x00" in key:
            raise ValueError(f"invalid object key {key!r}")
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri_for(self, key: str) -> str:
        return f"{GCS_SCHEME}{self._bucket.name}/{self._listed_name(key)}"

    def read_bytes(self, key: str) -> bytes:
        from google.api_core import exceptions

        try:
            with _service_errors(self.uri_for(key)):
                return self._bucket.blob(self._listed_name(key)).download_as_bytes(retry=_retry())
        except exceptions.NotFound as err:
            raise FileNotFoundError(self.uri_for(key)) from err

    def write_bytes(self, key: str, data: bytes, durable: bool = True) -> None:
        from google.api_core import exceptions

        try:
            with _service_errors(self.uri_for(key)):
                # Without a generation precondition the client would not retry an upload at all.
                self._bucket.blob(self._name(key)).upload_from_file(io.BytesIO(data), size=len(data),
                                                                    retry=_retry())
        except exceptions.NotFound as err:
            raise BucketNotFound(f"bucket {self._bucket.name!r} does not exist: create it first") from err

    def make_durable(self) -> None:
        """An upload is durable once it returns."""

    def exists(self, key: str) -> bool:
        return self._bucket.blob(self._name(key)).exists(retry=_retry())

    def delete(self, key: str) -> None:
        from google.api_core import exceptions

        try:
            self._bucket.blob(self._name(key)).delete(retry=_retry())
        except exceptions.NotFound:
            pass

    def sweep_temp_files(self, prefix: str) -> int:
        return 0  # uploads are atomic: a killed writer leaves nothing behind

    @contextmanager
    def lease(self, name: str, wait: float = 6 * 3600, poll: float = 2.0, stale_after: float = 90.0):
        """Hold ``locks/<name>`` exclusively: an object created only if absent (generation 0), renewed
        every ``stale_after / 4`` s with a generation precondition.

        A waiter takes over a lease whose generation it has seen unchanged for ``stale_after`` seconds
        of its own monotonic clock: no clock of one machine is ever compared with another's (nor with
        GCS's timestamps). The holder counts its lease lost when a renewal finds another generation
        (taken over) or has not succeeded for ``stale_after / 2`` s (so it stops well before a waiter
        may take over): the protected block is interrupted and ``LeaseLost`` raised."""
        blob = self._bucket.blob(self._name(f"locks/{check_key(name)}"))
        where = self.uri_for(f"locks/{name}")
        renewer = _LeaseRenewer(blob, where, self._acquire(blob, where, wait, poll, stale_after), stale_after)
        renewer.start()
        try:
            yield
        except KeyboardInterrupt:
            if renewer.lost:
                raise LeaseLost(renewer.lost[0]) from None
            raise
        finally:
            renewer.stop()
        if renewer.lost:  # lost while the block was finishing: its results must not count
            raise LeaseLost(renewer.lost[0])

    def _acquire(self, blob, where: str, wait: float, poll: float, stale_after: float) -> int:
        """Create the lease object, only if absent (generation 0), or take it over once its holder
        stopped renewing it (``LeaseWatch``); wait ``poll`` s between tries, ``wait`` s at most.
        Returns its generation."""
        from google.api_core import exceptions

        deadline = time.monotonic() + wait
        watch = LeaseWatch(stale_after)
        tries = 0
        while True:
            tries += 1
            try:
                blob.upload_from_string(json.dumps(_lease_owner()), if_generation_match=0, retry=_retry())
                return blob.generation
            except exceptions.PreconditionFailed:
                held = self._held_generation(blob)
                if watch.stale(held):  # its holder stopped renewing it
                    taken = _take_over(blob, held, where, stale_after)
                    if taken is not None:
                        return taken
                _say_waiting(where, first=tries == 1)
                if time.monotonic() > deadline:
                    raise LeaseTimeout(f"{where} is still held by another run") from None
                time.sleep(poll)
            except exceptions.NotFound as err:
                raise BucketNotFound(f"bucket {self._bucket.name!r} does not exist: create it first") from err
            except exceptions.Forbidden as err:
                raise AccessDenied(_forbidden_hint(self.uri, err)) from err

    @staticmethod
    def _held_generation(blob) -> int | None:
        """The lease object's current generation (None when it was released meanwhile)."""
        from google.api_core import exceptions

        try:
            blob.reload(retry=_retry())
        except exceptions.NotFound:
            return None
        return blob.generation

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        from google.api_core import exceptions

        full = self._name(prefix) if prefix else self.prefix
        full = f"{full}/" if full else ""
        strip = len(f"{self.prefix}/") if self.prefix else 0
        try:
            for blob in self._client.list_blobs(self._bucket, prefix=full, retry=_retry()):
                if blob.name.endswith("/"):
                    continue  # "folder" placeholder objects made by some tools
                yield ObjectInfo(key=blob.name[strip:], size=blob.size or 0, version=str(blob.generation))
        except exceptions.NotFound as err:
            raise BucketNotFound(f"bucket {self._bucket.name!r} does not exist: create it first") from err
        except exceptions.Forbidden as err:
            raise AccessDenied(_forbidden_hint(self.uri, err)) from err


def _take_over(blob, held: int | None, where: str, stale_after: float) -> int | None:
    """The lease object rewritten over generation ``held`` (a holder that stopped renewing it);
    returns its new generation, or None when another waiter took it first."""
    from google.api_core import exceptions

    try:
        blob.upload_from_string(json.dumps(_lease_owner()), if_generation_match=held or 0, retry=_retry())
    except exceptions.PreconditionFailed:
        return None
    log.warning("took over %s: not renewed for %.0f s", where, stale_after)
    return blob.generation


class _LeaseRenewer:
    """Renews a held GCS lease (object ``blob`` at ``generation``) every ``stale_after / 4`` s in a
    thread, with a generation precondition. The lease is lost when a renewal finds another generation
    (taken over) or has not succeeded for ``stale_after / 2`` s (so the holder stops well before a
    waiter may take over): ``lost`` says why, and a holder that is the main thread gets a SIGINT,
    which also ends a blocking call (KeyboardInterrupt, turned into ``LeaseLost`` by ``lease``)."""

    def __init__(self, blob, where: str, generation: int, stale_after: float) -> None:
        self.blob, self.where, self.generation, self.stale_after = blob, where, generation, stale_after
        self.lost: list[str] = []
        self._stop = threading.Event()
        self._holder = threading.current_thread()
        self._thread = threading.Thread(target=self._renew, daemon=True, name=f"lease-{where.rpartition('/')[2]}")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing, and release the lease unless it was lost."""
        from google.api_core import exceptions

        self._stop.set()
        self._thread.join()
        if not self.lost:
            try:
                self.blob.delete(if_generation_match=self.generation, retry=_retry())
            except (exceptions.NotFound, exceptions.PreconditionFailed):
                pass

    def _renew(self) -> None:
        from google.api_core import exceptions

        beat = self.stale_after / 4
        renewed = time.monotonic()
        while not self._stop.wait(beat):
            try:
                self.blob.upload_from_string(json.dumps(_lease_owner()), if_generation_match=self.generation,
                                             retry=_retry().with_timeout(beat), timeout=beat)
                self.generation, renewed = self.blob.generation, time.monotonic()
                continue
            except exceptions.PreconditionFailed:
                self.lost.append(f"{self.where} was taken over by another run")
            except Exception as err:  # noqa: BLE001 - a missed renewal is tried again at the next beat
                if time.monotonic() - renewed <= self.stale_after / 2:
                    continue
                self.lost.append(f"{self.where} could not be renewed for {self.stale_after / 2:.0f} s ({err})")
            log.error("lease lost: %s; stopping the work it protects", self.lost[0])
            main = threading.main_thread()
            if self._holder is main and main.ident is not None:  # a real signal: it also ends a blocking call
                signal.pthread_kill(main.ident, signal.SIGINT)  # KeyboardInterrupt -> LeaseLost
            return


class LeaseWatch:
    """Whether a lease's holder stopped renewing it, judged by a waiter on its own monotonic clock
    only: the generation it sees has not changed for ``stale_after`` seconds. Wall clocks (ours,
    the holder's, GCS's timestamps) are never compared, so a skewed clock cannot steal a live lease."""

    def __init__(self, stale_after: float) -> None:
        self.stale_after = stale_after
        self.generation: int | None = None
        self.since = time.monotonic()

    def stale(self, generation: int | None) -> bool:
        if generation is None or generation != self.generation:
            self.generation, self.since = generation, time.monotonic()
            return False
        return time.monotonic() - self.since > self.stale_after


def _retry():
    """Google's default policy (429, 5xx, connection errors; backoff 1 s doubling, up to 120 s)."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY


@contextmanager
def _service_errors(uri: str):
    """GCS failing after the client's retries (5xx, 429, dropped connections, credentials) is a
    StorageError: the task fails and Airflow retries it. Left raw, a per-photo step would record it as
    that photo's own fault, under a done marker, and the photo would never be tried again.
    NotFound passes through for the caller to name; Forbidden becomes AccessDenied."""
    import requests
    from google.api_core import exceptions
    from google.auth.exceptions import GoogleAuthError

    try:
        yield
    except exceptions.NotFound:
        raise
    except exceptions.Forbidden as err:
        raise AccessDenied(_forbidden_hint(uri, err)) from err
    except (exceptions.GoogleAPIError, GoogleAuthError, requests.exceptions.RequestException) as err:
        raise StorageError(f"GCS did not serve {uri} ({type(err).__name__}: {err}); the task is retried") from err


def _forbidden_hint(uri: str, err: Exception) -> str:
    return (
        f"access to {uri} was denied ({err}). Give the service account or the user behind "
        "GOOGLE_APPLICATION_CREDENTIALS the Storage Object Admin role on the bucket."
    )


def _gcs_client():
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT", "emulator"),
                              credentials=AnonymousCredentials())
    return storage.Client()


def read_uri(uri: str) -> bytes:
    """The bytes of one object given by its full URI (a path or gs://bucket/key)."""
    parent, _, name = uri.rstrip("/").rpartition("/")
    return open_storage(parent or "/").read_bytes(name)


def open_storage(uri: str | os.PathLike[str]) -> Storage:
    """A ``Storage`` for a local folder or a ``gs://bucket/prefix`` URI."""
    uri = os.fspath(uri)
    if uri.startswith(GCS_SCHEME):
        return GCSStorage(uri)
    if "://" in uri:
        raise ValueError(f"unsupported storage URI {uri!r}: use a local folder or gs://bucket/prefix")
    return LocalStorage(uri)

