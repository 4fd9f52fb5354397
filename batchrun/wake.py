"""Noticing that the process was not running: stopped (SIGSTOP, a debugger) or asleep (a
laptop lid), for longer than NVCF keeps an id nobody polls.

Nothing needs doing on wake: every pending id's poll loop polls once more, and the ids the
server says are gone are bought again (the engine's RequestExpired path). What the watcher
adds is the operator's view: one log line saying how long the job was away and why some
rows are being sent again. It reads the boot-time clock where there is one (Linux): it
never steps with the wall clock and, unlike the monotonic clock, goes on through a suspend.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

TICK_S = 1.0


def awake_clock() -> float:
    """Seconds on a clock that counts suspended time and never steps (monotonic elsewhere)."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(boottime) if boottime is not None else time.monotonic()


def poll_window(hold_seconds: float) -> float:
    """How long NVCF keeps an id that nobody polls (PROTOCOL.md: max(2 x hold, 10 s))."""
    return max(2 * hold_seconds, 10.0)


async def watch_for_sleep(
    hold_seconds: float, tick: float = TICK_S, clock: Callable[[], float] = awake_clock
) -> None:
    """Log once per wake when the process was away past the poll window (until cancelled)."""
    window = poll_window(hold_seconds)
    seen = clock()
    while True:
        await asyncio.sleep(tick)
        now = clock()
        gone, seen = now - seen, now
        if gone > window:
            log.warning(
                "the job was not running for %.0f s (stopped or asleep), past the %.0f s the "
                "server keeps an unpolled request id: every pending id is polled again, and "
                "rows whose id the server has dropped are sent again",
                gone,
                window,
            )
