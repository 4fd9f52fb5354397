"""Checkpoint -> the result file: Parquet (SPEC.md "Output"), or OpenAI Batch API JSONL.

The output is an export of the checkpoint and can be rewritten at any time, mid-run
included: rows are streamed from SQLite in input order, one row group per page, into a
temp file that is fsynced and renamed over the target, so a reader never sees half a file.

Passthrough columns keep their type when every value in the column has the same scalar
type (bool, int, float, string; ints mixed with floats become float); anything else
(lists, objects, mixed types, dates from Parquet) is written as JSON text.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow.lib import StringBuilder

from . import codec
from .columns import ColumnKinds
from .errors import BatchrunError, ConfigError
from .faults import crash_point
from .parsing import extract_fields, parse_answer
from .records import DONE, OUTPUT_STATUS
from .store import RESULT_COLUMNS, REUSE_COLUMNS, Store

BASE_FIELDS: list[pa.Field[Any]] = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),
    pa.field("content", pa.string()),
    pa.field("reasoning_content", pa.string()),
    pa.field("tool_calls", pa.string()),
    pa.field("finish_reason", pa.string()),
    pa.field("prompt_tokens", pa.int64()),
    pa.field("completion_tokens", pa.int64()),
    pa.field("total_tokens", pa.int64()),
    pa.field("model", pa.string()),
    pa.field("request_id", pa.string()),
    pa.field("attempts", pa.int32(), nullable=False),
    pa.field("latency_s", pa.float64()),
    pa.field("ttft_s", pa.float64()),
    pa.field("error", pa.string()),
    pa.field("reused", pa.bool_(), nullable=False),  # answered from --reuse, not bought again
    pa.field("request_hash", pa.string()),  # what --reuse matches on
]
_AT = {name: i for i, name in enumerate(RESULT_COLUMNS)}
# Where each output column comes from in a Store.iter_results row.
_SOURCES = [
    _AT["row_id" if f.name == "id" else "state" if f.name == "status" else f.name]
    for f in BASE_FIELDS
]
_CONTENT = _AT["content"]
_REUSED_CELL = [f.name for f in BASE_FIELDS].index("reused")

STRING_ARRAY_BYTES = 2**31 - 1  # Arrow's limit for one string array (int32 offsets)

_KIND_TYPES: dict[str, pa.DataType] = {
    "bool": pa.bool_(),
    "int": pa.int64(),
    "float": pa.float64(),
    "str": pa.string(),
}


def output_schema(extra_columns: list[list[str]]) -> pa.Schema:
    fields: list[pa.Field[Any]] = list(BASE_FIELDS)
    for name, kind in extra_columns:
        fields.append(pa.field(name, _KIND_TYPES.get(kind, pa.string())))
    return pa.schema(fields)


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

    def __init__(self, store: Store, extract: tuple[str, ...], taken: set[str]) -> None:
        self.extract = extract
        self.names = [
            f"parsed_{f}" if f in taken or f in ("parsed", "parse_error") else f for f in extract
        ]
        self.parse_errors = 0
        kinds = ColumnKinds()
        if extract:
            for rows in store.iter_results():
                for row in rows:
                    if row[_AT["state"]] == DONE:
                        value, _ = parse_answer(row[_CONTENT])
                        kinds.observe(extract_fields(value, list(extract)))
        learned = dict(kinds.as_list())
        self.kinds = [learned.get(f, "str") for f in extract]

    def columns(self) -> list[list[str]]:
        return [["parsed", "str"], ["parse_error", "str"]] + [
            [name, kind] for name, kind in zip(self.names, self.kinds, strict=True)
        ]

    def values(self, state: str, content: str | None) -> list[Any]:
        if state != DONE:
            return [None, None] + [None] * len(self.extract)
        value, error = parse_answer(content)
        if error is not None:
            self.parse_errors += 1
            return [None, error] + [None] * len(self.extract)
        fields = extract_fields(value, list(self.extract))
        cells = [_cell(fields[f], kind) for f, kind in zip(self.extract, self.kinds, strict=True)]
        return [json.dumps(value, ensure_ascii=False), None, *cells]


def _page_table(
    rows: list[tuple[Any, ...]],
    schema: pa.Schema,
    extra: list[list[str]],
    derived: Derived | None,
) -> pa.Table:
    """One page as an Arrow table: built column by column (a transpose in C, not a loop
    per cell), each column by _arrow_column."""
    by_source = list(zip(*rows, strict=True))
    columns: list[Sequence[Any]] = [by_source[i] for i in _SOURCES]
    columns[1] = [OUTPUT_STATUS.get(state, "pending") for state in columns[1]]
    columns[_REUSED_CELL] = [bool(flag) for flag in columns[_REUSED_CELL]]
    if extra:
        values = [codec.loads(text) if text else {} for text in by_source[_AT["extra"]]]
        for name, kind in extra:
            columns.append([_cell(v.get(name), kind) for v in values])
    if derived is not None:
        cells = map(derived.values, by_source[_AT["state"]], by_source[_CONTENT])
        columns.extend(zip(*cells, strict=True))
    arrays = [_arrow_column(c, f.type) for c, f in zip(columns, schema, strict=True)]
    return pa.Table.from_arrays(arrays, schema=schema)


def _arrow_column(values: Sequence[Any], kind: pa.DataType) -> pa.Array[Any] | pa.ChunkedArray[Any]:
    """Python values (None for null) as an Arrow array of `kind`: string, int, float or bool.

    Not pa.array(): on first use it imports pandas, only to ask whether the list is a
    pandas object: under `/usr/bin/time -f '%e s %M KB' python -c ...`, `import pyarrow`
    takes 0.11 s and 54 MiB, `import pyarrow as pa; pa.array([1])` 0.39 s and 109 MiB. Strings go
    through Arrow's StringBuilder; numbers and booleans as text, parsed by Arrow's cast
    (exact: repr() of a float round-trips).
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
    store: Store,
    path: Path,
    *,
    page_rows: int = 2048,
    group_rows: int = 8192,
    parse_json: bool = False,
    extract: tuple[str, ...] = (),
) -> tuple[int, int]:
    """Write every row of the checkpoint to `path` atomically. (rows, answers not parsed)."""
    extra = store.get_json("extra_columns", [])
    derived = None
    if parse_json or extract:
        taken = {f.name for f in BASE_FIELDS} | {name for name, _ in extra}
        derived = Derived(store, extract, taken)
    schema = output_schema(extra + (derived.columns() if derived else []))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    written = 0
    try:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            # Small pages from SQLite (their Python objects are the memory peak of the
            # write), gathered as Arrow tables into row groups of `group_rows`.
            group: list[pa.Table] = []
            for rows in store.iter_results(page=page_rows):
                group.append(_page_table(rows, schema, extra, derived))
                written += len(rows)
                if sum(len(t) for t in group) >= group_rows:
                    _write_group(writer, group)
            _write_group(writer, group)
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return written, derived.parse_errors if derived else 0


# ---------------------------------------------------------------- OpenAI batch output


def openai_line(row: tuple[Any, ...]) -> dict[str, Any] | None:
    """One OpenAI Batch API output line for a finished row (None while unfinished).

    HTTP answers go in `response` (status_code, request_id, body), as OpenAI and vLLM's
    run-batch write them; failures with no HTTP answer (timeouts, invalid rows) in `error`.
    """
    row_id, state = row[_AT["row_id"]], row[_AT["state"]]
    status = OUTPUT_STATUS.get(state)
    if status is None:
        return None
    request_id, error = row[_AT["request_id"]], row[_AT["error"]]
    response, status_code = row[_AT["response"]], row[_AT["status_code"]]
    line: dict[str, Any] = {
        "id": "batch_req_" + hashlib.sha256(row_id.encode()).hexdigest()[:24],
        "custom_id": row_id,
        "response": None,
        "error": None,
    }
    if status == "ok" or status_code is not None:
        line["response"] = {
            "status_code": 200 if status == "ok" else status_code,
            "request_id": request_id,
            "body": _json_or_text(response),
        }
    else:
        code = "invalid_request" if status == "invalid" else "request_failed"
        line["error"] = {"code": code, "message": error}
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
        pid = stale.name[len(path.name) + 2 : -len(".tmp")]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            stale.unlink(missing_ok=True)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def write_openai_jsonl(store: Store, path: Path) -> int:
    """Every finished row as an OpenAI Batch API output line, atomically. Returns lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    written = 0
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            for rows in store.iter_results():
                for row in rows:
                    line = openai_line(row)
                    if line is not None:
                        fh.write(json.dumps(line, ensure_ascii=False) + "\n")
                        written += 1
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return written


OUTPUT_FORMATS = ("parquet", "openai-jsonl", "both")


def output_paths(output: Path, output_format: str) -> dict[str, Path]:
    """Which files a run writes: Parquet at OUTPUT, JSONL at OUTPUT, or both side by side."""
    if output_format == "parquet":
        return {"parquet": output}
    if output_format == "openai-jsonl":
        return {"openai-jsonl": output}
    beside = (
        output.with_suffix(".jsonl") if output.suffix == ".parquet" else Path(f"{output}.jsonl")
    )
    return {"parquet": output, "openai-jsonl": beside}


def write_outputs(
    store: Store,
    output: Path,
    output_format: str,
    *,
    parse_json: bool = False,
    extract: tuple[str, ...] = (),
) -> tuple[list[Path], int]:
    """Write the job's output file(s). Returns (paths, answers that did not parse)."""
    paths = output_paths(output, output_format)
    parse_errors = 0
    if "parquet" in paths:
        _, parse_errors = write_output(
            store, paths["parquet"], parse_json=parse_json, extract=extract
        )
    if "openai-jsonl" in paths:
        write_openai_jsonl(store, paths["openai-jsonl"])
    return list(paths.values()), parse_errors


def read_reusable(path: Path, batch_rows: int = 8192) -> Iterator[list[tuple[Any, ...]]]:
    """(request_hash, *REUSE_COLUMNS) of the ok rows of an earlier output file, in batches."""
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
            rows = []
            for i, status in enumerate(data["status"]):
                if status == "ok" and data["request_hash"][i]:
                    values = (data[c][i] if c in data else None for c in REUSE_COLUMNS)
                    rows.append((data["request_hash"][i], *values))
            yield rows
