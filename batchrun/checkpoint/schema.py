"""The checkpoint's tables, every column in one place, and the numbered migrations.

A checkpoint records which migrations made it (`migrations`, and `schema_version` in
`meta` for releases that predate that table). Opening one applies the missing migrations in
order, each in its own transaction, so a checkpoint written by any earlier release resumes
under this one. A new checkpoint is made by the same migrations from an empty file, so new
and upgraded checkpoints cannot drift apart.

Layout since schema 2 (the compact ledger). A row's input part is written once, at ingest;
its answer is inserted once, when it finishes; only a one-byte state changes in between, so
pages stay full instead of splitting as rows grow:

- `items`: one row per input row, keyed by input position `idx`: id, state, what to send
  (`messages` NULL when the job's prompt template rebuilds them from `extra`), passthrough
  values (`extra`: a JSON array in the order of meta `extra_columns`), the request's sha256
  as 32 bytes, and the reason an invalid row is invalid.
- `live`: rows between their first submission and their end: attempts so far, when first
  sent, the request id to poll, a 302 link, a consume-once answer stored before parsing.
- `results`: finished rows (done or failed): the answer's parsed columns, never the raw
  response, except a failure's error body and, for jobs that write OpenAI batch output, the
  answer's body. Repeated strings (model, finish_reason, cause) are ids into `names`;
  request ids that are UUIDs are their 16 bytes.
- `totals`: token and request sums, kept by every write, so a resume or `status` never
  sums a table.
- `runs` (schema 3): each run of the job, when it started and ended, and how.
- `live.endpoint`, `results.endpoint` (schema 5): where each row was sent, and which
  endpoint answered it (pool.py).
- `validations` (schema 4): rows an answer of which failed the job's schema: how many did,
  the last error, the conversation a retry sends, and the tokens set aside (setaside.py).
- `meta` (key/value), `assets` (NVCF asset ids by file sha256), `migrations`.

The partial index `items_open` holds every row not done: resuming, dispatching and counting
read only those, so start-up does not grow with the rows already finished.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from batchrun.errors import CheckpointError
from batchrun.lifecycle import RowState

APP_ID = 0x42525531  # "BRU1": tells our checkpoints from other SQLite files

# States as stored: one-byte integers (never 0 or 1, which SQLite stores in no bytes, so a
# state change never grows a row).
STATE_CODES: dict[RowState, int] = {
    RowState.PENDING: 10,
    RowState.INFLIGHT: 11,
    RowState.POLLING: 12,
    RowState.FETCHED: 13,
    RowState.DONE: 14,
    RowState.FAILED: 15,
    RowState.INVALID: 16,
}
STATES = {code: state for state, code in STATE_CODES.items()}
# The partial index's condition, repeated word for word in the queries that use it
# (SQLite uses a partial index only for a query whose WHERE contains its own).
OPEN = "items.state != 14"
assert STATE_CODES[RowState.DONE] == 14

ITEMS = """
CREATE TABLE items (
    idx INTEGER PRIMARY KEY,
    row_id TEXT NOT NULL,
    state INTEGER NOT NULL,
    messages TEXT,
    overrides TEXT,
    extra TEXT,
    est_tokens INTEGER NOT NULL DEFAULT 0,
    request_hash BLOB,
    error TEXT
);
CREATE UNIQUE INDEX items_row_id ON items (row_id);
CREATE INDEX items_open ON items (state, idx) WHERE state != 14;
"""
LIVE = """
CREATE TABLE live (
    idx INTEGER PRIMARY KEY,
    attempts INTEGER NOT NULL DEFAULT 0,
    first_submit_at REAL,
    request_id TEXT,
    location TEXT,
    answer TEXT
);
"""
RESULTS = """
CREATE TABLE results (
    idx INTEGER PRIMARY KEY,
    attempts INTEGER NOT NULL DEFAULT 0,
    first_submit_at REAL,
    finished_at REAL,
    status_code INTEGER,
    content TEXT,
    reasoning_content TEXT,
    tool_calls TEXT,
    finish_reason INTEGER,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    total_tokens INTEGER,
    model INTEGER,
    request_id BLOB,
    latency_s REAL,
    ttft_s REAL,
    error TEXT,
    cause INTEGER,
    reused INTEGER NOT NULL DEFAULT 0,
    body TEXT
);
CREATE TABLE names (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
"""
TOTALS = """
CREATE TABLE totals (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    total_tokens INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    reused INTEGER NOT NULL,
    bought_prompt_tokens INTEGER NOT NULL,
    bought_completion_tokens INTEGER NOT NULL
);
"""
TOTAL_COLUMNS = (
    "prompt_tokens", "completion_tokens", "total_tokens", "attempts", "reused",
    "bought_prompt_tokens", "bought_completion_tokens",
)  # fmt: skip
# results columns that take an id into `names`
NAMED_COLUMNS = ("finish_reason", "model", "cause", "endpoint")


def sqlite_uri(path: Path, *, readonly: bool = False) -> str:
    """A file: URI for `path` (URIs on every connection let ATTACH open a file read-only)."""
    return path.resolve().as_uri() + ("?mode=ro" if readonly else "")


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    conn = sqlite3.connect(
        sqlite_uri(path, readonly=readonly),
        uri=True,
        isolation_level=None,
        check_same_thread=False,
        timeout=30,
    )
    if readonly:
        return conn
    conn.execute("PRAGMA journal_mode=WAL")
    # A commit survives a kill -9 and a power cut alike; one fsync per batch, not per row.
    conn.execute("PRAGMA synchronous=FULL")
    return conn


# ---------------------------------------------------------------- migrations


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: Callable[[sqlite3.Connection], None]


def run_script(conn: sqlite3.Connection, script: str) -> None:
    """Run DDL statements one by one: `executescript` would commit the open transaction."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            conn.execute(statement)
            statement = ""
    if statement.strip():
        raise ValueError(f"incomplete SQL statement: {statement!r}")


def _m001_initial(conn: sqlite3.Connection) -> None:
    """Schema 1 (the first release): one wide `items` row per input row."""
    run_script(
        conn,
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE items (
            idx INTEGER PRIMARY KEY, row_id TEXT NOT NULL, loc TEXT NOT NULL,
            state TEXT NOT NULL, messages TEXT, overrides TEXT, extra TEXT,
            est_tokens INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,
            request_id TEXT, location TEXT, first_submit_at REAL, finished_at REAL,
            status_code INTEGER, content TEXT, reasoning_content TEXT, tool_calls TEXT,
            finish_reason TEXT, prompt_tokens INTEGER, completion_tokens INTEGER,
            total_tokens INTEGER, model TEXT, latency_s REAL, ttft_s REAL, error TEXT,
            cause TEXT, response TEXT, request_hash TEXT, reused INTEGER NOT NULL DEFAULT 0
        );
        CREATE UNIQUE INDEX items_row_id ON items (row_id);
        CREATE TABLE assets (
            sha256 TEXT PRIMARY KEY, asset_id TEXT NOT NULL, uploaded_at REAL NOT NULL
        );
        """,
    )
    conn.execute("INSERT INTO meta VALUES ('migration', 'm001_initial')")


RUNS = """
CREATE TABLE runs (
    run INTEGER PRIMARY KEY,
    started_at REAL NOT NULL,
    ended_at REAL,
    exit_code INTEGER,
    rows_finished INTEGER,
    requests INTEGER
);
"""


def _m002_compact_ledger(conn: sqlite3.Connection) -> None:
    """Schema 2: items / live / results / names / totals (see the module docstring)."""
    from .upgrade import compact_v1  # the data move is long enough for a module of its own

    compact_v1(conn)


def _m003_runs(conn: sqlite3.Connection) -> None:
    """Schema 3: `runs`, one row a run of the job (when it started and ended, how), so the
    report can tell time spent working from time between runs."""
    run_script(conn, RUNS)


VALIDATIONS = """
CREATE TABLE validations (
    idx INTEGER PRIMARY KEY,
    rejected INTEGER NOT NULL,
    error TEXT,
    messages TEXT,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    total_tokens INTEGER NOT NULL DEFAULT 0
);
"""


def _m004_validations(conn: sqlite3.Connection) -> None:
    """Schema 4: `validations`, one row for each row an answer of which failed the job's
    schema: how many did, the last one's error, and the conversation its retry sends (the
    row's messages, each rejected answer and the feedback on it), so a resume goes on from
    there; and the tokens those answers bought (setaside.py)."""
    run_script(conn, VALIDATIONS)


def _m005_endpoints(conn: sqlite3.Connection) -> None:
    """Schema 5: the endpoint each row was sent to (`live.endpoint`, a name or base URL) and
    the one that answered it (`results.endpoint`, an id into `names`), for endpoint pools.
    A request id an earlier release holds was issued by the job's base URL of the time, which
    its identity recorded: that is where it is to be polled, whatever the config says now."""
    run_script(
        conn,
        """
        ALTER TABLE live ADD COLUMN endpoint TEXT;
        ALTER TABLE results ADD COLUMN endpoint INTEGER;
        """,
    )
    row = conn.execute("SELECT value FROM meta WHERE key = 'identity'").fetchone()
    base_url = json.loads(row[0]).get("base_url") if row else None
    if base_url:
        conn.execute(
            "UPDATE live SET endpoint = ? WHERE request_id IS NOT NULL OR location IS NOT NULL "
            "OR answer IS NOT NULL",
            (str(base_url).rstrip("/"),),
        )


MIGRATIONS = (
    Migration(1, "m001_initial", _m001_initial),
    Migration(2, "m002_compact_ledger", _m002_compact_ledger),
    Migration(3, "m003_runs", _m003_runs),
    Migration(4, "m004_validations", _m004_validations),
    Migration(5, "m005_endpoints", _m005_endpoints),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


def schema_version(conn: sqlite3.Connection) -> int:
    """The version a checkpoint is at (0 for an empty file). Raises for other files."""
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    if app_id == 0 and not _tables(conn):
        return 0
    if app_id != APP_ID:
        raise CheckpointError("not a batchrun checkpoint")
    row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    if row is None:
        raise CheckpointError("a batchrun checkpoint without a schema version (damaged?)")
    return int(row[0])


def migrate(
    conn: sqlite3.Connection, *, on_upgrade: Callable[[int, int], None] | None = None
) -> int:
    """Apply every migration the checkpoint lacks, in order. Returns the version before.

    Each migration runs in one transaction together with the record of it, so a kill
    during one leaves the checkpoint at the version before, as if it had not started. A new
    checkpoint is made in one transaction: a reader (`status` at a job's first instant) sees
    an empty file or a whole one, never one an upgrade would have to finish.
    """
    before = schema_version(conn)
    if before > SCHEMA_VERSION:
        raise CheckpointError(
            f"written by a newer batchrun (checkpoint schema {before}, this version reads up "
            f"to {SCHEMA_VERSION}); upgrade batchrun to resume it"
        )
    if before and before < SCHEMA_VERSION and on_upgrade is not None:
        on_upgrade(before, SCHEMA_VERSION)
    steps = MIGRATIONS[before:]
    for together in [steps] if before == 0 else [[m] for m in steps]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for migration in together:
                if migration.version == 1:
                    conn.execute(f"PRAGMA application_id={APP_ID}")
                migration.apply(conn)
                _record(conn, migration)
            conn.execute("COMMIT")
        except BaseException:
            # A full disk has SQLite roll back on its own: a second ROLLBACK would raise over
            # the error that matters (the caller names a full disk as such).
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
    return before


def _record(conn: sqlite3.Connection, migration: Migration) -> None:
    if migration.version >= 2:
        conn.execute(
            "INSERT INTO migrations VALUES (?, ?, ?)",
            (migration.version, migration.name, time.time()),
        )
    conn.execute(
        "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(migration.version),)
    )


def has_table(conn: sqlite3.Connection, name: str) -> bool:
    """Whether the checkpoint has table `name` (one an older schema lacks, read as it is)."""
    return name in _tables(conn)


def _tables(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
