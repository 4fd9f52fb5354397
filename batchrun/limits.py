"""Request-rate and token-rate limits, the 429 slow-down, the pending-id capacity, and the
first-come-first-served queue (`Waiters`) that it and the endpoint pool wait in.

`RateWindow` is pure logic on a clock value: `reserve(now, tokens)` books the earliest start
time that keeps every limit and returns it, never blocking. That is what a shared limiter
service needs (a Ray actor can hold a RateWindow and hand out start times), and it makes the
sliding-window property testable without sleeping. `RateLimiter` is the asyncio wrapper.

Why not a plain leaky bucket (aiolimiter's `AsyncLimiter`, say): it admits up to `max_rate`
at once and then drains at the full rate, so `AsyncLimiter(rpm, 60)` lets nearly 2 x rpm
through one 60 s window, and it cannot change its rate after a 429 or give tokens back once
real usage is known. Here:
- a sliding log of the last `rpm` start times: a start at t is booked only if fewer than
  `rpm` starts fall in (t - 60 s, t], so the limit holds in *every* window;
- a token log (time, tokens) for `tpm`: booked with an estimate, corrected by `settle`;
- GCRA pacing (spacing 60/rpm with a small burst) so requests are spread over the minute
  rather than fired in one burst a server-side bucket would refuse;
- after a 429: everything pauses (Retry-After, else backoff with jitter), the rate drops
  to half, then recovers linearly over RECOVERY_S.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

WINDOW_S = 60.0
# Slack so that requests a server sees a few ms apart from our clock still fit its window.
WINDOW_MARGIN_S = 0.1
RECOVERY_S = 60.0
MIN_FACTOR = 0.05
COOL_DOWN_BASE_S = 2.0
COOL_DOWN_MAX_S = 60.0


class Limiter(Protocol):
    """Start slots under the job's rate limits: RateLimiter, or a Ray cluster's service."""

    async def acquire(
        self, prompt_tokens: int = 0, *, sleep: Callable[[float], Awaitable[None]] | None = None
    ) -> Reservation: ...

    def settle(
        self, reservation: Reservation, total: int | None, completion: int | None
    ) -> None: ...

    def on_rate_limited(self, retry_after: float | None) -> float: ...

    def pause(self, seconds: float) -> None: ...

    def delay(self, prompt_tokens: int = 0) -> float:
        """Seconds until `acquire` would grant a start now (0: at once)."""
        ...


@dataclass(slots=True)
class Reservation:
    """A booked start. `entry` is its slot in the token log (for `settle`)."""

    at: float
    tokens: int = 0
    entry: list[float] | None = field(default=None, repr=False)


class RateWindow:
    """Books request starts against rpm/tpm sliding windows; pure, clock passed in."""

    def __init__(
        self,
        rpm: int | None,
        tpm: int | None = None,
        *,
        window: float = WINDOW_S,
        margin: float = WINDOW_MARGIN_S,
        burst: int | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self.window = window
        self._span = window + margin
        self._burst = burst if burst is not None else max(1, math.ceil((rpm or 1) / 20))
        self._starts: deque[float] = deque(maxlen=rpm) if rpm else deque(maxlen=1)
        self._token_log: deque[list[float]] = deque()
        self._token_sum = 0.0
        self._last = -math.inf
        self._tat = -math.inf  # GCRA theoretical arrival time
        self.paused_until = -math.inf
        self._factor_floor = 1.0  # rate factor right after the last 429
        self._slow_from = -math.inf  # when recovery from that factor starts
        self._consecutive_429 = 0
        self._rng = rng or random.Random()

    # ---- slow-down after 429

    def factor(self, now: float) -> float:
        """Share of the configured rate allowed now (1.0 = full rate)."""
        if now <= self._slow_from:
            return self._factor_floor
        recovered = (now - self._slow_from) / RECOVERY_S
        return min(1.0, self._factor_floor + (1.0 - self._factor_floor) * recovered)

    def on_rate_limited(self, now: float, retry_after: float | None) -> float:
        """A 429: pause everyone, halve the rate. Returns the pause in seconds."""
        self._consecutive_429 += 1
        if retry_after is not None:
            pause = retry_after
        else:
            ceiling = min(COOL_DOWN_MAX_S, COOL_DOWN_BASE_S * 2 ** (self._consecutive_429 - 1))
            pause = self._rng.uniform(ceiling / 2, ceiling)
        self.pause(now + pause)
        self._factor_floor = max(MIN_FACTOR, self.factor(now) / 2)
        self._slow_from = max(self._slow_from, now + pause)
        return pause

    def on_success(self) -> None:
        self._consecutive_429 = 0

    def pause(self, until: float) -> None:
        self.paused_until = max(self.paused_until, until)

    # ---- booking

    def earliest(self, now: float, tokens: int = 0) -> float:
        """When `reserve(now, tokens)` would book a start, without booking it (a pool
        compares its endpoints with this)."""
        return self._earliest(now, tokens)[0]

    def _earliest(self, now: float, tokens: int) -> tuple[float, float]:
        """(the earliest start >= now that keeps every limit, the GCRA spacing then)."""
        t = max(now, self._last, self.paused_until)
        interval = 0.0
        if self.rpm:
            interval = self.window / (self.rpm * self.factor(t))
            t = max(t, self._tat - (self._burst - 1) * interval)
            if len(self._starts) == self.rpm:
                t = max(t, self._starts[0] + self._span)
        if self.tpm:
            amount, total = max(0, min(tokens, self.tpm)), self._token_sum
            # The oldest bookings leave the window until this one fits beside the rest.
            for start, booked, _ in self._token_log:
                if start > t - self._span and total + amount <= self.tpm:
                    break
                total -= booked
                t = max(t, start + self._span)
        return t, interval

    def reserve(self, now: float, tokens: int = 0) -> Reservation:
        """Book the earliest start >= now that keeps every limit, and return it."""
        t, interval = self._earliest(now, tokens)
        amount = 0
        entry: list[float] | None = None
        if self.tpm:
            amount = max(0, min(tokens, self.tpm))
            while self._token_log and self._token_log[0][0] <= t - self._span:
                self._drop_oldest()  # out of the window at t: what _earliest looked past
            entry = [t, float(amount), 1.0]  # [start, tokens, still in the log]
            self._token_log.append(entry)
            self._token_sum += amount
        if self.rpm:
            self._starts.append(t)
            self._tat = max(self._tat, t) + interval
        self._last = t
        return Reservation(t, amount, entry)

    def _drop_oldest(self) -> list[float]:
        oldest = self._token_log.popleft()
        self._token_sum -= oldest[1]
        oldest[2] = 0.0
        return oldest

    def settle(self, reservation: Reservation, actual_tokens: int | None) -> None:
        """Replace a booking's token estimate with the tokens the server reported."""
        entry = reservation.entry
        if entry is None or actual_tokens is None:
            return
        if entry[2]:  # still inside the window: the correction counts
            self._token_sum += actual_tokens - entry[1]
            entry[1] = float(actual_tokens)


class RateLimiter:
    """Async face of a RateWindow: sleeps until the booked start. Clock/sleep injectable."""

    def __init__(
        self,
        window: RateWindow,
        *,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        expected_completion: int = 512,
    ) -> None:
        self.window = window
        self._clock = clock
        self._sleep = sleep
        # Completion tokens to book before the answer tells us; follows real usage.
        self.expected_completion = float(expected_completion)

    def now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    async def acquire(
        self, prompt_tokens: int = 0, *, sleep: Callable[[float], Awaitable[None]] | None = None
    ) -> Reservation:
        """Wait for a start slot. `sleep` may end early (a job's stop signal)."""
        window = self.window
        if window.rpm is None and window.tpm is None:  # no limits (a local server)
            now = self.now()
            if now >= window.paused_until:
                return Reservation(now)
        tokens = prompt_tokens + int(self.expected_completion)
        nap = sleep or self._sleep
        while True:
            now = self.now()
            reservation = self.window.reserve(now, tokens)
            if reservation.at > now:
                await nap(reservation.at - now)
            # A 429 elsewhere may have paused everyone while we slept. The slot we booked
            # stays counted (erring low, never high); book a new one after the pause.
            if self.window.paused_until <= reservation.at:
                return reservation

    def delay(self, prompt_tokens: int = 0) -> float:
        now = self.now()
        window = self.window
        if window.rpm is None and window.tpm is None:
            return max(0.0, window.paused_until - now)
        tokens = prompt_tokens + int(self.expected_completion)
        return max(0.0, window.earliest(now, tokens) - now)

    def settle(self, reservation: Reservation, total: int | None, completion: int | None) -> None:
        self.window.settle(reservation, total)
        if completion is not None:
            self.expected_completion += 0.1 * (completion - self.expected_completion)
        self.window.on_success()

    def on_rate_limited(self, retry_after: float | None) -> float:
        return self.window.on_rate_limited(self.now(), retry_after)

    def pause(self, seconds: float) -> None:
        self.window.pause(self.now() + seconds)


class Waiters:
    """Tasks queued, first come first served, for something that frees up piecemeal (a slot).

    `wake(n)` wakes the first n; a woken task that is cancelled before it runs passes its
    turn on. Until the woken run, `busy` stays true, so a newcomer that checks it queues
    behind them instead of taking what was freed for them.
    """

    def __init__(self) -> None:
        self._queue: deque[asyncio.Future[None]] = deque()
        self._woken = 0  # woken, not run yet

    @property
    def busy(self) -> bool:
        return bool(self._queue) or self._woken > 0

    async def wait(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._queue.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter in self._queue:
                self._queue.remove(waiter)
            elif waiter.done() and not waiter.cancelled():
                self._woken -= 1
                self.wake(1)  # woken but leaving: pass the turn on
            raise
        self._woken -= 1

    def wake(self, count: int = 1) -> None:
        while count > 0 and self._queue:
            waiter = self._queue.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._woken += 1
                count -= 1

    def wake_all(self) -> None:
        self.wake(len(self._queue))


class Capacity:
    """How many request ids may await their result (`max_pending`).

    `acquire` waits below the limit (new submissions); `take` never waits: it is for ids the
    server already holds (a resumed run), which must be polled now or NVCF drops them.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.closed = False
        self._waiters = Waiters()

    async def acquire(self) -> bool:
        """Take a slot, waiting for one; False (no slot) once the capacity is closed."""
        while self.used >= self.limit and not self.closed:
            await self._waiters.wait()
        if self.closed:
            return False
        self.used += 1
        return True

    def close(self) -> None:
        """Wake every waiter with no slot (the job is stopping)."""
        self.closed = True
        self._waiters.wake_all()

    def take(self) -> None:
        self.used += 1

    def release(self) -> None:
        self.used -= 1
        self._waiters.wake(1)
