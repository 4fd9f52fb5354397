"""The mock endpoint's switches: latency, capacity, fault rates, limits and answer variants.

One mutable dataclass, read by every part of `batchrun.testing` and changed live through
`POST /_mock/config` or `MockServer.configure()`. It holds no state of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


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
    ratelimit_headers: bool = False  # with rpm_limit: OpenAI's x-ratelimit-*-requests headers
    retry_after: float | None = 1.0  # Retry-After on 429 (None: no header)
    status_route: bool = True  # False: /v1/status answers a plain "404 page not found"
    expire_after: float = 0.0  # > 0: forget an id not polled for this long
    api_key: str | None = None  # set: require "Authorization: Bearer <key>"
    reasoning_field: str = "reasoning_content"  # or "reasoning", "think", "think-no-open"
    stream_usage: bool = True  # False: no usage chunk in streams (llama.cpp's server)
    tool_call_stream: str = "index"  # streamed tool calls keyed by "index", "id", or "whole"
    inline_image_max: int = 180_000  # larger base64 images are refused (use assets)
    json_fence: bool = False  # JSON answers wrapped in a ```json fence with prose around
    slots: int = 0  # > 0: batch slots; more generations at once stretch latency (capacity.py)
    overload: int = 0  # > 0: 503 for a chat request arriving with this many generating
    seed: int | None = None


def apply_changes(settings: MockSettings, changes: dict[str, Any]) -> None:
    """Set each named setting in turn; an unknown name raises AttributeError (naming it)."""
    names = {f.name for f in fields(MockSettings)}
    for key, value in changes.items():
        if key not in names:
            raise AttributeError(key)
        setattr(settings, key, value)
