"""The mock endpoint itself: `MockEndpoint`, its routes and the life of a request.

`POST /v1/chat/completions` answers the way integrate.api.nvidia.com does: 200 with a
chat.completion, or 202 + `NVCF-REQID` once the request outlives `NVCF-POLL-SECONDS`, with
the result long-polled at `/v1/status/{id}` (or NVCF's `/v2/nvcf/pexec/status/{id}`) and
handed out once; 302 + zip for large results; SSE when asked to stream. It is a test double,
never a reference for what the real API does (PROTOCOL.md is).

The order a chat request goes through: validation (400/401), the rpm window (429), the
capacity's overload check (503, `capacity.py`), then fault markers and rates, then an answer
whose latency the capacity model stretches when the batch slots are shared. With
`ratelimit_headers` and an `rpm_limit`, every answer past validation carries OpenAI's
`x-ratelimit-*-requests` headers, as of the request's arrival (`ratelimit.py`).

Test-facing routes: `GET /_mock/stats` (the counters, with the capacity's `active`,
`peak_active` and `overloaded`), `POST /_mock/config` (change settings live),
`POST /_mock/reset` (forget jobs and counters), `POST /_mock/outage` with `{"seconds": S}`
(answer 200, then be down for S seconds and come back on the same port; `outage.py`).
`hold()` puts an id this process never issued on hold, so a checkpoint written against an
earlier endpoint process can be resumed.

Every reading of the time and every wait goes through the injected clock (`clock.py`).
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import asdict
from typing import Any

from aiohttp import web

from batchrun.clock import Clock, SystemClock

from . import faults
from .answers import completion
from .assets import AssetStore, no_such_key
from .capacity import Capacity
from .faults import Marker
from .jobs import Job, JobTable, LargeResults
from .outage import SiteControl
from .ratelimit import RpmWindow
from .settings import MockSettings, apply_changes
from .stats import EndpointStats
from .streaming import stream_answer
from .validation import Submission, authorized, poll_hold, read_submission, submit_hold


class MockEndpoint:
    """The app's state and handlers; `app()` builds the aiohttp application."""

    def __init__(self, settings: MockSettings | None = None, clock: Clock | None = None) -> None:
        self.settings = settings or MockSettings()
        self.clock: Clock = clock or SystemClock()
        self._rng = random.Random(self.settings.seed)
        self.capacity = Capacity()
        self.site: SiteControl | None = None  # set by whoever listens (server.py)
        self.reset()

    def reset(self) -> None:
        """Forget every job, asset and counter (the settings and the RNG stay)."""
        self.jobs = JobTable()
        self.counters = EndpointStats()
        self.assets = AssetStore()
        self.large_results = LargeResults()
        self._markers = faults.MarkerUses()
        self._window = RpmWindow()
        self.capacity.reset_counters(self.clock.monotonic())

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/status/{request_id}", self._status_v1)
        app.router.add_get("/v2/nvcf/pexec/status/{request_id}", self._status)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/_mock/large/{token}", self._large)
        app.router.add_post("/v2/nvcf/assets", self._create_asset)
        app.router.add_put("/_mock/assets/{asset_id}", self._upload_asset)
        app.router.add_get("/_mock/stats", self._stats)
        app.router.add_post("/_mock/config", self._configure)
        app.router.add_post("/_mock/reset", self._reset)
        app.router.add_post("/_mock/outage", self._outage)
        return app

    def hold(
        self, request_id: str, prompt: str, body: dict[str, Any] | None = None, ready: bool = True
    ) -> None:
        """Hold `request_id` as if this endpoint had answered 202 for `prompt` with it.

        For ids an earlier endpoint process issued (a checkpoint resumed against a new mock).
        The answer is generated and billed now, once; the first poll of the id that finds it
        ready gets 200 with it, later polls 404. `ready=False`: the first
        `settings.pending_polls` polls answer 202. `body` defaults to one user message. The
        stats count it as billed (and, once polled, delivered), not as a submission.
        """
        if request_id in self.jobs:
            raise ValueError(f"{request_id} is already pending")
        now = self.clock.monotonic()
        job = Job(
            request_id=request_id,
            prompt=prompt,
            body=body if body is not None else {"messages": [{"role": "user", "content": prompt}]},
            ready_at=now,
            touched=now,
            polls_before_ready=0 if ready else self.settings.pending_polls,
        )
        self._bill(job, None)
        self.jobs.add(job)

    def snapshot(self) -> dict[str, Any]:
        """The counters (`GET /_mock/stats`)."""
        counters = self.counters.snapshot(pending=len(self.jobs), asset_uploads=self.assets.uploads)
        return {**counters, **self.capacity.snapshot(self.clock.monotonic())}

    # ---- submission

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        s = self.settings
        submission = await read_submission(request, s.api_key, self.assets, s.inline_image_max)
        if isinstance(submission, web.Response):
            return self._sent(submission)
        prompt = submission.prompt
        now = self.clock.monotonic()
        pending = self.jobs.has_prompt(prompt)
        self.counters.record_submission(prompt, submission.body, now, pending=pending)
        refused = self._window.refuses(now, s.rpm_limit)
        limits = self._ratelimit_headers(now)
        response: web.StreamResponse
        if refused:
            response = self._sent(faults.too_many_requests(None, s.retry_after))
        else:
            response = await self._within_limit(request, submission, now, limits)
        if not response.prepared:  # a stream was sent with them (_stream)
            response.headers.update(limits)
        return response

    async def _within_limit(
        self, request: web.Request, submission: Submission, now: float, limits: dict[str, str]
    ) -> web.StreamResponse:
        hold = submit_hold(request.headers)
        if isinstance(hold, web.Response):
            return self._sent(hold)
        # Before the markers are taken: a refused request must not use up a `[mock:CODExN]`.
        if self.capacity.refuses(now, self.settings.overload):
            return self._sent(faults.overloaded(self.capacity.active(now)))
        with self.counters.serving():
            return await self._answer(request, submission, hold, limits)

    def _ratelimit_headers(self, now: float) -> dict[str, str]:
        """OpenAI's `x-ratelimit-*-requests` headers, if asked for and there is a limit."""
        s = self.settings
        if not (s.ratelimit_headers and s.rpm_limit > 0):
            return {}
        return self._window.headers(now, s.rpm_limit)

    async def _answer(
        self, request: web.Request, submission: Submission, hold: int, limits: dict[str, str]
    ) -> web.StreamResponse:
        """Fault, stream, 202 or 200: what a valid submission within the rate limit gets."""
        s = self.settings
        body, prompt = submission.body, submission.prompt
        marker = self._markers.take(prompt)
        code, value = marker if marker else ("", None)
        fault = faults.fault_response(marker, s, self._chance)
        if fault is not None:
            return self._sent(fault)
        if code == "drop" or self._chance(s.p_drop):
            faults.drop_connection(request)
            return web.Response()
        latency = s.latency + (self._rng.uniform(0, s.latency_jitter) if s.latency_jitter else 0)
        if code == "slow" and value is not None:
            latency = value
        now = self.clock.monotonic()
        latency = self.capacity.start(now, latency, s.slots)
        job = Job(
            request_id=str(uuid.uuid4()),
            prompt=prompt,
            body=body,
            ready_at=now + latency,
            touched=now,
            expire_on_poll=code == "expire",
            large=code == "302",
            media=submission.media,
        )
        if body.get("stream") and code not in ("202", "expire"):
            await self.clock.sleep(latency)
            return await self._stream(request, job, cut=code == "cutstream", headers=limits)
        if code in ("202", "expire") or self._chance(s.p202):
            job.polls_before_ready = s.pending_polls
            return self._accept(job, marker)
        if latency > hold:
            await self.clock.sleep(hold)
            return self._accept(job, marker)
        await self.clock.sleep(latency)
        return self._deliver(request, job, marker)

    def _bill(self, job: Job, marker: Marker | None) -> bytes:
        """Generate (and charge for) the job's answer, once."""
        if job.result is None:
            code = marker.code if marker else ""
            answer = completion(
                request_id=job.request_id,
                prompt=job.prompt,
                body=job.body,
                media=job.media,
                settings=self.settings,
                created=self.clock.wall(),
                usage=code != "nousage",
                choices=code != "nochoices",
            )
            job.result = json.dumps(answer).encode()
            self.counters.for_prompt(job.prompt).billed += 1
        return job.result

    def _accept(self, job: Job, marker: Marker | None) -> web.Response:
        # Accepted work is done and charged whether or not its result is ever fetched.
        self._bill(job, marker)
        job.touched = self.clock.monotonic()
        self.jobs.add(job)
        self.counters.accepted += 1
        headers = {"NVCF-REQID": job.request_id, "NVCF-STATUS": "in-progress"}
        return self._sent(web.Response(status=202, body=b"", headers=headers))

    def _deliver(self, request: web.Request, job: Job, marker: Marker | None) -> web.Response:
        result = self._bill(job, marker)
        headers = {"NVCF-REQID": job.request_id, "NVCF-STATUS": "fulfilled"}
        if job.large:
            token = self.large_results.put(job.request_id, result)
            self.counters.for_prompt(job.prompt).delivered += 1
            headers["Location"] = f"{_origin(request)}/_mock/large/{token}"
            return self._sent(web.Response(status=302, body=b"", headers=headers))
        if marker and marker.code == "badjson":
            result = result[: len(result) // 2]
        else:
            self.counters.for_prompt(job.prompt).delivered += 1
        return self._sent(
            web.Response(body=result, headers=headers, content_type="application/json")
        )

    async def _stream(
        self, request: web.Request, job: Job, *, cut: bool, headers: dict[str, str]
    ) -> web.StreamResponse:
        answer = json.loads(self._bill(job, None))
        self.counters.codes[200] += 1
        wants_usage = (job.body.get("stream_options") or {}).get("include_usage")
        resp, whole = await stream_answer(
            request,
            answer,
            request_id=job.request_id,
            tool_call_stream=self.settings.tool_call_stream,
            include_usage=bool(wants_usage and self.settings.stream_usage),
            cut=cut,
            headers=headers,
        )
        if whole:
            self.counters.for_prompt(job.prompt).delivered += 1
            await resp.write_eof()
        return resp

    # ---- polling

    async def _status_v1(self, request: web.Request) -> web.StreamResponse:
        if not self.settings.status_route:
            # What the gateway says for a route it does not have (PROTOCOL.md decision 1).
            return self._sent(_not_found_page())
        return await self._status(request)

    async def _status(self, request: web.Request) -> web.StreamResponse:
        if not authorized(request.headers, self.settings.api_key):
            return self._sent(faults.unauthorized())
        self.counters.polls += 1
        now = self.clock.monotonic()
        job = self.jobs.find(request.match_info["request_id"], now, self.settings.expire_after)
        if job is None:
            return self._sent(faults.problem(404, "Not Found"))
        hold = poll_hold(request.headers)
        if job.polls_before_ready > 0:
            job.polls_before_ready -= 1
            return self._still_pending(job)
        wait = job.ready_at - now
        if wait > hold:
            await self.clock.sleep(hold)
            return self._still_pending(job)
        if wait > 0:
            await self.clock.sleep(wait)
        if request.transport is None or request.transport.is_closing():
            return web.Response()  # the poller left: keep the result for its next poll
        if self.jobs.take(job.request_id) is None:
            return self._sent(faults.problem(404, "Not Found"))  # consumed by a concurrent poll
        self.counters.polled_ids.add(job.request_id)
        return self._deliver(request, job, None)  # billed at acceptance

    def _still_pending(self, job: Job) -> web.Response:
        job.touched = self.clock.monotonic()
        headers = {"NVCF-REQID": job.request_id}
        return self._sent(web.Response(status=202, body=b"", headers=headers))

    async def _large(self, request: web.Request) -> web.Response:
        data = self.large_results.get(request.match_info["token"])
        if data is None:
            return self._sent(no_such_key())
        return self._sent(web.Response(body=data, content_type="application/zip"))

    # ---- assets, models and the test-facing routes

    async def _create_asset(self, request: web.Request) -> web.Response:
        if not authorized(request.headers, self.settings.api_key):
            return self._sent(faults.unauthorized())
        doc = await request.json()
        return self._sent(self.assets.create(doc, f"{_origin(request)}/_mock/assets"))

    async def _upload_asset(self, request: web.Request) -> web.Response:
        return self._sent(await self.assets.upload(request))

    async def _models(self, _request: web.Request) -> web.Response:
        models = [{"id": "qwen/qwen3.5-397b-a17b", "object": "model"}]
        return self._sent(web.json_response({"object": "list", "data": models}))

    async def _stats(self, _request: web.Request) -> web.Response:
        return web.json_response(self.snapshot())

    async def _configure(self, request: web.Request) -> web.Response:
        try:
            apply_changes(self.settings, await request.json())
        except AttributeError as exc:
            return web.json_response({"error": f"unknown setting {exc}"}, status=400)
        return web.json_response(asdict(self.settings))

    async def _reset(self, _request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    async def _outage(self, request: web.Request) -> web.StreamResponse:
        if self.site is None:  # e.g. aiohttp's TestServer: nothing here owns the socket
            return web.json_response(
                {"error": "no outage without MockServer or serve()"}, status=501
            )
        try:
            seconds = float((await request.json())["seconds"])
        except (ValueError, TypeError, KeyError):
            seconds = -1.0
        if not seconds >= 0:  # also refuses NaN
            return web.json_response({"error": 'expected {"seconds": S}, S >= 0'}, status=400)
        return await self.site.outage_response(request, seconds)

    # ---- helpers

    def _sent(self, response: web.Response) -> web.Response:
        """Count the response's status (`codes` in the stats) and return it."""
        self.counters.codes[response.status] += 1
        return response

    def _chance(self, p: float) -> bool:
        return p > 0 and self._rng.random() < p


def _not_found_page() -> web.Response:
    return web.Response(status=404, body=b"404 page not found", content_type="text/plain")


def _origin(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"
