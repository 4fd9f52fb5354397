"""Migration 2: a schema-1 checkpoint (one wide `items` row per input row) moved into the
compact ledger (schema.py), inside the caller's transaction.

Every row keeps its state, request id, attempts and answer; what the new layout leaves out
is the raw response of done rows (its parsed columns stay) unless the job writes OpenAI
batch output, and each row's input location (only the duplicate-id check at ingest used it).
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from batchrun import codec
from batchrun.lifecycle import RowState

from .schema import ITEMS, LIVE, RESULTS, STATE_CODES, TOTALS, run_script
from .setaside import add_set_aside_to_totals
from .values import encode_extra, encode_request_id

_OPEN_V1 = "('inflight', 'polling', 'fetched')"


def compact_v1(conn: sqlite3.Connection) -> None:
    conn.execute("DROP INDEX items_row_id")
    conn.execute("ALTER TABLE items RENAME TO items_v1")
    run_script(conn, ITEMS + LIVE + RESULTS + TOTALS)
    conn.execute(
        "CREATE TABLE migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
        "applied_at REAL NOT NULL)"
    )
    created = _meta(conn, "created_at")
    conn.execute(
        "INSERT INTO migrations VALUES (1, 'm001_initial', ?)",
        (float(created) if created else time.time(),),
    )
    conn.execute("DELETE FROM meta WHERE key='migration'")
    extra = _ExtraPositions(conn)
    _register_functions(conn, extra)
    _move_items(conn)
    extra.save(conn)
    _move_live(conn)
    _move_results(conn, keep_bodies=_writes_openai_jsonl(conn))
    conn.execute("DROP TABLE items_v1")
    recount_totals(conn)


def recount_totals(conn: sqlite3.Connection) -> None:
    """The `totals` row summed afresh from the ledger."""
    conn.execute("DELETE FROM totals")
    conn.execute(
        "INSERT INTO totals SELECT 1, "
        "coalesce(sum(r.prompt_tokens), 0), coalesce(sum(r.completion_tokens), 0), "
        "coalesce(sum(r.total_tokens), 0), "
        "(SELECT coalesce(sum(attempts), 0) FROM results) "
        "+ (SELECT coalesce(sum(attempts), 0) FROM live), "
        "coalesce(sum(r.reused), 0), "
        "coalesce(sum(CASE WHEN r.reused THEN 0 ELSE r.prompt_tokens END), 0), "
        "coalesce(sum(CASE WHEN r.reused THEN 0 ELSE r.completion_tokens END), 0) "
        "FROM results AS r"
    )
    add_set_aside_to_totals(conn)


def _meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    return None if row is None else str(row[0])


def _writes_openai_jsonl(conn: sqlite3.Connection) -> bool:
    settings = json.loads(_meta(conn, "settings") or "{}")
    return settings.get("output_format") in ("openai-jsonl", "both")


class _ExtraPositions:
    """Schema 1's passthrough objects as schema 2's arrays, in meta `extra_columns` order.

    A checkpoint whose ingest was cut short has no such list yet (the job reads its inputs
    again anyway): its names are taken in order of appearance.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.columns: list[list[str]] = json.loads(_meta(conn, "extra_columns") or "[]")
        self.names = [name for name, _ in self.columns]
        self._known = len(self.names)

    def __call__(self, text: str | None) -> str | None:
        if not text:
            return None
        values: dict[str, Any] = codec.loads(text)
        self.names.extend(name for name in values if name not in self.names)
        return encode_extra(values, self.names)

    def save(self, conn: sqlite3.Connection) -> None:
        if len(self.names) > self._known:
            self.columns += [[name, "json"] for name in self.names[self._known :]]
            conn.execute(
                "INSERT OR REPLACE INTO meta VALUES ('extra_columns', ?)",
                (json.dumps(self.columns),),
            )


def _register_functions(conn: sqlite3.Connection, extra: _ExtraPositions) -> None:
    codes = {state.value: code for state, code in STATE_CODES.items()}
    conn.create_function("br_state", 1, codes.__getitem__, deterministic=True)
    conn.create_function("br_extra", 1, extra)
    conn.create_function("br_hash", 1, lambda h: bytes.fromhex(h) if h else None)
    conn.create_function("br_request_id", 1, encode_request_id, deterministic=True)


def _move_items(conn: sqlite3.Connection) -> None:
    conn.execute(
        "INSERT INTO items SELECT idx, row_id, br_state(state), messages, overrides, "
        "br_extra(extra), est_tokens, br_hash(request_hash), "
        f"CASE WHEN state = '{RowState.INVALID}' THEN error END FROM items_v1 ORDER BY idx"
    )


def _move_live(conn: sqlite3.Connection) -> None:
    # A pending row with attempts was sent before a crash: its count is kept.
    conn.execute(
        "INSERT INTO live SELECT idx, attempts, first_submit_at, request_id, location, response "
        f"FROM items_v1 WHERE state IN {_OPEN_V1} OR (state = 'pending' AND attempts > 0)"
    )


def _move_results(conn: sqlite3.Connection, *, keep_bodies: bool) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO names (name) SELECT model FROM items_v1 WHERE model IS NOT NULL "
        "UNION SELECT finish_reason FROM items_v1 WHERE finish_reason IS NOT NULL "
        "UNION SELECT cause FROM items_v1 WHERE cause IS NOT NULL"
    )
    body = "response" if keep_bodies else "CASE WHEN state = 'failed' THEN response END"
    conn.execute(
        "INSERT INTO results SELECT idx, attempts, first_submit_at, finished_at, status_code, "
        "content, reasoning_content, tool_calls, "
        "(SELECT id FROM names WHERE name = finish_reason), prompt_tokens, completion_tokens, "
        "total_tokens, (SELECT id FROM names WHERE name = model), br_request_id(request_id), "
        "latency_s, ttft_s, error, (SELECT id FROM names WHERE name = cause), reused, "
        f"{body} FROM items_v1 WHERE state IN ('done', 'failed') ORDER BY idx"
    )
