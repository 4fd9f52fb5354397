"""batchrun/store.py: the SQLite checkpoint and its writer thread."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchrun import store as store_mod
from batchrun.errors import CheckpointError, CheckpointWriteError, DatasetError
from batchrun.store import ITEM_COLUMNS, SCHEMA_VERSION, CheckpointWriter, Store

# Long enough that nothing is committed by the timer during a test: commits seen in these
# tests come from flush(), update_now() or close().
NO_TIMER = 3600.0
# A guard, not a timing assertion: an update_now that never commits fails instead of hanging.
GUARD_S = 30.0


def item(idx: int, row_id: str | None = None, state: str = "pending", **kw: Any) -> tuple:
    values = {
        "idx": idx,
        "row_id": row_id if row_id is not None else f"r{idx}",
        "loc": kw.pop("loc", f"in.jsonl:{idx + 1}"),
        "state": state,
        "messages": '[{"role":"user","content":"hi"}]',
        "overrides": None,
        "extra": None,
        "est_tokens": 5,
        "error": None,
        "request_hash": None,
    }
    values.update(kw)
    return tuple(values[c] for c in ITEM_COLUMNS)


def set_columns(path: Path, idx: int, **columns: Any) -> None:
    """Put a row into a given state the way a finished run would have left it."""
    conn = sqlite3.connect(path)
    with conn:
        sets = ", ".join(f"{name}=?" for name in columns)
        conn.execute(f"UPDATE items SET {sets} WHERE idx=?", (*columns.values(), idx))
    conn.close()


def select(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    return tmp_path / "job.checkpoint.sqlite"


@pytest.fixture
def store(ckpt: Path) -> Iterator[Store]:
    s = Store.create(ckpt)
    yield s
    s.close()


@pytest.fixture
def writer(store: Store, ckpt: Path) -> Iterator[CheckpointWriter]:
    w = CheckpointWriter(ckpt, interval=NO_TIMER)
    yield w
    w.close()


# ---------------------------------------------------------------- create / open


def test_item_columns_order() -> None:
    assert ITEM_COLUMNS == (
        "idx",
        "row_id",
        "loc",
        "state",
        "messages",
        "overrides",
        "extra",
        "est_tokens",
        "error",
        "request_hash",
    )


def test_insert_stores_values_in_item_column_order(store: Store, ckpt: Path) -> None:
    row = (3, "id3", "f:4", "invalid", "[]", '{"seed":1}', '{"a":1}', 9, "bad", "h")
    store.insert_items([row])
    got = select(ckpt, f"SELECT {','.join(ITEM_COLUMNS)} FROM items")
    assert got == [row]


def test_create_then_open_round_trip(ckpt: Path) -> None:
    s = Store.create(ckpt)
    s.set_meta("fingerprint", "abc")
    s.set_json("settings", {"rpm": 5, "params": {"seed": 1}})
    s.insert_items([item(0), item(1, state="invalid", error="in.jsonl:2: bad")])
    s.close()

    again = Store.open(ckpt)
    try:
        assert again.get_meta("fingerprint") == "abc"
        assert again.get_json("settings") == {"rpm": 5, "params": {"seed": 1}}
        assert again.get_meta("schema_version") == str(SCHEMA_VERSION)
        assert again.get_meta("missing") is None
        assert again.get_json("missing", default=[]) == []
        assert again.row_count() == 2
        assert again.counts() == {"pending": 1, "invalid": 1}
    finally:
        again.close()


def test_checkpoint_uses_wal(store: Store, ckpt: Path) -> None:
    assert select(ckpt, "PRAGMA journal_mode") == [("wal",)]


def test_create_replaces_an_existing_checkpoint(ckpt: Path) -> None:
    s = Store.create(ckpt)
    s.insert_items([item(0), item(1)])
    s.close()
    s = Store.create(ckpt)
    try:
        assert s.row_count() == 0
    finally:
        s.close()


def test_create_makes_parent_directories(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "ck.sqlite"
    Store.create(path).close()
    assert path.is_file()


def test_open_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint"):
        Store.open(tmp_path / "nothing.sqlite")


def test_open_non_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.sqlite"
    path.write_text("just some text, certainly not a database\n" * 50)
    with pytest.raises(CheckpointError) as info:
        Store.open(path)
    assert str(path) in str(info.value)
    assert "not a batchrun checkpoint" in str(info.value)


def test_open_foreign_sqlite_db(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE people (name TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(CheckpointError, match="not a batchrun checkpoint"):
        Store.open(path)


def test_open_foreign_sqlite_db_with_a_meta_table(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    conn.commit()
    conn.close()
    with pytest.raises(CheckpointError, match="not a batchrun checkpoint"):
        Store.open(path)


def test_open_checkpoint_from_newer_version(ckpt: Path) -> None:
    s = Store.create(ckpt)
    s.set_meta("schema_version", str(SCHEMA_VERSION + 1))
    s.close()
    with pytest.raises(CheckpointError) as info:
        Store.open(ckpt)
    assert "newer" in str(info.value)
    assert str(SCHEMA_VERSION + 1) in str(info.value)


# ---------------------------------------------------------------- duplicate ids


def test_duplicate_id_within_one_batch_names_both_locations(store: Store) -> None:
    rows = [item(0, "a", loc="x.jsonl:1"), item(1, "b"), item(2, "a", loc="x.jsonl:3")]
    with pytest.raises(DatasetError) as info:
        store.insert_items(rows)
    message = str(info.value)
    assert "x.jsonl:3" in message
    assert "x.jsonl:1" in message
    assert "'a'" in message
    assert store.row_count() == 0


def test_duplicate_id_across_batches_names_both_locations(store: Store) -> None:
    store.insert_items([item(0, "a", loc="one.jsonl:1")])
    with pytest.raises(DatasetError) as info:
        store.insert_items([item(1, "b", loc="two.jsonl:1"), item(2, "a", loc="two.jsonl:2")])
    message = str(info.value)
    assert "two.jsonl:2" in message
    assert "one.jsonl:1" in message
    # The failed batch is rolled back as a whole; the first batch stands.
    assert store.row_count() == 1


def test_unique_ids_across_batches_are_fine(store: Store) -> None:
    store.insert_items([item(0), item(1)])
    store.insert_items([item(2), item(3)])
    assert store.row_count() == 4


# ---------------------------------------------------------------- resume


def test_prepare_resume_returns_inflight_rows_to_pending(store: Store, ckpt: Path) -> None:
    store.insert_items([item(i) for i in range(4)])
    set_columns(ckpt, 0, state="inflight", request_id="x", response="{}", location="http://l")
    set_columns(ckpt, 1, state="polling", request_id="req-1")
    set_columns(ckpt, 2, state="done", content="answer")
    assert store.prepare_resume(retry_failed=False) == 1
    got = select(ckpt, "SELECT idx, state, request_id, response, location FROM items ORDER BY idx")
    assert got == [
        (0, "pending", None, None, None),
        (1, "polling", "req-1", None, None),
        (2, "done", None, None, None),
        (3, "pending", None, None, None),
    ]


def test_prepare_resume_keeps_failed_rows_without_retry_failed(store: Store, ckpt: Path) -> None:
    store.insert_items([item(0)])
    set_columns(ckpt, 0, state="failed", error="HTTP 422: bad", status_code=422)
    assert store.prepare_resume(retry_failed=False) == 0
    assert select(ckpt, "SELECT state, error FROM items") == [("failed", "HTTP 422: bad")]


def test_prepare_resume_retry_failed_makes_failed_rows_pending(store: Store, ckpt: Path) -> None:
    store.insert_items([item(0), item(1), item(2)])
    set_columns(ckpt, 0, state="failed", error="HTTP 422: bad", status_code=422, finished_at=1.0)
    set_columns(ckpt, 1, state="inflight")
    set_columns(ckpt, 2, state="invalid", error="in.jsonl:3: no prompt")
    assert store.prepare_resume(retry_failed=True) == 2
    got = select(ckpt, "SELECT state, error, status_code, finished_at FROM items ORDER BY idx")
    assert got == [
        ("pending", None, None, None),
        ("pending", None, None, None),
        ("invalid", "in.jsonl:3: no prompt", None, None),
    ]


# ---------------------------------------------------------------- reads


def test_counts_and_totals(store: Store, ckpt: Path) -> None:
    store.insert_items([item(i) for i in range(4)])
    set_columns(ckpt, 0, state="done", prompt_tokens=10, completion_tokens=5, total_tokens=15)
    set_columns(ckpt, 1, state="done", prompt_tokens=3, completion_tokens=2, total_tokens=5)
    set_columns(ckpt, 0, attempts=2)
    set_columns(ckpt, 1, attempts=1)
    set_columns(ckpt, 2, state="failed", attempts=6)
    set_columns(ckpt, 3, state="done", prompt_tokens=100, completion_tokens=50, reused=1)
    assert store.counts() == {"done": 3, "failed": 1}
    assert store.totals() == {
        "prompt_tokens": 113,
        "completion_tokens": 57,
        "total_tokens": 20,
        "attempts": 9,
        "rows": 4,
        "reused": 1,
        "bought_prompt_tokens": 13,  # the reused row was bought by an earlier job
        "bought_completion_tokens": 7,
    }


def test_totals_of_empty_checkpoint_are_zero(store: Store) -> None:
    assert store.counts() == {}
    assert store.totals() == {
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "total_tokens": 0,
        "attempts": 0,
        "rows": 0,
        "reused": 0,
        "bought_prompt_tokens": 0,
        "bought_completion_tokens": 0,
    }


def test_pending_request_ids_lists_polling_and_fetched_in_order(store: Store, ckpt: Path) -> None:
    store.insert_items([item(i) for i in range(5)])
    set_columns(ckpt, 3, state="polling", request_id="req-3")
    set_columns(ckpt, 1, state="fetched", request_id="req-1")
    set_columns(ckpt, 0, state="done", request_id="req-0")
    set_columns(ckpt, 2, state="polling")  # no id: nothing to list
    assert store.pending_request_ids() == [("r1", "req-1"), ("r3", "req-3")]
    assert store.pending_request_ids(limit=1) == [("r1", "req-1")]


def test_failure_causes_most_common_first(store: Store, ckpt: Path) -> None:
    store.insert_items([item(i) for i in range(6)])
    columns = {row[1] for row in select(ckpt, "PRAGMA table_info(items)")}
    extra422 = {"cause": "HTTP 422"} if "cause" in columns else {}
    extra500 = {"cause": "HTTP 500"} if "cause" in columns else {}
    for idx in (0, 1, 2):
        set_columns(
            ckpt, idx, state="failed", status_code=422, error="HTTP 422: too long", **extra422
        )
    set_columns(
        ckpt, 3, state="failed", status_code=500, error="HTTP 500: attempts ran out", **extra500
    )
    set_columns(ckpt, 4, state="invalid", error="in.jsonl:5: no prompt")
    causes = store.failure_causes()
    assert [n for _, n in causes] == [3, 1]
    assert "HTTP 422" in causes[0][0]
    assert "HTTP 500" in causes[1][0]
    assert all("no prompt" not in text for text, _ in causes)
    limited = store.failure_causes(limit=1)
    assert len(limited) == 1
    assert "HTTP 422" in limited[0][0]


def test_work_page_filters_states_in_input_order(store: Store, ckpt: Path) -> None:
    store.insert_items([item(i) for i in range(6)])
    set_columns(ckpt, 1, state="done")
    set_columns(ckpt, 3, state="polling", request_id="req-3", attempts=1, first_submit_at=5.0)
    page = store.work_page(-1, 10, ("pending", "polling"))
    assert [row[0] for row in page] == [0, 2, 3, 4, 5]
    assert page[2] == (
        3,
        "r3",
        '[{"role":"user","content":"hi"}]',
        None,
        5,
        1,
        "req-3",
        5.0,
        None,
        None,
    )
    assert [row[0] for row in store.work_page(-1, 10, ("polling",))] == [3]


def test_work_page_pages_with_after_idx(store: Store) -> None:
    store.insert_items([item(i) for i in range(7)])
    first = store.work_page(-1, 3, ("pending",))
    second = store.work_page(first[-1][0], 3, ("pending",))
    third = store.work_page(second[-1][0], 3, ("pending",))
    assert [[r[0] for r in page] for page in (first, second, third)] == [
        [0, 1, 2],
        [3, 4, 5],
        [6],
    ]
    assert store.work_page(6, 3, ("pending",)) == []


def test_iter_results_pages_in_input_order(store: Store) -> None:
    # Ids that sort against input order, inserted out of order and in two batches.
    store.insert_items([item(4, "a"), item(0, "e"), item(2, "c")])
    store.insert_items([item(1, "d"), item(3, "b")])
    pages = list(store.iter_results(page=2))
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [row[0] for page in pages for row in page] == [0, 1, 2, 3, 4]
    assert [row[1] for page in pages for row in page] == ["e", "d", "c", "b", "a"]


def test_iter_results_of_empty_checkpoint(store: Store) -> None:
    assert list(store.iter_results()) == []


# ---------------------------------------------------------------- CheckpointWriter


def test_writer_merges_updates_of_a_row_into_one_commit(
    store: Store, writer: CheckpointWriter, ckpt: Path
) -> None:
    store.insert_items([item(0), item(1)])
    writer.update(0, {"state": "inflight", "attempts": 1})
    writer.update(0, {"state": "polling", "request_id": "req-9"})
    writer.update(1, {"state": "inflight"})
    writer.update(0, {"state": "done", "content": "4", "total_tokens": 12})
    writer.flush()
    assert writer.commits == 1
    assert writer.error is None
    got = select(ckpt, "SELECT idx, state, attempts, request_id, content, total_tokens FROM items")
    assert got == [(0, "done", 1, "req-9", "4", 12), (1, "inflight", 0, None, None, None)]


def test_writer_commits_are_visible_to_a_second_store(
    store: Store, writer: CheckpointWriter, ckpt: Path
) -> None:
    store.insert_items([item(0)])
    writer.update(0, {"state": "done", "prompt_tokens": 3})
    writer.flush()
    other = Store.open(ckpt)
    try:
        assert other.counts() == {"done": 1}
        assert other.totals()["prompt_tokens"] == 3
    finally:
        other.close()


def test_flush_with_nothing_queued_returns(writer: CheckpointWriter) -> None:
    writer.flush(timeout=30)
    assert writer.commits == 0
    assert writer.error is None


def test_update_now_is_committed_when_it_returns(
    store: Store, writer: CheckpointWriter, ckpt: Path
) -> None:
    store.insert_items([item(0), item(1)])

    async def main() -> None:
        writer.update(1, {"state": "polling", "request_id": "req-1"})
        update = writer.update_now(0, {"state": "fetched", "response": '{"raw":1}'})
        await asyncio.wait_for(update, GUARD_S)

    asyncio.run(main())
    # No flush(): update_now itself waited for the commit, and it took earlier updates along.
    got = select(ckpt, "SELECT idx, state, response, request_id FROM items ORDER BY idx")
    assert got == [(0, "fetched", '{"raw":1}', None), (1, "polling", None, "req-1")]


def test_close_commits_what_was_queued(store: Store, ckpt: Path) -> None:
    store.insert_items([item(0)])
    w = CheckpointWriter(ckpt, interval=NO_TIMER)
    w.update(0, {"state": "done", "content": "bye"})
    w.close()
    assert select(ckpt, "SELECT state, content FROM items") == [("done", "bye")]


def test_write_error_on_bad_column_is_reported(
    store: Store, writer: CheckpointWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.insert_items([item(0)])
    monkeypatch.setattr(store_mod, "UPDATABLE", store_mod.UPDATABLE | {"no_such_column"})
    writer.update(0, {"no_such_column": 1})
    with pytest.raises(CheckpointWriteError, match="no_such_column"):
        writer.flush()
    assert isinstance(writer.error, sqlite3.Error)
    with pytest.raises(CheckpointWriteError):
        writer.update(0, {"state": "done"})


def test_write_error_on_dropped_table_is_reported(
    store: Store, writer: CheckpointWriter, ckpt: Path
) -> None:
    store.insert_items([item(0)])
    conn = sqlite3.connect(ckpt)
    conn.execute("DROP TABLE items")
    conn.commit()
    conn.close()
    writer.update(0, {"state": "done"})
    with pytest.raises(CheckpointWriteError):
        writer.flush()
    assert writer.error is not None
    with pytest.raises(CheckpointWriteError, match="checkpoint write failed"):
        writer.update(0, {"state": "done"})


def test_update_now_raises_on_write_error(store: Store, writer: CheckpointWriter) -> None:
    store.insert_items([item(0)])

    async def main() -> None:
        await asyncio.wait_for(writer.update_now(0, {"content": {"not": "bindable"}}), GUARD_S)

    with pytest.raises(CheckpointWriteError):
        asyncio.run(main())
    assert writer.error is not None

    async def again() -> None:
        await asyncio.wait_for(writer.update_now(0, {"state": "done"}), GUARD_S)

    with pytest.raises(CheckpointWriteError):
        asyncio.run(again())


def test_failed_batch_leaves_earlier_commits_standing(
    store: Store, writer: CheckpointWriter, ckpt: Path
) -> None:
    store.insert_items([item(0), item(1)])
    writer.update(0, {"state": "done", "content": "kept"})
    writer.flush()
    writer.update(1, {"content": {"not": "bindable"}})
    with pytest.raises(CheckpointWriteError):
        writer.flush()
    assert select(ckpt, "SELECT idx, state, content FROM items ORDER BY idx") == [
        (0, "done", "kept"),
        (1, "pending", None),
    ]


def test_a_failing_write_reaches_the_run_instead_of_killing_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    Store.create(path).close()
    writer = CheckpointWriter(path, interval=60)
    try:
        writer.update(0, {"no_such_column": 1})  # refused inside the writer thread
        with pytest.raises(CheckpointWriteError):
            writer.flush(timeout=10)
        assert writer.error is not None
        with pytest.raises(CheckpointWriteError):
            writer.update(0, {"state": "done"})
    finally:
        writer.close()
