"""The mock endpoint's capacity: a GPU server's batch slots and its overload refusals.

`slots = N > 0`: a chat answer's generation time is `latency × max(1, active / N)`, where
`active` counts the generations in progress when it arrives, itself included. So throughput
grows with the client's concurrency up to N, then stays flat while latency climbs, as with a
batching inference server. The factor is fixed at arrival (no processor sharing): a request
keeps its stretch even if others finish first, which keeps the model a pure function of the
arrival times on the endpoint's clock.

`overload = M > 0`: a chat request arriving while M generations are in progress is refused
with 503 at once (nothing generated, nothing billed), as an overloaded server sheds load.

A generation is "in progress" from its arrival until its answer is ready (`now + latency`),
whether the client waits for it (200), was told to poll (202) or has gone away: the server
does the work either way. The times are the endpoint's clock's, so a test that advances the
clock past a generation's end frees its slot. This module owns only that count and the
counters built on it (`active`, `peak_active`, `overloaded` in the stats); the endpoint
decides which requests are generations (`app.py`).
"""

from __future__ import annotations

import heapq
from typing import Any


class Capacity:
    """The ends of the generations in progress, and the peak and refusal counters."""

    def __init__(self) -> None:
        self._ends: list[float] = []  # a heap of ready times
        self.peak = 0
        self.overloaded = 0

    def active(self, now: float) -> int:
        """How many generations are in progress at `now`."""
        # Ends never move and `now` only grows, so one pass from the smallest end suffices.
        while self._ends and self._ends[0] <= now:
            heapq.heappop(self._ends)
        return len(self._ends)

    def refuses(self, now: float, overload: int) -> bool:
        """Whether a request at `now` finds `overload` (> 0) generations in progress."""
        if overload > 0 and self.active(now) >= overload:
            self.overloaded += 1
            return True
        return False

    def start(self, now: float, latency: float, slots: int) -> float:
        """Start a generation at `now`; its latency, stretched when the slots are shared."""
        active = self.active(now) + 1  # this one included
        self.peak = max(self.peak, active)
        if slots > 0 and active > slots:
            latency *= active / slots
        if latency > 0:  # an instant answer occupies no slot
            heapq.heappush(self._ends, now + latency)
        return latency

    def reset_counters(self, now: float) -> None:
        """Zero the counters; generations in progress stay (the "GPU" is still busy)."""
        self.peak = self.active(now)
        self.overloaded = 0

    def snapshot(self, now: float) -> dict[str, Any]:
        return {"active": self.active(now), "peak_active": self.peak, "overloaded": self.overloaded}
