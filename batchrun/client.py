"""One HTTP exchange with the endpoint, per PROTOCOL.md: submit, poll, download.

`EndpointClient` turns a request into an `Answer` (final, pending with a request id, or a
302 download location) or raises the error the exchange amounts to. It does not retry,
sleep or touch the checkpoint: the engine carries out what retry.py decides. Status codes
are mapped to errors in one function, `retry.classify_status`.

NVCF specifics handled here:
- `NVCF-POLL-SECONDS` on the submit and on every poll (decision 2); polls read with a
  timeout of hold + margin, since the server must answer (202 at worst) within the hold.
- The request id is taken from the `NVCF-REQID` header only (decision 4).
- Status URL: the configured template, switched once for the whole job to the fallback
  (NVCF's pexec URL) when the route answers a 404 that is not problem+json (decision 1);
  a problem+json 404 means the id expired or was consumed (RequestExpired).
- 302: the Location is downloaded (the key goes only to trusted hosts: transport.py) and
  `<request_id>.response` is read out of the zip (decision 5).
"""

from __future__ import annotations

import io
import json
import logging
import time
import zipfile
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import (
    AuthError,
    EndpointError,
    RequestExpired,
    ResponseFormatError,
    ServerError,
    TransportError,
)
from .records import Completion
from .responses import StreamAssembler, is_problem_json
from .retry import AUTH_STATUSES, classify_status
from .server_limits import ServerLimits, read_server_limits

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .config import RunConfig
    from .transport import Response, Transport

log = logging.getLogger(__name__)

POLL_READ_MARGIN = 60.0
PROBE_TIMEOUT_S = 10.0


@dataclass(slots=True)
class Answer:
    """What one exchange produced. `status` 202 means pending: poll `request_id`."""

    status: int
    request_id: str | None = None
    body: bytes = b""
    location: str | None = None  # set for a 302 large result
    completion: Completion | None = None  # set when assembled from a stream
    raw: str | None = None  # assembled answer of a stream
    limits: ServerLimits | None = None  # the server's x-ratelimit-* headers, if it sent any

    @property
    def pending(self) -> bool:
        return self.status == 202


def read_large_result(data: bytes, request_id: str | None) -> bytes:
    """The `<request_id>.response` member of an NVCF large-result zip."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        if data.lstrip()[:1] == b"{":
            return data  # a plain JSON body: some gateways skip the zip
        raise ResponseFormatError("302 download is neither a zip nor JSON") from None
    with archive:
        names = archive.namelist()
        wanted = f"{request_id}.response"
        if wanted not in names:
            candidates = [n for n in names if n.endswith(".response")]
            if not candidates:
                raise ResponseFormatError(f"302 zip has no {wanted} (members: {names[:5]})")
            wanted = candidates[0]
        return archive.read(wanted)


def _log_answer(method: str, url: str, resp: Response) -> None:
    """Debug log of one exchange: method, URL, status, request id. Never headers we sent."""
    if log.isEnabledFor(logging.DEBUG):
        log.debug("%s %s -> %d %s", method, url, resp.status, resp.headers.get("nvcf-reqid", ""))


class StatusUrls:
    """Where a request id is polled; switches once to the fallback (decision 1)."""

    def __init__(self, cfg: RunConfig) -> None:
        self._values = cfg.url_values()
        self.template = cfg.status_url
        self.fallback = cfg.status_url_fallback
        self.switched = False

    def url(self, request_id: str) -> str:
        return self.template.format(request_id=request_id, **self._values)

    def switch_to_fallback(self, template_used: str) -> bool:
        """Switch (once). False when there is nothing left to switch to."""
        if self.switched or self.fallback == self.template:
            return self.template != template_used  # another poll already switched
        log.warning(
            "status URL %s does not exist (plain 404); polling %s for the rest of the job",
            self.url("{request_id}"),
            self.fallback.format(request_id="{request_id}", **self._values),
        )
        self.template = self.fallback
        self.switched = True
        return True


class EndpointClient:
    """Submit, poll and download for one endpoint, through a Transport."""

    def __init__(self, transport: Transport, cfg: RunConfig) -> None:
        self._transport = transport
        self._chat_url = cfg.chat_url()
        self._models_url = cfg.base_url.rstrip("/") + "/models"
        self._key_env = cfg.api_key_env
        self._timeout = cfg.timeout
        self._poll_timeout = min(cfg.timeout, cfg.hold_seconds + POLL_READ_MARGIN)
        self._hold = str(cfg.hold_seconds)
        self.status_urls = StatusUrls(cfg)
        self._assets_url = cfg.assets_url.format(**cfg.url_values())

    async def submit(
        self, body: bytes, *, stream: bool, extra_headers: Mapping[str, str] | None = None
    ) -> Answer:
        headers = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream" if stream else "application/json",
            "NVCF-POLL-SECONDS": self._hold,
            **(extra_headers or {}),
        }
        started = time.monotonic()
        async with self._transport.request(
            "POST", self._chat_url, headers=headers, body=body, time_limit=self._timeout
        ) as resp:
            _log_answer("POST", self._chat_url, resp)
            if resp.status == 200 and "text/event-stream" in resp.headers.get("content-type", ""):
                answer = await self._read_stream(resp, started)
            else:
                answer = await self._answer(resp)
            answer.limits = read_server_limits(resp.headers)
            return answer

    async def probe(self) -> bool:
        """Whether the endpoint answers at all: `GET {base_url}/models`, which buys nothing.
        Any answer but a 5xx is one (a server without the route answers 404); a refused
        key raises AuthError; a connection that fails raises TransportError."""
        async with self._transport.request(
            "GET", self._models_url, headers={"Accept": "application/json"},
            time_limit=min(self._timeout, PROBE_TIMEOUT_S),
        ) as resp:  # fmt: skip
            _log_answer("GET", self._models_url, resp)
            body = await resp.read()
            if resp.status in AUTH_STATUSES:
                raise classify_status(resp.status, resp.headers, body, self._key_env)
            return resp.status < 500

    async def poll(self, request_id: str) -> Answer:
        """One long-poll. Raises RequestExpired when the id is unknown to the server."""
        for _ in range(2):  # a second try only after switching to the fallback URL
            template = self.status_urls.template
            headers = {"Accept": "application/json", "NVCF-POLL-SECONDS": self._hold}
            async with self._transport.request(
                "GET",
                self.status_urls.url(request_id),
                headers=headers,
                time_limit=self._poll_timeout,
            ) as resp:
                _log_answer("GET", self.status_urls.url(request_id), resp)
                if resp.status != 404:
                    return await self._answer(resp, known_id=request_id)
                body = await resp.read()
                if is_problem_json(body, resp.headers.get("content-type", "")):
                    raise RequestExpired(f"request {request_id} expired or was already fetched")
            if not self.status_urls.switch_to_fallback(template):
                break
        raise RequestExpired(f"no status URL knows request {request_id} (plain 404)")

    async def download(self, location: str, request_id: str | None) -> bytes:
        """Fetch a 302 large result and return the response body inside it."""
        async with self._transport.request(
            "GET", location, headers={"Accept": "*/*"}, time_limit=self._timeout
        ) as resp:
            _log_answer("GET", location.split("?", 1)[0], resp)
            data = await resp.read()
            if resp.status in (401, 403, 404, 410):
                # Not our key (none is sent to a presigned URL): the link has expired.
                raise RequestExpired(f"download of request {request_id} failed: HTTP {resp.status}")
            if resp.status != 200:
                raise classify_status(resp.status, resp.headers, data, self._key_env)
        return read_large_result(data, request_id)

    async def create_asset(self, content_type: str, description: str) -> tuple[str, str]:
        """NVCF asset API, step 1: (asset id, presigned upload URL)."""
        body = json.dumps({"contentType": content_type, "description": description}).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        async with self._transport.request(
            "POST", self._assets_url, headers=headers, body=body, time_limit=self._timeout
        ) as resp:
            _log_answer("POST", self._assets_url, resp)
            data = await resp.read()
            if resp.status != 200:
                raise classify_status(resp.status, resp.headers, data, self._key_env)
        try:
            answer = json.loads(data)
            return str(answer["assetId"]), str(answer["uploadUrl"])
        except (ValueError, KeyError, TypeError):
            raise ResponseFormatError("asset API answer without assetId/uploadUrl") from None

    async def upload_asset(
        self, url: str, data: bytes, content_type: str, description: str
    ) -> None:
        """Step 2: PUT the bytes; both headers must match what the asset was created with."""
        headers = {"Content-Type": content_type, "x-amz-meta-nvcf-asset-description": description}
        async with self._transport.request(
            "PUT", url, headers=headers, body=data, time_limit=self._timeout
        ) as resp:
            _log_answer("PUT", url.split("?", 1)[0], resp)
            answer = await resp.read()
            if not 200 <= resp.status < 300:
                error = classify_status(resp.status, resp.headers, answer, self._key_env)
                if isinstance(error, AuthError):  # a presigned URL's 403 is not our key
                    raise ServerError(resp.status, f"asset upload refused: {error}")
                raise error

    async def _answer(self, resp: Response, known_id: str | None = None) -> Answer:
        request_id = resp.headers.get("nvcf-reqid") or known_id
        status = resp.status
        if status == 202:
            await resp.read()  # empty, or a progress document; either way not the result
            if not request_id:
                raise ResponseFormatError("202 without an NVCF-REQID header: nothing to poll")
            return Answer(202, request_id)
        if status in (301, 302, 303, 307, 308):
            await resp.read()
            location = resp.headers.get("location")
            if not location:
                raise ResponseFormatError(f"HTTP {status} without a Location header")
            return Answer(302, request_id, location=location)
        body = await resp.read()
        if 200 <= status < 300:
            return Answer(200, request_id, body=body)
        raise classify_status(status, resp.headers, body, self._key_env)

    async def _read_stream(self, resp: Response, started: float) -> Answer:
        assembler = StreamAssembler(started)
        async for line in resp.lines():
            assembler.feed_line(line)
            if assembler.done:
                break
        if not assembler.finished:
            raise TransportError("stream ended before [DONE]")
        raw = json.dumps(assembler.as_chat_completion(), ensure_ascii=False)
        return Answer(
            200, resp.headers.get("nvcf-reqid"), completion=assembler.completion(), raw=raw
        )


__all__ = ["Answer", "EndpointClient", "EndpointError", "read_large_result"]
