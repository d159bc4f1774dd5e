"""One small interface over a local folder and ``gs://bucket/prefix``.

Every stage reads and writes through a ``Storage`` rooted at a URI, using relative POSIX keys
(``processed/ab12.jpg``). This is the only module that knows about GCS. Writes are atomic: locally
a temp file in the same folder is renamed over the target; on GCS an object upload is atomic by itself.
"""
from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator, Protocol

GCS_SCHEME = "gs://"


class StorageError(RuntimeError):
    """A storage operation failed in a way the user has to fix (permissions, missing bucket, ...)."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # relative to the storage root, POSIX separators
    size: int
    version: str  # changes whenever the content may have changed (mtime / GCS generation)


def check_key(key: str) -> str:
    """Reject keys that could escape the storage root (absolute paths, ``..`` segments)."""
    path = PurePosixPath(key)
    if not key or path.is_absolute() or ".." in path.parts or "\\" in key or "\x00" in key:
        raise ValueError(f"invalid storage key {key!r}: keys are relative and stay inside the root")
    return path.as_posix()


class Storage(Protocol):
    uri: str

    def read_bytes(self, key: str) -> bytes: ...
    def write_bytes(self, key: str, data: bytes) -> None: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]: ...
    def delete(self, key: str) -> None: ...
    def uri_for(self, key: str) -> str: ...


class LocalStorage:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def uri_for(self, key: str) -> str:
        return str(self._path(key))

    def read_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def write_bytes(self, key: str, data: bytes) -> None:
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # Same folder, so the rename is atomic; unique name, so concurrent writers never share it.
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        except OSError as err:
            raise StorageError(f"cannot write {target}: {err.strerror or err}") from err
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except OSError as err:
            Path(tmp).unlink(missing_ok=True)
            raise StorageError(f"cannot write {target}: {err.strerror or err}") from err
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for name in sorted(filenames):
                if name.startswith(".") and name.endswith(".tmp"):
                    continue  # another writer's in-flight temp file
                path = Path(dirpath) / name
                stat = path.stat()
                yield ObjectInfo(
                    key=path.relative_to(self.root).as_posix(),
                    size=stat.st_size,
                    version=str(stat.st_mtime_ns),
                )


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

    def uri_for(self, key: str) -> str:
        return f"{GCS_SCHEME}{self._bucket.name}/{self._name(key)}"

    def read_bytes(self, key: str) -> bytes:
        from google.api_core import exceptions

        try:
            return self._bucket.blob(self._name(key)).download_as_bytes()
        except exceptions.NotFound as err:
            raise FileNotFoundError(self.uri_for(key)) from err
        except exceptions.Forbidden as err:
            raise StorageError(_forbidden_hint(self.uri_for(key), err)) from err

    def write_bytes(self, key: str, data: bytes) -> None:
        from google.api_core import exceptions

        try:
            self._bucket.blob(self._name(key)).upload_from_file(io.BytesIO(data), size=len(data))
        except exceptions.NotFound as err:
            raise StorageError(f"bucket {self._bucket.name!r} does not exist: create it first") from err
        except exceptions.Forbidden as err:
            raise StorageError(_forbidden_hint(self.uri_for(key), err)) from err

    def exists(self, key: str) -> bool:
        return self._bucket.blob(self._name(key)).exists()

    def delete(self, key: str) -> None:
        from google.api_core import exceptions

        try:
            self._bucket.blob(self._name(key)).delete()
        except exceptions.NotFound:
            pass

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        from google.api_core import exceptions

        full = self._name(prefix) if prefix else self.prefix
        full = f"{full}/" if full else ""
        strip = len(f"{self.prefix}/") if self.prefix else 0
        try:
            for blob in self._client.list_blobs(self._bucket, prefix=full):
                if blob.name.endswith("/"):
                    continue  # "folder" placeholder objects made by some tools
                yield ObjectInfo(key=blob.name[strip:], size=blob.size or 0, version=str(blob.generation))
        except exceptions.NotFound as err:
            raise StorageError(f"bucket {self._bucket.name!r} does not exist: create it first") from err
        except exceptions.Forbidden as err:
            raise StorageError(_forbidden_hint(self.uri, err)) from err


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

