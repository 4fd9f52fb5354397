"""The endpoints of a job, as one place to send rows: which endpoint takes the next row,
and what each one's answers and failures say about its health and its concurrency.

Every endpoint keeps its own limits: its rate window (limits.py), its concurrency (a fixed
number, or "auto": concurrency.py), its pending request ids, its 429 pauses. A row goes to
the endpoint that can start it soonest; among those that can start at once, to the one with
the most room for its weight. So the pool's throughput is the sum of its endpoints', not the
slowest one's. A fallback endpoint takes rows only while no other is up.

An endpoint failing `health.STREAK` times in a row (connection refused, 5xx, timeouts) cools
down and is probed with `GET {base_url}/models` (which buys nothing) when the cool-down ends;
rows meanwhile go to the others. A refused key takes its endpoint out for the run; only when
every endpoint is out does the job stop (AuthError, exit 3). A 202's request id is never
moved: it is polled at the endpoint that issued it (engine.py asks `find`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from .client import EndpointClient
from .clock import Clock
from .concurrency import ConcurrencyLimit
from .config import RunConfig
from .endpoints import EndpointSpec
from .errors import AuthError, EndpointError, RateLimitError, ServerError, TransportError
from .health import EndpointHealth, Health
from .limits import Limiter, Waiters
from .monitor import Monitor
from .payloads import BodyBuilder
from .retry import LONG_WAIT_S
from .server_limits import ServerLimits

log = logging.getLogger(__name__)

# Start delays closer than this count as equal, so that load and weight decide between them.
DELAY_RESOLUTION_S = 0.05
# The longest pause the server's x-ratelimit-* headers may impose (retry.LONG_WAIT_S: a
# Retry-After past it pauses the whole job, and is judged against max_pause).
HEADER_PAUSE_MAX_S = LONG_WAIT_S


@dataclass(eq=False)
class Endpoint:
    """One endpoint of the pool and what it holds of the job's traffic."""

    spec: EndpointSpec
    cfg: RunConfig  # the job's settings with this endpoint's over them
    client: EndpointClient
    limiter: Limiter
    builder: BodyBuilder
    concurrency: ConcurrencyLimit
    health: EndpointHealth = field(default_factory=EndpointHealth)
    in_flight: int = 0  # submissions on the wire
    pending: int = 0  # its 202 ids being polled

    @property
    def key(self) -> str:
        return self.spec.key

    def has_room(self) -> bool:
        return self.in_flight < self.concurrency.limit and self.pending < self.cfg.max_pending

    def load(self) -> float:
        """How full it is for its weight: the lower, the sooner it gets the next row."""
        return (self.in_flight + 1) / (self.spec.weight * self.concurrency.limit)


def is_servers_fault(exc: BaseException) -> bool:
    """A failure that says the endpoint is in trouble, not the row."""
    if isinstance(exc, TransportError):
        return True
    return isinstance(exc, ServerError) and exc.status >= 500


class EndpointPool:
    """Leases endpoints to submissions; create inside the running event loop."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        clock: Clock,
        monitor: Monitor | None = None,
        *,
        job_key_env: str | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("a pool needs an endpoint")
        self.endpoints = list(endpoints)
        self._clock = clock
        self._monitor = monitor
        self._by_key: dict[str, Endpoint] = {}
        # A row filed under a base URL (an earlier release's) is polled with the job's own
        # key when several endpoints share that URL: the key that bought it.
        owners = sorted(self.endpoints, key=lambda e: e.cfg.api_key_env != job_key_env)
        for endpoint in owners:
            self._by_key.setdefault(endpoint.spec.base_url.rstrip("/"), endpoint)
        self._by_key.update({endpoint.key: endpoint for endpoint in self.endpoints})
        self._single = len(self.endpoints) == 1
        self._waiters = Waiters()
        self._probes: set[asyncio.Task[None]] = set()

    @property
    def first(self) -> Endpoint:
        return self.endpoints[0]

    @property
    def max_concurrency(self) -> int:
        """Submissions the pool may have on the wire at most (auto endpoints: their ceiling)."""
        return sum(endpoint.cfg.concurrency for endpoint in self.endpoints)

    @property
    def max_pending(self) -> int:
        return sum(endpoint.cfg.max_pending for endpoint in self.endpoints)

    def find(self, key: str | None) -> Endpoint | None:
        """The endpoint a row was sent to (by name or base URL); None: a row of an older
        release, sent to the job's only endpoint, is the first's."""
        if key is None:
            return self.first
        return self._by_key.get(key) or self._by_key.get(key.rstrip("/"))

    # ---- leasing

    async def lease(self, prompt_tokens: int = 0) -> Endpoint:
        """A slot on the endpoint that can start a request soonest, waiting for one.
        Raises AuthError when every endpoint's key has been refused."""
        queued = self._waiters.busy  # first come, first served
        while True:
            endpoint = None if queued else self._choose(prompt_tokens)
            if endpoint is not None:
                endpoint.in_flight += 1
                return endpoint
            if self.all_out():
                raise AuthError(
                    "every endpoint refused its key: "
                    + "; ".join(f"{e.key}: {e.health.why}" for e in self.endpoints)
                )
            await self._waiters.wait()
            queued = False

    def release(self, endpoint: Endpoint) -> None:
        endpoint.in_flight -= 1
        self._waiters.wake(1)

    def polling(self, endpoint: Endpoint) -> None:
        """A 202 id of `endpoint` is being polled (it counts against its max_pending)."""
        endpoint.pending += 1

    def polled(self, endpoint: Endpoint) -> None:
        endpoint.pending -= 1
        self._waiters.wake(1)  # room for a row waiting on that endpoint's pending ids

    def _choose(self, prompt_tokens: int) -> Endpoint | None:
        if self._single:
            endpoint = self.first
            usable = endpoint.has_room() and endpoint.health.state is not Health.OUT
            return endpoint if usable else None
        best: Endpoint | None = None
        best_rank = (0, 0.0)
        for endpoint in self._candidates():
            if not endpoint.has_room():
                continue
            delay = endpoint.limiter.delay(prompt_tokens)
            rank = (round(delay / DELAY_RESOLUTION_S), endpoint.load())
            if best is None or rank < best_rank:
                best, best_rank = endpoint, rank
        return best

    def _candidates(self) -> list[Endpoint]:
        """The primaries that are up; else the fallbacks that are up; else, with nothing
        up, the cooling ones: rows then go on trying with their own back-off and fail in
        the end, as a job of one endpoint's do, rather than wait for ever."""
        up = [e for e in self.endpoints if e.health.up]
        if up:
            return [e for e in up if not e.spec.fallback] or up
        return [e for e in self.endpoints if e.health.state is Health.COOLING]

    # ---- what came back

    def answered(
        self,
        endpoint: Endpoint,
        latency_s: float,
        on_wire: int,
        limits: ServerLimits | None = None,
    ) -> None:
        """A submission got an answer (200, 202 or 302) after `latency_s`; `on_wire`
        submissions were on the wire at the endpoint when it was sent, itself included.
        The limit hears the more of that and of those on the wire now: requests sent one
        after another look idle by the first count, and answers that come back together
        (each freeing its slot before the next is counted) by the second."""
        endpoint.health.on_success()
        before = endpoint.concurrency.limit
        load = max(on_wire, endpoint.in_flight)
        endpoint.concurrency.on_answer(latency_s, load, self._clock.monotonic())
        if endpoint.concurrency.limit > before:
            self._waiters.wake(endpoint.concurrency.limit - before)
        pause = limits.pause_s() if limits is not None else None
        # A longer wait (a daily quota) is left to the 429 it brings, which retry.py weighs
        # against max_pause: never a silent pause of hours.
        if pause is not None and pause <= HEADER_PAUSE_MAX_S:
            log.info("%s: its rate limit is used up; pausing it %.1fs", endpoint.key, pause)
            endpoint.limiter.pause(pause)

    def failed(self, endpoint: Endpoint, exc: BaseException) -> None:
        """A submission to `endpoint` failed with `exc`."""
        now = self._clock.monotonic()
        if isinstance(exc, AuthError):
            self._take_out(endpoint, str(exc))
            return
        if isinstance(exc, RateLimitError) or is_servers_fault(exc):
            endpoint.concurrency.on_overload(now)
        if self._single:
            return  # nowhere else to send its rows: the retry policy alone decides
        if is_servers_fault(exc) and endpoint.health.on_failure(now, str(exc)):
            pause = endpoint.health.cool_until - now
            log.warning(
                "endpoint %s cooling down for %.0fs after %d failures in a row (last: %s); "
                "its rows go to the others",
                endpoint.key, pause, endpoint.health.streak, exc,
            )  # fmt: skip
            self._changed(endpoint, cool_s=pause)
            self._probe_later(endpoint)
            self._waiters.wake_all()  # rows waiting for it may go elsewhere (a fallback)

    def all_out(self) -> bool:
        return all(e.health.state is Health.OUT for e in self.endpoints)

    def _take_out(self, endpoint: Endpoint, why: str) -> None:
        if endpoint.health.state is Health.OUT:
            return
        endpoint.health.take_out(why)
        self._waiters.wake_all()  # waiters may now have nowhere to go: they raise
        if self._single:
            return  # the job stops on it, and says so
        others = [e.key for e in self.endpoints if e.health.state is not Health.OUT]
        log.warning(
            "endpoint %s refused the key in $%s; it gets no more rows this run%s",
            endpoint.key, endpoint.cfg.api_key_env,
            f" (going on with {', '.join(others)})" if others else "",
        )  # fmt: skip
        self._changed(endpoint)

    def _changed(self, endpoint: Endpoint, cool_s: float | None = None) -> None:
        if self._monitor is not None:
            self._monitor.endpoint_changed(endpoint.key, endpoint.health, cool_s)

    # ---- probing a cooled endpoint

    def _probe_later(self, endpoint: Endpoint) -> None:
        task = asyncio.get_running_loop().create_task(self._probe(endpoint))
        self._probes.add(task)
        task.add_done_callback(self._probes.discard)

    async def _probe(self, endpoint: Endpoint) -> None:
        health = endpoint.health
        while health.state is Health.COOLING:
            await self._clock.sleep(max(0.0, health.cool_until - self._clock.monotonic()))
            health.probing = True
            try:
                answered, why = await endpoint.client.probe(), ""
            except AuthError as exc:
                health.probing = False
                self._take_out(endpoint, str(exc))
                return
            except EndpointError as exc:
                answered, why = False, str(exc)
            health.probed(self._clock.monotonic(), answered, why)
            if health.up:
                log.warning("endpoint %s answers again; it gets rows again", endpoint.key)
                self._changed(endpoint)
                self._waiters.wake(endpoint.concurrency.limit)
            else:
                log.info(
                    "endpoint %s still down (%s); next probe in %.0fs",
                    endpoint.key, health.why, health.cool_until - self._clock.monotonic(),
                )  # fmt: skip

    async def close(self) -> None:
        """Stop probing (the run is over)."""
        for task in list(self._probes):
            task.cancel()
        if self._probes:
            await asyncio.gather(*self._probes, return_exceptions=True)
