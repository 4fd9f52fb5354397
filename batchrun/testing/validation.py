"""What the mock endpoint refuses before doing any work: a missing key, a body that is not a
chat request, a temperature out of range, an image it will not take, an `NVCF-POLL-SECONDS`
over the gateway's maximum.

Each check returns the refusal response, with the status and body NVIDIA's API sends for it;
the endpoint counts and returns it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .answers import last_user_text
from .assets import AssetStore
from .faults import problem, unauthorized

DEFAULT_POLL_SECONDS = 300
MAX_POLL_SECONDS = 3600


@dataclass
class Submission:
    """A chat request worth answering: its body, the prompt it answers, what its images are."""

    body: dict[str, Any]
    prompt: str
    media: list[str]


async def read_submission(
    request: web.Request, api_key: str | None, assets: AssetStore, inline_image_max: int
) -> Submission | web.Response:
    """The submission in a chat request, or the refusal NVIDIA would give it."""
    if not authorized(request.headers, api_key):
        return unauthorized()
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return invalid_request("body is not JSON")
    refusal = check_chat_body(body)
    if refusal is not None:
        return refusal
    references = request.headers.get("NVCF-INPUT-ASSET-REFERENCES", "")
    media, refused = assets.media(body["messages"], references, inline_image_max)
    if refused is not None:
        return refused
    return Submission(body, last_user_text(body["messages"]), media)


def authorized(headers: Mapping[str, str], api_key: str | None) -> bool:
    return api_key is None or headers.get("Authorization") == f"Bearer {api_key}"


def invalid_request(message: str) -> web.Response:
    """OpenAI's error shape, which the gateway uses for a body it cannot read."""
    error = {"error": {"message": message, "type": "invalid_request_error"}}
    return web.json_response(error, status=400)


def check_chat_body(body: Any) -> web.Response | None:
    """The refusal for a chat body that is not a valid request, else None."""
    if not isinstance(body, dict) or not body.get("model"):
        return invalid_request("model is required")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return problem(422, "Unprocessable Entity", "messages: field required")
    temperature = body.get("temperature", 0)
    if not isinstance(temperature, int | float) or not 0 <= temperature <= 1:
        # The API reference: "What sampling temperature to use, between 0 and 1."
        detail = f"temperature: Input should be less than or equal to 1, got {temperature}"
        return problem(422, "Unprocessable Entity", detail)
    return None


def submit_hold(headers: Mapping[str, str]) -> int | web.Response:
    """How long a submission may be held before 202, or the refusal of a hold over the max."""
    hold = _poll_seconds(headers)
    if hold > MAX_POLL_SECONDS:
        return problem(400, "Bad Request", f"NVCF-POLL-SECONDS must be <= {MAX_POLL_SECONDS}")
    return hold


def poll_hold(headers: Mapping[str, str]) -> int:
    """How long a status poll may be held before 202 (over the max: the max)."""
    return min(_poll_seconds(headers), MAX_POLL_SECONDS)


def _poll_seconds(headers: Mapping[str, str]) -> int:
    try:
        return int(headers.get("NVCF-POLL-SECONDS", str(DEFAULT_POLL_SECONDS)))
    except ValueError:
        return DEFAULT_POLL_SECONDS
