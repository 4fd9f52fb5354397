"""The engine: drives each row to a final answer, and the dispatcher that feeds it.

One task per live row, bounded: a row holds a `max_pending` capacity slot from its first
submission until its answer (so ids awaiting a result never exceed it), and a `concurrency`
slot only while a submission is on the wire. Polls take no rate-limit slot and no
concurrency slot, so they are never starved by the submit limiter (NVCF cancels an id that
is not polled within max(2 x hold, 10) s).

A row's life (states as stored, see records.py):

    pending --submit--> inflight --200--------------------------------> done
                           |--202--> polling --poll 202 (again)--+
                           |                 \\--200/302---> fetched (stored raw) --> done
                           |--retryable error: back off, submit again (max_attempts)
                           \\--other 4xx / attempts spent ----------------> failed

A polled answer is consume-once: it is committed raw ("fetched") before it is parsed. A
poll that says the id is unknown (problem+json 404) sends the row again, counted as a re-buy.

The engine never writes `pending` during a run: a row sent again stays `inflight`, so the
dispatcher, which pages through `pending` rows in input order, never picks a row up twice.
Everything here works on WorkItems and talks to a Sink, a RateLimiter and an
EndpointClient, so a Ray actor can run the same `Engine.run_item` on its own rows.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Protocol

from .budget import CostBudget
from .client import Answer, EndpointClient
from .config import RunConfig, failure_budget
from .errors import (
    AuthError,
    BatchrunError,
    EndpointError,
    JobStopped,
    RequestExpired,
    StatusError,
    TransportError,
)
from .events import EventLog
from .faults import crash_point
from .limits import Capacity, Reservation
from .media import MediaResolver, has_local_media
from .payloads import BodyBuilder
from .records import (
    DONE,
    FAILED,
    FETCHED,
    INFLIGHT,
    PENDING,
    POLLING,
    Completion,
    Outcome,
    WorkItem,
)
from .responses import parse_completion

log = logging.getLogger(__name__)

# A percentage failure budget is judged only once this many rows have finished.
FAILURE_SAMPLE = 20
# A Retry-After above this pauses the whole job rather than one row (PROTOCOL.md decision 6).
LONG_WAIT_S = 60.0
POLL_RETRY_MAX_S = 2.0  # never back off long between polls: the id would expire
DISPATCH_PAGE = 1000


class Limiter(Protocol):
    """Start slots under the job's rate limits (limits.RateLimiter, or a remote service)."""

    async def acquire(
        self, prompt_tokens: int = 0, *, sleep: Callable[[float], Awaitable[None]] | None = None
    ) -> Reservation: ...

    def settle(
        self, reservation: Reservation, total: int | None, completion: int | None
    ) -> None: ...

    def on_rate_limited(self, retry_after: float | None) -> float: ...

    def pause(self, seconds: float) -> None: ...


class Sink(Protocol):
    """Where row updates go (the checkpoint writer, or a proxy to one)."""

    def update(self, idx: int, columns: dict[str, Any]) -> None: ...

    def submitted(self, idx: int, attempts: int, first_submit_at: float | None) -> None: ...

    def finished(self, idx: int, values: tuple[Any, ...]) -> None: ...

    async def update_now(self, idx: int, columns: dict[str, Any]) -> None: ...


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


class _Stopped(Exception):
    """The job is stopping: leave this row where it is (it resumes next run)."""


class StopSignal:
    """The job-wide stop request, and a sleep that ends early when it comes.

    Shared by the engine and the rate limiter so that a stop never waits out a long
    rate-limit or back-off sleep.
    """

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.reason: BatchrunError | None = None

    @property
    def is_set(self) -> bool:
        return self.event.is_set()

    def request(self, reason: BatchrunError | None = None) -> None:
        if reason is not None and self.reason is None:
            self.reason = reason
        self.event.set()

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0 or self.event.is_set():
            return
        with suppress(TimeoutError):
            await asyncio.wait_for(self.event.wait(), seconds)

    async def nap(self, seconds: float) -> None:
        """A sleep a stop does not cut short: the waits between polls of a paid id."""
        if seconds > 0:
            await asyncio.sleep(seconds)


class Engine:
    """Runs WorkItems to their outcome. Create inside the running event loop."""

    def __init__(
        self,
        cfg: RunConfig,
        client: EndpointClient,
        limiter: Limiter,
        sink: Sink,
        stats: RunStats | None = None,
        *,
        stop: StopSignal | None = None,
        media: MediaResolver | None = None,
        budget: CostBudget | None = None,
        events: EventLog | None = None,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.cfg = cfg
        self.client = client
        self.limiter = limiter
        self.sink = sink
        self.stats = stats or RunStats()
        self.builder = BodyBuilder(cfg.body_template())
        self.submit_slots = asyncio.Semaphore(cfg.concurrency)
        self.stop = stop or StopSignal()
        self.media = media or MediaResolver(None)
        self.budget = budget
        self.events = events
        self._wall = wall_clock
        self._rng = rng or random.Random()

    # ---- stopping

    @property
    def stopping(self) -> bool:
        return self.stop.is_set

    def request_stop(self, reason: BatchrunError | None = None) -> None:
        if self.events is not None and reason is not None and not self.stopping:
            self.events.emit("job_stop", reason=str(reason), kind=type(reason).__name__)
        self.stop.request(reason)

    async def sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when the job is asked to stop."""
        await self.stop.sleep(seconds)

    # ---- one row

    async def run_item(self, item: WorkItem) -> None:
        """Drive one row to done/failed, or leave it resumable if the job stops first."""
        tries = 0
        while True:
            try:
                answer, reservation = await self._exchange(item)
                outcome = await self._outcome(item, answer)
            except _Stopped:
                return
            except AuthError as exc:
                self.request_stop(exc)  # no other task may start a request after this
                raise
            except EndpointError as exc:
                tries += 1
                if await self._try_again(item, exc, tries):
                    continue
                return
            except BatchrunError:
                raise  # what stops the whole job (a checkpoint that cannot be written)
            except Exception as exc:  # a bug, or a failure no error class foresaw
                log.exception("row %s: unexpected error", item.row_id)
                self._release_cost(item)
                self._fail(item, EndpointError(f"internal error: {type(exc).__name__}: {exc}"))
                return
            self._settle(item, reservation, outcome.completion)
            self._record(item, outcome)
            return

    async def _try_again(self, item: WorkItem, exc: EndpointError, tries: int) -> bool:
        """After a failed try: record what must be, and say whether to try once more."""
        self._release_cost(item)
        spent = tries >= self.cfg.max_attempts
        if isinstance(exc, RequestExpired):
            # The server forgot the id (expired or consumed): buy the answer again.
            self.stats.rebuys += 1
            log.info("row %s: %s; sending it again", item.row_id, exc)
            self._forget_request(item)
            if spent:
                self._fail(item, exc)
            return not spent
        request_id = item.request_id
        self._forget_request_if_consumed(item, exc)
        self.stats.causes[_cause(exc)] += 1
        if exc.retryable and spent and item.location:
            # A paid answer waits at its link (24 h): leave the row `fetched` for a later
            # run to download, rather than failed (and bought again).
            return False
        if not exc.retryable or spent:
            self._fail(item, exc, request_id)
            return False
        self.stats.retries += 1
        return await self._wait_before_retry(item, exc, tries)

    async def _exchange(self, item: WorkItem) -> tuple[Answer, Reservation | None]:
        """Get the row's final answer: a stored one, a submission, or polls of its id."""
        if item.request_id or item.fetched or item.location:  # bought in an earlier run
            if self.stopping:
                raise _Stopped  # polls under way go on through a stop; none start after it
            if not item.cost_hold:
                self._book_cost(item, force=True)  # it counts against the cap, whatever
        if item.fetched is not None:
            return Answer(200, item.request_id, body=item.fetched.encode()), None
        if item.location is not None:
            return Answer(302, item.request_id, location=item.location), None
        reservation = None
        if item.request_id is None:
            answer, reservation = await self._submit(item)
            if not answer.pending:
                return answer, reservation
            item.request_id = answer.request_id
            self.stats.accepted += 1
            self.sink.update(item.idx, {"state": POLLING, "request_id": item.request_id})
        return await self._poll_until_final(item), reservation

    async def _submit(self, item: WorkItem) -> tuple[Answer, Reservation]:
        messages, headers = item.messages, None
        if has_local_media(messages):
            # Inline or upload the row's local images first: uploads hold no submit slot.
            messages, asset_ids = await self.media.resolve(messages)
            if asset_ids:
                headers = {"NVCF-INPUT-ASSET-REFERENCES": ",".join(asset_ids)}
        body, stream = self.builder.build_with_stream(messages, item.overrides, self.cfg.stream)
        async with self.submit_slots:
            if self.stopping:
                raise _Stopped
            reservation = await self.limiter.acquire(item.est_tokens, sleep=self.stop.sleep)
            if self.stopping:
                raise _Stopped
            self._book_cost(item)
            item.attempts += 1
            if item.first_submit_at is None:
                item.first_submit_at = self._wall()
            self.sink.submitted(item.idx, item.attempts, item.first_submit_at)
            self.stats.submissions += 1
            self.stats.in_flight += 1
            try:
                answer = await self.client.submit(body, stream=stream, extra_headers=headers)
            except StatusError as exc:
                if exc.status == 429:
                    self._rate_limited(exc)
                    exc.paused_everyone = True
                raise
            finally:
                self.stats.in_flight -= 1
        return answer, reservation

    async def _poll_until_final(self, item: WorkItem) -> Answer:
        """Long-poll the row's id until a non-202 answer (PROTOCOL.md 2.4).

        The answer behind an id is paid for, so polling goes on through a stop (until the
        grace period ends) and through any number of transient errors, until the server
        answers, says the id is gone (RequestExpired), or `max_poll_time` passes (NVCF keeps
        an id an hour at most; a server answering 202 for ever must not hang the job).
        """
        assert item.request_id is not None
        self.stats.pending_ids += 1
        try:
            started = last_start = time.monotonic()
            last_start -= self.cfg.min_poll_interval
            failures = 0
            while True:
                # The server holds each poll for `hold` s; if it answers at once anyway,
                # poll at most once per min_poll_interval (NVCF docs: 1 s).
                await self.stop.nap(self.cfg.min_poll_interval - (time.monotonic() - last_start))
                if time.monotonic() - started > self.cfg.max_poll_time:
                    raise RequestExpired(
                        f"request {item.request_id}: no answer after "
                        f"{self.cfg.max_poll_time:g}s of polling"
                    )
                last_start = time.monotonic()
                self.stats.polls += 1
                try:
                    answer = await self.client.poll(item.request_id)
                except (TransportError, StatusError) as exc:
                    if not _repoll(exc):
                        raise
                    failures += 1
                    self.stats.causes[f"poll {_cause(exc)}"] += 1
                    backoff = 2.0 ** min(failures - 2, 1)
                    await self.stop.nap(min(POLL_RETRY_MAX_S, exc.retry_after or backoff))
                    continue
                if not answer.pending:
                    return answer
                failures = 0
        finally:
            self.stats.pending_ids -= 1

    async def _outcome(self, item: WorkItem, answer: Answer) -> Outcome:
        """Turn a final answer into an Outcome, storing consume-once bodies first."""
        polled = item.request_id is not None
        body = answer.body
        if answer.location is not None:
            if item.location is None:
                item.location = answer.location
                await self.sink.update_now(
                    item.idx, {"state": FETCHED, "location": answer.location}
                )
            body = await self.client.download(answer.location, answer.request_id)
            polled = True  # a download URL is handed out once too
        if polled and item.fetched is None and answer.completion is None:
            crash_point("fetched")
            # Consume-once (decision 3): on disk before anything else is done with it.
            item.fetched = body.decode("utf-8", "replace")
            await self.sink.update_now(item.idx, {"state": FETCHED, "response": item.fetched})
        completion = answer.completion or parse_completion(body)  # a bad one: retried
        raw = answer.raw if answer.completion is not None else body.decode("utf-8", "replace")
        return Outcome(
            DONE,
            completion,
            request_id=answer.request_id or item.request_id,
            status_code=200,
            latency_s=self._latency(item),
            raw=raw,
        )

    async def _wait_before_retry(self, item: WorkItem, exc: EndpointError, tries: int) -> bool:
        """Back off before the next try. False when the job is stopping instead."""
        wait = exc.retry_after
        if wait is not None and wait > self.cfg.max_pause:
            self.request_stop(
                JobStopped(
                    f"the server asked to wait {wait:.0f}s ({exc}); more than max_pause "
                    f"({self.cfg.max_pause:.0f}s), so the job stopped. Run the same command "
                    "later to resume."
                )
            )
            return False
        if wait is not None and wait > LONG_WAIT_S:
            log.warning("server asked to wait %.0fs (%s): pausing the whole job", wait, exc)
            self.limiter.pause(wait)
            if self.events is not None:
                self.events.emit("paused", seconds=wait, cause=_cause(exc))
            wait = 0.0
        if isinstance(exc, StatusError) and exc.paused_everyone:
            wait = 0.0  # the limiter already paused everyone (and slowed down)
        if wait is None:
            ceiling = min(self.cfg.backoff_max, self.cfg.backoff_base * 2 ** (tries - 1))
            wait = self._rng.uniform(ceiling / 2, ceiling)
        log.debug("row %s: try %d failed (%s); next in %.1fs", item.row_id, tries, exc, wait)
        if self.events is not None:
            self.events.emit(
                "retry",
                id=item.row_id,
                attempt=tries,
                cause=_cause(exc),
                error=str(exc),
                wait_s=wait,
            )
        await self.sleep(wait)
        return not self.stopping

    def _rate_limited(self, exc: StatusError) -> None:
        self.stats.rate_limited += 1
        pause = self.limiter.on_rate_limited(exc.retry_after)
        log.info("429 from the server: pausing all submissions %.1fs and slowing down", pause)
        if self.events is not None:
            self.events.emit("rate_limited", pause_s=round(pause, 3), retry_after=exc.retry_after)

    # ---- recording

    def _forget_request(self, item: WorkItem) -> None:
        item.request_id = item.fetched = item.location = None
        self.sink.update(
            item.idx, {"state": INFLIGHT, "request_id": None, "response": None, "location": None}
        )

    def _forget_request_if_consumed(self, item: WorkItem, exc: EndpointError) -> None:
        """A final error answer to a poll spends the id just as a result does.

        Only a download that failed on the way keeps its Location (valid for 24 h) so
        the next try downloads again instead of buying the answer twice.
        """
        if exc.retryable and item.location is not None:
            return
        if item.request_id is not None or item.fetched is not None or item.location is not None:
            self._forget_request(item)

    def _latency(self, item: WorkItem) -> float | None:
        if item.first_submit_at is None:
            return None
        return max(0.0, self._wall() - item.first_submit_at)

    def _book_cost(self, item: WorkItem, *, force: bool = False) -> None:
        """Book this request's worst case against --max-cost, or stop the job."""
        if self.budget is None:
            return
        worst_completion = self.builder.max_tokens(item.overrides) or 0
        booking = self.budget.book(item.est_tokens, worst_completion, force=force)
        if booking is None:
            b = self.budget
            self.request_stop(
                JobStopped(
                    f"cost cap: ${b.spent:.4f} spent and ${b.booked:.4f} booked for requests in "
                    f"flight; the next request could pass --max-cost ${b.cap:g}. Finished rows "
                    "are kept: raise the cap and run the same command to resume."
                )
            )
            raise _Stopped
        item.cost_hold += booking

    def _release_cost(self, item: WorkItem) -> None:
        if self.budget is not None and item.cost_hold:
            self.budget.release(item.cost_hold)
            item.cost_hold = 0.0

    def _settle(
        self, item: WorkItem, reservation: Reservation | None, completion: Completion
    ) -> None:
        if self.budget is not None:
            self.budget.settle(
                item.cost_hold, completion.prompt_tokens, completion.completion_tokens
            )
            item.cost_hold = 0.0
        if completion.total_tokens is None:
            self.stats.no_usage += 1
        else:
            self.stats.prompt_tokens += completion.prompt_tokens or 0
            self.stats.completion_tokens += completion.completion_tokens or 0
        if reservation is not None:
            self.limiter.settle(reservation, completion.total_tokens, completion.completion_tokens)

    def _record(self, item: WorkItem, outcome: Outcome) -> None:
        c = outcome.completion
        tool_calls = json.dumps(c.tool_calls, ensure_ascii=False) if c.tool_calls else None
        self.sink.finished(
            item.idx,
            (  # records.FINAL_COLUMNS order
                outcome.state, item.attempts, item.first_submit_at, self._wall(),
                outcome.status_code, outcome.request_id, c.content, c.reasoning_content,
                tool_calls, c.finish_reason, c.prompt_tokens, c.completion_tokens,
                c.total_tokens, c.model, outcome.latency_s, c.ttft_s, outcome.error,
                outcome.cause, outcome.raw,
            ),
        )  # fmt: skip
        if self.events is not None:
            self._emit_outcome(item, outcome)
        if outcome.state == DONE:
            self.stats.ok += 1
        else:
            self.stats.failed += 1
            self._check_failure_budget()

    def _emit_outcome(self, item: WorkItem, outcome: Outcome) -> None:
        assert self.events is not None
        c = outcome.completion
        if outcome.state == DONE:
            self.events.emit(
                "row_done", id=item.row_id, attempts=item.attempts, latency_s=outcome.latency_s,
                prompt_tokens=c.prompt_tokens, completion_tokens=c.completion_tokens,
                request_id=outcome.request_id,
            )  # fmt: skip
        else:
            self.events.emit(
                "row_failed", id=item.row_id, attempts=item.attempts, cause=outcome.cause,
                error=outcome.error, status_code=outcome.status_code,
            )  # fmt: skip

    def _check_failure_budget(self) -> None:
        """Stop an unattended job that is failing rows faster than the user allows."""
        spent = failure_budget_spent(self.cfg, self.stats)
        if spent is not None and not self.stopping:
            self.request_stop(spent)

    def _fail(self, item: WorkItem, exc: BaseException, request_id: str | None = None) -> None:
        status = exc.status if isinstance(exc, StatusError) else None
        answer_id = exc.request_id if isinstance(exc, StatusError) else None
        body = exc.body if isinstance(exc, StatusError) else None
        self._record(
            item,
            Outcome(
                FAILED,
                request_id=answer_id or request_id or item.request_id,
                status_code=status,
                error=str(exc),
                cause=_cause(exc),
                latency_s=self._latency(item),
                raw=body,
            ),
        )


def failure_budget_spent(cfg: RunConfig, stats: RunStats) -> JobStopped | None:
    """The stop an over-spent --max-failures calls for (shared with the Ray driver)."""
    max_failed, max_failed_pct = failure_budget(cfg.max_failures)
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
        f"(--max-failures {cfg.max_failures}). Rows not yet sent are kept; fix the cause and "
        "run the same command to resume (add --retry-failed to try the failed rows again)."
    )


def _repoll(exc: EndpointError) -> bool:
    """Errors after which the same id is polled again (the answer may still be there).

    A 500 is the invocation's own final error: the id is spent, so the row is sent again.
    """
    if isinstance(exc, TransportError):
        return True
    return isinstance(exc, StatusError) and exc.status in (408, 429, 502, 503, 504)


def _cause(exc: BaseException) -> str:
    if isinstance(exc, StatusError):
        return f"HTTP {exc.status}"
    return type(exc).__name__


# ---------------------------------------------------------------- the dispatcher


class PageSource(Protocol):
    """Pages of rows in given states, in input order (the checkpoint store)."""

    def work_page(
        self, after_idx: int, limit: int, states: tuple[str, ...]
    ) -> list[tuple[Any, ...]]: ...


def item_from_row(row: tuple[Any, ...]) -> WorkItem:
    idx, row_id, messages, overrides, est, attempts, request_id, first, response, location = row
    return WorkItem(
        idx=idx,
        row_id=row_id,
        messages=messages,
        overrides=overrides,
        est_tokens=est,
        attempts=attempts,
        request_id=request_id,
        first_submit_at=first,
        fetched=response,
        location=location,
    )


async def _pages(source: PageSource, states: tuple[str, ...]) -> Any:
    after = -1
    while True:
        rows = await asyncio.to_thread(source.work_page, after, DISPATCH_PAGE, states)
        if not rows:
            return
        for row in rows:
            yield item_from_row(row)
        after = rows[-1][0]


async def dispatch(engine: Engine, source: PageSource) -> None:
    """Run every unfinished row: ids the server holds first (they expire), then the rest.

    Resumed ids get a task each at once (NVCF drops an id nobody polls). New rows go through
    a queue to a fixed pool of workers, one row at a time each: no task per row, and at most
    `max_pending` rows between their first submission and their answer.
    """
    capacity = Capacity(engine.cfg.max_pending)
    stop_watch = asyncio.create_task(_close_on_stop(engine, capacity))

    async def run(item: WorkItem) -> None:
        try:
            await engine.run_item(item)
        finally:
            capacity.release()

    async def worker(todo: asyncio.Queue[WorkItem | None]) -> None:
        while (item := await todo.get()) is not None:
            if await capacity.acquire():
                await run(item)

    try:
        async with asyncio.TaskGroup() as tasks:
            async for item in _pages(source, (POLLING, FETCHED)):
                capacity.take()  # already pending at the server: poll now, whatever the limit
                tasks.create_task(run(item))
            todo: asyncio.Queue[WorkItem | None] = asyncio.Queue(maxsize=2 * engine.cfg.concurrency)
            workers = [tasks.create_task(worker(todo)) for _ in range(engine.cfg.max_pending)]
            async for item in _pages(source, (PENDING,)):
                if engine.stopping:
                    break
                await todo.put(item)
            for _ in workers:
                await todo.put(None)
    finally:
        stop_watch.cancel()


async def _close_on_stop(engine: Engine, capacity: Capacity) -> None:
    await engine.stop.event.wait()
    capacity.close()


async def run_engine(engine: Engine, source: PageSource) -> None:
    """Dispatch everything; once a stop is requested, give in-flight work `grace` seconds.

    Raises AuthError at once (nothing more is sent); raises the stop reason, if any, after
    the work in flight has settled.
    """
    main = asyncio.create_task(dispatch(engine, source))
    stop = asyncio.create_task(engine.stop.event.wait())
    try:
        await asyncio.wait({main, stop}, return_when=asyncio.FIRST_COMPLETED)
        if not main.done():
            done, _ = await asyncio.wait({main}, timeout=engine.cfg.grace)
            if not done:
                log.warning("grace period over: abandoning work in flight (it resumes next run)")
                main.cancel()
        try:
            await main
        except asyncio.CancelledError:
            if not engine.stopping:
                raise
        except BaseExceptionGroup as group:
            raise _first_meaningful(group) from None
    finally:
        stop.cancel()
        if not main.done():
            main.cancel()
            with suppress(asyncio.CancelledError, BaseException):
                await main
    if engine.stop.reason is not None:
        raise engine.stop.reason


def _first_meaningful(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """Pick AuthError over anything else in a TaskGroup's exception group."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for exc in leaves:
        if isinstance(exc, AuthError):
            return exc
    return leaves[0]
