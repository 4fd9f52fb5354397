"""batchrun/testing: the mock endpoint's own tests.

The endpoint runs on aiohttp's TestServer (127.0.0.1, a free port) inside asyncio.run, with a
ManualClock: time moves only when a test advances it, so nothing here waits for real. A test
that must move time while a handler sleeps first awaits `clock.until_sleeping()`. The few
MockServer tests run the endpoint in its thread on real time, and never wait on it either.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

import batchrun.testing
from batchrun.testing import (
    ManualClock,
    MockEndpoint,
    MockServer,
    MockSettings,
    OffsetClock,
    SystemClock,
)
from batchrun.testing.faults import MarkerSpec, MarkerUses, parse_markers

EndpointTest = Callable[[TestClient[Any, Any], MockEndpoint, ManualClock], Awaitable[None]]


def on_endpoint(test: EndpointTest, **settings: Any) -> None:
    """Run `test(client, endpoint, clock)` against a fresh endpoint on a ManualClock."""

    async def main() -> None:
        clock = ManualClock()
        endpoint = MockEndpoint(MockSettings(seed=1, **settings), clock)
        async with TestClient(TestServer(endpoint.app())) as client:
            await test(client, endpoint, clock)

    asyncio.run(main())


def chat(prompt: str, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": prompt}], **extra}


def hold_for(seconds: int) -> dict[str, str]:
    """How long a submission or a poll may be held before the endpoint answers 202."""
    return {"NVCF-POLL-SECONDS": str(seconds)}


async def submit(client: TestClient[Any, Any], prompt: str, hold: int = 300) -> ClientResponse:
    return await client.post("/v1/chat/completions", json=chat(prompt), headers=hold_for(hold))


async def poll(client: TestClient[Any, Any], request_id: str, hold: int = 0) -> ClientResponse:
    return await client.get(f"/v1/status/{request_id}", headers=hold_for(hold))


async def content(resp: ClientResponse) -> str:
    answer = await resp.json()
    return str(answer["choices"][0]["message"]["content"])


async def assert_not_found(resp: ClientResponse) -> None:
    assert resp.status == 404
    assert resp.content_type == "application/problem+json"
    assert (await resp.json())["status"] == 404


def test_the_public_names_are_listed_sorted_and_importable() -> None:
    names = batchrun.testing.__all__
    assert names == sorted(names)
    assert all(hasattr(batchrun.testing, name) for name in names)


# ---------------------------------------------------------------- markers (pure logic)


def test_markers_are_parsed_with_their_count_and_value() -> None:
    prompt = "a [mock:429x2=0.5] b [mock:slow=3] c [mock:drop] [mock:nope"
    assert parse_markers(prompt) == [
        MarkerSpec(text="[mock:429x2=0.5]", code="429", times=2, value=0.5),
        MarkerSpec(text="[mock:slow=3]", code="slow", times=None, value=3.0),
        MarkerSpec(text="[mock:drop]", code="drop", times=None, value=None),
    ]
    assert parse_markers("no markers [mock:] [Mock:429]") == []


def test_a_counted_marker_gives_way_to_the_next_after_n_submissions() -> None:
    uses = MarkerUses()
    prompt = "q [mock:500x2] [mock:429x1=7]"
    taken = [uses.take(prompt) for _ in range(4)]
    assert [(m.code, m.value) if m else None for m in taken] == [
        ("500", None),
        ("500", None),
        ("429", 7.0),
        None,
    ]
    assert uses.take("other [mock:500x2]") == ("500", None)  # counted per prompt
    assert uses.take("plain") is None


def test_an_uncounted_marker_applies_every_time() -> None:
    uses = MarkerUses()
    assert all(uses.take("q [mock:202]") == ("202", None) for _ in range(5))


# ---------------------------------------------------------------- clocks


def test_manual_clock_sleeps_until_advanced_past_the_deadline() -> None:
    async def main() -> None:
        clock = ManualClock(start=10.0, wall_start=1000.0)
        sleeper = asyncio.create_task(clock.sleep(5))
        await clock.until_sleeping()
        clock.advance(4.9)
        await asyncio.sleep(0)  # let a (wrong) wake-up run
        await asyncio.sleep(0)
        assert not sleeper.done() and clock.sleeping == 1
        clock.advance(0.1)
        assert clock.sleeping == 0  # woken, though its task has not run yet
        await asyncio.wait_for(sleeper, timeout=5)
        assert (clock.monotonic(), clock.wall()) == (15.0, 1005.0)
        await clock.sleep(0)  # nothing to wait for

    asyncio.run(main())


def test_manual_clock_forgets_a_cancelled_sleep() -> None:
    async def main() -> None:
        clock = ManualClock()
        sleeper = asyncio.create_task(clock.sleep(1))
        await clock.until_sleeping()
        sleeper.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sleeper
        assert clock.sleeping == 0

    asyncio.run(main())


def test_clocks_only_move_forward() -> None:
    for clock in (ManualClock(), OffsetClock()):
        with pytest.raises(ValueError):
            clock.advance(-1)


def test_offset_clock_is_real_time_plus_what_was_advanced() -> None:
    clock = OffsetClock()
    assert abs(clock.monotonic() - time.monotonic()) < 1
    clock.advance(3600)
    assert 3599 < clock.monotonic() - time.monotonic() < 3601
    assert 3599 < clock.wall() - time.time() < 3601


# ---------------------------------------------------------------- the endpoint on a manual clock


def test_the_rpm_window_forgets_submissions_once_the_clock_passes_60_s() -> None:
    async def test(
        client: TestClient[Any, Any], endpoint: MockEndpoint, clock: ManualClock
    ) -> None:
        assert [(await submit(client, f"q{i}")).status for i in range(3)] == [200, 200, 429]
        refused = await submit(client, "q3")
        assert (refused.status, refused.headers["Retry-After"]) == (429, "1")
        clock.advance(59.9)
        assert (await submit(client, "q4")).status == 429
        clock.advance(0.1)  # the first two are a full minute old
        assert [(await submit(client, f"q{i}")).status for i in (5, 6, 7)] == [200, 200, 429]
        assert endpoint.snapshot()["submit_times"] == [0.0, 0.0, 0.0, 0.0, 59.9, 60, 60, 60]

    on_endpoint(test, rpm_limit=2)


def test_an_id_not_polled_for_expire_after_is_forgotten() -> None:
    async def test(
        client: TestClient[Any, Any], endpoint: MockEndpoint, clock: ManualClock
    ) -> None:
        accepted = await submit(client, "q [mock:202]")
        request_id = accepted.headers["NVCF-REQID"]
        assert accepted.status == 202
        clock.advance(10)  # not more than expire_after: still known
        assert (await poll(client, request_id)).status == 202  # pending_polls=1, and touched
        clock.advance(10)
        resp = await poll(client, request_id)
        assert (resp.status, await content(resp)) == (200, "Answer to: q [mock:202]")

        forgotten = (await submit(client, "r [mock:202]")).headers["NVCF-REQID"]
        clock.advance(10.5)
        await assert_not_found(await poll(client, forgotten))
        assert endpoint.snapshot()["pending"] == 0

    on_endpoint(test, expire_after=10)


def test_a_slow_request_past_the_hold_answers_202_and_is_ready_after_its_latency() -> None:
    async def test(
        client: TestClient[Any, Any], endpoint: MockEndpoint, clock: ManualClock
    ) -> None:
        submitted = asyncio.create_task(submit(client, "q [mock:slow=5]", hold=1))
        await clock.until_sleeping()  # the handler holds the request for 1 s
        clock.advance(1)
        accepted = await submitted
        assert accepted.status == 202
        request_id = accepted.headers["NVCF-REQID"]
        assert (await poll(client, request_id, hold=0)).status == 202  # 4 s still to go
        clock.advance(3.9)
        assert (await poll(client, request_id, hold=0)).status == 202
        clock.advance(0.1)
        ready = await poll(client, request_id, hold=0)
        assert (ready.status, await content(ready)) == (200, "Answer to: q [mock:slow=5]")
        await assert_not_found(await poll(client, request_id))  # handed out once
        stats = endpoint.snapshot()["prompts"]["q [mock:slow=5]"]
        assert (stats["submissions"], stats["billed"], stats["delivered"]) == (1, 1, 1)

    on_endpoint(test)


def test_a_poll_held_open_answers_when_the_result_becomes_ready() -> None:
    async def test(
        client: TestClient[Any, Any], endpoint: MockEndpoint, clock: ManualClock
    ) -> None:
        submitted = asyncio.create_task(submit(client, "q [mock:slow=8]", hold=2))
        await clock.until_sleeping()
        clock.advance(2)
        request_id = (await submitted).headers["NVCF-REQID"]
        polled = asyncio.create_task(poll(client, request_id, hold=30))
        await clock.until_sleeping()  # the poll waits for the 6 s left, within its hold
        clock.advance(6)
        assert (await polled).status == 200

    on_endpoint(test)


def test_latency_is_spent_on_the_endpoints_clock() -> None:
    async def test(
        client: TestClient[Any, Any], endpoint: MockEndpoint, clock: ManualClock
    ) -> None:
        submitted = asyncio.create_task(submit(client, "q"))
        await clock.until_sleeping()
        assert not submitted.done()
        clock.advance(2.5)
        answer = await (await submitted).json()
        assert answer["created"] == int(clock.wall())
        assert answer["choices"][0]["message"]["content"] == "Answer to: q"

    on_endpoint(test, latency=2.5)


def test_a_stream_is_the_answer_in_pieces_with_usage() -> None:
    async def test(
        client: TestClient[Any, Any], endpoint: MockEndpoint, clock: ManualClock
    ) -> None:
        body = chat("one two", stream=True, stream_options={"include_usage": True})
        resp = await client.post("/v1/chat/completions", json=body)
        events = (await resp.text()).strip().split("\n\n")
        assert events[-1] == "data: [DONE]"
        assert '"content": "Answer "' in events[1] and '"total_tokens": 6' in events[-2]
        assert endpoint.snapshot()["delivered"] == 1

    on_endpoint(test)


# ---------------------------------------------------------------- ids issued by an earlier process


def test_a_held_id_is_answered_once_then_forgotten() -> None:
    async def test(
        client: TestClient[Any, Any], endpoint: MockEndpoint, clock: ManualClock
    ) -> None:
        endpoint.hold("earlier-1", "What is 2 plus 2?")
        resp = await poll(client, "earlier-1")
        assert (resp.status, resp.headers["NVCF-REQID"]) == (200, "earlier-1")
        answer = await resp.json()
        assert answer["choices"][0]["message"]["content"] == "Answer to: What is 2 plus 2?"
        assert answer["usage"]["prompt_tokens"] == 5
        await assert_not_found(await poll(client, "earlier-1"))
        stats = endpoint.snapshot()
        assert stats["prompts"]["What is 2 plus 2?"] == {
            "submissions": 0,
            "billed": 1,
            "delivered": 1,
            "last_body": {},
        }
        assert (stats["polled_ids"], stats["pending"]) == (["earlier-1"], 0)

    on_endpoint(test)


def test_a_held_id_not_ready_answers_202_first_on_the_pexec_route_too() -> None:
    async def test(
        client: TestClient[Any, Any], endpoint: MockEndpoint, clock: ManualClock
    ) -> None:
        body = chat("q", model="big/model", chat_template_kwargs={"enable_thinking": True})
        endpoint.hold("earlier-2", "q", body, ready=False)
        route = "/v2/nvcf/pexec/status/earlier-2"
        statuses = [(await client.get(route, headers=hold_for(0))).status for _ in range(2)]
        assert statuses == [202, 202]  # pending_polls=2
        answer = await (await client.get(route, headers=hold_for(0))).json()
        assert answer["model"] == "big/model"
        assert answer["choices"][0]["message"]["reasoning_content"] == "Thinking about: q"
        await assert_not_found(await client.get(route))
        endpoint.hold("earlier-3", "q")
        with pytest.raises(ValueError, match="already pending"):
            endpoint.hold("earlier-3", "q")

    on_endpoint(test, pending_polls=2)


# ---------------------------------------------------------------- MockServer (its own thread)


def status_of_submit(server: MockServer, prompt: str) -> int:
    request = urllib.request.Request(
        server.base_url + "/chat/completions",
        data=json.dumps(chat(prompt)).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_mock_server_advance_moves_the_endpoints_clock() -> None:
    with MockServer(MockSettings(rpm_limit=1)) as server:
        assert [status_of_submit(server, p) for p in ("a", "b")] == [200, 429]
        server.advance(60)
        assert status_of_submit(server, "c") == 200


def test_a_real_time_server_cannot_be_advanced() -> None:
    with MockServer(clock=SystemClock()) as server, pytest.raises(TypeError, match="SystemClock"):
        server.advance(1)


def status_of_poll(server: MockServer, request_id: str) -> int:
    try:
        with urllib.request.urlopen(f"{server.base_url}/status/{request_id}", timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_mock_server_holds_an_id_from_the_test_thread() -> None:
    with MockServer() as server:
        server.hold("earlier-4", "q")
        assert [status_of_poll(server, "earlier-4") for _ in range(2)] == [200, 404]
        assert server.stats()["prompts"]["q"]["billed"] == 1
