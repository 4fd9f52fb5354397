"""Fakes for driving the real Engine without sockets, sleeps or SQLite.

- `FakeTransport` answers every HTTP exchange from a handler and records the calls;
- `FakeClock` is time that moves only when the code sleeps through it;
- `FakeSink` is the lifecycle Sink: it records every transition in order, keeps per row what
  the checkpoint would hold, and notes every move that is not an edge of `lifecycle.EDGES`
  (or that comes before a consume-once answer was committed);
- `make_engine` wires them as the local runner does, through `factory.build_engine`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import io
import json
import random
import zipfile
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from multidict import CIMultiDict

from batchrun.budget import Budget
from batchrun.config import RunConfig, build_config
from batchrun.engine import Engine
from batchrun.factory import Services, build_engine, expected_completion
from batchrun.lifecycle import (
    EDGES,
    Accepted,
    Fetched,
    Finished,
    Forgotten,
    Located,
    Rejected,
    RowState,
    Sink,
    Submitted,
    Transition,
    WorkItem,
)
from batchrun.limits import RateLimiter, RateWindow
from batchrun.monitor import RunStats
from batchrun.stop import StopSignal

BASE = "https://integrate.api.nvidia.com/v1"
CHAT = f"{BASE}/chat/completions"
FALLBACK = "https://api.nvcf.nvidia.com/v2/nvcf/pexec/status/"
MESSAGES = '[{"role":"user","content":"hi"}]'
HOLD = 7
# No rate limit to speak of, no poll spacing; back-off as configured by default (it costs
# nothing on the fake clock).
FAST: dict[str, Any] = {
    "base_url": BASE,
    "rpm": 100000,
    "concurrency": 4,
    "max_attempts": 4,
    "hold_seconds": HOLD,
    "min_poll_interval": 0,
    "backoff_base": 1,
    "backoff_max": 8,
    "grace": 5,
}
RUN_GUARD_S = 30.0  # only so that a hung engine fails a test rather than hanging it
MONOTONIC_START = 1000.0
WALL_START = 1_700_000_000.0

T = TypeVar("T")


def status(rid: str) -> str:
    return f"{BASE}/status/{rid}"


def completion_body(content: str = "hello", usage: tuple[int, int, int] = (3, 2, 5)) -> bytes:
    return json.dumps(
        {
            "id": "x",
            "object": "chat.completion",
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": usage[0],
                "completion_tokens": usage[1],
                "total_tokens": usage[2],
            },
        }
    ).encode()


BODY = completion_body()

# ---------------------------------------------------------------- replies

Reply = tuple[int, dict[str, str], bytes]


def ok(rid: str = "rid-ok", body: bytes = BODY) -> Reply:
    return 200, {"Content-Type": "application/json", "NVCF-REQID": rid}, body


def accepted(rid: str) -> Reply:
    return 202, {"NVCF-REQID": rid, "NVCF-STATUS": "in-progress", "Content-Length": "0"}, b""


def problem(
    code: int,
    title: str,
    detail: str | None = None,
    *,
    rid: str | None = "rid-err",
    headers: dict[str, str] | None = None,
    content_type: str = "application/problem+json",
) -> Reply:
    doc: dict[str, Any] = {"type": "about:blank", "title": title, "status": code}
    if detail is not None:
        doc["detail"] = detail
    hdrs = {"Content-Type": content_type, **(headers or {})}
    if rid is not None:
        hdrs["NVCF-REQID"] = rid
    return code, hdrs, json.dumps(doc).encode()


def plain(code: int, text: str) -> Reply:
    return code, {"Content-Type": "text/plain; charset=utf-8"}, text.encode()


def redirect(url: str, rid: str | None = None) -> Reply:
    return 302, {"Location": url, **({"NVCF-REQID": rid} if rid else {})}, b""


def zip_with(member: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("artifact.txt", b"not the answer")
        archive.writestr(member, data)
    return buf.getvalue()


def sse(*chunks: dict[str, Any], done: bool = True) -> bytes:
    out = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
    return out + (b"data: [DONE]\n\n" if done else b"")


# ---------------------------------------------------------------- the wire


@dataclass
class Call:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None
    time_limit: float
    at: float  # the fake clock's monotonic time when the call was made

    @property
    def prompt(self) -> str:
        """The user message of a POST (identifies the row in multi-row tests)."""
        assert self.body is not None
        return str(json.loads(self.body)["messages"][0]["content"])


class FakeResponse:
    def __init__(self, code: int, headers: dict[str, str], body: bytes) -> None:
        self.status = code
        self.headers = CIMultiDict(headers)
        self._body = body

    async def read(self) -> bytes:
        return self._body

    async def lines(self) -> AsyncIterator[bytes]:
        for line in self._body.split(b"\n"):
            await asyncio.sleep(0)
            yield line


Handler = Callable[[Call], Any]  # -> Reply | BaseException | awaitable of either


class FakeTransport:
    """The Transport protocol, answered by `handler`; records calls and POST concurrency."""

    def __init__(self, handler: Handler, clock: FakeClock) -> None:
        self.handler = handler
        self.clock = clock
        self.calls: list[Call] = []
        self.posts_in_flight = 0
        self.max_posts_in_flight = 0
        self.closed = False

    @asynccontextmanager
    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Any,
        body: bytes | None = None,
        time_limit: float,
    ) -> AsyncIterator[FakeResponse]:
        call = Call(method, url, dict(headers), body, time_limit, self.clock.monotonic())
        self.calls.append(call)
        post = method == "POST"
        if post:
            self.posts_in_flight += 1
            self.max_posts_in_flight = max(self.max_posts_in_flight, self.posts_in_flight)
        try:
            await asyncio.sleep(0)  # let other tasks run while this one is "on the wire"
            result = self.handler(call)
            if inspect.isawaitable(result):
                result = await result
            if isinstance(result, BaseException):
                raise result
            await asyncio.sleep(0)
            code, hdrs, data = result
            yield FakeResponse(code, hdrs, data)
        finally:
            if post:
                self.posts_in_flight -= 1

    async def close(self) -> None:
        self.closed = True

    def summary(self) -> list[tuple[str, str]]:
        return [(c.method, c.url) for c in self.calls]


class Script:
    """A handler answering calls with the given replies, in order."""

    def __init__(self, *replies: Reply | BaseException) -> None:
        self.remaining = list(replies)

    def __call__(self, call: Call) -> Reply | BaseException:
        assert self.remaining, f"unexpected extra call: {call.method} {call.url}"
        return self.remaining.pop(0)


# ---------------------------------------------------------------- time


class FakeClock:
    """The Clock protocol on time that moves only when the code sleeps through it.

    `sleep(s)` records `s`, yields once to the loop and moves both clocks on to the sleep's
    end (if they are not past it already: sleeps that overlap end together, as they would,
    rather than one after the other). A sleep of `block_from` seconds or more is recorded
    but never ends (only a cancellation, e.g. a stop ending StopSignal.sleep, gets the
    sleeper out): for "is it really waiting?" tests.
    """

    def __init__(self, *, block_from: float | None = None) -> None:
        self._monotonic = MONOTONIC_START
        self._wall = WALL_START
        self.block_from = block_from
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self._monotonic

    def wall(self) -> float:
        return self._wall

    def advance(self, seconds: float) -> None:
        self._monotonic += seconds
        self._wall += seconds

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        self.sleeps.append(seconds)
        if self.block_from is not None and seconds >= self.block_from:
            await asyncio.get_running_loop().create_future()  # until cancelled
        end = self._monotonic + seconds
        await asyncio.sleep(0)
        self.advance(max(0.0, end - self._monotonic))

    @property
    def slept(self) -> float:
        return sum(self.sleeps)


# ---------------------------------------------------------------- the checkpoint


@dataclass
class RowView:
    """What the checkpoint would hold for a row after the transitions seen so far."""

    state: RowState = RowState.PENDING
    attempts: int = 0
    first_submit_at: float | None = None
    request_id: str | None = None
    fetched: str | None = None  # a stored consume-once answer
    location: str | None = None  # a stored 302 link
    # set by Finished (the outcome's fields)
    finished_at: float | None = None
    content: str | None = None
    reasoning_content: str | None = None
    finish_reason: str | None = None
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    status_code: int | None = None
    error: str | None = None
    cause: str | None = None
    latency_s: float | None = None
    raw: str | None = None


def target_of(change: Transition) -> RowState:
    """The state a transition takes its row to."""
    if isinstance(change, Submitted | Forgotten | Rejected):
        return RowState.INFLIGHT
    if isinstance(change, Accepted):
        return RowState.POLLING
    if isinstance(change, Fetched | Located):
        return RowState.FETCHED
    return change.outcome.state


Edge = tuple[RowState, type[Transition], RowState]


class FakeSink:
    """The lifecycle Sink, in memory (or in front of a real one, `forward`).

    Records every transition in order (`changes`, and the moves they made in `edges`), keeps
    per row what the checkpoint would hold (`rows`), and lists in `illegal` every move that is
    not an edge of lifecycle.EDGES from the row's current state, every Submitted whose count
    is not one more than before, and every transition of a row made while a consume-once
    answer of that row was still being committed. Call `check()` after a run.
    """

    def __init__(self, forward: Sink | None = None, *, commit_yields: int = 3) -> None:
        self.forward = forward
        self.commit_yields = commit_yields
        self.rows: dict[int, RowView] = {}
        self.changes: list[Transition] = []
        self.edges: list[Edge] = []
        self.illegal: list[str] = []
        self.committed: list[Fetched | Located] = []  # awaited records, once committed
        self._committing: Counter[int] = Counter()

    def track(self, item: WorkItem) -> None:
        """Start from where `item` stands (a row resumed from an earlier run)."""
        self.rows[item.idx] = RowView(
            state=item.state,
            attempts=item.attempts,
            first_submit_at=item.first_submit_at,
            request_id=item.request_id,
            fetched=item.fetched,
            location=item.location,
        )

    def row(self, idx: int = 0) -> RowView:
        return self.rows.get(idx) or RowView()

    def check(self) -> None:
        assert not self.illegal, "\n".join(self.illegal)
        assert not +self._committing, f"commits never finished: {dict(self._committing)}"

    def moves(self, idx: int = 0) -> list[tuple[str, RowState]]:
        """(transition, state it led to) for one row, in order."""
        return [(type(c).__name__, target_of(c)) for c in self.changes if c.idx == idx]

    def of(self, kind: type[T], idx: int = 0) -> list[T]:
        return [c for c in self.changes if isinstance(c, kind) and c.idx == idx]

    # ---- recording

    def _record(self, change: Transition) -> RowView:
        row = self.rows.setdefault(change.idx, RowView())
        name = type(change).__name__
        if self._committing[change.idx]:
            self.illegal.append(
                f"row {change.idx}: {name} while a stored answer was still being committed"
            )
        edge = (row.state, type(change), target_of(change))
        if edge not in EDGES:
            self.illegal.append(
                f"row {change.idx}: {name} from {row.state} to {edge[2]} is not an edge"
            )
        self.edges.append(edge)
        self.changes.append(change)
        row.state = edge[2]
        return row

    def submitted(self, change: Submitted) -> None:
        row = self._record(change)
        if change.attempts != row.attempts + 1:
            self.illegal.append(
                f"row {change.idx}: Submitted says {change.attempts} attempts after {row.attempts}"
            )
        row.attempts = change.attempts
        row.first_submit_at = change.first_submit_at
        if self.forward is not None:
            self.forward.submitted(change)

    def accepted(self, change: Accepted) -> None:
        self._record(change).request_id = change.request_id
        if self.forward is not None:
            self.forward.accepted(change)

    def fetched(self, change: Fetched) -> Awaitable[None]:
        row = self._record(change)
        return self._commit(change, lambda: setattr(row, "fetched", change.answer))

    def located(self, change: Located) -> Awaitable[None]:
        row = self._record(change)

        def store() -> None:
            row.request_id, row.location = change.request_id, change.location

        return self._commit(change, store)

    def _commit(
        self, change: Fetched | Located, store: Callable[[], None]
    ) -> Coroutine[Any, Any, None]:
        self._committing[change.idx] += 1  # from the call: an un-awaited commit is caught

        async def commit() -> None:
            try:
                for _ in range(self.commit_yields):
                    await asyncio.sleep(0)  # a commit takes a while: the caller must wait
                if self.forward is not None:
                    await getattr(self.forward, type(change).__name__.lower())(change)
                store()
                self.committed.append(change)
            finally:
                self._committing[change.idx] -= 1

        return commit()

    def forgotten(self, change: Forgotten) -> None:
        row = self._record(change)
        row.request_id = row.fetched = row.location = None
        if self.forward is not None:
            self.forward.forgotten(change)

    def rejected(self, change: Rejected) -> None:
        row = self._record(change)
        row.request_id = row.fetched = row.location = None
        if self.forward is not None:
            self.forward.rejected(change)

    def finished(self, change: Finished) -> None:
        row = self._record(change)
        o, c = change.outcome, change.outcome.completion
        if change.attempts != row.attempts:
            self.illegal.append(
                f"row {change.idx}: Finished with {change.attempts} attempts after "
                f"{row.attempts} submissions"
            )
        row.attempts, row.first_submit_at = change.attempts, change.first_submit_at
        row.finished_at = change.finished_at
        row.request_id, row.fetched, row.location = o.request_id, None, None
        row.content, row.reasoning_content = c.content, c.reasoning_content
        row.finish_reason, row.model = c.finish_reason, c.model
        row.prompt_tokens, row.completion_tokens = c.prompt_tokens, c.completion_tokens
        row.total_tokens = c.total_tokens
        row.status_code, row.error, row.cause = o.status_code, o.error, o.cause
        row.latency_s, row.raw = o.latency_s, o.raw
        if self.forward is not None:
            self.forward.finished(change)


class RecordingEvents:
    """An EventSink that keeps every event."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def emit(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))

    def named(self, event: str) -> list[dict[str, Any]]:
        return [f for e, f in self.events if e == event]


# ---------------------------------------------------------------- wiring


@dataclass
class Harness:
    cfg: RunConfig
    transport: FakeTransport
    clock: FakeClock
    limiter: RateLimiter
    sink: FakeSink
    stats: RunStats
    stop: StopSignal
    events: RecordingEvents
    engine: Engine
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def row(self) -> RowView:
        return self.sink.row(0)

    async def run(self, *items: WorkItem) -> None:
        """Run items one after another, each tracked by the sink from where it stands."""
        for item in items:
            self.sink.track(item)
            await self.engine.run_item(item)


def make_engine(
    handler: Handler,
    sink: FakeSink | None = None,
    *,
    clock: FakeClock | None = None,
    budget: Budget | None = None,
    seed: int = 0,
    **settings: Any,
) -> Harness:
    """Wire an engine as the local runner does (factory.build_engine), on a fake clock.
    Call inside the running event loop."""
    cfg = build_config(cli_values={**FAST, **settings})
    clock = clock or FakeClock()
    transport = FakeTransport(handler, clock)
    stop = StopSignal(clock)
    limiter = RateLimiter(
        RateWindow(cfg.rpm or None, cfg.tpm, rng=random.Random(seed)),
        clock=clock.monotonic,
        sleep=clock.sleep,
        expected_completion=expected_completion(cfg),
    )
    sink = FakeSink() if sink is None else sink
    stats = RunStats()
    events = RecordingEvents()
    services = Services(limiter=limiter, sink=sink, budget=budget, events=events)
    engine = build_engine(
        cfg, transport, services, stats=stats, stop=stop, clock=clock, rng=random.Random(seed)
    )
    return Harness(cfg, transport, clock, limiter, sink, stats, stop, events, engine)


def new_item(idx: int = 0, messages: str = MESSAGES, **fields: Any) -> WorkItem:
    return WorkItem(idx, f"row-{idx}", messages=messages, **fields)


def held(idx: int = 0, **fields: Any) -> WorkItem:
    """A row an earlier run left holding a request: POLLING, or FETCHED with an answer or
    a link (attempts 1 unless given)."""
    state = RowState.FETCHED if ("fetched" in fields or "location" in fields) else RowState.POLLING
    fields.setdefault("attempts", 1)
    fields.setdefault("first_submit_at", WALL_START - 100.0)
    return new_item(idx, state=state, **fields)


def guarded(coro: Awaitable[T]) -> Coroutine[Any, Any, T]:
    """`coro` under a generous time limit: a hung engine fails instead of hanging."""

    async def main() -> T:
        return await asyncio.wait_for(coro, RUN_GUARD_S)

    return main()


def run_one(handler: Handler, item: WorkItem | None = None, **settings: Any) -> Harness:
    """Run one row (a copy of `item`, else a new one) to where the engine leaves it; checks
    the sink."""

    async def main() -> Harness:
        h = make_engine(handler, **settings)
        await h.run(new_item() if item is None else dataclasses.replace(item))
        return h

    h = asyncio.run(guarded(main()))
    h.sink.check()
    return h


def assert_done(row: RowView, *, request_id: str | None, content: str = "hello") -> None:
    assert row.state is RowState.DONE
    assert row.content == content
    assert (row.prompt_tokens, row.completion_tokens, row.total_tokens) == (3, 2, 5)
    assert row.finish_reason == "stop"
    assert row.model == "m"
    assert row.status_code == 200
    assert row.error is None
    assert row.cause is None
    assert row.request_id == request_id
