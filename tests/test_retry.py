"""retry.py, pure: what each answer is (classify_status) and what to do after each error
(decide), as tables. No engine, no I/O."""

from __future__ import annotations

import random
from typing import Any

import pytest

from batchrun.errors import (
    AuthError,
    EndpointError,
    JobStopped,
    MediaError,
    RateLimitError,
    RequestExpired,
    RequestRejected,
    ResponseFormatError,
    ServerError,
    StatusError,
    TransportError,
)
from batchrun.retry import (
    LONG_WAIT_S,
    POLL_RETRY_MAX_S,
    REPOLL_STATUSES,
    Action,
    Decision,
    History,
    RetryPolicy,
    backoff,
    classify_status,
    decide,
)

POLICY = RetryPolicy(max_attempts=6, backoff_base=1.0, backoff_max=8.0, max_pause=900.0)


class Ceiling(random.Random):
    """Jitter at its top: back-off is exactly base x 2^(tries-1), capped."""

    def uniform(self, a: float, b: float) -> float:
        return b


def server(status: int = 500, retry_after: float | None = None) -> ServerError:
    return ServerError(status, f"HTTP {status}", retry_after=retry_after)


def rate_limited(retry_after: float | None = None) -> RateLimitError:
    return RateLimitError(429, "HTTP 429", retry_after=retry_after)


def rejected(status: int = 422) -> RequestRejected:
    return RequestRejected(status, f"HTTP {status}")


EXPIRED = RequestExpired("request r expired or was already fetched")
DROPPED = TransportError("server closed the connection")
GARBAGE = ResponseFormatError("not a chat completion")
FIRST = History(tries=1)
SPENT = History(tries=6)  # = POLICY.max_attempts
HOLDS = History(tries=1, holds_request=True)  # a request id or a stored answer
HOLDS_SPENT = History(tries=6, holds_request=True)
LINK = History(tries=1, holds_request=True, has_location=True)  # a 302 link
LINK_SPENT = History(tries=6, holds_request=True, has_location=True)


def poll(failures: int = 1) -> History:
    return History(tries=1, polling=True, poll_failures=failures, holds_request=True)


R, RP, RS = Action.RETRY, Action.REPOLL, Action.RESUBMIT
PAUSE, STOP, FAIL, KEEP = Action.PAUSE_ALL, Action.STOP_JOB, Action.FAIL_ROW, Action.KEEP

# error, history -> action, delay, forget_request, slow_down
TABLE: list[tuple[str, EndpointError | AuthError, History, Action, float | None, bool, bool]] = [
    # retryable answers to a submission: back off base x 2^(tries-1), capped at backoff_max
    ("500 first try", server(500), FIRST, R, 1.0, False, False),
    ("502 second try", server(502), History(tries=2), R, 2.0, False, False),
    ("503 fifth try, capped", server(503), History(tries=5), R, 8.0, False, False),
    ("504 tries spent", server(504), SPENT, FAIL, 0.0, False, False),
    ("408", server(408), FIRST, R, 1.0, False, False),
    ("dropped connection", DROPPED, FIRST, R, 1.0, False, False),
    ("malformed answer", GARBAGE, FIRST, R, 1.0, False, False),
    ("malformed, tries spent", GARBAGE, SPENT, FAIL, 0.0, False, False),
    # Retry-After: honoured; above LONG_WAIT_S it pauses everyone; above max_pause, stop
    ("503 Retry-After 7", server(503, 7), FIRST, R, 7.0, False, False),
    (
        "503 Retry-After = LONG_WAIT_S",
        server(503, LONG_WAIT_S),
        FIRST,
        R,
        LONG_WAIT_S,
        False,
        False,
    ),
    ("503 Retry-After 120", server(503, 120), FIRST, PAUSE, 120.0, False, False),
    ("503 Retry-After = max_pause", server(503, 900), FIRST, PAUSE, 900.0, False, False),
    ("503 Retry-After 10800", server(503, 10800), FIRST, STOP, 0.0, False, False),
    # 429: everyone pauses (Retry-After, or the limiter's own pick) and slows down
    ("429", rate_limited(), FIRST, PAUSE, None, False, True),
    ("429 Retry-After 5", rate_limited(5), FIRST, PAUSE, 5.0, False, True),
    ("429 Retry-After 120", rate_limited(120), FIRST, PAUSE, 120.0, False, True),
    ("429 Retry-After 10800", rate_limited(10800), FIRST, STOP, 0.0, False, False),
    ("429 tries spent", rate_limited(), SPENT, FAIL, 0.0, False, False),
    # not worth sending again
    ("422", rejected(422), FIRST, FAIL, 0.0, False, False),
    ("400", rejected(400), FIRST, FAIL, 0.0, False, False),
    ("410", rejected(410), FIRST, FAIL, 0.0, False, False),
    ("image gone", MediaError("gone.png: cannot read"), FIRST, FAIL, 0.0, False, False),
    # the server no longer holds the answer: buy it again at once, until tries are spent
    ("expired id", EXPIRED, HOLDS, RS, 0.0, True, False),
    ("expired id, tries spent", EXPIRED, HOLDS_SPENT, FAIL, 0.0, True, False),
    ("dead link", EXPIRED, LINK, RS, 0.0, True, False),
    ("dead link, tries spent", EXPIRED, LINK_SPENT, FAIL, 0.0, True, False),
    # a held id's final error answer spends it (a poll's 500, a stored answer that is garbage)
    ("500 to a poll", server(500), HOLDS, R, 1.0, True, False),
    ("500 to a poll, tries spent", server(500), HOLDS_SPENT, FAIL, 0.0, True, False),
    ("422 to a poll", rejected(422), HOLDS, FAIL, 0.0, True, False),
    ("stored answer is garbage", GARBAGE, HOLDS, R, 1.0, True, False),
    # a failed download keeps its link (valid 24 h): the answer is paid for
    ("download dropped", DROPPED, LINK, R, 1.0, False, False),
    ("download 503", server(503), LINK, R, 1.0, False, False),
    ("download dropped, tries spent", DROPPED, LINK_SPENT, KEEP, 0.0, False, False),
    ("download 500, tries spent", server(500), LINK_SPENT, KEEP, 0.0, False, False),
    ("download 429, tries spent", rate_limited(), LINK_SPENT, KEEP, 0.0, False, False),
    ("download 422", rejected(422), LINK, FAIL, 0.0, True, False),
    ("download 503 Retry-After 10800", server(503, 10800), LINK, STOP, 0.0, False, False),
    # polling a held id: transient errors poll the same id again, soon
    ("poll dropped", DROPPED, poll(1), RP, 0.5, False, False),
    ("poll dropped twice", DROPPED, poll(2), RP, 1.0, False, False),
    ("poll dropped thrice", DROPPED, poll(3), RP, POLL_RETRY_MAX_S, False, False),
    ("poll dropped 50 times", DROPPED, poll(50), RP, POLL_RETRY_MAX_S, False, False),
    ("poll 502", server(502), poll(), RP, 0.5, False, False),
    ("poll 503 Retry-After 0.2", server(503, 0.2), poll(), RP, 0.2, False, False),
    ("poll 503 Retry-After 10800", server(503, 10800), poll(), RP, POLL_RETRY_MAX_S, False, False),
    ("poll 429 Retry-After 30", rate_limited(30), poll(), RP, POLL_RETRY_MAX_S, False, False),
    # ... the rest end polling: the engine decides again with the row's own history
    ("poll 500", server(500), poll(), R, 1.0, True, False),
    ("poll 422", rejected(422), poll(), FAIL, 0.0, True, False),
    ("poll 404 problem", EXPIRED, poll(), RS, 0.0, True, False),
    ("poll malformed", GARBAGE, poll(), R, 1.0, True, False),
]


@pytest.mark.parametrize(
    ("error", "history", "action", "delay", "forget", "slow_down"),
    [row[1:] for row in TABLE],
    ids=[row[0] for row in TABLE],
)
def test_decide(
    error: EndpointError | AuthError,
    history: History,
    action: Action,
    delay: float | None,
    forget: bool,
    slow_down: bool,
) -> None:
    decision = decide(error, history, POLICY, Ceiling())
    assert decision.action is action
    assert decision.delay == delay
    assert decision.forget_request is forget
    assert decision.slow_down is slow_down
    assert (decision.stop is not None) is (action is STOP)


@pytest.mark.parametrize(
    "history", [FIRST, SPENT, HOLDS, LINK, poll()], ids=["first", "spent", "holds", "link", "poll"]
)
def test_an_auth_error_stops_the_job_whatever_the_row(history: History) -> None:
    error = AuthError("HTTP 401: Unauthorized (check the API key in $NVIDIA_API_KEY)")
    assert decide(error, history, POLICY, Ceiling()) == Decision(STOP, stop=error)


def test_a_retry_after_beyond_max_pause_stops_the_job_resumably() -> None:
    decision = decide(server(503, 10800), FIRST, POLICY, Ceiling())
    assert isinstance(decision.stop, JobStopped)
    message = str(decision.stop)
    assert "10800s" in message and "max_pause (900s)" in message and "resume" in message


@pytest.mark.parametrize("status", sorted(REPOLL_STATUSES))
@pytest.mark.parametrize("retry_after", [None, 0.0, 1.0, 5.0, 3600.0])
@pytest.mark.parametrize("failures", [1, 2, 3, 10])
def test_a_held_id_is_never_left_unpolled_long(
    status: int, retry_after: float | None, failures: int
) -> None:
    # NVCF drops an id nobody polls within max(2 x hold, 10) s.
    kind: type[StatusError] = RateLimitError if status == 429 else ServerError
    error = kind(status, f"HTTP {status}", retry_after=retry_after)
    decision = decide(error, poll(failures), POLICY, random.Random(failures))
    assert decision.action is RP
    assert decision.delay is not None and 0 <= decision.delay <= POLL_RETRY_MAX_S
    assert not decision.forget_request


@pytest.mark.parametrize("tries", [1, 2, 3, 4, 5, 6, 7])
def test_backoff_is_jittered_below_a_doubling_ceiling(tries: int) -> None:
    policy = RetryPolicy(max_attempts=10, backoff_base=0.5, backoff_max=10.0)
    ceiling = min(10.0, 0.5 * 2 ** (tries - 1))
    rng = random.Random(tries)
    waits = [backoff(tries, policy, rng) for _ in range(50)]
    assert all(ceiling / 2 <= w <= ceiling for w in waits)
    assert len(set(waits)) > 1  # jitter: not all rows retry at the same instant
    # the decision's delay is that back-off, from the random source the caller passes
    decision = decide(server(), History(tries=tries), policy, random.Random(7))
    assert decision.delay == backoff(tries, policy, random.Random(7))


def test_policy_from_config() -> None:
    from batchrun.config import build_config

    cfg = build_config(
        cli_values={"max_attempts": 9, "backoff_base": 2, "backoff_max": 30, "max_pause": 60}
    )
    assert RetryPolicy.from_config(cfg) == RetryPolicy(9, 2.0, 30.0, 60.0)


# ---------------------------------------------------------------- classify_status

PROBLEM = b'{"type":"about:blank","title":"Service Unavailable","status":503,"detail":"offline"}'


@pytest.mark.parametrize(
    ("status", "kind", "retryable"),
    [
        (429, RateLimitError, True),
        (408, ServerError, True),
        (500, ServerError, True),
        (502, ServerError, True),
        (503, ServerError, True),
        (504, ServerError, True),
        (400, RequestRejected, False),
        (402, RequestRejected, False),
        (404, RequestRejected, False),
        (409, RequestRejected, False),
        (410, RequestRejected, False),
        (413, RequestRejected, False),
        (422, RequestRejected, False),
        (501, RequestRejected, False),  # SPEC retries 500/502/503/504 only
        (505, RequestRejected, False),
    ],
)
def test_classify_status(status: int, kind: type[StatusError], retryable: bool) -> None:
    headers = {"NVCF-REQID": "rid-1", "Retry-After": "12"}
    error = classify_status(status, _ci(headers), b'{"detail":"why"}', "NVIDIA_API_KEY")
    assert type(error) is kind
    assert isinstance(error, StatusError)
    assert error.retryable is retryable
    assert error.status == status
    assert str(error) == f"HTTP {status}: why"
    assert error.retry_after == 12.0
    assert error.request_id == "rid-1"
    assert error.body == '{"detail":"why"}'


@pytest.mark.parametrize("status", [401, 403])
def test_classify_status_auth_names_the_key_variable(status: int) -> None:
    error = classify_status(status, _ci({}), b"", "MY_KEY")
    assert type(error) is AuthError
    assert str(error) == f"HTTP {status} (check the API key in $MY_KEY)"


def test_classify_status_reads_the_servers_words_and_keeps_the_body_bounded() -> None:
    error = classify_status(503, _ci({}), PROBLEM, "K")
    assert str(error) == "HTTP 503: Service Unavailable: offline"
    assert isinstance(error, ServerError) and error.retry_after is None
    assert error.request_id is None
    huge = classify_status(500, _ci({}), b"x" * 200_000, "K")
    assert isinstance(huge, StatusError) and len(huge.body or "") == 64 * 1024


def test_retryable_is_a_property_of_the_class() -> None:
    assert (ServerError.retryable, RateLimitError.retryable) == (True, True)
    assert (RequestRejected.retryable, MediaError.retryable) == (False, False)
    assert TransportError.retryable and ResponseFormatError.retryable and RequestExpired.retryable


def _ci(headers: dict[str, str]) -> Any:
    from multidict import CIMultiDict

    return CIMultiDict(headers)
