"""Object-store locations: `s3://`, `gs://`, `az://` and anything else pyarrow.fs or fsspec
resolves. Owns which filesystem serves a URL, listing a prefix, what identifies an object's
content, streamed reads, and writes that appear whole or not at all. Local paths never come
here; the checkpoint never does (SQLite needs a local disk).

pyarrow's own filesystems come first: pyarrow is already loaded for Parquet, they take the
usual credential chains (environment, profile files, instance roles) and the standard
`AWS_ENDPOINT_URL`, and they need no botocore (what they add to a job's memory is measured in
benchmarks/RESULTS.md, "Memory: remote input"). A scheme pyarrow does not know (`hf://`,
`memory://`) goes through fsspec when it is installed.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import IO, Any, cast
from urllib.parse import urlsplit

from .errors import ConfigError
from .faults import crash_point

# Metadata keys that name an object's content, as each store spells them: S3 and Azure send
# an ETag, GCS a generation, fsspec's stores one of the others.
CONTENT_KEYS = ("etag", "generation", "x_goog_generation", "md5hash", "version_id", "oid", "sha")
COPY_BLOCK = 8 << 20


def is_remote(location: str | os.PathLike[str]) -> bool:
    """Whether `location` is a URL of a store (`s3://b/k`), not a local path. `file://` and
    a Windows drive (`C:\\x`) are local."""
    text = os.fspath(location)
    scheme = urlsplit(text).scheme
    return "://" in text and len(scheme) > 1 and scheme != "file"


@dataclass(frozen=True, slots=True)
class RemoteObject:
    """One object of a store: its URL, and the filesystem and path that reach it."""

    url: str
    fs: Any  # a pyarrow.fs.FileSystem
    path: str

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


def resolve(url: str, endpoint_url: str | None = None) -> RemoteObject:
    """The filesystem serving `url`, or a ConfigError naming the URL and what is missing.
    `endpoint_url` (the config key) sends s3:// requests to an S3-compatible store (MinIO,
    Ceph, a test server); the standard AWS_ENDPOINT_URL variable does the same without it."""
    parts = urlsplit(url)
    try:
        fs = _filesystem(parts.scheme, parts.netloc, endpoint_url or None)
    except ImportError:
        raise ConfigError(
            f"{url}: this kind of URL needs fsspec (pip install 'batchrun[fsspec]')"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{url}: cannot reach this store ({_short(exc)})") from None
    if fs.type_name.startswith("py::"):  # fsspec behind pyarrow: fsspec says what the path is
        path = fs.handler.fs._strip_protocol(url)
    else:
        path = parts.netloc + parts.path
    return RemoteObject(url, fs, path.rstrip("/"))


@cache
def _filesystem(scheme: str, netloc: str, endpoint_url: str | None) -> Any:
    """One filesystem per store (and endpoint), so that connections are reused."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    if scheme == "s3" and endpoint_url:
        endpoint = urlsplit(endpoint_url)
        if endpoint.scheme == "http":
            return pafs.S3FileSystem(endpoint_override=endpoint.netloc, scheme="http")
        return pafs.S3FileSystem(endpoint_override=endpoint.netloc, scheme="https")
    try:
        return pafs.FileSystem.from_uri(f"{scheme}://{netloc}/")[0]
    except pa.ArrowInvalid as exc:
        if "Unrecognized filesystem type" not in str(exc):
            raise
    import fsspec

    handler = pafs.FSSpecHandler(fsspec.filesystem(scheme))  # type: ignore[abstract]
    return pafs.PyFileSystem(handler)


def _short(exc: BaseException) -> str:
    """An Arrow/AWS error's first line, without the request id noise."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.split(" (Request ID")[0]


def call(url: str, action: Callable[[], Any]) -> Any:
    """Run a store operation; a failure becomes a ConfigError naming the URL."""
    try:
        return action()
    except ConfigError:
        raise
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{url}: {_short(exc)}") from None


def kind(obj: RemoteObject) -> str:
    """'file', 'directory' or 'missing'."""
    from pyarrow.fs import FileType

    info = call(obj.url, lambda: obj.fs.get_file_info(obj.path))
    if info.type == FileType.File:
        return "file"
    return "directory" if info.type == FileType.Directory else "missing"


def list_files(obj: RemoteObject, *, recursive: bool = True) -> list[RemoteObject]:
    """Every object under a prefix (or only right in it), sorted by path."""
    from pyarrow.fs import FileSelector, FileType

    selector = FileSelector(obj.path, recursive=recursive, allow_not_found=True)
    infos = call(obj.url, lambda: obj.fs.get_file_info(selector))
    base = obj.url.rstrip("/")
    prefix = obj.path.rstrip("/")
    found = [i.path for i in infos if i.type == FileType.File]
    return [RemoteObject(base + p[len(prefix) :], obj.fs, p) for p in sorted(found)]


def content_id(obj: RemoteObject) -> str:
    """What the store says identifies the object's content (ETag or generation) with its
    size; the object's bytes hashed only when the store names none."""
    meta, size = call(obj.url, lambda: _metadata(obj))
    for key in CONTENT_KEYS:
        if meta.get(key):
            return f"{key}:{meta[key].strip(chr(34))}:{size}"
    import hashlib

    digest = hashlib.sha256()
    with open_input(obj) as fh:
        for block in iter(lambda: fh.read(COPY_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _metadata(obj: RemoteObject) -> tuple[dict[str, str], int]:
    with obj.fs.open_input_file(obj.path) as fh:
        raw = fh.metadata() or {}
        size = fh.size()
    meta = {_key(k): v.decode() if isinstance(v, bytes) else str(v) for k, v in raw.items()}
    handler = getattr(obj.fs, "handler", None)  # fsspec behind pyarrow: ask fsspec itself
    if handler is not None and not any(k in meta for k in CONTENT_KEYS):
        info = handler.fs.info(obj.path)
        meta.update({_key(k): str(v) for k, v in info.items() if v is not None})
    return meta, size


def _key(name: Any) -> str:
    text = name.decode() if isinstance(name, bytes) else str(name)
    return text.lower().replace("-", "_")


def open_input(obj: RemoteObject, compression: str | None = None) -> IO[bytes]:
    """The object as a buffered binary stream (readline works), read as it is consumed;
    `compression` ("gzip") undone on the way."""
    import io

    stream = call(obj.url, lambda: obj.fs.open_input_stream(obj.path, compression=compression))
    return cast(IO[bytes], io.BufferedReader(stream, buffer_size=1 << 20))


def open_random_access(obj: RemoteObject) -> Any:
    """The object for a reader that seeks (Parquet, Arrow IPC files)."""
    return call(obj.url, lambda: obj.fs.open_input_file(obj.path))


def child(obj: RemoteObject, name: str) -> RemoteObject:
    return RemoteObject(obj.url.rstrip("/") + "/" + name, obj.fs, obj.path.rstrip("/") + "/" + name)


def parent(obj: RemoteObject) -> RemoteObject:
    url, path = obj.url.rsplit("/", 1)[0], obj.path.rsplit("/", 1)[0]
    return RemoteObject(url, obj.fs, path)


def upload(local: Path, obj: RemoteObject, *, tidy: bool = True) -> None:
    """Put a finished local file at `obj` so that it appears whole or not at all.

    The bytes go to a temporary object beside it, which is then moved (a server-side copy)
    onto the final name: a kill during the upload leaves at most the temporary object (or an
    upload the store never completes), never a half-written object under the final name.
    `tidy`: then remove such leftovers of earlier uploads of `obj` (a caller uploading many
    objects into one folder lists it once instead: destination.py).
    """
    tmp = child(parent(obj), f".{obj.name}.{os.getpid()}.tmp")
    try:
        with local.open("rb") as src, obj.fs.open_output_stream(tmp.path) as dst:
            shutil.copyfileobj(src, cast(Any, dst), COPY_BLOCK)
            crash_point("upload")  # the tests kill here: an upload never completed
        obj.fs.move(tmp.path, obj.path)
        if tidy:
            _remove_stale_temps(obj)
    except OSError as exc:
        raise ConfigError(f"cannot write {obj.url}: {_short(exc)}") from None
    finally:
        _delete_quietly(tmp)


def _remove_stale_temps(obj: RemoteObject) -> None:
    """Temporary objects an upload killed between its write and its move left beside `obj`
    (the checkpoint's lock lets one run of a job write at a time)."""
    for other in list_files(parent(obj), recursive=False):
        if leftover_target(other.name) == obj.name:
            _delete_quietly(other)


def leftover_target(name: str) -> str | None:
    """The object an upload's temporary object `.NAME.PID.tmp` was for (see upload)."""
    if not (name.startswith(".") and name.endswith(".tmp")):
        return None
    target, _, pid = name[1 : -len(".tmp")].rpartition(".")
    return target if pid.isdigit() and target else None


def put_bytes(obj: RemoteObject, data: bytes) -> None:
    """A small object, written in one request."""

    def put() -> None:
        with obj.fs.open_output_stream(obj.path) as out:
            out.write(data)

    call(obj.url, put)


def download(obj: RemoteObject, local: Path) -> None:
    """The object into a local file, whole (a temp file renamed at the end)."""
    tmp = local.with_name(f".{local.name}.{os.getpid()}.tmp")
    try:
        with open_input(obj) as src, tmp.open("wb") as dst:
            shutil.copyfileobj(src, dst, COPY_BLOCK)
        os.replace(tmp, local)
    except OSError as exc:
        raise ConfigError(f"cannot read {obj.url}: {_short(exc)}") from None
    finally:
        tmp.unlink(missing_ok=True)


def delete_if_there(obj: RemoteObject) -> None:
    if kind(obj) == "file":
        call(obj.url, lambda: obj.fs.delete_file(obj.path))


def _delete_quietly(obj: RemoteObject) -> None:
    with suppress(OSError):  # already gone (moved), or never made
        obj.fs.delete_file(obj.path)


def check_writable(obj: RemoteObject, *, folder: bool = False) -> None:
    """Write and delete a small probe object where `obj` goes (inside it, for a folder of
    parts): a missing bucket, a denied write or missing credentials are found before
    anything is spent."""
    place = obj if folder else parent(obj)
    probe = child(place, f".batchrun-probe-{os.getpid()}")
    try:
        with probe.fs.open_output_stream(probe.path) as out:
            out.write(b"batchrun checks that this location is writable\n")
        probe.fs.delete_file(probe.path)
    except OSError as exc:
        raise ConfigError(f"cannot write the output at {obj.url}: {_short(exc)}") from None
    if not folder and kind(obj) == "directory":
        raise ConfigError(f"output {obj.url} is a directory; give a file name")
