"""How many requests an endpoint may have on the wire at once. Pure: clock values passed in.

`FixedLimit` is a number from the config. `AdaptiveLimit` (`concurrency = "auto"`) looks for
the knee where throughput stops rising and latency starts to climb, the way TCP congestion
control does (AIMD on latency and errors):

- answers are taken in windows of about one round trip (as many answers as the limit);
- a baseline estimates the server's no-load latency: it follows lower windows down (softly,
  or at once after a drop no noise explains), and rises only on evidence that the server got
  slower for everyone: a window right after a cut (the lightest load of the cycle) or at the
  minimum limit still above it;
- a window whose median latency is within `tolerance` x baseline, and in which the limit
  was actually used, adds one to the limit (additive increase, +1 per round trip); an idle
  endpoint's limit stays where it is;
- a window above the tolerance cuts the limit (multiplicative decrease) by baseline / latency
  and a margin, aiming just below the knee so that the next window measures the base latency
  again; a refusal or failure under load (`on_overload`) cuts by `overload_cut`, the deepest;
- at most one cut per round trip: after a cut, only answers to requests sent after it count,
  and further overloads within a round trip are the same overload.

What it does NOT guarantee:
- it reacts to per-request latency, so very variable output lengths blur the signal: the
  window median shrugs off a few long answers, not a mix that changes from window to window;
- it does not know the server's queue, slot count or other clients: another client's burst
  looks like our own congestion and makes it cut;
- it finds a knee, not an optimum: the limit saws between just below and some way above the
  knee, and a server whose latency climbs from the first request on has no clear knee;
- it learns only from answers: until a window closes it holds the initial limit, and after
  the server's base latency drops it may overshoot until the baseline follows.
"""

from __future__ import annotations

import enum
import math
import statistics
from dataclasses import dataclass
from typing import Protocol

# A window counts as using the limit when at least half its answers came back with this
# share of the limit (or more) on the wire.
USED_SHARE = 0.8
# The baseline's steps toward a window's latency: down on every lower window (softly, so a
# lucky window among noisy ones does not drag it down), up only on the evidence named in the
# module docstring (halfway: the evidence is one window).
BASELINE_FALL = 0.1
BASELINE_RISE = 0.5
# A latency cut aims this far below the estimated knee: landing exactly on it would measure a
# slightly loaded latency as the base, and the baseline would creep up cycle after cycle.
KNEE_MARGIN = 0.9
# Below a millisecond the clock and the event loop are the signal, not the server.
BASELINE_FLOOR_S = 0.001


class ConcurrencyLimit(Protocol):
    """What the endpoint pool asks of a limit: FixedLimit or AdaptiveLimit."""

    @property
    def limit(self) -> int:
        """Requests allowed on the wire now (at least 1)."""
        ...

    def on_answer(self, latency_s: float, in_flight: int, now: float) -> None:
        """A request answered OK (200/202) after `latency_s`; `in_flight` is the number of
        requests on the wire with it, itself included (the pool passes the more of those
        when it was sent and when it was answered)."""
        ...

    def on_overload(self, now: float) -> None:
        """The endpoint refused or failed under load: 429, 5xx, timeout, dropped connection."""
        ...


class FixedLimit:
    """A limit that never changes (`concurrency = 16`)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a concurrency limit is at least 1, not {limit}")
        self._limit = limit

    @property
    def limit(self) -> int:
        return self._limit

    def on_answer(self, latency_s: float, in_flight: int, now: float) -> None:
        pass

    def on_overload(self, now: float) -> None:
        pass


class Decision(enum.Enum):
    """What the last closed window, or overload, did to the limit."""

    NONE = "none"  # nothing decided yet
    GROW = "grow"  # latency within tolerance and the limit used: +1
    HOLD_IDLE = "hold: idle"  # latency within tolerance but the limit not used
    HOLD_MAXIMUM = "hold: at maximum"
    CUT_LATENCY = "cut: latency"
    CUT_OVERLOAD = "cut: overload"


@dataclass(frozen=True, slots=True)
class AdaptiveState:
    """A snapshot of an AdaptiveLimit, for logs and tests."""

    limit: int
    exact_limit: float  # the limit moves by fractions after cuts; `limit` is its floor
    baseline_s: float | None  # no-load latency estimate; None before the first window
    window_latency_s: float | None  # median latency of the last closed window
    last_decision: Decision
    windows: int  # windows closed so far
    cuts: int  # latency and overload cuts so far


class AdaptiveLimit:
    """AIMD on latency and errors (see the module docstring). Clock values are passed in."""

    def __init__(
        self,
        *,
        maximum: int,
        initial: int = 4,
        minimum: int = 1,
        tolerance: float = 1.5,
        overload_cut: float = 0.5,
        min_window: int = 3,
    ) -> None:
        if not 1 <= minimum <= maximum:
            raise ValueError(f"need 1 <= minimum <= maximum, got {minimum} and {maximum}")
        if not tolerance > 1.0:
            raise ValueError(f"tolerance is a factor above 1, not {tolerance}")
        if not 0.0 < overload_cut < 1.0:
            raise ValueError(f"overload_cut is a factor between 0 and 1, not {overload_cut}")
        self.maximum = maximum
        self.minimum = minimum
        self.tolerance = tolerance
        self.overload_cut = overload_cut  # also the deepest a latency cut goes
        self.min_window = max(1, min_window)  # answers per window at the least (noise)
        self._limit = float(min(maximum, max(minimum, initial)))
        self._baseline: float | None = None
        self._window_latency: float | None = None
        self._decision = Decision.NONE
        self._windows = 0
        self._cuts = 0
        self._last_cut = -math.inf
        # The open window: answers to requests sent at or after `_since` (the last cut).
        self._since = -math.inf
        self._latencies: list[float] = []
        self._busy = 0
        self._after_cut = False

    @property
    def limit(self) -> int:
        return int(self._limit)

    @property
    def baseline_s(self) -> float | None:
        return self._baseline

    @property
    def last_decision(self) -> Decision:
        return self._decision

    def describe(self) -> AdaptiveState:
        return AdaptiveState(
            limit=self.limit,
            exact_limit=self._limit,
            baseline_s=self._baseline,
            window_latency_s=self._window_latency,
            last_decision=self._decision,
            windows=self._windows,
            cuts=self._cuts,
        )

    # ---- signals

    def on_answer(self, latency_s: float, in_flight: int, now: float) -> None:
        if not math.isfinite(latency_s) or latency_s < 0.0:
            return
        if now - latency_s < self._since:
            return  # sent before the last cut: it measures the load we just cut
        self._latencies.append(latency_s)
        if in_flight >= USED_SHARE * self._limit:
            self._busy += 1
        if len(self._latencies) >= max(self.min_window, self.limit):
            self._close_window(now)

    def on_overload(self, now: float) -> None:
        # Within a round trip of the last cut, this is the same overload (a burst of 5xx).
        # Before the first window there is no round trip known, and each overload cuts.
        if now - self._last_cut < (self._window_latency or 0.0):
            return
        self._cut(self.overload_cut, now)
        self._decision = Decision.CUT_OVERLOAD

    # ---- decisions

    def _close_window(self, now: float) -> None:
        latency = statistics.median(self._latencies)
        used = 2 * self._busy >= len(self._latencies)
        self._windows += 1
        self._window_latency = latency
        self._latencies.clear()
        self._busy = 0
        baseline = self._follow_baseline(latency)
        if latency > self.tolerance * baseline:
            # On a slot-bound server latency grows in proportion to the load past the knee,
            # so baseline / latency estimates how far past it we are. Never deeper than an
            # overload's cut: a latency spike is weaker evidence than a refusal.
            self._cut(max(self.overload_cut, KNEE_MARGIN * baseline / latency), now)
            self._decision = Decision.CUT_LATENCY
        elif not used:
            self._decision = Decision.HOLD_IDLE
        elif self._limit >= self.maximum:
            self._decision = Decision.HOLD_MAXIMUM
        else:
            self._limit = min(float(self.maximum), self._limit + 1.0)
            self._decision = Decision.GROW

    def _follow_baseline(self, latency: float) -> float:
        """Move the baseline for a closed window's median latency, and return it."""
        old = self._baseline
        after_cut, self._after_cut = self._after_cut, False
        if old is None or latency * self.tolerance**2 < old:
            # The first window, or a drop no noise explains (the server got faster): take the
            # window as the base outright.
            new = latency
        elif latency < old:
            new = old + BASELINE_FALL * (latency - old)
        elif after_cut or self._limit <= self.minimum:
            # The lightest load of the cycle and still above: the server got slower for
            # everyone. Rising on loaded windows instead would follow our own queueing up.
            new = old + BASELINE_RISE * (latency - old)
        else:
            new = old
        self._baseline = max(BASELINE_FLOOR_S, new)
        return self._baseline

    def _cut(self, factor: float, now: float) -> None:
        self._limit = max(float(self.minimum), self._limit * factor)
        self._cuts += 1
        self._last_cut = now
        self._since = now  # the open window measured the old limit: start a new one
        self._latencies.clear()
        self._busy = 0
        self._after_cut = True
