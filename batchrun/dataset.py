"""Input files -> a stream of raw rows, each with its location (file:line).

Owns everything about reading inputs: expanding directories (local, or a prefix in an object
store through remote.py), JSONL / JSONL.gz / Parquet, line numbers, and the content digest
the checkpoint fingerprint is built from; the other formats (CSV / TSV, Arrow, Hugging Face
dataset directories) are read by formats.py, chosen here by suffix. It does not judge rows
(payloads.py does); a line that is not JSON becomes a SourceRow with `error`. Memory stays
flat: JSONL is read line by line, Parquet in record batches.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from . import codec, remote
from .errors import ConfigError
from .remote import RemoteObject

# Each supported suffix and how a file with it is read.
KINDS = {
    ".jsonl": "jsonl",
    ".jsonl.gz": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".csv": "csv",
    ".csv.gz": "csv",
    ".tsv": "tsv",
    ".tsv.gz": "tsv",
    ".arrow": "arrow",
    ".feather": "arrow",
    ".ipc": "arrow",
}
SUFFIXES = tuple(KINDS)
# A line this long cannot become a request (NVCF rejects bodies over 5 MB; the gateway
# over 25 MB), so reading it whole would only risk memory.
MAX_LINE_BYTES = 32 * 1024 * 1024
PARQUET_BATCH_ROWS = 2048


@dataclass(frozen=True, slots=True)
class InputFile:
    path: Path  # a local file; for an object in a store, only its name
    name: str  # how the file is named in locations and derived ids
    remote: RemoteObject | None = None  # set for an object in a store (s3://, gs://, ...)

    @property
    def kind(self) -> str:
        """jsonl, parquet, csv, tsv or arrow, by the file's suffix."""
        return next((k for sfx, k in KINDS.items() if self.path.name.endswith(sfx)), "jsonl")

    @property
    def location(self) -> str:
        """The file as its user named it: a path, or the object's URL."""
        return self.remote.url if self.remote is not None else str(self.path)

    def open_stream(self) -> IO[bytes]:
        """The bytes from the start, read as they are consumed (gzip undone for .gz)."""
        gz = self.path.name.endswith(".gz")
        if self.remote is not None:
            return remote.open_input(self.remote, compression="gzip" if gz else None)
        return cast(IO[bytes], gzip.open(self.path, "rb")) if gz else self.path.open("rb")

    def open_random_access(self) -> Any:
        """What pyarrow's readers that seek take: the path, or the store's open file."""
        if self.remote is not None:
            return remote.open_random_access(self.remote)
        return str(self.path)


@dataclass(slots=True)
class SourceRow:
    """One input row before validation. `data` is None when `error` says why."""

    loc: str
    data: dict[str, Any] | None
    error: str | None = None
    base_dir: Path | None = None  # the input file's folder: relative image paths start here


def _supported(path: Path) -> bool:
    return path.name.endswith(SUFFIXES) and not path.name.startswith(".")


def expand_inputs(
    paths: tuple[str, ...] | list[str], endpoint_url: str | None = None
) -> list[InputFile]:
    """Files as given, directories expanded (recursively, sorted) to their supported files;
    URLs of a store (`endpoint_url`: see remote.resolve) likewise, a prefix as a directory."""
    files: list[InputFile] = []
    for raw in paths:
        if remote.is_remote(raw):
            files.extend(_remote_inputs(remote.resolve(raw, endpoint_url)))
            continue
        path = Path(raw)
        if path.is_dir():
            found = list(_folder_inputs(path, path))
            if not found:
                raise ConfigError(
                    f"{path}: no {', '.join(SUFFIXES)} files or Hugging Face dataset "
                    "in this directory"
                )
            files.extend(found)
        elif path.is_file():
            if not path.name.endswith(SUFFIXES):
                raise ConfigError(
                    f"{path}: unsupported input type (expected {', '.join(SUFFIXES)})"
                )
            files.append(InputFile(path, path.name))
        elif path.exists():
            raise ConfigError(f"{path}: not a regular file or directory")
        else:
            raise ConfigError(f"{path}: input not found")
    if not files:
        raise ConfigError("no input files given")
    return _distinct_names(files)


def _remote_inputs(obj: RemoteObject) -> list[InputFile]:
    """An object, or every supported object under a prefix (sorted), as input files."""
    what = remote.kind(obj)
    if what == "file":
        if not obj.name.endswith(SUFFIXES):
            raise ConfigError(f"{obj.url}: unsupported input type (expected {', '.join(SUFFIXES)})")
        return [InputFile(Path(obj.name), obj.name, obj)]
    found = [o for o in remote.list_files(obj) if _supported(Path(o.name))]
    if what == "missing" and not found:
        raise ConfigError(f"{obj.url}: input not found")
    if not found:
        raise ConfigError(f"{obj.url}: no {', '.join(SUFFIXES)} files under this prefix")
    prefix = obj.url.rstrip("/") + "/"
    return [InputFile(Path(o.name), o.url[len(prefix) :], o) for o in found]


def _folder_inputs(folder: Path, root: Path) -> Iterator[InputFile]:
    """A directory's input files, recursively and sorted by path, named relative to `root`;
    a Hugging Face dataset directory gives its own Arrow files in its own order instead."""
    from . import formats  # here: formats builds SourceRows, so it imports this module

    dataset = formats.hf_dataset_files(folder)
    if dataset is None:
        # As rglob does: folders behind symlinks are not entered, unreadable ones are skipped.
        try:
            entries = sorted(folder.iterdir())
        except PermissionError:
            return
        for entry in entries:
            if entry.is_dir() and not entry.is_symlink():
                yield from _folder_inputs(entry, root)
            elif entry.is_file() and _supported(entry):
                yield InputFile(entry, entry.relative_to(root).as_posix())
        return
    # Named as the dataset, e.g. mydata/train: `root`'s own name when it is the dataset.
    base = folder.relative_to(root).as_posix() if folder != root else ""
    base = base or folder.name or folder.resolve().name
    yield from (InputFile(path, f"{base}/{part}" if part else base) for path, part in dataset)


def _distinct_names(files: list[InputFile]) -> list[InputFile]:
    """Files named alike (a/data.jsonl, b/data.jsonl) are named by their paths instead, so
    their locations and derived ids stay apart."""
    counts: dict[str, int] = {}
    for f in files:
        counts[f.name] = counts.get(f.name, 0) + 1
    return [
        InputFile(f.path, f.remote.url if f.remote else f.path.as_posix(), f.remote)
        if counts[f.name] > 1
        else f
        for f in files
    ]


def file_digest(path: Path) -> str:
    """sha256 of the file's bytes: the inputs' part of the run fingerprint."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_rows(files: list[InputFile]) -> Iterator[SourceRow]:
    """Every row of every file, in order."""
    for source in files:
        rows = _reader(source)
        # Relative image paths start at a local input's folder (a store's: the working folder).
        folder = source.path.parent if source.remote is None else None
        for row in rows:
            row.base_dir = folder
            yield row


def _reader(source: InputFile) -> Iterator[SourceRow]:
    from . import formats  # here: formats builds SourceRows, so it imports this module

    kind = source.kind
    if kind in ("csv", "tsv"):
        # A local path lets pyarrow undo .gz itself; a store's object comes as a stream.
        csv = source.open_stream() if source.remote is not None else str(source.path)
        return formats.read_csv(source.name, csv, "," if kind == "csv" else "\t")
    if kind == "arrow":
        return formats.read_arrow(source.name, source.open_random_access())
    return _read_parquet(source) if kind == "parquet" else _read_jsonl(source)


def _read_jsonl(source: InputFile) -> Iterator[SourceRow]:
    try:
        fh = source.open_stream()
    except OSError as exc:
        raise ConfigError(f"{source.location}: cannot open: {exc.strerror}") from None
    with fh:
        line_no = 0
        try:
            while True:
                line = fh.readline(MAX_LINE_BYTES + 1)
                if not line:
                    return
                line_no += 1
                loc = f"{source.name}:{line_no}"
                if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                    _skip_rest_of_line(fh)
                    yield SourceRow(loc, None, f"{loc}: line longer than {MAX_LINE_BYTES} bytes")
                    continue
                if line_no == 1 and line.startswith(b"\xef\xbb\xbf"):
                    line = line[3:]  # a UTF-8 byte-order mark, as Windows tools write
                if not line.strip():
                    continue
                yield _parse_json_line(loc, line)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            # A truncated .gz: the rows read so far stand; the rest cannot be read.
            loc = f"{source.name}:{line_no + 1}"
            yield SourceRow(loc, None, f"{loc}: file is truncated or corrupt ({exc})")


def _skip_rest_of_line(fh: IO[bytes]) -> None:
    while True:
        chunk = fh.readline(MAX_LINE_BYTES)
        if not chunk or chunk.endswith(b"\n"):
            return


def _parse_json_line(loc: str, line: bytes) -> SourceRow:
    try:
        value = codec.loads(line)
    except codec.JSONDecodeError as exc:
        if "UTF-8" in exc.msg:
            return SourceRow(loc, None, f"{loc}: line is not valid UTF-8")
        if "ecursion" in exc.msg:
            return SourceRow(loc, None, f"{loc}: JSON nested too deeply")
        return SourceRow(loc, None, f"{loc}: invalid JSON ({exc.msg} at column {exc.colno})")
    if not isinstance(value, dict):
        return SourceRow(loc, None, f"{loc}: expected a JSON object, got {type(value).__name__}")
    return SourceRow(loc, value)


def _read_parquet(source: InputFile) -> Iterator[SourceRow]:
    import pyarrow.parquet as pq  # here: a JSONL job need not pay its import at start-up

    try:
        parquet = pq.ParquetFile(source.open_random_access())
    except ConfigError:
        raise
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise ConfigError(f"{source.location}: not a readable Parquet file ({exc})") from None
    row_no = 0
    with parquet:
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
            for record in batch.to_pylist():
                row_no += 1
                yield SourceRow(f"{source.name}:{row_no}", record)


def jsonable(value: Any) -> Any:
    """Fallback for json.dumps on Parquet values (dates, decimals, bytes)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
