"""Running the mock endpoint: `MockServer` in a background thread, `serve()` for the CLI.

`MockServer` runs the app on its own event loop in a daemon thread, on 127.0.0.1 and a free
port unless told otherwise, for tests and harnesses; every change it makes to the endpoint
(settings, held ids, the clock) runs on that loop, so the test thread never races a handler.
Its clock defaults to an `OffsetClock`, which is real time until a test calls `advance()`.

`serve()` is `batchrun mock-server`: the app on the caller's loop until cancelled, on real time.

Both listen through a `SiteControl` (`outage.py`), which the endpoint also gets, so an outage
can be made from a test (`MockServer.go_down()`, `come_back()`, `until_up()`) or over HTTP
(`POST /_mock/outage`, for a subprocess); the endpoint keeps its state through it and comes
back on the same port.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from aiohttp import web

from batchrun.clock import Clock, SystemClock

from .app import MockEndpoint
from .clock import MovableClock, OffsetClock
from .outage import SiteControl
from .settings import MockSettings, apply_changes

T = TypeVar("T")
TIMEOUT = 30.0  # seconds to wait for the server's loop; a hung loop fails the test


class MockServer:
    """The endpoint on its own event loop in a thread; a context manager."""

    def __init__(
        self,
        settings: MockSettings | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Clock | None = None,
    ) -> None:
        self.endpoint = MockEndpoint(settings, clock or OffsetClock())
        self._host, self._port = host, port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="mock-server", daemon=True
        )
        self._runner: web.AppRunner | None = None
        self._site: SiteControl | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self.port}/v1"

    def start(self) -> MockServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=TIMEOUT)
        return self

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.endpoint.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = SiteControl(self._runner, self._host, self._port, self.endpoint.clock)
        self._site = self.endpoint.site = site
        await site.up()
        self.port = site.port

    def go_down(self) -> None:
        """Stop listening and drop every connection (in-flight requests fail); state stays."""
        self._run(self._control().down())

    def come_back(self) -> None:
        """Listen again on the same port (ends an outage from `POST /_mock/outage` early)."""
        self._run(self._control().up())

    def until_up(self) -> None:
        """Return once listening (after an outage's seconds have passed on the clock)."""
        self._run(self._control().until_up())

    def _control(self) -> SiteControl:
        if self._site is None:
            raise RuntimeError("the mock server is not started")
        return self._site

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=TIMEOUT)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn(*args, **kwargs)` on the server's loop and return its result."""

        async def run() -> T:
            return fn(*args, **kwargs)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=TIMEOUT)

    def stats(self) -> dict[str, Any]:
        return self.call(self.endpoint.snapshot)

    def configure(self, **changes: Any) -> None:
        """Change settings live; an unknown name raises AttributeError."""
        self.call(apply_changes, self.endpoint.settings, changes)

    def advance(self, seconds: float) -> None:
        """Move the endpoint's clock forward: rate windows, ready times and expiry see it."""
        clock = self.endpoint.clock
        if not isinstance(clock, MovableClock):
            raise TypeError(f"{type(clock).__name__} cannot be advanced")
        self.call(clock.advance, seconds)

    def hold(
        self, request_id: str, prompt: str, body: dict[str, Any] | None = None, ready: bool = True
    ) -> None:
        """`MockEndpoint.hold`, run on the server's loop."""
        self.call(self.endpoint.hold, request_id, prompt, body, ready)

    def stop(self) -> None:
        if self._site is not None:
            self._run(self._site.close())
        if self._runner is not None:
            self._run(self._runner.cleanup())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> MockServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def serve(
    settings: MockSettings,
    host: str,
    port: int,
    on_ready: Callable[[str], None] | None = None,
    clock: Clock | None = None,
) -> None:
    """Serve until cancelled (the `batchrun mock-server` command); `on_ready(base_url)`."""
    endpoint = MockEndpoint(settings, clock or SystemClock())
    runner = web.AppRunner(endpoint.app(), access_log=None)
    await runner.setup()
    site = endpoint.site = SiteControl(runner, host, port, endpoint.clock)
    try:
        await site.up()
        if on_ready is not None:
            on_ready(f"http://{host}:{site.port}/v1")
        await asyncio.Event().wait()
    finally:
        await site.close()
        await runner.cleanup()
