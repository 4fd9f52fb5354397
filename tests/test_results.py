"""batchrun/results.py: checkpoint -> result Parquet (SPEC.md "Output")."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchrun import results
from batchrun.checkpoint import Checkpoint, ResultPage
from batchrun.lifecycle import Finished, Outcome, RowState
from batchrun.records import Completion
from batchrun.results import ColumnKinds, write_output
from tests.ledger import Row, apply, build, ingest, transitions

SPEC_COLUMNS = [
    "id",
    "status",
    "content",
    "reasoning_content",
    "tool_calls",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "model",
    "endpoint",
    "request_id",
    "attempts",
    "latency_s",
    "ttft_s",
    "error",
    "reused",
    "request_hash",
]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Checkpoint]:
    s = build(tmp_path / "job.checkpoint.sqlite", [])
    yield s
    s.close()


def add_rows(store: Checkpoint, rows: list[tuple[int, str, str, dict[str, Any] | None]]) -> None:
    """(idx, row_id, state, extra) rows, put in their states the way a run would."""
    now = time.time()
    ledger_rows = [Row(i, row_id, RowState(state), extra=extra) for i, row_id, state, extra in rows]
    ingest(store, ledger_rows)
    apply(store.path, [move for r in ledger_rows for move in transitions(r, now)])


def finish(
    store: Checkpoint,
    idx: int,
    state: str = "done",
    completion: Completion | None = None,
    attempts: int = 1,
    **outcome: Any,
) -> None:
    """The row's end, as the engine records it."""
    end = Outcome(RowState(state), completion or Completion(), **outcome)
    apply(store.path, [Finished(idx, end, attempts, None, time.time())])


def written(store: Checkpoint, path: Path, **kw: Any) -> pa.Table:
    write_output(store, path, **kw)
    return pq.read_table(path)


# ---------------------------------------------------------------- columns and types


def test_output_has_spec_columns_first_with_arrow_types(store: Checkpoint, tmp_path: Path) -> None:
    add_rows(store, [(0, "a", "done", {"topic": "math"})])
    schema = written(store, tmp_path / "out.parquet").schema
    assert schema.names == [*SPEC_COLUMNS, "topic"]
    types = {name: schema.field(name).type for name in schema.names}
    for name in ("id", "status", "content", "reasoning_content", "tool_calls", "finish_reason"):
        assert types[name] == pa.string()
    for name in ("model", "endpoint", "request_id", "error", "topic"):
        assert types[name] == pa.string()
    for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert types[name] == pa.int64()
    assert types["attempts"] == pa.int32()
    assert types["latency_s"] == pa.float64()
    assert types["ttft_s"] == pa.float64()


def test_finished_row_values_reach_the_output(store: Checkpoint, tmp_path: Path) -> None:
    add_rows(store, [(0, "a", "pending", None)])
    completion = Completion(
        content="4",
        reasoning_content="2+2 is 4",
        tool_calls=[{"id": "c1"}],
        finish_reason="stop",
        prompt_tokens=11,
        completion_tokens=7,
        total_tokens=18,
        model="qwen/qwen3.5-397b-a17b",
        ttft_s=0.5,
    )
    finish(
        store, 0, completion=completion, attempts=2, request_id="req-1", latency_s=1.25,
        endpoint="replica-b",
    )  # fmt: skip
    assert written(store, tmp_path / "out.parquet").to_pylist() == [
        {
            "id": "a",
            "status": "ok",
            "content": "4",
            "reasoning_content": "2+2 is 4",
            "tool_calls": '[{"id":"c1"}]',
            "finish_reason": "stop",
            "prompt_tokens": 11,
            "completion_tokens": 7,
            "total_tokens": 18,
            "model": "qwen/qwen3.5-397b-a17b",
            "endpoint": "replica-b",
            "request_id": "req-1",
            "attempts": 2,
            "latency_s": 1.25,
            "ttft_s": 0.5,
            "error": None,
            "reused": False,
            "request_hash": None,
        }
    ]


def test_large_token_counts_fit_int64(store: Checkpoint, tmp_path: Path) -> None:
    add_rows(store, [(0, "a", "pending", None)])
    finish(store, 0, completion=Completion(prompt_tokens=2**40, total_tokens=2**40 + 1))
    table = written(store, tmp_path / "out.parquet")
    assert table.column("prompt_tokens").to_pylist() == [2**40]
    assert table.column("total_tokens").to_pylist() == [2**40 + 1]


def test_rows_are_in_input_order_whatever_the_insert_order(
    store: Checkpoint, tmp_path: Path
) -> None:
    add_rows(store, [(3, "d", "pending", None), (0, "a", "pending", None)])
    add_rows(store, [(2, "c", "pending", None), (1, "b", "pending", None)])
    for idx, content in ((2, "C"), (0, "A"), (3, "D"), (1, "B")):
        finish(store, idx, completion=Completion(content=content))
    table = written(store, tmp_path / "out.parquet")
    assert table.column("id").to_pylist() == ["a", "b", "c", "d"]
    assert table.column("content").to_pylist() == ["A", "B", "C", "D"]


@pytest.mark.parametrize(
    ("state", "status"),
    [
        ("done", "ok"),
        ("failed", "failed"),
        ("invalid", "invalid"),
        ("pending", "pending"),
        ("inflight", "pending"),
        ("polling", "pending"),
        ("fetched", "pending"),
    ],
)
def test_state_maps_to_status(store: Checkpoint, tmp_path: Path, state: str, status: str) -> None:
    add_rows(store, [(0, "a", state, None)])
    assert written(store, tmp_path / "out.parquet").column("status").to_pylist() == [status]


def test_failed_and_invalid_rows_keep_their_error(store: Checkpoint, tmp_path: Path) -> None:
    ingest(store, [Row(0, "a"), Row(1, "b", RowState.INVALID, error="in.jsonl:2: no prompt")])
    finish(store, 0, "failed", error="HTTP 422: prompt too long", cause="HTTP 422")
    table = written(store, tmp_path / "out.parquet")
    assert table.column("status").to_pylist() == ["failed", "invalid"]
    assert table.column("error").to_pylist() == [
        "HTTP 422: prompt too long",
        "in.jsonl:2: no prompt",
    ]
    assert table.column("attempts").to_pylist() == [1, 0]


def test_write_output_returns_row_count_and_makes_directories(
    store: Checkpoint, tmp_path: Path
) -> None:
    add_rows(store, [(i, f"r{i}", "done", None) for i in range(5)])
    path = tmp_path / "deep" / "er" / "out.parquet"
    assert write_output(store, path) == (5, 0)
    assert pq.read_table(path).num_rows == 5


# ---------------------------------------------------------------- passthrough columns


def test_passthrough_columns_keep_scalar_types(store: Checkpoint, tmp_path: Path) -> None:
    add_rows(
        store,
        [
            (0, "a", "done", {"flag": True, "n": 1, "x": 0.5, "s": "one"}),
            (1, "b", "done", {"flag": False, "n": 2, "x": 1.5, "s": "two"}),
        ],
    )
    table = written(store, tmp_path / "out.parquet")
    assert table.column_names[len(SPEC_COLUMNS) :] == ["flag", "n", "x", "s"]
    assert table.schema.field("flag").type == pa.bool_()
    assert table.schema.field("n").type == pa.int64()
    assert table.schema.field("x").type == pa.float64()
    assert table.schema.field("s").type == pa.string()
    assert table.column("flag").to_pylist() == [True, False]
    assert table.column("n").to_pylist() == [1, 2]
    assert table.column("x").to_pylist() == [0.5, 1.5]
    assert table.column("s").to_pylist() == ["one", "two"]


def test_int_mixed_with_float_becomes_float(store: Checkpoint, tmp_path: Path) -> None:
    add_rows(store, [(0, "a", "done", {"score": 1}), (1, "b", "done", {"score": 2.5})])
    table = written(store, tmp_path / "out.parquet")
    assert table.schema.field("score").type == pa.float64()
    assert table.column("score").to_pylist() == [1.0, 2.5]


def test_mixed_types_become_json_text(store: Checkpoint, tmp_path: Path) -> None:
    add_rows(store, [(0, "a", "done", {"v": 1}), (1, "b", "done", {"v": "one"})])
    table = written(store, tmp_path / "out.parquet")
    assert table.schema.field("v").type == pa.string()
    assert [json.loads(v) for v in table.column("v").to_pylist()] == [1, "one"]


def test_lists_and_objects_become_json_text(store: Checkpoint, tmp_path: Path) -> None:
    add_rows(
        store,
        [
            (0, "a", "done", {"tags": ["x", "y"], "meta": {"k": 1, "é": "ü"}}),
            (1, "b", "done", {"tags": [], "meta": {}}),
        ],
    )
    table = written(store, tmp_path / "out.parquet")
    assert table.schema.field("tags").type == pa.string()
    assert table.schema.field("meta").type == pa.string()
    assert [json.loads(v) for v in table.column("tags").to_pylist()] == [["x", "y"], []]
    assert [json.loads(v) for v in table.column("meta").to_pylist()] == [{"k": 1, "é": "ü"}, {}]


def test_all_null_column_is_string(store: Checkpoint, tmp_path: Path) -> None:
    add_rows(store, [(0, "a", "done", {"note": None}), (1, "b", "done", {"note": None})])
    table = written(store, tmp_path / "out.parquet")
    assert table.schema.field("note").type == pa.string()
    assert table.column("note").to_pylist() == [None, None]


def test_missing_and_null_passthrough_values_are_null(store: Checkpoint, tmp_path: Path) -> None:
    add_rows(
        store,
        [
            (0, "a", "done", {"n": 1}),
            (1, "b", "done", None),
            (2, "c", "done", {"n": None}),
            (3, "d", "done", {"n": 4}),
        ],
    )
    table = written(store, tmp_path / "out.parquet")
    assert table.schema.field("n").type == pa.int64()
    assert table.column("n").to_pylist() == [1, None, None, 4]


def test_prefixed_passthrough_column_is_written(store: Checkpoint, tmp_path: Path) -> None:
    add_rows(store, [(0, "a", "done", {"input_model": "gpt-x"})])
    table = written(store, tmp_path / "out.parquet")
    assert table.column("input_model").to_pylist() == ["gpt-x"]
    assert table.column("model").to_pylist() == [None]


@pytest.mark.parametrize(
    ("values", "kind"),
    [
        ([True, False], "bool"),
        ([1, 2], "int"),
        ([1.5, 2.0], "float"),
        (["a", "b"], "str"),
        ([1, 2.5], "float"),
        ([2.5, 1], "float"),
        ([None, 3], "int"),
        ([3, None], "int"),
        ([None, None], "str"),
        ([1, "a"], "json"),
        ([True, 1], "json"),
        ([1, 2.5, "x"], "json"),
        ([[1, 2]], "json"),
        ([{"a": 1}], "json"),
        ([2**64], "json"),
    ],
)
def test_column_kinds(values: list[Any], kind: str) -> None:
    kinds = ColumnKinds()
    for value in values:
        kinds.observe({"c": value})
    assert kinds.as_list() == [["c", kind]]


def test_column_kinds_keep_first_seen_order_and_ignore_empty_rows() -> None:
    kinds = ColumnKinds()
    kinds.observe({"b": 1})
    kinds.observe(None)
    kinds.observe({})
    kinds.observe({"a": "x", "b": 2})
    assert kinds.as_list() == [["b", "int"], ["a", "str"]]


# ---------------------------------------------------------------- streaming and atomicity


def test_small_pages_are_gathered_into_row_groups(store: Checkpoint, tmp_path: Path) -> None:
    add_rows(store, [(i, f"r{i}", "done", {"n": i}) for i in range(7)])
    path = tmp_path / "out.parquet"
    assert write_output(store, path, page_rows=2, group_rows=4) == (7, 0)
    parquet = pq.ParquetFile(path)
    assert [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)] == [
        4,
        3,
    ]
    assert pq.read_table(path).column("n").to_pylist() == list(range(7))


def test_empty_checkpoint_gives_valid_empty_parquet(store: Checkpoint, tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    assert write_output(store, path) == (0, 0)
    table = pq.read_table(path)
    assert table.num_rows == 0
    assert table.schema.names == SPEC_COLUMNS
    assert table.schema.field("attempts").type == pa.int32()


def test_rewrite_replaces_the_previous_output(store: Checkpoint, tmp_path: Path) -> None:
    add_rows(store, [(0, "a", "pending", None)])
    path = tmp_path / "out.parquet"
    assert written(store, path).column("status").to_pylist() == ["pending"]
    finish(store, 0, completion=Completion(content="x"))
    assert written(store, path).column("status").to_pylist() == ["ok"]


def test_failed_rename_leaves_old_output_and_no_temp_file(
    store: Checkpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_rows(store, [(0, "a", "pending", None)])
    path = tmp_path / "out.parquet"
    write_output(store, path)
    before = path.read_bytes()
    finish(store, 0, completion=Completion(content="new"))

    def refuse(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(results.os, "replace", refuse)
    with pytest.raises(OSError, match="No space left"):
        write_output(store, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if "parquet" in p.name) == ["out.parquet"]


def test_failure_mid_stream_leaves_old_output_and_no_temp_file(
    store: Checkpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_rows(store, [(i, f"r{i}", "pending", None) for i in range(4)])
    path = tmp_path / "out.parquet"
    write_output(store, path)
    before = path.read_bytes()
    real_pages = store.result_pages

    def pages_then_fail(page: int = 4096) -> Iterator[ResultPage]:
        it = real_pages(page=page)
        yield next(it)
        raise RuntimeError("database went away")

    monkeypatch.setattr(store, "result_pages", pages_then_fail)
    with pytest.raises(RuntimeError, match="went away"):
        write_output(store, path, page_rows=2)
    assert path.read_bytes() == before
    leftovers = [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]
    assert leftovers == []
    assert [name for name in os.listdir(tmp_path) if "parquet" in name] == ["out.parquet"]


@pytest.mark.parametrize(
    ("values", "kind"),
    [
        (["a", None, "", "é ✓ \n"], pa.string()),
        ([0, None, -5, 2**63 - 1, -(2**63)], pa.int64()),
        ([1, 7, None], pa.int32()),
        ([0.1, None, 1e-310, 0.30000000000000004, 3.0, float("inf"), -0.0], pa.float64()),
        ([True, False, None], pa.bool_()),
        ([None, None], pa.float64()),
        ([], pa.int64()),
    ],
)
def test_columns_are_built_exactly_without_pa_array(values: list[Any], kind: pa.DataType) -> None:
    column = results._arrow_column(values, kind)
    assert column.type == kind
    assert column.to_pylist() == values


def test_strings_past_one_arrow_array_are_split_not_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Arrow's limit is 2 GiB a string array; StringBuilder silently drops what passes it.
    monkeypatch.setattr(results, "STRING_ARRAY_BYTES", 100)
    values = [f"value {i:02d} " * 2 for i in range(20)] + [None]
    column = results._arrow_column(values, pa.string())
    assert isinstance(column, pa.ChunkedArray)
    assert column.num_chunks > 1
    assert column.to_pylist() == values


def test_temp_files_of_a_killed_writer_are_cleaned_up(store: Checkpoint, tmp_path: Path) -> None:
    add_rows(store, [(0, "a", "done", None)])
    path = tmp_path / "out.parquet"
    gone = _a_dead_pid()
    stale = tmp_path / f".out.parquet.{gone}.tmp"
    stale.write_bytes(b"half a file")
    live = tmp_path / f".out.parquet.{os.getppid()}.tmp"  # a live process's: kept
    live.write_bytes(b"in progress")
    other = tmp_path / ".other.parquet.1.tmp"
    other.write_bytes(b"not ours")
    write_output(store, path)
    assert not stale.exists()
    assert live.exists() and other.exists()
    assert pq.read_table(path).num_rows == 1


def _a_dead_pid() -> int:
    proc = subprocess.Popen(["true"])  # noqa: S603, S607
    proc.wait()
    return proc.pid
