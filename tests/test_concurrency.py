"""batchrun/concurrency.py: FixedLimit, AdaptiveLimit's rules one by one, and AdaptiveLimit
against a simulated slot-bound server (a discrete-event loop on a fake clock: no sleeping)."""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field

import pytest

from batchrun.concurrency import (
    BASELINE_FALL,
    BASELINE_FLOOR_S,
    BASELINE_RISE,
    KNEE_MARGIN,
    AdaptiveLimit,
    ConcurrencyLimit,
    Decision,
    FixedLimit,
)


def window(
    limit: AdaptiveLimit, latency: float, sent: float, in_flight: int | None = None
) -> float:
    """One full window of answers: sent at `sent`, answered `latency` later; returns that time.

    By default every answer comes back with the limit fully used."""
    size = max(limit.min_window, limit.limit)
    windows = limit.describe().windows
    for _ in range(size):
        used = limit.limit if in_flight is None else in_flight
        limit.on_answer(latency, used, sent + latency)
    assert limit.describe().windows == windows + 1  # exactly one window closed
    return sent + latency


def grown(to: int, maximum: int = 64) -> tuple[AdaptiveLimit, float]:
    """An AdaptiveLimit grown to `to` on flat latency 1.0, and the clock after it."""
    limit = AdaptiveLimit(maximum=maximum, initial=to - 1)
    now = window(limit, 1.0, 10.0)
    assert limit.limit == to
    return limit, now


# ---------------------------------------------------------------- FixedLimit


def test_fixed_limit_never_changes() -> None:
    limit = FixedLimit(6)
    for i in range(50):
        limit.on_answer(100.0 * i, 6, float(i))
        limit.on_overload(float(i))
    assert limit.limit == 6


def test_fixed_limit_is_at_least_one() -> None:
    with pytest.raises(ValueError):
        FixedLimit(0)


def test_both_kinds_are_concurrency_limits() -> None:
    limits: list[ConcurrencyLimit] = [FixedLimit(3), AdaptiveLimit(maximum=8)]
    assert [limit.limit for limit in limits] == [3, 4]


# ---------------------------------------------------------------- growth


def test_grows_by_one_a_window_while_latency_is_flat_and_the_limit_used() -> None:
    limit = AdaptiveLimit(maximum=64, initial=4)
    now = 10.0
    seen = []
    for _ in range(6):
        now = window(limit, 1.0, now)
        seen.append(limit.limit)
    assert seen == [5, 6, 7, 8, 9, 10]
    assert limit.last_decision is Decision.GROW
    assert limit.baseline_s == 1.0


def test_grows_within_the_tolerance() -> None:
    limit, now = grown(5)
    now = window(limit, 1.45, now)  # 1.45 <= 1.5 x 1.0
    assert limit.limit == 6
    assert limit.last_decision is Decision.GROW


def test_does_not_grow_when_the_limit_is_not_used() -> None:
    limit = AdaptiveLimit(maximum=64, initial=10)
    now = 10.0
    for _ in range(20):
        now = window(limit, 1.0, now, in_flight=2)
    assert limit.limit == 10
    assert limit.last_decision is Decision.HOLD_IDLE


def test_half_used_window_grows_mostly_idle_does_not() -> None:
    limit = AdaptiveLimit(maximum=64, initial=10)
    for _ in range(5):
        limit.on_answer(1.0, 10, 10.0)
    for _ in range(5):
        limit.on_answer(1.0, 1, 10.0)
    assert limit.limit == 11
    for _ in range(5):
        limit.on_answer(1.0, 11, 11.0)
    for _ in range(6):
        limit.on_answer(1.0, 1, 11.0)
    assert limit.last_decision is Decision.HOLD_IDLE
    assert limit.limit == 11


def test_no_decision_before_a_window_is_full() -> None:
    limit = AdaptiveLimit(maximum=64, initial=8)
    for i in range(7):
        limit.on_answer(1.0, 8, 10.0 + i)
    assert limit.describe().windows == 0
    assert limit.last_decision is Decision.NONE
    assert limit.baseline_s is None
    limit.on_answer(1.0, 8, 20.0)
    assert (limit.limit, limit.describe().windows) == (9, 1)


def test_window_has_at_least_min_window_answers() -> None:
    limit = AdaptiveLimit(maximum=64, initial=1, min_window=3)
    limit.on_answer(1.0, 1, 10.0)
    limit.on_answer(1.0, 1, 11.0)
    assert limit.limit == 1
    limit.on_answer(1.0, 1, 12.0)
    assert limit.limit == 2


# ---------------------------------------------------------------- cuts


def test_latency_rise_cuts_toward_the_knee() -> None:
    limit, now = grown(12)
    window(limit, 1.6, now)  # 1.6 > 1.5 x baseline 1.0
    assert limit.last_decision is Decision.CUT_LATENCY
    assert limit.describe().exact_limit == pytest.approx(12 * KNEE_MARGIN / 1.6)
    assert limit.limit == 6


def test_latency_cut_is_never_deeper_than_the_overload_cut() -> None:
    limit, now = grown(12)
    window(limit, 10.0, now)
    assert limit.describe().exact_limit == pytest.approx(6.0)


def test_overload_cuts_by_half() -> None:
    limit, now = grown(12)
    limit.on_overload(now)
    assert limit.last_decision is Decision.CUT_OVERLOAD
    assert limit.limit == 6
    assert limit.describe().cuts == 1


def test_answers_sent_before_a_cut_do_not_count() -> None:
    limit, now = grown(12)
    limit.on_overload(now)  # cut at `now`: 12 -> 6
    for _ in range(20):  # slow answers to requests sent before the cut
        limit.on_answer(5.0, 12, now + 1.0)
    state = limit.describe()
    assert (state.limit, state.windows, state.cuts) == (6, 1, 1)
    # Requests sent after the cut are heard again.
    window(limit, 1.0, now + 3.0)
    assert limit.limit == 7


def test_at_most_one_overload_cut_per_round_trip() -> None:
    limit, now = grown(12)  # the last window took 1.0 s
    limit.on_overload(now)
    limit.on_overload(now + 0.5)  # the same overload, reported again
    assert limit.limit == 6
    limit.on_overload(now + 1.0)  # a round trip later: a new signal
    assert limit.limit == 3
    assert limit.describe().cuts == 2


def test_overload_right_after_a_latency_cut_is_the_same_signal() -> None:
    limit, now = grown(12)
    cut_at = window(limit, 2.0, now)  # latency cut, 12 -> 6; a round trip is 2.0 s
    assert limit.limit == 6
    limit.on_overload(cut_at + 1.0)
    assert limit.limit == 6
    limit.on_overload(cut_at + 2.0)
    assert limit.limit == 3


def test_overload_before_any_answer_always_cuts() -> None:
    limit = AdaptiveLimit(maximum=64, initial=8)
    limit.on_overload(0.0)
    limit.on_overload(0.0)
    assert limit.limit == 2


# ---------------------------------------------------------------- bounds


def test_never_below_minimum() -> None:
    limit = AdaptiveLimit(maximum=64, initial=9, minimum=3)
    now = window(limit, 1.0, 0.0)  # baseline 1.0, limit 10
    for i in range(20):
        limit.on_overload(now + 10.0 * i)
    assert limit.describe().exact_limit == 3.0
    window(limit, 50.0, 1000.0)
    assert limit.last_decision is Decision.CUT_LATENCY  # a cut at the minimum stays there
    assert limit.describe().exact_limit == 3.0


def test_never_above_maximum() -> None:
    limit = AdaptiveLimit(maximum=6, initial=4)
    now = 10.0
    for _ in range(10):
        now = window(limit, 1.0, now)
        assert limit.limit <= 6
    assert limit.limit == 6
    assert limit.last_decision is Decision.HOLD_MAXIMUM


@pytest.mark.parametrize(
    ("initial", "minimum", "maximum", "expected"),
    [(4, 1, 64, 4), (100, 1, 16, 16), (1, 5, 16, 5), (0, 1, 1, 1)],
)
def test_initial_is_clamped(initial: int, minimum: int, maximum: int, expected: int) -> None:
    limit = AdaptiveLimit(maximum=maximum, initial=initial, minimum=minimum)
    assert limit.limit == expected


@pytest.mark.parametrize(
    "kwargs",
    [
        {"maximum": 0},
        {"maximum": 4, "minimum": 5},
        {"maximum": 4, "minimum": 0},
        {"maximum": 4, "tolerance": 1.0},
        {"maximum": 4, "overload_cut": 1.0},
        {"maximum": 4, "overload_cut": 0.0},
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        AdaptiveLimit(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("latency", [math.nan, math.inf, -1.0])
def test_garbage_latencies_are_ignored(latency: float) -> None:
    limit = AdaptiveLimit(maximum=64, initial=4)
    for _ in range(10):
        limit.on_answer(latency, 4, 10.0)
    assert limit.describe().windows == 0
    assert limit.limit == 4


# ---------------------------------------------------------------- the baseline


def test_baseline_does_not_rise_on_loaded_windows() -> None:
    """Windows within the tolerance may be our own queueing: they never raise the baseline,
    else it would follow the load up and the limit would never stop growing."""
    limit, now = grown(5)
    for _ in range(10):
        now = window(limit, 1.4, now)
    assert limit.baseline_s == 1.0


def test_baseline_rises_when_a_cut_does_not_help() -> None:
    limit, now = grown(12)
    now = window(limit, 2.0, now)  # cut
    assert limit.baseline_s == 1.0
    now = window(limit, 2.0, now)  # the lighter load after the cut is just as slow
    assert limit.baseline_s == pytest.approx(1.0 + BASELINE_RISE * 1.0)
    assert limit.last_decision is Decision.GROW  # 2.0 <= 1.5 x 1.5: growing again


def test_baseline_rises_at_the_minimum_limit() -> None:
    limit = AdaptiveLimit(maximum=64, initial=1)
    now = window(limit, 1.0, 10.0, in_flight=0)  # idle: holds at 1, baseline 1.0
    window(limit, 3.0, now)  # no lighter load to try: the server is slower
    assert limit.baseline_s == pytest.approx(1.0 + BASELINE_RISE * 2.0)


def test_baseline_falls_softly_on_a_small_drop_and_at_once_on_a_large_one() -> None:
    limit, now = grown(5)
    now = window(limit, 0.8, now)
    assert limit.baseline_s == pytest.approx(1.0 - BASELINE_FALL * 0.2)
    now = window(limit, 0.1, now)  # far below anything noise explains
    assert limit.baseline_s == 0.1


def test_baseline_has_a_floor() -> None:
    """An instant local server: clock noise a fraction of a millisecond must not read as a
    latency many times the baseline."""
    limit = AdaptiveLimit(maximum=64, initial=4)
    now = window(limit, 0.0, 10.0)
    assert limit.baseline_s == BASELINE_FLOOR_S
    for _ in range(5):
        now = window(limit, 0.0012, now)
    assert limit.last_decision is Decision.GROW
    assert limit.limit == 10


def test_describe() -> None:
    limit, now = grown(12)
    window(limit, 1.6, now)
    state = limit.describe()
    assert state.limit == 6
    assert state.baseline_s == 1.0
    assert state.window_latency_s == 1.6
    assert state.last_decision is Decision.CUT_LATENCY
    assert (state.windows, state.cuts) == (2, 1)


# ---------------------------------------------------------------- a simulated server


@dataclass
class SlotServer:
    """N slots: a request started with `active` requests on the wire (itself included) takes
    base x max(1, active / N) x jitter. Past `fail_above` it fails at once instead."""

    slots: int
    base: float = 1.0
    jitter: float = 0.0  # latency x uniform(1 - jitter, 1 + jitter)
    fail_above: int | None = None
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    def latency(self, active: int) -> float | None:
        if self.fail_above is not None and active > self.fail_above:
            return None
        noise = self.rng.uniform(1 - self.jitter, 1 + self.jitter) if self.jitter else 1.0
        return self.base * max(1.0, active / self.slots) * noise


@dataclass
class Run:
    throughput: float  # answers a second after the warm-up
    mean_limit: float  # time-averaged after the warm-up
    peak_limit: int  # after the warm-up
    overloads: int


def simulate(
    limit: ConcurrencyLimit,
    server: SlotServer,
    *,
    duration: float = 2000.0,
    warm_up: float = 200.0,
    base_change: tuple[float, float] | None = None,
) -> Run:
    """A client that always has work: it keeps `limit.limit` requests on the wire.

    `base_change` = (at, base): the server's base latency changes at that time."""
    wire: list[tuple[float, int, float, bool]] = []  # (done at, seq, sent at, failed)
    seq = 0
    now = 0.0
    answered = overloads = peak = 0
    area = 0.0
    last = warm_up

    def fill() -> None:
        nonlocal seq
        while len(wire) < limit.limit:
            took = server.latency(len(wire) + 1)
            failed = took is None
            heapq.heappush(wire, (now + (0.01 if took is None else took), seq, now, failed))
            seq += 1

    fill()
    while wire and wire[0][0] <= duration:
        done_at, _, sent_at, failed = heapq.heappop(wire)
        if done_at > warm_up:
            area += limit.limit * (done_at - last)
            last = done_at
            peak = max(peak, limit.limit)
        now = done_at
        if base_change and now >= base_change[0]:
            server.base = base_change[1]
        if failed:
            overloads += 1
            limit.on_overload(now)
        else:
            limit.on_answer(now - sent_at, len(wire) + 1, now)
            answered += now > warm_up
        fill()
    span = duration - warm_up
    return Run(answered / span, area / span, peak, overloads)


N = 8


@pytest.mark.parametrize(("jitter", "seed"), [(0.0, 0), (0.3, 1), (0.3, 2), (0.5, 3)])
def test_settles_at_the_knee_of_a_slot_server(jitter: float, seed: int) -> None:
    best = simulate(FixedLimit(N), SlotServer(N, jitter=jitter, rng=random.Random(seed)))
    assert best.throughput == pytest.approx(N / 1.0, rel=0.05)  # the model is what it says

    run = simulate(AdaptiveLimit(maximum=64), SlotServer(N, jitter=jitter, rng=random.Random(seed)))
    assert run.throughput >= 0.9 * best.throughput
    assert run.mean_limit >= N
    assert run.peak_limit <= 3 * N


def test_a_fixed_limit_past_the_knee_gains_nothing() -> None:
    """Why AdaptiveLimit stops near N: the server's throughput is flat past its knee."""
    at_knee = simulate(FixedLimit(N), SlotServer(N))
    past = simulate(FixedLimit(4 * N), SlotServer(N))
    below = simulate(FixedLimit(N // 2), SlotServer(N))
    assert past.throughput == pytest.approx(at_knee.throughput, rel=0.02)
    assert below.throughput == pytest.approx(at_knee.throughput / 2, rel=0.02)


def test_settles_at_the_knee_of_a_large_server() -> None:
    slots = 64
    run = simulate(
        AdaptiveLimit(maximum=512),
        SlotServer(slots, jitter=0.3, rng=random.Random(5)),
        duration=800.0,
    )
    assert run.throughput >= 0.9 * slots
    assert run.mean_limit >= slots
    assert run.peak_limit <= 2 * slots


@pytest.mark.parametrize("new_base", [0.25, 0.5, 2.0, 4.0])
def test_follows_a_server_whose_base_latency_changes(new_base: float) -> None:
    run = simulate(
        AdaptiveLimit(maximum=64),
        SlotServer(N, jitter=0.3, rng=random.Random(11)),
        duration=3000.0,
        warm_up=1000.0 + 100 * new_base,  # measured after the change has been learned
        base_change=(1000.0, new_base),
    )
    assert run.throughput >= 0.9 * N / new_base
    assert run.peak_limit <= 3 * N


def test_backs_off_a_server_that_fails_under_load() -> None:
    fail_above = 2 * N
    run = simulate(
        AdaptiveLimit(maximum=64), SlotServer(N, fail_above=fail_above, rng=random.Random(3))
    )
    assert run.throughput >= 0.9 * N
    assert run.peak_limit <= fail_above  # latency stops it before the failures do
    assert run.overloads == 0


def test_recovers_from_failures_at_the_knee() -> None:
    """A server that fails as soon as it is full: only the overload cut holds the limit."""
    run = simulate(AdaptiveLimit(maximum=64), SlotServer(N, fail_above=N))
    assert run.throughput >= 0.75 * N
    assert run.peak_limit <= N + 1
    assert run.overloads > 0
