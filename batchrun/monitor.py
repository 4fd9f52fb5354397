"""What a run tells its operator while it runs: the counters behind the progress bar and the
summary (RunStats), and the `--log-json` events. The engine reports each happening once, to
the Monitor; whether an event log is attached is the Monitor's business alone.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from .errors import BatchrunError, EndpointError, JobStopped, cause_of
from .health import EndpointHealth
from .lifecycle import Outcome, RowState, WorkItem
from .records import Completion


class EventSink(Protocol):
    """Where events go: events.EventLog, or a proxy to one (Ray)."""

    def emit(self, event: str, **fields: Any) -> None: ...


@dataclass
class RunStats:
    """Counters for this run (progress bar and summary). Only the event loop writes them."""

    todo: int = 0
    ok: int = 0
    failed: int = 0
    submissions: int = 0
    polls: int = 0
    accepted: int = 0  # 202s received
    rebuys: int = 0  # rows sent again because their request id had expired
    retries: int = 0
    rejected: int = 0  # answers that failed the job's schema (each asked again)
    rate_limited: int = 0
    in_flight: int = 0
    pending_ids: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    no_usage: int = 0  # answers that came without usage
    reused: int = 0  # rows answered by --reuse before anything was sent
    not_cached: int = 0  # rows failed by --offline (no stored answer)
    causes: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)

    @property
    def finished(self) -> int:
        return self.ok + self.failed


# Counters a Ray worker reports back to the driver (the rest are the driver's own).
WORKER_COUNTERS = (
    "ok", "failed", "submissions", "polls", "accepted", "rebuys", "retries", "rate_limited",
    "prompt_tokens", "completion_tokens", "no_usage", "rejected",
)  # fmt: skip


class Monitor:
    """Counts and, with an event log, logs what the engine reports."""

    def __init__(self, stats: RunStats | None = None, events: EventSink | None = None) -> None:
        self.stats = stats or RunStats()
        self._events = events

    def _emit(self, event: str, **fields: Any) -> None:
        if self._events is not None:
            self._events.emit(event, **fields)

    # ---- a submission and its polls

    def sending(self) -> None:
        self.stats.submissions += 1
        self.stats.in_flight += 1

    def sent(self) -> None:
        self.stats.in_flight -= 1

    def accepted(self) -> None:
        self.stats.accepted += 1

    def polling(self, started: bool) -> None:
        self.stats.pending_ids += 1 if started else -1

    def polled(self) -> None:
        self.stats.polls += 1

    def poll_failed(self, error: EndpointError) -> None:
        self.stats.causes[f"poll {cause_of(error)}"] += 1

    # ---- trouble

    def failed_try(self, error: EndpointError) -> None:
        self.stats.causes[cause_of(error)] += 1

    def retrying(self, item: WorkItem, tries: int, error: EndpointError, wait: float) -> None:
        self.stats.retries += 1
        self._emit(
            "retry", id=item.row_id, attempt=tries, cause=cause_of(error), error=str(error),
            wait_s=wait,
        )  # fmt: skip

    def answer_rejected(self, item: WorkItem, problem: str, answer: Completion) -> None:
        """An answer failed the schema; the row is asked again, quoting `problem`."""
        self.stats.rejected += 1
        self.stats.prompt_tokens += answer.prompt_tokens or 0
        self.stats.completion_tokens += answer.completion_tokens or 0
        self._emit("answer_rejected", id=item.row_id, rejected=item.rejected, error=problem)

    def rebuying(self) -> None:
        self.stats.rebuys += 1

    def rate_limited(self, pause: float, retry_after: float | None) -> None:
        self.stats.rate_limited += 1
        self._emit("rate_limited", pause_s=round(pause, 3), retry_after=retry_after)

    def paused(self, seconds: float, error: EndpointError) -> None:
        self._emit("paused", seconds=seconds, cause=cause_of(error))

    def endpoint_changed(self, key: str, health: EndpointHealth, cool_s: float | None) -> None:
        """An endpoint of the pool cooled down, came back, or was taken out (pool.py)."""
        self._emit(
            "endpoint", endpoint=key, state=str(health.state), why=health.why or None,
            cool_s=None if cool_s is None else round(cool_s, 3),
        )  # fmt: skip

    def stopping(self, reason: BatchrunError) -> None:
        self._emit("job_stop", reason=str(reason), kind=type(reason).__name__)

    # ---- the end of a row

    def finished(self, item: WorkItem, outcome: Outcome) -> None:
        c = outcome.completion
        if outcome.state is RowState.DONE:
            self.stats.ok += 1
            if c.total_tokens is None:
                self.stats.no_usage += 1
            else:
                self.stats.prompt_tokens += c.prompt_tokens or 0
                self.stats.completion_tokens += c.completion_tokens or 0
            self._emit(
                "row_done", id=item.row_id, attempts=item.attempts, latency_s=outcome.latency_s,
                prompt_tokens=c.prompt_tokens, completion_tokens=c.completion_tokens,
                request_id=outcome.request_id, endpoint=outcome.endpoint,
            )  # fmt: skip
        else:
            self.stats.failed += 1
            self._emit(
                "row_failed", id=item.row_id, attempts=item.attempts, cause=outcome.cause,
                error=outcome.error, status_code=outcome.status_code,
            )  # fmt: skip


# A percentage failure budget is judged only once this many rows have finished.
FAILURE_SAMPLE = 20


def failure_budget_spent(max_failures: str | None, stats: RunStats) -> JobStopped | None:
    """The stop an over-spent --max-failures calls for (the Ray driver's too)."""
    from .config import failure_budget

    max_failed, max_failed_pct = failure_budget(max_failures)
    failed, finished = stats.failed, stats.finished
    over = (max_failed is not None and failed >= max_failed) or (
        max_failed_pct is not None
        and finished >= FAILURE_SAMPLE
        and 100.0 * failed / finished > max_failed_pct
    )
    if not over:
        return None
    return JobStopped(
        f"failure budget spent: {failed} of {finished} rows failed this run "
        f"(--max-failures {max_failures}). Rows not yet sent are kept: fix the cause, then "
        "resume (the command is below; add --retry-failed to try the failed rows again)."
    )
