"""The engine (batchrun/runner.py) against a scripted fake Transport: no sockets.

Every test drives real EndpointClient / RateLimiter / Engine objects; only the network hop
is replaced by `FakeTransport`, which answers from a handler and records every call, and
the checkpoint by `FakeSink` (or the real Store + CheckpointWriter for dispatcher tests).
"""

from __future__ import annotations

import asyncio
import inspect
import io
import json
import math
import zipfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict

from batchrun.client import EndpointClient
from batchrun.config import RunConfig, build_config
from batchrun.errors import AuthError, Interrupted, JobStopped, TransportError
from batchrun.limits import RateLimiter, RateWindow
from batchrun.records import FINAL_COLUMNS, WorkItem
from batchrun.runner import POLL_RETRY_MAX_S, Engine, RunStats, StopSignal, dispatch, run_engine
from batchrun.store import RESULT_COLUMNS, CheckpointWriter, Store

BASE = "https://integrate.api.nvidia.com/v1"
CHAT = f"{BASE}/chat/completions"
FALLBACK = "https://api.nvcf.nvidia.com/v2/nvcf/pexec/status/"
MESSAGES = '[{"role":"user","content":"hi"}]'
HOLD = 7
# Fast settings: no rate limiting to speak of, no poll spacing, (near) zero back-off.
FAST: dict[str, Any] = {
    "base_url": BASE,
    "rpm": 100000,
    "concurrency": 4,
    "max_attempts": 4,
    "hold_seconds": HOLD,
    "min_poll_interval": 0,
    "backoff_base": 0,
    "backoff_max": 0.001,
    "grace": 5,
}
SLEEP_CAP = 0.05  # real seconds any engine/limiter sleep may take in these tests
RUN_GUARD_S = 30.0  # only so that a hung engine fails a test rather than hanging it


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


def zip_with(member: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("artifact.txt", b"not the answer")
        archive.writestr(member, data)
    return buf.getvalue()


def sse(*chunks: dict[str, Any], done: bool = True) -> bytes:
    out = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
    return out + (b"data: [DONE]\n\n" if done else b"")


# ---------------------------------------------------------------- fakes


@dataclass
class Call:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None
    time_limit: float

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

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
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
        call = Call(method, url, dict(headers), body, time_limit)
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


class FakeSink:
    """In-memory checkpoint: merged columns per row plus the order of every update."""

    def __init__(self) -> None:
        self.rows: dict[int, dict[str, Any]] = {}
        self.events: list[tuple[str, int, dict[str, Any]]] = []

    def update(self, idx: int, columns: dict[str, Any]) -> None:
        self.events.append(("update", idx, dict(columns)))
        self.rows.setdefault(idx, {}).update(columns)

    async def update_now(self, idx: int, columns: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        self.events.append(("update_now", idx, dict(columns)))
        self.rows.setdefault(idx, {}).update(columns)

    def submitted(self, idx: int, attempts: int, first_submit_at: float | None) -> None:
        cols = {"state": "inflight", "attempts": attempts, "first_submit_at": first_submit_at}
        self.update(idx, cols)

    def finished(self, idx: int, values: tuple[Any, ...]) -> None:
        self.update(idx, dict(zip(FINAL_COLUMNS, values, strict=True)))

    def states(self, idx: int = 0) -> list[tuple[str, str]]:
        return [
            (kind, cols["state"]) for kind, i, cols in self.events if i == idx and "state" in cols
        ]


class RecordingStop(StopSignal):
    """A StopSignal whose sleeps are recorded and (unless cap=None) cut to `cap` seconds."""

    def __init__(self, cap: float | None = SLEEP_CAP) -> None:
        super().__init__()
        self.cap = cap
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.sleeps.append(seconds)
        await super().sleep(seconds if self.cap is None else min(seconds, self.cap))

    async def nap(self, seconds: float) -> None:
        if seconds > 0:
            self.sleeps.append(seconds)
        await super().nap(seconds if self.cap is None else min(seconds, self.cap))


@dataclass
class Harness:
    cfg: RunConfig
    transport: FakeTransport
    client: EndpointClient
    limiter: RateLimiter
    sink: Any
    stats: RunStats
    stop: RecordingStop
    engine: Engine
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def row(self) -> dict[str, Any]:
        return dict(self.sink.rows.get(0, {}))


def make_engine(
    handler: Handler,
    sink: Any = None,
    *,
    cap: float | None = SLEEP_CAP,
    wall_clock: Callable[[], float] | None = None,
    **settings: Any,
) -> Harness:
    """Wire an engine as job._run_async does. Call inside the running event loop."""
    cfg = build_config(cli_values={**FAST, **settings})
    transport = FakeTransport(handler)
    stop = RecordingStop(cap)
    limiter = RateLimiter(RateWindow(cfg.rpm, cfg.tpm), sleep=stop.sleep)
    client = EndpointClient(transport, cfg)
    stats = RunStats()
    sink = FakeSink() if sink is None else sink
    extra: dict[str, Any] = {} if wall_clock is None else {"wall_clock": wall_clock}
    engine = Engine(cfg, client, limiter, sink, stats, stop=stop, **extra)
    return Harness(cfg, transport, client, limiter, sink, stats, stop, engine)


def new_item(idx: int = 0, **fields: Any) -> WorkItem:
    return WorkItem(idx, f"row-{idx}", messages=MESSAGES, **fields)


def run_one(handler: Handler, item: WorkItem | None = None, **settings: Any) -> Harness:
    async def main() -> Harness:
        h = make_engine(handler, **settings)
        await h.engine.run_item(item if item is not None else new_item())
        return h

    return asyncio.run(main())


def assert_done(row: dict[str, Any], *, request_id: str | None, content: str = "hello") -> None:
    assert row["state"] == "done"
    assert row["content"] == content
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (3, 2, 5)
    assert row["finish_reason"] == "stop"
    assert row["model"] == "m"
    assert row["status_code"] == 200
    assert row["error"] is None
    assert row["request_id"] == request_id


# ---------------------------------------------------------------- one row, one answer


def test_200_at_once_is_done_after_one_post() -> None:
    h = run_one(Script(ok("rid-1")))

    assert h.transport.summary() == [("POST", CHAT)]
    post = h.transport.calls[0]
    assert post.headers["NVCF-POLL-SECONDS"] == str(HOLD)
    assert post.headers["Accept"] == "application/json"
    sent = json.loads(post.body or b"")
    assert sent["messages"] == [{"role": "user", "content": "hi"}]
    assert sent["model"] == "qwen/qwen3.5-397b-a17b"
    row = h.row
    assert_done(row, request_id="rid-1")
    assert row["attempts"] == 1
    assert row["response"] == BODY.decode()
    assert h.sink.states() == [("update", "inflight"), ("update", "done")]
    s = h.stats
    assert (s.ok, s.failed, s.submissions, s.polls, s.retries) == (1, 0, 1, 0, 0)
    assert (s.prompt_tokens, s.completion_tokens, s.in_flight, s.pending_ids) == (3, 2, 0, 0)


def test_202_is_long_polled_and_the_answer_stored_raw_before_done() -> None:
    final = completion_body("polled answer")
    h = run_one(Script(accepted("rid-7"), accepted("rid-7"), accepted("rid-7"), ok("rid-7", final)))

    assert h.transport.summary() == [("POST", CHAT)] + [("GET", status("rid-7"))] * 3
    for call in h.transport.calls:
        assert call.headers["NVCF-POLL-SECONDS"] == str(HOLD)
    row = h.row
    assert_done(row, request_id="rid-7", content="polled answer")
    assert row["attempts"] == 1
    assert h.sink.states() == [
        ("update", "inflight"),
        ("update", "polling"),
        ("update_now", "fetched"),
        ("update", "done"),
    ]
    polling = next(c for _, _, c in h.sink.events if c.get("state") == "polling")
    assert polling["request_id"] == "rid-7"
    fetched = next(c for k, _, c in h.sink.events if k == "update_now")
    assert fetched["response"] == final.decode()
    assert (h.stats.accepted, h.stats.polls, h.stats.submissions) == (1, 3, 1)
    assert h.stats.pending_ids == 0


@pytest.mark.parametrize("content_type", ["application/problem+json", "application/json"])
def test_poll_404_problem_means_expired_and_the_row_is_bought_again(content_type: str) -> None:
    expired = problem(404, "Not Found", rid=None, content_type=content_type)
    h = run_one(Script(accepted("old"), expired, ok("new")))

    assert h.transport.summary() == [("POST", CHAT), ("GET", status("old")), ("POST", CHAT)]
    assert h.stats.rebuys == 1
    row = h.row
    assert_done(row, request_id="new")
    assert row["attempts"] == 2
    # The spent id was dropped before the row was sent again.
    forgets = [c for _, _, c in h.sink.events if "request_id" in c and c["request_id"] is None]
    assert forgets and forgets[0]["state"] == "inflight"


def test_poll_plain_404_switches_status_url_once_for_the_whole_job() -> None:
    script = Script(
        accepted("r4"),
        plain(404, "404 page not found"),
        ok("r4"),
        accepted("r5"),
        ok("r5"),
    )

    async def main() -> Harness:
        h = make_engine(script)
        await h.engine.run_item(new_item(0))
        await h.engine.run_item(new_item(1))
        return h

    h = asyncio.run(main())
    assert h.transport.summary() == [
        ("POST", CHAT),
        ("GET", status("r4")),
        ("GET", FALLBACK + "r4"),
        ("POST", CHAT),
        ("GET", FALLBACK + "r5"),  # the switch holds for later rows
    ]
    assert h.stats.rebuys == 0
    assert_done(h.sink.rows[0], request_id="r4")
    assert h.sink.rows[0]["attempts"] == 1
    assert_done(h.sink.rows[1], request_id="r5")


def test_status_url_fallback_is_configurable() -> None:
    other = "https://poll.example.nvidia.com/v2/status/{request_id}"
    h = run_one(
        Script(accepted("r9"), plain(404, "404 page not found"), ok("r9")),
        status_url_fallback=other,
    )
    assert h.transport.summary() == [
        ("POST", CHAT),
        ("GET", status("r9")),
        ("GET", "https://poll.example.nvidia.com/v2/status/r9"),
    ]
    assert_done(h.row, request_id="r9")


# ---------------------------------------------------------------- retries and failures


@pytest.mark.parametrize(
    ("first", "cause"),
    [
        (problem(500, "Internal Server Error", "Invocation failed"), "HTTP 500"),
        (problem(502, "Bad Gateway", "Upstream request failed."), "HTTP 502"),
        (problem(503, "Service Unavailable", "model offline"), "HTTP 503"),
        ((504, {"NVCF-REQID": "r-504"}, b""), "HTTP 504"),
        (problem(408, "Request Timeout"), "HTTP 408"),
        (plain(429, "slow down"), "HTTP 429"),
        (TransportError("POST https://x: server closed the connection"), "TransportError"),
    ],
    ids=["500", "502", "503", "504-empty", "408", "429", "dropped"],
)
def test_retryable_failure_then_200(first: Reply | BaseException, cause: str) -> None:
    h = run_one(Script(first, ok("rid-2")))

    assert h.transport.summary() == [("POST", CHAT), ("POST", CHAT)]
    row = h.row
    assert_done(row, request_id="rid-2")
    assert row["attempts"] == 2
    assert h.stats.retries == 1
    assert dict(h.stats.causes) == {cause: 1}
    assert (h.stats.ok, h.stats.failed) == (1, 0)
    assert "failed" not in [state for _, state in h.sink.states()]


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (
            problem(422, "Unprocessable Entity", "max_tokens must be <= 8192"),
            "HTTP 422: Unprocessable Entity: max_tokens must be <= 8192",
        ),
        (
            (
                400,
                {"Content-Type": "application/json"},
                b'{"error":{"message":"model is required","type":"invalid_request_error"}}',
            ),
            "HTTP 400: model is required",
        ),
        (plain(404, "404 page not found"), "HTTP 404: 404 page not found"),
        (
            (404, {}, b"{\"detail\":\"Function 'f1': Not found for account 'a1'\"}"),
            "HTTP 404: Function 'f1': Not found for account 'a1'",
        ),
        (
            problem(410, "Gone", "The model 'm' has reached its end of life"),
            "HTTP 410: Gone: The model 'm' has reached its end of life",
        ),
    ],
    ids=["422-problem", "400-openai", "404-plain", "404-detail", "410"],
)
def test_non_retryable_4xx_fails_at_once(reply: Reply, error: str) -> None:
    h = run_one(Script(reply))

    assert h.transport.summary() == [("POST", CHAT)]
    row = h.row
    assert row["state"] == "failed"
    assert row["error"] == error
    assert row["status_code"] == reply[0]
    assert row["attempts"] == 1
    assert row["content"] is None
    assert (h.stats.failed, h.stats.ok, h.stats.retries) == (1, 0, 0)


def test_422_failure_records_the_request_id_of_the_answer() -> None:
    h = run_one(Script(problem(422, "Unprocessable Entity", "bad", rid="rid-422")))
    assert h.row["state"] == "failed"
    assert h.row["request_id"] == "rid-422"


def test_500_every_time_fails_after_max_attempts_naming_the_last_status() -> None:
    replies = [problem(500, "Internal Server Error", f"boom {n}") for n in (1, 2, 3)]
    h = run_one(Script(*replies), max_attempts=3)

    assert h.transport.summary() == [("POST", CHAT)] * 3
    row = h.row
    assert row["state"] == "failed"
    assert row["error"] == "HTTP 500: Internal Server Error: boom 3"  # the last answer's words
    assert row["status_code"] == 500
    assert row["attempts"] == 3
    assert (h.stats.retries, h.stats.failed) == (2, 1)


def test_backoff_is_exponential_with_jitter() -> None:
    fail = problem(500, "Internal Server Error", "x")
    h = run_one(Script(fail, fail, fail, ok()), backoff_base=0.004, backoff_max=0.012)

    assert h.row["state"] == "done"
    assert h.row["attempts"] == 4
    waits = h.stop.sleeps
    assert len(waits) == 3
    for wait, ceiling in zip(waits, (0.004, 0.008, 0.012), strict=True):
        assert ceiling / 2 <= wait <= ceiling


def test_retry_after_is_honoured_instead_of_backoff() -> None:
    busy = problem(503, "Service Unavailable", "busy", headers={"Retry-After": "0.02"})
    h = run_one(Script(busy, ok()), backoff_base=10, backoff_max=20)

    assert h.row["state"] == "done"
    assert h.stop.sleeps == [0.02]


def test_429_pauses_and_slows_the_limiter() -> None:
    async def main() -> Harness:
        loop = asyncio.get_running_loop()
        script = Script(problem(429, "Too Many Requests", headers={"Retry-After": "0.01"}), ok())
        seen: list[tuple[float, float, float]] = []

        def handler(call: Call) -> Reply | BaseException:
            now = loop.time()
            window = h.limiter.window
            seen.append((now, window.paused_until, window.factor(now)))
            return script(call)

        h = make_engine(handler)
        await h.engine.run_item(new_item())
        h.extra["seen"] = seen
        return h

    h = asyncio.run(main())
    assert h.transport.summary() == [("POST", CHAT), ("POST", CHAT)]
    (t1, paused1, factor1), (t2, paused2, factor2) = h.extra["seen"]
    assert paused1 == -math.inf
    assert factor1 == 1.0
    # The 429 paused every submission for Retry-After and halved the rate...
    assert paused2 >= t1 + 0.01
    assert t2 >= paused2 - 1e-3  # ...and the retry waited for that pause
    assert 0.5 <= factor2 < 0.6
    assert h.stats.rate_limited == 1
    assert h.stats.retries == 1
    assert h.row["state"] == "done"
    assert h.row["attempts"] == 2


def test_long_retry_after_pauses_the_whole_limiter() -> None:
    """Retry-After above 60 s (but within max_pause) parks every submission, not one row."""
    offline = problem(503, "Service Unavailable", "offline", headers={"Retry-After": "120"})

    async def main() -> tuple[Harness, float]:
        h = make_engine(Script(offline, ok()))
        await h.engine.run_item(new_item())
        return h, asyncio.get_running_loop().time()

    h, now = asyncio.run(main())
    assert h.limiter.window.paused_until > now + 100
    assert any(100 < s <= 120 for s in h.stop.sleeps)  # the limiter was told to wait it out
    assert not h.stop.is_set
    assert h.row["state"] == "done"
    assert h.row["attempts"] == 2


@pytest.mark.parametrize(
    ("reply", "env"),
    [
        (problem(401, "Unauthorized", "Authentication failed"), "NVIDIA_API_KEY"),
        ((401, {"WWW-Authenticate": "Bearer"}, b""), "NVIDIA_API_KEY"),
        (problem(403, "Forbidden", "Authorization failed"), "MY_OTHER_KEY"),
    ],
    ids=["401", "401-empty", "403"],
)
def test_auth_error_escapes_and_no_row_is_failed(reply: Reply, env: str) -> None:
    async def main() -> Harness:
        h = make_engine(Script(reply), api_key_env=env)
        with pytest.raises(AuthError, match=env) as caught:
            await h.engine.run_item(new_item())
        assert f"HTTP {reply[0]}" in str(caught.value)
        return h

    h = asyncio.run(main())
    assert h.transport.summary() == [("POST", CHAT)]
    assert "failed" not in [state for _, state in h.sink.states()]
    assert "error" not in h.row
    assert (h.stats.failed, h.stats.ok) == (0, 0)


# ---------------------------------------------------------------- poll failures


@pytest.mark.parametrize(
    "failure",
    [
        TransportError("GET https://x: server closed the connection"),
        problem(502, "Bad Gateway", "Upstream request failed."),
        problem(503, "Service Unavailable", "busy"),
        problem(504, "Gateway Timeout", "worker did not acknowledge the status request."),
        problem(408, "Request Timeout"),
    ],
    ids=["dropped", "502", "503", "504", "408"],
)
def test_poll_failure_polls_the_same_id_again(failure: Reply | BaseException) -> None:
    h = run_one(Script(accepted("rid-p"), failure, ok("rid-p")))

    assert h.transport.summary() == [
        ("POST", CHAT),
        ("GET", status("rid-p")),
        ("GET", status("rid-p")),
    ]
    row = h.row
    assert_done(row, request_id="rid-p")
    assert row["attempts"] == 1
    assert h.stats.polls == 2
    assert h.stats.rebuys == 0
    # Never wait long between polls: NVCF drops an id not polled within max(2 x hold, 10) s.
    assert h.stop.sleeps
    assert max(h.stop.sleeps) <= POLL_RETRY_MAX_S


def test_poll_500_spends_the_id_and_the_row_is_sent_again() -> None:
    h = run_one(
        Script(accepted("rid-a"), problem(500, "Internal Server Error", "crashed"), ok("rid-b"))
    )

    assert h.transport.summary() == [("POST", CHAT), ("GET", status("rid-a")), ("POST", CHAT)]
    row = h.row
    assert_done(row, request_id="rid-b")
    assert row["attempts"] == 2
    assert h.stats.retries == 1


def test_poll_422_fails_the_row_without_another_post() -> None:
    h = run_one(
        Script(
            accepted("rid-q"),
            problem(422, "Unprocessable Entity", "invocation ended with an error", rid="rid-q"),
        )
    )
    assert h.transport.summary() == [("POST", CHAT), ("GET", status("rid-q"))]
    row = h.row
    assert row["state"] == "failed"
    assert row["error"] == "HTTP 422: Unprocessable Entity: invocation ended with an error"
    assert row["request_id"] == "rid-q"
    assert row["attempts"] == 1


# ---------------------------------------------------------------- stopping


def test_retry_after_beyond_max_pause_stops_the_job_and_leaves_the_row() -> None:
    offline = problem(503, "Service Unavailable", "offline", headers={"Retry-After": "10800"})
    h = run_one(Script(offline), max_pause=100)

    assert h.transport.summary() == [("POST", CHAT)]
    assert h.stop.is_set
    assert isinstance(h.stop.reason, JobStopped)
    assert "10800" in str(h.stop.reason)
    assert "max_pause" in str(h.stop.reason)
    row = h.row
    assert row["state"] == "inflight"  # resumable: pending again on the next run
    assert row["attempts"] == 1
    assert "failed" not in [state for _, state in h.sink.states()]
    assert h.stats.failed == 0


@pytest.mark.parametrize(
    "item",
    [new_item(), new_item(request_id="abc", attempts=1)],
    ids=["pending", "polling"],
)
def test_stop_before_run_item_sends_nothing(item: WorkItem) -> None:
    async def main() -> Harness:
        h = make_engine(Script())
        h.stop.request()
        await h.engine.run_item(item)
        return h

    h = asyncio.run(main())
    assert h.transport.calls == []
    assert h.sink.events == []
    assert (h.stats.submissions, h.stats.polls, h.stats.failed) == (0, 0, 0)


def test_a_stop_keeps_polling_an_id_already_paid_for() -> None:
    # The answer behind a 202 is bought: a stop ends new submissions, not the polls (the
    # grace period bounds them in run_engine), so the answer is collected, not lost.
    async def main() -> Harness:
        def handler(call: Call) -> Reply:
            polls = sum(c.method == "GET" for c in h.transport.calls)
            if call.method == "GET" and polls == 2:
                h.stop.request(Interrupted("interrupted by SIGINT"))
            return ok("rid-s") if polls >= 4 else accepted("rid-s")

        h = make_engine(handler)
        await h.engine.run_item(new_item())
        return h

    h = asyncio.run(main())
    assert h.transport.summary() == [("POST", CHAT)] + [("GET", status("rid-s"))] * 4
    assert_done(h.row, request_id="rid-s")
    assert h.stats.pending_ids == 0


def test_an_id_whose_polls_keep_failing_is_kept_until_max_poll_time() -> None:
    # A network blip must not make a paid id be dropped and the row bought again.
    script = Script(accepted("rid-b"), *([TransportError("dropped")] * 12), ok("rid-b"))
    h = run_one(script, max_attempts=2)
    assert [c.method for c in h.transport.calls] == ["POST"] + ["GET"] * 13
    assert_done(h.row, request_id="rid-b")
    assert h.stats.rebuys == 0


def test_an_id_answered_202_for_ever_gives_up_after_max_poll_time() -> None:
    h = run_one(lambda call: accepted("rid-f"), max_poll_time=0.05, max_attempts=1)
    assert h.row["state"] == "failed"
    assert "no answer after 0.05s of polling" in h.row["error"]


# ---------------------------------------------------------------- resumed rows, 302


def test_resumed_request_id_is_polled_never_posted() -> None:
    h = run_one(
        Script(accepted("abc"), ok("abc")),
        item=new_item(request_id="abc", attempts=1, first_submit_at=1.0),
    )
    assert h.transport.summary() == [("GET", status("abc")), ("GET", status("abc"))]
    assert_done(h.row, request_id="abc")
    assert h.sink.states() == [("update_now", "fetched"), ("update", "done")]
    assert h.stats.submissions == 0


def test_stored_raw_answer_is_parsed_without_http() -> None:
    stored = completion_body("from the checkpoint").decode()
    h = run_one(Script(), item=new_item(request_id="abc", attempts=1, fetched=stored))
    assert h.transport.calls == []
    assert_done(h.row, request_id="abc", content="from the checkpoint")
    assert h.row["response"] == stored
    assert h.sink.states() == [("update", "done")]


def test_stored_raw_answer_that_is_garbage_sends_the_row_again() -> None:
    h = run_one(Script(ok("fresh")), item=new_item(request_id="abc", attempts=1, fetched="<html>"))
    assert h.transport.summary() == [("POST", CHAT)]
    assert_done(h.row, request_id="fresh")
    assert h.row["attempts"] == 2


def test_resumed_location_is_downloaded_never_posted() -> None:
    url = "https://nvcf-results.s3.amazonaws.com/abc.zip?X-Amz-Signature=s"
    archive = zip_with("abc.response", completion_body("large"))
    h = run_one(
        Script((200, {"Content-Type": "application/zip"}, archive)),
        item=new_item(request_id="abc", attempts=1, location=url),
    )
    assert h.transport.summary() == [("GET", url)]
    assert_done(h.row, request_id="abc", content="large")
    assert h.sink.states() == [("update_now", "fetched"), ("update", "done")]
    stored = next(c for k, _, c in h.sink.events if k == "update_now")
    assert stored["response"] == completion_body("large").decode()


def test_302_on_submit_stores_location_then_answer_then_done() -> None:
    url = "https://nvcf-results.s3.amazonaws.com/r302.zip"
    archive = zip_with("r302.response", completion_body("big one"))
    h = run_one(
        Script(
            (302, {"Location": url, "NVCF-REQID": "r302"}, b""),
            (200, {"Content-Type": "application/zip"}, archive),
        )
    )
    assert h.transport.summary() == [("POST", CHAT), ("GET", url)]
    assert_done(h.row, request_id="r302", content="big one")
    assert h.row["attempts"] == 1
    now = [c for k, _, c in h.sink.events if k == "update_now"]
    assert [c.get("location") for c in now] == [url, None]
    assert now[1]["response"] == completion_body("big one").decode()
    assert h.sink.states() == [
        ("update", "inflight"),
        ("update_now", "fetched"),
        ("update_now", "fetched"),
        ("update", "done"),
    ]


def test_302_on_poll_with_a_dropped_download_downloads_again() -> None:
    url = "https://nvcf-results.s3.amazonaws.com/rp.zip"
    archive = zip_with("rp.response", completion_body())
    h = run_one(
        Script(
            accepted("rp"),
            (302, {"Location": url, "NVCF-REQID": "rp"}, b""),
            TransportError(f"GET {url}: answer was cut off"),
            (200, {}, archive),
        )
    )
    assert h.transport.summary() == [
        ("POST", CHAT),
        ("GET", status("rp")),
        ("GET", url),
        ("GET", url),
    ]
    assert_done(h.row, request_id="rp")
    assert h.row["attempts"] == 1


@pytest.mark.parametrize("status_code", [500, 503, 429])
def test_a_download_that_fails_with_a_retryable_status_keeps_its_link(status_code: int) -> None:
    url = "https://nvcf-results.s3.amazonaws.com/rq.zip"
    archive = zip_with("rq.response", completion_body())
    h = run_one(
        Script(
            accepted("rq"),
            (302, {"Location": url, "NVCF-REQID": "rq"}, b""),
            (status_code, {}, b"SlowDown"),
            (200, {}, archive),
        )
    )
    assert [c.method for c in h.transport.calls] == ["POST", "GET", "GET", "GET"]
    assert_done(h.row, request_id="rq")


def test_a_link_still_failing_when_tries_run_out_leaves_the_row_fetched() -> None:
    url = "https://nvcf-results.s3.amazonaws.com/rz.zip"
    h = run_one(
        Script(accepted("rz"), (302, {"Location": url}, b""), *([(503, {}, b"down")] * 2)),
        max_attempts=2,
    )
    assert h.row["state"] == "fetched" and h.row["location"] == url  # not failed, not re-bought
    assert [c.method for c in h.transport.calls] == ["POST", "GET", "GET", "GET"]


def test_an_unexpected_error_fails_only_its_row() -> None:
    def handler(call: Call) -> Reply:
        raise RuntimeError("a bug somewhere")

    h = run_one(handler)
    assert h.row["state"] == "failed"
    assert h.row["error"] == "internal error: RuntimeError: a bug somewhere"


# ---------------------------------------------------------------- malformed answers, streams


@pytest.mark.parametrize(
    "body",
    [
        b"<html>502 Bad Gateway</html>",
        b"",
        b'{"object":"chat.completion","choices":[]}',
        b'{"choices":[{"index":0,"finish_reason":"stop"}]}',
        BODY[: len(BODY) // 2],
    ],
    ids=["html", "empty", "no-choices", "no-message", "truncated"],
)
def test_malformed_200_is_retried(body: bytes) -> None:
    h = run_one(Script(ok("bad", body), ok("good")))

    assert h.transport.summary() == [("POST", CHAT), ("POST", CHAT)]
    assert_done(h.row, request_id="good")
    assert h.row["attempts"] == 2
    assert dict(h.stats.causes) == {"ResponseFormatError": 1}


def test_malformed_polled_answer_is_stored_then_the_row_sent_again() -> None:
    h = run_one(Script(accepted("rm"), ok("rm", b"not json"), ok("rm2")))

    assert h.transport.summary() == [("POST", CHAT), ("GET", status("rm")), ("POST", CHAT)]
    stored = next(c for k, _, c in h.sink.events if k == "update_now")
    assert stored == {"state": "fetched", "response": "not json"}
    assert_done(h.row, request_id="rm2")
    assert h.row["attempts"] == 2


STREAM_CHUNKS = [
    {
        "id": "chat-1",
        "object": "chat.completion.chunk",
        "model": "m",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": "hel"}}],
    },
    {"choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": None}]},
    {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}},
]


def test_streamed_answer_is_assembled() -> None:
    reply = (200, {"Content-Type": "text/event-stream", "NVCF-REQID": "rs"}, sse(*STREAM_CHUNKS))
    h = run_one(Script(reply), stream=True)

    assert h.transport.summary() == [("POST", CHAT)]
    post = h.transport.calls[0]
    assert post.headers["Accept"] == "text/event-stream"
    sent = json.loads(post.body or b"")
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert_done(h.row, request_id="rs")
    assert json.loads(h.row["response"])["choices"][0]["message"]["content"] == "hello"


def test_truncated_stream_is_retried() -> None:
    cut = (200, {"Content-Type": "text/event-stream"}, sse(*STREAM_CHUNKS[:2], done=False))
    whole = (200, {"Content-Type": "text/event-stream", "NVCF-REQID": "rs"}, sse(*STREAM_CHUNKS))
    h = run_one(Script(cut, whole), stream=True)

    assert h.transport.summary() == [("POST", CHAT), ("POST", CHAT)]
    assert_done(h.row, request_id="rs")
    assert h.row["attempts"] == 2
    assert dict(h.stats.causes) == {"TransportError": 1}


# ---------------------------------------------------------------- bookkeeping, more stops


def test_attempts_and_latency_span_retries_and_earlier_runs() -> None:
    ticks = iter(range(100, 200))

    async def main() -> Harness:
        h = make_engine(
            Script(problem(502, "Bad Gateway"), accepted("rl"), ok("rl")),
            wall_clock=lambda: float(next(ticks)),
        )
        await h.engine.run_item(new_item(attempts=2))  # two submissions in earlier runs
        return h

    h = asyncio.run(main())
    row = h.row
    assert_done(row, request_id="rl")
    assert row["attempts"] == 4
    submits = [c for k, _, c in h.sink.events if c.get("state") == "inflight" and "attempts" in c]
    assert [c["attempts"] for c in submits] == [3, 4]
    assert {c["first_submit_at"] for c in submits} == {100.0}  # set once, on the first try
    # From the first submission (wall clock 100) to the answer, not from the last retry.
    assert 0 < row["latency_s"] <= row["finished_at"] - 100.0
    assert row["latency_s"] >= 1.0


def test_expired_id_every_time_fails_after_max_attempts() -> None:
    expired = problem(404, "Not Found", rid=None)
    h = run_one(Script(accepted("e1"), expired, accepted("e2"), expired), max_attempts=2)

    assert h.transport.summary() == [
        ("POST", CHAT),
        ("GET", status("e1")),
        ("POST", CHAT),
        ("GET", status("e2")),
    ]
    assert h.stats.rebuys == 2
    row = h.row
    assert row["state"] == "failed"
    assert "e2" in row["error"]
    assert "expired" in row["error"]
    assert row["attempts"] == 2


@pytest.mark.parametrize("code", [403, 404, 410])
def test_expired_download_link_buys_the_answer_again(code: int) -> None:
    """A presigned Location that no longer works is not our key's fault (no AuthError)."""
    url = "https://nvcf-results.s3.amazonaws.com/abc.zip?X-Amz-Expires=86400"
    denied = (code, {"Content-Type": "application/xml"}, b"<Error>Request has expired</Error>")
    h = run_one(
        Script(denied, ok("fresh")),
        item=new_item(request_id="abc", attempts=1, location=url),
    )
    assert h.transport.summary() == [("GET", url), ("POST", CHAT)]
    assert h.stats.rebuys == 1
    assert_done(h.row, request_id="fresh")
    assert h.row["attempts"] == 2
    assert h.row["location"] is None


def test_stop_signal_sleep_ends_when_a_stop_is_requested() -> None:
    async def main() -> None:
        stop = StopSignal()
        sleeper = asyncio.create_task(stop.sleep(3600))
        await asyncio.sleep(0)
        assert not sleeper.done()
        stop.request(Interrupted("x"))
        for _ in range(10):
            if sleeper.done():
                break
            await asyncio.sleep(0)
        assert sleeper.done()
        await sleeper
        assert isinstance(stop.reason, Interrupted)
        stop.request(JobStopped("later"))  # the first reason wins
        assert isinstance(stop.reason, Interrupted)

    asyncio.run(main())


def test_stop_during_a_long_limiter_pause_sends_nothing() -> None:
    async def main() -> Harness:
        h = make_engine(Script(), cap=None)  # real sleeps: only the stop may end the wait
        h.limiter.pause(3600)
        task = asyncio.create_task(h.engine.run_item(new_item()))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not task.done()
        h.stop.request(Interrupted("interrupted by SIGINT"))
        await asyncio.wait_for(task, RUN_GUARD_S)
        return h

    h = asyncio.run(main())
    assert h.transport.calls == []
    assert h.sink.events == []
    assert any(s > 3000 for s in h.stop.sleeps)  # it really was waiting out the pause


# ---------------------------------------------------------------- dispatcher + real checkpoint


def make_store(tmp_path: Path, n: int) -> Store:
    store = Store.create(tmp_path / "job.checkpoint.sqlite")
    rows = [
        (
            i,
            f"r{i:03d}",
            f"in.jsonl:{i + 1}",
            "pending",
            json.dumps([{"role": "user", "content": f"q{i}"}]),
            None,
            None,
            5,
            None,
            None,
        )
        for i in range(n)
    ]
    store.insert_items(rows)
    return store


def preset(store: Store, updates: dict[int, dict[str, Any]]) -> None:
    """Put rows in a given state, as an earlier run would have left them."""
    writer = CheckpointWriter(store.path)
    try:
        for idx, columns in updates.items():
            writer.update(idx, columns)
        writer.flush()
    finally:
        writer.close()


def results(store: Store) -> dict[int, dict[str, Any]]:
    names = RESULT_COLUMNS
    out: dict[int, dict[str, Any]] = {}
    for page in store.iter_results():
        for row in page:
            record = dict(zip(names, row, strict=True))
            out[record["idx"]] = record
    return out


def row_of(call: Call) -> int:
    """Row index of a POST (from its prompt `q<i>`) or of a poll (from its id `id-<i>`)."""
    if call.method == "POST":
        return int(call.prompt[1:])
    return int(call.url.rsplit("-", 1)[1])


async def run_on_store(
    store: Store,
    build: Callable[[Harness], Handler],
    *,
    use_dispatch: bool = False,
    **settings: Any,
) -> Harness:
    """Run the engine over the checkpoint with a real CheckpointWriter as the sink."""
    writer = CheckpointWriter(store.path)
    h = make_engine(Script(), sink=writer, **settings)
    h.transport.handler = build(h)
    run = dispatch if use_dispatch else run_engine
    task = asyncio.create_task(run(h.engine, store))
    try:
        # A guard, not a timing assertion: a hung engine fails the test instead of hanging it.
        await asyncio.wait({task}, timeout=RUN_GUARD_S)
        if not task.done():
            task.cancel()
            with suppress(BaseException):
                await task
            raise AssertionError(f"the engine did not return within {RUN_GUARD_S}s")
        await task
    finally:
        writer.handoff()
        await asyncio.to_thread(writer.flush, RUN_GUARD_S)
        writer.close()
    return h


def test_dispatch_finishes_every_row_within_concurrency(tmp_path: Path) -> None:
    store = make_store(tmp_path, 50)
    polled: set[int] = set()

    def build(h: Harness) -> Handler:
        def handler(call: Call) -> Reply:
            i = row_of(call)
            if call.method == "POST":
                return accepted(f"id-{i}") if i % 3 == 0 else ok(f"ok-{i}")
            if i not in polled:  # one 202 on the first poll, then the answer
                polled.add(i)
                return accepted(f"id-{i}")
            return ok(f"id-{i}", completion_body(f"answer {i}"))

        return handler

    h = asyncio.run(run_on_store(store, build, concurrency=4))
    try:
        assert store.counts() == {"done": 50}
        posts = [row_of(c) for c in h.transport.calls if c.method == "POST"]
        gets = [c.url for c in h.transport.calls if c.method == "GET"]
        assert sorted(posts) == list(range(50))  # each row sent exactly once
        third = [i for i in range(50) if i % 3 == 0]
        assert sorted(gets) == sorted([status(f"id-{i}") for i in third] * 2)
        assert 1 < h.transport.max_posts_in_flight <= 4
        rows = results(store)
        for i in range(50):
            assert rows[i]["attempts"] == 1
            if i % 3 == 0:
                assert rows[i]["request_id"] == f"id-{i}"
                assert rows[i]["content"] == f"answer {i}"
            else:
                assert rows[i]["request_id"] == f"ok-{i}"
                assert rows[i]["content"] == "hello"
        assert store.totals()["total_tokens"] == 250
        assert (h.stats.ok, h.stats.accepted, h.stats.polls) == (50, 17, 34)
    finally:
        store.close()


def test_resumed_ids_are_polled_first_and_never_posted(tmp_path: Path) -> None:
    store = make_store(tmp_path, 10)
    stored = completion_body("kept").decode()
    preset(
        store,
        {
            2: {"state": "polling", "request_id": "id-2", "attempts": 1},
            5: {"state": "polling", "request_id": "id-5", "attempts": 1},
            7: {"state": "fetched", "request_id": "id-7", "response": stored, "attempts": 1},
            9: {"state": "done", "content": "old", "attempts": 1},
        },
    )
    polls: dict[int, int] = {}

    def build(h: Harness) -> Handler:
        def handler(call: Call) -> Reply:
            i = row_of(call)
            if call.method == "POST":
                return ok(f"ok-{i}")
            polls[i] = polls.get(i, 0) + 1
            return accepted(f"id-{i}") if i == 5 and polls[i] == 1 else ok(f"id-{i}")

        return handler

    h = asyncio.run(run_on_store(store, build))
    try:
        assert store.counts() == {"done": 10}
        summary = h.transport.summary()
        assert summary[:2] == [("GET", status("id-2")), ("GET", status("id-5"))]
        posts = sorted(row_of(c) for c in h.transport.calls if c.method == "POST")
        assert posts == [0, 1, 3, 4, 6, 8]
        assert polls == {2: 1, 5: 2}
        rows = results(store)
        assert rows[7]["content"] == "kept"
        assert rows[9]["content"] == "old"
        assert [rows[i]["request_id"] for i in (2, 5, 7)] == ["id-2", "id-5", "id-7"]
        assert all(rows[i]["attempts"] == 1 for i in range(10))
    finally:
        store.close()


def test_max_pending_bounds_ids_awaiting_a_result(tmp_path: Path) -> None:
    store = make_store(tmp_path, 12)
    awaiting: set[int] = set()
    peak = {"awaiting": 0, "stats": 0}
    polls: dict[int, int] = {}

    def build(h: Harness) -> Handler:
        def handler(call: Call) -> Reply:
            i = row_of(call)
            peak["stats"] = max(peak["stats"], h.stats.pending_ids)
            if call.method == "POST":
                awaiting.add(i)
                peak["awaiting"] = max(peak["awaiting"], len(awaiting))
                return accepted(f"id-{i}")
            polls[i] = polls.get(i, 0) + 1
            if polls[i] < 3:
                return accepted(f"id-{i}")
            awaiting.discard(i)
            return ok(f"id-{i}")

        return handler

    h = asyncio.run(run_on_store(store, build, use_dispatch=True, concurrency=8, max_pending=3))
    try:
        assert store.counts() == {"done": 12}
        assert peak["awaiting"] == 3
        assert 1 <= peak["stats"] <= 3
        assert polls == dict.fromkeys(range(12), 3)
        assert h.stats.submissions == 12
    finally:
        store.close()


def test_stop_mid_run_raises_the_reason_and_unsent_rows_stay_pending(tmp_path: Path) -> None:
    store = make_store(tmp_path, 20)

    def build(h: Harness) -> Handler:
        def handler(call: Call) -> Reply:
            posts = sum(c.method == "POST" for c in h.transport.calls)
            if posts == 5:
                h.stop.request(Interrupted("interrupted by SIGINT"))
            return ok(f"ok-{row_of(call)}")

        return handler

    with pytest.raises(Interrupted, match="SIGINT"):
        asyncio.run(run_on_store(store, build, concurrency=1))
    try:
        assert store.counts() == {"done": 5, "pending": 15}
        rows = results(store)
        assert [i for i, r in rows.items() if r["state"] == "done"] == [0, 1, 2, 3, 4]
        assert all(rows[i]["attempts"] == 0 for i in range(5, 20))
    finally:
        store.close()


def test_grace_over_abandons_blocked_work_unrecorded(tmp_path: Path) -> None:
    store = make_store(tmp_path, 6)
    preset(store, {0: {"state": "polling", "request_id": "id-0", "attempts": 1}})
    calls: list[Any] = []

    def build(h: Harness) -> Handler:
        async def handler(call: Call) -> Reply:
            calls.append(call)
            i = row_of(call)
            if i in (0, 1):  # a poll and a submission that never answer
                await asyncio.Event().wait()
            h.stop.request(Interrupted("interrupted by SIGTERM"))
            return ok(f"ok-{i}")

        return handler

    with pytest.raises(Interrupted, match="SIGTERM"):
        asyncio.run(run_on_store(store, build, concurrency=2, grace=0.1))
    try:
        rows = results(store)
        assert (rows[0]["state"], rows[0]["request_id"]) == ("polling", "id-0")
        assert (rows[1]["state"], rows[1]["attempts"]) == ("inflight", 1)
        assert rows[2]["state"] == "done"
        assert [rows[i]["state"] for i in (3, 4, 5)] == ["pending"] * 3
        assert [(c.method, row_of(c)) for c in calls] == [("GET", 0), ("POST", 1), ("POST", 2)]
    finally:
        store.close()


def test_job_stopped_by_long_retry_after_leaves_rows_resumable(tmp_path: Path) -> None:
    store = make_store(tmp_path, 5)
    offline = problem(503, "Service Unavailable", "offline", headers={"Retry-After": "10800"})

    def build(h: Harness) -> Handler:
        return lambda call: offline if row_of(call) == 0 else ok()

    with pytest.raises(JobStopped):
        asyncio.run(run_on_store(store, build, concurrency=1, max_pause=600))
    try:
        counts = store.counts()
        assert "failed" not in counts
        assert counts == {"inflight": 1, "pending": 4}
    finally:
        store.close()


def test_auth_error_stops_the_job_and_fails_no_row(tmp_path: Path) -> None:
    store = make_store(tmp_path, 10)

    def build(h: Harness) -> Handler:
        return lambda call: problem(401, "Unauthorized", "Authentication failed")

    with pytest.raises(AuthError, match="NVIDIA_API_KEY"):
        asyncio.run(run_on_store(store, build, concurrency=1))
    try:
        counts = store.counts()
        assert "failed" not in counts
        assert counts.get("done", 0) == 0
    finally:
        store.close()


@pytest.mark.parametrize("concurrency", [1, 4])
def test_after_a_401_no_further_request_is_started(tmp_path: Path, concurrency: int) -> None:
    # SPEC: 401/403 stop the whole job at once (no more requests).
    store = make_store(tmp_path, 10)
    holder: dict[str, Harness] = {}

    def build(h: Harness) -> Handler:
        holder["h"] = h
        return lambda call: problem(401, "Unauthorized", "Authentication failed")

    with pytest.raises(AuthError):
        asyncio.run(run_on_store(store, build, concurrency=concurrency))
    try:
        posts = [c for c in holder["h"].transport.calls if c.method == "POST"]
        # at most the requests already on the wire when the first 401 arrived
        assert len(posts) <= concurrency
        assert "failed" not in store.counts()
    finally:
        store.close()


def test_poll_error_without_request_id_header_keeps_the_polled_id() -> None:
    h = run_one(
        Script(
            accepted("rid-q"),
            problem(422, "Unprocessable Entity", "invocation ended with an error", rid=None),
        )
    )
    assert h.row["state"] == "failed"
    assert h.row["request_id"] == "rid-q"
