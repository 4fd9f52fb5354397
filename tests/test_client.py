"""batchrun/client.py over the real AiohttpTransport, with aioresponses in place of the network."""

from __future__ import annotations

import asyncio
import io
import json
import zipfile
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any, TypeVar

import aiohttp
import pytest
from aioresponses import aioresponses
from yarl import URL

from batchrun.client import POLL_READ_MARGIN, Answer, EndpointClient
from batchrun.config import RunConfig, build_config
from batchrun.errors import (
    AuthError,
    RequestExpired,
    RequestRejected,
    ResponseFormatError,
    ServerError,
    StatusError,
    TransportError,
)
from batchrun.transport import AiohttpTransport

T = TypeVar("T")

KEY = "nvapi-TEST-SECRET-0123456789"
BASE = "https://integrate.api.nvidia.com/v1"
CHAT = f"{BASE}/chat/completions"
RID = "0b5f9c1e-1111-2222-3333-444455556666"
RID2 = "7d1e2f3a-aaaa-bbbb-cccc-ddddeeeeffff"
STATUS = f"{BASE}/status/{RID}"
STATUS2 = f"{BASE}/status/{RID2}"
FALLBACK = f"https://api.nvcf.nvidia.com/v2/nvcf/pexec/status/{RID}"
FALLBACK2 = f"https://api.nvcf.nvidia.com/v2/nvcf/pexec/status/{RID2}"
S3_URL = "https://nvcf-results.s3.us-west-2.amazonaws.com/out.zip?X-Amz-Signature=abc123"
NV_ASSET_URL = "https://assets.nvcf.nvidia.com/results/out.zip"
HOLD = 7
TIMEOUT = 120.0

COMPLETION = {
    "id": "chatcmpl-9",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "qwen/qwen3.5-397b-a17b",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "4"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
}
COMPLETION_BYTES = json.dumps(COMPLETION).encode()
REQUEST_BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "2+2?"}]})
PROBLEM = "application/problem+json"


class _CompatResponse(aiohttp.ClientResponse):
    """aioresponses 0.7.9 builds ClientResponse without the `stream_writer` argument that
    aiohttp 3.14 requires; supply a stand-in (the "request" is already sent, size 0)."""

    def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(method, url, **kwargs)


class Mocked(aioresponses):
    """aioresponses with the response class above as the default."""

    def add(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("response_class") is None:
            kwargs["response_class"] = _CompatResponse
        super().add(*args, **kwargs)


def make_config(**overrides: Any) -> RunConfig:
    values: dict[str, Any] = {"base_url": BASE, "hold_seconds": HOLD, "timeout": TIMEOUT}
    values.update(overrides)
    return build_config(cli_values=values)


def run(
    body: Callable[[EndpointClient, aioresponses], Awaitable[T]],
    cfg: RunConfig | None = None,
) -> T:
    """Run `body(client, mock)` in a fresh loop with a real transport, closed afterwards."""
    cfg = cfg or make_config()

    async def main() -> T:
        transport = AiohttpTransport(
            api_key=KEY,
            trusted_urls=cfg.key_urls(),
            connections=4,
        )
        client = EndpointClient(transport, cfg)
        try:
            with Mocked() as m:
                return await body(client, m)
        finally:
            await transport.close()

    return asyncio.run(main())


def calls(m: aioresponses, method: str, url: str) -> list[Any]:
    return m.requests.get((method, URL(url)), [])


def sent_headers(call: Any) -> dict[str, str]:
    return dict(call.kwargs["headers"])


def zip_of(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def sse_body(*chunks: dict[str, Any] | str) -> bytes:
    lines = []
    for chunk in chunks:
        payload = chunk if isinstance(chunk, str) else json.dumps(chunk)
        lines.append(f"data: {payload}\n\n")
    return "".join(lines).encode()


def delta(content: str | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    d: dict[str, Any] = dict(extra)
    if content is not None:
        d["content"] = content
    return {
        "id": "chat-s1",
        "object": "chat.completion.chunk",
        "created": 1700000002,
        "model": "qwen/qwen3.5-397b-a17b",
        "choices": [{"index": 0, "delta": d, "finish_reason": finish}],
        "usage": None,
    }


# ---------------------------------------------------------------- submit


def test_submit_200() -> None:
    async def body(client: EndpointClient, m: aioresponses) -> Answer:
        m.post(CHAT, status=200, body=COMPLETION_BYTES, headers={"NVCF-REQID": RID})
        return await client.submit(REQUEST_BODY.encode(), stream=False)

    answer = run(body)
    assert answer.status == 200
    assert answer.body == COMPLETION_BYTES
    assert answer.request_id == RID
    assert not answer.pending
    assert answer.location is None and answer.completion is None


def test_submit_200_without_request_id() -> None:
    async def body(client: EndpointClient, m: aioresponses) -> Answer:
        m.post(CHAT, status=200, body=COMPLETION_BYTES)
        return await client.submit(b"{}", stream=False)

    answer = run(body)
    assert (answer.status, answer.request_id, answer.body) == (200, None, COMPLETION_BYTES)


@pytest.mark.parametrize(
    ("stream", "accept"), [(False, "application/json"), (True, "text/event-stream")]
)
def test_submit_headers(stream: bool, accept: str) -> None:
    async def body(client: EndpointClient, m: aioresponses) -> list[Any]:
        m.post(CHAT, status=202, headers={"NVCF-REQID": RID})
        await client.submit(REQUEST_BODY.encode(), stream=stream)
        return calls(m, "POST", CHAT)

    (call,) = run(body)
    headers = sent_headers(call)
    assert headers["Content-Type"] == "application/json"
    assert headers["Accept"] == accept
    assert headers["NVCF-POLL-SECONDS"] == str(HOLD)
    assert headers["Authorization"] == f"Bearer {KEY}"
    assert call.kwargs["data"] == REQUEST_BODY.encode()
    assert call.kwargs["allow_redirects"] is False
    assert call.kwargs["timeout"].total == TIMEOUT


def test_poll_headers_and_read_timeout() -> None:
    async def body(client: EndpointClient, m: aioresponses) -> list[Any]:
        m.get(STATUS, status=200, body=COMPLETION_BYTES, headers={"NVCF-REQID": RID})
        await client.poll(RID)
        return calls(m, "GET", STATUS)

    (call,) = run(body)
    headers = sent_headers(call)
    assert headers["NVCF-POLL-SECONDS"] == str(HOLD)
    assert headers["Accept"] == "application/json"
    assert headers["Authorization"] == f"Bearer {KEY}"
    assert call.kwargs["allow_redirects"] is False
    assert call.kwargs["timeout"].total == HOLD + POLL_READ_MARGIN == 67


def test_poll_read_timeout_capped_by_timeout() -> None:
    cfg = make_config(timeout=20.0, hold_seconds=10)  # min(timeout, hold + 60)

    async def body(client: EndpointClient, m: aioresponses) -> list[Any]:
        m.get(STATUS, status=200, body=COMPLETION_BYTES)
        await client.poll(RID)
        return calls(m, "GET", STATUS)

    (call,) = run(body, cfg)
    assert call.kwargs["timeout"].total == 20.0


def test_poll_read_timeout_is_hold_plus_margin_under_long_timeout() -> None:
    cfg = make_config(timeout=600.0, hold_seconds=20)

    async def body(client: EndpointClient, m: aioresponses) -> list[Any]:
        m.get(STATUS, status=200, body=COMPLETION_BYTES)
        await client.poll(RID)
        return calls(m, "GET", STATUS)

    (call,) = run(body, cfg)
    assert call.kwargs["timeout"].total == 20 + POLL_READ_MARGIN
    assert sent_headers(call)["NVCF-POLL-SECONDS"] == "20"


def test_submit_202_pending_with_header_id() -> None:
    async def body(client: EndpointClient, m: aioresponses) -> Answer:
        # A legacy-looking body with another id: the header is what counts (decision 4).
        m.post(
            CHAT,
            status=202,
            body=json.dumps({"reqId": "from-body", "requestId": "from-body"}),
            headers={"NVCF-REQID": RID, "NVCF-STATUS": "in-progress"},
        )
        return await client.submit(b"{}", stream=False)

    answer = run(body)
    assert answer.pending
    assert answer.status == 202
    assert answer.request_id == RID
    assert answer.body == b""


def test_submit_202_without_request_id() -> None:
    async def body(client: EndpointClient, m: aioresponses) -> None:
        m.post(CHAT, status=202, body=json.dumps({"reqId": "from-body"}))
        await client.submit(b"{}", stream=False)

    with pytest.raises(ResponseFormatError, match="NVCF-REQID"):
        run(body)


# ---------------------------------------------------------------- polling


def test_poll_202_then_200() -> None:
    async def body(client: EndpointClient, m: aioresponses) -> tuple[Answer, Answer, int]:
        m.get(STATUS, status=202, headers={"NVCF-REQID": RID})
        m.get(STATUS, status=200, body=COMPLETION_BYTES, headers={"NVCF-REQID": RID})
        first = await client.poll(RID)
        second = await client.poll(RID)
        return first, second, len(calls(m, "GET", STATUS))

    first, second, n = run(body)
    assert first.pending and first.request_id == RID
    assert second.status == 200 and second.body == COMPLETION_BYTES
    assert second.request_id == RID
    assert n == 2


def test_poll_200_without_header_keeps_polled_id() -> None:
    async def body(client: EndpointClient, m: aioresponses) -> Answer:
        m.get(STATUS, status=200, body=COMPLETION_BYTES)
        return await client.poll(RID)

    answer = run(body)
    assert (answer.status, answer.request_id) == (200, RID)


def test_poll_404_problem_json_is_expired() -> None:
    async def body(client: EndpointClient, m: aioresponses) -> tuple[int, int]:
        m.get(
            STATUS,
            status=404,
            body=json.dumps({"type": "about:blank", "title": "Not Found", "status": 404}),
            content_type=PROBLEM,
        )
        with pytest.raises(RequestExpired, match=RID):
            await client.poll(RID)
        return len(calls(m, "GET", STATUS)), len(calls(m, "GET", FALLBACK))

    assert run(body) == (1, 0)  # no switch to the fallback URL


def test_poll_404_problem_shape_without_problem_content_type_is_expired() -> None:
    async def body(client: EndpointClient, m: aioresponses) -> bool:
        m.get(STATUS, status=404, body='{"status": 404, "title": "Not Found"}')
        with pytest.raises(RequestExpired):
            await client.poll(RID)
        return client.status_urls.switched

    assert run(body) is False


def test_poll_plain_404_switches_to_fallback_once() -> None:
    async def body(
        client: EndpointClient, m: aioresponses
    ) -> tuple[Answer, Answer, EndpointClient]:
        m.get(STATUS, status=404, body="404 page not found", content_type="text/plain")
        m.get(FALLBACK, status=200, body=COMPLETION_BYTES, headers={"NVCF-REQID": RID})
        m.get(FALLBACK2, status=202, headers={"NVCF-REQID": RID2})
        first = await client.poll(RID)
        # A later poll (another id) goes straight to the fallback: STATUS2 is not mocked,
        # so a request there would fail as a refused connection.
        second = await client.poll(RID2)
        assert len(calls(m, "GET", STATUS)) == 1
        assert calls(m, "GET", STATUS2) == []
        (fallback_call,) = calls(m, "GET", FALLBACK)
        headers = sent_headers(fallback_call)
        assert headers["Authorization"] == f"Bearer {KEY}"  # api.nvcf.nvidia.com is NVIDIA's
        assert headers["NVCF-POLL-SECONDS"] == str(HOLD)
        return first, second, client

    first, second, client = run(body)
    assert (first.status, first.body, first.request_id) == (200, COMPLETION_BYTES, RID)
    assert second.pending and second.request_id == RID2
    assert client.status_urls.switched
    assert client.status_urls.url("abc") == "https://api.nvcf.nvidia.com/v2/nvcf/pexec/status/abc"


def test_poll_plain_404_everywhere_is_expired() -> None:
    async def body(client: EndpointClient, m: aioresponses) -> tuple[int, int]:
        m.get(STATUS, status=404, body="404 page not found", content_type="text/plain")
        m.get(FALLBACK, status=404, body="404 page not found", content_type="text/plain")
        with pytest.raises(RequestExpired, match="plain 404"):
            await client.poll(RID)
        return len(calls(m, "GET", STATUS)), len(calls(m, "GET", FALLBACK))

    assert run(body) == (1, 1)


def test_concurrent_plain_404s_switch_once_and_both_retry_on_fallback() -> None:
    async def body(client: EndpointClient, m: aioresponses) -> list[Answer]:
        m.get(STATUS, status=404, body="404 page not found", content_type="text/plain")
        m.get(STATUS2, status=404, body="404 page not found", content_type="text/plain")
        m.get(FALLBACK, status=200, body=COMPLETION_BYTES)
        m.get(FALLBACK2, status=200, body=COMPLETION_BYTES)
        return list(await asyncio.gather(client.poll(RID), client.poll(RID2)))

    answers = run(body)
    assert [(a.status, a.request_id) for a in answers] == [(200, RID), (200, RID2)]


def test_poll_custom_status_template() -> None:
    cfg = make_config(status_url="{origin}/v2/status/{request_id}")
    url = f"https://integrate.api.nvidia.com/v2/status/{RID}"

    async def body(client: EndpointClient, m: aioresponses) -> Answer:
        m.get(url, status=200, body=COMPLETION_BYTES)
        return await client.poll(RID)

    assert run(body, cfg).status == 200


# ---------------------------------------------------------------- 302 large results


def test_submit_302_then_download_from_s3_without_auth() -> None:
    archive = zip_of({f"{RID}.response": COMPLETION_BYTES, "artifact.bin": b"\x00" * 10})

    async def body(client: EndpointClient, m: aioresponses) -> tuple[Answer, bytes, list[Any]]:
        m.post(CHAT, status=302, headers={"NVCF-REQID": RID, "Location": S3_URL})
        m.get(S3_URL, status=200, body=archive, content_type="application/zip")
        answer = await client.submit(b"{}", stream=False)
        data = await client.download(answer.location or "", answer.request_id)
        return answer, data, calls(m, "GET", S3_URL)

    answer, data, s3_calls = run(body)
    assert (answer.status, answer.request_id, answer.location) == (302, RID, S3_URL)
    assert not answer.pending
    assert data == COMPLETION_BYTES
    (call,) = s3_calls
    headers = {k.lower(): v for k, v in sent_headers(call).items()}
    assert "authorization" not in headers
    assert KEY not in json.dumps(headers)
    assert call.kwargs["allow_redirects"] is False


def test_poll_302_then_download() -> None:
    archive = zip_of({f"{RID}.response": COMPLETION_BYTES})

    async def body(client: EndpointClient, m: aioresponses) -> tuple[Answer, bytes]:
        m.get(STATUS, status=302, headers={"NVCF-REQID": RID, "Location": S3_URL})
        m.get(S3_URL, status=200, body=archive)
        answer = await client.poll(RID)
        return answer, await client.download(answer.location or "", RID)

    answer, data = run(body)
    assert (answer.status, answer.request_id, answer.location) == (302, RID, S3_URL)
    assert data == COMPLETION_BYTES


def test_download_from_nvidia_host_sends_auth() -> None:
    archive = zip_of({f"{RID}.response": COMPLETION_BYTES})

    async def body(client: EndpointClient, m: aioresponses) -> tuple[bytes, list[Any]]:
        m.get(NV_ASSET_URL, status=200, body=archive)
        data = await client.download(NV_ASSET_URL, RID)
        return data, calls(m, "GET", NV_ASSET_URL)

    data, (call,) = run(body)
    assert data == COMPLETION_BYTES
    assert sent_headers(call)["Authorization"] == f"Bearer {KEY}"


def test_download_picks_the_request_ids_member() -> None:
    other = json.dumps({**COMPLETION, "id": "other"}).encode()
    archive = zip_of({"aaa.response": other, f"{RID}.response": COMPLETION_BYTES})

    async def body(client: EndpointClient, m: aioresponses) -> bytes:
        m.get(S3_URL, status=200, body=archive)
        return await client.download(S3_URL, RID)

    assert run(body) == COMPLETION_BYTES


def test_download_zip_without_response_member() -> None:
    async def body(client: EndpointClient, m: aioresponses) -> None:
        m.get(S3_URL, status=200, body=zip_of({"log.txt": b"x"}))
        await client.download(S3_URL, RID)

    with pytest.raises(ResponseFormatError, match="response"):
        run(body)


def test_download_not_a_zip() -> None:
    async def body(client: EndpointClient, m: aioresponses) -> None:
        m.get(S3_URL, status=200, body=b"<Error>garbage</Error>")
        await client.download(S3_URL, RID)

    with pytest.raises(ResponseFormatError, match="neither a zip nor JSON"):
        run(body)


def test_302_without_location() -> None:
    async def body(client: EndpointClient, m: aioresponses) -> None:
        m.post(CHAT, status=302, headers={"NVCF-REQID": RID})
        await client.submit(b"{}", stream=False)

    with pytest.raises(ResponseFormatError, match="Location"):
        run(body)


# ---------------------------------------------------------------- auth and the key


def test_auth_not_sent_over_plain_http_to_nvidia_host() -> None:
    url = "http://mirror.nvidia.com/out.zip"

    async def body(client: EndpointClient, m: aioresponses) -> list[Any]:
        m.get(url, status=200, body=zip_of({f"{RID}.response": COMPLETION_BYTES}))
        await client.download(url, RID)
        return calls(m, "GET", url)

    (call,) = run(body)
    assert "Authorization" not in sent_headers(call)


def test_auth_not_sent_to_lookalike_host() -> None:
    url = "https://evilnvidia.com/out.zip"

    async def body(client: EndpointClient, m: aioresponses) -> list[Any]:
        m.get(url, status=200, body=zip_of({f"{RID}.response": COMPLETION_BYTES}))
        await client.download(url, RID)
        return calls(m, "GET", url)

    (call,) = run(body)
    assert "Authorization" not in sent_headers(call)


def test_auth_sent_to_configured_non_nvidia_base_host() -> None:
    cfg = make_config(base_url="https://llm.example.org/v1")
    url = "https://llm.example.org/v1/chat/completions"

    async def body(client: EndpointClient, m: aioresponses) -> list[Any]:
        m.post(url, status=200, body=COMPLETION_BYTES)
        await client.submit(b"{}", stream=False)
        return calls(m, "POST", url)

    (call,) = run(body, cfg)
    assert sent_headers(call)["Authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize("status", [401, 403])
def test_auth_error_names_env_var(status: int) -> None:
    async def body(client: EndpointClient, m: aioresponses) -> None:
        m.post(
            CHAT,
            status=status,
            body=json.dumps({"status": status, "title": "Unauthorized", "detail": "Auth failed"}),
            content_type=PROBLEM,
        )
        await client.submit(b"{}", stream=False)

    with pytest.raises(AuthError) as info:
        run(body)
    text = str(info.value)
    assert text.startswith(f"HTTP {status}: Unauthorized: Auth failed")
    assert "$NVIDIA_API_KEY" in text
    assert KEY not in text and KEY not in repr(info.value)
    assert info.value.exit_code == 3


def test_auth_error_names_custom_env_var() -> None:
    cfg = make_config(api_key_env="MY_NIM_KEY")

    async def body(client: EndpointClient, m: aioresponses) -> None:
        m.post(CHAT, status=401, body=b"")
        await client.submit(b"{}", stream=False)

    with pytest.raises(AuthError, match=r"^HTTP 401 \(check the API key in \$MY_NIM_KEY\)$"):
        run(body, cfg)


@pytest.mark.parametrize(
    "exception",
    [
        aiohttp.ClientConnectionError("Connection refused"),
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientPayloadError("Response payload is not completed"),
        TimeoutError(),
        aiohttp.ServerTimeoutError("Timeout on reading data from socket"),
    ],
    ids=["refused", "disconnected", "payload", "timeout", "server-timeout"],
)
def test_connection_failures_are_transport_errors(exception: BaseException) -> None:
    async def body(client: EndpointClient, m: aioresponses) -> None:
        m.post(CHAT, exception=exception)
        await client.submit(b"{}", stream=False)

    with pytest.raises(TransportError) as info:
        run(body)
    assert info.value.retryable is True
    assert f"POST {CHAT}" in str(info.value)
    for text in (str(info.value), repr(info.value), repr(info.value.args)):
        assert KEY not in text
        assert "Bearer" not in text


def test_timeout_message() -> None:
    async def body(client: EndpointClient, m: aioresponses) -> None:
        m.get(STATUS, exception=TimeoutError())
        await client.poll(RID)

    with pytest.raises(TransportError, match=rf"GET {STATUS}: no answer within 67s"):
        run(body)


def test_transport_error_hides_presigned_query() -> None:
    async def body(client: EndpointClient, m: aioresponses) -> None:
        m.get(S3_URL, exception=aiohttp.ClientConnectionError("reset"))
        await client.download(S3_URL, RID)

    with pytest.raises(TransportError) as info:
        run(body)
    assert "X-Amz-Signature" not in str(info.value)
    assert "nvcf-results.s3.us-west-2.amazonaws.com/out.zip" in str(info.value)


def test_key_absent_from_every_error_text() -> None:
    async def body(client: EndpointClient, m: aioresponses) -> list[BaseException]:
        m.post(CHAT, status=401, body=b"")
        m.post(CHAT, status=422, body=b'{"detail":"bad"}')
        m.post(CHAT, status=202)
        m.post(CHAT, exception=aiohttp.ClientConnectionError("boom"))
        m.get(STATUS, status=404, body=b'{"title":"Not Found"}', content_type=PROBLEM)
        m.get(S3_URL, status=500, body=b"oops")
        errors: list[BaseException] = []
        for make in (
            lambda: client.submit(b"{}", stream=False),
            lambda: client.submit(b"{}", stream=False),
            lambda: client.submit(b"{}", stream=False),
            lambda: client.submit(b"{}", stream=False),
            lambda: client.poll(RID),
            lambda: client.download(S3_URL, RID),
        ):
            try:
                await make()
            except Exception as exc:
                errors.append(exc)
        return errors

    errors = run(body)
    assert [type(e) for e in errors] == [
        AuthError,
        RequestRejected,
        ResponseFormatError,
        TransportError,
        RequestExpired,
        ServerError,
    ]
    for exc in errors:
        assert KEY not in str(exc) and KEY not in repr(exc)


# ---------------------------------------------------------------- status classification


def test_422_not_retryable_with_detail() -> None:
    async def body(client: EndpointClient, m: aioresponses) -> None:
        m.post(
            CHAT,
            status=422,
            body=json.dumps({"status": 422, "detail": "messages: field required"}),
            content_type=PROBLEM,
            headers={"NVCF-REQID": RID},
        )
        await client.submit(b"{}", stream=False)

    with pytest.raises(StatusError) as info:
        run(body)
    exc = info.value
    assert str(exc) == "HTTP 422: messages: field required"
    assert (exc.status, exc.retryable, exc.request_id, exc.retry_after) == (422, False, RID, None)


@pytest.mark.parametrize("status", [400, 404, 410])
def test_other_4xx_not_retryable(status: int) -> None:
    async def body(client: EndpointClient, m: aioresponses) -> None:
        m.post(CHAT, status=status, body=b'{"error": {"message": "nope"}}')
        await client.submit(b"{}", stream=False)

    with pytest.raises(StatusError) as info:
        run(body)
    assert (info.value.status, info.value.retryable) == (status, False)
    assert str(info.value) == f"HTTP {status}: nope"


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_retryable_statuses(status: int) -> None:
    async def body(client: EndpointClient, m: aioresponses) -> None:
        m.post(CHAT, status=status, body=b'{"title": "Try later"}', content_type=PROBLEM)
        await client.submit(b"{}", stream=False)

    with pytest.raises(StatusError) as info:
        run(body)
    assert (info.value.status, info.value.retryable) == (status, True)
    assert str(info.value) == f"HTTP {status}: Try later"


def test_retry_after_parsed() -> None:
    async def body(client: EndpointClient, m: aioresponses) -> None:
        m.post(
            CHAT,
            status=503,
            body=b'{"status":503,"title":"Service Unavailable"}',
            content_type=PROBLEM,
            headers={"Retry-After": "10800", "NVCF-REQID": RID},
        )
        await client.submit(b"{}", stream=False)

    with pytest.raises(StatusError) as info:
        run(body)
    assert (info.value.status, info.value.retry_after, info.value.retryable) == (503, 10800.0, True)


def test_429_retry_after_ms() -> None:
    async def body(client: EndpointClient, m: aioresponses) -> None:
        m.post(CHAT, status=429, body=b"", headers={"retry-after-ms": "2500"})
        await client.submit(b"{}", stream=False)

    with pytest.raises(StatusError) as info:
        run(body)
    assert (info.value.retry_after, str(info.value)) == (2.5, "HTTP 429")


def test_504_empty_body_retryable() -> None:
    async def body(client: EndpointClient, m: aioresponses) -> None:
        m.post(CHAT, status=504, body=b"", headers={"NVCF-REQID": RID})
        await client.submit(b"{}", stream=False)

    with pytest.raises(StatusError) as info:
        run(body)
    exc = info.value
    assert (exc.status, exc.retryable, exc.request_id, str(exc)) == (504, True, RID, "HTTP 504")


def test_poll_error_status_classified() -> None:
    async def body(client: EndpointClient, m: aioresponses) -> None:
        m.get(STATUS, status=500, body=b'{"detail": "Inference error"}')
        await client.poll(RID)

    with pytest.raises(StatusError, match=r"^HTTP 500: Inference error$") as info:
        run(body)
    assert info.value.retryable is True


def test_download_error_status_classified() -> None:
    async def body(client: EndpointClient, m: aioresponses) -> None:
        m.get(S3_URL, status=503, body=b"Slow Down")
        await client.download(S3_URL, RID)

    with pytest.raises(StatusError, match=r"^HTTP 503: Slow Down$"):
        run(body)


@pytest.mark.parametrize("status", [401, 403, 404, 410])
def test_expired_download_link_is_not_an_auth_error(status: int) -> None:
    # A presigned URL past its 24 h answers 403 although no key was sent: the row must be
    # bought again, not the whole job stopped as if our key were wrong.
    async def body(client: EndpointClient, m: aioresponses) -> None:
        m.get(S3_URL, status=status, body=b"<Error><Code>AccessDenied</Code></Error>")
        await client.download(S3_URL, RID)

    with pytest.raises(RequestExpired, match=f"HTTP {status}"):
        run(body)


def test_poll_202_without_request_id_header_keeps_polling_the_known_id() -> None:
    async def body(client: EndpointClient, m: aioresponses) -> Answer:
        m.get(STATUS, status=202, body=b"")
        return await client.poll(RID)

    answer = run(body)
    assert answer.pending and answer.request_id == RID


# ---------------------------------------------------------------- streaming


def test_stream_assembled() -> None:
    stream = sse_body(
        delta(role="assistant"),
        delta(reasoning_content="add "),
        delta(reasoning_content="them"),
        delta("The answer "),
        delta("is 4."),
        delta(finish="stop"),
        {
            "id": "chat-s1",
            "choices": [],
            "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
        },
        "[DONE]",
    )

    async def body(client: EndpointClient, m: aioresponses) -> tuple[Answer, list[Any]]:
        m.post(
            CHAT,
            status=200,
            body=stream,
            content_type="text/event-stream",
            headers={"NVCF-REQID": RID},
        )
        answer = await client.submit(b'{"stream": true}', stream=True)
        return answer, calls(m, "POST", CHAT)

    answer, (call,) = run(body)
    assert sent_headers(call)["Accept"] == "text/event-stream"
    assert (answer.status, answer.request_id, answer.body) == (200, RID, b"")
    c = answer.completion
    assert c is not None
    assert c.content == "The answer is 4."
    assert c.reasoning_content == "add them"
    assert c.finish_reason == "stop"
    assert (c.prompt_tokens, c.completion_tokens, c.total_tokens) == (12, 5, 17)
    assert c.ttft_s is not None and c.ttft_s >= 0
    assert answer.raw is not None
    raw = json.loads(answer.raw)
    assert raw["object"] == "chat.completion"
    assert raw["id"] == "chat-s1"
    assert raw["choices"][0]["message"] == {
        "role": "assistant",
        "content": "The answer is 4.",
        "reasoning_content": "add them",
    }
    assert raw["usage"] == {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}


def test_stream_with_crlf_and_tool_calls() -> None:
    stream = (
        b": ping\r\n\r\n"
        + b"data: "
        + json.dumps(
            delta(
                tool_calls=[{"index": 0, "id": "t1", "function": {"name": "f", "arguments": "{"}}]
            )
        ).encode()
        + b"\r\n\r\n"
        + b"data: "
        + json.dumps(delta(tool_calls=[{"index": 0, "function": {"arguments": "}"}}])).encode()
        + b"\r\n\r\n"
        + b"data: "
        + json.dumps(delta(finish="tool_calls")).encode()
        + b"\r\n\r\ndata: [DONE]"  # no final newline
    )

    async def body(client: EndpointClient, m: aioresponses) -> Answer:
        m.post(CHAT, status=200, body=stream, content_type="text/event-stream")
        return await client.submit(b"{}", stream=True)

    answer = run(body)
    assert answer.completion is not None
    assert answer.completion.tool_calls == [
        {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    ]
    assert answer.completion.finish_reason == "tool_calls"


def test_stream_without_done_but_with_finish_reason_is_complete() -> None:
    stream = sse_body(delta("hi"), delta(finish="stop"))

    async def body(client: EndpointClient, m: aioresponses) -> Answer:
        m.post(CHAT, status=200, body=stream, content_type="text/event-stream")
        return await client.submit(b"{}", stream=True)

    answer = run(body)
    assert answer.completion is not None and answer.completion.content == "hi"


def test_stream_cut_off() -> None:
    stream = sse_body(delta("The answer "), delta("is"))

    async def body(client: EndpointClient, m: aioresponses) -> None:
        m.post(CHAT, status=200, body=stream, content_type="text/event-stream")
        await client.submit(b"{}", stream=True)

    with pytest.raises(TransportError, match=r"\[DONE\]") as info:
        run(body)
    assert info.value.retryable is True


def test_stream_error_chunk() -> None:
    stream = sse_body(delta("par"), {"error": {"object": "error", "message": "worker died"}})

    async def body(client: EndpointClient, m: aioresponses) -> None:
        m.post(CHAT, status=200, body=stream, content_type="text/event-stream")
        await client.submit(b"{}", stream=True)

    with pytest.raises(ResponseFormatError, match="worker died"):
        run(body)


def test_stream_error_status_with_sse_wrapped_problem() -> None:
    body_bytes = b'data: {"status":400,"title":"Bad Request","detail":"bad tools"}\n\n'

    async def body(client: EndpointClient, m: aioresponses) -> None:
        m.post(CHAT, status=400, body=body_bytes, content_type="text/event-stream")
        await client.submit(b"{}", stream=True)

    with pytest.raises(StatusError, match=r"^HTTP 400: Bad Request: bad tools$") as info:
        run(body)
    assert info.value.retryable is False


def test_stream_requested_but_json_answer() -> None:
    async def body(client: EndpointClient, m: aioresponses) -> Answer:
        m.post(CHAT, status=200, body=COMPLETION_BYTES, content_type="application/json")
        return await client.submit(b"{}", stream=True)

    answer = run(body)
    assert (answer.status, answer.body, answer.completion) == (200, COMPLETION_BYTES, None)


def test_a_key_for_another_provider_never_goes_to_nvidia_hosts() -> None:
    other = build_config(cli_values={"base_url": "https://api.together.example/v1"})
    transport = AiohttpTransport(api_key=KEY, trusted_urls=other.key_urls(), connections=1)
    assert transport._auth_headers("https://api.together.example/v1/chat/completions")
    assert transport._auth_headers(FALLBACK) == {}
    assert transport._auth_headers("https://results.nvidia.com/out.zip") == {}
    nvidia = AiohttpTransport(api_key=KEY, trusted_urls=make_config().key_urls(), connections=1)
    assert nvidia._auth_headers("https://results.nvidia.com/out.zip")  # decision 5
    assert nvidia._auth_headers(S3_URL) == {}


# ---------------------------------------------------------------- probe and the server's limits


@pytest.mark.parametrize(("status", "answers"), [(200, True), (404, True), (503, False)])
def test_probe_asks_models_and_any_answer_but_a_5xx_is_one(status: int, answers: bool) -> None:
    async def body(client: EndpointClient, m: aioresponses) -> bool:
        m.get(f"{BASE}/models", status=status, body=b"{}")
        return await client.probe()

    assert run(body) is answers


def test_probe_of_a_refused_key_raises_and_a_dead_server_is_a_transport_error() -> None:
    async def refused(client: EndpointClient, m: aioresponses) -> bool:
        m.get(f"{BASE}/models", status=401, body=b"{}")
        return await client.probe()

    with pytest.raises(AuthError):
        run(refused)

    async def dead(client: EndpointClient, m: aioresponses) -> bool:
        m.get(f"{BASE}/models", exception=aiohttp.ClientConnectionError("refused"))
        return await client.probe()

    with pytest.raises(TransportError):
        run(dead)


def test_an_answer_carries_the_servers_rate_limit_headers() -> None:
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1.5s"}

    async def body(client: EndpointClient, m: aioresponses) -> Answer:
        m.post(CHAT, status=200, body=b"{}", headers=headers)
        return await client.submit(b"{}", stream=False)

    answer = run(body)
    assert answer.limits is not None and answer.limits.pause_s() == 1.5
