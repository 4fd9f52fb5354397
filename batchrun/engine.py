"""The engine: drives each row to its final answer, carrying out what retry.decide says.

A row's states and moves are lifecycle.py's (the diagram there is the whole story); this
module decides *when* to move: submit under the rate limit and the cost cap, long-poll a
202's id (polling.py), store a consume-once answer before parsing it, finish the row. Each
submission goes to the endpoint the pool (pool.py) leases it, and a row holds that
endpoint's slot only while the submission is on the wire; its 202 id is polled at that
endpoint alone. Polls take no rate-limit slot and no concurrency slot, so they are never
starved by the submit limiter (NVCF cancels an id not polled within max(2 x hold, 10) s).

Everything here talks to the parts EngineParts names (factory.py builds them for the local
runner and for a Ray worker alike), so the same `Engine.run_item` runs in either.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, replace

from .budget import BudgetSpent, CostGuard
from .client import Answer
from .clock import Clock
from .config import RunConfig
from .errors import AuthError, BatchrunError, EndpointError, RequestExpired, StatusError, cause_of
from .faults import crash_point
from .health import Health
from .lifecycle import Lifecycle, Outcome, RowState, WorkItem
from .limits import Limiter, Reservation
from .media import MediaResolver, has_local_media
from .monitor import Monitor, failure_budget_spent
from .polling import Poller
from .pool import Endpoint, EndpointPool
from .records import Completion
from .responses import parse_completion
from .retry import Action, Decision, History, RetryPolicy, decide
from .stop import StopSignal
from .validation import INVALID_ANSWER, AnswerCheck, with_feedback

log = logging.getLogger(__name__)


@dataclass
class EngineParts:
    """What an engine is wired from besides its config (factory.py builds them)."""

    pool: EndpointPool
    rows: Lifecycle
    monitor: Monitor
    stop: StopSignal
    media: MediaResolver
    costs: CostGuard
    clock: Clock
    rng: random.Random


class _Stopped(Exception):
    """The job is stopping: leave this row where it is (it resumes next run)."""


class Engine:
    """Runs WorkItems to their outcome. Create inside the running event loop."""

    def __init__(self, cfg: RunConfig, parts: EngineParts) -> None:
        self.cfg = cfg
        self.parts = parts
        self.pool, self.rows, self.monitor = parts.pool, parts.rows, parts.monitor
        self.stop, self.costs, self.clock = parts.stop, parts.costs, parts.clock
        self.policy = RetryPolicy.from_config(cfg)
        schema = cfg.answer_schema()
        self.check = AnswerCheck(schema, cfg.max_validation_retries) if schema else None
        self.pollers = {e.key: poller(e, cfg, parts, self.policy) for e in self.pool.endpoints}

    @property
    def stopping(self) -> bool:
        return self.stop.is_set

    def request_stop(self, reason: BatchrunError | None = None) -> None:
        if reason is not None and not self.stopping:
            self.monitor.stopping(reason)
        self.stop.request(reason)

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
            except (EndpointError, AuthError) as exc:
                tries += 1
                if await self._after_error(item, exc, tries):
                    continue
                return
            except BatchrunError:
                raise  # what stops the whole job (a checkpoint that cannot be written)
            except Exception as exc:  # a bug, or a failure no error class foresaw
                log.exception("row %s: unexpected error", item.row_id)
                self.costs.release(item)
                self._fail(item, EndpointError(f"internal error: {type(exc).__name__}: {exc}"))
                return
            self.costs.settle(item, outcome.completion)
            self._settle_rate(item, reservation, outcome.completion)
            checked = self._checked(item, outcome)
            if checked is None:
                continue  # the answer failed the schema: asked again, with what was wrong
            self._finish(item, checked)
            return

    async def _exchange(self, item: WorkItem) -> tuple[Answer, Reservation | None]:
        """Get the row's final answer: a stored one, a submission, or polls of its id."""
        if item.state.holds_request:  # bought already: never submitted again
            if self.stopping:
                raise _Stopped  # polls under way go on through a stop; none start after it
            if not self.costs.holds(item):
                await self._book(item, force=True)  # it counts against the cap, whatever
            if item.fetched is not None:
                return Answer(200, item.request_id, body=item.fetched.encode()), None
            if item.location is not None:
                return Answer(302, item.request_id, location=item.location), None
            return await self._poll(item), None
        answer, reservation = await self._submit(item)
        if not answer.pending:
            return answer, reservation
        assert answer.request_id is not None  # the client refuses a 202 without one
        self.monitor.accepted()
        self.rows.accept(item, answer.request_id)
        return await self._poll(item), reservation

    async def _poll(self, item: WorkItem) -> Answer:
        """Poll the row's id at the endpoint that issued it, and nowhere else."""
        endpoint = self._endpoint_of(item)
        self.pool.polling(endpoint)
        try:
            return await self.pollers[endpoint.key].until_final(item)
        except AuthError as exc:
            self.pool.failed(endpoint, exc)
            raise
        finally:
            self.pool.polled(endpoint)

    def _endpoint_of(self, item: WorkItem) -> Endpoint:
        endpoint = self.pool.find(item.endpoint)
        if endpoint is None:  # job.py refuses such a run before it starts: a bug if here
            raise BatchrunError(f"row {item.row_id}: its endpoint {item.endpoint} is gone")
        return endpoint

    async def _submit(self, item: WorkItem) -> tuple[Answer, Reservation]:
        messages, headers = item.messages, None
        if has_local_media(messages):  # inline or upload them first: no submit slot held
            messages, headers = await with_media(self.parts.media, messages)
        if self.stopping:
            raise _Stopped
        endpoint = await self.pool.lease(item.est_tokens)
        try:
            return await self._send(item, endpoint, messages, headers)
        finally:
            self.pool.release(endpoint)

    async def _send(
        self, item: WorkItem, endpoint: Endpoint, messages: str, headers: dict[str, str] | None
    ) -> tuple[Answer, Reservation]:
        """One submission to `endpoint`, whose slot the caller holds."""
        reservation = await endpoint.limiter.acquire(item.est_tokens, sleep=self.stop.sleep)
        if self.stopping:
            raise _Stopped
        await self._book(item)
        body, stream = endpoint.builder.build_with_stream(messages, item.overrides, self.cfg.stream)
        self.rows.submit(item, self.clock.wall(), endpoint.key)
        self.monitor.sending()
        started, on_wire = self.clock.monotonic(), endpoint.in_flight
        try:
            answer = await endpoint.client.submit(body, stream=stream, extra_headers=headers)
        except (EndpointError, AuthError) as exc:
            self.pool.failed(endpoint, exc)
            raise
        finally:
            self.monitor.sent()
        self.pool.answered(endpoint, self.clock.monotonic() - started, on_wire, answer.limits)
        return answer, reservation

    async def _outcome(self, item: WorkItem, answer: Answer) -> Outcome:
        """Turn a final answer into an Outcome, storing consume-once bodies first."""
        body = answer.body
        if answer.location is not None:  # a link handed out once, like a polled answer
            if item.location is None:
                await self.rows.locate(item, answer.request_id, answer.location)
            body = await self._endpoint_of(item).client.download(answer.location, answer.request_id)
        if item.state.holds_request and item.fetched is None and answer.completion is None:
            crash_point("fetched")
            # Consume-once (PROTOCOL.md decision 3): on disk before anything else uses it.
            await self.rows.fetch(item, body.decode("utf-8", "replace"))
        completion = answer.completion or parse_completion(body)  # a bad one: retried
        raw = answer.raw if answer.completion is not None else body.decode("utf-8", "replace")
        return Outcome(
            RowState.DONE,
            completion,
            request_id=answer.request_id or item.request_id,
            status_code=200,
            latency_s=self._latency(item),
            raw=raw,
            endpoint=item.endpoint,
        )

    def _checked(self, item: WorkItem, outcome: Outcome) -> Outcome | None:
        """The outcome, once the answer matches the job's schema; None when it does not and
        the row is to be asked again; a failure when its retries are spent."""
        check = self.check
        if check is None or outcome.state is not RowState.DONE:
            return outcome
        problem = check.problem(outcome.completion.content)
        if problem is None:
            return outcome
        if item.rejected < check.max_retries:
            messages = with_feedback(item.messages, outcome.completion.content, problem)
            self.rows.reject(item, outcome.completion, problem, messages)
            self.monitor.answer_rejected(item, problem, outcome.completion)
            return None
        return replace(
            outcome,
            state=RowState.FAILED,
            error=f"{INVALID_ANSWER}: {problem}",
            cause=INVALID_ANSWER,
        )

    # ---- after an error: what retry.decide says

    async def _after_error(
        self, item: WorkItem, exc: EndpointError | AuthError, tries: int
    ) -> bool:
        """Carry out the retry policy's decision. True: try the row again now."""
        self.costs.release(item)
        request_id = None if isinstance(exc, RequestExpired) else item.request_id
        history = History(
            tries=tries, holds_request=item.state.holds_request, has_location=bool(item.location)
        )
        if isinstance(exc, AuthError) and self._taken_out(item):
            return self._elsewhere(item)  # its endpoint is out; others take the row
        decision = decide(exc, history, self.policy, self.parts.rng)
        if isinstance(exc, RequestExpired):
            self.monitor.rebuying()
            log.info("row %s: %s; sending it again", item.row_id, exc)
        elif isinstance(exc, EndpointError):
            self.monitor.failed_try(exc)
        if decision.forget_request:
            self.rows.forget(item)
        action = decision.action
        if action is Action.STOP_JOB:
            self.request_stop(decision.stop)
            if isinstance(exc, AuthError):
                raise exc  # no other task may start a request after this
            return False
        if action is Action.FAIL_ROW:
            self._fail(item, exc, request_id)
        if action in (Action.FAIL_ROW, Action.KEEP):
            return False
        if action is Action.RESUBMIT:
            return True
        assert isinstance(exc, EndpointError)
        return await self._wait_to_retry(item, exc, tries, decision)

    async def _wait_to_retry(
        self, item: WorkItem, exc: EndpointError, tries: int, decision: Decision
    ) -> bool:
        wait = decision.delay or 0.0
        if decision.action is Action.PAUSE_ALL:
            pause_everyone(self._endpoint_of(item).limiter, self.monitor, exc, decision)
            wait = 0.0  # the limiter holds every submission, this row's included
        self.monitor.retrying(item, tries, exc, wait)
        log.debug("row %s: try %d failed (%s); next in %.1fs", item.row_id, tries, exc, wait)
        await self.stop.sleep(wait)
        return not self.stopping

    # ---- recording

    async def _book(self, item: WorkItem, *, force: bool = False) -> None:
        if not self.costs.capped:
            return
        try:
            await self.costs.book(item, force=force)
        except BudgetSpent as exc:
            self.request_stop(exc)
            raise _Stopped from None

    def _taken_out(self, item: WorkItem) -> bool:
        """Whether a refused key took the row's endpoint out of a pool that still has
        others. Any other refusal (a lone endpoint's, the asset API's) stops the job."""
        endpoint = self.pool.find(item.endpoint)
        return (
            len(self.pool.endpoints) > 1
            and endpoint is not None
            and endpoint.health.state is Health.OUT
            and not self.pool.all_out()
        )

    def _elsewhere(self, item: WorkItem) -> bool:
        """A key refused at the row's endpoint while others still work: send the row to
        them. A row whose answer that endpoint holds stays as it is, for a later run."""
        if item.state.holds_request:
            log.warning("row %s: its answer waits at %s, which refused the key", item.row_id,
                        item.endpoint)  # fmt: skip
            return False
        return not self.stopping

    def _settle_rate(
        self, item: WorkItem, reservation: Reservation | None, completion: Completion
    ) -> None:
        if reservation is not None:
            self._endpoint_of(item).limiter.settle(
                reservation, completion.total_tokens, completion.completion_tokens
            )

    def _latency(self, item: WorkItem) -> float | None:
        if item.first_submit_at is None:
            return None
        return max(0.0, self.clock.wall() - item.first_submit_at)

    def _finish(self, item: WorkItem, outcome: Outcome) -> None:
        self.rows.finish(item, outcome, self.clock.wall())
        self.monitor.finished(item, outcome)
        if outcome.state is RowState.FAILED and not self.stopping:
            spent = failure_budget_spent(self.cfg.max_failures, self.monitor.stats)
            if spent is not None:
                self.request_stop(spent)

    def _fail(self, item: WorkItem, exc: BaseException, request_id: str | None = None) -> None:
        outcome = failure(exc, request_id or item.request_id, self._latency(item))
        self._finish(item, replace(outcome, endpoint=item.endpoint))


def poller(endpoint: Endpoint, cfg: RunConfig, parts: EngineParts, policy: RetryPolicy) -> Poller:
    """What polls the 202 ids `endpoint` issues (they are polled there alone)."""
    return Poller(
        endpoint.client, min_interval=cfg.min_poll_interval, max_time=cfg.max_poll_time,
        policy=policy, stop=parts.stop, clock=parts.clock, monitor=parts.monitor, rng=parts.rng,
    )  # fmt: skip


def failure(exc: BaseException, request_id: str | None, latency_s: float | None) -> Outcome:
    """A failed row's outcome: the server's answer to it, when there was one."""
    status = exc if isinstance(exc, StatusError) else None
    return Outcome(
        RowState.FAILED,
        request_id=(status.request_id if status else None) or request_id,
        status_code=status.status if status else None,
        error=str(exc),
        cause=cause_of(exc),
        latency_s=latency_s,
        raw=status.body if status else None,
    )


def pause_everyone(
    limiter: Limiter, monitor: Monitor, exc: EndpointError, decision: Decision
) -> None:
    """PAUSE_ALL: a 429 pauses and slows every submission; a long Retry-After pauses them."""
    if decision.slow_down:
        pause = limiter.on_rate_limited(decision.delay)
        log.info("429 from the server: pausing all submissions %.1fs and slowing down", pause)
        monitor.rate_limited(pause, decision.delay)
    else:
        wait = decision.delay or 0.0
        log.warning("server asked to wait %.0fs (%s): pausing the whole job", wait, exc)
        limiter.pause(wait)
        monitor.paused(wait, exc)


async def with_media(media: MediaResolver, messages: str) -> tuple[str, dict[str, str] | None]:
    """The row's messages with its local images inlined or uploaded, and the asset header."""
    messages, asset_ids = await media.resolve(messages)
    if not asset_ids:
        return messages, None
    return messages, {"NVCF-INPUT-ASSET-REFERENCES": ",".join(asset_ids)}
