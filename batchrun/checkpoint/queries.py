"""Reads of a checkpoint, as typed rows and pages: what status, report, the output writer and
the dispatcher see. Safe while a run writes (WAL).

Everything that walks many rows goes through `keyset_pages` (by input position, a page at a
time: memory stays flat). Counting and finding rows to send read only the partial index of
rows not done (schema.OPEN), so they cost what is left to do, not what is finished.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from batchrun.lifecycle import UNFINISHED, RowState, WorkItem
from batchrun.templates import PromptTemplate

from .figures import (
    FailureCause,
    PendingId,
    RequestFigures,
    ResultPage,
    RunRecord,
    TimelinePage,
    Totals,
)
from .schema import OPEN, STATE_CODES, STATES, TOTAL_COLUMNS, has_table
from .values import decode_extra, decode_request_id, hash_hex

P = TypeVar("P")


def keyset_pages(
    fetch: Callable[[int, int], list[P]], key: Callable[[P], int], page: int
) -> Iterator[list[P]]:
    """Pages from `fetch(after, limit)` until one comes back empty; `key` of a page's last
    row is where the next page starts (no OFFSET: each page costs the same)."""
    after = -1
    while rows := fetch(after, page):
        yield rows
        after = key(rows[-1])


def _first(row: Sequence[Any]) -> int:
    return int(row[0])


_RESULT_SQL = (
    "SELECT items.idx, items.row_id, items.state, r.content, r.reasoning_content, r.tool_calls, "
    "r.finish_reason, r.prompt_tokens, r.completion_tokens, r.total_tokens, r.model, "
    "coalesce(r.request_id, l.request_id), coalesce(r.attempts, l.attempts, 0), r.latency_s, "
    "r.ttft_s, coalesce(r.error, items.error), coalesce(r.reused, 0), items.request_hash, "
    "items.extra, r.status_code, r.body, v.rejected, v.error, r.endpoint "
    "FROM items LEFT JOIN results AS r ON r.idx = items.idx "
    "LEFT JOIN live AS l ON l.idx = items.idx "
    "LEFT JOIN validations AS v ON v.idx = items.idx "
    "WHERE items.idx > ? AND items.idx < ? ORDER BY items.idx LIMIT ?"
)
# A row some answers of which failed the schema is sent again with its conversation so far.
_WORK_SQL = (
    "SELECT items.idx, items.row_id, items.state, coalesce(v.messages, items.messages), "
    "items.overrides, items.extra, items.est_tokens, l.attempts, l.first_submit_at, "
    "l.request_id, l.answer, l.location, coalesce(v.rejected, 0), l.endpoint "
    "FROM items LEFT JOIN live AS l ON l.idx = items.idx "
    "LEFT JOIN validations AS v ON v.idx = items.idx "
    f"WHERE {OPEN} AND items.state IN ({{states}}) AND items.idx > ? AND items.idx < ? "
    "ORDER BY items.idx LIMIT ?"
)
NO_LIMIT = 2**62  # rows past the job's --limit are kept but not shown: this means none are


class CheckpointReader:
    """The read side of a checkpoint, on a connection the caller opened.

    Every read sees the rows before the job's current `--limit` (meta `row_limit`, set by
    the last run): rows past a lowered limit stay in the checkpoint, out of sight, and come
    back with their answers when the limit is raised again.
    """

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn
        self._names: dict[int, str] = {}
        self._extra_names: list[str] | None = None
        self._template: PromptTemplate | None = None
        self._template_read = False
        limit = self.get_meta("row_limit")
        self._upto = int(limit) if limit else NO_LIMIT

    def close(self) -> None:
        self._conn.close()

    # ---- meta

    def get_meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def get_json(self, key: str, default: Any = None) -> Any:
        import json

        raw = self.get_meta(key)
        return default if raw is None else json.loads(raw)

    def extra_columns(self) -> list[list[str]]:
        columns: list[list[str]] = self.get_json("extra_columns", [])
        return columns

    # ---- counts and sums

    def stored_rows(self) -> int:
        """Input rows read into the checkpoint, whatever the current limit."""
        last = self._conn.execute("SELECT max(idx) FROM items").fetchone()[0]
        return 0 if last is None else int(last) + 1

    def row_count(self) -> int:
        """The job's rows: those read, up to its current limit."""
        return min(self.stored_rows(), self._upto)

    def rows_past_limit(self) -> int:
        """Rows read by an earlier run and kept past a lowered --limit (out of every read
        but `totals`, which counts every row's tokens)."""
        return self.stored_rows() - self.row_count()

    def counts(self) -> dict[RowState, int]:
        """Rows per state. Reads only rows not done (the rest is the difference)."""
        rows = self._conn.execute(
            f"SELECT state, count(*) FROM items WHERE {OPEN} AND items.idx < ? GROUP BY state",
            (self._upto,),
        ).fetchall()
        counts = {STATES[code]: int(n) for code, n in rows}
        done = self.row_count() - sum(counts.values())
        return {**({RowState.DONE: done} if done else {}), **counts}

    def todo(self) -> int:
        """Rows still to finish (sent or not)."""
        counts = self.counts()
        return sum(counts.get(state, 0) for state in UNFINISHED)

    def totals(self) -> Totals:
        row = self._conn.execute(f"SELECT {', '.join(TOTAL_COLUMNS)} FROM totals").fetchone()
        values = dict(zip(TOTAL_COLUMNS, row, strict=True)) if row else {}
        return Totals(rows=self.row_count(), **{k: int(v) for k, v in values.items()})

    def answers_rejected(self) -> tuple[int, int]:
        """(rows asked again, answers rejected) for failing the job's schema so far."""
        if not has_table(self._conn, "validations"):
            return 0, 0  # a checkpoint from before schema 4, read without upgrading it
        rows, answers = self._conn.execute(
            "SELECT count(*), coalesce(sum(rejected), 0) FROM validations WHERE rejected > 0"
        ).fetchone()
        return int(rows), int(answers)

    def failure_causes(self, limit: int = 10) -> list[FailureCause]:
        """Failed rows grouped by cause, most common first, with an example each."""
        rows = self._conn.execute(
            "SELECT r.cause, count(*), max(r.error) FROM items JOIN results AS r "
            f"ON r.idx = items.idx WHERE {OPEN} AND items.state = ? AND items.idx < ? "
            "GROUP BY r.cause ORDER BY 2 DESC, "
            "coalesce((SELECT name FROM names WHERE id = r.cause), 'unknown') LIMIT ?",
            (STATE_CODES[RowState.FAILED], self._upto, limit),
        ).fetchall()
        causes = [FailureCause(self._name(c) or "unknown", int(n), e) for c, n, e in rows]
        return sorted(causes, key=lambda c: (-c.rows, c.cause))

    def invalid_causes(self, limit: int = 10) -> list[FailureCause]:
        """Invalid rows grouped by what is wrong with them, most common first, with the
        place of the first row of each (`in.jsonl:17`)."""
        rows = self._conn.execute(
            f"SELECT items.error FROM items WHERE {OPEN} AND items.state = ? "
            "AND items.idx < ? ORDER BY items.idx",
            (STATE_CODES[RowState.INVALID], self._upto),
        )
        counts: dict[str, int] = {}
        first: dict[str, str] = {}
        for (error,) in rows:
            where, cause = split_location(error or "")
            counts[cause] = counts.get(cause, 0) + 1
            first.setdefault(cause, where)
        causes = [FailureCause(c, n, first[c]) for c, n in counts.items()]
        return sorted(causes, key=lambda c: (-c.rows, c.cause))[:limit]

    def answer_bytes(self, sample: int = 1000) -> float | None:
        """Bytes an answer takes, averaged over the last `sample` finished rows (None: no
        row has finished): what one more answer will add to the ledger, and to the output."""
        (average,) = self._conn.execute(
            "SELECT avg(coalesce(length(CAST(content AS BLOB)), 0)"
            " + coalesce(length(CAST(reasoning_content AS BLOB)), 0)"
            " + coalesce(length(CAST(tool_calls AS BLOB)), 0)"
            " + coalesce(length(CAST(body AS BLOB)), 0))"
            " FROM (SELECT * FROM results ORDER BY idx DESC LIMIT ?)",
            (sample,),
        ).fetchone()
        return None if average is None else float(average)

    def pending_request_ids(self, limit: int = 20) -> list[PendingId]:
        rows = self._conn.execute(
            "SELECT items.row_id, l.request_id FROM items JOIN live AS l ON l.idx = items.idx "
            f"WHERE {OPEN} AND items.state IN (?, ?) AND l.request_id IS NOT NULL "
            "AND items.idx < ? ORDER BY items.idx LIMIT ?",
            (STATE_CODES[RowState.POLLING], STATE_CODES[RowState.FETCHED], self._upto, limit),
        ).fetchall()
        return [PendingId(row_id, request_id) for row_id, request_id in rows]

    def held_by_endpoint(self) -> dict[str | None, int]:
        """Rows whose answer an endpoint holds (a 202 id, a link; not an answer stored
        here already), by the endpoint that holds it (None: a row of an older release)."""
        rows = self._conn.execute(
            "SELECT l.endpoint, count(*) FROM items JOIN live AS l ON l.idx = items.idx "
            f"WHERE {OPEN} AND items.state IN (?, ?) AND l.answer IS NULL GROUP BY l.endpoint",
            (STATE_CODES[RowState.POLLING], STATE_CODES[RowState.FETCHED]),
        ).fetchall()
        return {endpoint: int(n) for endpoint, n in rows}

    def by_endpoint(self) -> list[tuple[str, int, int, int, int, int, float | None]]:
        """For each endpoint that answered rows: (endpoint, rows, ok, failed, prompt
        tokens, completion tokens, mean latency of its ok rows)."""
        done, failed = STATE_CODES[RowState.DONE], STATE_CODES[RowState.FAILED]
        rows = self._conn.execute(
            f"SELECT r.endpoint, count(*), sum(items.state = {done}), "
            f"sum(items.state = {failed}), coalesce(sum(r.prompt_tokens), 0), "
            "coalesce(sum(r.completion_tokens), 0), "
            f"avg(CASE WHEN items.state = {done} THEN r.latency_s END) "
            "FROM results AS r JOIN items ON items.idx = r.idx "
            "WHERE r.endpoint IS NOT NULL AND items.idx < ? GROUP BY r.endpoint",
            (self._upto,),
        ).fetchall()
        return [(self._name(row[0]), *row[1:]) for row in rows]

    def runs(self) -> list[RunRecord]:
        """Every run of the job, first first."""
        rows = self._conn.execute("SELECT * FROM runs ORDER BY run").fetchall()
        return [RunRecord(*row) for row in rows]

    # ---- pages

    def work_items(self, after: int, limit: int, states: Sequence[RowState]) -> list[WorkItem]:
        """Rows in `states` after input position `after`, as the engine takes them."""
        sql = _WORK_SQL.format(states=", ".join(str(STATE_CODES[s]) for s in states))
        # A lowered limit holds back rows not sent yet; answers already paid for (held ids)
        # are fetched whatever the limit.
        upto = self._upto if RowState.PENDING in states else NO_LIMIT
        rows = self._conn.execute(sql, (after, upto, limit)).fetchall()
        return [self._work_item(row) for row in rows]

    def work_pages(self, states: Sequence[RowState], page: int) -> Iterator[list[WorkItem]]:
        return keyset_pages(
            lambda after, limit: self.work_items(after, limit, states), _item_idx, page
        )

    def result_pages(self, page: int = 4096) -> Iterator[ResultPage]:
        """Every row's output values, in input order."""
        fetch, upto = self._conn.execute, self._upto
        for rows in keyset_pages(
            lambda a, n: fetch(_RESULT_SQL, (a, upto, n)).fetchall(), _first, page
        ):
            yield self._result_page(rows)

    def timeline(self, page: int = 50_000) -> Iterator[TimelinePage]:
        """Finished rows, in input order (for `report`: answer times, causes)."""
        sql = (
            "SELECT r.idx, r.finished_at, items.state, r.cause, r.reused, r.error FROM results "
            "AS r JOIN items ON items.idx = r.idx WHERE r.idx > ? AND r.idx < ? "
            "ORDER BY r.idx LIMIT ?"
        )
        fetch, upto = self._conn.execute, self._upto
        for rows in keyset_pages(lambda a, n: fetch(sql, (a, upto, n)).fetchall(), _first, page):
            _, finished, states, causes, reused, errors = zip(*rows, strict=True)
            yield TimelinePage(
                list(finished),
                [STATES[c] for c in states],
                [self._name(c) for c in causes],
                [bool(r) for r in reused],
                list(errors),
            )

    def request_figures(self, default_max_tokens: int, default_model: str) -> RequestFigures:
        """Rows, invalid rows, token estimates and models, for a dry run's report."""
        invalid = STATE_CODES[RowState.INVALID]
        conn = self._conn
        rows, invalid_rows, prompt = conn.execute(
            "SELECT count(*), coalesce(sum(state=?),0), coalesce(sum(est_tokens),0) FROM items",
            (invalid,),
        ).fetchone()
        completion_max = conn.execute(
            "SELECT coalesce(sum(coalesce(json_extract(overrides,'$.max_tokens'), ?)),0) "
            "FROM items WHERE state != ?",
            (default_max_tokens, invalid),
        ).fetchone()[0]
        models = conn.execute(
            "SELECT coalesce(json_extract(overrides,'$.model'), ?), count(*) FROM items "
            "WHERE state != ? GROUP BY 1",
            (default_model, invalid),
        ).fetchall()
        return RequestFigures(
            rows=int(rows),
            invalid=int(invalid_rows),
            prompt_tokens_est=int(prompt),
            completion_tokens_max=int(completion_max),
            models={str(m): int(n) for m, n in models},
        )

    # ---- decoding

    def _work_item(self, row: Sequence[Any]) -> WorkItem:
        idx, row_id, state, messages, overrides, extra, est, attempts, first, rid, answer, loc = (
            row[:12]
        )
        return WorkItem(
            idx=idx,
            row_id=row_id,
            messages=messages if messages is not None else self._rebuild(extra),
            overrides=overrides,
            est_tokens=est,
            state=STATES[state],
            attempts=attempts or 0,
            first_submit_at=first,
            request_id=rid,
            fetched=answer,
            location=loc,
            rejected=row[12],
            endpoint=row[13],
        )

    def _rebuild(self, extra: str | None) -> str:
        """The messages of a row stored without them: the prompt template, filled again
        from the row's passthrough values (ingest stored NULL only where that gives back
        exactly what was read)."""
        from batchrun import codec

        if not self._template_read:
            identity = self.get_json("identity", {})
            self._template = PromptTemplate(
                identity.get("prompt_template"), identity.get("system_prompt")
            )
            self._extra_names = [name for name, _ in self.extra_columns()]
            self._template_read = True
        assert self._template is not None and self._extra_names is not None
        return codec.dumps(self._template.prompt_messages(decode_extra(extra, self._extra_names)))

    def _result_page(self, rows: list[Any]) -> ResultPage:
        """A page from _RESULT_SQL rows (its columns are ResultPage's fields, in order),
        stored values decoded."""
        columns: list[list[Any]] = [list(column) for column in zip(*rows, strict=True)]
        page = ResultPage(*columns)
        page.state = [STATES[code] for code in columns[2]]
        page.finish_reason = [self._name(v) for v in page.finish_reason]
        page.model = [self._name(v) for v in page.model]
        page.endpoint = [self._name(v) for v in page.endpoint]
        page.request_id = [decode_request_id(v) for v in page.request_id]
        page.reused = [bool(v) for v in page.reused]
        page.request_hash = [hash_hex(v) for v in page.request_hash]
        return page

    def _name(self, name_id: Any) -> Any:
        if name_id is None:
            return None
        name = self._names.get(name_id)
        if name is None:
            self._names = dict(self._conn.execute("SELECT id, name FROM names").fetchall())
            name = self._names[name_id]
        return name


_PLACE = re.compile(r"^(?P<where>[^\n]*?:\d+): ")


def split_location(error: str) -> tuple[str, str]:
    """An invalid row's error as (where, what): `in.jsonl:17: invalid JSON (...)` gives
    ("in.jsonl:17", "invalid JSON"). Details in parentheses differ row to row, so the
    cause leaves them out; the example keeps the place."""
    match = _PLACE.match(error)
    where = match.group("where") if match else "?"
    what = error[match.end() :] if match else error
    return where, what.split(" (", 1)[0].strip() or what


def _item_idx(item: WorkItem) -> int:
    return item.idx
