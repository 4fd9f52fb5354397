"""The job-wide stop request, and the two ways the engine waits around it.

Shared by the engine, the rate limiter and the dispatcher, so that a stop never waits out a
long rate-limit or back-off sleep, while the waits between polls of an id already paid for
go on through a stop (the answer behind it is the job's).
"""

from __future__ import annotations

import asyncio
from contextlib import suppress

from .clock import SYSTEM_CLOCK, Clock
from .errors import BatchrunError


class StopSignal:
    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self.event = asyncio.Event()
        self.reason: BatchrunError | None = None
        self.clock = clock

    @property
    def is_set(self) -> bool:
        return self.event.is_set()

    def request(self, reason: BatchrunError | None = None) -> None:
        """Stop (first reason wins). No new request starts after this."""
        if reason is not None and self.reason is None:
            self.reason = reason
        self.event.set()

    async def sleep(self, seconds: float) -> None:
        """A sleep that ends early when a stop is requested."""
        if seconds <= 0 or self.event.is_set():
            return
        sleeper = asyncio.ensure_future(self.clock.sleep(seconds))
        stopped = asyncio.ensure_future(self.event.wait())
        try:
            await asyncio.wait({sleeper, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, stopped):
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task

    async def nap(self, seconds: float) -> None:
        """A sleep a stop does not cut short: the waits between polls of a paid id."""
        if seconds > 0:
            await self.clock.sleep(seconds)
