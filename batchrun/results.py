"""Checkpoint -> the result file: Parquet (SPEC.md "Output"), or OpenAI Batch API JSONL.

The output is an export of the checkpoint and can be rewritten at any time, mid-run
included: rows are streamed from SQLite in input order, one row group per page, into a
temp file (or a folder of part files) that is fsynced and renamed over the target, so a
reader never sees half a file. Where the output goes (a store, beside what) is
destination.py's.

Passthrough columns keep their type when every value in the column has the same scalar
type (bool, int, float, string; ints mixed with floats become float); anything else
(lists, objects, mixed types, dates from Parquet) is written as JSON text.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow.lib import StringBuilder

from . import codec
from .checkpoint import CheckpointReader, ResultPage, ReusedAnswer
from .columns import BASE_COLUMNS, PARSED_COLUMNS, VALIDATION_COLUMNS, ColumnKinds
from .errors import BatchrunError, ConfigError
from .faults import crash_point
from .lifecycle import OUTPUT_STATUS, RowState
from .parsing import extract_fields, parse_answer
from .validation import output_cells

STRING_ARRAY_BYTES = 2**31 - 1  # Arrow's limit for one string array (int32 offsets)

_KIND_TYPES: dict[str, pa.DataType] = {
    "bool": pa.bool_(),
    "int": pa.int64(),
    "int32": pa.int32(),
    "float": pa.float64(),
    "str": pa.string(),
}
# Never null: every row has an id, a status, a count of attempts and a reused flag.
_REQUIRED = frozenset({"id", "status", "attempts", "reused"})
BASE_FIELDS: list[pa.Field[Any]] = [
    pa.field(name, _KIND_TYPES[kind], nullable=name not in _REQUIRED) for name, kind in BASE_COLUMNS
]


def output_schema(extra_columns: list[list[str]]) -> pa.Schema:
    fields: list[pa.Field[Any]] = list(BASE_FIELDS)
    for name, kind in extra_columns:
        fields.append(pa.field(name, _KIND_TYPES.get(kind, pa.string())))
    return pa.schema(fields)


def _base_columns(page: ResultPage) -> list[Sequence[Any]]:
    """The fixed output columns of a page, in BASE_COLUMNS order."""
    status = [OUTPUT_STATUS.get(state, "pending") for state in page.state]
    special: dict[str, Sequence[Any]] = {"id": page.row_id, "status": status}
    return [special[name] if name in special else getattr(page, name) for name, _ in BASE_COLUMNS]


def _cell(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if kind == "json":
        return json.dumps(value, ensure_ascii=False, default=str)
    if kind == "float":
        return float(value)
    if kind == "str" and not isinstance(value, str):
        return str(value)
    return value


class Derived:
    """Output columns computed from each row's answer: `parsed` / `parse_error` and the
    `--extract` fields (typed by a first pass over the answers, like passthrough columns)."""

    def __init__(
        self, checkpoint: CheckpointReader, extract: tuple[str, ...], taken: set[str]
    ) -> None:
        self.extract = extract
        self.names = [f"parsed_{f}" if f in taken or f in PARSED_COLUMNS else f for f in extract]
        self.parse_errors = 0
        kinds = ColumnKinds()
        if extract:
            for page in checkpoint.result_pages():
                for state, content in zip(page.state, page.content, strict=True):
                    if state is RowState.DONE:
                        value, _ = parse_answer(content)
                        kinds.observe(extract_fields(value, list(extract)))
        learned = dict(kinds.as_list())
        self.kinds = [learned.get(f, "str") for f in extract]

    def columns(self) -> list[list[str]]:
        return [["parsed", "str"], ["parse_error", "str"]] + [
            [name, kind] for name, kind in zip(self.names, self.kinds, strict=True)
        ]

    def values(self, state: RowState, content: str | None) -> list[Any]:
        if state is not RowState.DONE:
            return [None, None] + [None] * len(self.extract)
        value, error = parse_answer(content)
        if error is not None:
            self.parse_errors += 1
            return [None, error] + [None] * len(self.extract)
        fields = extract_fields(value, list(self.extract))
        cells = [_cell(fields[f], kind) for f, kind in zip(self.extract, self.kinds, strict=True)]
        return [json.dumps(value, ensure_ascii=False), None, *cells]


def _page_table(
    page: ResultPage,
    schema: pa.Schema,
    extra: list[list[str]],
    derived: Derived | None,
    validated: bool = False,
) -> pa.Table:
    """One page as an Arrow table, built column by column, each by _arrow_column."""
    columns = _base_columns(page)
    if extra:
        rows = [codec.loads(text) if text else [] for text in page.extra]
        for at, (_, kind) in enumerate(extra):
            columns.append([_cell(r[at] if at < len(r) else None, kind) for r in rows])
    if derived is not None:
        cells = map(derived.values, page.state, page.content)
        columns.extend(zip(*cells, strict=True))
    if validated:
        columns.extend(output_cells(page.state, page.rejected, page.rejected_error, page.error))
    arrays = [_arrow_column(c, f.type) for c, f in zip(columns, schema, strict=True)]
    return pa.Table.from_arrays(arrays, schema=schema)


def _arrow_column(values: Sequence[Any], kind: pa.DataType) -> pa.Array[Any] | pa.ChunkedArray[Any]:
    """Python values (None for null) as an Arrow array of `kind`: string, int, float or bool.

    Not pa.array(): on first use it imports pandas, only to ask whether the list is a
    pandas object, which costs a run seconds and tens of MiB (benchmarks/RESULTS.md,
    "Hot-path choices"). Strings go through Arrow's StringBuilder; numbers and booleans as
    text, parsed by Arrow's cast (exact: repr() of a float round-trips).
    """
    if pa.types.is_string(kind):
        chunks = _string_chunks(values)
        return chunks[0] if len(chunks) == 1 else pa.chunked_array(chunks, type=kind)
    if pa.types.is_boolean(kind):
        text = [None if v is None else "1" if v else "0" for v in values]
    else:
        text = [None if v is None else repr(v) for v in values]
    return _string_chunks(text)[0].cast(kind)


def _string_chunks(values: Sequence[str | None]) -> list[pa.Array[Any]]:
    """`values` as string arrays, split so that none holds STRING_ARRAY_BYTES or more
    (an array's offsets are 32-bit; StringBuilder would drop what does not fit)."""
    chars = sum(len(v) for v in values if v is not None)
    if chars * 4 >= STRING_ARRAY_BYTES and len(values) > 1:  # 4: UTF-8's widest character
        half = len(values) // 2
        return _string_chunks(values[:half]) + _string_chunks(values[half:])
    builder = StringBuilder()
    builder.append_values(values)
    array = builder.finish()
    if len(array) != len(values):
        raise BatchrunError(f"a value of {chars:,} characters is too large for one Parquet string")
    return [array]


def _write_group(writer: pq.ParquetWriter, group: list[pa.Table]) -> None:
    """One row group of the gathered pages (none if there are none); empties `group`."""
    if group:
        writer.write_table(pa.concat_tables(group))
        group.clear()
        crash_point("output")  # the crash test kills here: a half-written temp file


def write_output(
    checkpoint: CheckpointReader,
    path: Path,
    *,
    page_rows: int = 2048,
    group_rows: int = 8192,
    parse_json: bool = False,
    extract: tuple[str, ...] = (),
    part_rows: int | None = None,
    validated: bool = False,
) -> tuple[int, int]:
    """Write every row of the checkpoint to `path` atomically: one Parquet file, or with
    `part_rows` a folder of part-NNNNN.parquet files of that many rows, in input order.
    Returns (rows, answers not parsed)."""
    extra = checkpoint.extra_columns()
    derived = None
    if parse_json or extract:
        taken = {f.name for f in BASE_FIELDS} | {name for name, _ in extra}
        derived = Derived(checkpoint, extract, taken)
    checked = [list(c) for c in VALIDATION_COLUMNS] if validated else []
    schema = output_schema(extra + (derived.columns() if derived else []) + checked)
    # Small pages from SQLite (their Python objects are the memory peak of the write),
    # gathered as Arrow tables into row groups of `group_rows`.
    tables = (
        _page_table(page, schema, extra, derived, validated)
        for page in checkpoint.result_pages(page=page_rows)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        if part_rows is None:
            written = _write_file(tmp, schema, tables, group_rows)
        else:
            written = _write_parts(tmp, schema, tables, min(group_rows, part_rows), part_rows)
        replace(tmp, path)
    finally:
        remove(tmp)
    return written, derived.parse_errors if derived else 0


def _write_file(path: Path, schema: pa.Schema, tables: Iterable[pa.Table], group_rows: int) -> int:
    written = 0
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        group: list[pa.Table] = []
        for table in tables:
            group.append(table)
            written += len(table)
            if sum(len(t) for t in group) >= group_rows:
                _write_group(writer, group)
        _write_group(writer, group)
    with path.open("rb+") as fh:
        os.fsync(fh.fileno())
    return written


def _write_parts(
    folder: Path, schema: pa.Schema, tables: Iterable[pa.Table], group_rows: int, part_rows: int
) -> int:
    """Tables cut at every `part_rows` rows into part files; an empty job writes one empty
    part, so that the folder still reads as a table with the output's columns."""
    folder.mkdir()
    pending: list[pa.Table] = []
    parts = written = 0
    for table in tables:
        pending.append(table)
        written += len(table)
        while sum(len(t) for t in pending) >= part_rows:
            whole = pa.concat_tables(pending)
            _write_file(folder / part_name(parts), schema, [whole.slice(0, part_rows)], group_rows)
            pending, parts = [whole.slice(part_rows)], parts + 1
    if parts == 0 or any(len(t) for t in pending):
        _write_file(folder / part_name(parts), schema, pending, group_rows)
    return written


def part_name(n: int) -> str:
    return f"part-{n:05d}.parquet"


def replace(tmp: Path, path: Path) -> None:
    """Put a finished file or folder at `path`. A folder cannot be renamed over a folder, so
    the old one is first moved aside: a reader sees the old output or the new, or (for an
    instant) none, never half of one."""
    if tmp.is_dir() and path.exists():
        aside = path.with_name(f".{path.name}.{os.getpid()}.old.tmp")
        os.replace(path, aside)
        os.replace(tmp, path)
        remove(aside)
    else:
        os.replace(tmp, path)


def remove(path: Path) -> None:
    """A temp file or folder, if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# ---------------------------------------------------------------- OpenAI batch output


def openai_line(page: ResultPage, i: int) -> dict[str, Any] | None:
    """One OpenAI Batch API output line for row `i` of a page (None while unfinished).

    HTTP answers go in `response` (status_code, request_id, body), as OpenAI and vLLM's
    run-batch write them; failures with no HTTP answer (timeouts, invalid rows) in `error`.
    """
    row_id, status = page.row_id[i], OUTPUT_STATUS.get(page.state[i])
    if status is None:
        return None
    status_code = page.status_code[i]
    line: dict[str, Any] = {
        "id": "batch_req_" + hashlib.sha256(row_id.encode()).hexdigest()[:24],
        "custom_id": row_id,
        "response": None,
        "error": None,
    }
    if status == "ok" or status_code is not None:
        line["response"] = {
            "status_code": 200 if status == "ok" else status_code,
            "request_id": page.request_id[i],
            "body": _json_or_text(page.body[i]),
        }
    else:
        code = "invalid_request" if status == "invalid" else "request_failed"
        line["error"] = {"code": code, "message": page.error[i]}
    return line


def _json_or_text(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {"error": {"message": text}}


def temp_path(path: Path) -> Path:
    """Where `path` is written before its rename; temp files a killed writer left beside
    it (another pid's, that pid gone) are removed first."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = stale.name[len(path.name) + 2 : -len(".tmp")].removesuffix(".old")
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            remove(stale)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def write_openai_jsonl(checkpoint: CheckpointReader, path: Path) -> int:
    """Every finished row as an OpenAI Batch API output line, atomically. Returns lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    written = 0
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            for page in checkpoint.result_pages():
                for i in range(len(page)):
                    line = openai_line(page, i)
                    if line is not None:
                        fh.write(json.dumps(line, ensure_ascii=False) + "\n")
                        written += 1
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return written


REUSE_COLUMNS = (
    "content", "reasoning_content", "tool_calls", "finish_reason", "prompt_tokens",
    "completion_tokens", "total_tokens", "model", "request_id", "latency_s", "ttft_s",
)  # fmt: skip


def read_reusable(path: Path, batch_rows: int = 8192) -> Iterator[list[ReusedAnswer]]:
    """The ok rows of an earlier output file (or folder of parts), as answers to reuse."""
    if path.is_dir():
        for part in sorted(path.glob("part-*.parquet")):
            yield from read_reusable(part, batch_rows)
        return
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise ConfigError(f"--reuse {path}: not a batchrun checkpoint or output ({exc})") from None
    names = set(parquet.schema_arrow.names)
    if "request_hash" not in names:
        raise ConfigError(f"--reuse {path}: this output has no request_hash column")
    wanted = ["status", "request_hash", *(c for c in REUSE_COLUMNS if c in names)]
    with parquet:
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=wanted):
            data = batch.to_pydict()
            answers = []
            for i, status in enumerate(data["status"]):
                if status == "ok" and data["request_hash"][i]:
                    values = {c: data[c][i] if c in data else None for c in REUSE_COLUMNS}
                    answers.append(
                        ReusedAnswer(request_hash=bytes.fromhex(data["request_hash"][i]), **values)
                    )
            yield answers
