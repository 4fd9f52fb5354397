"""A row's whole lifecycle: its states, the transitions between them, and the Sink that
records each transition. Pure: no I/O, no clock.

    pending ──submitted──▶ inflight            (sent)
    inflight ──submitted──▶ inflight           (sent again after a retryable error)
    inflight ──accepted──▶ polling             (202: the request id is what to poll)
    polling ──fetched──▶ fetched               (a consume-once answer, stored raw)
    fetched ──fetched──▶ fetched               (the answer behind a stored link, stored)
    inflight ──located──▶ fetched              (a 302: the link to the answer, stored)
    polling ──located──▶ fetched               (a 302 to a poll)
    polling ──forgotten──▶ inflight            (the id expired or was spent: buy again)
    fetched ──forgotten──▶ inflight            (the stored link is dead: buy again)
    inflight ──rejected──▶ inflight           (the answer failed its schema: ask again)
    fetched ──rejected──▶ inflight            (a polled answer that failed its schema)
    inflight ──finished──▶ done | failed
    fetched ──finished──▶ done | failed
    polling ──finished──▶ failed               (never done: a polled answer is stored first)
    pending ──finished──▶ failed               (it cannot be sent: its image is gone)

Between runs the checkpoint moves rows on its own (checkpoint/store.py): a row left
`inflight` by a crash goes back to `pending` (at-least-once: nothing came back for it),
`--retry-failed` sends `failed` rows back to `pending`, `--reuse` finishes `pending` rows as
`done` from an earlier answer, and `--offline` fails them. A row read as `invalid` never
moves.

The engine changes a row only through `Lifecycle`, which checks that the move is one of
the above, updates the WorkItem and hands the Sink a frozen record of it. Which columns a
record writes is the checkpoint's business alone (checkpoint/writer.py); the Ray runner ships
the same records to the one checkpoint writer.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Protocol

from .records import Completion


class RowState(enum.StrEnum):
    """Where a row stands. The values are what `status` shows."""

    PENDING = "pending"  # not sent (or sent and lost to a crash: sent again)
    INFLIGHT = "inflight"  # a submission is on the wire, or waits to be tried again
    POLLING = "polling"  # the server accepted it (202); `request_id` is what to poll
    FETCHED = "fetched"  # a consume-once answer or its 302 link is stored, not yet parsed
    DONE = "done"
    FAILED = "failed"
    INVALID = "invalid"  # could not be read into a request: never sent

    @property
    def finished(self) -> bool:
        return self in FINISHED

    @property
    def holds_request(self) -> bool:
        """The server holds (or held) an answer for this row: poll or fetch it, never buy."""
        return self in (RowState.POLLING, RowState.FETCHED)


FINISHED = frozenset({RowState.DONE, RowState.FAILED, RowState.INVALID})
UNFINISHED = tuple(s for s in RowState if s not in FINISHED)
# Output `status` per state; anything unfinished is reported as `pending`.
OUTPUT_STATUS = {RowState.DONE: "ok", RowState.FAILED: "failed", RowState.INVALID: "invalid"}


@dataclass(slots=True)
class WorkItem:
    """A row the engine must finish: what to send, and where it stands."""

    idx: int  # position in the input: the output's order
    row_id: str
    messages: str  # JSON array, spliced into the request body
    overrides: str | None = None  # JSON object of per-row body fields
    est_tokens: int = 0
    state: RowState = RowState.PENDING
    attempts: int = 0  # HTTP submissions so far, across runs
    first_submit_at: float | None = None  # wall clock, for latency_s
    request_id: str | None = None  # a 202's NVCF-REQID still to poll
    fetched: str | None = None  # raw consume-once answer stored before a crash
    location: str | None = None  # a 302's download URL stored before a crash
    rejected: int = 0  # answers that failed the job's schema: each one retried with feedback
    endpoint: str | None = None  # the endpoint it was last sent to (a 202's id is polled there)


@dataclass(frozen=True, slots=True)
class Outcome:
    """A row's final result: DONE with a completion, or FAILED with an error."""

    state: RowState
    completion: Completion = field(default_factory=Completion)
    request_id: str | None = None
    status_code: int | None = None
    error: str | None = None
    cause: str | None = None  # what kind of failure: "HTTP 422", "TransportError", ...
    latency_s: float | None = None
    raw: str | None = None  # the answer as received (a failure's error body)
    endpoint: str | None = None  # the endpoint that answered (or failed) it last


# ---------------------------------------------------------------- the transitions


@dataclass(frozen=True, slots=True)
class Submitted:
    """Sent (again) to `endpoint`: `attempts` submissions so far, the first at
    `first_submit_at`."""

    idx: int
    attempts: int
    first_submit_at: float
    endpoint: str | None = None


@dataclass(frozen=True, slots=True)
class Accepted:
    """A 202: the answer is to be polled at `request_id` (durable within a second)."""

    idx: int
    request_id: str


@dataclass(frozen=True, slots=True)
class Fetched:
    """A polled answer, as received: it cannot be fetched again, so it is stored first."""

    idx: int
    answer: str


@dataclass(frozen=True, slots=True)
class Located:
    """A 302: the answer waits at `location` (handed out once, valid 24 h)."""

    idx: int
    request_id: str | None
    location: str


@dataclass(frozen=True, slots=True)
class Forgotten:
    """The server no longer holds the row's answer: it is to be bought again."""

    idx: int


@dataclass(frozen=True, slots=True)
class Rejected:
    """The answer failed the job's schema: the row is to be sent again with `messages`, its
    conversation extended by that answer and what was wrong with it. The answer's tokens were
    bought, so they are counted; `rejected` answers so far, the last failing with `error`."""

    idx: int
    rejected: int
    error: str
    messages: str
    completion: Completion


@dataclass(frozen=True, slots=True)
class Finished:
    """The row's final outcome, with what it took over all runs."""

    idx: int
    outcome: Outcome
    attempts: int
    first_submit_at: float | None
    finished_at: float


Transition = Submitted | Accepted | Fetched | Located | Forgotten | Rejected | Finished
TRANSITIONS: tuple[type[Transition], ...] = (
    Submitted, Accepted, Fetched, Located, Forgotten, Rejected, Finished
)  # fmt: skip


_S = RowState
# Every move of the lifecycle: (from, transition, to). The diagram above says the same.
EDGES: frozenset[tuple[RowState, type[Transition], RowState]] = frozenset(
    {
        (_S.PENDING, Submitted, _S.INFLIGHT),
        (_S.INFLIGHT, Submitted, _S.INFLIGHT),
        (_S.INFLIGHT, Accepted, _S.POLLING),
        (_S.POLLING, Fetched, _S.FETCHED),
        (_S.FETCHED, Fetched, _S.FETCHED),
        (_S.INFLIGHT, Located, _S.FETCHED),
        (_S.POLLING, Located, _S.FETCHED),
        (_S.POLLING, Forgotten, _S.INFLIGHT),
        (_S.FETCHED, Forgotten, _S.INFLIGHT),
        (_S.INFLIGHT, Rejected, _S.INFLIGHT),
        (_S.FETCHED, Rejected, _S.INFLIGHT),
        (_S.INFLIGHT, Finished, _S.DONE),
        (_S.INFLIGHT, Finished, _S.FAILED),
        (_S.FETCHED, Finished, _S.DONE),
        (_S.FETCHED, Finished, _S.FAILED),
        # A polled answer is stored (fetched) before it is used, so a row that is polling
        # can only fail; nor can a row never sent be done.
        (_S.POLLING, Finished, _S.FAILED),
        (_S.PENDING, Finished, _S.FAILED),
    }
)  # fmt: skip


class IllegalTransition(AssertionError):
    """The engine tried a move the lifecycle does not have: a bug, never a row's fault."""


class Sink(Protocol):
    """Where transitions are recorded: the checkpoint writer, or a proxy to it (Ray).

    Plain methods are durable within the checkpoint's batching bounds (SPEC.md); the
    awaited ones return once the record is committed (PROTOCOL.md decision 3).
    """

    def submitted(self, change: Submitted) -> None: ...

    def accepted(self, change: Accepted) -> None: ...

    def fetched(self, change: Fetched) -> Awaitable[None]: ...

    def located(self, change: Located) -> Awaitable[None]: ...

    def forgotten(self, change: Forgotten) -> None: ...

    def rejected(self, change: Rejected) -> None: ...

    def finished(self, change: Finished) -> None: ...


class BatchingSink:
    """A Sink that gathers the plain records and commits the awaited ones at once: the
    checkpoint writer batches for its thread, the Ray proxy for its actor. Subclasses say
    how a record is gathered (`_later`) and how one is committed before returning (`_now`).
    """

    __slots__ = ()

    def _later(self, change: Transition) -> None:
        raise NotImplementedError

    async def _now(self, change: Transition) -> None:
        raise NotImplementedError

    def submitted(self, change: Submitted) -> None:
        self._later(change)

    def accepted(self, change: Accepted) -> None:
        self._later(change)

    async def fetched(self, change: Fetched) -> None:
        await self._now(change)

    async def located(self, change: Located) -> None:
        await self._now(change)

    def forgotten(self, change: Forgotten) -> None:
        self._later(change)

    def rejected(self, change: Rejected) -> None:
        self._later(change)

    def finished(self, change: Finished) -> None:
        self._later(change)


class Lifecycle:
    """The only way the engine moves a row: checks the move, updates the item, records it."""

    __slots__ = ("sink",)

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    def submit(self, item: WorkItem, now: float, endpoint: str | None = None) -> None:
        _move(item, Submitted, RowState.INFLIGHT)
        item.attempts += 1
        item.endpoint = endpoint
        if item.first_submit_at is None:
            item.first_submit_at = now
        self.sink.submitted(Submitted(item.idx, item.attempts, item.first_submit_at, endpoint))

    def accept(self, item: WorkItem, request_id: str) -> None:
        _move(item, Accepted, RowState.POLLING)
        item.request_id = request_id
        self.sink.accepted(Accepted(item.idx, request_id))

    async def fetch(self, item: WorkItem, answer: str) -> None:
        _move(item, Fetched, RowState.FETCHED)
        item.fetched = answer
        await self.sink.fetched(Fetched(item.idx, answer))

    async def locate(self, item: WorkItem, request_id: str | None, location: str) -> None:
        _move(item, Located, RowState.FETCHED)
        item.request_id = request_id or item.request_id
        item.location = location
        await self.sink.located(Located(item.idx, item.request_id, location))

    def forget(self, item: WorkItem) -> None:
        _move(item, Forgotten, RowState.INFLIGHT)
        item.request_id = item.fetched = item.location = None
        self.sink.forgotten(Forgotten(item.idx))

    def reject(self, item: WorkItem, answer: Completion, error: str, messages: str) -> None:
        _move(item, Rejected, RowState.INFLIGHT)
        item.rejected += 1
        item.messages = messages
        item.request_id = item.fetched = item.location = None
        self.sink.rejected(Rejected(item.idx, item.rejected, error, messages, answer))

    def finish(self, item: WorkItem, outcome: Outcome, now: float) -> None:
        _move(item, Finished, outcome.state)
        self.sink.finished(
            Finished(item.idx, outcome, item.attempts, item.first_submit_at, finished_at=now)
        )


def _move(item: WorkItem, kind: type[Transition], target: RowState) -> None:
    if (item.state, kind, target) not in EDGES:
        raise IllegalTransition(
            f"row {item.row_id}: {kind.__name__} from {item.state} to {target} is not a move "
            "of the row lifecycle"
        )
    item.state = target
