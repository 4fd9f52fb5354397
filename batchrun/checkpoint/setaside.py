"""Tokens a row bought that are not in its result: the answers that failed the job's schema
(commit.py writes them as they are rejected), and a failed result that --retry-failed sets
aside to ask again. They stay counted and priced; they live in `validations` with the row's
retry state, so `totals` can still be summed afresh from the ledger.
"""

from __future__ import annotations

import sqlite3

from .schema import has_table

_TOKENS = "prompt_tokens, completion_tokens, total_tokens"


def set_aside_results(conn: sqlite3.Connection, chosen: str) -> None:
    """Rows (`chosen`: an SQL condition on idx) about to be asked afresh: their results leave
    the ledger, their bought tokens move to `validations`, their conversation restarts."""
    conn.execute(
        f"INSERT INTO validations (idx, rejected, {_TOKENS}) SELECT idx, 0, "
        "coalesce(prompt_tokens, 0), coalesce(completion_tokens, 0), coalesce(total_tokens, 0) "
        f"FROM results WHERE {chosen} AND NOT reused AND true "
        "ON CONFLICT (idx) DO UPDATE SET rejected = 0, error = NULL, messages = NULL, "
        "prompt_tokens = prompt_tokens + excluded.prompt_tokens, "
        "completion_tokens = completion_tokens + excluded.completion_tokens, "
        "total_tokens = total_tokens + excluded.total_tokens"
    )
    # Only what was not bought leaves the totals: a reused answer's tokens.
    conn.execute(
        "UPDATE totals SET prompt_tokens = prompt_tokens - s.p, "
        "completion_tokens = completion_tokens - s.c, total_tokens = total_tokens - s.t, "
        "reused = reused - s.r FROM (SELECT coalesce(sum(prompt_tokens), 0) AS p, "
        "coalesce(sum(completion_tokens), 0) AS c, coalesce(sum(total_tokens), 0) AS t, "
        f"count(*) AS r FROM results WHERE {chosen} AND reused) AS s"
    )
    conn.execute(f"DELETE FROM results WHERE {chosen}")


def add_set_aside_to_totals(conn: sqlite3.Connection) -> None:
    """After `totals` was summed from the results: add the tokens set aside (none before
    schema 4, which has no such table)."""
    if not has_table(conn, "validations"):
        return
    conn.execute(
        "UPDATE totals SET prompt_tokens = prompt_tokens + s.p, "
        "completion_tokens = completion_tokens + s.c, total_tokens = total_tokens + s.t, "
        "bought_prompt_tokens = bought_prompt_tokens + s.p, "
        "bought_completion_tokens = bought_completion_tokens + s.c "
        "FROM (SELECT coalesce(sum(prompt_tokens), 0) AS p, "
        "coalesce(sum(completion_tokens), 0) AS c, coalesce(sum(total_tokens), 0) AS t "
        "FROM validations) AS s"
    )
