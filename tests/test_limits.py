"""batchrun/limits.py: the sliding-window promise, the 429 slow-down, and Capacity.

Nothing here sleeps: RateWindow takes the clock as an argument, and RateLimiter gets a fake
clock and a sleep that only advances it.
"""

from __future__ import annotations

import asyncio
import bisect
import random
from collections.abc import Sequence

import pytest

from batchrun.limits import (
    COOL_DOWN_BASE_S,
    COOL_DOWN_MAX_S,
    MIN_FACTOR,
    RECOVERY_S,
    WINDOW_S,
    Capacity,
    RateLimiter,
    RateWindow,
    Reservation,
)


def max_in_any_window(times: Sequence[float], width: float = WINDOW_S) -> int:
    """Most starts inside any closed window [a, a + width] (it suffices to try a = a start)."""
    ordered = sorted(times)
    return max(
        (bisect.bisect_right(ordered, t + width) - i for i, t in enumerate(ordered)), default=0
    )


def max_tokens_in_any_window(
    booked: Sequence[tuple[float, float]], width: float = WINDOW_S
) -> float:
    ordered = sorted(booked)
    starts = [t for t, _ in ordered]
    best = 0.0
    for i, (t, _) in enumerate(ordered):
        j = bisect.bisect_right(starts, t + width)
        best = max(best, sum(tokens for _, tokens in ordered[i:j]))
    return best


def arrivals(rng: random.Random, n: int) -> list[float]:
    """Non-decreasing arrival times: quiet gaps, steady trickles and big bursts."""
    now = 0.0
    out: list[float] = []
    while len(out) < n:
        kind = rng.random()
        if kind < 0.2:  # a burst: many calls at the same instant
            out += [now] * rng.randint(5, 120)
        elif kind < 0.5:  # a trickle
            for _ in range(rng.randint(1, 30)):
                now += rng.expovariate(1.0)
                out.append(now)
        elif kind < 0.6:  # a long quiet gap
            now += rng.uniform(30, 200)
        else:
            now += rng.uniform(0, 3)
            out.append(now)
    return out[:n]


class FixedRng(random.Random):
    """`uniform(a, b)` returns b: the backoff ceiling, exactly."""

    def uniform(self, a: float, b: float) -> float:
        return b


# ---------------------------------------------------------------- the rpm promise


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("rpm", [1, 3, 40, 100])
def test_no_window_holds_more_than_rpm(seed: int, rpm: int) -> None:
    rng = random.Random(seed * 1000 + rpm)
    window = RateWindow(rpm, rng=random.Random(seed))
    ats = []
    last = -1.0
    for now in arrivals(rng, 600):
        r = window.reserve(now)
        assert r.at >= now
        assert r.at >= last  # starts are handed out in order
        last = r.at
        ats.append(r.at)
    assert max_in_any_window(ats) <= rpm
    assert max_in_any_window(ats) == rpm or rpm > 40  # the limit is actually reached


@pytest.mark.parametrize("seed", range(4))
def test_no_window_holds_more_than_rpm_with_429s_and_pauses(seed: int) -> None:
    rng = random.Random(seed)
    window = RateWindow(40, rng=random.Random(seed))
    ats = []
    for now in arrivals(rng, 800):
        roll = rng.random()
        if roll < 0.02:
            window.on_rate_limited(now, rng.choice([None, 0.0, 5.0, 30.0]))
        elif roll < 0.2:
            window.on_success()
        elif roll < 0.22:
            window.pause(now + rng.uniform(0, 20))
        ats.append(window.reserve(now).at)
    assert max_in_any_window(ats) <= 40


def test_large_burst_fills_every_window_to_rpm_and_no_more() -> None:
    window = RateWindow(40)
    ats = [window.reserve(0.0).at for _ in range(500)]
    assert ats == sorted(ats)
    assert max_in_any_window(ats) == 40
    # Throughput: close to rpm per minute over 10 minutes.
    in_ten_minutes = sum(1 for t in ats if t < 600.0)
    assert in_ten_minutes >= 0.95 * 400
    assert in_ten_minutes <= 400
    # Spread over the minute, not fired at once: GCRA spacing 60/40 = 1.5 s, burst 2.
    assert ats[:4] == [0.0, 0.0, 1.5, 3.0]
    assert ats[39] == pytest.approx(57.0)
    assert ats[40] > 60.0  # the 41st waits for the first to leave the window


def test_reserve_never_before_now() -> None:
    window = RateWindow(10)
    for i in range(5):
        assert window.reserve(1000.0 + i).at >= 1000.0 + i


def test_idle_then_reserve_starts_at_once() -> None:
    window = RateWindow(40)
    for _ in range(40):
        window.reserve(0.0)
    assert window.reserve(10_000.0).at == 10_000.0


def test_no_rpm_means_no_request_limit() -> None:
    window = RateWindow(None)
    assert [window.reserve(5.0).at for _ in range(1000)] == [5.0] * 1000


def test_naive_leaky_bucket_would_break_the_window() -> None:
    """A model of aiolimiter's `AsyncLimiter(rpm, 60)`: it admits `rpm` at once, then drains
    at rpm/60 per second, so one 60 s window sees almost 2 x rpm starts. RateWindow does not."""
    rpm = 40
    level, last, naive = 0.0, 0.0, []
    t = 0.0
    for _ in range(200):
        level = max(0.0, level - (t - last) * rpm / 60)
        last = t
        if level + 1 > rpm:
            t += (level + 1 - rpm) * 60 / rpm  # wait until one unit has leaked out
            level = max(0.0, level - (level + 1 - rpm))
            last = t
        level += 1
        naive.append(t)
    assert max_in_any_window(naive) >= 79  # the promise would be broken
    window = RateWindow(rpm)
    assert max_in_any_window([window.reserve(0.0).at for _ in range(200)]) == rpm


# ---------------------------------------------------------------- the tpm window


@pytest.mark.parametrize("seed", range(5))
def test_no_window_holds_more_than_tpm(seed: int) -> None:
    rng = random.Random(seed)
    tpm = 10_000
    window = RateWindow(None, tpm)
    booked = []
    for now in arrivals(rng, 400):
        tokens = rng.choice([0, 50, 800, 2500, 6000, 10_000])
        r = window.reserve(now, tokens)
        assert r.at >= now
        assert r.tokens == tokens
        booked.append((r.at, float(r.tokens)))
    assert max_tokens_in_any_window(booked) <= tpm


@pytest.mark.parametrize("seed", range(3))
def test_rpm_and_tpm_together(seed: int) -> None:
    rng = random.Random(100 + seed)
    window = RateWindow(30, 20_000)
    booked = []
    for now in arrivals(rng, 300):
        r = window.reserve(now, rng.randint(0, 4000))
        booked.append((r.at, float(r.tokens)))
    assert max_in_any_window([t for t, _ in booked]) <= 30
    assert max_tokens_in_any_window(booked) <= 20_000


def test_tokens_wait_for_the_window() -> None:
    window = RateWindow(None, 1000)
    assert window.reserve(0.0, 600).at == 0.0
    assert window.reserve(1.0, 300).at == 1.0
    later = window.reserve(2.0, 300)  # 1200 > 1000: wait until the first booking leaves
    assert later.at == pytest.approx(60.1)


def test_settle_smaller_actual_frees_capacity() -> None:
    window = RateWindow(None, 1000)
    first = window.reserve(0.0, 900)
    window.settle(first, 100)
    assert window.reserve(1.0, 800).at == 1.0


def test_settle_larger_actual_delays_later_bookings() -> None:
    window = RateWindow(None, 1000)
    first = window.reserve(0.0, 100)
    assert window.reserve(1.0, 100).at == 1.0
    window.settle(first, 900)  # 900 + 100 booked: no room for 200 more
    assert window.reserve(2.0, 200).at == pytest.approx(60.1)


def test_settle_without_usage_or_entry_is_noop() -> None:
    window = RateWindow(None, 1000)
    first = window.reserve(0.0, 900)
    window.settle(first, None)
    assert window.reserve(1.0, 200).at == pytest.approx(60.1)
    window.settle(Reservation(5.0), 10)  # no token entry (rpm-only booking): ignored


def test_settle_after_the_booking_left_the_window_is_ignored() -> None:
    window = RateWindow(None, 1000)
    first = window.reserve(0.0, 500)
    assert window.reserve(100.0, 1000).at == 100.0  # dropped the first entry
    window.settle(first, 1000)  # too late to matter
    assert window.reserve(160.2, 1000).at == pytest.approx(160.2)


def test_amount_above_tpm_is_clamped() -> None:
    window = RateWindow(None, 1000)
    r = window.reserve(0.0, 50_000)
    assert (r.at, r.tokens) == (0.0, 1000)
    r2 = window.reserve(0.0, 50_000)
    assert (r2.at, r2.tokens) == (pytest.approx(60.1), 1000)


def test_negative_tokens_count_as_zero() -> None:
    window = RateWindow(None, 100)
    assert window.reserve(0.0, -500).tokens == 0
    assert window.reserve(0.0, 100).at == 0.0


# ---------------------------------------------------------------- 429: pause and slow down


def test_on_rate_limited_with_retry_after() -> None:
    window = RateWindow(40)
    pause = window.on_rate_limited(100.0, 12.0)
    assert pause == 12.0
    assert window.paused_until == 112.0
    assert window.reserve(101.0).at == 112.0


def test_on_rate_limited_halves_and_recovers_linearly() -> None:
    window = RateWindow(40)
    assert window.factor(0.0) == 1.0
    window.on_rate_limited(100.0, 10.0)
    assert window.factor(100.0) == 0.5
    assert window.factor(110.0) == 0.5  # slow through the pause
    assert window.factor(110.0 + RECOVERY_S / 2) == pytest.approx(0.75)
    assert window.factor(110.0 + RECOVERY_S) == 1.0
    assert window.factor(110.0 + 10 * RECOVERY_S) == 1.0


def test_repeated_429s_keep_halving_to_a_floor() -> None:
    window = RateWindow(40, rng=FixedRng())
    factors = []
    for i in range(10):
        window.on_rate_limited(float(i), 5.0)  # each 429 arrives during the pause
        factors.append(window.factor(float(i)))
    assert factors[:4] == [0.5, 0.25, 0.125, 0.0625]
    assert factors[-1] == MIN_FACTOR


def test_slow_rate_spaces_starts_further() -> None:
    window = RateWindow(60, burst=1)
    window.on_rate_limited(0.0, 1.0)  # factor 0.5 -> interval 2 s instead of 1 s
    ats = [window.reserve(1.0).at for _ in range(3)]
    assert ats == [1.0, 3.0, 5.0]


def test_backoff_without_retry_after_grows_and_is_capped() -> None:
    window = RateWindow(40, rng=FixedRng())
    pauses = [window.on_rate_limited(0.0, None) for _ in range(8)]
    expected = [min(COOL_DOWN_MAX_S, COOL_DOWN_BASE_S * 2**i) for i in range(8)]
    assert pauses == expected == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert window.paused_until == 60.0


def test_backoff_is_jittered_within_half_to_full_ceiling() -> None:
    window = RateWindow(40, rng=random.Random(7))
    pauses = [window.on_rate_limited(0.0, None) for _ in range(8)]
    for i, pause in enumerate(pauses):
        ceiling = min(COOL_DOWN_MAX_S, COOL_DOWN_BASE_S * 2**i)
        assert ceiling / 2 <= pause <= ceiling
    assert len(set(pauses)) == len(pauses)


def test_on_success_resets_consecutive_count() -> None:
    window = RateWindow(40, rng=FixedRng())
    assert [window.on_rate_limited(0.0, None) for _ in range(3)] == [2.0, 4.0, 8.0]
    window.on_success()
    assert window.on_rate_limited(100.0, None) == 2.0
    assert window.paused_until == 102.0


def test_retry_after_counts_as_a_consecutive_429() -> None:
    window = RateWindow(40, rng=FixedRng())
    window.on_rate_limited(0.0, 1.0)
    assert window.on_rate_limited(0.0, None) == 4.0


def test_pause_only_extends() -> None:
    window = RateWindow(40)
    window.pause(50.0)
    window.pause(20.0)
    assert window.paused_until == 50.0
    assert window.reserve(0.0).at == 50.0
    window.on_rate_limited(0.0, 5.0)  # a shorter Retry-After does not shorten the pause
    assert window.paused_until == 50.0


# ---------------------------------------------------------------- RateLimiter (fake clock)


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_rate_limiter_acquire_sleeps_until_booked_start() -> None:
    clock = FakeClock()
    limiter = RateLimiter(RateWindow(60, burst=1), clock=clock, sleep=clock.sleep)

    async def main() -> list[float]:
        return [(await limiter.acquire()).at for _ in range(4)]

    assert asyncio.run(main()) == [1000.0, 1001.0, 1002.0, 1003.0]
    assert clock.sleeps == [1.0, 1.0, 1.0]
    assert clock.now == 1003.0


def test_rate_limiter_books_again_after_a_pause_set_while_sleeping() -> None:
    clock = FakeClock()
    window = RateWindow(60, burst=1)
    limiter = RateLimiter(window, clock=clock, sleep=clock.sleep)

    async def paused_sleep(seconds: float) -> None:
        await clock.sleep(seconds)
        if len(clock.sleeps) == 1:  # a 429 elsewhere while this caller slept
            window.pause(clock.now + 30.0)

    limiter._sleep = paused_sleep  # the injected sleep, with a twist

    async def main() -> tuple[Reservation, Reservation]:
        first = await limiter.acquire()
        second = await limiter.acquire()
        return first, second

    first, second = asyncio.run(main())
    assert first.at == 1000.0
    # The second booked 1001, slept, found the job paused until 1031 and booked again.
    assert second.at == 1031.0
    assert clock.sleeps == [1.0, 30.0]
    assert clock.now == 1031.0


def test_rate_limiter_on_rate_limited_and_pause_use_its_clock() -> None:
    clock = FakeClock(500.0)
    window = RateWindow(40)
    limiter = RateLimiter(window, clock=clock, sleep=clock.sleep)
    assert limiter.on_rate_limited(7.0) == 7.0
    assert window.paused_until == 507.0
    limiter.pause(100.0)
    assert window.paused_until == 600.0

    async def main() -> float:
        return (await limiter.acquire()).at

    assert asyncio.run(main()) == 600.0
    assert clock.sleeps == [100.0]


def test_rate_limiter_books_prompt_plus_expected_completion_and_settles() -> None:
    clock = FakeClock(0.0)
    window = RateWindow(None, 10_000)
    limiter = RateLimiter(window, clock=clock, sleep=clock.sleep, expected_completion=500)

    async def main() -> Reservation:
        return await limiter.acquire(prompt_tokens=1000)

    r = asyncio.run(main())
    assert r.tokens == 1500
    window._consecutive_429 = 3
    limiter.settle(r, total=1100, completion=100)
    assert limiter.expected_completion == pytest.approx(460.0)  # moves 10% toward usage
    assert window._consecutive_429 == 0  # a success resets the 429 streak
    assert window._token_sum == 1100


# ---------------------------------------------------------------- Capacity


def test_capacity_waits_when_full_and_proceeds_after_release() -> None:
    async def main() -> None:
        cap = Capacity(2)
        assert await cap.acquire()
        assert await cap.acquire()
        waiter = asyncio.create_task(cap.acquire())
        for _ in range(5):
            await asyncio.sleep(0)
        assert not waiter.done()
        assert cap.used == 2
        cap.release()
        assert await asyncio.wait_for(waiter, 1.0) is True
        assert cap.used == 2

    asyncio.run(main())


def test_capacity_take_never_waits_and_can_exceed() -> None:
    async def main() -> None:
        cap = Capacity(1)
        assert await cap.acquire()
        cap.take()
        cap.take()
        assert cap.used == 3
        waiter = asyncio.create_task(cap.acquire())
        await asyncio.sleep(0)
        cap.release()  # 2 used, still at or above the limit: the waiter keeps waiting
        for _ in range(5):
            await asyncio.sleep(0)
        assert not waiter.done()
        cap.release()
        for _ in range(5):
            await asyncio.sleep(0)
        assert not waiter.done()
        cap.release()
        assert await asyncio.wait_for(waiter, 1.0) is True
        assert cap.used == 1

    asyncio.run(main())


def test_capacity_close_wakes_waiters_with_false() -> None:
    async def main() -> None:
        cap = Capacity(1)
        assert await cap.acquire()
        waiters = [asyncio.create_task(cap.acquire()) for _ in range(3)]
        await asyncio.sleep(0)
        cap.close()
        assert await asyncio.wait_for(asyncio.gather(*waiters), 1.0) == [False] * 3
        assert cap.used == 1
        cap.release()
        assert await cap.acquire() is False  # closed: no more slots even when free

    asyncio.run(main())


def test_capacity_cancelled_waiter_before_wake_is_removed() -> None:
    async def main() -> None:
        cap = Capacity(1)
        assert await cap.acquire()
        a = asyncio.create_task(cap.acquire())
        b = asyncio.create_task(cap.acquire())
        await asyncio.sleep(0)
        a.cancel()
        await asyncio.sleep(0)
        assert a.cancelled()
        cap.release()
        assert await asyncio.wait_for(b, 1.0) is True
        assert cap.used == 1

    asyncio.run(main())


def test_capacity_woken_then_cancelled_waiter_passes_the_slot_on() -> None:
    async def main() -> None:
        cap = Capacity(1)
        assert await cap.acquire()
        a = asyncio.create_task(cap.acquire())
        b = asyncio.create_task(cap.acquire())
        await asyncio.sleep(0)  # both are waiting, a first
        cap.release()  # wakes a ...
        a.cancel()  # ... which is cancelled before it runs
        await asyncio.sleep(0)
        assert a.cancelled()
        # No lost wake-up: b gets the slot that a never took.
        assert await asyncio.wait_for(b, 1.0) is True
        assert cap.used == 1

    asyncio.run(main())
