"""What an answer says, whatever its wire shape was (responses.py reads it). No I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Completion:
    """A chat completion's parts: the answer, its reasoning and tool calls, and usage."""

    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[Any] | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    model: str | None = None
    ttft_s: float | None = None
