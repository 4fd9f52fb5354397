"""Structured labels: an answer's JSON (`--parse-json`) and chosen fields (`--extract a,b`).

Pure functions on the answer text. Models often wrap JSON in a fenced ```json block or add a
sentence around it, so the first fenced block is preferred, then the whole text, then the
outermost {...} or [...] span. An answer that does not parse keeps `status = ok` and gets a
`parse_error` instead: the request succeeded; the label did not.
"""

from __future__ import annotations

import json
import re
from typing import Any

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)


def parse_answer(text: str | None) -> tuple[Any, str | None]:
    """(value, None) when the answer holds JSON, else (None, why not)."""
    if text is None or not text.strip():
        return None, "empty answer"
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
    end = max(text.rfind("}"), text.rfind("]"))
    if 0 <= start < end:
        candidates.append(text[start : end + 1])
    first_error = ""
    for candidate in candidates:
        try:
            return json.loads(candidate), None
        except json.JSONDecodeError as exc:
            first_error = (
                first_error or f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            )
    return None, first_error


def extract_fields(value: Any, fields: list[str]) -> dict[str, Any]:
    """The named top-level fields of a parsed object (missing ones are None)."""
    if not isinstance(value, dict):
        return dict.fromkeys(fields)
    return {name: value.get(name) for name in fields}
