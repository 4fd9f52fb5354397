"""batchrun/testing: the mock endpoint's capacity model, rate-limit headers and CLI flags.

Like test_testing_endpoint.py, the endpoint runs on aiohttp's TestServer with a ManualClock:
a test moves the time while handlers sleep, and nothing waits for real.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from click.testing import CliRunner

import batchrun.testing
from batchrun.cli import main
from batchrun.testing import ManualClock, MockEndpoint, MockSettings
from batchrun.testing.capacity import Capacity
from batchrun.testing.ratelimit import duration_text

from .test_testing_endpoint import chat, content, on_endpoint, submit

# ---------------------------------------------------------------- the model (pure logic)


def test_latency_is_stretched_only_past_the_slots() -> None:
    capacity = Capacity()
    latencies = [capacity.start(0.0, 10.0, slots=2) for _ in range(4)]
    assert latencies == [10.0, 10.0, 15.0, 20.0]
    assert capacity.snapshot(0.0) == {"active": 4, "peak_active": 4, "overloaded": 0}
    assert capacity.active(10.0) == 2  # the first two are done at 10
    assert capacity.start(10.0, 10.0, slots=2) == 15.0  # two left, this one the third
    assert capacity.snapshot(30.0) == {"active": 0, "peak_active": 4, "overloaded": 0}


def test_without_slots_latency_stays_whatever_the_load() -> None:
    capacity = Capacity()
    assert [capacity.start(0.0, 2.0, slots=0) for _ in range(3)] == [2.0, 2.0, 2.0]
    assert capacity.active(0.0) == 3


def test_throughput_is_flat_past_the_slots() -> None:
    """Closed loop: each client sends again when answered; answers per second level at N/L."""

    def answers_per_second(clients: int, slots: int = 4, latency: float = 1.0) -> float:
        capacity, now, done = Capacity(), 0.0, 0
        ends = [capacity.start(now, latency, slots) for _ in range(clients)]
        while now < 100:
            now = min(ends)
            i = ends.index(now)
            done += 1
            ends[i] = now + capacity.start(now, latency, slots)
        return done / now

    rates = [answers_per_second(c) for c in (1, 2, 4, 8, 16)]
    assert rates[:3] == pytest.approx([1.0, 2.0, 4.0], rel=0.02)
    assert rates[3:] == pytest.approx([4.0, 4.0], rel=0.1)


def test_overload_counts_refusals_and_an_instant_answer_takes_no_slot() -> None:
    capacity = Capacity()
    assert capacity.start(0.0, 0.0, slots=1) == 0.0
    assert not capacity.refuses(0.0, overload=1)
    capacity.start(0.0, 5.0, slots=1)
    assert [capacity.refuses(1.0, overload=n) for n in (0, 1, 2)] == [False, True, False]
    assert capacity.overloaded == 1
    capacity.reset_counters(1.0)
    assert capacity.snapshot(1.0) == {"active": 1, "peak_active": 1, "overloaded": 0}


# ---------------------------------------------------------------- the endpoint on a manual clock


def test_shared_slots_stretch_latency_on_the_endpoints_clock() -> None:
    async def test(
        client: TestClient[Any, Any], endpoint: MockEndpoint, clock: ManualClock
    ) -> None:
        tasks = [asyncio.create_task(submit(client, f"q{i}")) for i in range(4)]
        await clock.until_sleeping(4)  # latencies 10, 10, 15, 20 (2 slots, 4 at once)
        assert endpoint.snapshot()["active"] == 4
        sleeping = []
        for step in (10, 5, 5):
            clock.advance(step)
            sleeping.append(clock.sleeping)
            assert endpoint.snapshot()["active"] == clock.sleeping
        assert sleeping == [2, 1, 0]
        answers = await asyncio.gather(*tasks)
        assert [r.status for r in answers] == [200] * 4
        assert await content(answers[0]) == "Answer to: q0"
        assert endpoint.snapshot()["peak_active"] == 4

    on_endpoint(test, latency=10, slots=2)


def test_a_request_answered_202_still_occupies_its_slot() -> None:
    async def test(
        client: TestClient[Any, Any], endpoint: MockEndpoint, clock: ManualClock
    ) -> None:
        assert (await submit(client, "a [mock:202]")).status == 202
        assert endpoint.snapshot()["active"] == 1
        waiting = asyncio.create_task(submit(client, "b"))
        await clock.until_sleeping()
        clock.advance(10)  # the 202's generation ends; b, started second of 2, needs 20
        assert clock.sleeping == 1
        clock.advance(10)
        assert (await waiting).status == 200

    on_endpoint(test, latency=10, slots=1)


def test_overload_answers_503_at_once_without_billing_or_using_a_marker() -> None:
    async def test(
        client: TestClient[Any, Any], endpoint: MockEndpoint, clock: ManualClock
    ) -> None:
        busy = [asyncio.create_task(submit(client, f"q{i}")) for i in range(2)]
        await clock.until_sleeping(2)
        refused = await submit(client, "c [mock:500x1]")
        assert refused.status == 503
        assert refused.content_type == "application/problem+json"
        assert (await refused.json())["detail"] == "Overloaded: 2 requests in progress"
        assert "Retry-After" not in refused.headers
        stats = endpoint.snapshot()
        assert (stats["overloaded"], stats["codes"]["503"], stats["billed"]) == (1, 1, 0)
        assert stats["prompts"]["c [mock:500x1]"]["submissions"] == 1
        clock.advance(10)
        assert [r.status for r in await asyncio.gather(*busy)] == [200, 200]
        assert (await submit(client, "c [mock:500x1]", hold=0)).status == 500  # marker unused

    on_endpoint(test, latency=10, overload=2)


# ---------------------------------------------------------------- the CLI flags


def test_mock_server_flags_reach_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[MockSettings] = []

    async def fake_serve(settings: MockSettings, *args: Any, **kwargs: Any) -> None:
        seen.append(settings)

    monkeypatch.setattr(batchrun.testing, "serve", fake_serve)
    args = ["--slots", "4", "--overload", "16", "--ratelimit-headers", "--rpm-limit", "9"]
    result = CliRunner().invoke(main, ["mock-server", *args])
    assert result.exit_code == 0, result.output
    settings = seen[0]
    assert (settings.slots, settings.overload, settings.ratelimit_headers) == (4, 16, True)
    assert settings.rpm_limit == 9


# ---------------------------------------------------------------- rate-limit headers


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (-1, "0s"),
        (0.0004, "1ms"),
        (0.25, "250ms"),
        (1, "1s"),
        (59.25, "59.25s"),
        (60, "1m0s"),
        (86.4, "1m26.4s"),
        (360, "6m0s"),
        (3600.5, "1h0m0.5s"),
    ],
)
def test_durations_are_written_as_openai_writes_them(seconds: float, text: str) -> None:
    assert duration_text(seconds) == text


def limits_of(resp: ClientResponse) -> tuple[str, str, str]:
    h = resp.headers
    return (
        h["x-ratelimit-limit-requests"],
        h["x-ratelimit-remaining-requests"],
        h["x-ratelimit-reset-requests"],
    )


def test_chat_answers_carry_the_rpm_windows_state() -> None:
    async def test(
        client: TestClient[Any, Any], endpoint: MockEndpoint, clock: ManualClock
    ) -> None:
        first = await submit(client, "a")
        assert (first.status, limits_of(first)) == (200, ("3", "2", "1m0s"))
        clock.advance(0.75)
        accepted = await submit(client, "b [mock:202]")
        assert (accepted.status, limits_of(accepted)) == (202, ("3", "1", "59.25s"))
        clock.advance(59)
        assert limits_of(await submit(client, "c")) == ("3", "0", "250ms")
        refused = await submit(client, "d")
        assert (refused.status, limits_of(refused)) == (429, ("3", "0", "250ms"))
        assert refused.headers["Retry-After"] == "1"
        clock.advance(0.25)  # "a" leaves the window; the oldest is now "b", at 0.75
        body = chat("e", stream=True)
        streamed = await client.post("/v1/chat/completions", json=body)
        assert (streamed.status, limits_of(streamed)) == (200, ("3", "0", "750ms"))
        assert (await streamed.text()).endswith("data: [DONE]\n\n")

    on_endpoint(test, rpm_limit=3, ratelimit_headers=True)


@pytest.mark.parametrize(("rpm_limit", "headers"), [(5, False), (0, True)])
def test_no_rate_limit_headers_unless_asked_for_with_a_limit(rpm_limit: int, headers: bool) -> None:
    async def test(
        client: TestClient[Any, Any], endpoint: MockEndpoint, clock: ManualClock
    ) -> None:
        resp = await submit(client, "a")
        assert resp.status == 200
        assert not [h for h in resp.headers if h.lower().startswith("x-ratelimit")]

    on_endpoint(test, rpm_limit=rpm_limit, ratelimit_headers=headers)
