"""What the mock endpoint answers: a deterministic chat.completion for a request body.

The content is "Answer to: <last user message>", so a test can check that every row got the
answer to its own prompt; with `response_format` JSON it is a JSON object carrying a sentiment
label from a small word list (enough to score a labelling sweep); a judge's prompt gets a
verdict (judge.py: the judge mode). Thinking requests get reasoning text in the configured
field; offered tools the prompt names are called; `[mock:offschemaxN]` makes the first N
JSON answers miss the tests' schemas. Usage counts words. Pure functions: no HTTP, no clock,
no endpoint state.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from .judge import is_judge_prompt, judge_reply
from .settings import MockSettings

# The review words that decide a label; negative wins over positive.
POSITIVE = frozenset(
    {"love", "great", "gorgeous", "recommended", "worth", "fast", "exact", "replaced", "well"}
    | {"works"}
)
NEGATIVE = frozenset(
    {"stopped", "broken", "crushed", "crashes", "wrong", "mushy", "stick", "smells", "loud"}
    | {"short", "late"}
)


def completion(
    *,
    request_id: str,
    prompt: str,
    body: dict[str, Any],
    media: list[str],
    settings: MockSettings,
    created: float,
    usage: bool = True,
    choices: bool = True,
) -> dict[str, Any]:
    """The chat.completion for `body` (`usage`/`choices` False: leave that part out)."""
    content = _content(prompt, body, media, json_fence=settings.json_fence)
    thinking = (body.get("chat_template_kwargs") or {}).get("enable_thinking", False)
    reasoning = f"Thinking about: {prompt}" if thinking else None
    message = _message(content, reasoning, settings.reasoning_field)
    calls = tool_calls(body, prompt)
    finish = "stop"
    if calls:
        message["tool_calls"] = calls
        message["content"] = None
        finish = "tool_calls"
    answer: dict[str, Any] = {
        "id": f"chatcmpl-{request_id[:8]}",
        "object": "chat.completion",
        "created": int(created),
        "model": body.get("model", "mock"),
    }
    if choices:
        answer["choices"] = [{"index": 0, "message": message, "finish_reason": finish}]
    if usage:
        answer["usage"] = _usage(body, content, reasoning)
    return answer


def _content(prompt: str, body: dict[str, Any], media: list[str], *, json_fence: bool) -> str:
    if is_judge_prompt(prompt):
        return judge_reply(prompt, body)
    content = f"Answer to: {prompt}"
    if media:
        content += f" [images: {', '.join(media)}]"
    if (body.get("response_format") or {}).get("type") in ("json_object", "json_schema"):
        label: Any = sentiment(prompt)
        if _off_schema(prompt, body.get("messages") or []):
            label = 0  # a number where every schema in the tests wants a word
        content = json.dumps({"label": label, "answer": content})
        if json_fence:
            content = f"Here is the JSON:\n```json\n{content}\n```"
    return content


def _message(content: str, reasoning: str | None, reasoning_field: str) -> dict[str, Any]:
    """The assistant message, with reasoning where this server flavour puts it."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if not reasoning:
        return message
    if reasoning_field == "think":
        message["content"] = f"<think>{reasoning}</think>{content}"
    elif reasoning_field == "think-no-open":  # templates that open the block in the prompt
        message["content"] = f"{reasoning}</think>\n\n{content}"
    else:
        message[reasoning_field] = reasoning
    return message


def _usage(body: dict[str, Any], content: str, reasoning: str | None) -> dict[str, int]:
    """Words stand in for tokens: the prompt's every message, the answer plus its reasoning."""
    completion_words = len(content.split()) + (len(reasoning.split()) if reasoning else 0)
    prompt_words = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
    return {
        "prompt_tokens": prompt_words,
        "completion_tokens": completion_words,
        "total_tokens": prompt_words + completion_words,
    }


# `[mock:offschemaxN]` in a prompt: its first N JSON answers carry a numeric label. Told
# by the assistant turns already in the conversation (batchrun's validation retries carry
# them), so it needs no state and survives a resume.
OFF_SCHEMA = re.compile(r"\[mock:offschema(?:x(\d+))?\]")
# The user turn batchrun adds after an answer that failed the schema (validation.FEEDBACK):
# not a new question, so the answer still answers the row's prompt.
FEEDBACK_START = "Your answer did not match the required JSON schema"


def _off_schema(prompt: str, messages: list[Any]) -> bool:
    match = OFF_SCHEMA.search(prompt)
    if match is None:
        return False
    answered = sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "assistant")
    return answered < int(match.group(1) or 1)


def last_user_text(messages: list[Any]) -> str:
    """The text of the last user message (text parts joined): what the answer answers.
    batchrun's validation feedback is skipped: the answer is still to the row's prompt."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            if str(message.get("content", "")).startswith(FEEDBACK_START):
                continue
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


def tool_calls(body: dict[str, Any], prompt: str) -> list[dict[str, Any]] | None:
    """Call the first offered tool whose name the prompt mentions (deterministic)."""
    for tool in body.get("tools") or []:
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or str(function.get("name")) not in prompt:
            continue
        name = function["name"]
        call_id = "call_" + uuid.uuid5(uuid.NAMESPACE_OID, prompt + name).hex[:12]
        arguments = json.dumps(_tool_arguments(function, prompt))
        return [
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        ]
    return None


def _tool_arguments(function: dict[str, Any], prompt: str) -> dict[str, Any]:
    """An enum parameter takes the first option the prompt names; others a placeholder."""
    props = (function.get("parameters") or {}).get("properties") or {}
    args: dict[str, Any] = {}
    for name, spec in props.items():
        options = spec.get("enum") if isinstance(spec, dict) else None
        if options:
            args[name] = next((o for o in options if str(o) in prompt), options[0])
        else:
            args[name] = "#00ff00" if "hex" in name else "x"
    return args


def sentiment(prompt: str) -> str:
    """A deterministic 'label' for JSON answers: enough to score a labelling sweep."""
    text = prompt.rsplit("Review:", 1)[-1]  # judge the review, not the instructions
    words = set(re.findall(r"[a-z]+", text.lower()))
    if words & NEGATIVE:
        return "negative"
    return "positive" if words & POSITIVE else "neutral"
