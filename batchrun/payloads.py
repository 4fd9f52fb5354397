"""Raw input rows -> validated requests (pure: no I/O).

A row is one of three shapes (SPEC.md "Input"): `prompt` (+ optional `system`), OpenAI
`messages`, or an OpenAI Batch API line (`custom_id`, `method`, `url`, `body`). This module
decides a row's id, turns it into the messages plus per-row body overrides that the
checkpoint stores, says exactly what is wrong with a row it cannot use, and builds the
request bytes at send time with as little per-row work as possible.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from . import codec
from .columns import RESERVED
from .dataset import SourceRow, jsonable
from .media import MediaProblem, iter_media_parts, localize
from .templates import PromptTemplate, TemplateProblem

# Input keys that describe the request; everything else is passed through to the output.
REQUEST_KEYS = frozenset(
    {"id", "custom_id", "prompt", "system", "messages", "method", "url", "body"}
)
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
CHAT_URL_SUFFIX = "/chat/completions"


@dataclass(slots=True)
class PreparedRow:
    """A row ready for the checkpoint. `error` set means invalid: stored, never sent."""

    row_id: str
    loc: str
    messages: str | None = None  # JSON array
    overrides: str | None = None  # JSON object of per-row body fields, or None
    extra: dict[str, Any] | None = None  # passthrough columns
    est_tokens: int = 0
    error: str | None = None
    # The prompt template, filled from `extra` as stored (JSON), gives these messages back
    # exactly: the checkpoint need not keep them.
    templated: bool = False


class RowProblem(ValueError):
    """What is wrong with one row (becomes that row's `error`)."""


def prepare_row(source: SourceRow, template: PromptTemplate | None = None) -> PreparedRow:
    """Validate one row and turn it into what the checkpoint stores."""
    if source.data is None:
        return PreparedRow(row_id=source.loc, loc=source.loc, error=source.error)
    data = source.data
    try:
        row_id = _row_id(data, source.loc)
    except RowProblem as exc:
        return PreparedRow(row_id=source.loc, loc=source.loc, error=f"{source.loc}: {exc}")
    extra = _passthrough(data)
    try:
        messages, overrides = _templated_parts(data, template)
        overrides.update(_row_params(data.get("params")))
        if data.get("images") is not None or any(iter_media_parts(messages)):
            messages = localize(messages, data.get("images"), source.base_dir)
    except (RowProblem, MediaProblem, TemplateProblem) as exc:
        return PreparedRow(row_id, source.loc, extra=extra, error=f"{source.loc}: {exc}")
    return PreparedRow(
        row_id=row_id,
        loc=source.loc,
        messages=codec.dumps(messages),
        overrides=(codec.dumps(overrides) if overrides else None),
        extra=extra,
        est_tokens=estimate_prompt_tokens(messages),
        templated=_rebuilt_by(template, extra, messages),
    )


def _rebuilt_by(
    template: PromptTemplate | None, extra: dict[str, Any] | None, messages: list[Any]
) -> bool:
    """Whether the template, filled from the stored passthrough values, gives `messages`."""
    if template is None or template.prompt is None or extra is None:
        return False
    try:
        return template.prompt_messages(codec.loads(dump_extra(extra) or "{}")) == messages
    except TemplateProblem:
        return False


def _row_id(data: dict[str, Any], loc: str) -> str:
    for key in ("id", "custom_id"):
        value = data.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise RowProblem(f"{key} must be a string or an integer, got {type(value).__name__}")
        text = str(value)
        if not text:
            raise RowProblem(f"{key} is empty")
        return text
    # No id column: stable from the file name and row number.
    return loc


def _passthrough(data: dict[str, Any]) -> dict[str, Any] | None:
    extra = {
        (f"input_{key}" if key in RESERVED else key): value
        for key, value in data.items()
        if key not in REQUEST_KEYS
    }
    return extra or None


def _templated_parts(
    data: dict[str, Any], template: PromptTemplate | None
) -> tuple[list[Any], dict[str, Any]]:
    if template is None or not template:
        return _request_parts(data)
    if template.prompt is None:
        messages, overrides = _request_parts(data)
        return template.add_system(messages, data), overrides
    for key in ("messages", "body"):
        if data.get(key) is not None:
            raise RowProblem(f"has {key!r}, but this job builds prompts from prompt_template")
    return template.prompt_messages(data), {}


def _request_parts(data: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    has = [key for key in ("prompt", "messages", "body") if data.get(key) is not None]
    if not has:
        raise RowProblem("no prompt, messages or body: nothing to send")
    if len(has) > 1:
        raise RowProblem(f"has both {has[0]!r} and {has[1]!r}; use one")
    if has[0] == "prompt":
        return _prompt_messages(data), {}
    if has[0] == "messages":
        return _check_messages(data["messages"], "messages"), {}
    return _batch_line(data)


def _row_params(params: Any) -> dict[str, Any]:
    """A `params` column: request body fields for this row (a JSON object or its text)."""
    if params is None:
        return {}
    if isinstance(params, str):
        try:
            params = json.loads(params)
        except json.JSONDecodeError as exc:
            raise RowProblem(f"params is a string that is not JSON ({exc.msg})") from None
    if not isinstance(params, dict):
        raise RowProblem("params must be a JSON object of request body fields")
    if "messages" in params:
        raise RowProblem("params cannot set messages")
    return params


def _prompt_messages(data: dict[str, Any]) -> list[dict[str, Any]]:
    prompt = data["prompt"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise RowProblem("prompt must be a non-empty string")
    messages: list[dict[str, Any]] = []
    system = data.get("system")
    if system is not None:
        if not isinstance(system, str):
            raise RowProblem("system must be a string")
        if system.strip():
            messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": prompt})
    return messages


def _check_messages(messages: Any, where: str) -> list[Any]:
    if isinstance(messages, str):
        # Parquet datasets often store messages as a JSON string column.
        try:
            messages = json.loads(messages)
        except json.JSONDecodeError as exc:
            raise RowProblem(f"{where} is a string that is not JSON ({exc.msg})") from None
    if not isinstance(messages, list) or not messages:
        raise RowProblem(f"{where} must be a non-empty list of chat messages")
    for n, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RowProblem(f"{where}[{n}] must be an object with role and content")
        role = message.get("role")
        if role not in ROLES:
            raise RowProblem(f"{where}[{n}].role must be one of {sorted(ROLES)}, got {role!r}")
        content = message.get("content")
        if content is None and role == "assistant" and message.get("tool_calls"):
            continue
        if not isinstance(content, str | list):
            raise RowProblem(f"{where}[{n}].content must be a string or a list of parts")
    return messages


def _batch_line(data: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    method = data.get("method", "POST")
    if method != "POST":
        raise RowProblem(f"method must be POST, got {method!r}")
    url = data.get("url", "/v1/chat/completions")
    if not isinstance(url, str) or not url.rstrip("/").endswith(CHAT_URL_SUFFIX):
        raise RowProblem(f"url must be /v1/chat/completions, got {url!r}")
    body = data["body"]
    if not isinstance(body, dict):
        raise RowProblem("body must be a JSON object")
    overrides = {k: v for k, v in body.items() if k != "messages"}
    return _check_messages(body.get("messages"), "body.messages"), overrides


def estimate_prompt_tokens(messages: list[Any]) -> int:
    """A cheap upper-leaning guess (about 4 characters a token) for the TPM budget."""
    chars = 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    chars += len(part["text"])
    return chars // 4 + 4 * len(messages) + 1


def dump_extra(extra: dict[str, Any] | None) -> str | None:
    if not extra:
        return None
    return codec.dumps(extra, default=jsonable)


# Body fields that change how an answer travels, not what it says: left out of request keys.
TRANSPORT_FIELDS = ("stream", "stream_options")


class RequestKeys:
    """A row's request key: sha256 of the full request body it sends (less transport fields).

    Two rows, or two jobs, with the same key ask the same question of the same model with the
    same settings, so one's answer can stand for the other's (`--reuse`, `--offline`).
    """

    def __init__(self, template: dict[str, Any]) -> None:
        self._builder = BodyBuilder(
            {k: v for k, v in template.items() if k not in TRANSPORT_FIELDS}
        )

    def key(self, messages: str, overrides: str | None) -> bytes:
        if overrides is not None:
            fields = {k: v for k, v in codec.loads(overrides).items() if k not in TRANSPORT_FIELDS}
            overrides = (
                json.dumps(fields, ensure_ascii=False, separators=(",", ":")) if fields else None
            )
        return hashlib.sha256(self._builder.build(messages, overrides)).digest()


class BodyBuilder:
    """Builds request bytes: the job's template once, each row's messages spliced in.

    Rows without overrides (the common case) cost one string concatenation, no
    json.dumps of the template per request.
    """

    def __init__(self, template: dict[str, Any]) -> None:
        self.template = template
        head = json.dumps(template, ensure_ascii=False, separators=(",", ":"))
        self._prefix = head[:-1] + (',"messages":' if template else '"messages":')

    def build(self, messages: str, overrides: str | None) -> bytes:
        return self.build_with_stream(messages, overrides, False)[0]

    def build_with_stream(
        self, messages: str, overrides: str | None, stream: bool
    ) -> tuple[bytes, bool]:
        """Request bytes, and whether this row streams (a row's body may say so)."""
        if overrides is None:
            return (self._prefix + messages + "}").encode(), stream
        body = {**self.template, **codec.loads(overrides)}
        body["messages"] = codec.loads(messages)
        if body.get("stream") is True:
            body.setdefault("stream_options", {"include_usage": True})
        else:
            body.pop("stream_options", None)  # servers reject it without stream
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        return data, body.get("stream") is True

    def max_tokens(self, overrides: str | None) -> int | None:
        source = codec.loads(overrides) if overrides else self.template
        value = source.get("max_tokens", self.template.get("max_tokens"))
        return value if isinstance(value, int) else None
