"""What an HTTP answer or error means for a row: the retry policy, as data. Pure.

Two functions hold every decision, so a reader finds every status code that retries here:

- `classify_status`: a non-2xx answer -> the typed error it amounts to (errors.py's tree);
- `decide`: an error plus the row's history -> one `Decision`: try again after a delay,
  poll the same id again, buy the answer again, pause everyone, stop the job, fail the row,
  or keep the row for a later run.

The engine only carries decisions out. Back-off figures are `RetryPolicy` fields (config
keys) or the module constants below; a caller passes the random source, so tests are exact.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import (
    AuthError,
    BatchrunError,
    EndpointError,
    JobStopped,
    RateLimitError,
    RequestExpired,
    RequestRejected,
    ServerError,
    StatusError,
    TransportError,
)
from .responses import error_detail, parse_retry_after

if TYPE_CHECKING:
    from .config import RunConfig

# Answers worth sending again: the server failed this time (PROTOCOL.md section 4).
SERVER_ERROR_STATUSES = frozenset({408, 500, 502, 503, 504})
# After a failed poll, these mean the answer may still be there: poll the same id again.
# Not 500: that is the invocation's own final error, and the id is spent.
REPOLL_STATUSES = frozenset({408, 429, 502, 503, 504})
AUTH_STATUSES = frozenset({401, 403})
# A Retry-After above this pauses the whole job rather than one row (PROTOCOL.md decision 6).
LONG_WAIT_S = 60.0
# Never back off long between polls of a held id: NVCF drops an id nobody polls.
POLL_RETRY_MAX_S = 2.0
MAX_ERROR_BODY = 64 * 1024  # an error body kept with its row


def classify_status(
    status: int, headers: Mapping[str, str], body: bytes, key_env: str
) -> AuthError | StatusError:
    """The error a non-2xx answer amounts to, with the server's own words."""
    detail = error_detail(body)
    message = f"HTTP {status}: {detail}" if detail else f"HTTP {status}"
    if status in AUTH_STATUSES:
        return AuthError(f"{message} (check the API key in ${key_env})")
    kind: type[StatusError] = RequestRejected
    if status == 429:
        kind = RateLimitError
    elif status in SERVER_ERROR_STATUSES:
        kind = ServerError
    return kind(
        status,
        message,
        retry_after=parse_retry_after(headers),
        request_id=headers.get("nvcf-reqid"),
        body=body[:MAX_ERROR_BODY].decode("utf-8", "replace"),
    )


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """The knobs of `decide` (config keys of the same names)."""

    max_attempts: int = 6
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    max_pause: float = 900.0  # a longer Retry-After stops the job (resumable) instead

    @classmethod
    def from_config(cls, cfg: RunConfig) -> RetryPolicy:
        return cls(cfg.max_attempts, cfg.backoff_base, cfg.backoff_max, cfg.max_pause)


class Action(enum.Enum):
    RETRY = "retry"  # send the row again after `delay`
    REPOLL = "repoll"  # poll the same request id again after `delay`
    RESUBMIT = "resubmit"  # the server no longer holds the answer: buy it again now
    PAUSE_ALL = "pause all"  # pause every submission `delay` s (slow down after a 429), retry
    STOP_JOB = "stop job"  # stop submitting: the job ends resumable (or, for a key, exit 3)
    FAIL_ROW = "fail row"  # the row is failed with this error
    KEEP = "keep"  # leave the row as it is for a later run (its answer waits at its link)


@dataclass(frozen=True, slots=True)
class History:
    """What the decision needs to know about the row besides the error."""

    tries: int = 1  # failed tries of this row in this run, this one included
    polling: bool = False  # the error came from polling a held request id
    poll_failures: int = 0  # failed polls in a row, this one included
    holds_request: bool = False  # a request id, a fetched answer or a 302 link is held
    has_location: bool = False  # that is a 302 link (valid 24 h)


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    delay: float | None = 0.0  # seconds; None with PAUSE_ALL: the limiter picks the pause
    slow_down: bool = False  # PAUSE_ALL after a 429: the rate drops too
    forget_request: bool = False  # the held id or link is spent: drop it before going on
    stop: BatchrunError | None = None  # why the job stops (STOP_JOB)


def decide(
    error: EndpointError | AuthError, history: History, policy: RetryPolicy, rng: random.Random
) -> Decision:
    """What to do after `error` (see the module docstring for the actions)."""
    if isinstance(error, AuthError):
        return Decision(Action.STOP_JOB, stop=error)
    if history.polling and _repollable(error):
        backoff = 2.0 ** min(history.poll_failures - 2, 1)
        return Decision(Action.REPOLL, min(POLL_RETRY_MAX_S, error.retry_after or backoff))
    spent = history.tries >= policy.max_attempts
    if isinstance(error, RequestExpired):  # expired, consumed, or a dead link
        action = Action.FAIL_ROW if spent else Action.RESUBMIT
        return Decision(action, forget_request=history.holds_request)
    # A failed download keeps its link (valid 24 h): the answer is paid for.
    keeps_link = error.retryable and history.has_location
    forget = history.holds_request and not keeps_link
    if not error.retryable or (spent and not keeps_link):
        return Decision(Action.FAIL_ROW, forget_request=forget)
    if spent:
        return Decision(Action.KEEP)
    return _retry(error, history, policy, rng, forget)


def _retry(
    error: EndpointError, history: History, policy: RetryPolicy, rng: random.Random, forget: bool
) -> Decision:
    wait = error.retry_after
    if wait is not None and wait > policy.max_pause:
        stop = JobStopped(
            f"the server asked to wait {wait:.0f}s ({error}); more than max_pause "
            f"({policy.max_pause:.0f}s), so the job stopped; resume it later (the command is "
            "below)."
        )
        return Decision(Action.STOP_JOB, stop=stop, forget_request=forget)
    if history.holds_request:
        # A download of a paid answer: its own wait; the submissions are not to blame.
        delay = wait if wait is not None else backoff(history.tries, policy, rng)
        return Decision(Action.RETRY, delay, forget_request=forget)
    if isinstance(error, RateLimitError):
        return Decision(Action.PAUSE_ALL, wait, slow_down=True, forget_request=forget)
    if wait is not None and wait > LONG_WAIT_S:
        return Decision(Action.PAUSE_ALL, wait, forget_request=forget)
    if wait is None:
        wait = backoff(history.tries, policy, rng)
    return Decision(Action.RETRY, wait, forget_request=forget)


def backoff(tries: int, policy: RetryPolicy, rng: random.Random) -> float:
    """Exponential back-off with jitter: uniform in [c/2, c], c = base x 2^(tries-1) <= max."""
    ceiling = min(policy.backoff_max, policy.backoff_base * 2 ** (tries - 1))
    return rng.uniform(ceiling / 2, ceiling)


def _repollable(error: EndpointError) -> bool:
    if isinstance(error, TransportError):
        return True
    return isinstance(error, StatusError) and error.status in REPOLL_STATUSES
