"""The engine (batchrun/engine.py) against a scripted fake Transport: no sockets, no sleeps.

Every test drives a real Engine built by factory.build_engine (real EndpointClient,
RateLimiter, Poller, retry policy); only the network hop is replaced by `FakeTransport`,
time by `FakeClock` (it moves only when the engine sleeps through it, so "the engine waited
N seconds" is read from the clock's recorded sleeps), and the checkpoint by `FakeSink`, which
also fails the test if the engine ever makes a move that is not in lifecycle.EDGES. The
dispatcher tests run over a real checkpoint (tests/ledger.py) and CheckpointWriter, with the
FakeSink in front of the writer. Helpers live in tests/engine_fakes.py.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from batchrun.budget import BudgetSpent, CostBudget, Pricing
from batchrun.checkpoint import Checkpoint, CheckpointWriter, ResultPage
from batchrun.concurrency import FixedLimit
from batchrun.dispatch import dispatch, run_engine
from batchrun.errors import AuthError, Interrupted, JobStopped, TransportError
from batchrun.lifecycle import (
    UNFINISHED,
    Accepted,
    Fetched,
    Finished,
    Forgotten,
    Located,
    Outcome,
    RowState,
    Submitted,
    WorkItem,
)
from batchrun.media import LOCAL
from batchrun.records import Completion
from batchrun.retry import POLL_RETRY_MAX_S
from batchrun.stop import StopSignal

from .engine_fakes import (
    BASE,
    BODY,
    CHAT,
    FALLBACK,
    HOLD,
    MONOTONIC_START,
    RUN_GUARD_S,
    WALL_START,
    Call,
    FakeClock,
    FakeSink,
    Handler,
    Harness,
    Reply,
    Script,
    accepted,
    assert_done,
    completion_body,
    guarded,
    held,
    make_engine,
    new_item,
    ok,
    plain,
    problem,
    redirect,
    run_one,
    sse,
    status,
    zip_with,
)
from .ledger import Row, build

S = RowState
INFLIGHT, POLLING, FETCHED, DONE, FAILED = S.INFLIGHT, S.POLLING, S.FETCHED, S.DONE, S.FAILED

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
    assert row.attempts == 1
    assert row.raw == BODY.decode()
    assert h.sink.moves() == [("Submitted", INFLIGHT), ("Finished", DONE)]
    s = h.stats
    assert (s.ok, s.failed, s.submissions, s.polls, s.retries) == (1, 0, 1, 0, 0)
    assert (s.prompt_tokens, s.completion_tokens, s.in_flight, s.pending_ids) == (3, 2, 0, 0)
    assert h.clock.sleeps == []


def test_202_is_long_polled_and_the_answer_stored_raw_before_done() -> None:
    final = completion_body("polled answer")
    h = run_one(Script(accepted("rid-7"), accepted("rid-7"), accepted("rid-7"), ok("rid-7", final)))

    assert h.transport.summary() == [("POST", CHAT)] + [("GET", status("rid-7"))] * 3
    for call in h.transport.calls:
        assert call.headers["NVCF-POLL-SECONDS"] == str(HOLD)
    row = h.row
    assert_done(row, request_id="rid-7", content="polled answer")
    assert row.attempts == 1
    assert row.raw == final.decode()
    assert h.sink.moves() == [
        ("Submitted", INFLIGHT),
        ("Accepted", POLLING),
        ("Fetched", FETCHED),
        ("Finished", DONE),
    ]
    assert h.sink.of(Accepted) == [Accepted(0, "rid-7")]
    # Consume-once: the raw answer was committed (awaited) before the row was finished;
    # FakeSink.check() would have failed on a Finished arriving before that commit.
    assert h.sink.committed == [Fetched(0, final.decode())]
    assert (h.stats.accepted, h.stats.polls, h.stats.submissions) == (1, 3, 1)
    assert h.stats.pending_ids == 0


def test_the_fake_sink_catches_an_illegal_move_and_an_unawaited_commit() -> None:
    """The checks every test relies on do fire."""
    sink = FakeSink()
    sink.submitted(Submitted(0, 1, 1.0))
    sink.accepted(Accepted(0, "r"))
    sink.fetched(Fetched(0, "answer")).close()  # type: ignore[attr-defined]  # not awaited
    sink.finished(Finished(0, Outcome(DONE), 1, 1.0, 2.0))  # while that commit is pending
    sink.submitted(Submitted(1, 3, 1.0))  # attempts jump from 0 to 3
    sink.forgotten(Forgotten(2))  # pending -> inflight by forgetting: no such edge

    assert sink.illegal == [
        "row 0: Finished while a stored answer was still being committed",
        "row 1: Submitted says 3 attempts after 0",
        "row 2: Forgotten from pending to inflight is not an edge",
    ]
    with pytest.raises(AssertionError):
        sink.check()


@pytest.mark.parametrize("content_type", ["application/problem+json", "application/json"])
def test_poll_404_problem_means_expired_and_the_row_is_bought_again(content_type: str) -> None:
    expired = problem(404, "Not Found", rid=None, content_type=content_type)
    h = run_one(Script(accepted("old"), expired, ok("new")))

    assert h.transport.summary() == [("POST", CHAT), ("GET", status("old")), ("POST", CHAT)]
    assert h.stats.rebuys == 1
    row = h.row
    assert_done(row, request_id="new")
    assert row.attempts == 2
    # The spent id was dropped before the row was sent again.
    assert h.sink.moves() == [
        ("Submitted", INFLIGHT),
        ("Accepted", POLLING),
        ("Forgotten", INFLIGHT),
        ("Submitted", INFLIGHT),
        ("Finished", DONE),
    ]
    assert h.clock.sleeps == []  # bought again at once


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
        await h.run(new_item(0), new_item(1))
        return h

    h = asyncio.run(guarded(main()))
    h.sink.check()
    assert h.transport.summary() == [
        ("POST", CHAT),
        ("GET", status("r4")),
        ("GET", FALLBACK + "r4"),
        ("POST", CHAT),
        ("GET", FALLBACK + "r5"),  # the switch holds for later rows
    ]
    assert h.stats.rebuys == 0
    assert_done(h.sink.row(0), request_id="r4")
    assert h.sink.row(0).attempts == 1
    assert_done(h.sink.row(1), request_id="r5")


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


def test_min_poll_interval_spaces_polls_answered_at_once() -> None:
    # A server that answers 202 without holding the poll is polled at most once a second.
    h = run_one(
        Script(accepted("r1"), accepted("r1"), accepted("r1"), ok("r1")), min_poll_interval=1
    )
    assert_done(h.row, request_id="r1")
    polls = [c.at - MONOTONIC_START for c in h.transport.calls if c.method == "GET"]
    assert polls == [0.0, 1.0, 2.0]
    assert h.clock.sleeps == [1.0, 1.0]


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
    assert row.attempts == 2
    assert h.stats.retries == 1
    assert dict(h.stats.causes) == {cause: 1}
    assert (h.stats.ok, h.stats.failed) == (1, 0)
    assert FAILED not in [state for _, state in h.sink.moves()]
    # One wait before the second try: the back-off, or the 429's pause of every submission.
    assert len(h.clock.sleeps) == 1
    second = h.transport.calls[1]
    assert second.at == MONOTONIC_START + h.clock.sleeps[0]


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
    assert row.state is FAILED
    assert row.error == error
    assert row.status_code == reply[0]
    assert row.cause == f"HTTP {reply[0]}"
    assert row.raw == reply[2].decode()  # the server's own answer, kept for the output
    assert row.attempts == 1
    assert row.content is None
    assert (row.prompt_tokens, row.total_tokens) == (None, None)
    assert (h.stats.failed, h.stats.ok, h.stats.retries) == (1, 0, 0)
    assert h.sink.moves() == [("Submitted", INFLIGHT), ("Finished", FAILED)]
    assert h.clock.sleeps == []


def test_422_failure_records_the_request_id_of_the_answer() -> None:
    h = run_one(Script(problem(422, "Unprocessable Entity", "bad", rid="rid-422")))
    assert h.row.state is FAILED
    assert h.row.request_id == "rid-422"


def test_500_every_time_fails_after_max_attempts_naming_the_last_status() -> None:
    replies = [problem(500, "Internal Server Error", f"boom {n}") for n in (1, 2, 3)]
    h = run_one(Script(*replies), max_attempts=3)

    assert h.transport.summary() == [("POST", CHAT)] * 3
    row = h.row
    assert row.state is FAILED
    assert row.error == "HTTP 500: Internal Server Error: boom 3"  # the last answer's words
    assert row.status_code == 500
    assert row.cause == "HTTP 500"
    assert row.attempts == 3
    assert (h.stats.retries, h.stats.failed) == (2, 1)
    assert len(h.clock.sleeps) == 2  # no wait after the last try


def test_backoff_is_exponential_with_jitter() -> None:
    fail = problem(500, "Internal Server Error", "x")
    h = run_one(Script(fail, fail, fail, ok()), backoff_base=1, backoff_max=3)

    assert h.row.state is DONE
    assert h.row.attempts == 4
    waits = h.clock.sleeps
    assert len(waits) == 3
    for wait, ceiling in zip(waits, (1, 2, 3), strict=True):
        assert ceiling / 2 <= wait <= ceiling
    # Each try was sent when the wait before it was over, and the events say so.
    posts = [c.at - MONOTONIC_START for c in h.transport.calls]
    assert posts == pytest.approx([0, waits[0], waits[0] + waits[1], sum(waits)])
    assert [e["wait_s"] for e in h.events.named("retry")] == waits
    assert [e["attempt"] for e in h.events.named("retry")] == [1, 2, 3]


def test_retry_after_is_honoured_instead_of_backoff() -> None:
    busy = problem(503, "Service Unavailable", "busy", headers={"Retry-After": "7"})
    h = run_one(Script(busy, ok()), backoff_base=10, backoff_max=20)

    assert h.row.state is DONE
    assert h.clock.sleeps == [7.0]
    assert h.transport.calls[1].at == MONOTONIC_START + 7


def test_429_pauses_and_slows_the_limiter() -> None:
    async def main() -> Harness:
        script = Script(problem(429, "Too Many Requests", headers={"Retry-After": "5"}), ok())
        seen: list[tuple[float, float, float]] = []

        def handler(call: Call) -> Reply | BaseException:
            now = h.clock.monotonic()
            window = h.limiter.window
            seen.append((now, window.paused_until, window.factor(now)))
            return script(call)

        h = make_engine(handler)
        await h.run(new_item())
        h.extra["seen"] = seen
        return h

    h = asyncio.run(guarded(main()))
    h.sink.check()
    assert h.transport.summary() == [("POST", CHAT), ("POST", CHAT)]
    (t1, paused1, factor1), (t2, paused2, factor2) = h.extra["seen"]
    assert paused1 == -math.inf
    assert factor1 == 1.0
    # The 429 paused every submission for Retry-After and halved the rate...
    assert paused2 == t1 + 5
    assert t2 == paused2  # ...and the retry waited (in the limiter) for that pause
    assert h.clock.sleeps == [5.0]
    assert factor2 == 0.5
    assert h.stats.rate_limited == 1
    assert h.stats.retries == 1
    assert h.events.named("rate_limited") == [{"pause_s": 5.0, "retry_after": 5.0}]
    assert h.row.state is DONE
    assert h.row.attempts == 2


def test_a_429_pauses_every_row_not_only_its_own() -> None:
    """Row 1, started after row 0's 429, waits out the same pause before it is sent."""

    async def main() -> Harness:
        script = Script(problem(429, "Too Many Requests", headers={"Retry-After": "5"}))
        h = make_engine(lambda call: script(call) if script.remaining else ok("fine"))

        paused = asyncio.Event()
        on_rate_limited = h.limiter.on_rate_limited

        def spy(retry_after: float | None) -> float:
            paused.set()
            return on_rate_limited(retry_after)

        h.limiter.on_rate_limited = spy  # type: ignore[method-assign]

        async def second_row() -> None:
            await paused.wait()
            await h.run(new_item(1, messages='[{"role":"user","content":"second"}]'))

        await asyncio.gather(h.run(new_item(0)), second_row())
        return h

    h = asyncio.run(guarded(main()))
    h.sink.check()
    sent = [(int(c.prompt == "second"), c.at - MONOTONIC_START) for c in h.transport.calls]
    assert sent[0] == (0, 0.0)
    assert sorted(sent[1:]) == [(0, 5.0), (1, 5.0)]
    assert h.clock.sleeps == [5.0, 5.0]
    assert_done(h.sink.row(0), request_id="fine")
    assert_done(h.sink.row(1), request_id="fine")
    assert h.sink.row(1).attempts == 1


def test_long_retry_after_pauses_the_whole_limiter() -> None:
    """Retry-After above 60 s (but within max_pause) parks every submission, not one row."""
    offline = problem(503, "Service Unavailable", "offline", headers={"Retry-After": "120"})
    h = run_one(Script(offline, ok()))

    assert h.limiter.window.paused_until == MONOTONIC_START + 120
    assert h.clock.sleeps == [120.0]  # the limiter waited it out, not the row on its own
    assert h.transport.calls[1].at == MONOTONIC_START + 120
    assert not h.stop.is_set
    assert h.events.named("paused") == [{"seconds": 120.0, "cause": "HTTP 503"}]
    assert h.row.state is DONE
    assert h.row.attempts == 2


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
            await h.run(new_item())
        assert f"HTTP {reply[0]}" in str(caught.value)
        return h

    h = asyncio.run(guarded(main()))
    h.sink.check()
    assert h.transport.summary() == [("POST", CHAT)]
    assert h.sink.moves() == [("Submitted", INFLIGHT)]  # resumable: pending on the next run
    assert h.row.error is None
    assert (h.stats.failed, h.stats.ok) == (0, 0)
    assert h.stop.is_set and isinstance(h.stop.reason, AuthError)


# ---------------------------------------------------------------- poll failures


@pytest.mark.parametrize(
    "failure",
    [
        TransportError("GET https://x: server closed the connection"),
        problem(502, "Bad Gateway", "Upstream request failed."),
        problem(503, "Service Unavailable", "busy"),
        problem(504, "Gateway Timeout", "worker did not acknowledge the status request."),
        problem(408, "Request Timeout"),
        problem(429, "Too Many Requests", headers={"Retry-After": "30"}),
    ],
    ids=["dropped", "502", "503", "504", "408", "429-long-retry-after"],
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
    assert row.attempts == 1
    assert h.stats.polls == 2
    assert h.stats.rebuys == 0
    # Never wait long between polls: NVCF drops an id not polled within max(2 x hold, 10) s.
    assert len(h.clock.sleeps) == 1
    assert 0 < h.clock.sleeps[0] <= POLL_RETRY_MAX_S
    assert h.sink.of(Forgotten) == []


def test_poll_500_spends_the_id_and_the_row_is_sent_again() -> None:
    h = run_one(
        Script(accepted("rid-a"), problem(500, "Internal Server Error", "crashed"), ok("rid-b"))
    )

    assert h.transport.summary() == [("POST", CHAT), ("GET", status("rid-a")), ("POST", CHAT)]
    row = h.row
    assert_done(row, request_id="rid-b")
    assert row.attempts == 2
    assert h.stats.retries == 1
    assert h.stats.rebuys == 0
    assert [m for m, _ in h.sink.moves()] == [
        "Submitted", "Accepted", "Forgotten", "Submitted", "Finished"
    ]  # fmt: skip
    assert len(h.clock.sleeps) == 1  # backed off before buying it again


def test_poll_422_fails_the_row_without_another_post() -> None:
    h = run_one(
        Script(
            accepted("rid-q"),
            problem(422, "Unprocessable Entity", "invocation ended with an error", rid="rid-q"),
        )
    )
    assert h.transport.summary() == [("POST", CHAT), ("GET", status("rid-q"))]
    row = h.row
    assert row.state is FAILED
    assert row.error == "HTTP 422: Unprocessable Entity: invocation ended with an error"
    assert row.request_id == "rid-q"
    assert row.attempts == 1


def test_poll_error_without_request_id_header_keeps_the_polled_id() -> None:
    h = run_one(
        Script(
            accepted("rid-q"),
            problem(422, "Unprocessable Entity", "invocation ended with an error", rid=None),
        )
    )
    assert h.row.state is FAILED
    assert h.row.request_id == "rid-q"


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
    assert row.state is INFLIGHT  # resumable: pending again on the next run
    assert row.attempts == 1
    assert FAILED not in [state for _, state in h.sink.moves()]
    assert h.stats.failed == 0
    assert h.clock.sleeps == []
    assert h.events.named("job_stop")[0]["kind"] == "JobStopped"


@pytest.mark.parametrize(
    "item",
    [new_item(), held(request_id="abc")],
    ids=["pending", "polling"],
)
def test_stop_before_run_item_sends_nothing(item: WorkItem) -> None:
    async def main() -> Harness:
        h = make_engine(Script())
        h.stop.request()
        await h.run(item)
        return h

    h = asyncio.run(guarded(main()))
    h.sink.check()
    assert h.transport.calls == []
    assert h.sink.changes == []
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

        h = make_engine(handler, min_poll_interval=1)
        await h.run(new_item())
        return h

    h = asyncio.run(guarded(main()))
    h.sink.check()
    assert h.transport.summary() == [("POST", CHAT)] + [("GET", status("rid-s"))] * 4
    assert_done(h.row, request_id="rid-s")
    assert h.stats.pending_ids == 0
    assert h.clock.sleeps == [1.0, 1.0, 1.0]  # the waits between polls ran through the stop


def test_an_id_whose_polls_keep_failing_is_kept_until_max_poll_time() -> None:
    # A network blip must not make a paid id be dropped and the row bought again.
    script = Script(accepted("rid-b"), *([TransportError("dropped")] * 12), ok("rid-b"))
    h = run_one(script, max_attempts=2)
    assert [c.method for c in h.transport.calls] == ["POST"] + ["GET"] * 13
    assert_done(h.row, request_id="rid-b")
    assert h.stats.rebuys == 0
    # Short, growing waits, never above POLL_RETRY_MAX_S.
    assert h.clock.sleeps == [0.5, 1.0] + [POLL_RETRY_MAX_S] * 10
    assert h.stats.causes["poll TransportError"] == 12


def test_an_id_answered_202_for_ever_gives_up_after_max_poll_time() -> None:
    h = run_one(
        lambda call: accepted("rid-f"), max_poll_time=30, min_poll_interval=1, max_attempts=1
    )
    row = h.row
    assert row.state is FAILED
    assert "request rid-f: no answer after 30s of polling" in (row.error or "")
    polls = [c for c in h.transport.calls if c.method == "GET"]
    assert len(polls) == 31  # once a second from 0 s to 30 s
    assert h.clock.slept == 31
    assert [m for m, _ in h.sink.moves()] == ["Submitted", "Accepted", "Forgotten", "Finished"]


# ---------------------------------------------------------------- resumed rows, 302


def test_resumed_request_id_is_polled_never_posted() -> None:
    h = run_one(Script(accepted("abc"), ok("abc")), item=held(request_id="abc"))
    assert h.transport.summary() == [("GET", status("abc")), ("GET", status("abc"))]
    assert_done(h.row, request_id="abc")
    assert h.row.attempts == 1
    assert h.sink.moves() == [("Fetched", FETCHED), ("Finished", DONE)]
    assert h.stats.submissions == 0


def test_stored_raw_answer_is_parsed_without_http() -> None:
    stored = completion_body("from the checkpoint").decode()
    h = run_one(Script(), item=held(request_id="abc", fetched=stored))
    assert h.transport.calls == []
    assert_done(h.row, request_id="abc", content="from the checkpoint")
    assert h.row.raw == stored
    assert h.sink.moves() == [("Finished", DONE)]


def test_stored_raw_answer_that_is_garbage_sends_the_row_again() -> None:
    h = run_one(Script(ok("fresh")), item=held(request_id="abc", fetched="<html>"))
    assert h.transport.summary() == [("POST", CHAT)]
    assert_done(h.row, request_id="fresh")
    assert h.row.attempts == 2
    assert [m for m, _ in h.sink.moves()] == ["Forgotten", "Submitted", "Finished"]


def test_resumed_location_is_downloaded_never_posted() -> None:
    url = "https://nvcf-results.s3.amazonaws.com/abc.zip?X-Amz-Signature=s"
    archive = zip_with("abc.response", completion_body("large"))
    h = run_one(
        Script((200, {"Content-Type": "application/zip"}, archive)),
        item=held(request_id="abc", location=url),
    )
    assert h.transport.summary() == [("GET", url)]
    assert_done(h.row, request_id="abc", content="large")
    assert h.sink.moves() == [("Fetched", FETCHED), ("Finished", DONE)]
    assert h.sink.committed == [Fetched(0, completion_body("large").decode())]


def test_302_on_submit_stores_location_then_answer_then_done() -> None:
    url = "https://nvcf-results.s3.amazonaws.com/r302.zip"
    archive = zip_with("r302.response", completion_body("big one"))
    h = run_one(Script(redirect(url, "r302"), (200, {"Content-Type": "application/zip"}, archive)))
    assert h.transport.summary() == [("POST", CHAT), ("GET", url)]
    assert_done(h.row, request_id="r302", content="big one")
    assert h.row.attempts == 1
    assert h.sink.moves() == [
        ("Submitted", INFLIGHT),
        ("Located", FETCHED),
        ("Fetched", FETCHED),
        ("Finished", DONE),
    ]
    # Both were committed (awaited) in that order before the row went on.
    assert h.sink.committed == [
        Located(0, "r302", url),
        Fetched(0, completion_body("big one").decode()),
    ]


def test_302_on_poll_with_a_dropped_download_downloads_again() -> None:
    url = "https://nvcf-results.s3.amazonaws.com/rp.zip"
    archive = zip_with("rp.response", completion_body())
    h = run_one(
        Script(
            accepted("rp"),
            redirect(url, "rp"),
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
    assert h.row.attempts == 1
    assert [m for m, _ in h.sink.moves()] == [
        "Submitted", "Accepted", "Located", "Fetched", "Finished"
    ]  # fmt: skip
    assert len(h.clock.sleeps) == 1  # backed off before downloading again


@pytest.mark.parametrize("status_code", [500, 503, 429])
def test_a_download_that_fails_with_a_retryable_status_keeps_its_link(status_code: int) -> None:
    url = "https://nvcf-results.s3.amazonaws.com/rq.zip"
    archive = zip_with("rq.response", completion_body())
    h = run_one(
        Script(
            accepted("rq"),
            redirect(url, "rq"),
            (status_code, {}, b"SlowDown"),
            (200, {}, archive),
        )
    )
    assert [c.method for c in h.transport.calls] == ["POST", "GET", "GET", "GET"]
    assert_done(h.row, request_id="rq")
    assert h.sink.of(Forgotten) == []
    assert h.stats.rebuys == 0


def test_a_download_answered_503_with_retry_after_waits_it_out() -> None:
    url = "https://nvcf-results.s3.amazonaws.com/rw.zip"
    archive = zip_with("rw.response", completion_body())
    busy = (503, {"Retry-After": "30"}, b"busy")
    h = run_one(Script(busy, (200, {}, archive)), item=held(request_id="rw", location=url))
    assert_done(h.row, request_id="rw")
    assert [c.at - MONOTONIC_START for c in h.transport.calls] == [0.0, 30.0]
    assert h.clock.sleeps == [30.0]


@pytest.mark.parametrize(
    ("reply", "wait"),
    [((429, {"Retry-After": "5"}, b"SlowDown"), 5.0), ((503, {"Retry-After": "120"}, b""), 120.0)],
    ids=["429", "503-long-retry-after"],
)
def test_a_download_told_to_wait_waits_before_trying_again(reply: Reply, wait: float) -> None:
    url = "https://nvcf-results.s3.amazonaws.com/rw.zip"
    archive = zip_with("rw.response", completion_body())
    h = run_one(Script(reply, (200, {}, archive)), item=held(request_id="rw", location=url))
    assert_done(h.row, request_id="rw")
    downloads = [c.at - MONOTONIC_START for c in h.transport.calls]
    assert downloads == [0.0, wait]  # Retry-After honoured for this row
    assert h.limiter.window.factor(h.clock.monotonic()) == 1.0  # submissions not slowed


def test_a_link_still_failing_when_tries_run_out_leaves_the_row_fetched() -> None:
    url = "https://nvcf-results.s3.amazonaws.com/rz.zip"
    h = run_one(
        Script(accepted("rz"), redirect(url), *([(503, {}, b"down")] * 2)),
        max_attempts=2,
    )
    row = h.row
    assert row.state is FETCHED and row.location == url  # not failed, not re-bought
    assert row.request_id == "rz"
    assert [c.method for c in h.transport.calls] == ["POST", "GET", "GET", "GET"]
    assert [m for m, _ in h.sink.moves()] == ["Submitted", "Accepted", "Located"]
    assert h.stats.failed == 0


@pytest.mark.parametrize(
    "item", [new_item(), held(request_id="rid-x")], ids=["submitting", "polling"]
)
def test_an_unexpected_error_fails_only_its_row(item: WorkItem) -> None:
    def handler(call: Call) -> Reply:
        raise RuntimeError("a bug somewhere")

    h = run_one(handler, item=item)
    assert h.row.state is FAILED
    assert h.row.error == "internal error: RuntimeError: a bug somewhere"
    assert h.row.cause == "EndpointError"
    assert h.stats.failed == 1


def test_a_missing_image_fails_the_row_without_sending_it(tmp_path: Path) -> None:
    gone = tmp_path / "gone.png"
    marker = f"{LOCAL}{'0' * 64}:image/png:{gone}"
    messages = json.dumps(
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": marker}}]}]
    )
    h = run_one(Script(), item=WorkItem(0, "row-0", messages=messages))
    assert h.transport.calls == []
    assert h.sink.moves() == [("Finished", FAILED)]  # pending -> failed: never sent
    assert h.row.attempts == 0
    assert h.row.cause == "MediaError"
    assert str(gone) in (h.row.error or "")


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
    assert h.row.attempts == 2
    assert dict(h.stats.causes) == {"ResponseFormatError": 1}


def test_malformed_polled_answer_is_stored_then_the_row_sent_again() -> None:
    h = run_one(Script(accepted("rm"), ok("rm", b"not json"), ok("rm2")))

    assert h.transport.summary() == [("POST", CHAT), ("GET", status("rm")), ("POST", CHAT)]
    assert h.sink.of(Fetched) == [Fetched(0, "not json")]
    assert h.sink.committed == [Fetched(0, "not json")]  # stored before it was parsed
    assert [m for m, _ in h.sink.moves()] == [
        "Submitted", "Accepted", "Fetched", "Forgotten", "Submitted", "Finished"
    ]  # fmt: skip
    assert_done(h.row, request_id="rm2")
    assert h.row.attempts == 2


STREAM_CHUNKS: list[dict[str, Any]] = [
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
    assert json.loads(h.row.raw or "")["choices"][0]["message"]["content"] == "hello"
    assert h.sink.moves() == [("Submitted", INFLIGHT), ("Finished", DONE)]


def test_truncated_stream_is_retried() -> None:
    cut = (200, {"Content-Type": "text/event-stream"}, sse(*STREAM_CHUNKS[:2], done=False))
    whole = (200, {"Content-Type": "text/event-stream", "NVCF-REQID": "rs"}, sse(*STREAM_CHUNKS))
    h = run_one(Script(cut, whole), stream=True)

    assert h.transport.summary() == [("POST", CHAT), ("POST", CHAT)]
    assert_done(h.row, request_id="rs")
    assert h.row.attempts == 2
    assert dict(h.stats.causes) == {"TransportError": 1}


# ---------------------------------------------------------------- bookkeeping, more stops


@pytest.mark.parametrize(
    ("first_submit_at", "latency"),
    [(None, 10.0), (WALL_START - 100.0, 110.0)],
    ids=["first-sent-this-run", "first-sent-in-an-earlier-run"],
)
def test_attempts_and_latency_span_retries_and_earlier_runs(
    first_submit_at: float | None, latency: float
) -> None:
    busy = problem(502, "Bad Gateway", headers={"Retry-After": "10"})
    # two submissions in earlier runs (a crash left the row in flight: pending again)
    item = new_item(attempts=2, first_submit_at=first_submit_at)
    h = run_one(Script(busy, accepted("rl"), ok("rl")), item=item)

    row = h.row
    assert_done(row, request_id="rl")
    assert row.attempts == 4
    submits = h.sink.of(Submitted)
    assert [c.attempts for c in submits] == [3, 4]
    first = WALL_START if first_submit_at is None else first_submit_at
    assert {c.first_submit_at for c in submits} == {first}  # set once, on the first try
    # From the first submission to the answer, not from the last retry.
    assert row.finished_at == WALL_START + 10
    assert row.latency_s == latency == row.finished_at - first


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
    assert row.state is FAILED
    assert "e2" in (row.error or "")
    assert "expired" in (row.error or "")
    assert row.cause == "RequestExpired"
    assert row.attempts == 2
    assert row.request_id is None  # the id is spent: nothing to poll for it any more
    assert [m for m, _ in h.sink.moves()][-2:] == ["Forgotten", "Finished"]


@pytest.mark.parametrize("code", [403, 404, 410])
def test_expired_download_link_buys_the_answer_again(code: int) -> None:
    """A presigned Location that no longer works is not our key's fault (no AuthError)."""
    url = "https://nvcf-results.s3.amazonaws.com/abc.zip?X-Amz-Expires=86400"
    denied = (code, {"Content-Type": "application/xml"}, b"<Error>Request has expired</Error>")
    h = run_one(Script(denied, ok("fresh")), item=held(request_id="abc", location=url))
    assert h.transport.summary() == [("GET", url), ("POST", CHAT)]
    assert h.stats.rebuys == 1
    assert_done(h.row, request_id="fresh")
    assert h.row.attempts == 2
    assert h.row.location is None
    assert h.sink.moves() == [
        ("Forgotten", INFLIGHT),
        ("Submitted", INFLIGHT),
        ("Finished", DONE),
    ]
    assert not h.stop.is_set


def test_stop_signal_sleep_ends_when_a_stop_is_requested_and_nap_does_not() -> None:
    async def main() -> FakeClock:
        clock = FakeClock(block_from=3600)
        stop = StopSignal(clock)
        sleeper = asyncio.create_task(stop.sleep(3600))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not sleeper.done()
        stop.request(Interrupted("x"))
        await asyncio.wait_for(sleeper, RUN_GUARD_S)
        assert isinstance(stop.reason, Interrupted)
        stop.request(JobStopped("later"))  # the first reason wins
        assert isinstance(stop.reason, Interrupted)
        await stop.sleep(5)  # once stopped, a sleep does not even start
        await stop.nap(5)  # a nap (between polls of a paid id) is not cut short
        return clock

    clock = asyncio.run(main())
    assert clock.sleeps == [3600, 5]
    assert clock.monotonic() == MONOTONIC_START + 5


def test_stop_during_a_long_limiter_pause_sends_nothing() -> None:
    async def main() -> Harness:
        h = make_engine(Script(), clock=FakeClock(block_from=3000))
        h.limiter.pause(3600)
        task = asyncio.create_task(h.run(new_item()))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not task.done()  # really waiting out the pause: only the stop may end it
        h.stop.request(Interrupted("interrupted by SIGINT"))
        await asyncio.wait_for(task, RUN_GUARD_S)
        return h

    h = asyncio.run(main())
    h.sink.check()
    assert h.transport.calls == []
    assert h.sink.changes == []
    assert h.clock.sleeps == [3600.0]


# ---------------------------------------------------------------- dispatcher + real checkpoint


def prompt(i: int) -> str:
    return json.dumps([{"role": "user", "content": f"q{i}"}])


def make_checkpoint(tmp_path: Path, n: int, special: dict[int, Row] | None = None) -> Checkpoint:
    """n rows `q0..q<n-1>`, pending unless `special` says otherwise (built through the real
    checkpoint API, as an earlier run would have left them)."""
    special = special or {}
    rows = [special.get(i) or Row(i, messages=prompt(i)) for i in range(n)]
    for r in rows:
        r.messages = prompt(r.idx)
    return build(tmp_path / "job.checkpoint.sqlite", rows)


def results(checkpoint: Checkpoint) -> dict[int, dict[str, Any]]:
    names = [f.name for f in fields(ResultPage)]
    out: dict[int, dict[str, Any]] = {}
    for page in checkpoint.result_pages():
        for k in range(len(page)):
            record = {name: getattr(page, name)[k] for name in names}
            out[record["idx"]] = record
    return out


def row_of(call: Call) -> int:
    """Row index of a POST (from its prompt `q<i>`) or of a poll (from its id `id-<i>`)."""
    if call.method == "POST":
        return int(call.prompt[1:])
    return int(call.url.rsplit("-", 1)[1])


def posts_ok_polls_pending(
    polls: dict[int, int], still_pending: Callable[[int, int], bool]
) -> Callable[[Harness], Handler]:
    """Submissions answered at once; the n-th poll of row i's id answers 202 while
    `still_pending(i, n)`, then the answer. `polls` counts each row's polls."""

    def build_handler(h: Harness) -> Handler:
        def handler(call: Call) -> Reply:
            i = row_of(call)
            if call.method == "POST":
                return ok(f"ok-{i}")
            polls[i] = polls.get(i, 0) + 1
            return accepted(f"id-{i}") if still_pending(i, polls[i]) else ok(f"id-{i}")

        return handler

    return build_handler


def run_on_checkpoint(
    checkpoint: Checkpoint,
    build_handler: Callable[[Harness], Handler],
    *,
    use_dispatch: bool = False,
    budget: CostBudget | None = None,
    **settings: Any,
) -> tuple[Harness, BaseException | None]:
    """Run the engine over the checkpoint, a real CheckpointWriter behind the FakeSink.
    Returns the harness and what the run raised, if anything."""

    async def main() -> tuple[Harness, BaseException | None]:
        writer = CheckpointWriter(checkpoint.path)
        sink = FakeSink(forward=writer)
        for page in checkpoint.work_pages(UNFINISHED, 1000):
            for item in page:
                sink.track(item)
        h = make_engine(Script(), sink=sink, budget=budget, **settings)
        h.transport.handler = build_handler(h)
        run = dispatch if use_dispatch else run_engine
        task = asyncio.create_task(run(h.engine, checkpoint))
        try:
            # A guard, not a timing assertion: a hung engine fails the test instead of hanging.
            done, _ = await asyncio.wait({task}, timeout=RUN_GUARD_S)
            if not done:
                task.cancel()
                raise AssertionError(f"the engine did not return within {RUN_GUARD_S}s")
            return h, task.exception()
        finally:
            writer.handoff()
            await asyncio.to_thread(writer.flush, RUN_GUARD_S)
            writer.close()

    h, error = asyncio.run(main())
    h.sink.check()
    return h, error


@pytest.fixture
def closing() -> Any:
    opened: list[Checkpoint] = []
    yield opened.append
    for checkpoint in opened:
        checkpoint.close()


def test_dispatch_finishes_every_row_within_concurrency(tmp_path: Path, closing: Any) -> None:
    checkpoint = make_checkpoint(tmp_path, 50)
    closing(checkpoint)
    polled: set[int] = set()

    def build_handler(h: Harness) -> Handler:
        def handler(call: Call) -> Reply:
            i = row_of(call)
            if call.method == "POST":
                return accepted(f"id-{i}") if i % 3 == 0 else ok(f"ok-{i}")
            if i not in polled:  # one 202 on the first poll, then the answer
                polled.add(i)
                return accepted(f"id-{i}")
            return ok(f"id-{i}", completion_body(f"answer {i}"))

        return handler

    h, error = run_on_checkpoint(checkpoint, build_handler, concurrency=4)
    assert error is None
    assert checkpoint.counts() == {"done": 50}
    posts = [row_of(c) for c in h.transport.calls if c.method == "POST"]
    gets = [c.url for c in h.transport.calls if c.method == "GET"]
    assert sorted(posts) == list(range(50))  # each row sent exactly once
    third = [i for i in range(50) if i % 3 == 0]
    assert sorted(gets) == sorted([status(f"id-{i}") for i in third] * 2)
    assert 1 < h.transport.max_posts_in_flight <= 4
    rows = results(checkpoint)
    for i in range(50):
        assert rows[i]["attempts"] == 1
        if i % 3 == 0:
            assert rows[i]["request_id"] == f"id-{i}"
            assert rows[i]["content"] == f"answer {i}"
        else:
            assert rows[i]["request_id"] == f"ok-{i}"
            assert rows[i]["content"] == "hello"
    assert checkpoint.totals().total_tokens == 250
    assert checkpoint.totals().attempts == 50
    assert (h.stats.ok, h.stats.accepted, h.stats.polls) == (50, 17, 34)


def test_resumed_ids_are_polled_first_and_never_posted(tmp_path: Path, closing: Any) -> None:
    stored = completion_body("kept").decode()
    checkpoint = make_checkpoint(
        tmp_path,
        10,
        {
            2: Row(2, state=POLLING, request_id="id-2"),
            5: Row(5, state=POLLING, request_id="id-5"),
            7: Row(7, state=FETCHED, request_id="id-7", answer=stored),
            9: Row(9, state=DONE, completion=Completion(content="old")),
        },
    )
    closing(checkpoint)
    polls: dict[int, int] = {}
    build_handler = posts_ok_polls_pending(polls, lambda i, n: i == 5 and n == 1)
    h, error = run_on_checkpoint(checkpoint, build_handler)
    assert error is None
    assert checkpoint.counts() == {"done": 10}
    summary = h.transport.summary()
    assert summary[:2] == [("GET", status("id-2")), ("GET", status("id-5"))]
    posts = sorted(row_of(c) for c in h.transport.calls if c.method == "POST")
    assert posts == [0, 1, 3, 4, 6, 8]
    assert polls == {2: 1, 5: 2}
    rows = results(checkpoint)
    assert rows[7]["content"] == "kept"
    assert rows[9]["content"] == "old"
    assert [rows[i]["request_id"] for i in (2, 5, 7)] == ["id-2", "id-5", "id-7"]
    assert all(rows[i]["attempts"] == 1 for i in range(10))


def test_max_pending_bounds_ids_awaiting_a_result(tmp_path: Path, closing: Any) -> None:
    checkpoint = make_checkpoint(tmp_path, 12)
    closing(checkpoint)
    awaiting: set[int] = set()
    peak = {"awaiting": 0, "stats": 0}
    polls: dict[int, int] = {}

    def build_handler(h: Harness) -> Handler:
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

    h, error = run_on_checkpoint(
        checkpoint, build_handler, use_dispatch=True, concurrency=8, max_pending=3
    )
    assert error is None
    assert checkpoint.counts() == {"done": 12}
    assert peak["awaiting"] == 3
    assert 1 <= peak["stats"] <= 3
    assert polls == dict.fromkeys(range(12), 3)
    assert h.stats.submissions == 12


def test_stop_mid_run_raises_the_reason_and_unsent_rows_stay_pending(
    tmp_path: Path, closing: Any
) -> None:
    checkpoint = make_checkpoint(tmp_path, 20)
    closing(checkpoint)

    def build_handler(h: Harness) -> Handler:
        def handler(call: Call) -> Reply:
            posts = sum(c.method == "POST" for c in h.transport.calls)
            if posts == 5:
                h.stop.request(Interrupted("interrupted by SIGINT"))
            return ok(f"ok-{row_of(call)}")

        return handler

    _, error = run_on_checkpoint(checkpoint, build_handler, concurrency=1)
    assert isinstance(error, Interrupted) and "SIGINT" in str(error)
    assert checkpoint.counts() == {"done": 5, "pending": 15}
    rows = results(checkpoint)
    assert [i for i, r in rows.items() if r["state"] == "done"] == [0, 1, 2, 3, 4]
    assert all(rows[i]["attempts"] == 0 for i in range(5, 20))


def test_grace_over_abandons_blocked_work_unrecorded(tmp_path: Path, closing: Any) -> None:
    checkpoint = make_checkpoint(tmp_path, 6, {0: Row(0, state=POLLING, request_id="id-0")})
    closing(checkpoint)
    calls: list[Call] = []

    def build_handler(h: Harness) -> Handler:
        async def handler(call: Call) -> Reply:
            calls.append(call)
            i = row_of(call)
            if i in (0, 1):  # a poll and a submission that never answer
                await asyncio.Event().wait()
            h.stop.request(Interrupted("interrupted by SIGTERM"))
            return ok(f"ok-{i}")

        return handler

    # The grace period is the one real wait here (run_engine times it on the event loop).
    _, error = run_on_checkpoint(checkpoint, build_handler, concurrency=2, grace=0.05)
    assert isinstance(error, Interrupted) and "SIGTERM" in str(error)
    rows = results(checkpoint)
    assert (rows[0]["state"], rows[0]["request_id"]) == ("polling", "id-0")
    assert (rows[1]["state"], rows[1]["attempts"]) == ("inflight", 1)
    assert rows[2]["state"] == "done"
    assert [rows[i]["state"] for i in (3, 4, 5)] == ["pending"] * 3
    assert [(c.method, row_of(c)) for c in calls] == [("GET", 0), ("POST", 1), ("POST", 2)]


def test_job_stopped_by_long_retry_after_leaves_rows_resumable(
    tmp_path: Path, closing: Any
) -> None:
    checkpoint = make_checkpoint(tmp_path, 5)
    closing(checkpoint)
    offline = problem(503, "Service Unavailable", "offline", headers={"Retry-After": "10800"})

    def build_handler(h: Harness) -> Handler:
        return lambda call: offline if row_of(call) == 0 else ok()

    _, error = run_on_checkpoint(checkpoint, build_handler, concurrency=1, max_pause=600)
    assert isinstance(error, JobStopped)
    counts = checkpoint.counts()
    assert "failed" not in counts
    assert counts == {"inflight": 1, "pending": 4}


def test_auth_error_stops_the_job_and_fails_no_row(tmp_path: Path, closing: Any) -> None:
    checkpoint = make_checkpoint(tmp_path, 10)
    closing(checkpoint)

    def build_handler(h: Harness) -> Handler:
        return lambda call: problem(401, "Unauthorized", "Authentication failed")

    _, error = run_on_checkpoint(checkpoint, build_handler, concurrency=1)
    assert isinstance(error, AuthError) and "NVIDIA_API_KEY" in str(error)
    counts = checkpoint.counts()
    assert "failed" not in counts
    assert counts.get(DONE, 0) == 0


@pytest.mark.parametrize("concurrency", [1, 4])
def test_after_a_401_no_further_request_is_started(
    tmp_path: Path, closing: Any, concurrency: int
) -> None:
    # SPEC: 401/403 stop the whole job at once (no more requests).
    checkpoint = make_checkpoint(tmp_path, 10)
    closing(checkpoint)

    def build_handler(h: Harness) -> Handler:
        return lambda call: problem(401, "Unauthorized", "Authentication failed")

    h, error = run_on_checkpoint(checkpoint, build_handler, concurrency=concurrency)
    assert isinstance(error, AuthError)
    posts = [c for c in h.transport.calls if c.method == "POST"]
    # at most the requests already on the wire when the first 401 arrived
    assert 1 <= len(posts) <= concurrency
    assert "failed" not in checkpoint.counts()


def test_failure_budget_stops_the_job_and_keeps_unsent_rows(tmp_path: Path, closing: Any) -> None:
    checkpoint = make_checkpoint(tmp_path, 10)
    closing(checkpoint)

    def build_handler(h: Harness) -> Handler:
        return lambda call: problem(422, "Unprocessable Entity", "bad row")

    h, error = run_on_checkpoint(checkpoint, build_handler, concurrency=1, max_failures="3")
    assert isinstance(error, JobStopped)
    assert "failure budget spent: 3 of 3 rows failed" in str(error)
    assert checkpoint.counts() == {"failed": 3, "pending": 7}
    assert len(h.transport.calls) == 3


def test_cost_cap_stops_before_a_request_could_pass_it(tmp_path: Path, closing: Any) -> None:
    # $1 a token: each row books 5 prompt + 10 max completion = $15 before it is sent, and
    # costs $5 (usage 3 + 2) once answered. With $40: the 7th row could pass the cap.
    checkpoint = make_checkpoint(tmp_path, 10)
    closing(checkpoint)
    prices = {"prompt": 1e6, "completion": 1e6}
    budget = CostBudget(40.0, Pricing(1e6, 1e6))

    def build_handler(h: Harness) -> Handler:
        return lambda call: ok(f"ok-{row_of(call)}")

    h, error = run_on_checkpoint(
        checkpoint,
        build_handler,
        budget=budget,
        concurrency=1,
        pricing=prices,
        max_cost=40,
        params={"max_tokens": 10},
    )
    assert isinstance(error, BudgetSpent)
    assert "--max-cost" in str(error)
    assert checkpoint.counts() == {"done": 6, "pending": 4}
    assert len(h.transport.calls) == 6
    assert (budget.spent, budget.booked) == (30.0, 0.0)


def test_an_id_already_paid_for_is_polled_whatever_the_cost_cap(
    tmp_path: Path, closing: Any
) -> None:
    checkpoint = make_checkpoint(tmp_path, 2, {0: Row(0, state=POLLING, request_id="id-0")})
    closing(checkpoint)
    budget = CostBudget(10.0, Pricing(1e6, 1e6), spent=10.0)  # nothing left

    def build_handler(h: Harness) -> Handler:
        return lambda call: ok("id-0")

    h, error = run_on_checkpoint(
        checkpoint,
        build_handler,
        budget=budget,
        pricing={"prompt": 1e6, "completion": 1e6},
        max_cost=10,
        params={"max_tokens": 10},
    )
    assert isinstance(error, BudgetSpent)
    assert h.transport.summary() == [("GET", status("id-0"))]  # polled; row 1 never sent
    assert checkpoint.counts() == {"done": 1, "pending": 1}
    assert budget.spent == 15.0  # counted against the cap all the same


def test_an_endpoints_limit_hears_the_load_each_request_went_out_and_came_back_under() -> None:
    """Four requests sent one after another and answered together were four on the wire:
    neither the count at sending (1, 2, 3, 4) nor at answering (4, 3, 2, 1) says so alone,
    and an adaptive limit that heard either would think a full endpoint idle."""

    class Heard(FixedLimit):
        def __init__(self) -> None:
            super().__init__(4)
            self.loads: list[int] = []

        def on_answer(self, latency_s: float, in_flight: int, now: float) -> None:
            self.loads.append(in_flight)

    async def main() -> list[int]:
        gate = asyncio.Event()

        async def handler(call: Call) -> Reply:
            await gate.wait()
            return ok()

        h = make_engine(handler)
        heard = h.engine.pool.first.concurrency = Heard()
        tasks = [asyncio.create_task(h.engine.run_item(new_item(i))) for i in range(4)]
        for _ in range(10):
            await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(*tasks)
        return heard.loads

    loads = asyncio.run(guarded(main()))
    assert len(loads) == 4 and min(loads) >= 3, loads


def test_resumed_ids_past_max_pending_do_not_stall_the_rows_after_them(
    tmp_path: Path, closing: Any
) -> None:
    """More held ids than max_pending (a resume after max_pending was lowered): new rows
    wait for room at the endpoint, and a poll that ends makes that room."""
    held_rows = {i: Row(i, state=POLLING, request_id=f"id-{i}") for i in range(4)}
    checkpoint = make_checkpoint(tmp_path, 8, held_rows)
    closing(checkpoint)
    build_handler = posts_ok_polls_pending({}, lambda _, n: n < 3)
    h, error = run_on_checkpoint(checkpoint, build_handler, max_pending=2, concurrency=2)
    assert error is None
    assert checkpoint.counts() == {"done": 8}
    assert sorted(row_of(c) for c in h.transport.calls if c.method == "POST") == [4, 5, 6, 7]


def test_a_key_refused_while_polling_stops_a_one_endpoint_job_as_before() -> None:
    async def main() -> Harness:
        h = make_engine(Script(problem(401, "Unauthorized", "Authentication failed")))
        with pytest.raises(AuthError, match="NVIDIA_API_KEY"):
            await h.run(held(request_id="id-0"))
        return h

    h = asyncio.run(guarded(main()))
    assert h.transport.summary() == [("GET", status("id-0"))]  # polled once, not again
    assert h.stop.is_set and isinstance(h.stop.reason, AuthError)
    assert h.row.state is POLLING  # kept for a run with the right key


def test_in_a_pool_a_refused_key_sends_new_rows_elsewhere_and_keeps_held_ones() -> None:
    other = "http://127.0.0.1:9/v1"

    def handler(call: Call) -> Reply:
        if call.url.startswith(other):
            return ok("rid-other")
        return problem(401, "Unauthorized", "Authentication failed")

    async def main() -> tuple[Harness, WorkItem, WorkItem]:
        tables = [{"base_url": BASE}, {"base_url": other}]
        h = make_engine(handler, endpoints=tables)
        new, kept = new_item(0), held(1, request_id="id-1", endpoint=BASE)
        await asyncio.gather(h.engine.run_item(new), h.engine.run_item(kept))
        return h, new, kept

    h, new, kept = asyncio.run(guarded(main()))
    assert new.state is DONE and new.endpoint == other
    assert kept.state is POLLING  # its answer waits at the endpoint that refused the key
    assert not h.stop.is_set
