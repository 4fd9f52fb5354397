"""Server-sent events: a finished chat.completion replayed as `chat.completion.chunk`s.

The order is the one OpenAI-compatible servers use: a role chunk, reasoning pieces, content
pieces (a word each), tool calls (split in two halves keyed by "index" or "id", or whole as
NIM sends them), a finish chunk, then a usage chunk if asked for, then `[DONE]`. `cut` closes
the connection after the second content piece (the `cutstream` fault).

The endpoint bills and counts; this module only writes the stream.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from .faults import drop_connection

Delta = tuple[dict[str, Any], str | None]  # (delta, finish_reason)


async def stream_answer(
    request: web.Request,
    answer: dict[str, Any],
    *,
    request_id: str,
    tool_call_stream: str,
    include_usage: bool,
    cut: bool,
    headers: dict[str, str] | None = None,
) -> tuple[web.StreamResponse, bool]:
    """Write `answer` as SSE; returns the response and whether the whole stream went out.

    `headers` are sent too (the rate-limit ones). The caller ends the response with
    `write_eof()` once it has counted the delivery.
    """
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "NVCF-REQID": request_id, **(headers or {})}
    )
    await resp.prepare(request)
    base = {
        "id": answer["id"],
        "object": "chat.completion.chunk",
        "created": answer["created"],
        "model": answer["model"],
    }
    choice = answer["choices"][0]
    content_pieces = 0
    for delta, finish in deltas(choice["message"], choice["finish_reason"], tool_call_stream):
        if cut and set(delta) == {"content"}:  # content pieces carry nothing else
            if content_pieces == 2:
                drop_connection(request)
                return resp, False
            content_pieces += 1
        choices = [{"index": 0, "delta": delta, "finish_reason": finish}]
        await _event(resp, {**base, "choices": choices, "usage": None})
    if include_usage:
        await _event(resp, {**base, "choices": [], "usage": answer["usage"]})
    await resp.write(b"data: [DONE]\n\n")
    return resp, True


def deltas(message: dict[str, Any], finish: str, tool_call_stream: str) -> Iterator[Delta]:
    """The stream's deltas for one assistant message, ending with the finish."""
    yield {"role": "assistant", "content": None}, None
    for key in ("reasoning_content", "reasoning"):
        if message.get(key):
            for word in pieces(message[key]):
                yield {key: word}, None
    if message.get("content"):
        for word in pieces(message["content"]):
            yield {"content": word}, None
    for index, call in enumerate(message.get("tool_calls") or []):
        yield from _tool_call_deltas(index, call, tool_call_stream)
    yield {}, finish


def _tool_call_deltas(index: int, call: dict[str, Any], mode: str) -> Iterator[Delta]:
    if mode == "whole":  # NIM style: whole calls, no index
        yield {"tool_calls": [call]}, None
        return
    function = call["function"]
    args = function["arguments"]
    half = len(args) // 2
    ref: dict[str, Any] = {"index": index} if mode == "index" else {"id": call["id"]}
    head = {
        **ref,
        "id": call["id"],
        "type": "function",
        "function": {"name": function["name"], "arguments": args[:half]},
    }
    yield {"tool_calls": [head]}, None
    yield {"tool_calls": [{**ref, "function": {"arguments": args[half:]}}]}, None


def pieces(text: str) -> list[str]:
    """Words, each but the last keeping the space after it (joined, they give `text` back)."""
    words = text.split(" ")
    return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]


async def _event(resp: web.StreamResponse, chunk: dict[str, Any]) -> None:
    await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
