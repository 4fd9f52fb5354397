"""Long-polling a held request id to its final answer (PROTOCOL.md 2.4), on an injected clock.

The answer behind an id is paid for, so polling goes on through a stop (until the grace
period ends) and through any number of transient errors (retry.decide says which), until the
server answers, says the id is gone (RequestExpired), or `max_poll_time` passes: NVCF keeps an
id an hour at most, and a server answering 202 for ever must not hang the job. The server
holds each poll for the hold time; one that answers at once anyway is polled at most once a
`min_poll_interval` (NVCF's docs: 1 s).
"""

from __future__ import annotations

import random

from .client import Answer, EndpointClient
from .clock import Clock
from .errors import RequestExpired, StatusError, TransportError
from .lifecycle import WorkItem
from .monitor import Monitor
from .retry import Action, History, RetryPolicy, decide
from .stop import StopSignal


class Poller:
    def __init__(
        self,
        client: EndpointClient,
        *,
        min_interval: float,
        max_time: float,
        policy: RetryPolicy,
        stop: StopSignal,
        clock: Clock,
        monitor: Monitor,
        rng: random.Random,
    ) -> None:
        self._client = client
        self._min_interval = min_interval
        self._max_time = max_time
        self._policy = policy
        self._stop = stop
        self._clock = clock
        self._monitor = monitor
        self._rng = rng

    async def until_final(self, item: WorkItem) -> Answer:
        """Poll `item.request_id` until a non-202 answer; errors that end polling raise."""
        assert item.request_id is not None
        clock = self._clock
        self._monitor.polling(started=True)
        try:
            started = last_start = clock.monotonic()
            last_start -= self._min_interval
            failures = 0
            while True:
                await self._stop.nap(self._min_interval - (clock.monotonic() - last_start))
                if clock.monotonic() - started > self._max_time:
                    raise RequestExpired(
                        f"request {item.request_id}: no answer after {self._max_time:g}s of polling"
                    )
                last_start = clock.monotonic()
                self._monitor.polled()
                try:
                    answer = await self._client.poll(item.request_id)
                except (TransportError, StatusError) as exc:
                    failures += 1
                    history = History(polling=True, poll_failures=failures, holds_request=True)
                    decision = decide(exc, history, self._policy, self._rng)
                    if decision.action is not Action.REPOLL:
                        raise
                    self._monitor.poll_failed(exc)
                    await self._stop.nap(decision.delay or 0.0)
                    continue
                if not answer.pending:
                    return answer
                failures = 0
        finally:
            self._monitor.polling(started=False)
