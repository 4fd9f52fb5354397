"""batchrun/testing: outages of the mock endpoint (go_down, come_back, POST /_mock/outage).

The endpoint runs as a MockServer (its own thread, 127.0.0.1, port 0) or under serve() on a
ManualClock, and the client is aiohttp with a connection per request (force_close), so each
request tests whether the port listens rather than reusing a connection. Nothing waits on
real time: an outage's seconds pass when the test advances the clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from batchrun.testing import ManualClock, MockEndpoint, MockServer, MockSettings, serve

from .test_testing_endpoint import chat


@asynccontextmanager
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(force_close=True)  # a new connection every request
    timeout = aiohttp.ClientTimeout(total=20)  # a server that never answers fails the test
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:
        yield client


async def submit(client: aiohttp.ClientSession, base_url: str, prompt: str) -> int:
    url = f"{base_url}/chat/completions"
    async with client.post(url, json=chat(prompt)) as resp:
        return resp.status


async def submit_202(client: aiohttp.ClientSession, base_url: str) -> str:
    async with client.post(f"{base_url}/chat/completions", json=chat("q [mock:202]")) as resp:
        assert resp.status == 202
        return resp.headers["NVCF-REQID"]


async def poll(client: aiohttp.ClientSession, base_url: str, request_id: str) -> int:
    async with client.get(f"{base_url}/status/{request_id}") as resp:
        return resp.status


def test_a_server_gone_down_refuses_then_comes_back_on_its_port_with_its_state() -> None:
    async def main(server: MockServer) -> None:
        url, port = server.base_url, server.port
        async with session() as client:
            request_id = await submit_202(client, url)
            assert await submit(client, url, "a") == 200
            server.go_down()
            with pytest.raises(aiohttp.ClientConnectorError):
                await submit(client, url, "b")
            server.go_down()  # already down: nothing to do
            server.come_back()
            assert (server.port, server.base_url) == (port, url)
            assert await submit(client, url, "c") == 200
            polls = [await poll(client, url, request_id) for _ in range(3)]
            assert polls == [202, 200, 404]  # pending_polls=1, then its answer, once
        stats = server.stats()
        assert (stats["submissions"], stats["billed"], stats["delivered"]) == (3, 3, 3)

    with MockServer(MockSettings(seed=1)) as server:
        asyncio.run(main(server))


def test_going_down_fails_a_request_in_flight() -> None:
    clock = ManualClock()

    async def main(server: MockServer) -> None:
        async with session() as client:
            in_flight = asyncio.create_task(submit(client, server.base_url, "slow"))
            await clock.until_sleeping()  # the handler is "generating"
            server.go_down()
            with pytest.raises(aiohttp.ServerDisconnectedError):
                await in_flight
            server.come_back()
            assert await submit(client, server.base_url, "after [mock:slow=0]") == 200
        stats = server.stats()
        assert (stats["submissions"], stats["billed"], stats["active"]) == (2, 1, 1)
        # The handler of the dropped request still sleeps (aiohttp does not cancel handlers
        # whose client left): let it end, or stopping the server waits for it.
        server.advance(10)

    with MockServer(MockSettings(latency=10), clock=clock) as server:
        asyncio.run(main(server))


def test_an_outage_over_http_lasts_its_seconds_on_the_clock() -> None:
    clock = ManualClock()

    async def main(server: MockServer) -> None:
        url = server.base_url
        async with session() as client:
            request_id = await submit_202(client, url)
            async with client.post(f"{url[:-3]}/_mock/outage", json={"seconds": 5}) as resp:
                assert (resp.status, await resp.json()) == (
                    200,
                    {"down_for": 5, "port": server.port},
                )
            with pytest.raises(aiohttp.ClientConnectorError):
                await submit(client, url, "refused")
            server.advance(4.9)
            with pytest.raises(aiohttp.ClientConnectorError):
                await submit(client, url, "still refused")
            server.advance(0.1)
            server.until_up()
            assert [await poll(client, url, request_id) for _ in range(2)] == [202, 200]
            assert await submit(client, url, "back") == 200

    with MockServer(clock=clock) as server:
        asyncio.run(main(server))
        assert server.stats()["submissions"] == 2


@pytest.mark.parametrize("body", [{}, {"seconds": -1}, {"seconds": "soon"}, {"seconds": None}])
def test_an_outage_needs_seconds(body: dict[str, Any]) -> None:
    async def main(server: MockServer) -> None:
        async with session() as client:
            async with client.post(f"{server.base_url[:-3]}/_mock/outage", json=body) as resp:
                assert resp.status == 400
            assert await submit(client, server.base_url, "still up") == 200

    with MockServer() as server:
        asyncio.run(main(server))


def test_serve_takes_outages_over_http_too() -> None:
    """`batchrun mock-server` runs serve(): its outage route must work without MockServer."""

    async def main() -> None:
        clock = ManualClock()
        urls: list[str] = []
        ready = asyncio.Event()

        def on_ready(url: str) -> None:
            urls.append(url)
            ready.set()

        server = asyncio.create_task(
            serve(MockSettings(), "127.0.0.1", 0, on_ready=on_ready, clock=clock)
        )
        await ready.wait()
        url = urls[0]
        async with session() as client:
            async with client.post(f"{url[:-3]}/_mock/outage", json={"seconds": 3}) as resp:
                assert resp.status == 200
            with pytest.raises(aiohttp.ClientConnectorError):
                await submit(client, url, "refused")
            clock.advance(3)
            assert await eventually_answered(client, url) == 200
        server.cancel()
        with pytest.raises(asyncio.CancelledError):
            await server

    asyncio.run(main())


async def eventually_answered(client: aiohttp.ClientSession, url: str) -> int:
    """Submit once the port listens again; refusals are instant on 127.0.0.1 (no real wait)."""
    for _ in range(1000):
        try:
            return await submit(client, url, "back")
        except aiohttp.ClientConnectorError:
            await asyncio.sleep(0)  # let the comeback run on this loop
    raise AssertionError("the endpoint did not come back")


def test_an_endpoint_nobody_listens_for_cannot_go_down() -> None:
    async def main() -> None:
        async with TestClient(TestServer(MockEndpoint().app())) as client:
            resp = await client.post("/_mock/outage", json={"seconds": 1})
            assert resp.status == 501

    asyncio.run(main())
