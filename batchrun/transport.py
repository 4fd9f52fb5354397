"""The one network hop: the Transport protocol and its aiohttp implementation.

Everything above this module speaks `Transport` and never imports aiohttp, so the client,
the poller and the runner can be tested with a fake transport and no sockets (httpx's
transport split). This is also the only place that holds the API key: it is added to the
headers of requests to trusted hosts here and nowhere else, and aiohttp's exceptions are
translated to TransportError here (their text names the URL, never the headers).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp

import batchrun

from .errors import TransportError
from .urls import is_loopback, is_nvidia_host

MAX_SSE_LINE_BYTES = 8 * 1024 * 1024  # NVCF caps an event at 4 MB


class Response(Protocol):
    """An HTTP answer whose body has not been read yet."""

    status: int
    headers: Mapping[str, str]  # case-insensitive

    async def read(self) -> bytes: ...

    def lines(self) -> AsyncIterator[bytes]: ...


class Transport(Protocol):
    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None = None,
        time_limit: float,
    ) -> AbstractAsyncContextManager[Response]: ...

    async def close(self) -> None: ...


class _AiohttpResponse:
    __slots__ = ("_resp", "headers", "status")

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status = resp.status
        self.headers: Mapping[str, str] = resp.headers

    async def read(self) -> bytes:
        return await self._resp.read()

    async def lines(self) -> AsyncIterator[bytes]:
        # Split by hand: aiohttp's readline caps a line at its buffer size, and one SSE
        # event with a long tool call can be bigger than that.
        buffer = b""
        async for chunk in self._resp.content.iter_any():
            buffer += chunk
            while True:
                cut = buffer.find(b"\n")
                if cut < 0:
                    break
                line, buffer = buffer[:cut], buffer[cut + 1 :]
                yield line.rstrip(b"\r")
            if len(buffer) > MAX_SSE_LINE_BYTES:
                raise TransportError(f"stream line longer than {MAX_SSE_LINE_BYTES} bytes")
        if buffer:
            yield buffer.rstrip(b"\r")


class _Exchange:
    """`async with transport.request(...) as resp`: aiohttp's context, errors translated.

    A plain class rather than @asynccontextmanager: this runs once per request, and a
    generator-based context manager costs noticeably more on the hot path.
    """

    __slots__ = ("_context", "_method", "_time_limit", "_url")

    def __init__(self, context: Any, method: str, url: str, time_limit: float) -> None:
        self._context = context
        self._method = method
        self._url = url
        self._time_limit = time_limit

    async def __aenter__(self) -> Response:
        try:
            return _AiohttpResponse(await self._context.__aenter__())
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._translate(exc) from None

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        try:
            await self._context.__aexit__(kind, exc, tb)
        except (TimeoutError, aiohttp.ClientError) as error:
            raise self._translate(error) from None
        if isinstance(exc, TimeoutError | aiohttp.ClientError):
            raise self._translate(exc) from None  # raised while the body was read

    def _translate(self, exc: TimeoutError | aiohttp.ClientError) -> TransportError:
        where = f"{self._method} {_safe(self._url)}"
        if isinstance(exc, TimeoutError):
            return TransportError(f"{where}: no answer within {self._time_limit:g}s")
        return TransportError(f"{where}: {_describe(exc)}")


class AiohttpTransport:
    """One keep-alive ClientSession for the whole job, created inside the running loop."""

    def __init__(
        self,
        *,
        api_key: str | None,
        trusted_urls: list[str],
        connections: int,
        allow_insecure_http: bool = False,
    ) -> None:
        self.__key = api_key  # name-mangled: keeps it out of casual attribute dumps
        self._trusted_hosts = {urlsplit(u).hostname for u in trusted_urls if urlsplit(u).hostname}
        # Any NVIDIA host (a 302 result on one, say: PROTOCOL.md decision 5), but only for a
        # key meant for NVIDIA: the first trusted URL is the endpoint's own.
        self._nvidia_key = bool(trusted_urls) and is_nvidia_host(
            urlsplit(trusted_urls[0]).hostname or ""
        )
        self._connections = connections
        self._allow_insecure_http = allow_insecure_http
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self._auth_by_origin: dict[str, dict[str, str]] = {}
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    def __repr__(self) -> str:
        return (
            f"AiohttpTransport(key={'set' if self.__key else 'none'}, hosts={self._trusted_hosts})"
        )

    def _session_or_new(self) -> aiohttp.ClientSession:
        if self._closed:
            raise TransportError("the HTTP session is closed (the job is ending)")
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._connections, limit_per_host=0)
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers={"User-Agent": f"batchrun/{batchrun.__version__}"},
                # The read timeout per call is set per request; total=None here.
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return self._session

    def _auth_headers(self, url: str) -> dict[str, str]:
        """The key goes only to the endpoint's own hosts and to NVIDIA's, never over
        plain http off this machine, and never to a redirect target such as S3."""
        origin = "/".join(url.split("/", 3)[:3])  # scheme://netloc: all the decision uses
        cached = self._auth_by_origin.get(origin)
        if cached is None:
            cached = self._auth_by_origin[origin] = self._decide_auth(origin + "/")
        return cached

    def _decide_auth(self, url: str) -> dict[str, str]:
        if not self.__key:
            return {}
        parts = urlsplit(url)
        host = parts.hostname or ""
        if host not in self._trusted_hosts and not (self._nvidia_key and is_nvidia_host(host)):
            return {}
        if parts.scheme != "https" and not (is_loopback(url) or self._allow_insecure_http):
            return {}
        return {"Authorization": f"Bearer {self.__key}"}

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None = None,
        time_limit: float,
    ) -> _Exchange:
        timeout = self._timeouts.get(time_limit)
        if timeout is None:
            timeout = aiohttp.ClientTimeout(total=time_limit, connect=min(time_limit, 60.0))
            self._timeouts[time_limit] = timeout
        context = self._session_or_new().request(
            method,
            url,
            data=body,
            headers={**headers, **self._auth_headers(url)},
            timeout=timeout,
            allow_redirects=False,  # a 302 is a large NVCF result: handled by the client
        )
        return _Exchange(context, method, url, time_limit)

    async def close(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None
            # Let the connector's transports finish closing (aiohttp's documented idiom).
            await asyncio.sleep(0)


def _safe(url: str) -> str:
    """A URL without any query string (a presigned download URL carries credentials)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def _describe(exc: aiohttp.ClientError) -> str:
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server closed the connection"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "answer was cut off"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc.os_error.strerror or exc.os_error})"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"bad HTTP answer ({exc.status} {exc.message})"
    if isinstance(exc, aiohttp.InvalidURL):
        return type(exc).__name__  # its text is the URL, query string (credentials) and all
    return f"{type(exc).__name__}: {exc}"
