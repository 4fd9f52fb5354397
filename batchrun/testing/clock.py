"""The mock endpoint's sense of time: batchrun's Clock (clock.py), and clocks a test moves.

Everything in `batchrun.testing` that reads the time or waits goes through a `Clock`, so a test
can move the endpoint's time instead of waiting for it:
- `SystemClock`: real time (the default; `batchrun mock-server` uses it);
- `OffsetClock`: real time plus an offset a test moves with `advance()`; its sleeps are real,
  so latency still happens in end-to-end tests while windows and deadlines can be skipped;
- `ManualClock`: time moves only when a test advances it, and `sleep()` returns once the clock
  has been advanced past its deadline; for unit tests that must never wait.

This module owns no endpoint state; it knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from batchrun.clock import Clock


@runtime_checkable
class MovableClock(Clock, Protocol):
    """A clock a test can move forward."""

    def advance(self, seconds: float) -> None: ...


class OffsetClock:
    """Real time plus an offset that only grows; sleeps stay real.

    After `advance(61)` the endpoint believes a minute has passed (its rate window forgets,
    unpolled ids expire), while a request's latency still takes real time.
    """

    def __init__(self) -> None:
        self._offset = 0.0
        self._lock = threading.Lock()  # advance() may come from any thread

    def monotonic(self) -> float:
        return time.monotonic() + self._offset

    def wall(self) -> float:
        return time.time() + self._offset

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def advance(self, seconds: float) -> None:
        _check_forward(seconds)
        with self._lock:
            self._offset += seconds


@dataclass(eq=False)
class _Waiter:
    """A pending sleep (or `until_sleeping`) and the loop to wake it on."""

    deadline: float
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]

    def wake(self) -> None:
        # Futures belong to their loop: resolve on it, whichever thread called advance().
        self.loop.call_soon_threadsafe(_resolve, self.future)


class ManualClock:
    """Time that moves only when advanced; nothing ever waits for real.

    `sleep(s)` returns once `advance()` has carried the clock to `s` seconds after the call
    (a zero or negative sleep yields to the loop once, as asyncio.sleep(0) does). A test that
    must advance while a handler sleeps first awaits `until_sleeping()`.
    """

    def __init__(self, start: float = 0.0, wall_start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_minus_monotonic = wall_start - start
        self._sleepers: list[_Waiter] = []
        self._watchers: list[_Waiter] = []  # until_sleeping() calls waiting for a sleeper
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_minus_monotonic

    @property
    def sleeping(self) -> int:
        """How many sleeps are waiting for the clock to move."""
        return len(self._sleepers)

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        loop = asyncio.get_running_loop()
        with self._lock:
            waiter = _Waiter(self._now + seconds, loop, loop.create_future())
            self._sleepers.append(waiter)
            watchers, self._watchers = self._watchers, []
        for watcher in watchers:
            watcher.wake()
        try:
            await waiter.future
        finally:  # cancelled (a client that hung up): leave no sleeper behind
            with self._lock:
                if waiter in self._sleepers:
                    self._sleepers.remove(waiter)

    def advance(self, seconds: float) -> None:
        """Move the clock forward and wake every sleep whose deadline it reached."""
        _check_forward(seconds)
        with self._lock:
            self._now += seconds
            due = [w for w in self._sleepers if w.deadline <= self._now]
            # Woken sleeps stop counting at once, before their tasks run: an until_sleeping()
            # right after advance() then waits for a new sleep, not one already woken.
            self._sleepers = [w for w in self._sleepers if w.deadline > self._now]
        for waiter in due:
            waiter.wake()

    async def until_sleeping(self, count: int = 1) -> None:
        """Return once at least `count` sleeps are waiting on this clock."""
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                if len(self._sleepers) >= count:
                    return
                watcher = _Waiter(self._now, loop, loop.create_future())
                self._watchers.append(watcher)
            try:
                await watcher.future
            finally:  # cancelled: leave no future of a loop that may close behind
                with self._lock:
                    if watcher in self._watchers:
                        self._watchers.remove(watcher)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _check_forward(seconds: float) -> None:
    if seconds < 0:
        raise ValueError(f"a clock only moves forward (advance({seconds}))")
