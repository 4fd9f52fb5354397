"""What one commit of the writer thread writes: a run's transitions folded per row, and the
SQL for them. The only place that knows which columns each lifecycle transition writes.

Per commit, each row's transitions are folded in arrival order into its new state and the
`live` columns to set; a finished row's result is inserted (in input order, so `results`
pages fill up) and its `live` row deleted. `totals` moves in the same transaction.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from batchrun import codec
from batchrun.faults import crash_point
from batchrun.lifecycle import (
    Accepted,
    Fetched,
    Finished,
    Forgotten,
    Located,
    Rejected,
    RowState,
    Submitted,
    Transition,
)

from .schema import STATE_CODES
from .values import encode_request_id

Callback = Callable[[BaseException | None], None]
# Result rows per INSERT: only these sizes are ever compiled, so sqlite3's statement cache holds
# a few programs, and a commit takes one statement per bit of its row count.
_CHUNKS = (512, 256, 128, 64, 32, 16, 8, 4, 2, 1)


@dataclass(slots=True)
class RowChange:
    """One row's transitions since the last commit, folded into what to write."""

    state: RowState | None = None
    live: dict[str, Any] = field(default_factory=dict)  # `live` columns to set
    finished: Finished | None = None  # the row's end: its result replaces its `live` row
    # Sent for the first time ever in this batch: no `live` row of it exists yet.
    first_sent: bool = False
    rejected: Rejected | None = None  # its latest answer that failed the schema
    rejected_tokens: tuple[int, int, int] = (0, 0, 0)  # every such answer's, this batch

    def add(self, change: Transition) -> None:
        if isinstance(change, Submitted):
            self.first_sent = self.first_sent or change.attempts == 1
            self.state = RowState.INFLIGHT
            self.live.update(
                attempts=change.attempts,
                first_submit_at=change.first_submit_at,
                endpoint=change.endpoint,
            )
        elif isinstance(change, Accepted):
            self.state = RowState.POLLING
            self.live["request_id"] = change.request_id
        elif isinstance(change, Fetched):
            self.state = RowState.FETCHED
            self.live["answer"] = change.answer
        elif isinstance(change, Located):
            self.state = RowState.FETCHED
            self.live.update(request_id=change.request_id, location=change.location)
        elif isinstance(change, Forgotten):
            self.state = RowState.INFLIGHT
            self.live.update(request_id=None, location=None, answer=None)
        elif isinstance(change, Rejected):
            self.state = RowState.INFLIGHT
            self.live.update(request_id=None, location=None, answer=None)
            self.rejected = change
            c, (p, k, t) = change.completion, self.rejected_tokens
            self.rejected_tokens = (
                p + (c.prompt_tokens or 0),
                k + (c.completion_tokens or 0),
                t + (c.total_tokens or 0),
            )
        else:
            self.state = change.outcome.state
            self.finished = change


class Commit:
    """The transitions gathered between two commits, and how they are written."""

    __slots__ = ("callbacks", "rows", "submissions")

    def __init__(self) -> None:
        self.rows: dict[int, RowChange] = {}
        self.submissions = 0
        self.callbacks: list[Callback] = []

    def __bool__(self) -> bool:
        return bool(self.rows)

    def add(self, changes: Sequence[Transition]) -> None:
        for change in changes:
            if isinstance(change, Submitted):
                self.submissions += 1
            row = self.rows.get(change.idx)
            if row is None:
                row = self.rows[change.idx] = RowChange()
            row.add(change)

    def write(self, conn: Any, names: Names, keep_answer_bodies: bool) -> None:
        finished = sorted((i, r.finished) for i, r in self.rows.items() if r.finished)
        live_groups: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
        by_state: dict[int, list[int]] = {}
        for idx, row in self.rows.items():
            if row.finished is None and row.live:
                columns = tuple(sorted(row.live))
                live_groups.setdefault(columns, []).append((idx, *(row.live[c] for c in columns)))
            if row.state is not None:
                by_state.setdefault(STATE_CODES[row.state], []).append(idx)
        conn.execute("BEGIN")
        try:
            # One statement for each change of many rows (a JSON array of them), so the
            # thread hands the GIL back and forth a few times a commit, not once a row.
            for columns, values in live_groups.items():
                conn.execute(_upsert_live(columns), (codec.dumps(values),))
            results = [_result(idx, f, names, keep_answer_bodies) for idx, f in finished]
            _chunked(conn, _insert_results, results)
            had_live = [idx for idx, _ in finished if not self.rows[idx].first_sent]
            if had_live:
                conn.execute(_DELETE_LIVE, (codec.dumps(had_live),))
            for code, idxs in by_state.items():
                conn.execute(_SET_STATE, (code, codec.dumps(idxs)))
            rejected = [r for r in self.rows.values() if r.rejected is not None]
            if rejected:
                _write_rejections(conn, rejected)
            _add_totals(conn, [f for _, f in finished], self.submissions)
            crash_point("commit")
            conn.execute("COMMIT")
        except BaseException:
            # A full disk has SQLite roll back on its own: a second ROLLBACK would raise over
            # the error that matters.
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            names.forget_uncommitted()
            raise
        names.committed()


# ---------------------------------------------------------------- the SQL


def _result(idx: int, change: Finished, names: Names, keep_answer_bodies: bool) -> tuple[Any, ...]:
    o = change.outcome
    c = o.completion
    keep_body = o.state is RowState.FAILED or keep_answer_bodies
    tool_calls = codec.dumps(c.tool_calls) if c.tool_calls else None
    return (
        idx, change.attempts, change.first_submit_at, change.finished_at, o.status_code,
        c.content, c.reasoning_content, tool_calls, names.id(c.finish_reason),
        c.prompt_tokens, c.completion_tokens, c.total_tokens, names.id(c.model),
        encode_request_id(o.request_id), o.latency_s, c.ttft_s, o.error, names.id(o.cause),
        0, o.raw if keep_body else None, names.id(o.endpoint),
    )  # fmt: skip


def _add_totals(conn: Any, finished: list[Finished], submissions: int) -> None:
    if not finished and not submissions:
        return
    prompt = sum(f.outcome.completion.prompt_tokens or 0 for f in finished)
    completion = sum(f.outcome.completion.completion_tokens or 0 for f in finished)
    total = sum(f.outcome.completion.total_tokens or 0 for f in finished)
    conn.execute(
        "UPDATE totals SET prompt_tokens = prompt_tokens + ?, "
        "completion_tokens = completion_tokens + ?, total_tokens = total_tokens + ?, "
        "attempts = attempts + ?, bought_prompt_tokens = bought_prompt_tokens + ?, "
        "bought_completion_tokens = bought_completion_tokens + ?",
        (prompt, completion, total, submissions, prompt, completion),
    )


def _write_rejections(conn: Any, rows: list[RowChange]) -> None:
    """Each rejected row's conversation so far and count (what a resume sends next), and
    the rejected answers' tokens: bought, so counted and priced like any answer's (kept in
    `validations` too, so totals can be summed afresh: setaside.py)."""
    values = [
        (
            r.rejected.idx,
            r.rejected.rejected,
            r.rejected.error,
            r.rejected.messages,
            *r.rejected_tokens,
        )
        for r in rows
        if r.rejected is not None
    ]
    conn.executemany(
        "INSERT INTO validations (idx, rejected, error, messages, prompt_tokens, "
        "completion_tokens, total_tokens) VALUES (?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (idx) DO UPDATE SET rejected = excluded.rejected, "
        "error = excluded.error, messages = excluded.messages, "
        "prompt_tokens = prompt_tokens + excluded.prompt_tokens, "
        "completion_tokens = completion_tokens + excluded.completion_tokens, "
        "total_tokens = total_tokens + excluded.total_tokens",
        values,
    )
    prompt = sum(r.rejected_tokens[0] for r in rows)
    completion = sum(r.rejected_tokens[1] for r in rows)
    total = sum(r.rejected_tokens[2] for r in rows)
    conn.execute(
        "UPDATE totals SET prompt_tokens = prompt_tokens + ?, "
        "completion_tokens = completion_tokens + ?, total_tokens = total_tokens + ?, "
        "bought_prompt_tokens = bought_prompt_tokens + ?, "
        "bought_completion_tokens = bought_completion_tokens + ?",
        (prompt, completion, total, prompt, completion),
    )


def _chunked(conn: Any, sql_for: Callable[[int], str], rows: list[tuple[Any, ...]]) -> None:
    """Run `sql_for(n)` over `rows`, n rows a statement, n from _CHUNKS.

    executemany runs one statement per row, and Python's sqlite3 gives up the GIL around
    each; with the event loop busy on the other core, getting it back cost more than the
    SQL itself. A handful of multi-row statements hand it over a handful of times. (Results
    carry request ids as blobs, which a JSON array cannot hold: hence VALUES lists here.)
    """
    start = 0
    for size in _CHUNKS:
        while len(rows) - start >= size:
            chunk = rows[start : start + size]
            conn.execute(sql_for(size), [value for row in chunk for value in row])
            start += size


@functools.lru_cache(maxsize=16)
def _upsert_live(columns: tuple[str, ...]) -> str:
    """Set `columns` of `live` rows from a JSON array of [idx, *values] (WHERE true: the
    upsert after a SELECT needs it, SQLite's grammar says)."""
    picks = ", ".join(f"value ->> {i}" for i in range(len(columns) + 1))
    sets = ", ".join(f"{c} = excluded.{c}" for c in columns)
    return (
        f"INSERT INTO live (idx, {', '.join(columns)}) SELECT {picks} FROM json_each(?) "
        f"WHERE true ON CONFLICT (idx) DO UPDATE SET {sets}"
    )


@functools.lru_cache(maxsize=16)
def _insert_results(rows: int) -> str:
    marks = "(" + ",".join("?" * 21) + ")"
    return f"INSERT OR REPLACE INTO results VALUES {','.join([marks] * rows)}"


_DELETE_LIVE = "DELETE FROM live WHERE idx IN (SELECT value FROM json_each(?))"
_SET_STATE = "UPDATE items SET state = ? WHERE idx IN (SELECT value FROM json_each(?))"


class Names:
    """Ids of repeated strings (`names`), kept in memory by the writer thread."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._ids: dict[str, int] = {n: i for i, n in conn.execute("SELECT id, name FROM names")}
        self._new: list[str] = []

    def id(self, name: str | None) -> int | None:
        if name is None:
            return None
        found = self._ids.get(name)
        if found is None:
            # ON CONFLICT: another connection (a resume's reuse) may have added it meanwhile.
            found = self._conn.execute(
                "INSERT INTO names (name) VALUES (?) ON CONFLICT (name) DO UPDATE "
                "SET name = excluded.name RETURNING id",
                (name,),
            ).fetchone()[0]
            self._ids[name] = found
            self._new.append(name)
        return found

    def committed(self) -> None:
        self._new.clear()

    def forget_uncommitted(self) -> None:
        for name in self._new:
            self._ids.pop(name, None)
        self._new.clear()
