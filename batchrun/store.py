"""The SQLite checkpoint: every row's state, request id and answer. The only sqlite3 user.

Layout: `meta` (key/value: schema version, fingerprint, settings, passthrough columns) and
`items` (one row per input row, keyed by its input position `idx`). WAL mode, so `status`
and `export` can read while a run writes.

Writes during a run go through `CheckpointWriter`, one thread with its own connection: the
event loop only enqueues column updates; the thread merges updates per row and commits them
in one transaction at most every FLUSH_INTERVAL_S (well inside SPEC.md's 200 ms for answers
and 1 s for request ids). An update that must be durable before the caller goes on (a
consume-once poll answer, PROTOCOL.md decision 3) is committed at once and the caller awaits
the commit. synchronous=FULL: a commit survives a kill -9 and a power cut alike, and costs
one fsync per batch, not per row.
"""

from __future__ import annotations

import asyncio
import functools
import json
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .errors import CheckpointError, CheckpointWriteError, DatasetError
from .faults import crash_point
from .records import DONE, FAILED, FETCHED, FINAL_COLUMNS, INFLIGHT, INVALID, PENDING, POLLING

SCHEMA_VERSION = 1
FLUSH_INTERVAL_S = 0.1
APP_ID = 0x42525531  # "BRU1": tells our checkpoints from other SQLite files

_M001 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE items (
    idx INTEGER PRIMARY KEY,
    row_id TEXT NOT NULL,
    loc TEXT NOT NULL,
    state TEXT NOT NULL,
    messages TEXT,
    overrides TEXT,
    extra TEXT,
    est_tokens INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    request_id TEXT,
    location TEXT,
    first_submit_at REAL,
    finished_at REAL,
    status_code INTEGER,
    content TEXT,
    reasoning_content TEXT,
    tool_calls TEXT,
    finish_reason TEXT,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    total_tokens INTEGER,
    model TEXT,
    latency_s REAL,
    ttft_s REAL,
    error TEXT,
    cause TEXT,
    response TEXT,
    request_hash TEXT,
    reused INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX items_row_id ON items (row_id);
CREATE TABLE assets (sha256 TEXT PRIMARY KEY, asset_id TEXT NOT NULL, uploaded_at REAL NOT NULL);
"""
MIGRATIONS: list[tuple[str, str]] = [("m001_initial", _M001)]
assert len(MIGRATIONS) == SCHEMA_VERSION

# What an answer is, for --reuse: copied from an earlier job's row with the same request key.
REUSE_COLUMNS = (
    "content", "reasoning_content", "tool_calls", "finish_reason", "prompt_tokens",
    "completion_tokens", "total_tokens", "model", "request_id", "latency_s", "ttft_s", "response",
)  # fmt: skip

# What the output is made of, in this order (Store.iter_results).
RESULT_COLUMNS = (
    "idx", "row_id", "state", "content", "reasoning_content", "tool_calls", "finish_reason",
    "prompt_tokens", "completion_tokens", "total_tokens", "model", "request_id", "attempts",
    "latency_s", "ttft_s", "error", "reused", "request_hash", "extra", "response", "status_code",
)  # fmt: skip

ITEM_COLUMNS = (
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
# Columns a run may update: every items column but those written once from the inputs.
_ITEMS_COLUMNS = re.findall(r"^\s+(\w+) (?:INTEGER|TEXT|REAL)", _M001, re.MULTILINE)
UPDATABLE = frozenset(_ITEMS_COLUMNS) - frozenset(ITEM_COLUMNS) | {"state", "error"}


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def remove_checkpoint(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)


class Store:
    """Reads and bulk writes on the checkpoint (run-time updates go via CheckpointWriter)."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn

    # ---- opening

    @classmethod
    def create(cls, path: Path) -> Store:
        remove_checkpoint(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect(path)
        conn.execute(f"PRAGMA application_id={APP_ID}")
        for name, sql in MIGRATIONS:
            conn.executescript(f"BEGIN;{sql}COMMIT;")
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('migration', ?)", (name,))
        conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        return cls(path, conn)

    @classmethod
    def open(cls, path: Path) -> Store:
        if not path.is_file():
            raise CheckpointError(f"{path}: no checkpoint here")
        # Look before touching: connect() switches the file to WAL, which must not happen
        # to somebody else's database.
        try:
            probe = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                app_id = probe.execute("PRAGMA application_id").fetchone()[0]
                row = None
                if app_id == APP_ID:
                    row = probe.execute(
                        "SELECT value FROM meta WHERE key='schema_version'"
                    ).fetchone()
            finally:
                probe.close()
        except sqlite3.DatabaseError as exc:
            raise CheckpointError(f"{path}: not a batchrun checkpoint ({exc})") from None
        if app_id != APP_ID or row is None:
            raise CheckpointError(f"{path}: not a batchrun checkpoint")
        version = int(row[0])
        if version > SCHEMA_VERSION:
            raise CheckpointError(
                f"{path}: written by a newer batchrun (checkpoint schema {version}, this "
                f"version reads up to {SCHEMA_VERSION}); upgrade batchrun to resume it"
            )
        return cls(path, connect(path))

    def close(self) -> None:
        self._conn.close()

    # ---- meta

    def get_meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def get_json(self, key: str, default: Any = None) -> Any:
        raw = self.get_meta(key)
        return default if raw is None else json.loads(raw)

    def set_json(self, key: str, value: Any) -> None:
        self.set_meta(key, json.dumps(value))

    # ---- ingest

    def insert_items(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Insert prepared rows (ITEM_COLUMNS order). A duplicate id raises DatasetError."""
        marks = ",".join("?" * len(ITEM_COLUMNS))
        sql = f"INSERT INTO items ({','.join(ITEM_COLUMNS)}) VALUES ({marks})"
        try:
            self._conn.execute("BEGIN")
            self._conn.executemany(sql, rows)
            self._conn.execute("COMMIT")
        except sqlite3.IntegrityError:
            self._conn.execute("ROLLBACK")
            raise self._duplicate_error(rows) from None

    def _duplicate_error(self, rows: Sequence[tuple[Any, ...]]) -> DatasetError:
        seen: dict[str, str] = {}
        for row in rows:
            row_id, loc = row[1], row[2]
            first = seen.get(row_id)
            if first is None:
                found = self._conn.execute(
                    "SELECT loc FROM items WHERE row_id=?", (row_id,)
                ).fetchone()
                first = found[0] if found else None
            if first is not None:
                return DatasetError(
                    f"{loc}: duplicate id {row_id!r} (first used at {first}); ids must be "
                    "unique. Nothing was sent."
                )
            seen[row_id] = loc
        return DatasetError("duplicate row id in the input")

    # ---- resume

    def prepare_resume(self, retry_failed: bool, offline: bool = False) -> int:
        """Rows left in flight by a crash go back to pending (at-least-once delivery).

        With `retry_failed`, failed rows are pending again too; rows an --offline run
        failed for want of a stored answer are, whenever this run is not offline.
        Returns rows reset.
        """
        self._conn.execute("BEGIN")
        # An in-flight row has no live request id (a 202's id moves it to `polling`).
        clear = "request_id=NULL, response=NULL, location=NULL"
        reset = self._conn.execute(
            f"UPDATE items SET state=?, {clear} WHERE state=?", (PENDING, INFLIGHT)
        ).rowcount
        again = "state=?" if retry_failed else "state=? AND cause='offline'"
        if retry_failed or not offline:
            reset += self._conn.execute(
                f"UPDATE items SET state=?, {clear}, error=NULL, cause=NULL, status_code=NULL, "
                f"finished_at=NULL WHERE {again}",
                (PENDING, FAILED),
            ).rowcount
        self._conn.execute("COMMIT")
        return reset

    # ---- reuse and replay

    def reuse_from_checkpoint(self, source: Path) -> int:
        """Answer pending rows from an earlier checkpoint's done rows with the same request key."""
        Store.open(source).close()  # a batchrun checkpoint this version can read, or an error
        conn = self._conn
        conn.execute("ATTACH DATABASE ? AS src", (str(source),))
        try:
            self._reuse_table()
            cols = ", ".join(REUSE_COLUMNS)
            conn.execute(
                f"INSERT OR IGNORE INTO temp.reuse (request_hash, {cols}) "
                f"SELECT request_hash, {cols} FROM src.items "
                "WHERE state = ? AND request_hash IS NOT NULL",
                (DONE,),
            )
            return self._apply_reuse()
        finally:
            conn.execute("DETACH DATABASE src")

    def reuse_from_rows(self, batches: Iterable[list[tuple[Any, ...]]]) -> int:
        """Same, from (request_hash, *REUSE_COLUMNS) rows (an earlier output file)."""
        self._reuse_table()
        marks = ", ".join("?" * (len(REUSE_COLUMNS) + 1))
        for batch in batches:
            self._conn.executemany(f"INSERT OR IGNORE INTO temp.reuse VALUES ({marks})", batch)
        return self._apply_reuse()

    def _reuse_table(self) -> None:
        self._conn.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS reuse "
            f"(request_hash TEXT PRIMARY KEY, {', '.join(REUSE_COLUMNS)})"
        )
        self._conn.execute("DELETE FROM temp.reuse")

    def _apply_reuse(self) -> int:
        sets = ", ".join(f"{c} = r.{c}" for c in REUSE_COLUMNS)
        self._conn.execute("BEGIN")
        n = self._conn.execute(
            f"UPDATE items SET state = ?, reused = 1, status_code = 200, finished_at = ?, "
            f"error = NULL, cause = NULL, {sets} FROM temp.reuse AS r "
            "WHERE items.request_hash = r.request_hash AND items.state = ?",
            (DONE, time.time(), PENDING),
        ).rowcount
        self._conn.execute("COMMIT")
        self._conn.execute("DELETE FROM temp.reuse")
        return int(n)

    def fail_pending(self, error: str, cause: str) -> int:
        """Mark every row still to be sent failed (--offline: nothing is sent)."""
        self._conn.execute("BEGIN")
        n = self._conn.execute(
            "UPDATE items SET state = ?, error = ?, cause = ?, finished_at = ? WHERE state = ?",
            (FAILED, error, cause, time.time(), PENDING),
        ).rowcount
        self._conn.execute("COMMIT")
        return int(n)

    # ---- reads

    def counts(self) -> dict[str, int]:
        rows = self._conn.execute("SELECT state, count(*) FROM items GROUP BY state").fetchall()
        return {state: n for state, n in rows}

    def totals(self) -> dict[str, int]:
        """Token sums over every row, and over the rows bought (not answered by --reuse)."""
        row = self._conn.execute(
            "SELECT coalesce(sum(prompt_tokens),0), coalesce(sum(completion_tokens),0), "
            "coalesce(sum(total_tokens),0), coalesce(sum(attempts),0), count(*), "
            "coalesce(sum(reused),0), "
            "coalesce(sum(CASE WHEN reused THEN 0 ELSE prompt_tokens END),0), "
            "coalesce(sum(CASE WHEN reused THEN 0 ELSE completion_tokens END),0) FROM items"
        ).fetchone()
        keys = (
            "prompt_tokens", "completion_tokens", "total_tokens", "attempts", "rows",
            "reused", "bought_prompt_tokens", "bought_completion_tokens",
        )  # fmt: skip
        return dict(zip(keys, (int(v) for v in row), strict=True))

    def pending_request_ids(self, limit: int = 20) -> list[tuple[str, str]]:
        rows = self._conn.execute(
            "SELECT row_id, request_id FROM items WHERE state IN (?, ?) AND request_id IS NOT NULL "
            "ORDER BY idx LIMIT ?",
            (POLLING, FETCHED, limit),
        ).fetchall()
        return [(r[0], r[1]) for r in rows]

    def failure_causes(self, limit: int = 10) -> list[tuple[str, int]]:
        """Failed rows grouped by cause (HTTP status or error class), with an example."""
        rows = self._conn.execute(
            "SELECT coalesce(cause, 'unknown'), count(*), max(error) FROM items "
            "WHERE state=? GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT ?",
            (FAILED, limit),
        ).fetchall()
        return [(f"{cause} (e.g. {example})", int(n)) for cause, n, example in rows]

    def timeline(self, page: int = 50_000) -> Iterator[list[tuple[Any, ...]]]:
        """Pages of finished (done or failed) rows: (finished_at, state, cause, reused, error).

        For `batchrun report` (answer times, failure causes). Paged in input order, not by
        finished_at: that column has no index, so ordering by it would sort the whole table
        for every page; the caller orders what it keeps.
        """
        after = -1
        while True:
            rows = self._conn.execute(
                "SELECT idx, finished_at, state, cause, reused, error FROM items "
                "WHERE idx > ? AND state IN (?, ?) ORDER BY idx LIMIT ?",
                (after, DONE, FAILED, page),
            ).fetchall()
            if not rows:
                return
            yield [row[1:] for row in rows]
            after = rows[-1][0]

    def work_page(
        self, after_idx: int, limit: int, states: tuple[str, ...]
    ) -> list[tuple[Any, ...]]:
        """Rows in `states`, in input order, after `after_idx` (a page for the dispatcher)."""
        marks = ",".join("?" * len(states))
        return self._conn.execute(
            "SELECT idx, row_id, messages, overrides, est_tokens, attempts, request_id, "
            "first_submit_at, response, location "
            f"FROM items WHERE idx > ? AND state IN ({marks}) ORDER BY idx LIMIT ?",
            (after_idx, *states, limit),
        ).fetchall()

    def iter_results(self, page: int = 4096) -> Iterator[list[tuple[Any, ...]]]:
        """Pages of output rows in input order (memory bounded by `page`)."""
        after = -1
        while True:
            rows = self._conn.execute(
                f"SELECT {', '.join(RESULT_COLUMNS)} FROM items WHERE idx > ? ORDER BY idx LIMIT ?",
                (after, page),
            ).fetchall()
            if not rows:
                return
            yield rows
            after = rows[-1][0]

    def request_figures(self, default_max_tokens: int, default_model: str) -> dict[str, Any]:
        """Rows, invalid rows, token estimates and models, for a dry run's report."""
        conn = self._conn
        rows, invalid, prompt = conn.execute(
            "SELECT count(*), coalesce(sum(state=?),0), coalesce(sum(est_tokens),0) FROM items",
            (INVALID,),
        ).fetchone()
        completion_max = conn.execute(
            "SELECT coalesce(sum(coalesce(json_extract(overrides,'$.max_tokens'), ?)),0) "
            "FROM items WHERE state != ?",
            (default_max_tokens, INVALID),
        ).fetchone()[0]
        models = conn.execute(
            "SELECT coalesce(json_extract(overrides,'$.model'), ?), count(*) FROM items "
            "WHERE state != ? GROUP BY 1",
            (default_model, INVALID),
        ).fetchall()
        examples = conn.execute("SELECT error FROM items WHERE state=? LIMIT 5", (INVALID,))
        return {
            "rows": int(rows),
            "invalid": int(invalid),
            "prompt_tokens_est": int(prompt),
            "completion_tokens_max": int(completion_max),
            "models": {str(m): int(n) for m, n in models},
            "invalid_examples": [str(r[0]) for r in examples],
        }

    def row_count(self) -> int:
        return int(self._conn.execute("SELECT count(*) FROM items").fetchone()[0])


class AssetCache:
    """NVCF asset ids by file sha256 (assets.py), on a connection of its own.

    Rare and small writes (one per uploaded file), committed at once so a resumed job never
    uploads twice; calls run in a thread so the event loop does not wait on disk.
    """

    def __init__(self, path: Path) -> None:
        self._conn = connect(path)
        self._lock = asyncio.Lock()

    async def get(self, sha256: str) -> tuple[str, float] | None:
        async with self._lock:
            row = await asyncio.to_thread(
                lambda: self._conn.execute(
                    "SELECT asset_id, uploaded_at FROM assets WHERE sha256=?", (sha256,)
                ).fetchone()
            )
        return None if row is None else (str(row[0]), float(row[1]))

    async def put(self, sha256: str, asset_id: str, uploaded_at: float) -> None:
        async with self._lock:
            await asyncio.to_thread(
                self._conn.execute,
                "INSERT OR REPLACE INTO assets VALUES (?, ?, ?)",
                (sha256, asset_id, uploaded_at),
            )

    def close(self) -> None:
        self._conn.close()


Callback = Callable[[BaseException | None], None]


GENERIC, SUBMITTED, FINAL, _FLUSH, _STOP, _TICK, _GATHERED = range(7)  # update kinds


# UPDATE ... FROM (VALUES ...) needs SQLite 3.33.
_MANY_ROWS_PER_STATEMENT = sqlite3.sqlite_version_info >= (3, 33, 0)
# Rows per statement. Only these sizes are ever compiled, so sqlite3's statement cache holds a
# few programs (one of any other size per batch would fill it with large ones: memory).
_CHUNKS = (512, 64, 8, 1)


def update_rows(
    conn: sqlite3.Connection, names: Sequence[str], rows: list[tuple[Any, ...]]
) -> None:
    """Set `names` (then idx last) of many rows, in a few statements, not one per row.

    executemany runs one statement per row and Python's sqlite3 gives up the GIL around each
    one; with the event loop busy on the other core, getting it back took longer than the
    SQL itself, and at a few thousand rows a second the writer fell behind. A handful of
    multi-row statements hand the GIL over a handful of times.
    """
    if not rows:
        return
    if not _MANY_ROWS_PER_STATEMENT:
        sets = ", ".join(f"{n}=?" for n in names)
        conn.executemany(f"UPDATE items SET {sets} WHERE idx=?", rows)
        return
    start = 0
    for size in _CHUNKS:
        sql = _values_update(tuple(names), size)
        while len(rows) - start >= size:
            chunk = rows[start : start + size]
            conn.execute(sql, [value for row in chunk for value in row])
            start += size


@functools.lru_cache(maxsize=32)
def _values_update(names: tuple[str, ...], rows: int) -> str:
    width = len(names) + 1
    columns = ", ".join(f"c{i}" for i in range(width))
    sets = ", ".join(f"{n} = v.c{i}" for i, n in enumerate(names))
    values = ", ".join(["(" + ",".join("?" * width) + ")"] * rows)
    return (
        f"WITH v({columns}) AS (VALUES {values}) "
        f"UPDATE items SET {sets} FROM v WHERE items.idx = v.c{width - 1}"
    )


class _Batch:
    """Updates gathered between two commits, merged per row.

    Order within a row is kept by applying, per commit: submissions, then other updates
    (merged in arrival order), then final outcomes. A final outcome carries every column a
    run writes, so earlier updates of that row in the same batch are skipped.
    """

    __slots__ = ("callbacks", "finals", "generic", "submitted")

    def __init__(self) -> None:
        self.generic: dict[int, dict[str, Any]] = {}
        self.submitted: dict[int, tuple[Any, ...]] = {}
        self.finals: dict[int, tuple[Any, ...]] = {}
        self.callbacks: list[Callback] = []

    def __bool__(self) -> bool:
        return bool(self.generic or self.submitted or self.finals)

    def add(self, kind: int, idx: int, payload: Any) -> None:
        if kind == FINAL:
            self.finals[idx] = payload
        elif kind == SUBMITTED:
            self.submitted[idx] = payload
        elif kind == GENERIC:
            self.generic.setdefault(idx, {}).update(payload)

    def write(self, conn: sqlite3.Connection) -> None:
        finals = self.finals
        groups: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
        for idx, columns in self.generic.items():
            if idx in finals:
                continue
            names = tuple(sorted(columns))
            groups.setdefault(names, []).append((*(columns[n] for n in names), idx))
        conn.execute("BEGIN")
        try:
            update_rows(
                conn,
                ("state", "attempts", "first_submit_at"),
                [(INFLIGHT, *v, idx) for idx, v in self.submitted.items() if idx not in finals],
            )
            for names, rows in groups.items():
                if not UPDATABLE.issuperset(names):
                    raise CheckpointError(
                        f"not an updatable column: {sorted(set(names) - UPDATABLE)}"
                    )
                sets = ", ".join(f"{n}=?" for n in names)
                conn.executemany(f"UPDATE items SET {sets} WHERE idx=?", rows)
            update_rows(conn, FINAL_COLUMNS, [(*v, idx) for idx, v in finals.items()])
            crash_point("commit")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


class CheckpointWriter:
    """The writer thread: row updates from the event loop, committed in batches.

    Updates made on a running event loop are gathered there and handed to the thread as one
    list every `interval` (one wake-up per batch, not per row: waking a thread per update
    cost more CPU than the SQL itself); the thread commits each list at once. Updates from
    outside a loop (tests, tools) go straight to the thread, which batches them itself.
    """

    def __init__(self, path: Path, *, interval: float = FLUSH_INTERVAL_S) -> None:
        self._conn = connect(path)
        self._interval = interval
        self._queue: queue.SimpleQueue[tuple[int, int, Any, Callback | None]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="batchrun-checkpoint", daemon=True)
        self._gathered: list[tuple[int, int, Any]] = []
        self._handoff_timer: asyncio.TimerHandle | None = None
        self.error: BaseException | None = None
        self.commits = 0
        self._thread.start()

    def _put(self, kind: int, idx: int, payload: Any, callback: Callback | None = None) -> None:
        if self.error is not None:
            raise CheckpointWriteError(f"checkpoint write failed: {self.error}")
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or callback is not None:
            self.handoff()  # keep the order: what was gathered goes first
            self._queue.put((kind, idx, payload, callback))
            return
        self._gathered.append((kind, idx, payload))
        if self._handoff_timer is None:
            self._handoff_timer = loop.call_later(self._interval, self.handoff)

    def handoff(self) -> None:
        """Give the thread what the loop has gathered (call on the loop's thread)."""
        if self._handoff_timer is not None:
            self._handoff_timer.cancel()
            self._handoff_timer = None
        if self._gathered:
            gathered, self._gathered = self._gathered, []
            self._queue.put((_GATHERED, -1, gathered, None))

    def apply(self, ops: list[tuple[int, int, Any]]) -> None:
        """Queue updates gathered elsewhere, (kind, idx, payload) each, committed together."""
        self._queue.put((_GATHERED, -1, ops, None))

    def update(self, idx: int, columns: dict[str, Any]) -> None:
        """Queue an update; durable within FLUSH_INTERVAL_S plus one commit."""
        self._put(GENERIC, idx, columns)

    def submitted(self, idx: int, attempts: int, first_submit_at: float | None) -> None:
        """The row was sent (again): it is in flight, with this many submissions."""
        self._put(SUBMITTED, idx, (attempts, first_submit_at))

    def finished(self, idx: int, values: tuple[Any, ...]) -> None:
        """The row's final outcome, values in records.FINAL_COLUMNS order."""
        self._put(FINAL, idx, values)

    async def update_now(self, idx: int, columns: dict[str, Any]) -> None:
        """Queue an update and return once it (and all before it) is committed."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def resolve(exc: BaseException | None) -> None:
            loop.call_soon_threadsafe(_settle, done, exc)

        self._put(GENERIC, idx, columns, resolve)
        await done

    def flush(self, timeout: float | None = None) -> None:
        """Block until everything handed over so far is committed (call off the loop, after
        `handoff()` on it)."""
        event = threading.Event()
        failure: list[BaseException] = []

        def resolve(exc: BaseException | None) -> None:
            if exc is not None:
                failure.append(exc)
            event.set()

        self._queue.put((_FLUSH, -1, None, resolve))
        waited = 0.0
        while not event.wait(0.5):
            waited += 0.5
            if not self._thread.is_alive():
                raise CheckpointWriteError("checkpoint writer stopped unexpectedly")
            if timeout is not None and waited >= timeout:
                raise CheckpointWriteError("checkpoint writer did not finish in time")
        if failure:
            raise CheckpointWriteError(f"checkpoint write failed: {failure[0]}")

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put((_STOP, -1, None, None))
            self._thread.join()
        self._conn.close()

    def _run(self) -> None:
        batch = _Batch()
        deadline: float | None = None
        get = self._queue.get
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                kind, idx, payload, callback = get(timeout=timeout)
            except queue.Empty:
                kind, idx, payload, callback = _TICK, -1, None, None
            while True:
                if kind == _GATHERED:
                    for item in payload:
                        batch.add(*item)
                else:
                    batch.add(kind, idx, payload)
                if callback is not None:
                    batch.callbacks.append(callback)
                if kind == _STOP:
                    break
                # Group commit: whatever queued up meanwhile goes into this same commit, so
                # a slow disk (one fsync per commit) makes commits bigger, not later.
                try:
                    kind, idx, payload, callback = self._queue.get_nowait()
                except queue.Empty:
                    break
            if deadline is None:
                deadline = time.monotonic() + self._interval
            urgent = callback is not None or kind in (_STOP, _GATHERED)
            if urgent or time.monotonic() >= deadline:
                self._commit(batch)
                batch, deadline = _Batch(), None
            if kind == _STOP:
                return

    def _commit(self, batch: _Batch) -> None:
        error: BaseException | None = None
        if batch:
            try:
                batch.write(self._conn)
                self.commits += 1
            except Exception as exc:  # any failure must reach the run
                error = self.error = exc
        for callback in batch.callbacks:
            callback(error)


def _settle(future: asyncio.Future[None], exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is None:
        future.set_result(None)
    else:
        future.set_exception(CheckpointWriteError(f"checkpoint write failed: {exc}"))


TERMINAL_STATES = (DONE, FAILED, INVALID)
