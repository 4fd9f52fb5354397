"""Request body fields a job sets (`[params]`, `-p`), checked before anything is sent.

Every endpoint: a field the OpenAI API and NVIDIA's reference document must have the type
they give it (`temperature = "hot"` is refused, naming the field where it was set: `-p
temperature`, `job.toml: [params] temperature`). NVIDIA's
endpoints also: the reference's ranges (temperature between 0 and 1), and an unknown field
one typo away from a known one is refused with the suggestion (`temprature`), since the
server would refuse it a row at a time. Other servers take fields of their own (vLLM's
`min_p`) and ranges of their own (temperature up to 2), so those are left to them.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_stop(value: Any) -> bool:
    return isinstance(value, str) or (
        isinstance(value, list) and all(isinstance(v, str) for v in value)
    )


@dataclass(frozen=True)
class Field:
    is_valid: Callable[[Any], bool]
    what: str  # what a valid value is, for the message
    low: float | None = None  # NVIDIA's reference range (NVIDIA endpoints only)
    high: float | None = None

    def problem(self, value: Any, nvidia: bool) -> str | None:
        if not self.is_valid(value):
            return f"must be {self.what}"
        if nvidia and self.low is not None and value < self.low:
            return f"must be >= {self.low:g}" if self.high is None else self._range()
        if nvidia and self.high is not None and value > self.high:
            return self._range()
        return None

    def _range(self) -> str:
        return f"must be between {self.low:g} and {self.high:g} (NVIDIA's API reference)"


NUMBER, INTEGER = "a number", "a whole number"
BOOL, TABLE = "true or false", "a table"
# The API reference for qwen/qwen3.5-397b-a17b (shared/API-REFERENCE.md), and the OpenAI
# fields the endpoint takes besides.
DOCUMENTED: dict[str, Field] = {
    "model": Field(lambda v: isinstance(v, str), "a model name"),
    "max_tokens": Field(_is_integer, INTEGER, low=1),
    "temperature": Field(_is_number, NUMBER, low=0, high=1),
    "top_p": Field(_is_number, NUMBER, low=0, high=1),
    "top_k": Field(_is_integer, INTEGER, low=-1),
    "presence_penalty": Field(_is_number, NUMBER, low=-2, high=2),
    "frequency_penalty": Field(_is_number, NUMBER, low=-2, high=2),
    "repetition_penalty": Field(_is_number, NUMBER, low=0),
    "seed": Field(_is_integer, INTEGER),
    "stream": Field(lambda v: isinstance(v, bool), BOOL),
    "stop": Field(_is_stop, "a string or a list of strings"),
    "n": Field(_is_integer, INTEGER, low=1),
    "logprobs": Field(lambda v: isinstance(v, bool), BOOL),
    "top_logprobs": Field(_is_integer, INTEGER, low=0),
    "chat_template_kwargs": Field(lambda v: isinstance(v, dict), TABLE),
    "tools": Field(lambda v: isinstance(v, list), "a list of tool definitions"),
    "tool_choice": Field(lambda v: isinstance(v, str | dict), "a string or a table"),
    "response_format": Field(lambda v: isinstance(v, dict), TABLE),
    "stream_options": Field(lambda v: isinstance(v, dict), TABLE),
}
TEMPLATE_KWARGS: dict[str, Field] = {
    "enable_thinking": Field(lambda v: isinstance(v, bool), BOOL),
}


def check_body_fields(
    params: Mapping[str, Any], label: Callable[[str], str], *, nvidia: bool
) -> None:
    """Raise ConfigError for a field set wrong, naming it (and the suggestion) by `label`,
    which turns a field's path ("top_p", "chat_template_kwargs.enable_thinking") into the
    words that say where it was set."""
    _check(params, DOCUMENTED, label, nvidia)
    kwargs = params.get("chat_template_kwargs")
    if isinstance(kwargs, dict):
        _check(kwargs, TEMPLATE_KWARGS, lambda name: label(f"chat_template_kwargs.{name}"), nvidia)


def _check(
    values: Mapping[str, Any],
    known: Mapping[str, Field],
    label: Callable[[str], str],
    nvidia: bool,
) -> None:
    for name, value in values.items():
        if value is None:  # `-p top_k=null` removes a default: always allowed
            continue
        field = known.get(name)
        if field is None:
            if nvidia:
                _refuse_typo(name, known, label)
            continue
        problem = field.problem(value, nvidia)
        if problem is not None:
            raise ConfigError(f"{label(name)} {problem}, got {value!r}")


def _refuse_typo(name: str, known: Mapping[str, Field], label: Callable[[str], str]) -> None:
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.8)
    if close:
        raise ConfigError(
            f"{label(name)} is not a field of this endpoint's requests; did you mean {close[0]!r}?"
        )
