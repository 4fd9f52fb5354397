"""Reading what the server said (pure: bytes and headers in, records out).

- `parse_completion`: a non-streaming chat.completion body -> Completion.
- `StreamAssembler`: SSE `data:` chunks -> the same Completion, plus a chat.completion
  object assembled from the deltas (kept as the row's raw answer).
- `error_detail` / `parse_retry_after`: the server's words and its wait hint, from any of
  the error shapes PROTOCOL.md lists (problem+json, OpenAI error, bare detail, plain text).

Reasoning arrives as `reasoning_content` or `reasoning` (vLLM renamed it); when neither is
present a leading `<think>...</think>` is split out of the content (PROTOCOL.md decision 8).
"""

from __future__ import annotations

import email.utils
import json
import re
import time
from collections.abc import Mapping
from typing import Any

from . import codec
from .errors import ResponseFormatError
from .records import Completion

MAX_DETAIL_CHARS = 500
_DECIMAL = re.compile(r"\d+(\.\d+)?")
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


# ---------------------------------------------------------------- non-streaming


def parse_completion(body: bytes | str) -> Completion:
    """Parse a chat.completion body; anything unusable raises ResponseFormatError (retried)."""
    try:
        data = codec.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ResponseFormatError(f"answer is not JSON: {_snippet(body)}") from None
    if not isinstance(data, dict):
        raise ResponseFormatError(f"answer is not a JSON object: {_snippet(body)}")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ResponseFormatError(f"answer has no choices: {_snippet(body)}")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise ResponseFormatError(f"answer has no choices[0].message: {_snippet(body)}")
    content = _text(message.get("content"))
    reasoning = _text(message.get("reasoning_content")) or _text(message.get("reasoning"))
    if reasoning is None and content:
        reasoning, content = split_think(content)
    tool_calls = message.get("tool_calls") or None
    completion = Completion(
        content=content,
        reasoning_content=reasoning,
        tool_calls=tool_calls if isinstance(tool_calls, list) else None,
        finish_reason=_text(choices[0].get("finish_reason")),
        model=_text(data.get("model")),
    )
    _apply_usage(completion, data.get("usage"))
    return completion


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _apply_usage(completion: Completion, usage: Any) -> None:
    if not isinstance(usage, dict):
        return
    completion.prompt_tokens = _int(usage.get("prompt_tokens"))
    completion.completion_tokens = _int(usage.get("completion_tokens"))
    completion.total_tokens = _int(usage.get("total_tokens"))
    if (
        completion.total_tokens is None
        and completion.prompt_tokens is not None
        and completion.completion_tokens is not None
    ):
        completion.total_tokens = completion.prompt_tokens + completion.completion_tokens


def split_think(content: str) -> tuple[str | None, str]:
    """`<think>why</think>answer` -> ("why", "answer"); the opening tag may be missing."""
    end = content.find(THINK_CLOSE)
    if end < 0:
        return None, content
    head = content[:end]
    start = head.find(THINK_OPEN)
    if start >= 0:
        if head[:start].strip():
            return None, content  # text before <think>: not a reasoning preamble
        head = head[start + len(THINK_OPEN) :]
    return head.strip(), content[end + len(THINK_CLOSE) :].lstrip()


# ---------------------------------------------------------------- streaming


class StreamAssembler:
    """Accumulates SSE chunks into one answer.

    Tool calls are merged by `index`, else by `id`, else each entry is taken whole
    (PROTOCOL.md section 5: NIM may send full calls without an index).
    """

    def __init__(self, started_at: float) -> None:
        self._started_at = started_at
        self.done = False  # saw `data: [DONE]`
        self.ttft_s: float | None = None
        self._content: list[str] = []
        self._reasoning: list[str] = []
        self._calls: dict[Any, dict[str, Any]] = {}
        self._whole_calls = 0
        self._finish_reason: str | None = None
        self._usage: dict[str, Any] | None = None
        self._model: str | None = None
        self._id: str | None = None
        self._created: int | None = None

    @property
    def finished(self) -> bool:
        """True when the stream said it is complete ([DONE], or a finish_reason)."""
        return self.done or self._finish_reason is not None

    def feed_line(self, line: bytes) -> None:
        """One SSE line. Comments, `event:` and `id:` lines and blank lines are ignored."""
        if not line.startswith(b"data:"):
            return
        payload = line[5:].strip()
        if payload == b"[DONE]":
            self.done = True
            return
        if not payload:
            return
        try:
            chunk = codec.loads(payload)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ResponseFormatError(f"stream chunk is not JSON: {_snippet(payload)}") from None
        if not isinstance(chunk, dict):
            raise ResponseFormatError(f"stream chunk is not an object: {_snippet(payload)}")
        self.feed_chunk(chunk)

    def feed_chunk(self, chunk: dict[str, Any]) -> None:
        if "error" in chunk and "choices" not in chunk:
            raise ResponseFormatError(
                f"error in stream: {error_detail(json.dumps(chunk).encode())}"
            )
        self._model = _text(chunk.get("model")) or self._model
        self._id = _text(chunk.get("id")) or self._id
        self._created = _int(chunk.get("created")) or self._created
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            return
        for choice in choices:
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                self._feed_choice(choice)

    def _feed_choice(self, choice: dict[str, Any]) -> None:
        delta = choice.get("delta") or {}
        if not isinstance(delta, dict):
            return
        piece = _text(delta.get("content"))
        thought = _text(delta.get("reasoning_content")) or _text(delta.get("reasoning"))
        if (piece or thought) and self.ttft_s is None:
            self.ttft_s = time.monotonic() - self._started_at
        if piece:
            self._content.append(piece)
        if thought:
            self._reasoning.append(thought)
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                if isinstance(call, dict):
                    self._feed_tool_call(call)
        reason = _text(choice.get("finish_reason"))
        if reason:
            self._finish_reason = reason

    def _feed_tool_call(self, call: dict[str, Any]) -> None:
        if _int(call.get("index")) is not None:
            key: Any = ("index", call["index"])
        elif _text(call.get("id")):
            key = ("id", call["id"])
        else:
            self._whole_calls += 1
            key = ("whole", self._whole_calls)
        current = self._calls.get(key)
        if current is None:
            current = {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
            self._calls[key] = current
        if _text(call.get("id")):
            current["id"] = call["id"]
        if _text(call.get("type")):
            current["type"] = call["type"]
        function = call.get("function")
        if isinstance(function, dict):
            if _text(function.get("name")):
                current["function"]["name"] += function["name"]
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                current["function"]["arguments"] += arguments
            elif arguments is not None:  # some servers send a parsed object
                current["function"]["arguments"] += json.dumps(arguments)

    def completion(self) -> Completion:
        content = "".join(self._content) if self._content else None
        reasoning = "".join(self._reasoning) if self._reasoning else None
        if reasoning is None and content:
            reasoning, content = split_think(content)
        completion = Completion(
            content=content,
            reasoning_content=reasoning,
            tool_calls=list(self._calls.values()) or None,
            finish_reason=self._finish_reason,
            model=self._model,
            ttft_s=self.ttft_s,
        )
        _apply_usage(completion, self._usage)
        return completion

    def as_chat_completion(self) -> dict[str, Any]:
        """The non-streaming object these chunks add up to (the row's raw answer)."""
        c = self.completion()
        message: dict[str, Any] = {"role": "assistant", "content": c.content}
        if c.reasoning_content is not None:
            message["reasoning_content"] = c.reasoning_content
        if c.tool_calls:
            message["tool_calls"] = c.tool_calls
        return {
            "id": self._id,
            "object": "chat.completion",
            "created": self._created,
            "model": self._model,
            "choices": [{"index": 0, "message": message, "finish_reason": c.finish_reason}],
            "usage": self._usage,
        }


# ---------------------------------------------------------------- errors


def error_detail(body: bytes) -> str:
    """The server's words from any error shape, short enough for a log line or a cell."""
    text = body.decode("utf-8", "replace").strip()
    if text.startswith("data:"):  # some streaming endpoints wrap the error as an SSE line
        text = text[5:].strip()
    if not text:
        return ""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return _clip(text)
    return _clip(_detail_from_json(data) or text)


def _detail_from_json(data: Any) -> str | None:
    if not isinstance(data, dict):
        return None
    error = data.get("error")
    if isinstance(error, dict):
        return _text(error.get("message")) or json.dumps(error)
    if isinstance(error, str):
        return error
    title = _text(data.get("title"))
    detail = data.get("detail")
    if detail is not None and not isinstance(detail, str):
        detail = json.dumps(detail)
    if title and detail and detail != title:
        return f"{title}: {detail}"
    return detail or title or _text(data.get("message"))


def is_problem_json(body: bytes, content_type: str) -> bool:
    """NVCF's problem-details body (vs the gateway's plain `404 page not found`)."""
    if "problem+json" in content_type:
        return True
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and ("status" in data or "title" in data or "type" in data)


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms`, `Retry-After` seconds, or an HTTP date."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms and _DECIMAL.fullmatch(raw_ms.strip()):
        return float(raw_ms) / 1000
    raw = headers.get("retry-after")
    if not raw:
        return None
    if _DECIMAL.fullmatch(raw.strip()):  # digits only: no "inf", "nan" or exponents
        return float(raw)
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_DETAIL_CHARS else text[: MAX_DETAIL_CHARS - 1] + "…"


def _snippet(body: bytes | str) -> str:
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    return repr(_clip(text)[:120]) if text else "empty body"
