"""batchrun/checkpoint/: the SQLite checkpoint, its migrations and its writer thread.

Checkpoints are built through the real API (tests/ledger.py: ingest, then lifecycle
transitions through the real writer). Raw SQL appears only to read columns a storage property
is about, to build a schema-1 checkpoint as the previous release wrote it (the migration
tests), and to damage a file on purpose.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchrun import codec
from batchrun.checkpoint import (
    FLUSH_INTERVAL_S,
    SCHEMA_VERSION,
    AssetCache,
    Checkpoint,
    CheckpointReader,
    CheckpointWriter,
    DuplicateRowId,
    FailureCause,
    IngestRow,
    PendingId,
    ReusedAnswer,
    Totals,
    checkpoint_for,
    open_reader,
    output_for,
    remove_checkpoint,
    schema,
    upgrade,
)
from batchrun.checkpoint.commit import Commit, Names
from batchrun.checkpoint.locate import default_checkpoint, locate_job
from batchrun.checkpoint.values import decode_extra
from batchrun.dataset import InputFile
from batchrun.errors import CheckpointError, CheckpointWriteError, ConfigError, DatasetError
from batchrun.intake import ingest as intake_ingest
from batchrun.lifecycle import (
    EDGES,
    UNFINISHED,
    Accepted,
    Fetched,
    Finished,
    Forgotten,
    Lifecycle,
    Located,
    Outcome,
    RowState,
    Submitted,
    Transition,
    WorkItem,
)
from batchrun.lock import CheckpointLock
from batchrun.payloads import PreparedRow
from batchrun.records import Completion
from tests.ledger import MESSAGES, Row, apply, ingest, transitions

S = RowState
NOW = 1_700_000_000.0
# Long enough that the timer commits nothing during a test: the commits seen here come from
# flush(), awaited transitions, urgent batches or close().
NO_TIMER = 3600.0
# A guard, not a timing assertion: an awaited write that never commits fails instead of hanging.
GUARD_S = 30.0
UUID_A = "ee487bbc-4433-4d7e-b00e-6528b1abb561"
UUID_B = "7b8fba13-f522-4912-aa7d-0c73a48a0c74"
ANSWER = '{"id": "chatcmpl-1", "object": "chat.completion", "choices": []}'
FIXTURE = Path(__file__).parent / "fixtures" / "checkpoint-v1" / "out"
REPO = Path(__file__).resolve().parent.parent


def key(n: int) -> bytes:
    """A request key (the sha256 of a request body) for request `n`."""
    return hashlib.sha256(f"request {n}".encode()).digest()


def answered(content: str = "ok", **fields: Any) -> Completion:
    return Completion(**({"content": content, "finish_reason": "stop", "model": "m"} | fields))


def make(
    path: Path, rows: Sequence[Row], *, keep_answer_bodies: bool = False, **settings: Any
) -> Checkpoint:
    """ledger.build: a checkpoint holding `rows` in their states (left open)."""
    checkpoint = Checkpoint.create(path)
    checkpoint.set_json("settings", settings)
    checkpoint.set_json("identity", {})
    ingest(checkpoint, rows)
    apply(
        path, [m for r in rows for m in transitions(r, NOW)], keep_answer_bodies=keep_answer_bodies
    )
    return checkpoint


def peek(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Raw columns, on a connection of the test's own."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def outputs(reader: CheckpointReader, page: int = 4096) -> dict[str, dict[str, Any]]:
    """Every row's output values (result_pages), by row id."""
    rows: dict[str, dict[str, Any]] = {}
    for p in reader.result_pages(page):
        names = [f.name for f in dataclasses.fields(p)]
        for i in range(len(p)):
            row = {name: getattr(p, name)[i] for name in names}
            rows[row["row_id"]] = row
    return rows


def work(reader: CheckpointReader, *states: RowState) -> dict[str, WorkItem]:
    return {
        item.row_id: item
        for page in reader.work_pages(states or UNFINISHED, page=3)
        for item in page
    }


def extras(reader: CheckpointReader, row: dict[str, Any]) -> dict[str, Any]:
    names = [name for name, _ in reader.extra_columns()]
    return {k: v for k, v in decode_extra(row["extra"], names).items() if v is not None}


def totals_and_recount(path: Path) -> tuple[list[Any], list[Any]]:
    """The `totals` row as kept, and as upgrade.recount_totals sums it afresh (on a copy)."""
    source = sqlite3.connect(path)
    copy = sqlite3.connect(":memory:")
    try:
        source.backup(copy)
        kept = copy.execute("SELECT * FROM totals").fetchall()
        upgrade.recount_totals(copy)
        return kept, copy.execute("SELECT * FROM totals").fetchall()
    finally:
        source.close()
        copy.close()


def assert_totals_kept(path: Path) -> None:
    kept, recounted = totals_and_recount(path)
    assert kept == recounted


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, GUARD_S))


# Memory-backed when there is one: every commit is an fsync, and these tests make hundreds.
FAST_DIR = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


@pytest.fixture
def tmp() -> Iterator[Path]:
    """A fresh folder for a test's files: tmp_path, but in memory where it can be."""
    with tempfile.TemporaryDirectory(dir=FAST_DIR, prefix="batchrun-test-") as folder:
        yield Path(folder)


@pytest.fixture
def ckpt(tmp: Path) -> Path:
    return tmp / "job.parquet.checkpoint.sqlite"


@pytest.fixture
def checkpoint(ckpt: Path) -> Iterator[Checkpoint]:
    c = Checkpoint.create(ckpt)
    c.set_json("identity", {})
    yield c
    c.close()


@pytest.fixture
def writer(checkpoint: Checkpoint, ckpt: Path) -> Iterator[CheckpointWriter]:
    w = CheckpointWriter(ckpt, interval=NO_TIMER)
    yield w
    w.close()


# ---------------------------------------------------------------- create / open


def test_create_then_open_round_trip(ckpt: Path) -> None:
    c = Checkpoint.create(ckpt)
    c.set_meta("fingerprint", "abc")
    c.set_json("settings", {"rpm": 5, "params": {"seed": 1}})
    ingest(c, [Row(0), Row(1, state=S.INVALID, error="in.jsonl:2: bad")])
    c.close()

    again = Checkpoint.open(ckpt)
    try:
        assert again.get_meta("fingerprint") == "abc"
        assert again.get_json("settings") == {"rpm": 5, "params": {"seed": 1}}
        assert again.get_meta("schema_version") == str(SCHEMA_VERSION)
        assert again.get_meta("missing") is None
        assert again.get_json("missing", default=[]) == []
        assert again.row_count() == 2
        assert again.counts() == {S.PENDING: 1, S.INVALID: 1}
    finally:
        again.close()


def test_a_new_checkpoint_is_made_by_the_migrations(checkpoint: Checkpoint, ckpt: Path) -> None:
    assert SCHEMA_VERSION == schema.MIGRATIONS[-1].version == 5
    assert [m.version for m in schema.MIGRATIONS] == [1, 2, 3, 4, 5]
    recorded = peek(ckpt, "SELECT version, name FROM migrations ORDER BY version")
    assert recorded == [(m.version, m.name) for m in schema.MIGRATIONS]
    assert peek(ckpt, "PRAGMA application_id") == [(schema.APP_ID,)]
    assert checkpoint.get_meta("migration") is None  # schema 1's marker, gone with it
    tables = {name for (name,) in peek(ckpt, "SELECT name FROM sqlite_master WHERE type='table'")}
    expected = {
        "items", "live", "results", "names", "totals", "meta", "assets", "migrations", "runs",
        "validations",
    }  # fmt: skip
    assert tables == expected
    assert checkpoint.totals() == Totals()
    assert peek(ckpt, "SELECT count(*) FROM totals") == [(1,)]


def test_checkpoint_uses_wal(checkpoint: Checkpoint, ckpt: Path) -> None:
    assert peek(ckpt, "PRAGMA journal_mode") == [("wal",)]


def test_create_replaces_an_existing_checkpoint(ckpt: Path) -> None:
    make(ckpt, [Row(0, state=S.DONE), Row(1)]).close()
    c = Checkpoint.create(ckpt)
    try:
        assert c.row_count() == 0
        assert c.totals() == Totals()
    finally:
        c.close()


def test_create_makes_parent_directories(tmp: Path) -> None:
    path = tmp / "a" / "b" / "ck.sqlite"
    Checkpoint.create(path).close()
    assert path.is_file()


def test_remove_checkpoint_removes_its_wal_files(ckpt: Path) -> None:
    c = Checkpoint.create(ckpt)  # left open: -wal and -shm exist
    try:
        assert Path(f"{ckpt}-wal").exists()
        remove_checkpoint(ckpt)
    finally:
        c.close()
    remove_checkpoint(ckpt)
    assert not any(Path(f"{ckpt}{s}").exists() for s in ("", "-wal", "-shm"))
    remove_checkpoint(ckpt)  # nothing there: no error


def test_open_missing_file(tmp: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint"):
        Checkpoint.open(tmp / "nothing.sqlite")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        Checkpoint.open(tmp)  # a directory


def test_open_non_sqlite_file(tmp: Path) -> None:
    path = tmp / "notes.sqlite"
    path.write_text("just some text, certainly not a database\n" * 50)
    with pytest.raises(CheckpointError) as info:
        Checkpoint.open(path)
    assert str(path) in str(info.value)
    assert "not a batchrun checkpoint" in str(info.value)


def test_open_empty_file(tmp: Path) -> None:
    path = tmp / "empty.sqlite"
    path.touch()
    with pytest.raises(CheckpointError, match="not a batchrun checkpoint") as info:
        Checkpoint.open(path)
    assert str(path) in str(info.value)
    assert path.stat().st_size == 0  # not made into a checkpoint


def _foreign_db(path: Path, *statements: str) -> Path:
    conn = sqlite3.connect(path)
    for statement in statements:
        conn.execute(statement)
    conn.commit()
    conn.close()
    return path


def test_open_foreign_sqlite_db_and_leave_it_untouched(tmp: Path) -> None:
    path = _foreign_db(tmp / "other.db", "CREATE TABLE people (name TEXT)")
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match="not a batchrun checkpoint") as info:
        Checkpoint.open(path)
    assert str(path) in str(info.value)
    # Looked at, not touched: still in its own journal mode, not switched to WAL.
    assert path.read_bytes() == before
    assert peek(path, "PRAGMA journal_mode") == [("delete",)]
    assert not Path(f"{path}-wal").exists()


def test_open_foreign_sqlite_db_with_a_meta_table(tmp: Path) -> None:
    path = _foreign_db(
        tmp / "other.db",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "INSERT INTO meta VALUES ('schema_version', '1')",
    )
    with pytest.raises(CheckpointError, match="not a batchrun checkpoint"):
        Checkpoint.open(path)


def test_open_damaged_checkpoint_without_a_schema_version(ckpt: Path) -> None:
    Checkpoint.create(ckpt).close()
    _foreign_db(ckpt, "DELETE FROM meta WHERE key = 'schema_version'")  # damage, on purpose
    with pytest.raises(CheckpointError, match="without a schema version"):
        Checkpoint.open(ckpt)


def test_open_checkpoint_from_newer_version(ckpt: Path) -> None:
    c = Checkpoint.create(ckpt)
    c.set_meta("schema_version", str(SCHEMA_VERSION + 1))
    c.close()
    with pytest.raises(CheckpointError) as info:
        Checkpoint.open(ckpt)
    message = str(info.value)
    assert "newer" in message
    assert str(SCHEMA_VERSION + 1) in message
    assert str(ckpt) in message


def test_open_reader_refuses_a_newer_schema(ckpt: Path) -> None:
    c = Checkpoint.create(ckpt)
    c.set_meta("schema_version", str(SCHEMA_VERSION + 1))
    c.close()
    with pytest.raises(CheckpointError, match="newer"):
        open_reader(ckpt).close()


def test_open_reader_refuses_other_files(tmp: Path) -> None:
    path = _foreign_db(tmp / "other.db", "CREATE TABLE people (name TEXT)")
    with pytest.raises(CheckpointError, match="not a batchrun checkpoint"):
        open_reader(path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        open_reader(tmp / "missing.sqlite")


# ---------------------------------------------------------------- ingest and duplicate ids


def ingest_row(idx: int, row_id: str, loc: str | None = None) -> IngestRow:
    prepared = PreparedRow(row_id=row_id, loc=loc or f"in.jsonl:{idx + 1}", messages=MESSAGES)
    return IngestRow(idx, prepared, None)


def test_duplicate_id_within_one_batch(checkpoint: Checkpoint) -> None:
    rows = [ingest_row(0, "a", "x.jsonl:1"), ingest_row(1, "b"), ingest_row(2, "a", "x.jsonl:3")]
    with pytest.raises(DuplicateRowId) as info:
        checkpoint.insert_rows(rows, [])
    dup = info.value
    assert (dup.row_id, dup.first_idx, dup.loc) == ("a", 0, "x.jsonl:3")
    assert checkpoint.row_count() == 0


def test_duplicate_id_across_batches(checkpoint: Checkpoint) -> None:
    checkpoint.insert_rows([ingest_row(0, "z"), ingest_row(1, "a", "one.jsonl:2")], [])
    with pytest.raises(DuplicateRowId) as info:
        checkpoint.insert_rows(
            [ingest_row(2, "b", "two.jsonl:1"), ingest_row(3, "a", "two.jsonl:2")], []
        )
    dup = info.value
    assert (dup.row_id, dup.first_idx, dup.loc) == ("a", 1, "two.jsonl:2")
    # The failed batch is rolled back as a whole; the first batch stands, and the
    # checkpoint takes more rows afterwards.
    assert checkpoint.row_count() == 2
    checkpoint.insert_rows([ingest_row(2, "b"), ingest_row(3, "c")], [])
    assert checkpoint.counts() == {S.PENDING: 4}


def test_unique_ids_across_batches_are_fine(checkpoint: Checkpoint) -> None:
    ingest(checkpoint, [Row(0), Row(1)])
    ingest(checkpoint, [Row(2), Row(3)])
    assert checkpoint.row_count() == 4


def test_duplicate_id_error_names_both_places(checkpoint: Checkpoint, tmp: Path) -> None:
    """What intake makes of DuplicateRowId: both input locations, before anything is sent."""
    one = tmp / "one.jsonl"
    two = tmp / "two.jsonl"
    one.write_text(json.dumps({"id": "a", "prompt": "x"}) + "\n")
    two.write_text("\n".join(json.dumps({"id": i, "prompt": "y"}) for i in ("b", "a")) + "\n")
    with pytest.raises(DatasetError) as info:
        intake_ingest(checkpoint, [InputFile(one, "one.jsonl"), InputFile(two, "two.jsonl")], None)
    message = str(info.value)
    assert "two.jsonl:2" in message
    assert "one.jsonl:1" in message
    assert "'a'" in message


def test_ingest_stores_what_each_row_sends(checkpoint: Checkpoint) -> None:
    ingest(
        checkpoint,
        [
            Row(0, overrides='{"seed":1}', est_tokens=9, request_hash=key(0)),
            Row(1, state=S.INVALID, error="in.jsonl:2: no prompt", est_tokens=0),
        ],
    )
    [item] = checkpoint.work_items(-1, 10, [S.PENDING])
    assert item == WorkItem(0, "r0", MESSAGES, '{"seed":1}', 9, S.PENDING)
    row = outputs(checkpoint)
    assert row["r0"]["request_hash"] == key(0).hex()
    assert row["r1"]["state"] is S.INVALID
    assert row["r1"]["error"] == "in.jsonl:2: no prompt"


def test_templated_rows_are_stored_without_messages_and_rebuilt(
    checkpoint: Checkpoint, ckpt: Path
) -> None:
    checkpoint.set_json("identity", {"prompt_template": "What is {q}?", "system_prompt": "Be {t}."})
    expected = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
    ]
    row = PreparedRow(
        "t0", "in.jsonl:1", codec.dumps(expected), extra={"q": "2+2", "t": "brief"}, templated=True
    )
    checkpoint.insert_rows([IngestRow(0, row, None)], ["q", "t"])
    checkpoint.set_json("extra_columns", [["q", "str"], ["t", "str"]])
    assert peek(ckpt, "SELECT messages FROM items") == [(None,)]
    [item] = checkpoint.work_items(-1, 10, [S.PENDING])
    assert codec.loads(item.messages) == expected


# ---------------------------------------------------------------- between runs: prepare_resume


def test_prepare_resume_returns_inflight_rows_to_pending_keeping_attempts(ckpt: Path) -> None:
    c = make(
        ckpt,
        [
            Row(0, state=S.INFLIGHT, attempts=2),
            Row(1, state=S.POLLING, request_id="req-1"),
            Row(2, state=S.DONE, completion=answered("kept")),
            Row(3),
            Row(4, state=S.FETCHED, request_id="req-4", answer=ANSWER),
            Row(5, state=S.FETCHED, request_id="req-5", location="https://x/5"),
        ],
    )
    try:
        assert c.prepare_resume(retry_failed=False) == 1
        items = work(c)
        assert items["r0"].state is S.PENDING
        assert (items["r0"].attempts, items["r0"].first_submit_at) == (2, NOW - 1.0)
        assert items["r0"].request_id is None
        assert (items["r1"].state, items["r1"].request_id) == (S.POLLING, "req-1")
        assert (items["r4"].state, items["r4"].fetched) == (S.FETCHED, ANSWER)
        assert (items["r5"].location, items["r5"].request_id) == ("https://x/5", "req-5")
        assert (items["r3"].state, items["r3"].attempts) == (S.PENDING, 0)
        assert outputs(c)["r2"]["content"] == "kept"
        assert c.counts() == {S.PENDING: 2, S.POLLING: 1, S.FETCHED: 2, S.DONE: 1}
        assert c.prepare_resume(retry_failed=False) == 0  # nothing left to reset
    finally:
        c.close()
    assert_totals_kept(ckpt)


def test_prepare_resume_keeps_failed_rows_without_retry_failed(ckpt: Path) -> None:
    c = make(ckpt, [Row(0, state=S.FAILED, error="HTTP 422: bad", status_code=422)])
    try:
        assert c.prepare_resume(retry_failed=False) == 0
        row = outputs(c)["r0"]
        assert (row["state"], row["error"], row["status_code"]) == (S.FAILED, "HTTP 422: bad", 422)
    finally:
        c.close()


def test_prepare_resume_retry_failed_makes_failed_rows_pending(ckpt: Path) -> None:
    usage = Completion(prompt_tokens=7, completion_tokens=0, total_tokens=7)  # a rare error body
    c = make(
        ckpt,
        [
            Row(0, state=S.FAILED, error="HTTP 422: bad", status_code=422, attempts=3,
                completion=usage, raw='{"detail":"bad"}'),
            Row(1, state=S.INFLIGHT),
            Row(2, state=S.INVALID, error="in.jsonl:3: no prompt"),
            Row(3, state=S.DONE, completion=answered(prompt_tokens=1, completion_tokens=1)),
        ],
    )  # fmt: skip
    try:
        assert c.totals().prompt_tokens == 8
        assert c.prepare_resume(retry_failed=True) == 2
        items = work(c)
        assert (items["r0"].state, items["r0"].attempts) == (S.PENDING, 3)
        assert items["r0"].first_submit_at == NOW - 1.0
        rows = outputs(c)
        assert [rows[r]["state"] for r in ("r0", "r1", "r2", "r3")] == [
            S.PENDING, S.PENDING, S.INVALID, S.DONE
        ]  # fmt: skip
        assert (rows["r0"]["error"], rows["r0"]["status_code"], rows["r0"]["body"]) == (
            None, None, None
        )  # fmt: skip
        assert rows["r2"]["error"] == "in.jsonl:3: no prompt"
        assert c.failure_causes() == []
        totals = c.totals()
        # Attempts stay counted, and so do the tokens the failed answer bought (set aside
        # in `validations`, so the totals still sum afresh from the ledger).
        assert (totals.prompt_tokens, totals.attempts) == (8, 5)
        assert totals.bought_prompt_tokens == 8
    finally:
        c.close()
    assert_totals_kept(ckpt)


def test_offline_failed_rows_are_retried_by_a_run_that_is_not_offline(ckpt: Path) -> None:
    c = make(ckpt, [Row(0), Row(1), Row(2, state=S.FAILED, error="HTTP 422: no")])
    try:
        assert c.fail_pending("not in cache (--offline sends nothing)", "offline") == 2
        # Another offline run leaves them failed ...
        assert c.prepare_resume(retry_failed=False, offline=True) == 0
        assert c.counts() == {S.FAILED: 3}
        # ... a run that sends sends them; a failure of another cause stays.
        assert c.prepare_resume(retry_failed=False, offline=False) == 2
        assert c.counts() == {S.PENDING: 2, S.FAILED: 1}
        assert [f.cause for f in c.failure_causes()] == ["HTTP 422"]
    finally:
        c.close()
    assert_totals_kept(ckpt)
    # Never sent, so their first send is attempt 1 and nothing of them stays in `live`
    # once they finish (the writer deletes no `live` row for a first send).
    assert peek(ckpt, "SELECT idx FROM live") == []
    done = Outcome(S.DONE, Completion(content="ok"))
    w = CheckpointWriter(ckpt, interval=NO_TIMER)
    try:
        w.apply([Submitted(0, 1, NOW), Finished(0, done, 1, NOW, NOW)])
        w.flush()
    finally:
        w.close()
    assert peek(ckpt, "SELECT idx FROM live") == []


def test_retry_failed_in_an_offline_run_retries_every_failed_row(ckpt: Path) -> None:
    c = make(ckpt, [Row(0), Row(1, state=S.FAILED, error="HTTP 422: no")])
    try:
        c.fail_pending("not in cache", "offline")
        assert c.prepare_resume(retry_failed=True, offline=True) == 2
        assert c.counts() == {S.PENDING: 2}
    finally:
        c.close()


# ---------------------------------------------------------------- between runs: reuse


@pytest.fixture
def earlier(tmp: Path) -> Path:
    """A finished earlier job whose answers a later one may reuse (bodies kept)."""
    path = tmp / "earlier.parquet.checkpoint.sqlite"
    make(
        path,
        [
            Row(0, state=S.DONE, request_hash=key(0), request_id=UUID_A, raw=ANSWER,
                completion=Completion(content="four", reasoning_content="2+2",
                                      finish_reason="stop", prompt_tokens=3, completion_tokens=1,
                                      total_tokens=4, model="m-a", ttft_s=0.5),
                latency_s=2.0),
            Row(1, state=S.FAILED, request_hash=key(1), error="HTTP 422: no"),
            Row(2, state=S.DONE, request_hash=key(2), request_id="req-2",
                completion=answered("six", prompt_tokens=5, completion_tokens=2)),
            Row(3, state=S.POLLING, request_hash=key(3)),
        ],
        keep_answer_bodies=True,
    ).close()  # fmt: skip
    return path


def later(path: Path) -> Checkpoint:
    """A job asking some of the same questions: r0 was sent before a crash (attempts 1)."""
    c = make(
        path,
        [
            Row(0, state=S.INFLIGHT, request_hash=key(0)),
            Row(1, request_hash=key(1)),
            Row(2, state=S.POLLING, request_hash=key(2)),
            Row(3, request_hash=key(3)),
            Row(4, request_hash=key(2)),
            Row(5, request_hash=key(9)),
            Row(6),
        ],
    )
    c.prepare_resume(retry_failed=False)
    return c


def test_reuse_from_a_checkpoint_answers_pending_rows(earlier: Path, ckpt: Path) -> None:
    c = later(ckpt)
    try:
        assert c.reuse_from_checkpoint(earlier) == 2
        rows = outputs(c)
        r0 = rows["r0"]
        assert (r0["state"], r0["reused"], r0["content"], r0["reasoning_content"]) == (
            S.DONE, True, "four", "2+2"
        )  # fmt: skip
        assert (r0["model"], r0["finish_reason"], r0["request_id"]) == ("m-a", "stop", UUID_A)
        assert (r0["prompt_tokens"], r0["completion_tokens"], r0["total_tokens"]) == (3, 1, 4)
        assert (r0["latency_s"], r0["ttft_s"], r0["status_code"]) == (2.0, 0.5, 200)
        assert r0["attempts"] == 1  # what this job spent on it before the crash
        assert r0["body"] is None  # bodies only for jobs that write them
        assert r0["error"] is None
        assert (rows["r4"]["content"], rows["r4"]["request_id"]) == ("six", "req-2")
        # Only pending rows, only done answers, only the same request.
        assert rows["r1"]["state"] is S.PENDING  # the earlier one failed
        assert rows["r2"]["state"] is S.POLLING  # a request id of its own to poll
        assert rows["r3"]["state"] is S.PENDING  # the earlier one is not done
        assert rows["r5"]["state"] is S.PENDING and rows["r6"]["state"] is S.PENDING
        assert "r0" not in work(c)
        totals = c.totals()
        assert (totals.reused, totals.prompt_tokens, totals.bought_prompt_tokens) == (2, 8, 0)
        assert totals.attempts == 2  # r0 and r2 were sent; reuse sends nothing
        assert c.reuse_from_checkpoint(earlier) == 0  # nothing pending matches any more
    finally:
        c.close()
    assert_totals_kept(ckpt)


def test_reuse_keeps_bodies_when_asked(earlier: Path, ckpt: Path) -> None:
    c = later(ckpt)
    try:
        assert c.reuse_from_checkpoint(earlier, keep_bodies=True) == 2
        assert outputs(c)["r0"]["body"] == ANSWER
    finally:
        c.close()


def reused_answer(n: int, content: str, request_id: str | None = None) -> ReusedAnswer:
    return ReusedAnswer(
        key(n), content, None, None, "stop", 10, 5, 15, "m-o", request_id, 1.0, None, ANSWER
    )


def test_reuse_from_answers(ckpt: Path) -> None:
    c = later(ckpt)
    try:
        batches = [
            [reused_answer(0, "first", UUID_B)],
            [reused_answer(0, "second"), reused_answer(9, "nine", "req-9"), reused_answer(1, "x")],
        ]
        assert c.reuse_from_answers(iter(batches)) == 3
        rows = outputs(c)
        assert (rows["r0"]["content"], rows["r0"]["request_id"]) == ("first", UUID_B)
        assert (rows["r5"]["content"], rows["r5"]["request_id"]) == ("nine", "req-9")
        assert rows["r1"]["reused"] and rows["r1"]["body"] is None
        assert rows["r2"]["state"] is S.POLLING
        assert c.totals().reused == 3
        assert c.totals().bought_completion_tokens == 0
    finally:
        c.close()
    assert_totals_kept(ckpt)


def test_reuse_from_answers_keeps_bodies_when_asked(ckpt: Path) -> None:
    c = later(ckpt)
    try:
        assert c.reuse_from_answers([[reused_answer(1, "x")]], keep_bodies=True) == 1
        assert outputs(c)["r1"]["body"] == ANSWER
    finally:
        c.close()


def test_reuse_refuses_what_is_not_a_checkpoint_it_can_read(ckpt: Path, tmp: Path) -> None:
    c = later(ckpt)
    try:
        foreign = _foreign_db(tmp / "other.db", "CREATE TABLE people (name TEXT)")
        with pytest.raises(ConfigError, match="not a batchrun checkpoint"):
            c.reuse_from_checkpoint(foreign)
        newer = tmp / "newer.sqlite"
        n = Checkpoint.create(newer)
        n.set_meta("schema_version", str(SCHEMA_VERSION + 1))
        n.close()
        with pytest.raises(ConfigError, match="newer"):
            c.reuse_from_checkpoint(newer)
        # Nothing changed, and the checkpoint is still usable.
        assert c.counts() == {S.PENDING: 6, S.POLLING: 1}
        assert c.reuse_from_answers([[reused_answer(1, "x")]]) == 1
    finally:
        c.close()


def test_reuse_refuses_a_file_that_is_not_sqlite(ckpt: Path, tmp: Path) -> None:
    c = later(ckpt)
    try:
        text = tmp / "notes.jsonl"
        text.write_text('{"not": "a database"}\n' * 100)
        with pytest.raises(ConfigError, match="not a batchrun checkpoint"):
            c.reuse_from_checkpoint(text)
    finally:
        c.close()


# ---------------------------------------------------------------- between runs: fail_pending


def test_fail_pending_fails_every_row_still_to_send(ckpt: Path) -> None:
    c = make(
        ckpt,
        [
            Row(0),
            Row(1, state=S.INFLIGHT, attempts=2),
            Row(2, state=S.POLLING),
            Row(3, state=S.DONE),
            Row(4, state=S.INVALID, error="in.jsonl:5: no prompt"),
        ],
    )
    try:
        c.prepare_resume(retry_failed=False, offline=True)  # r1 back to pending, attempts kept
        assert c.fail_pending("not in cache (--offline sends nothing)", "offline") == 2
        rows = outputs(c)
        assert [rows[f"r{i}"]["state"] for i in range(5)] == [
            S.FAILED, S.FAILED, S.POLLING, S.DONE, S.INVALID
        ]  # fmt: skip
        assert rows["r1"]["attempts"] == 2
        assert rows["r0"]["error"] == "not in cache (--offline sends nothing)"
        assert c.failure_causes() == [
            FailureCause("offline", 2, "not in cache (--offline sends nothing)")
        ]
        [page] = list(c.timeline())
        assert page.cause == ["offline", "offline", None]
        assert c.fail_pending("again", "offline") == 0
    finally:
        c.close()
    assert_totals_kept(ckpt)


# ---------------------------------------------------------------- reads


def test_counts_and_totals(ckpt: Path, tmp: Path) -> None:
    c = make(
        ckpt,
        [
            Row(0, state=S.DONE, attempts=2,
                completion=answered(prompt_tokens=10, completion_tokens=5, total_tokens=15)),
            Row(1, state=S.DONE,
                completion=answered(prompt_tokens=3, completion_tokens=2, total_tokens=5)),
            Row(2, state=S.FAILED, attempts=6, error="HTTP 500: attempts ran out"),
            Row(3, request_hash=key(3)),
        ],
    )  # fmt: skip
    try:
        answer = ReusedAnswer(key(3), "r", None, None, None, 100, 50, None, None, None, None, None)
        assert c.reuse_from_answers([[answer]]) == 1
        assert c.counts() == {S.DONE: 3, S.FAILED: 1}
        assert c.totals() == Totals(
            rows=4,
            prompt_tokens=113,
            completion_tokens=57,
            total_tokens=20,
            attempts=9,
            reused=1,
            bought_prompt_tokens=13,  # the reused row was bought by an earlier job
            bought_completion_tokens=7,
        )
        assert c.todo() == 0
    finally:
        c.close()
    assert_totals_kept(ckpt)


def test_counts_and_totals_of_an_empty_checkpoint(checkpoint: Checkpoint) -> None:
    assert checkpoint.counts() == {}
    assert checkpoint.totals() == Totals()
    assert checkpoint.row_count() == 0
    assert checkpoint.todo() == 0


def test_counts_every_state(ckpt: Path) -> None:
    states = [S.PENDING, S.INFLIGHT, S.POLLING, S.FETCHED, S.DONE, S.FAILED, S.INVALID]
    rows = [Row(i, state=s, answer=ANSWER, error="bad") for i, s in enumerate(states * 2)]
    rows += [Row(14 + i, state=S.DONE) for i in range(5)]
    c = make(ckpt, rows)
    try:
        expected = dict.fromkeys(states, 2)
        expected[S.DONE] = 7
        assert c.counts() == expected
        assert c.todo() == 8
        assert c.row_count() == 19
    finally:
        c.close()


def test_pending_request_ids_lists_polling_and_fetched_in_order(ckpt: Path) -> None:
    c = make(
        ckpt,
        [
            Row(0, state=S.DONE, request_id="req-0"),
            Row(1, state=S.FETCHED, request_id="req-1", answer=ANSWER),
            Row(2, state=S.INFLIGHT),
            Row(3, state=S.POLLING, request_id="req-3"),
            Row(4),
        ],
    )
    try:
        apply(ckpt, [Located(2, None, "https://x/2")])  # fetched, but no id to list
        assert c.pending_request_ids() == [PendingId("r1", "req-1"), PendingId("r3", "req-3")]
        assert c.pending_request_ids(limit=1) == [PendingId("r1", "req-1")]
    finally:
        c.close()


def failed(idx: int, cause: str | None, error: str) -> list[Transition]:
    outcome = Outcome(S.FAILED, error=error, cause=cause)
    return [Submitted(idx, 1, NOW), Finished(idx, outcome, 1, NOW, NOW)]


def test_failure_causes_most_common_first(checkpoint: Checkpoint, ckpt: Path) -> None:
    ingest(
        checkpoint, [Row(i) for i in range(6)] + [Row(6, state=S.INVALID, error="in.jsonl:7: x")]
    )
    apply(
        ckpt,
        failed(0, "HTTP 500", "HTTP 500: attempts ran out")
        + failed(1, "HTTP 422", "HTTP 422: too long")
        + failed(2, "HTTP 422", "HTTP 422: too long")
        + failed(3, "HTTP 422", "HTTP 422: bad role")
        + failed(4, None, "something odd"),
    )
    causes = checkpoint.failure_causes()
    assert causes == [
        FailureCause("HTTP 422", 3, "HTTP 422: too long"),
        FailureCause("HTTP 500", 1, "HTTP 500: attempts ran out"),
        FailureCause("unknown", 1, "something odd"),
    ]
    assert causes[0].label == "HTTP 422 (e.g. HTTP 422: too long)"
    assert checkpoint.failure_causes(limit=1) == causes[:1]


def test_failure_causes_limit_takes_the_first_of_the_full_list(
    checkpoint: Checkpoint, ckpt: Path
) -> None:
    ingest(checkpoint, [Row(i) for i in range(4)])
    apply(
        ckpt,
        failed(0, "TransportError", "reset")
        + failed(1, "TransportError", "reset")
        + failed(2, "HTTP 422", "HTTP 422: no")
        + failed(3, "HTTP 422", "HTTP 422: no"),
    )
    everything = checkpoint.failure_causes()
    assert [c.cause for c in everything] == ["HTTP 422", "TransportError"]
    assert checkpoint.failure_causes(limit=1) == everything[:1]


def test_work_pages_filter_states_in_input_order(ckpt: Path) -> None:
    c = make(
        ckpt,
        [Row(0), Row(1, state=S.DONE), Row(2), Row(3, state=S.POLLING, request_id="req-3")]
        + [Row(4, state=S.FETCHED, answer=ANSWER), Row(5)],
    )
    try:
        page = c.work_items(-1, 10, [S.PENDING, S.POLLING])
        assert [item.idx for item in page] == [0, 2, 3, 5]
        assert page[2] == WorkItem(
            idx=3, row_id="r3", messages=MESSAGES, overrides=None, est_tokens=5,
            state=S.POLLING, attempts=1, first_submit_at=NOW - 1.0, request_id="req-3",
            fetched=None, location=None,
        )  # fmt: skip
        assert [item.idx for item in c.work_items(-1, 10, [S.POLLING, S.FETCHED])] == [3, 4]
        assert c.work_items(-1, 10, [S.FETCHED])[0].fetched == ANSWER
        assert c.work_items(-1, 10, [S.DONE]) == []  # done rows are not work
    finally:
        c.close()


def test_work_pages_page_after_an_input_position(checkpoint: Checkpoint) -> None:
    ingest(checkpoint, [Row(i) for i in range(7)])
    first = checkpoint.work_items(-1, 3, [S.PENDING])
    second = checkpoint.work_items(first[-1].idx, 3, [S.PENDING])
    third = checkpoint.work_items(second[-1].idx, 3, [S.PENDING])
    assert [[r.idx for r in page] for page in (first, second, third)] == [[0, 1, 2], [3, 4, 5], [6]]
    assert checkpoint.work_items(6, 3, [S.PENDING]) == []
    pages = list(checkpoint.work_pages([S.PENDING], page=3))
    assert [[r.idx for r in page] for page in pages] == [[0, 1, 2], [3, 4, 5], [6]]


def test_result_pages_in_input_order(checkpoint: Checkpoint) -> None:
    # Ids that sort against input order, inserted out of order and in two batches.
    ingest(checkpoint, [Row(4, "a"), Row(0, "e"), Row(2, "c")])
    ingest(checkpoint, [Row(1, "d"), Row(3, "b")])
    pages = list(checkpoint.result_pages(page=2))
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [i for p in pages for i in p.idx] == [0, 1, 2, 3, 4]
    assert [r for p in pages for r in p.row_id] == ["e", "d", "c", "b", "a"]


def test_result_pages_of_an_empty_checkpoint(checkpoint: Checkpoint) -> None:
    assert list(checkpoint.result_pages()) == []
    assert list(checkpoint.timeline()) == []
    assert list(checkpoint.work_pages(UNFINISHED, page=10)) == []


def test_result_pages_of_rows_not_finished(ckpt: Path) -> None:
    """Unfinished rows show what the output shows for them: attempts and a request id."""
    c = make(
        ckpt,
        [Row(0), Row(1, state=S.POLLING, request_id=UUID_A, attempts=3), Row(2, state=S.INFLIGHT)],
    )
    try:
        rows = outputs(c)
        assert (rows["r0"]["attempts"], rows["r0"]["request_id"]) == (0, None)
        assert (rows["r1"]["attempts"], rows["r1"]["request_id"]) == (3, UUID_A)
        assert (rows["r2"]["state"], rows["r2"]["attempts"]) == (S.INFLIGHT, 1)
        assert all(not r["reused"] and r["content"] is None for r in rows.values())
    finally:
        c.close()


def test_timeline_pages_finished_rows_in_input_order(ckpt: Path) -> None:
    c = make(
        ckpt,
        [Row(0, state=S.DONE), Row(1), Row(2, state=S.FAILED, error="HTTP 422: no")]
        + [Row(3, state=S.INVALID, error="x"), Row(4, state=S.DONE, request_hash=key(4))],
    )
    try:
        pages = list(c.timeline(page=2))
        assert [p.state for p in pages] == [[S.DONE, S.FAILED], [S.DONE]]
        assert pages[0].cause == [None, "HTTP 422"]
        assert pages[0].error == [None, "HTTP 422: no"]
        assert pages[0].finished_at == [NOW, NOW]
        assert pages[1].reused == [False]
    finally:
        c.close()


def test_request_figures(checkpoint: Checkpoint) -> None:
    ingest(
        checkpoint,
        [
            Row(0, overrides='{"max_tokens": 100, "model": "m2"}', est_tokens=7),
            Row(1, est_tokens=3),
            Row(2, state=S.INVALID, error="in.jsonl:3: no prompt", est_tokens=0),
        ],
    )
    figures = checkpoint.request_figures(1000, "m1")
    assert (figures.rows, figures.invalid, figures.prompt_tokens_est) == (3, 1, 10)
    assert figures.completion_tokens_max == 1100
    assert figures.models == {"m1": 1, "m2": 1}
    assert checkpoint.invalid_causes() == [FailureCause("no prompt", 1, "in.jsonl:3")]


# ---------------------------------------------------------------- the partial index


class Recording:
    """A connection that remembers the statements (and their parameters) run on it."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.statements: list[tuple[str, Any]] = []

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        self.statements.append((sql, params))
        return self.conn.execute(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


def _answers(c: Checkpoint) -> None:
    c.reuse_from_answers([[reused_answer(0, "a")]])


@pytest.mark.parametrize(
    "query",
    [
        pytest.param(lambda c: c.counts(), id="counts"),
        pytest.param(lambda c: c.todo(), id="todo"),
        pytest.param(lambda c: c.work_items(-1, 100, [S.PENDING]), id="work-pending"),
        pytest.param(lambda c: c.work_items(-1, 100, [S.POLLING, S.FETCHED]), id="work-held"),
        pytest.param(lambda c: list(c.work_pages([S.PENDING, S.INFLIGHT], 2)), id="work-pages"),
        pytest.param(lambda c: c.failure_causes(), id="failure-causes"),
        pytest.param(lambda c: c.pending_request_ids(), id="pending-ids"),
        pytest.param(lambda c: c.prepare_resume(retry_failed=False), id="resume"),
        pytest.param(lambda c: c.prepare_resume(retry_failed=True), id="retry-failed"),
        pytest.param(lambda c: c.fail_pending("x", "offline"), id="fail-pending"),
        pytest.param(_answers, id="reuse"),
    ],
)
def test_counting_dispatch_and_resume_read_only_the_open_rows_index(ckpt: Path, query: Any) -> None:
    """Their cost is what is left to do: no plan reads every row of `items` (done rows are
    most of a big job), only the partial index of the rest, or rows by their key."""
    states = [S.DONE] * 6 + [S.PENDING, S.INFLIGHT, S.POLLING, S.FETCHED, S.FAILED, S.INVALID]
    rows = [Row(i, state=s, error="e", answer=ANSWER, request_hash=key(i % 2))
            for i, s in enumerate(states)]  # fmt: skip
    make(ckpt, rows).close()
    conn = sqlite3.connect(ckpt, isolation_level=None)
    recording = Recording(conn)
    try:
        query(Checkpoint(ckpt, recording))  # type: ignore[arg-type]
        reads = [(sql, p) for sql, p in recording.statements if re.search(r"\bitems\b", sql)]
        used = False
        for sql, params in reads:
            plan = [d for *_, d in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
            on_items = [d for d in plan if re.match(r"(SCAN|SEARCH) items\b", d)]
            used = used or any("items_open" in d for d in on_items)
            for line in on_items:  # the open rows' index, a row by its key, or max(idx)
                ok = "items_open" in line or line.endswith("(rowid=?)") or line == "SEARCH items"
                assert ok, (sql, plan)
        assert used
    finally:
        conn.close()


def test_counts_of_many_done_rows_are_right(ckpt: Path) -> None:
    """counts() reads only open rows and takes done as the rest: that must add up."""
    rows = [Row(i, state=S.DONE if i % 3 else S.PENDING) for i in range(30)]
    c = make(ckpt, rows)
    try:
        assert c.counts() == {S.DONE: 20, S.PENDING: 10}
        assert sum(c.counts().values()) == c.row_count() == c.totals().rows == 30
    finally:
        c.close()


# ---------------------------------------------------------------- storage


@pytest.mark.parametrize("keep", [False, True])
def test_done_rows_keep_no_raw_response_unless_asked(ckpt: Path, keep: bool) -> None:
    c = make(ckpt, [Row(0, state=S.DONE, raw=ANSWER, completion=answered("4"))],
             keep_answer_bodies=keep)  # fmt: skip
    try:
        assert peek(ckpt, "SELECT body FROM results") == [(ANSWER if keep else None,)]
        row = outputs(c)["r0"]
        assert (row["content"], row["body"]) == ("4", ANSWER if keep else None)
    finally:
        c.close()


def test_failed_rows_keep_their_error_body(ckpt: Path) -> None:
    body = '{"type":"about:blank","status":422,"detail":"too long"}'
    c = make(ckpt, [Row(0, state=S.FAILED, raw=body, error="HTTP 422: too long")])
    try:
        assert peek(ckpt, "SELECT body FROM results") == [(body,)]
        assert outputs(c)["r0"]["body"] == body
    finally:
        c.close()


def test_request_hashes_are_32_byte_blobs(checkpoint: Checkpoint, ckpt: Path) -> None:
    ingest(checkpoint, [Row(0, request_hash=key(0)), Row(1)])
    assert peek(ckpt, "SELECT typeof(request_hash), length(request_hash) FROM items") == [
        ("blob", 32),
        ("null", None),
    ]
    assert [r["request_hash"] for r in outputs(checkpoint).values()] == [key(0).hex(), None]


@pytest.mark.parametrize(
    ("request_id", "stored"),
    [
        (UUID_A, "blob"),
        (UUID_A.upper(), "text"),  # not the canonical form: kept as it came
        ("{" + UUID_A + "}", "text"),
        (UUID_A.replace("-", ""), "text"),
        ("x" * 36, "text"),
        ("req-1", "text"),
        ("", "text"),
    ],
)
def test_request_ids_read_back_identical(ckpt: Path, request_id: str, stored: str) -> None:
    c = make(ckpt, [Row(0, state=S.DONE, request_id=request_id), Row(1, request_hash=key(1))])
    try:
        c.reuse_from_answers([[dataclasses.replace(reused_answer(1, "r"), request_id=request_id)]])
        got = peek(ckpt, "SELECT typeof(request_id), length(request_id) FROM results")
        size = 16 if stored == "blob" else len(request_id.encode())
        assert got == [(stored, size)] * 2
        assert [r["request_id"] for r in outputs(c).values()] == [request_id] * 2
    finally:
        c.close()


def test_repeated_names_are_stored_once(ckpt: Path) -> None:
    rows = [Row(i, state=S.DONE, completion=answered(model="m-big")) for i in range(5)]
    rows += [Row(5 + i, state=S.FAILED, error="HTTP 422: no", cause="HTTP 422") for i in range(3)]
    c = make(ckpt, rows)
    try:
        assert sorted(n for (n,) in peek(ckpt, "SELECT name FROM names")) == [
            "HTTP 422", "m-big", "stop"
        ]  # fmt: skip
        assert peek(ckpt, "SELECT count(DISTINCT model), count(model) FROM results") == [(1, 5)]
        assert {r["model"] for r in outputs(c).values()} == {"m-big", None}
    finally:
        c.close()


def test_a_row_finishing_changes_only_its_one_byte_state(ckpt: Path) -> None:
    c = make(ckpt, [Row(0, extra={"topic": "a"}, request_hash=key(0))])
    c.close()
    columns = "messages, overrides, extra, est_tokens, request_hash, error"
    before = peek(ckpt, f"SELECT {columns} FROM items")
    apply(ckpt, transitions(Row(0, state=S.DONE, completion=answered("x" * 500)), NOW))
    assert peek(ckpt, f"SELECT {columns} FROM items") == before
    states = peek(ckpt, "SELECT typeof(state), state FROM items")
    assert states == [("integer", schema.STATE_CODES[S.DONE])]
    # Codes are never 0 or 1 (SQLite stores those in no bytes): every state takes one byte.
    assert all(1 < code < 128 for code in schema.STATE_CODES.values())
    assert len(set(schema.STATE_CODES.values())) == len(RowState)


def test_passthrough_values_are_stored_once_per_column_name(
    checkpoint: Checkpoint, ckpt: Path
) -> None:
    ingest(
        checkpoint,
        [
            Row(0, extra={"topic": "a", "n": 1, "tags": ["x"]}),
            Row(1, extra={"n": 2, "topic": None, "tags": None}),  # trailing nulls left out
            Row(2, extra={"topic": "c", "n": None, "tags": {"k": [1, None]}}),
            Row(3),
        ],
    )
    assert checkpoint.extra_columns() == [["topic", "str"], ["n", "int"], ["tags", "json"]]
    assert [e for (e,) in peek(ckpt, "SELECT extra FROM items ORDER BY idx")] == [
        '["a",1,["x"]]', "[null,2]", '["c",null,{"k":[1,null]}]', None
    ]  # fmt: skip
    rows = outputs(checkpoint)
    assert extras(checkpoint, rows["r0"]) == {"topic": "a", "n": 1, "tags": ["x"]}
    assert extras(checkpoint, rows["r2"]) == {"topic": "c", "tags": {"k": [1, None]}}


# ---------------------------------------------------------------- the writer thread


def test_writer_folds_a_rows_transitions_into_one_commit(
    checkpoint: Checkpoint, writer: CheckpointWriter, ckpt: Path
) -> None:
    ingest(checkpoint, [Row(0), Row(1)])
    writer.submitted(Submitted(0, 1, NOW))
    writer.submitted(Submitted(1, 1, NOW))
    writer.submitted(Submitted(0, 2, NOW))  # sent again after a retryable error
    writer.accepted(Accepted(1, "req-9"))
    outcome = Outcome(S.DONE, answered("4", total_tokens=12), request_id="req-0", status_code=200)
    writer.finished(Finished(0, outcome, 2, NOW, NOW + 1))
    writer.flush()
    assert writer.commits == 1
    assert writer.error is None
    rows = outputs(checkpoint)
    assert (rows["r0"]["state"], rows["r0"]["request_id"], rows["r0"]["content"]) == (
        S.DONE, "req-0", "4"
    )  # fmt: skip
    assert (rows["r0"]["attempts"], rows["r0"]["total_tokens"]) == (2, 12)
    assert (rows["r1"]["state"], rows["r1"]["attempts"]) == (S.POLLING, 1)
    assert rows["r1"]["request_id"] == "req-9"
    assert peek(ckpt, "SELECT idx FROM live") == [(1,)]  # a finished row leaves `live`
    assert checkpoint.totals().attempts == 3
    assert_totals_kept(ckpt)


AGAIN = [Accepted(0, "first"), Forgotten(0), Submitted(0, 2, NOW - 5), Accepted(0, "second")]


@pytest.mark.parametrize("how", ["apply", "calls"])
def test_writer_keeps_the_order_of_a_rows_transitions_within_a_batch(
    checkpoint: Checkpoint, writer: CheckpointWriter, ckpt: Path, how: str
) -> None:
    ingest(checkpoint, [Row(0)])
    writer.apply([Submitted(0, 1, NOW - 5)])
    writer.flush()
    if how == "apply":
        writer.apply(AGAIN)
    else:
        writer.accepted(AGAIN[0])  # type: ignore[arg-type]
        writer.forgotten(AGAIN[1])  # type: ignore[arg-type]
        writer.submitted(AGAIN[2])  # type: ignore[arg-type]
        writer.accepted(AGAIN[3])  # type: ignore[arg-type]
    writer.flush()
    assert writer.commits == 2
    [item] = checkpoint.work_items(-1, 10, [S.POLLING])
    assert (item.request_id, item.attempts, item.first_submit_at) == ("second", 2, NOW - 5)
    assert checkpoint.totals().attempts == 2
    assert_totals_kept(ckpt)


def test_writer_forgets_a_stored_link_and_answer(
    checkpoint: Checkpoint, writer: CheckpointWriter
) -> None:
    ingest(checkpoint, [Row(0), Row(1)])
    writer.apply(
        [Submitted(0, 1, NOW), Located(0, "req-0", "https://x/0"), Fetched(0, ANSWER)]
        + [Submitted(1, 1, NOW), Accepted(1, "req-1"), Fetched(1, ANSWER), Forgotten(1)]
    )
    writer.flush()
    items = work(checkpoint)
    assert (items["r0"].state, items["r0"].request_id) == (S.FETCHED, "req-0")
    assert (items["r0"].location, items["r0"].fetched) == ("https://x/0", ANSWER)
    assert items["r1"].state is S.INFLIGHT
    assert (items["r1"].request_id, items["r1"].location, items["r1"].fetched) == (None,) * 3


def test_a_row_submitted_and_finished_in_one_batch(
    checkpoint: Checkpoint, writer: CheckpointWriter, ckpt: Path
) -> None:
    ingest(checkpoint, [Row(0), Row(1)])
    done = Outcome(S.DONE, answered(prompt_tokens=4, completion_tokens=6, total_tokens=10))
    writer.apply(
        [Submitted(0, 1, NOW), Submitted(0, 2, NOW), Finished(0, done, 2, NOW, NOW + 3)]
        + [Submitted(1, 1, NOW), Finished(1, Outcome(S.FAILED, error="x"), 1, NOW, NOW)]
    )
    writer.flush()
    assert checkpoint.counts() == {S.DONE: 1, S.FAILED: 1}
    assert peek(ckpt, "SELECT count(*) FROM live") == [(0,)]
    assert checkpoint.totals() == Totals(
        rows=2, prompt_tokens=4, completion_tokens=6, total_tokens=10, attempts=3,
        bought_prompt_tokens=4, bought_completion_tokens=6,
    )  # fmt: skip
    assert_totals_kept(ckpt)


def test_a_batch_larger_than_one_statement_is_written_whole(
    checkpoint: Checkpoint, writer: CheckpointWriter, ckpt: Path
) -> None:
    n = 512 + 64 + 8 + 1  # one statement of every size the writer uses
    ingest(checkpoint, [Row(i) for i in range(2 * n)])
    done = Outcome(S.DONE, answered(prompt_tokens=2, completion_tokens=1, total_tokens=3))
    changes: list[Transition] = []
    for i in range(n):
        changes += [Submitted(i, 1, NOW), Finished(i, done, 1, NOW, NOW)]
        changes += [Submitted(n + i, 1, NOW), Accepted(n + i, f"req-{i}")]
    writer.apply(changes)
    writer.flush()
    assert checkpoint.counts() == {S.DONE: n, S.POLLING: n}
    assert checkpoint.totals().total_tokens == 3 * n
    assert len(checkpoint.pending_request_ids(limit=10 * n)) == n
    assert_totals_kept(ckpt)


def test_nothing_is_committed_before_the_interval_unless_urgent(
    checkpoint: Checkpoint, writer: CheckpointWriter, ckpt: Path
) -> None:
    ingest(checkpoint, [Row(0), Row(1)])

    async def main() -> None:
        writer.submitted(Submitted(0, 1, NOW))
        writer.accepted(Accepted(0, "req-0"))
        writer.submitted(Submitted(1, 1, NOW))
        for _ in range(10):
            await asyncio.sleep(0)  # let the loop turn: the timer is an hour away
        assert writer.commits == 0
        assert checkpoint.counts() == {S.PENDING: 2}
        writer.handoff()  # the interval's end: everything gathered goes as one batch
        await asyncio.to_thread(writer.flush)

    run(main())
    assert writer.commits == 1
    assert checkpoint.counts() == {S.POLLING: 1, S.INFLIGHT: 1}


def test_fetched_is_committed_before_it_returns(
    checkpoint: Checkpoint, writer: CheckpointWriter, ckpt: Path
) -> None:
    ingest(checkpoint, [Row(0), Row(1)])
    writer.apply([Submitted(0, 1, NOW), Accepted(0, "req-0")])
    writer.flush()

    async def main() -> None:
        writer.submitted(Submitted(1, 1, NOW))  # gathered on the loop ...
        writer.accepted(Accepted(1, "req-1"))
        await writer.fetched(Fetched(0, '{"raw":1}'))  # ... and taken along, first

    run(main())
    # No flush(): the awaited write waited for its commit.
    reader = open_reader(ckpt)
    try:
        items = work(reader)
        assert (items["r0"].state, items["r0"].fetched) == (S.FETCHED, '{"raw":1}')
        assert (items["r1"].state, items["r1"].request_id) == (S.POLLING, "req-1")
    finally:
        reader.close()


def test_located_is_committed_before_it_returns(
    checkpoint: Checkpoint, writer: CheckpointWriter, ckpt: Path
) -> None:
    ingest(checkpoint, [Row(0)])

    async def main() -> None:
        writer.submitted(Submitted(0, 1, NOW))
        await writer.located(Located(0, "req-0", "https://x/large/0"))

    run(main())
    reader = open_reader(ckpt)
    try:
        [item] = reader.work_items(-1, 10, [S.FETCHED])
        assert (item.request_id, item.location, item.attempts) == ("req-0", "https://x/large/0", 1)
    finally:
        reader.close()


def test_transitions_from_outside_a_loop_wait_for_the_interval_too(
    checkpoint: Checkpoint, writer: CheckpointWriter
) -> None:
    ingest(checkpoint, [Row(i) for i in range(5)])
    for i in range(5):
        writer.submitted(Submitted(i, 1, NOW))  # five separate hand-overs ...
    writer.flush()
    assert writer.commits == 1  # ... one commit
    assert checkpoint.counts() == {S.INFLIGHT: 5}


def test_group_commit_while_the_disk_is_busy(
    checkpoint: Checkpoint, writer: CheckpointWriter, ckpt: Path
) -> None:
    """Urgent batches that queue up while a commit waits go into the next commit together."""
    ingest(checkpoint, [Row(i) for i in range(10)])
    busy = sqlite3.connect(ckpt, isolation_level=None)
    busy.execute("BEGIN IMMEDIATE")  # holds the write lock: the writer's first commit waits
    try:
        for i in range(10):
            writer.apply([Submitted(i, 1, NOW)])
    finally:
        busy.execute("ROLLBACK")
        busy.close()
    writer.flush()
    assert writer.commits <= 2
    assert checkpoint.counts() == {S.INFLIGHT: 10}
    assert checkpoint.totals().attempts == 10


def test_the_timer_hands_over_what_the_loop_gathered(checkpoint: Checkpoint, ckpt: Path) -> None:
    """One timer per interval, not one per transition; when it fires, the gathered batch goes
    to the thread (the test fires it itself: no waiting)."""
    ingest(checkpoint, [Row(0), Row(1)])
    w = CheckpointWriter(ckpt)
    timers: list[tuple[float, Any]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        real = loop.call_later

        def spy(delay: float, callback: Any, *args: Any) -> asyncio.TimerHandle:
            timers.append((delay, callback))
            return real(NO_TIMER, callback, *args)

        loop.call_later = spy  # type: ignore[method-assign]
        w.submitted(Submitted(0, 1, NOW))
        w.accepted(Accepted(0, "req-0"))
        w.submitted(Submitted(1, 1, NOW))
        assert [delay for delay, _ in timers] == [FLUSH_INTERVAL_S]
        timers[0][1]()  # the interval is over
        await asyncio.to_thread(w.flush)  # flush() commits only what was handed over
        w.submitted(Submitted(1, 2, NOW))  # the next interval has a timer of its own
        assert len(timers) == 2

    try:
        run(main())
        assert w.commits == 1
    finally:
        w.close()
    assert checkpoint.counts() == {S.POLLING: 1, S.INFLIGHT: 1}
    # SPEC.md: an answer is durable within 200 ms, a request id within a second.
    assert FLUSH_INTERVAL_S <= 0.2


def test_writer_commits_are_visible_to_another_connection(
    checkpoint: Checkpoint, writer: CheckpointWriter, ckpt: Path
) -> None:
    ingest(checkpoint, [Row(0)])
    outcome = Outcome(S.DONE, answered(prompt_tokens=3, model="m-1"))
    writer.apply([Submitted(0, 1, NOW), Finished(0, outcome, 1, NOW, NOW)])
    writer.flush()
    other = Checkpoint.open(ckpt)
    try:
        assert other.counts() == {S.DONE: 1}
        assert other.totals().prompt_tokens == 3
        assert outputs(other)["r0"]["model"] == "m-1"
    finally:
        other.close()


def test_flush_with_nothing_queued_returns(writer: CheckpointWriter) -> None:
    writer.flush(timeout=30)
    assert writer.commits == 0
    assert writer.error is None


def test_close_commits_what_was_queued(checkpoint: Checkpoint, ckpt: Path) -> None:
    ingest(checkpoint, [Row(0)])
    w = CheckpointWriter(ckpt, interval=NO_TIMER)
    w.submitted(Submitted(0, 1, NOW))
    w.finished(Finished(0, Outcome(S.DONE, answered("bye")), 1, NOW, NOW))
    w.close()
    assert outputs(checkpoint)["r0"]["content"] == "bye"


def unbindable(idx: int, model: str | None = None) -> Finished:
    """A transition SQLite cannot store (a dict for a text column): the commit fails."""
    completion = Completion(content={"not": "bindable"}, model=model)  # type: ignore[arg-type]
    return Finished(idx, Outcome(S.DONE, completion), 1, NOW, NOW)


def test_a_write_error_surfaces_in_flush_and_on_the_next_call(
    checkpoint: Checkpoint, writer: CheckpointWriter
) -> None:
    ingest(checkpoint, [Row(0)])
    writer.submitted(Submitted(0, 1, NOW))
    writer.finished(unbindable(0))
    with pytest.raises(CheckpointWriteError, match="checkpoint write failed"):
        writer.flush()
    assert isinstance(writer.error, sqlite3.Error)
    with pytest.raises(CheckpointWriteError):
        writer.submitted(Submitted(0, 2, NOW))
    with pytest.raises(CheckpointWriteError):
        writer.apply([Submitted(0, 2, NOW)])
    with pytest.raises(CheckpointWriteError):
        run(writer.fetched(Fetched(0, ANSWER)))
    assert checkpoint.counts() == {S.PENDING: 1}  # the failed batch left nothing behind


def test_write_error_on_a_dropped_table_is_reported(
    checkpoint: Checkpoint, writer: CheckpointWriter, ckpt: Path
) -> None:
    ingest(checkpoint, [Row(0)])
    _foreign_db(ckpt, "DROP TABLE live")  # damage, on purpose
    writer.submitted(Submitted(0, 1, NOW))
    with pytest.raises(CheckpointWriteError, match="live"):
        writer.flush(timeout=GUARD_S)
    assert writer.error is not None
    with pytest.raises(CheckpointWriteError, match="checkpoint write failed"):
        writer.submitted(Submitted(0, 1, NOW))


def test_an_awaited_write_raises_on_a_write_error(
    checkpoint: Checkpoint, writer: CheckpointWriter
) -> None:
    ingest(checkpoint, [Row(0)])
    with pytest.raises(CheckpointWriteError):
        run(writer.fetched(Fetched(0, object())))  # type: ignore[arg-type]
    assert writer.error is not None
    with pytest.raises(CheckpointWriteError):
        run(writer.located(Located(0, None, "https://x")))


def test_a_failed_batch_leaves_earlier_commits_standing(
    checkpoint: Checkpoint, writer: CheckpointWriter, ckpt: Path
) -> None:
    ingest(checkpoint, [Row(0), Row(1)])
    writer.apply(
        [Submitted(0, 1, NOW), Finished(0, Outcome(S.DONE, answered("kept")), 1, NOW, NOW)]
    )
    writer.flush()
    totals = checkpoint.totals()
    writer.submitted(Submitted(1, 1, NOW))
    writer.finished(unbindable(1))
    with pytest.raises(CheckpointWriteError):
        writer.flush()
    rows = outputs(checkpoint)
    assert (rows["r0"]["state"], rows["r0"]["content"]) == (S.DONE, "kept")
    assert (rows["r1"]["state"], rows["r1"]["attempts"]) == (S.PENDING, 0)
    assert checkpoint.totals() == totals
    assert_totals_kept(ckpt)


def test_flush_keeps_reporting_a_failed_commit(
    checkpoint: Checkpoint, writer: CheckpointWriter
) -> None:
    ingest(checkpoint, [Row(0)])
    # An urgent batch nobody awaits (as the timer's commits are): its failure must reach
    # the run's final flush, whichever commit the flush itself lands in.
    writer.apply([Submitted(0, 1, NOW), unbindable(0)])
    for _ in range(2):
        with pytest.raises(CheckpointWriteError):
            writer.flush()


def test_a_failing_write_reaches_the_run_instead_of_killing_the_writer(ckpt: Path) -> None:
    make(ckpt, [Row(0)]).close()
    w = CheckpointWriter(ckpt, interval=60)
    try:
        w.submitted(Submitted(0, 1, NOW))
        w.finished(unbindable(0))  # refused inside the writer thread
        with pytest.raises(CheckpointWriteError, match="checkpoint write failed"):
            w.flush(timeout=GUARD_S)  # not "writer stopped unexpectedly"
        assert w.error is not None
        with pytest.raises(CheckpointWriteError):
            w.submitted(Submitted(0, 1, NOW))
    finally:
        w.close()  # returns: the thread is alive and stops when asked


def test_a_failed_commit_forgets_the_names_it_added(checkpoint: Checkpoint, ckpt: Path) -> None:
    ingest(checkpoint, [Row(0)])
    conn = schema.connect(ckpt)
    try:
        names = Names(conn)
        bad = Commit()
        bad.add([Submitted(0, 1, NOW), unbindable(0, model="new-model")])
        with pytest.raises(sqlite3.Error):
            bad.write(conn, names, False)  # the name was inserted, then rolled back
        good = Commit()
        outcome = Outcome(S.DONE, answered(model="new-model"))
        good.add([Submitted(0, 1, NOW), Finished(0, outcome, 1, NOW, NOW)])
        good.write(conn, names, False)
    finally:
        conn.close()
    assert outputs(checkpoint)["r0"]["model"] == "new-model"


def test_writer_counts_each_submission_once(
    checkpoint: Checkpoint, writer: CheckpointWriter, ckpt: Path
) -> None:
    ingest(checkpoint, [Row(0), Row(1)])
    writer.apply([Submitted(0, 1, NOW), Submitted(0, 2, NOW), Submitted(1, 1, NOW)])
    writer.flush()
    writer.apply([Submitted(0, 3, NOW)])
    writer.flush()
    assert checkpoint.totals().attempts == 4
    assert_totals_kept(ckpt)


# ---------------------------------------------------------------- assets


def test_asset_ids_are_kept_in_the_checkpoint(checkpoint: Checkpoint, ckpt: Path) -> None:
    cache = AssetCache(ckpt)
    try:
        assert cache.get_now("ab" * 32) is None
        cache.put_now("ab" * 32, "asset-1", NOW)
        run(cache.put("cd" * 32, "asset-2", NOW + 1))
        assert run(cache.get("ab" * 32)) == ("asset-1", NOW)
    finally:
        cache.close()
    again = AssetCache(ckpt)
    try:
        assert again.get_now("cd" * 32) == ("asset-2", NOW + 1)
    finally:
        again.close()


# ---------------------------------------------------------------- migrations: schema 1


def v1(idx: int, row_id: str, state: str, **columns: Any) -> dict[str, Any]:
    """An `items` row as the previous release wrote it (schema 1)."""
    row = {"idx": idx, "row_id": row_id, "loc": f"in.jsonl:{idx + 1}", "state": state}
    return row | {"messages": MESSAGES, "est_tokens": 5} | columns


V1_ROWS = [
    v1(0, "p0", "pending", extra='{"topic":"a","n":0}', request_hash=key(0).hex()),
    # Sent, then the run died before the row went in flight: attempts kept.
    v1(1, "p1", "pending", attempts=2, first_submit_at=NOW - 50, request_hash=key(1).hex()),
    v1(2, "f2", "inflight", attempts=1, first_submit_at=NOW - 40, request_id="stale",
       location="http://old/link", response="{}"),
    v1(3, "w3", "polling", attempts=1, first_submit_at=NOW - 30, request_id=UUID_B,
       extra='{"n":3}'),
    v1(4, "a4", "fetched", attempts=1, first_submit_at=NOW - 20, request_id="req-4",
       response=ANSWER),
    v1(5, "l5", "fetched", attempts=3, first_submit_at=NOW - 10, request_id="req-5",
       location="https://x/large/5"),
    v1(6, "d6", "done", attempts=2, first_submit_at=NOW - 9, finished_at=NOW - 1,
       status_code=200, content="4", reasoning_content="2+2", tool_calls='[{"id":"t1"}]',
       finish_reason="stop", prompt_tokens=3, completion_tokens=10, total_tokens=13,
       model="m-a", latency_s=1.5, ttft_s=0.25, request_id=UUID_A, response=ANSWER,
       request_hash=key(6).hex(), extra='{"n":6,"topic":"b"}'),
    v1(7, "d7", "done", attempts=1, finished_at=NOW, status_code=200, content="x",
       finish_reason="length", prompt_tokens=7, completion_tokens=1, total_tokens=8,
       model="m-b", request_id=UUID_A.upper(), response=ANSWER),
    v1(8, "d8", "done", attempts=0, reused=1, finished_at=NOW, status_code=200,
       content="reused", finish_reason="stop", prompt_tokens=100, completion_tokens=50,
       total_tokens=150, model="m-a", request_id="req-8", response=ANSWER,
       request_hash=key(8).hex()),
    v1(9, "x9", "failed", attempts=6, first_submit_at=NOW - 5, finished_at=NOW,
       status_code=422, error="HTTP 422: too long", cause="HTTP 422",
       response='{"detail":"too long"}', prompt_tokens=2, completion_tokens=0, total_tokens=2),
    v1(10, "o10", "failed", error="not in cache (--offline sends nothing)", cause="offline",
       finished_at=NOW),
    v1(11, "in.jsonl:12", "invalid", messages=None, error="in.jsonl:12: invalid JSON"),
    v1(12, "d12", "done", attempts=1, finished_at=NOW, status_code=200, content="late",
       finish_reason="stop", prompt_tokens=1, completion_tokens=1, total_tokens=2,
       model="m-a", extra='{"topic":"c","late":[1,{"k":null}]}'),
]  # fmt: skip
V1_META = {
    "settings": json.dumps({"output": "out.parquet", "output_format": "parquet"}),
    "identity": "{}",
    "extra_columns": json.dumps([["topic", "str"], ["n", "int"]]),
    "created_at": str(NOW - 100),
    "ingest_complete": "1",
    "fingerprint": "f" * 64,
}
V1_ASSET = ("ab" * 32, "0f0f0f0f-aaaa-bbbb-cccc-123456789abc", NOW - 60)


def write_v1(
    path: Path, rows: Sequence[dict[str, Any]] = V1_ROWS, meta: dict[str, str] | None = None
) -> Path:
    """A schema-1 checkpoint: migration 1 alone on an empty file, then rows as the previous
    release wrote them (the one place for hand-written schema-1 SQL)."""
    conn = schema.connect(path)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:1])
            assert schema.migrate(conn) == 0
        for k, value in (V1_META if meta is None else meta).items():
            conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, value))
        for row in rows:
            marks = ", ".join("?" * len(row))
            conn.execute(f"INSERT INTO items ({', '.join(row)}) VALUES ({marks})", [*row.values()])
        conn.execute("INSERT INTO assets VALUES (?, ?, ?)", V1_ASSET)
    finally:
        conn.close()
    assert version_of(path) == 1
    return path


def version_of(path: Path) -> int:
    return int(peek(path, "SELECT value FROM meta WHERE key = 'schema_version'")[0][0])


def read_v1(path: Path) -> dict[str, dict[str, Any]]:
    """A schema-1 checkpoint's rows, by row id, read before it is migrated."""
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return {r["row_id"]: dict(r) for r in conn.execute("SELECT * FROM items")}
    finally:
        conn.close()


def assert_migrated(old: dict[str, dict[str, Any]], reader: CheckpointReader, keep: bool) -> None:
    """Every schema-1 row reads back with the same state, ids, attempts, answer and values."""
    rows = outputs(reader)
    items = work(reader)
    assert rows.keys() == old.keys()
    same = (
        "content", "reasoning_content", "tool_calls", "finish_reason", "prompt_tokens",
        "completion_tokens", "total_tokens", "model", "request_id", "attempts", "latency_s",
        "ttft_s", "status_code",
    )  # fmt: skip
    for row_id, was in old.items():
        now = rows[row_id]
        state = RowState(was["state"])
        assert now["state"] is state, row_id
        assert {c: now[c] for c in same} == {c: was[c] for c in same}, row_id
        assert now["reused"] is bool(was["reused"]), row_id
        assert now["request_hash"] == was["request_hash"], row_id
        assert extras(reader, now) == {
            k: v for k, v in codec.loads(was["extra"] or "{}").items() if v is not None
        }, row_id
        if state.finished:
            assert now["error"] == was["error"], row_id
        if state is S.FAILED or (state is S.DONE and keep):
            assert now["body"] == was["response"], row_id
        else:
            assert now["body"] is None, row_id
        if not state.finished:
            item = items[row_id]
            assert (item.state, item.attempts, item.first_submit_at) == (
                state, was["attempts"], was["first_submit_at"]
            ), row_id  # fmt: skip
            assert (item.request_id, item.location) == (was["request_id"], was["location"])
            assert item.fetched == was["response"], row_id
            assert item.messages == was["messages"]
    [timeline] = list(reader.timeline())
    finished = [r for r in old.values() if r["state"] in ("done", "failed")]
    assert timeline.finished_at == [r["finished_at"] for r in finished]
    assert timeline.cause == [r["cause"] for r in finished]


def test_migration_from_schema_1_keeps_every_row(
    tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_v1(tmp / "v1.sqlite")
    old = read_v1(path)
    with caplog.at_level(logging.WARNING, logger="batchrun.checkpoint.store"):
        c = Checkpoint.open(path)
    try:
        assert f"upgrading {path} from checkpoint schema 1 to {SCHEMA_VERSION}" in caplog.text
        assert_migrated(old, c, keep=False)
        assert c.counts() == {
            S.PENDING: 2, S.INFLIGHT: 1, S.POLLING: 1, S.FETCHED: 2, S.DONE: 4, S.FAILED: 2,
            S.INVALID: 1,
        }  # fmt: skip
        assert c.totals() == Totals(
            rows=13, prompt_tokens=113, completion_tokens=62, total_tokens=175,
            attempts=18,  # 10 in finished rows, 8 in rows still going
            reused=1, bought_prompt_tokens=13, bought_completion_tokens=12,
        )  # fmt: skip
        assert c.pending_request_ids() == [
            PendingId("w3", UUID_B), PendingId("a4", "req-4"), PendingId("l5", "req-5")
        ]  # fmt: skip
        assert c.failure_causes() == [
            FailureCause("HTTP 422", 1, "HTTP 422: too long"),
            FailureCause("offline", 1, "not in cache (--offline sends nothing)"),
        ]
        # A name schema 1 had in no list, appended; the values of every row in place.
        assert c.extra_columns() == [["topic", "str"], ["n", "int"], ["late", "json"]]
        rows = outputs(c)
        assert extras(c, rows["d12"]) == {"topic": "c", "late": [1, {"k": None}]}
        assert extras(c, rows["d6"]) == {"topic": "b", "n": 6}
        assert c.get_meta("fingerprint") == "f" * 64  # meta is kept
        assert c.get_meta("schema_version") == str(SCHEMA_VERSION)
        assert c.get_meta("migration") is None
    finally:
        c.close()
    assert_totals_kept(path)
    # Stored compactly, like a new checkpoint's rows.
    assert peek(path, "SELECT count(*) FROM results WHERE body IS NOT NULL") == [(1,)]  # x9
    assert peek(
        path, "SELECT typeof(r.request_id), length(r.request_id) FROM results AS r "
        "JOIN items USING (idx) WHERE row_id IN ('d6', 'd7') ORDER BY idx"
    ) == [("blob", 16), ("text", 36)]  # fmt: skip
    assert peek(path, "SELECT length(request_hash) FROM items WHERE row_id = 'p0'") == [(32,)]
    assert sorted(n for (n,) in peek(path, "SELECT name FROM names")) == [
        "HTTP 422", "length", "m-a", "m-b", "offline", "stop"
    ]  # fmt: skip
    assert peek(path, "SELECT version, name, applied_at FROM migrations WHERE version = 1") == [
        (1, "m001_initial", NOW - 100)
    ]
    cache = AssetCache(path)
    try:
        assert cache.get_now(V1_ASSET[0]) == V1_ASSET[1:]
    finally:
        cache.close()


@pytest.mark.parametrize("output_format", ["openai-jsonl", "both"])
def test_migration_keeps_answer_bodies_for_openai_batch_output(
    tmp: Path, output_format: str
) -> None:
    meta = V1_META | {"settings": json.dumps({"output_format": output_format})}
    path = write_v1(tmp / "v1.sqlite", meta=meta)
    old = read_v1(path)
    c = Checkpoint.open(path)
    try:
        assert_migrated(old, c, keep=True)
        assert outputs(c)["d6"]["body"] == ANSWER
    finally:
        c.close()


def test_migration_of_a_checkpoint_whose_ingest_was_cut_short(tmp: Path) -> None:
    """No `extra_columns` yet: passthrough names are taken in order of appearance."""
    meta = {k: v for k, v in V1_META.items() if k not in ("extra_columns", "ingest_complete")}
    path = write_v1(tmp / "v1.sqlite", meta=meta)
    old = read_v1(path)
    c = Checkpoint.open(path)
    try:
        assert c.extra_columns() == [["topic", "json"], ["n", "json"], ["late", "json"]]
        assert_migrated(old, c, keep=False)
        assert c.get_meta("ingest_complete") is None
    finally:
        c.close()


def test_migrated_inflight_row_is_reset_by_prepare_resume(tmp: Path) -> None:
    """What an in-flight row was sent with is void after a crash: it goes back to pending."""
    c = Checkpoint.open(write_v1(tmp / "v1.sqlite"))
    try:
        # f2 in flight; o10 failed in an offline run, and this one is not offline.
        assert c.prepare_resume(retry_failed=False) == 2
        assert outputs(c)["o10"]["state"] is S.PENDING
        item = work(c)["f2"]
        assert (item.state, item.attempts) == (S.PENDING, 1)
        assert (item.request_id, item.location, item.fetched) == (None, None, None)
        assert work(c)["a4"].fetched == ANSWER  # a stored answer is never dropped
    finally:
        c.close()


def test_migration_of_a_checkpoint_without_rows(tmp: Path) -> None:
    path = write_v1(tmp / "v1.sqlite", rows=[], meta={})
    c = Checkpoint.open(path)
    try:
        assert (c.counts(), c.totals(), c.extra_columns()) == ({}, Totals(), [])
    finally:
        c.close()


FIXTURE_STATES = {
    **{f"r{i:02d}": S.DONE for i in range(8)},
    "r08": S.FAILED,
    "job.jsonl:10": S.INVALID,
    "r10": S.INVALID,
    **{f"r{i}": S.POLLING for i in (11, 12, 13)},
    "r14": S.FETCHED,
    "r15": S.FETCHED,
    "r16": S.INFLIGHT,
    "r17": S.INFLIGHT,
    **{f"r{i}": S.PENDING for i in range(18, 24)},
}


@pytest.fixture
def fixture_v1(tmp: Path) -> Path:
    """The real schema-1 checkpoint of the previous release (README.md beside it), copied."""
    path = tmp / "out" / "job.parquet.checkpoint.sqlite"
    path.parent.mkdir()
    shutil.copy(FIXTURE / path.name, path)
    return path


def test_migrating_the_previous_releases_checkpoint(fixture_v1: Path) -> None:
    old = read_v1(fixture_v1)
    assert version_of(fixture_v1) == 1
    c = Checkpoint.open(fixture_v1)
    try:
        assert_migrated(old, c, keep=False)
        rows = outputs(c)
        assert {row_id: row["state"] for row_id, row in rows.items()} == FIXTURE_STATES
        assert [r for r, row in rows.items() if row["reused"]] == ["r05", "r06", "r07"]
        assert rows["r08"]["status_code"] == 422
        assert rows["r08"]["body"] is not None and "Unprocessable" in rows["r08"]["body"]
        assert "invalid JSON" in rows["job.jsonl:10"]["error"]
        assert "no prompt" in rows["r10"]["error"]
        items = work(c)
        assert items["r14"].location is not None and items["r14"].fetched is None
        assert items["r15"].fetched is not None and "chatcmpl" in items["r15"].fetched
        assert [p.row_id for p in c.pending_request_ids()] == ["r11", "r12", "r13", "r14", "r15"]
        totals = c.totals()
        assert (totals.rows, totals.reused) == (24, 3)
        assert totals.bought_prompt_tokens == totals.prompt_tokens - 3 * 3
        assert c.get_json("settings")["output"] == "out/job.parquet"
    finally:
        c.close()
    assert_totals_kept(fixture_v1)
    cache = AssetCache(fixture_v1)
    try:
        assert cache.get_now("ab" * 32) == (
            "0f0f0f0f-aaaa-bbbb-cccc-123456789abc", pytest.approx(1796006401.28, abs=0.01)
        )  # fmt: skip
    finally:
        cache.close()


def layout(path: Path) -> dict[str, Any]:
    """A checkpoint's schema: every table, column, index, and the ids SQLite keeps."""

    def normal(sql: str | None) -> str | None:
        if sql is None:
            return None
        return re.sub(r"\s*([(),])\s*", r"\1", " ".join(sql.split()))

    conn = sqlite3.connect(path)
    try:
        objects = conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
        ).fetchall()
        tables = [name for kind, name, _, _ in objects if kind == "table"]
        indexes = [name for kind, name, _, _ in objects if kind == "index"]
        return {
            "objects": [(k, n, t, normal(s)) for k, n, t, s in objects],
            "columns": {t: conn.execute(f"PRAGMA table_xinfo({t})").fetchall() for t in tables},
            "indexes": {i: conn.execute(f"PRAGMA index_xinfo({i})").fetchall() for i in indexes},
            "index_lists": {t: conn.execute(f"PRAGMA index_list({t})").fetchall() for t in tables},
            "application_id": conn.execute("PRAGMA application_id").fetchone(),
            "journal_mode": conn.execute("PRAGMA journal_mode").fetchone(),
            "migrations": conn.execute("SELECT version, name FROM migrations").fetchall(),
        }
    finally:
        conn.close()


def test_a_migrated_checkpoint_has_the_schema_of_a_new_one(tmp: Path, fixture_v1: Path) -> None:
    fresh = tmp / "fresh.sqlite"
    Checkpoint.create(fresh).close()
    built = write_v1(tmp / "v1.sqlite")
    for path in (built, fixture_v1):
        Checkpoint.open(path).close()
        assert layout(path) == layout(fresh), path


@pytest.mark.parametrize("step", ["_move_items", "_move_live", "_move_results", "recount_totals"])
@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_an_interrupted_migration_leaves_schema_1(
    tmp: Path, monkeypatch: pytest.MonkeyPatch, step: str, exc: type[BaseException]
) -> None:
    path = write_v1(tmp / "v1.sqlite")
    old = read_v1(path)
    before = layout_v1(path)

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise exc("power cut")

    monkeypatch.setattr(upgrade, step, interrupted)
    with pytest.raises(exc, match="power cut"):
        Checkpoint.open(path)
    assert version_of(path) == 1
    assert layout_v1(path) == before  # no half-made table, no lost row
    assert read_v1(path) == old
    monkeypatch.undo()
    c = Checkpoint.open(path)  # still openable, and it migrates now
    try:
        assert_migrated(old, c, keep=False)
    finally:
        c.close()
    assert version_of(path) == SCHEMA_VERSION


def layout_v1(path: Path) -> list[Any]:
    return peek(path, "SELECT type, name, sql FROM sqlite_master ORDER BY name") + peek(
        path, "SELECT * FROM meta ORDER BY key"
    )


def test_opening_twice_migrates_once(tmp: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_v1(tmp / "v1.sqlite")
    Checkpoint.open(path).close()
    first = peek(path, "SELECT * FROM migrations ORDER BY version")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="batchrun.checkpoint.store"):
        Checkpoint.open(path).close()
        open_reader(path).close()
    assert "upgrading" not in caplog.text
    assert peek(path, "SELECT * FROM migrations ORDER BY version") == first
    assert [v for v, *_ in first] == [m.version for m in schema.MIGRATIONS]


def test_a_new_checkpoint_is_not_migrated_on_open(
    ckpt: Path, caplog: pytest.LogCaptureFixture
) -> None:
    Checkpoint.create(ckpt).close()
    first = peek(ckpt, "SELECT * FROM migrations")
    with caplog.at_level(logging.WARNING, logger="batchrun.checkpoint.store"):
        Checkpoint.open(ckpt).close()
    assert "upgrading" not in caplog.text
    assert peek(ckpt, "SELECT * FROM migrations") == first


def test_a_new_checkpoint_appears_whole_or_not_at_all(
    ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader at a job's first instant (status, a test's poll) never sees a checkpoint at
    an older version, which it would try to upgrade under the lock the job holds."""
    last = schema.MIGRATIONS[-1]

    def cut(conn: sqlite3.Connection) -> None:
        raise RuntimeError("killed while making the checkpoint")

    monkeypatch.setattr(
        schema, "MIGRATIONS", (*schema.MIGRATIONS[:-1], dataclasses.replace(last, apply=cut))
    )
    with pytest.raises(RuntimeError, match="killed"):
        Checkpoint.create(ckpt)
    assert peek(ckpt, "SELECT name FROM sqlite_master") == []  # nothing of the first ones
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match="empty"):
        open_reader(ckpt).close()  # and a reader neither upgrades nor waits for its lock
    assert peek(ckpt, "SELECT name FROM sqlite_master") == []


def test_reuse_from_a_schema_1_checkpoint_leaves_it_as_it_was(tmp: Path, ckpt: Path) -> None:
    source = write_v1(tmp / "earlier.sqlite")
    before = source.read_bytes()
    c = make(ckpt, [Row(0, request_hash=key(6)), Row(1, request_hash=key(8)), Row(2)])
    try:
        assert c.reuse_from_checkpoint(source, keep_bodies=True) == 2
        rows = outputs(c)
        assert (rows["r0"]["content"], rows["r0"]["request_id"]) == ("4", UUID_A)
        assert (rows["r0"]["model"], rows["r0"]["body"]) == ("m-a", ANSWER)
        assert (rows["r1"]["content"], rows["r1"]["reused"]) == ("reused", True)
        assert c.totals().reused == 2
        assert peek(ckpt, "SELECT typeof(request_id) FROM results ORDER BY idx") == [
            ("blob",), ("text",)
        ]  # fmt: skip
    finally:
        c.close()
    assert_totals_kept(ckpt)
    assert source.read_bytes() == before  # only read: it may be someone else's
    assert version_of(source) == 1


# ---------------------------------------------------------------- open_reader


def test_open_reader_reads_while_a_writer_writes(ckpt: Path) -> None:
    c = make(ckpt, [Row(0), Row(1)])
    w = CheckpointWriter(ckpt, interval=NO_TIMER)
    reader = open_reader(ckpt)
    try:
        pages = reader.result_pages(page=1)
        assert next(pages).state == [S.PENDING]  # a read under way ...
        w.apply([Submitted(0, 1, NOW), Submitted(1, 1, NOW), Accepted(1, "req-1")])
        w.flush()  # ... does not hold the writer up
        assert next(pages).state == [S.POLLING]
        assert reader.counts() == {S.INFLIGHT: 1, S.POLLING: 1}
        assert reader.pending_request_ids() == [PendingId("r1", "req-1")]
        # Names the writer adds after the reader read them are found too.
        w.apply([Fetched(1, ANSWER)])  # a polled answer is stored before it is used
        for idx, model in ((0, "m-1"), (1, "m-2")):
            outcome = Outcome(S.DONE, answered(model=model))
            w.apply([Finished(idx, outcome, 1, NOW, NOW)])
            w.flush()
            assert outputs(reader)[f"r{idx}"]["model"] == model
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader._conn.execute("DELETE FROM items")  # a reader cannot write
    finally:
        reader.close()
        w.close()
        c.close()


def test_open_reader_reads_a_checkpoint_a_run_holds(ckpt: Path) -> None:
    make(ckpt, [Row(0)]).close()
    with CheckpointLock(ckpt):
        reader = open_reader(ckpt)  # `status` during a run
        try:
            assert reader.counts() == {S.PENDING: 1}
        finally:
            reader.close()


def test_open_reader_upgrades_a_schema_1_checkpoint(tmp: Path) -> None:
    path = write_v1(tmp / "v1.sqlite")
    old = read_v1(path)
    reader = open_reader(path)
    try:
        assert_migrated(old, reader, keep=False)
    finally:
        reader.close()
    assert version_of(path) == SCHEMA_VERSION
    assert not Path(f"{path}.lock").exists()  # the lock is given back


def test_open_reader_refuses_to_upgrade_a_checkpoint_another_process_holds(
    tmp: Path,
) -> None:
    path = write_v1(tmp / "v1.sqlite")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\nfrom pathlib import Path\nfrom batchrun.lock import CheckpointLock\n"
            "with CheckpointLock(Path(sys.argv[1])):\n"
            "    print('locked', flush=True)\n"
            "    sys.stdin.readline()\n",
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError) as info:
            open_reader(path)
        message = str(info.value)
        assert f"process {holder.pid}" in message
        assert str(path) in message
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=GUARD_S)
        assert holder.stdout is not None
        holder.stdout.close()
    assert version_of(path) == 1  # left for its holder
    reader = open_reader(path)  # once it is free, it upgrades
    reader.close()
    assert version_of(path) == SCHEMA_VERSION


# ---------------------------------------------------------------- locate


def test_checkpoint_for(tmp: Path) -> None:
    output = tmp / "job.parquet"
    beside = default_checkpoint(output)
    assert beside == tmp / "job.parquet.checkpoint.sqlite"
    assert checkpoint_for(output) is None  # neither exists yet
    Checkpoint.create(beside).close()
    assert checkpoint_for(output) == beside  # the output need not exist yet
    output.write_bytes(b"PAR1" + b"\0" * 16 + b"PAR1")
    assert checkpoint_for(output) == beside
    assert checkpoint_for(beside) == beside  # a SQLite file is itself
    custom = tmp / "elsewhere.db"
    Checkpoint.create(custom).close()
    assert checkpoint_for(custom) == custom
    text = tmp / "notes.txt"
    text.write_text("hello")
    assert checkpoint_for(text) is None
    assert checkpoint_for(tmp / "missing.parquet") is None


def test_output_for(tmp: Path) -> None:
    beside = tmp / "job.parquet.checkpoint.sqlite"
    output = tmp / "job.parquet"
    elsewhere = tmp / "results" / "final.parquet"
    assert output_for(beside, {}) is None
    output.write_text('{"not": "parquet"}\n')  # an output of another format: not this one
    assert output_for(beside, {}) is None
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(b"PAR1")
    assert output_for(beside, {"output": str(elsewhere)}) == elsewhere
    output.write_bytes(b"PAR1")
    assert output_for(beside, {"output": str(elsewhere)}) == output  # beside it comes first
    custom = tmp / "my.sqlite"  # --checkpoint: only its settings name the output
    assert output_for(custom, {"output": str(elsewhere)}) == elsewhere
    assert output_for(custom, {}) is None
    assert output_for(custom, {"output": str(tmp / "missing.parquet")}) is None


def test_locate_job_from_either_file(tmp: Path) -> None:
    output = tmp / "job.parquet"
    beside = default_checkpoint(output)
    with pytest.raises(ConfigError, match="no checkpoint there, and none beside it"):
        locate_job(output)
    output.write_bytes(b"PAR1")
    assert locate_job(output) == (output, None)  # an output whose checkpoint is gone
    c = Checkpoint.create(beside)
    c.set_json("settings", {"output": str(output)})
    c.close()
    assert locate_job(output) == (output, beside)
    assert locate_job(beside) == (output, beside)
    output.unlink()  # a first run under way: its output is written at the end
    assert locate_job(beside) == (None, beside)
    assert locate_job(output) == (None, beside)
    text = tmp / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ConfigError, match="neither"):
        locate_job(text)
    foreign = _foreign_db(tmp / "other.db", "CREATE TABLE people (name TEXT)")
    with pytest.raises(CheckpointError, match="not a batchrun checkpoint"):
        locate_job(foreign)


# ---------------------------------------------------------------- totals: a property


class Recorder:
    """A lifecycle Sink that keeps the transitions (they go to the writer in batches)."""

    def __init__(self) -> None:
        self.moves: list[Transition] = []

    def submitted(self, change: Submitted) -> None:
        self.moves.append(change)

    def accepted(self, change: Accepted) -> None:
        self.moves.append(change)

    async def fetched(self, change: Fetched) -> None:
        self.moves.append(change)

    async def located(self, change: Located) -> None:
        self.moves.append(change)

    def forgotten(self, change: Forgotten) -> None:
        self.moves.append(change)

    def finished(self, change: Finished) -> None:
        self.moves.append(change)


def at_once(coro: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine that never suspends (the Recorder's awaited methods)."""
    try:
        coro.send(None)
    except StopIteration:
        return
    raise AssertionError("suspended")


# The moves the property makes, by lifecycle transition: every edge of lifecycle.EDGES.
OPS = {Submitted: "submit", Accepted: "accept", Fetched: "fetch", Located: "locate",
       Forgotten: "forget"}  # fmt: skip
LEGAL: dict[RowState, list[str]] = {}
for _source, _kind, _target in sorted(EDGES, key=lambda e: (e[0], e[1].__name__, e[2])):
    LEGAL.setdefault(_source, []).append(
        OPS.get(_kind) or ("done" if _target is S.DONE else "fail")
    )
TOKENS = st.one_of(st.none(), st.integers(0, 50))


def move(life: Lifecycle, item: WorkItem, what: str, data: st.DataObject) -> None:
    if what == "submit":
        life.submit(item, NOW)
    elif what == "accept":
        life.accept(item, data.draw(st.sampled_from([UUID_A, UUID_B, "req-x"])))
    elif what == "fetch":
        at_once(life.fetch(item, ANSWER))
    elif what == "locate":
        at_once(life.locate(item, data.draw(st.sampled_from([None, "req-l"])), "https://x/l"))
    elif what == "forget":
        life.forget(item)
    elif what == "done":
        p, c = data.draw(TOKENS), data.draw(TOKENS)
        completion = Completion(
            content="ok", prompt_tokens=p, completion_tokens=c,
            total_tokens=None if p is None or c is None else p + c,
            model=data.draw(st.sampled_from(["m1", "m2"])),
        )  # fmt: skip
        life.finish(item, Outcome(S.DONE, completion, request_id=item.request_id), NOW)
    else:
        usage = Completion(prompt_tokens=data.draw(TOKENS))  # a rare error body with usage
        cause = data.draw(st.sampled_from(["HTTP 500", "HTTP 422"]))
        life.finish(item, Outcome(S.FAILED, usage, error=f"{cause}: x", cause=cause), NOW)


def run_step(c: Checkpoint, path: Path, data: st.DataObject) -> int:
    """One run's transitions, made by the real Lifecycle, committed in one or two batches.
    Returns the submissions made."""
    recorder = Recorder()
    life = Lifecycle(recorder)
    for item in [item for page in c.work_pages(UNFINISHED, 100) for item in page]:
        for _ in range(data.draw(st.integers(0, 4), label=f"moves of {item.row_id}")):
            if item.state not in LEGAL:
                break
            move(life, item, data.draw(st.sampled_from(LEGAL[item.state])), data)
    made = recorder.moves
    cut = data.draw(st.integers(0, len(made)), label="batch boundary")
    w = CheckpointWriter(path, interval=NO_TIMER)
    try:
        for batch in (made[:cut], made[cut:]):
            if batch:
                w.apply(batch)
        w.flush()
    finally:
        w.close()
    return sum(isinstance(m, Submitted) for m in made)


def assert_ledger_consistent(c: Checkpoint, path: Path, submissions: int) -> None:
    assert_totals_kept(path)
    assert c.totals().attempts == submissions  # every submission of every run, once
    by_state: dict[RowState, set[int]] = {}
    for idx, code in peek(path, "SELECT idx, state FROM items"):
        by_state.setdefault(schema.STATES[code], set()).add(idx)
    assert c.counts() == {state: len(idxs) for state, idxs in by_state.items()}
    finished = by_state.get(S.DONE, set()) | by_state.get(S.FAILED, set())
    assert {i for (i,) in peek(path, "SELECT idx FROM results")} == finished
    live = {i for (i,) in peek(path, "SELECT idx FROM live")}
    going = {i for s in (S.INFLIGHT, S.POLLING, S.FETCHED) for i in by_state.get(s, set())}
    assert going <= live <= going | by_state.get(S.PENDING, set())


@pytest.fixture(scope="module")
def reuse_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("reuse") / "earlier.sqlite"
    make(
        path,
        [
            Row(0, state=S.DONE, request_hash=key(0),
                completion=answered(prompt_tokens=4, completion_tokens=2, total_tokens=6)),
            Row(1, state=S.DONE, request_hash=key(1), completion=answered(prompt_tokens=9)),
            Row(2, state=S.FAILED, request_hash=key(2), error="HTTP 422: no"),
        ],
    ).close()  # fmt: skip
    return path


STEPS = ["run", "run", "resume", "reuse-answers", "reuse-checkpoint", "offline"]


@settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_totals_stay_equal_to_a_recount_after_any_sequence(
    reuse_source: Path, data: st.DataObject
) -> None:
    with tempfile.TemporaryDirectory(dir=FAST_DIR) as folder:
        path = Path(folder) / "c.sqlite"
        n = data.draw(st.integers(1, 6), label="rows")
        kinds = data.draw(st.lists(st.sampled_from([S.PENDING] * 4 + [S.INVALID]), min_size=n,
                                   max_size=n), label="row kinds")  # fmt: skip
        requests = data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n), label="keys")
        c = Checkpoint.create(path)
        try:
            ingest(c, [Row(i, state=k, request_hash=key(r), error="in.jsonl: bad")
                       for i, (k, r) in enumerate(zip(kinds, requests, strict=True))])  # fmt: skip
            submissions = 0
            for step in data.draw(st.lists(st.sampled_from(STEPS), min_size=1, max_size=6)):
                if step == "run":
                    submissions += run_step(c, path, data)
                elif step == "resume":
                    c.prepare_resume(data.draw(st.booleans()), offline=data.draw(st.booleans()))
                elif step == "reuse-answers":
                    wanted = data.draw(st.sets(st.integers(0, 3)), label="answers")
                    c.reuse_from_answers([[reused_answer(k, f"a{k}") for k in sorted(wanted)]])
                elif step == "reuse-checkpoint":
                    c.reuse_from_checkpoint(reuse_source)
                else:
                    c.fail_pending("not in cache", "offline")
                assert_ledger_consistent(c, path, submissions)
        finally:
            c.close()
