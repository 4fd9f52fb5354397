"""A worker's side of the services: the interfaces the Engine takes (Limiter, Sink,
AssetIds, Budget, EventSink), backed by actor calls.

Calls are batched where the promise allows it (transitions every 100 ms, rate-limit
corrections every 32 answers) and awaited where it does not (a consume-once answer, a
budget booking). One caller's calls to an actor run in the order it made them.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from batchrun.budget import BudgetSpent
from batchrun.lifecycle import BatchingSink, Transition
from batchrun.limits import Reservation

SINK_INTERVAL_S = 0.1
SLOT_CHUNK_MIN_RPM = 600  # below this, slots are granted one at a time (fairness)


class RemoteLimiter:
    """limits.Limiter, backed by the RateService actor."""

    def __init__(self, service: Any, rpm: int | None, tpm: int | None, expected: int) -> None:
        self._service = service
        self._limited = bool(rpm or tpm)
        self._chunk = 1 if not rpm or rpm < SLOT_CHUNK_MIN_RPM else 8
        self._slots: deque[tuple[float, int]] = deque()
        self._corrections: list[tuple[int, int | None]] = []
        self._paused_until = 0.0
        self._checked = 0.0
        self.expected_completion = float(expected)

    async def acquire(
        self, prompt_tokens: int = 0, *, sleep: Callable[[float], Awaitable[None]] | None = None
    ) -> Reservation:
        nap = sleep or asyncio.sleep
        if not self._limited:
            await self._wait_out_pause(nap)
            return Reservation(time.time())
        if not self._slots:
            tokens = prompt_tokens + int(self.expected_completion)
            self._slots.extend(await self._service.reserve.remote(self._chunk, tokens))
        at, booking = self._slots.popleft()
        delay = at - time.time()
        if delay > 0:
            await nap(delay)
        return Reservation(at, tokens=booking)  # `tokens` carries the booking id here

    async def _wait_out_pause(self, nap: Callable[[float], Awaitable[None]]) -> None:
        # Unlimited jobs still share 429 pauses; look them up at most twice a second.
        now = time.time()
        if now - self._checked > 0.5:
            self._checked = now
            self._paused_until = await self._service.paused_until.remote()
        if self._paused_until > now:
            await nap(self._paused_until - now)

    def settle(self, reservation: Reservation, total: int | None, completion: int | None) -> None:
        if completion is not None:
            self.expected_completion += 0.1 * (completion - self.expected_completion)
        if self._limited:
            self._corrections.append((reservation.tokens, total))
            if len(self._corrections) >= 32:
                self.flush_corrections()

    def flush_corrections(self) -> None:
        if self._corrections:
            self._service.settle.remote(self._corrections)
            self._corrections = []

    def on_rate_limited(self, retry_after: float | None) -> float:
        self._slots.clear()  # slots booked before the 429 are given up (erring low)
        self._service.rate_limited.remote(retry_after)
        self._checked = 0.0
        return retry_after if retry_after is not None else 1.0

    def pause(self, seconds: float) -> None:
        self._service.pause.remote(seconds)
        self._checked = 0.0

    def delay(self, prompt_tokens: int = 0) -> float:  # noqa: ARG002 (the Limiter protocol)
        """Unknown without asking the service; a pool on Ray has one endpoint to choose."""
        return 0.0


class RemoteSink(BatchingSink):
    """lifecycle.Sink, backed by the CheckpointService: transitions shipped every 100 ms."""

    def __init__(self, service: Any) -> None:
        self._service = service
        self._changes: list[Transition] = []
        self._timer: asyncio.TimerHandle | None = None

    def _later(self, change: Transition) -> None:
        self._changes.append(change)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(SINK_INTERVAL_S, self.send)

    def send(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._changes:
            changes, self._changes = self._changes, []
            self._service.apply.remote(changes)  # one caller, a one-at-a-time actor: in order

    async def _now(self, change: Transition) -> None:
        self._changes.append(change)
        await self.drain()

    async def drain(self) -> None:
        """Ship what is gathered and wait until it is committed."""
        changes, self._changes = self._changes, []
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self._service.apply_now.remote(changes)


class RemoteAssets:
    """assets.AssetIds, kept in the checkpoint through the CheckpointService: a resume on
    Ray does not upload a file again, whichever worker uploaded it."""

    def __init__(self, service: Any) -> None:
        self._service = service

    async def get(self, sha256: str) -> tuple[str, float] | None:
        found: tuple[str, float] | None = await self._service.asset.remote(sha256)
        return found

    async def put(self, sha256: str, asset_id: str, uploaded_at: float) -> None:
        await self._service.keep_asset.remote(sha256, asset_id, uploaded_at)


class RemoteBudget:
    """budget.Budget, backed by the BudgetService: every booking is a round trip (only
    jobs with --max-cost pay it)."""

    def __init__(self, service: Any) -> None:
        self._service = service

    async def book(
        self, prompt_estimate: int, max_completion: int, *, force: bool = False
    ) -> float:
        booking = await self._service.book.remote(prompt_estimate, max_completion, force)
        if isinstance(booking, str):
            raise BudgetSpent(booking)
        return float(booking)

    def release(self, booking: float) -> None:
        self._service.release.remote(booking)

    def settle(
        self, booking: float, prompt_tokens: int | None, completion_tokens: int | None
    ) -> None:
        self._service.settle.remote(booking, prompt_tokens, completion_tokens)


class EventBuffer:
    """monitor.EventSink that keeps events (with their time) for the batch's report."""

    def __init__(self) -> None:
        self._events: list[dict[str, Any]] = []

    def emit(self, event: str, **fields: Any) -> None:
        self._events.append({"ts": round(time.time(), 3), "event": event, **fields})

    def drain(self) -> list[dict[str, Any]]:
        events, self._events = self._events, []
        return events
