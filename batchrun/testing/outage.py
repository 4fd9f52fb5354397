"""Outages of the mock endpoint: stop listening, drop connections, listen again on the port.

`SiteControl` owns the listening socket of one aiohttp `AppRunner`, never the app: going
down closes the socket (a new connection is refused, ECONNREFUSED) and every open connection
(a request in flight fails, as when a server dies), while the endpoint keeps all its state
(held 202 ids, counters, jobs, settings). Coming back listens again on the same port:
aiohttp's TCPSite sets SO_REUSEADDR on Linux, so the connections just closed (TIME_WAIT) do
not block the bind.

Three ways in: `MockServer.go_down()` / `come_back()` from a test, and `POST /_mock/outage`
with `{"seconds": S}` (`outage_response`) for an endpoint running as a subprocess
(`batchrun mock-server`): it answers 200, is down for S seconds on the endpoint's clock, then
comes back by itself. `MockServer` and `serve()` both build their site with this class, so
the route works in both.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from batchrun.clock import Clock


class SiteControl:
    """Listening on `host:port` for `runner`, or not; `up()` first binds (port 0: a free one)."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, clock: Clock) -> None:
        self._runner = runner
        self._host = host
        self.port = port  # the bound port once up() has run
        self._clock = clock
        self._site: web.TCPSite | None = None
        self._is_up = asyncio.Event()
        self._comeback: asyncio.Task[None] | None = None

    async def up(self) -> None:
        """Listen (again) on the port; ends an outage early. Nothing to do if listening."""
        self._cancel_comeback()
        if self._site is not None:
            return
        site = web.TCPSite(self._runner, self._host, self.port)
        await site.start()
        self._site = site
        self.port = self._runner.addresses[0][1]
        self._is_up.set()

    async def down(self) -> None:
        """Stop listening and close every open connection, until `up()`."""
        self._cancel_comeback()
        await self.stop_listening()
        self.drop_connections()

    async def until_up(self) -> None:
        """Return once listening."""
        await self._is_up.wait()

    async def outage_response(self, request: web.Request, seconds: float) -> web.StreamResponse:
        """Answer `request` with 200, then be down for `seconds`, then come back by itself.

        The socket closes before the answer goes out, so a client holding the answer can no
        longer connect; the connections close after it (this one too, once the answer is
        flushed: a transport's close() sends what it has buffered first).
        """
        back_at = self._clock.monotonic() + seconds  # from now: a test may advance at once
        await self.stop_listening()
        response = web.json_response({"down_for": seconds, "port": self.port})
        await response.prepare(request)
        await response.write_eof()
        self.drop_connections()
        self._comeback = asyncio.create_task(self._come_back_at(back_at))
        return response

    async def close(self) -> None:
        """Forget a pending comeback (the server is being stopped)."""
        self._cancel_comeback()

    async def stop_listening(self) -> None:
        if self._site is None:
            return
        site, self._site = self._site, None
        self._is_up.clear()
        await site.stop()

    def drop_connections(self) -> None:
        server = self._runner.server
        for handler in server.connections if server is not None else []:
            handler.force_close()

    async def _come_back_at(self, back_at: float) -> None:
        await self._clock.sleep(back_at - self._clock.monotonic())
        self._comeback = None  # done waiting: up() must not cancel this very task
        await self.up()

    def _cancel_comeback(self) -> None:
        if self._comeback is not None:
            self._comeback.cancel()
            self._comeback = None
