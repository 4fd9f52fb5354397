"""`--reuse`: answer pending rows from an earlier job's rows with the same request key.

The earlier job is a checkpoint (of any schema this release can read; it is only read, never
upgraded: it may be someone else's) or an output file whose rows the caller hands over as
`ReusedAnswer`s. Either way the answers go through one temp table and one UPDATE, and the
rows they finish count as reused: their tokens are in the totals, not among those bought.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from batchrun.errors import ConfigError
from batchrun.lifecycle import RowState

from .schema import APP_ID, OPEN, STATE_CODES, sqlite_uri
from .values import encode_request_id


@dataclass(frozen=True, slots=True)
class ReusedAnswer:
    """An earlier answer, with the key of the request that bought it."""

    request_hash: bytes
    content: str | None
    reasoning_content: str | None
    tool_calls: str | None
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    model: str | None
    request_id: str | None
    latency_s: float | None
    ttft_s: float | None
    body: str | None = None


_COLUMNS = (
    "request_hash, content, reasoning_content, tool_calls, finish_reason, prompt_tokens, "
    "completion_tokens, total_tokens, model, request_id, latency_s, ttft_s, body"
)
# An earlier checkpoint's done rows, by its schema version.
_SOURCES = {
    1: (
        "SELECT br_hash(request_hash), content, reasoning_content, tool_calls, finish_reason, "
        "prompt_tokens, completion_tokens, total_tokens, model, br_request_id(request_id), "
        "latency_s, ttft_s, response FROM src.items "
        "WHERE state = 'done' AND request_hash IS NOT NULL"
    ),
    2: (
        "SELECT i.request_hash, r.content, r.reasoning_content, r.tool_calls, "
        "(SELECT name FROM src.names WHERE id = r.finish_reason), r.prompt_tokens, "
        "r.completion_tokens, r.total_tokens, (SELECT name FROM src.names WHERE id = r.model), "
        "r.request_id, r.latency_s, r.ttft_s, r.body FROM src.results AS r "
        f"JOIN src.items AS i ON i.idx = r.idx WHERE i.state = {STATE_CODES[RowState.DONE]} "
        "AND i.request_hash IS NOT NULL"
    ),
}
# Schema 3 added the runs table, 4 validations; answers are where 2 keeps them.
_SOURCES[3] = _SOURCES[4] = _SOURCES[5] = _SOURCES[2]


def from_checkpoint(conn: sqlite3.Connection, source: Path, keep_bodies: bool) -> int:
    """Answer pending rows from `source`'s done rows. Returns rows answered."""
    try:
        conn.execute("ATTACH DATABASE ? AS src", (sqlite_uri(source, readonly=True),))
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"--reuse {source}: not a batchrun checkpoint ({exc})") from None
    try:
        version = _source_version(conn, source)
        _start(conn)
        conn.create_function("br_hash", 1, lambda h: bytes.fromhex(h) if h else None)
        conn.create_function("br_request_id", 1, encode_request_id, deterministic=True)
        conn.execute(f"INSERT OR IGNORE INTO temp.reuse ({_COLUMNS}) {_SOURCES[version]}")
        return _apply(conn, keep_bodies)
    finally:
        conn.execute("DETACH DATABASE src")


def from_answers(
    conn: sqlite3.Connection,
    batches: Iterable[list[ReusedAnswer]],
    keep_bodies: bool,
    *,
    own: bool = False,
) -> int:
    """The same, from answers read elsewhere (an earlier output file). `own`: the job's
    own answers, restored after `recover` (not reused; already in the totals)."""
    _start(conn)
    marks = ", ".join("?" * 13)
    for batch in batches:
        conn.executemany(
            f"INSERT OR IGNORE INTO temp.reuse VALUES ({marks})", [_values(a) for a in batch]
        )
    return _apply(conn, keep_bodies, own=own)


def _values(a: ReusedAnswer) -> tuple[object, ...]:
    return (
        a.request_hash, a.content, a.reasoning_content, a.tool_calls, a.finish_reason,
        a.prompt_tokens, a.completion_tokens, a.total_tokens, a.model,
        encode_request_id(a.request_id), a.latency_s, a.ttft_s, a.body,
    )  # fmt: skip


def _source_version(conn: sqlite3.Connection, source: Path) -> int:
    from .schema import SCHEMA_VERSION

    try:
        app_id = conn.execute("PRAGMA src.application_id").fetchone()[0]
        row = conn.execute("SELECT value FROM src.meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"--reuse {source}: not a batchrun checkpoint ({exc})") from None
    if app_id != APP_ID or row is None:
        raise ConfigError(f"--reuse {source}: not a batchrun checkpoint")
    version = int(row[0])
    if version not in _SOURCES:
        raise ConfigError(
            f"--reuse {source}: checkpoint schema {version} (this batchrun reads up to "
            f"{SCHEMA_VERSION}): written by a newer batchrun"
        )
    return version


def _start(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS reuse (request_hash BLOB PRIMARY KEY, content, "
        "reasoning_content, tool_calls, finish_reason, prompt_tokens, completion_tokens, "
        "total_tokens, model, request_id, latency_s, ttft_s, body)"
    )
    conn.execute("DELETE FROM temp.reuse")


def _apply(conn: sqlite3.Connection, keep_bodies: bool, *, own: bool = False) -> int:
    pending = f"{OPEN} AND items.state = {STATE_CODES[RowState.PENDING]}"
    chosen = "idx IN (SELECT idx FROM temp.chosen)"
    conn.execute("BEGIN")
    try:
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS chosen (idx INTEGER PRIMARY KEY)")
        conn.execute("DELETE FROM temp.chosen")
        conn.execute(
            "INSERT INTO temp.chosen SELECT items.idx FROM items JOIN temp.reuse AS r "
            f"ON r.request_hash = items.request_hash WHERE {pending}"
        )
        conn.execute(
            "INSERT OR IGNORE INTO names (name) SELECT model FROM temp.reuse WHERE model "
            "IS NOT NULL UNION SELECT finish_reason FROM temp.reuse WHERE finish_reason IS NOT NULL"
        )
        body = "r.body" if keep_bodies else "NULL"
        conn.execute(
            "INSERT OR REPLACE INTO results SELECT items.idx, coalesce(l.attempts, 0), "
            "l.first_submit_at, ?, 200, r.content, r.reasoning_content, r.tool_calls, "
            "(SELECT id FROM names WHERE name = r.finish_reason), r.prompt_tokens, "
            "r.completion_tokens, r.total_tokens, (SELECT id FROM names WHERE name = r.model), "
            f"r.request_id, r.latency_s, r.ttft_s, NULL, NULL, {int(not own)}, {body}, NULL "
            "FROM items JOIN temp.reuse AS r ON r.request_hash = items.request_hash "
            f"LEFT JOIN live AS l ON l.idx = items.idx WHERE items.{chosen}",
            (time.time(),),
        )
        conn.execute(f"DELETE FROM live WHERE {chosen}")
        n = conn.execute(
            f"UPDATE items SET state = ? WHERE {chosen}", (STATE_CODES[RowState.DONE],)
        ).rowcount
        if not own:  # the job's own answers are in its totals already
            _add_reused_totals(conn, chosen)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("DELETE FROM temp.reuse")
    return int(n)


def _add_reused_totals(conn: sqlite3.Connection, chosen: str) -> None:
    conn.execute(
        "UPDATE totals SET prompt_tokens = prompt_tokens + s.p, "
        "completion_tokens = completion_tokens + s.c, total_tokens = total_tokens + s.t, "
        "reused = reused + s.n FROM (SELECT coalesce(sum(prompt_tokens), 0) AS p, "
        "coalesce(sum(completion_tokens), 0) AS c, coalesce(sum(total_tokens), 0) AS t, "
        f"count(*) AS n FROM results WHERE {chosen}) AS s"
    )
