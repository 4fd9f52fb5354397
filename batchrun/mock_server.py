"""A local endpoint that behaves like NVIDIA's (`batchrun mock-server`), for demos and tests.

It answers `POST /v1/chat/completions` the way integrate.api.nvidia.com does: 200 with a
chat.completion, or 202 + `NVCF-REQID` once the request outlives `NVCF-POLL-SECONDS`, with
the result long-polled at `/v1/status/{id}` (or NVCF's `/v2/nvcf/pexec/status/{id}`) and
handed out once; 302 + zip for large results; 422 / 429 / 5xx problem bodies; SSE streams
with usage, reasoning text and tool calls. It is a test double, never a reference for what
the real API does (PROTOCOL.md is).

Answers are deterministic: the content is "Answer to: <last user message>", so a test can
check every row got the answer to its own prompt. Usage counts words.

Faults come two ways:
- rates (`p202`, `p500`, `p_drop`, ...) drawn from a seeded RNG, for soak tests;
- markers in the prompt, for exact tests: `[mock:CODE]` every time, `[mock:CODExN]` the first
  N submissions of that prompt, `=V` a Retry-After or a latency. CODE is a status (408, 422,
  429, 500, 502, 503, 504, 401), or one of: 202 (answer via polling), expire (the id is
  forgotten at the first poll), 302 (result as a zip download), drop (close the connection),
  badjson (a truncated body), nochoices, nousage, cutstream, slow (=seconds of latency).

`GET /_mock/stats` returns counters (per prompt: submissions, billed answers, answers
delivered; 202s, polls, resubmissions while an id was pending, submission times) so tests
can prove that nothing was bought twice. `POST /_mock/config` changes settings live.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
import re
import threading
import time
import uuid
import zipfile
from collections import Counter, deque
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from aiohttp import web

MARKER = re.compile(r"\[mock:([a-z0-9]+?)(?:x(\d+))?(?:=([0-9.]+))?\]")
PROBLEM = "application/problem+json"


@dataclass
class MockSettings:
    latency: float = 0.0  # seconds of "generation" per answer
    latency_jitter: float = 0.0  # plus uniform(0, jitter)
    p202: float = 0.0  # share of submissions answered 202 at once
    pending_polls: int = 1  # polls answered 202 before such a result is ready
    p429: float = 0.0
    p500: float = 0.0
    p502: float = 0.0
    p503: float = 0.0
    p504: float = 0.0
    p_drop: float = 0.0  # close the connection without an answer (nothing billed)
    rpm_limit: int = 0  # > 0: 429 past this many submissions in any 60 s window
    retry_after: float | None = 1.0  # Retry-After on 429 (None: no header)
    status_route: bool = True  # False: /v1/status answers a plain "404 page not found"
    expire_after: float = 0.0  # > 0: forget an id not polled for this long
    api_key: str | None = None  # set: require "Authorization: Bearer <key>"
    reasoning_field: str = "reasoning_content"  # or "reasoning", "think", "think-no-open"
    stream_usage: bool = True  # False: no usage chunk in streams (llama.cpp's server)
    tool_call_stream: str = "index"  # streamed tool calls keyed by "index", "id", or "whole"
    inline_image_max: int = 180_000  # larger base64 images are refused (use assets)
    json_fence: bool = False  # JSON answers wrapped in a ```json fence with prose around
    seed: int | None = None


@dataclass
class _Job:
    request_id: str
    prompt: str
    body: dict[str, Any]
    ready_at: float
    polls_before_ready: int = 0
    expire_on_poll: bool = False
    large: bool = False
    media: list[str] = field(default_factory=list)  # what the images were, for the answer
    touched: float = field(default_factory=time.monotonic)
    result: bytes | None = None


@dataclass
class _PromptStats:
    submissions: int = 0
    billed: int = 0
    delivered: int = 0
    last_body: dict[str, Any] = field(default_factory=dict)  # without the messages


class MockEndpoint:
    """The app's state and handlers."""

    def __init__(self, settings: MockSettings | None = None) -> None:
        self.settings = settings or MockSettings()
        self._rng = random.Random(self.settings.seed)
        self.reset()

    def reset(self) -> None:
        self.jobs: dict[str, _Job] = {}
        self.prompts: dict[str, _PromptStats] = {}
        self.codes: Counter[int] = Counter()
        self.submit_times: deque[float] = deque(maxlen=100_000)
        self._window: deque[float] = deque()
        self.polls = 0
        self.accepted = 0
        self.resubmitted_while_pending = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.large_results: dict[str, bytes] = {}
        self.polled_ids: set[str] = set()  # ids whose result a poll handed out
        self.assets: dict[str, dict[str, Any]] = {}  # asset id -> contentType, description, data
        self.asset_uploads = 0
        self._marker_uses: Counter[tuple[str, str]] = Counter()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/v1/status/{request_id}", self.status_v1)
        app.router.add_get("/v2/nvcf/pexec/status/{request_id}", self.status)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/_mock/large/{token}", self.large)
        app.router.add_post("/v2/nvcf/assets", self.create_asset)
        app.router.add_put("/_mock/assets/{asset_id}", self.upload_asset)
        app.router.add_get("/_mock/stats", self.stats)
        app.router.add_post("/_mock/config", self.configure)
        app.router.add_post("/_mock/reset", self.reset_handler)
        return app

    # ---- helpers

    def _stats_for(self, prompt: str) -> _PromptStats:
        entry = self.prompts.get(prompt)
        if entry is None:
            entry = self.prompts[prompt] = _PromptStats()
        return entry

    def _marker(self, prompt: str) -> tuple[str, float | None] | None:
        """The first marker of this prompt still in force for this submission."""
        for match in MARKER.finditer(prompt):
            code, times, value = match.group(1), match.group(2), match.group(3)
            key = (prompt, match.group(0))
            if times is not None and self._marker_uses[key] >= int(times):
                continue
            self._marker_uses[key] += 1
            return code, float(value) if value else None
        return None

    def _chance(self, p: float) -> bool:
        return p > 0 and self._rng.random() < p

    def _respond(self, status: int, body: Any = None, **kw: Any) -> web.Response:
        self.codes[status] += 1
        if isinstance(body, dict):
            return web.json_response(
                body, status=status, content_type=kw.pop("content_type", "application/json"), **kw
            )
        return web.Response(status=status, body=body, **kw)

    def _problem(
        self, status: int, title: str, detail: str | None = None, **kw: Any
    ) -> web.Response:
        body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
        if detail:
            body["detail"] = detail
        return self._respond(status, body, content_type=PROBLEM, **kw)

    def _retry_headers(self, value: float | None) -> dict[str, str]:
        wait = value if value is not None else self.settings.retry_after
        return {} if wait is None else {"Retry-After": f"{wait:g}"}

    # ---- the answer itself

    def _answer(self, job: _Job, *, usage: bool = True, choices: bool = True) -> dict[str, Any]:
        body = job.body
        prompt = job.prompt
        content = f"Answer to: {prompt}"
        if job.media:
            content += f" [images: {', '.join(job.media)}]"
        if (body.get("response_format") or {}).get("type") in ("json_object", "json_schema"):
            content = json.dumps({"label": _sentiment(prompt), "answer": content})
            if self.settings.json_fence:
                content = f"Here is the JSON:\n```json\n{content}\n```"
        thinking = (body.get("chat_template_kwargs") or {}).get("enable_thinking", False)
        message: dict[str, Any] = {"role": "assistant", "content": content}
        reasoning = f"Thinking about: {prompt}" if thinking else None
        if reasoning:
            field_name = self.settings.reasoning_field
            if field_name == "think":
                message["content"] = f"<think>{reasoning}</think>{content}"
            elif field_name == "think-no-open":
                message["content"] = f"{reasoning}</think>\n\n{content}"
            else:
                message[field_name] = reasoning
        calls = _tool_calls(body, prompt)
        finish = "stop"
        if calls:
            message["tool_calls"] = calls
            message["content"] = None
            finish = "tool_calls"
        completion_words = len(content.split()) + (len(reasoning.split()) if reasoning else 0)
        prompt_words = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
        answer: dict[str, Any] = {
            "id": f"chatcmpl-{job.request_id[:8]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "mock"),
        }
        if choices:
            answer["choices"] = [{"index": 0, "message": message, "finish_reason": finish}]
        if usage:
            answer["usage"] = {
                "prompt_tokens": prompt_words,
                "completion_tokens": completion_words,
                "total_tokens": prompt_words + completion_words,
            }
        return answer

    def _bill(self, job: _Job, marker: tuple[str, float | None] | None) -> bytes:
        """Generate (and charge for) the job's answer, once."""
        if job.result is None:
            code = marker[0] if marker else ""
            answer = self._answer(job, usage=code != "nousage", choices=code != "nochoices")
            job.result = json.dumps(answer).encode()
            self._stats_for(job.prompt).billed += 1
        return job.result

    # ---- handlers

    async def chat(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return self._problem(401, "Unauthorized", "Authentication failed")
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return self._respond(
                400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}}
            )
        if not isinstance(body, dict) or not body.get("model"):
            return self._respond(
                400, {"error": {"message": "model is required", "type": "invalid_request_error"}}
            )
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return self._problem(422, "Unprocessable Entity", "messages: field required")
        temperature = body.get("temperature", 0)
        if not isinstance(temperature, int | float) or not 0 <= temperature <= 1:
            # The API reference: "What sampling temperature to use, between 0 and 1."
            detail = f"temperature: Input should be less than or equal to 1, got {temperature}"
            return self._problem(422, "Unprocessable Entity", detail)
        prompt = _last_user_text(messages)
        refs = request.headers.get("NVCF-INPUT-ASSET-REFERENCES", "")
        media, refused = self._media(messages, refs)
        if refused is not None:
            return refused
        stats = self._stats_for(prompt)
        stats.submissions += 1
        stats.last_body = {k: v for k, v in body.items() if k != "messages"}
        now = time.monotonic()
        self.submit_times.append(now)
        if any(j.prompt == prompt for j in self.jobs.values()):
            self.resubmitted_while_pending += 1
        if self._over_rate(now):
            return self._problem(429, "Too Many Requests", headers=self._retry_headers(None))
        try:
            hold = int(request.headers.get("NVCF-POLL-SECONDS", "300"))
        except ValueError:
            hold = 300
        if hold > 3600:
            return self._problem(400, "Bad Request", "NVCF-POLL-SECONDS must be <= 3600")
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._chat(request, body, prompt, hold, media)
        finally:
            self.in_flight -= 1

    async def _chat(
        self, request: web.Request, body: dict[str, Any], prompt: str, hold: int, media: list[str]
    ) -> web.StreamResponse:
        s = self.settings
        marker = self._marker(prompt)
        code, value = marker if marker else ("", None)
        fault = self._fault_response(code, value)
        if fault is not None:
            return fault
        if code == "drop" or self._chance(s.p_drop):
            _drop(request)
            return web.Response()
        latency = s.latency + (self._rng.uniform(0, s.latency_jitter) if s.latency_jitter else 0)
        if code == "slow" and value is not None:
            latency = value
        job = _Job(
            request_id=str(uuid.uuid4()),
            prompt=prompt,
            body=body,
            ready_at=time.monotonic() + latency,
            expire_on_poll=code == "expire",
            large=code == "302",
            media=media,
        )
        if body.get("stream") and code not in ("202", "expire"):
            await asyncio.sleep(latency)
            return await self._stream(request, job, cut=code == "cutstream")
        if code in ("202", "expire") or self._chance(s.p202):
            job.polls_before_ready = s.pending_polls
            return self._accept(job, marker)
        if latency > hold:
            await asyncio.sleep(hold)
            return self._accept(job, marker)
        await asyncio.sleep(latency)
        return self._deliver(request, job, marker)

    def _fault_response(self, code: str, value: float | None) -> web.StreamResponse | None:
        s = self.settings
        if code == "401":
            return self._problem(401, "Unauthorized", "Authentication failed")
        if code == "422":
            return self._problem(
                422, "Unprocessable Entity", "Validation failed: temperature must be <= 1"
            )
        if code == "400":
            return self._problem(400, "Bad Request", "Invalid request")
        if code == "429" or self._chance(s.p429):
            return self._problem(429, "Too Many Requests", headers=self._retry_headers(value))
        if code == "503" or self._chance(s.p503):
            return self._problem(
                503,
                "Service Unavailable",
                "Function is offline",
                headers=self._retry_headers(value) if value else {},
            )
        if code == "504" or self._chance(s.p504):
            return self._respond(504, b"", headers={"NVCF-REQID": str(uuid.uuid4())})
        if code == "500" or self._chance(s.p500):
            return self._problem(500, "Internal Server Error", "Inference error")
        if code == "502" or self._chance(s.p502):
            return self._problem(502, "Bad Gateway", "Upstream request failed.")
        if code == "408":
            return self._problem(408, "Request Timeout")
        return None

    def _accept(self, job: _Job, marker: tuple[str, float | None] | None) -> web.Response:
        # Accepted work is done and charged whether or not its result is ever fetched.
        self._bill(job, marker)
        job.touched = time.monotonic()
        self.jobs[job.request_id] = job
        self.accepted += 1
        return self._respond(
            202, b"", headers={"NVCF-REQID": job.request_id, "NVCF-STATUS": "in-progress"}
        )

    def _deliver(
        self, request: web.Request, job: _Job, marker: tuple[str, float | None] | None
    ) -> web.StreamResponse:
        result = self._bill(job, marker)
        headers = {"NVCF-REQID": job.request_id, "NVCF-STATUS": "fulfilled"}
        if job.large:
            token = uuid.uuid4().hex
            self.large_results[token] = _zip(job.request_id, result)
            self._stats_for(job.prompt).delivered += 1
            return self._respond(
                302, b"", headers={**headers, "Location": f"{_origin(request)}/_mock/large/{token}"}
            )
        if marker and marker[0] == "badjson":
            return self._respond(
                200, result[: len(result) // 2], headers=headers, content_type="application/json"
            )
        self._stats_for(job.prompt).delivered += 1
        return self._respond(200, result, headers=headers, content_type="application/json")

    def _media(self, messages: list[Any], references: str) -> tuple[list[str], web.Response | None]:
        """Sizes of the images a request carries, or the refusal NVIDIA would give."""
        named = {r.strip() for r in references.split(",") if r.strip()}
        sizes: list[str] = []
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            for part in content if isinstance(content, list) else []:
                holder = (
                    (part.get("image_url") or part.get("video_url"))
                    if isinstance(part, dict)
                    else None
                )
                url = holder.get("url") if isinstance(holder, dict) else None
                if not isinstance(url, str):
                    continue
                if ";base64," in url:
                    size = len(base64.b64decode(url.split(";base64,", 1)[1]))
                    limit = self.settings.inline_image_max
                    if limit and size > limit:
                        detail = f"inline image of {size} bytes is over {limit}: use the asset API"
                        return [], self._problem(422, "Unprocessable Entity", detail)
                    sizes.append(f"{size} bytes inline")
                elif ";asset_id," in url:
                    asset_id = url.split(";asset_id,", 1)[1]
                    asset = self.assets.get(asset_id)
                    if asset is None or asset.get("data") is None:
                        return [], self._problem(404, "Not Found", f"asset {asset_id} not found")
                    if asset_id not in named:
                        detail = f"asset {asset_id} missing from NVCF-INPUT-ASSET-REFERENCES"
                        return [], self._problem(422, "Unprocessable Entity", detail)
                    sizes.append(f"{len(asset['data'])} bytes asset")
                else:
                    sizes.append("url")
        return sizes, None

    async def create_asset(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._problem(401, "Unauthorized", "Authentication failed")
        doc = await request.json()
        asset_id = str(uuid.uuid4())
        kind, description = doc.get("contentType"), doc.get("description")
        self.assets[asset_id] = {"contentType": kind, "description": description, "data": None}
        upload = f"{_origin(request)}/_mock/assets/{asset_id}?X-Amz-Signature=mock"
        answer = {
            "assetId": asset_id,
            "uploadUrl": upload,
            "contentType": kind,
            "description": description,
        }
        return self._respond(200, answer)

    async def upload_asset(self, request: web.Request) -> web.Response:
        asset = self.assets.get(request.match_info["asset_id"])
        if asset is None:
            return self._respond(404, b"NoSuchKey", content_type="text/plain")
        same = (
            request.headers.get("Content-Type") == asset["contentType"]
            and request.headers.get("x-amz-meta-nvcf-asset-description") == asset["description"]
        )
        if not same:  # S3 refuses a PUT whose headers differ from those it was signed for
            error = b"<Error><Code>SignatureDoesNotMatch</Code></Error>"
            return self._respond(400, error, content_type="application/xml")
        asset["data"] = await request.read()
        self.asset_uploads += 1
        return self._respond(200, b"")

    async def status_v1(self, request: web.Request) -> web.StreamResponse:
        if not self.settings.status_route:
            # What the gateway says for a route it does not have (PROTOCOL.md decision 1).
            return self._respond(404, b"404 page not found", content_type="text/plain")
        return await self.status(request)

    async def status(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return self._problem(401, "Unauthorized", "Authentication failed")
        self.polls += 1
        job = self.jobs.get(request.match_info["request_id"])
        now = time.monotonic()
        expire = self.settings.expire_after
        if job is not None and (job.expire_on_poll or (expire and now - job.touched > expire)):
            del self.jobs[job.request_id]
            job = None
        if job is None:
            return self._problem(404, "Not Found")
        try:
            hold = min(int(request.headers.get("NVCF-POLL-SECONDS", "300")), 3600)
        except ValueError:
            hold = 300
        if job.polls_before_ready > 0:
            job.polls_before_ready -= 1
            job.touched = time.monotonic()
            return self._respond(202, b"", headers={"NVCF-REQID": job.request_id})
        wait = job.ready_at - now
        if wait > hold:
            await asyncio.sleep(hold)
            job.touched = time.monotonic()
            return self._respond(202, b"", headers={"NVCF-REQID": job.request_id})
        if wait > 0:
            await asyncio.sleep(wait)
        if request.transport is None or request.transport.is_closing():
            return web.Response()  # the poller left: keep the result for its next poll
        if self.jobs.pop(job.request_id, None) is None:
            return self._problem(404, "Not Found")  # consumed by a concurrent poll
        self.polled_ids.add(job.request_id)
        return self._deliver(request, job, None)  # billed at acceptance

    async def large(self, request: web.Request) -> web.StreamResponse:
        data = self.large_results.get(request.match_info["token"])
        if data is None:
            return self._respond(404, b"NoSuchKey", content_type="text/plain")
        return self._respond(200, data, content_type="application/zip")

    async def _stream(self, request: web.Request, job: _Job, *, cut: bool) -> web.StreamResponse:
        answer = json.loads(self._bill(job, None))
        message = answer["choices"][0]["message"]
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "NVCF-REQID": job.request_id}
        )
        self.codes[200] += 1
        await resp.prepare(request)
        base = {
            "id": answer["id"],
            "object": "chat.completion.chunk",
            "created": answer["created"],
            "model": answer["model"],
        }

        async def send(delta: dict[str, Any], finish: str | None = None) -> None:
            chunk = {
                **base,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                "usage": None,
            }
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")

        await send({"role": "assistant", "content": None})
        for key in ("reasoning_content", "reasoning"):
            if message.get(key):
                for word in _pieces(message[key]):
                    await send({key: word})
        if message.get("content"):
            for n, word in enumerate(_pieces(message["content"])):
                if cut and n == 2:
                    _drop(request)
                    return resp
                await send({"content": word})
        mode = self.settings.tool_call_stream
        for index, call in enumerate(message.get("tool_calls") or []):
            function = call["function"]
            if mode == "whole":  # NIM style: whole calls, no index
                await send({"tool_calls": [call]})
                continue
            args = function["arguments"]
            half = len(args) // 2
            ref: dict[str, Any] = {"index": index} if mode == "index" else {"id": call["id"]}
            head = {
                **ref,
                "id": call["id"],
                "type": "function",
                "function": {"name": function["name"], "arguments": args[:half]},
            }
            await send({"tool_calls": [head]})
            await send({"tool_calls": [{**ref, "function": {"arguments": args[half:]}}]})
        await send({}, answer["choices"][0]["finish_reason"])
        wants_usage = (job.body.get("stream_options") or {}).get("include_usage")
        if wants_usage and self.settings.stream_usage:
            await resp.write(
                b"data: "
                + json.dumps({**base, "choices": [], "usage": answer["usage"]}).encode()
                + b"\n\n"
            )
        await resp.write(b"data: [DONE]\n\n")
        self._stats_for(job.prompt).delivered += 1
        await resp.write_eof()
        return resp

    async def models(self, _request: web.Request) -> web.Response:
        return self._respond(
            200, {"object": "list", "data": [{"id": "qwen/qwen3.5-397b-a17b", "object": "model"}]}
        )

    async def stats(self, _request: web.Request) -> web.Response:
        return web.json_response(self.snapshot())

    def snapshot(self) -> dict[str, Any]:
        return {
            "submissions": sum(p.submissions for p in self.prompts.values()),
            "billed": sum(p.billed for p in self.prompts.values()),
            "delivered": sum(p.delivered for p in self.prompts.values()),
            "accepted": self.accepted,
            "polls": self.polls,
            "pending": len(self.jobs),
            "resubmitted_while_pending": self.resubmitted_while_pending,
            "max_in_flight": self.max_in_flight,
            "codes": {str(k): v for k, v in sorted(self.codes.items())},
            "prompts": {k: asdict(v) for k, v in self.prompts.items()},
            "submit_times": list(self.submit_times),
            "polled_ids": sorted(self.polled_ids),
            "asset_uploads": self.asset_uploads,
        }

    async def configure(self, request: web.Request) -> web.Response:
        changes = await request.json()
        names = {f.name for f in fields(MockSettings)}
        for key, value in changes.items():
            if key not in names:
                return web.json_response({"error": f"unknown setting {key}"}, status=400)
            setattr(self.settings, key, value)
        return web.json_response(asdict(self.settings))

    async def reset_handler(self, _request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    def _authorized(self, request: web.Request) -> bool:
        key = self.settings.api_key
        return key is None or request.headers.get("Authorization") == f"Bearer {key}"

    def _over_rate(self, now: float) -> bool:
        limit = self.settings.rpm_limit
        if limit <= 0:
            return False
        while self._window and self._window[0] <= now - 60.0:
            self._window.popleft()
        if len(self._window) >= limit:
            return True
        self._window.append(now)
        return False


def _last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(
                    p.get("text", "")
                    for p in content
                    if isinstance(p, dict) and p.get("type") == "text"
                )
    return ""


def _tool_calls(body: dict[str, Any], prompt: str) -> list[dict[str, Any]] | None:
    """Call the first offered tool whose name the prompt mentions (deterministic)."""
    for tool in body.get("tools") or []:
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or str(function.get("name")) not in prompt:
            continue
        props = (function.get("parameters") or {}).get("properties") or {}
        args: dict[str, Any] = {}
        for name, spec in props.items():
            options = spec.get("enum") if isinstance(spec, dict) else None
            if options:
                args[name] = next((o for o in options if str(o) in prompt), options[0])
            else:
                args[name] = "#00ff00" if "hex" in name else "x"
        call_id = "call_" + uuid.uuid5(uuid.NAMESPACE_OID, prompt + function["name"]).hex[:12]
        return [
            {
                "id": call_id,
                "type": "function",
                "function": {"name": function["name"], "arguments": json.dumps(args)},
            }
        ]
    return None


POSITIVE = frozenset(
    [
        "love",
        "great",
        "gorgeous",
        "recommended",
        "worth",
        "fast",
        "exact",
        "replaced",
        "well",
        "works",
    ]
)
NEGATIVE = frozenset(
    [
        "stopped",
        "broken",
        "crushed",
        "crashes",
        "wrong",
        "mushy",
        "stick",
        "smells",
        "loud",
        "short",
        "late",
    ]
)


def _sentiment(prompt: str) -> str:
    """A deterministic 'label' for JSON answers: enough to score a labelling sweep."""
    text = prompt.rsplit("Review:", 1)[-1]  # judge the review, not the instructions
    words = set(re.findall(r"[a-z]+", text.lower()))
    if words & NEGATIVE:
        return "negative"
    return "positive" if words & POSITIVE else "neutral"


def _pieces(text: str) -> list[str]:
    words = text.split(" ")
    return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]


def _zip(request_id: str, body: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"{request_id}.response", body)
    return buffer.getvalue()


def _drop(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.close()


def _origin(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


# ---------------------------------------------------------------- running it


class MockServer:
    """The endpoint on its own event loop in a thread; for tests and `make demo`."""

    def __init__(
        self, settings: MockSettings | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.endpoint = MockEndpoint(settings)
        self._host, self._port = host, port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="mock-server", daemon=True
        )
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self.port}/v1"

    def start(self) -> MockServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.endpoint.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()
        self.port = self._runner.addresses[0][1]

    def call(self, fn: Any, *args: Any) -> Any:
        """Run `fn(*args)` on the server's loop (settings changes, snapshots)."""

        async def run() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=30)

    def stats(self) -> dict[str, Any]:
        return self.call(self.endpoint.snapshot)  # type: ignore[no-any-return]

    def configure(self, **changes: Any) -> None:
        def apply() -> None:
            for key, value in changes.items():
                if not hasattr(self.endpoint.settings, key):
                    raise AttributeError(key)
                setattr(self.endpoint.settings, key, value)

        self.call(apply)

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> MockServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def serve(settings: MockSettings, host: str, port: int, on_ready: Any = None) -> None:
    """Serve until cancelled (the `batchrun mock-server` command)."""
    runner = web.AppRunner(MockEndpoint(settings).app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    bound = runner.addresses[0][1]
    if on_ready is not None:
        on_ready(f"http://{host}:{bound}/v1")
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
