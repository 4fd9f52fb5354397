"""Fault injection for the mock endpoint: prompt markers, fault rates, problem bodies.

Faults come two ways:
- rates (`p429`, `p500`, `p503`, ...) drawn from the endpoint's seeded RNG, for soak tests;
- markers in the prompt, for exact tests: `[mock:CODE]` every time, `[mock:CODExN]` the first
  N submissions of that prompt, `=V` a Retry-After or a latency. CODE is a status (400, 401,
  408, 422, 429, 500, 502, 503, 504), or one of: 202 (answer via polling), expire (the id is
  forgotten at the first poll), 302 (result as a zip download), drop (close the connection),
  badjson (a truncated body), nochoices, nousage, cutstream, slow (=seconds of latency).

This module turns a marker or a rate into an error response; what happens to a request that
is answered (202, 302, drop, slow ...) is decided in `app.py`. Error bodies are RFC 9457
problem+json, as NVIDIA's gateway sends them.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from aiohttp import web

from .settings import MockSettings

MARKER = re.compile(r"\[mock:([a-z0-9]+?)(?:x(\d+))?(?:=([0-9.]+))?\]")
PROBLEM = "application/problem+json"


class Marker(NamedTuple):
    """The marker in force for one submission: its code and its `=V` value, if any."""

    code: str
    value: float | None


@dataclass(frozen=True)
class MarkerSpec:
    """One marker as written in a prompt."""

    text: str  # e.g. "[mock:429x2=0.5]"
    code: str
    times: int | None  # the first N submissions only; None: every submission
    value: float | None


def parse_markers(prompt: str) -> list[MarkerSpec]:
    """Every marker in the prompt, in order."""
    return [
        MarkerSpec(
            text=match.group(0),
            code=match.group(1),
            times=int(match.group(2)) if match.group(2) is not None else None,
            value=float(match.group(3)) if match.group(3) else None,
        )
        for match in MARKER.finditer(prompt)
    ]


class MarkerUses:
    """Counts each prompt's marker uses, so `[mock:CODExN]` stops after N submissions."""

    def __init__(self) -> None:
        self._uses: Counter[tuple[str, str]] = Counter()

    def take(self, prompt: str) -> Marker | None:
        """The first marker of this prompt still in force for this submission (and use it)."""
        for spec in parse_markers(prompt):
            key = (prompt, spec.text)
            if spec.times is not None and self._uses[key] >= spec.times:
                continue
            self._uses[key] += 1
            return Marker(spec.code, spec.value)
        return None


def problem(
    status: int, title: str, detail: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    """An RFC 9457 problem+json response."""
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    return web.json_response(body, status=status, content_type=PROBLEM, headers=headers)


def unauthorized() -> web.Response:
    return problem(401, "Unauthorized", "Authentication failed")


def too_many_requests(value: float | None, default: float | None) -> web.Response:
    """429 with Retry-After: the marker's value, else the configured one (None: no header)."""
    return problem(429, "Too Many Requests", headers=retry_headers(value, default))


def retry_headers(value: float | None, default: float | None) -> dict[str, str]:
    """Retry-After: the marker's value, else the configured one (None: no header)."""
    wait = value if value is not None else default
    return {} if wait is None else {"Retry-After": f"{wait:g}"}


def overloaded(in_progress: int) -> web.Response:
    """503 for a request the capacity model sheds (`overload`); no Retry-After, as vLLM."""
    return problem(503, "Service Unavailable", f"Overloaded: {in_progress} requests in progress")


def fault_response(
    marker: Marker | None, settings: MockSettings, chance: Callable[[float], bool]
) -> web.Response | None:
    """The error a marker or a fault rate calls for, or None to answer normally.

    `chance(p)` draws from the endpoint's seeded RNG; the order of the checks (and so of the
    draws) is what makes a seeded run repeat itself.
    """
    code, value = marker if marker else ("", None)
    s = settings
    if code == "401":
        return unauthorized()
    if code == "422":
        return problem(422, "Unprocessable Entity", "Validation failed: temperature must be <= 1")
    if code == "400":
        return problem(400, "Bad Request", "Invalid request")
    if code == "429" or chance(s.p429):
        return too_many_requests(value, s.retry_after)
    if code == "503" or chance(s.p503):
        headers = retry_headers(value, s.retry_after) if value else {}
        return problem(503, "Service Unavailable", "Function is offline", headers=headers)
    if code == "504" or chance(s.p504):
        return web.Response(status=504, body=b"", headers={"NVCF-REQID": str(uuid.uuid4())})
    if code == "500" or chance(s.p500):
        return problem(500, "Internal Server Error", "Inference error")
    if code == "502" or chance(s.p502):
        return problem(502, "Bad Gateway", "Upstream request failed.")
    if code == "408":
        return problem(408, "Request Timeout")
    return None


def drop_connection(request: web.Request) -> None:
    """Close the connection without an answer (the `drop` and `cutstream` faults)."""
    if request.transport is not None:
        request.transport.close()
