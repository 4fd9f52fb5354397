"""JSON on the hot paths: reading input lines, storing each row's request parts, parsing
each answer. orjson is several times faster than the stdlib per call there (benchmarks/
RESULTS.md, "Hot-path choices", measures each); everything else keeps the stdlib `json`.

orjson is stricter than the stdlib: integers must fit in 64 bits and NaN/Infinity are not
JSON. A line that breaks those rules is an invalid row, which is what it should be.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

JSONDecodeError = orjson.JSONDecodeError  # a subclass of json.JSONDecodeError
loads = orjson.loads  # bytes or str


def dumps(value: Any, default: Callable[[Any], Any] | None = None) -> str:
    """Compact JSON text, UTF-8 kept as is (like json.dumps(ensure_ascii=False, separators))."""
    return orjson.dumps(value, default=default).decode()
