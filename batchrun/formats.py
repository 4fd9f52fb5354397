"""The input formats beyond JSONL and Parquet: CSV / TSV, Arrow IPC (Feather), and the
directories Hugging Face `datasets` writes with `save_to_disk`.

Each reader turns one source into SourceRows with their locations, as dataset.py's own readers
do. A reader takes `source` as pyarrow does: a local path, or an open binary file or pyarrow
NativeFile. It never opens a file by name itself beyond handing a path to pyarrow, so a remote
stream reads the same way. dataset.py chooses the reader by suffix and finds the files;
`hf_dataset_files` says which Arrow files a local Hugging Face dataset directory holds.
pyarrow is imported where it is used: a JSONL job need not pay for it at start-up.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, TypeAlias, cast

from .dataset import SourceRow
from .errors import ConfigError

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.csv

    Source: TypeAlias = str | IO[bytes] | pa.NativeFile

# Rows turned into Python objects at a time: memory follows this, not a batch's size.
ROWS_PER_SLICE = 2048
# pyarrow reads a CSV in blocks of this size, up to about 32 of them ahead of the parser (its
# background reader's queue, not configurable): so about 130 MiB at most, however large the
# file. A record may span two blocks, not three: records up to about 8 MiB read, which is
# more than any endpoint takes in one request.
CSV_BLOCK_BYTES = 4 * 1024 * 1024
# Every column is read as text (see read_csv); pyarrow is told so by column position, up to
# this many columns.
MAX_CSV_COLUMNS = 4096


def read_csv(name: str, source: Source, delimiter: str) -> Iterator[SourceRow]:
    """A CSV (`delimiter` ",") or TSV ("\\t") file with a header row: one SourceRow per record,
    its `data` a dict of column -> value, located `name:LINE` (the header is line 1).

    Every value is a string, or None for an empty unquoted field (`""` stays ""): read as
    text, an `id` of digits keeps its leading zeros and a prompt of digits stays a prompt,
    and no column changes type halfway through a large file. A record of only empty fields
    (a blank line, a spreadsheet's trailing `,,`) is skipped, as JSONL skips blank lines. A
    record with the wrong number of fields becomes an error row in its place; a UTF-8
    byte-order mark is dropped. Read in blocks: memory does not grow with the file.
    """
    import pyarrow as pa

    invalid: list[pyarrow.csv.InvalidRow] = []
    reader = _open_csv(name, source, delimiter, invalid)
    if reader is None:
        return
    lines = _CsvLines(name, invalid)
    with reader:
        try:
            for batch in reader:
                yield from lines.place(batch)
        except (pa.ArrowInvalid, OSError, EOFError) as exc:
            # A corrupt .gz, a record longer than two blocks: the rows read so far stand.
            yield from lines.invalid_rows_due()
            yield lines.unreadable(exc)
            return
    yield from lines.invalid_rows_due(every=True)


def _open_csv(
    name: str, source: Source, delimiter: str, invalid: list[pyarrow.csv.InvalidRow]
) -> pa.RecordBatchReader | None:
    import pyarrow as pa
    import pyarrow.csv as csv

    def collect(row: csv.InvalidRow) -> Literal["skip"]:
        invalid.append(row)
        return "skip"  # not lost: _CsvLines puts it back in its place as an error row

    # Named f0, f1 ... by position, the header read as the first record: so every column can
    # be typed as text without knowing the names first (pyarrow would guess types instead).
    read = csv.ReadOptions(
        autogenerate_column_names=True, block_size=CSV_BLOCK_BYTES, use_threads=False
    )  # use_threads=False: the invalid-row handler is told each row's record number
    parse = csv.ParseOptions(
        delimiter=delimiter,
        newlines_in_values=True,  # a quoted field may hold line breaks (and a block edge)
        ignore_empty_lines=False,  # kept as all-empty records, so that lines can be counted
        invalid_row_handler=collect,
    )
    convert = csv.ConvertOptions(
        column_types={f"f{i}": pa.string() for i in range(MAX_CSV_COLUMNS)},
        null_values=[""],  # "NA", "null", "nan" ... are text like any other
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
        check_utf8=False,  # checked row by row instead (_decode): one bad row, not the file
    )
    where = source if isinstance(source, str) else name
    try:
        reader = csv.open_csv(_arrow(_decompressed(name, source)), read, parse, convert)
    except pa.ArrowInvalid as exc:
        # Also raised for a header line with no line break after it: that file has no rows.
        if "Empty CSV file" in str(exc):
            return None
        raise ConfigError(f"{where}: not a readable CSV file ({exc})") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot open: {exc}") from None
    if len(reader.schema) > MAX_CSV_COLUMNS:
        raise ConfigError(f"{where}: more than {MAX_CSV_COLUMNS} columns")
    return reader


def _decompressed(name: str, source: Source) -> Source:
    """pyarrow decompresses a .gz path itself; an open .gz stream is wrapped here."""
    import pyarrow as pa

    if isinstance(source, str) or not name.endswith(".gz"):
        return source
    return pa.CompressedInputStream(_arrow(source), "gzip")


def _arrow(source: Source) -> Any:
    """`source` for a pyarrow reader: pyarrow's stubs type each reader's inputs a little
    differently, but every one of them takes a path, a binary file or a NativeFile."""
    return source


class _CsvLines:
    """Puts a CSV's records back in file order (the good ones come in batches, the bad ones
    through pyarrow's invalid-row handler, often a block ahead) and gives each the line it
    starts on.

    Line numbers are physical lines: the header is line 1 and a record's line is the one it
    starts on. A record whose quoted field holds line breaks spans several lines; it is
    located at its first, and the records after it at their own lines (each record's line
    breaks inside quotes are counted, as "\\n", so a lone "\\r" inside quotes is not). Blank
    lines are counted too.
    """

    def __init__(self, name: str, invalid: list[pyarrow.csv.InvalidRow]) -> None:
        self.name = name
        self.invalid = invalid  # filled by the handler while pyarrow parses
        self.columns: list[str] | None = None
        self.record = 0  # pyarrow's number of the last record placed (the header is 1)
        self.line = 1  # the line the next record starts on

    def place(self, batch: pa.RecordBatch) -> Iterator[SourceRow]:
        import pyarrow as pa

        if batch.num_rows == 0:
            return
        if self.columns is None:
            self.columns = self._header(batch)
            batch = batch.slice(1)
        named = pa.RecordBatch.from_arrays(batch.columns, names=self.columns)
        spans = _line_breaks(batch)
        for start in range(0, batch.num_rows, ROWS_PER_SLICE):
            chunk = named.slice(start, ROWS_PER_SLICE)
            breaks_each = spans[start : start + ROWS_PER_SLICE]
            for record, breaks in zip(_decode(chunk), breaks_each, strict=True):
                yield from self.invalid_rows_due()
                loc = self._next(breaks)
                if record is None:
                    yield SourceRow(loc, None, f"{loc}: record is not valid UTF-8")
                elif any(value is not None for value in record.values()):
                    yield SourceRow(loc, record)

    def _header(self, batch: pa.RecordBatch) -> list[str]:
        where = f"{self.name}:1"
        records = _decode(batch.slice(0, 1))
        if not records or records[0] is None:
            raise ConfigError(f"{where}: the header row is not valid UTF-8")
        names = list(records[0].values())
        if all(n is None for n in names):
            raise ConfigError(f"{where}: the first line is empty; a header row must be there")
        # An empty header cell (pandas writes one above its index) still names its column.
        columns = [n if n is not None else f"column{i}" for i, n in enumerate(names, 1)]
        repeated = sorted({c for c in columns if columns.count(c) > 1})
        if repeated:
            raise ConfigError(f"{where}: column {repeated[0]!r} appears twice in the header")
        self._next(_line_breaks(batch.slice(0, 1))[0])
        return columns

    def _next(self, breaks: int) -> str:
        """The location of the next record, which holds `breaks` line breaks."""
        self.record += 1
        loc = f"{self.name}:{self.line}"
        self.line += 1 + breaks
        return loc

    def invalid_rows_due(self, every: bool = False) -> Iterator[SourceRow]:
        """The rows pyarrow refused that come next in the file (with `every`: all left)."""
        while self.invalid and (every or self.invalid[0].number in (None, self.record + 1)):
            row = self.invalid.pop(0)
            loc = self._next(row.text.count("\n"))
            counts = f"the header has {row.expected_columns}, this record {row.actual_columns}"
            yield SourceRow(loc, None, f"{loc}: wrong number of columns ({counts})")

    def unreadable(self, exc: Exception) -> SourceRow:
        loc = f"{self.name}:{self.line}"
        why = str(exc)
        if "straddl" in why:  # pyarrow's words for a record longer than two blocks
            limit = 2 * CSV_BLOCK_BYTES // (1024 * 1024)
            why = f"a record longer than {limit} MiB, or a quote that is never closed"
        return SourceRow(loc, None, f"{loc}: the file cannot be read on from here ({why})")


def _line_breaks(batch: pa.RecordBatch) -> list[int]:
    """How many line breaks each record's values hold (they come from quoted fields)."""
    import pyarrow.compute as pc

    total = [0] * batch.num_rows
    for column in batch.columns:
        counts = pc.count_substring(cast("pa.StringArray", column), "\n").to_pylist()
        total = [t + (c or 0) for t, c in zip(total, counts, strict=True)]
    return total


def _decode(batch: pa.RecordBatch) -> list[dict[str, Any] | None]:
    """The batch's records as dicts; None for a record that is not valid UTF-8."""
    records: list[dict[str, Any] | None] = []
    try:
        records.extend(batch.to_pylist())
    except UnicodeDecodeError:  # rare: find the culprits one record at a time
        for i in range(batch.num_rows):
            try:
                records.append(batch.slice(i, 1).to_pylist()[0])
            except UnicodeDecodeError:
                records.append(None)
    return records


def read_arrow(name: str, source: Source) -> Iterator[SourceRow]:
    """An Arrow IPC file (Feather v2) or stream (as Hugging Face writes `.arrow` files): one
    SourceRow per row, located `name:ROW` (from 1) as Parquet rows are. Read batch by batch
    (a path is memory-mapped), never the whole table at once."""
    import pyarrow as pa

    where = source if isinstance(source, str) else name
    try:
        mapped = pa.memory_map(source) if isinstance(source, str) else None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot open: {exc}") from None
    row_no = 0
    try:
        batches = _ipc_batches(where, mapped if mapped is not None else source)
        for batch in batches:
            for start in range(0, batch.num_rows, ROWS_PER_SLICE):
                for record in batch.slice(start, ROWS_PER_SLICE).to_pylist():
                    row_no += 1
                    yield SourceRow(f"{name}:{row_no}", record)
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        # A stream cut short: the rows read so far stand, as in a truncated .jsonl.gz.
        loc = f"{name}:{row_no + 1}"
        yield SourceRow(loc, None, f"{loc}: file is truncated or corrupt ({exc})")
    finally:
        if mapped is not None:
            mapped.close()


def _ipc_batches(where: str, source: Source) -> Iterator[pa.RecordBatch]:
    import pyarrow as pa
    import pyarrow.ipc as ipc

    try:
        magic = _peek(source, 6)
        if magic == b"ARROW1":  # the file format: its footer indexes the batches
            reader = ipc.open_file(_arrow(source))
            return (reader.get_batch(i) for i in range(reader.num_record_batches))
        if magic.startswith(b"FEA1"):
            raise ConfigError(
                f"{where}: a Feather version 1 file; write it again with pyarrow's "
                "feather.write_feather (version 2) to read it"
            )
        return iter(ipc.open_stream(_arrow(source)))
    except (pa.ArrowInvalid, OSError) as exc:
        raise ConfigError(f"{where}: not a readable Arrow IPC file ({exc})") from None


def _peek(source: Source, size: int) -> bytes:
    """The first bytes of a seekable source, read back; b"" for a stream (which can only
    be the stream format: the file format needs seeking)."""
    if isinstance(source, str) or not source.seekable():
        return b""
    start = source.tell()
    head = source.read(size)
    source.seek(start)
    return bytes(head)


def hf_dataset_files(folder: Path) -> list[tuple[Path, str]] | None:
    """The Arrow files of a Hugging Face dataset directory written by `save_to_disk`, in
    the dataset's order, each with the name of its part below `folder`: "" for a Dataset's
    only file, its file name when it has several, and the split first for a DatasetDict
    ("train", "train/data-00001-of-00002.arrow"). None when `folder` is not such a
    directory. Its JSON files are not inputs."""
    splits = _json_key(folder / "dataset_dict.json", "splits")
    if isinstance(splits, list) and all(isinstance(s, str) for s in splits):
        files = []
        for split in splits:
            parts = _dataset_files(folder / split)
            if parts is None:
                raise ConfigError(
                    f"{folder / split}: split {split!r} of dataset_dict.json has no state.json"
                )
            files += [(path, f"{split}/{part}" if part else split) for path, part in parts]
        return files
    return _dataset_files(folder)


def _dataset_files(folder: Path) -> list[tuple[Path, str]] | None:
    """One Dataset's Arrow files, in the order its state.json lists them."""
    listed = _json_key(folder / "state.json", "_data_files")
    if not isinstance(listed, list):
        return None  # a state.json of something else: an ordinary folder
    names: list[str] = []
    for entry in listed:
        name = entry.get("filename") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not (folder / name).is_file():
            raise ConfigError(f"{folder}: state.json lists {name!r}, which is not a file there")
        names.append(name)
    if len(names) == 1:
        return [(folder / names[0], "")]
    return [(folder / name, name) for name in names]


def _json_key(path: Path, key: str) -> Any:
    """`key` of the JSON object in `path`; None when there is no such file or object."""
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value.get(key) if isinstance(value, dict) else None
