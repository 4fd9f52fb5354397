"""Checkpoints in any state, made through batchrun's own API (ingest rows, then lifecycle
transitions through the real writer), so tests never write the schema's columns by hand."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchrun.checkpoint import Checkpoint, CheckpointWriter, IngestRow
from batchrun.columns import ColumnKinds
from batchrun.lifecycle import (
    Accepted,
    Fetched,
    Finished,
    Forgotten,
    Located,
    Outcome,
    RowState,
    Submitted,
    Transition,
)
from batchrun.payloads import PreparedRow
from batchrun.records import Completion

MESSAGES = '[{"role":"user","content":"hi"}]'


@dataclass
class Row:
    """An input row and the state to put it in."""

    idx: int
    row_id: str | None = None
    state: RowState = RowState.PENDING
    extra: dict[str, Any] | None = None
    messages: str = MESSAGES
    overrides: str | None = None
    est_tokens: int = 5
    request_hash: bytes | None = None
    error: str | None = None  # invalid rows: why; failed rows: the error
    attempts: int = 1
    request_id: str | None = None
    answer: str | None = None  # fetched rows: the stored answer
    location: str | None = None
    completion: Completion = field(default_factory=Completion)
    cause: str | None = None
    status_code: int | None = None
    latency_s: float | None = None
    raw: str | None = None


def ingest(checkpoint: Checkpoint, rows: Sequence[Row]) -> None:
    """Store rows as intake.ingest does (invalid ones with their error)."""
    kinds = ColumnKinds()
    new = []
    for r in rows:
        kinds.observe(r.extra)
        prepared = PreparedRow(
            row_id=r.row_id if r.row_id is not None else f"r{r.idx}",
            loc=f"in.jsonl:{r.idx + 1}",
            messages=r.messages,
            overrides=r.overrides,
            extra=r.extra,
            est_tokens=r.est_tokens,
            error=(r.error or "in.jsonl: invalid") if r.state is RowState.INVALID else None,
        )
        new.append(IngestRow(r.idx, prepared, r.request_hash))
    checkpoint.insert_rows(new, kinds.names)
    known = checkpoint.extra_columns()
    names = {name for name, _ in known}
    checkpoint.set_json("extra_columns", known + [c for c in kinds.as_list() if c[0] not in names])
    checkpoint.set_meta("ingest_complete", "1")


def transitions(r: Row, now: float) -> list[Transition]:
    """The lifecycle moves that take a pending row to `r.state`."""
    if r.state in (RowState.PENDING, RowState.INVALID):
        return []
    # One Submitted per submission, as the engine records them.
    moves: list[Transition] = [Submitted(r.idx, n, now - 1.0) for n in range(1, r.attempts + 1)]
    if r.state is RowState.POLLING or (r.state is RowState.FETCHED and r.location is None):
        moves.append(Accepted(r.idx, r.request_id or f"rid-{r.idx}"))
    if r.state is RowState.FETCHED:
        if r.location is not None:
            moves.append(Located(r.idx, r.request_id, r.location))
        if r.answer is not None:
            moves.append(Fetched(r.idx, r.answer))
    if r.state in (RowState.DONE, RowState.FAILED):
        outcome = Outcome(
            r.state,
            r.completion,
            request_id=r.request_id,
            status_code=r.status_code
            if r.status_code is not None
            else (200 if r.state is RowState.DONE else None),
            error=r.error,
            cause=r.cause
            if r.cause is not None
            else ("HTTP 422" if r.state is RowState.FAILED else None),
            latency_s=r.latency_s,
            raw=r.raw,
        )
        moves.append(Finished(r.idx, outcome, r.attempts, now - 1.0, now))
    return moves


def apply(path: Path, moves: Sequence[Transition], *, keep_answer_bodies: bool = False) -> None:
    """Commit transitions through the real writer thread."""
    writer = CheckpointWriter(path, keep_answer_bodies=keep_answer_bodies)
    try:
        writer.apply(list(moves))
        writer.flush()
    finally:
        writer.close()


def build(path: Path, rows: Sequence[Row], **settings: Any) -> Checkpoint:
    """A new checkpoint holding `rows` in their states (open: the caller closes it)."""
    checkpoint = Checkpoint.create(path)
    checkpoint.set_json("settings", settings)
    checkpoint.set_json("identity", {})
    ingest(checkpoint, rows)
    now = time.time()
    apply(path, [move for r in rows for move in transitions(r, now)])
    return checkpoint


def forget(path: Path, idx: int) -> None:
    apply(path, [Forgotten(idx)])


def row_states(path: Path) -> dict[str, tuple[RowState, str | None]]:
    """Every row's state and request id, read as `status` reads (safe while a job runs)."""
    from batchrun.checkpoint import open_reader

    reader = open_reader(path)
    try:
        return {
            row_id: (state, request_id)
            for page in reader.result_pages()
            for row_id, state, request_id in zip(
                page.row_id, page.state, page.request_id, strict=True
            )
        }
    finally:
        reader.close()


def counts(path: Path) -> dict[RowState, int]:
    """Rows per state ({} while the checkpoint cannot be read yet)."""
    import sqlite3

    from batchrun.checkpoint import open_reader
    from batchrun.errors import CheckpointError

    try:
        reader = open_reader(path)
    except (CheckpointError, sqlite3.Error):
        return {}
    try:
        return reader.counts()
    except sqlite3.Error:
        return {}
    finally:
        reader.close()


def count(path: Path, state: RowState) -> int:
    """Rows in `state` (0 while the checkpoint cannot be read yet)."""
    return counts(path).get(state, 0)


def wait_until(condition: Any, *, timeout: float = 60.0, every: float = 0.05) -> None:
    """Return once `condition()` is true; fail the test (not hang it) after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout:g}s")
        time.sleep(every)
