"""Prompt templates: `prompt_template` / `system_prompt` with `{column}` placeholders.

A safe formatter: a placeholder names a column and nothing else. No attribute access
(`{a.b}`), no indexing (`{a[0]}`), no conversions (`{a!r}`) and no format specs, so a
template from a config file cannot reach into Python objects. `{{` and `}}` are literal
braces. A row without a placeholder's column (or with null there) is invalid, and the error
names the column.
"""

from __future__ import annotations

import json
import string
from collections.abc import Mapping
from typing import Any

from .errors import ConfigError


class TemplateProblem(ValueError):
    """A row cannot fill the template (the row becomes `invalid`)."""


class Template:
    """One template string, parsed once: literal pieces and column names."""

    def __init__(self, text: str, key: str) -> None:
        self.text = text
        self.pieces: list[tuple[str, str | None]] = []
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise ConfigError(
                f"{key}: {exc} in {text!r} (write {{{{ and }}}} for braces)"
            ) from None
        for literal, name, spec, conversion in parsed:
            if name is not None:
                if not name or any(c in name for c in ".[]") or name.isdigit():
                    raise ConfigError(f"{key}: {{{name}}} is not a column name")
                if spec or conversion:
                    raise ConfigError(f"{key}: {{{name}}} may not have a format spec or conversion")
            self.pieces.append((literal, name))

    @property
    def columns(self) -> list[str]:
        return [name for _, name in self.pieces if name is not None]

    def fill(self, row: Mapping[str, Any], what: str) -> str:
        out: list[str] = []
        for literal, name in self.pieces:
            out.append(literal)
            if name is None:
                continue
            value = row.get(name)
            if value is None:
                raise TemplateProblem(f"{what} needs column {name!r}, which this row does not have")
            out.append(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
        return "".join(out)


class PromptTemplate:
    """The job's prompt and system templates, applied to every row when the inputs are read."""

    def __init__(self, prompt: str | None, system: str | None) -> None:
        self.prompt = Template(prompt, "prompt_template") if prompt is not None else None
        self.system = Template(system, "system_prompt") if system is not None else None

    def __bool__(self) -> bool:
        return self.prompt is not None or self.system is not None

    def prompt_messages(self, row: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Messages for a row under `prompt_template` (its own `system` column wins)."""
        assert self.prompt is not None
        messages: list[dict[str, Any]] = []
        system = row.get("system")
        if isinstance(system, str) and system.strip():
            messages.append({"role": "system", "content": system})
        elif self.system is not None:
            messages.append({"role": "system", "content": self.system.fill(row, "system_prompt")})
        messages.append({"role": "user", "content": self.prompt.fill(row, "prompt_template")})
        return messages

    def add_system(self, messages: list[Any], row: Mapping[str, Any]) -> list[Any]:
        """`system_prompt` for rows that bring their own prompt but no system message."""
        if self.system is None:
            return messages
        if any(isinstance(m, dict) and m.get("role") in ("system", "developer") for m in messages):
            return messages
        return [{"role": "system", "content": self.system.fill(row, "system_prompt")}, *messages]
