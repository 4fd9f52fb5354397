"""The output's columns: the fixed ones (the one list every part reads), and the passthrough
columns, whose types are learned while rows are read.

Pure Python (no pyarrow), so reading the inputs does not pay pyarrow's import.
"""

from __future__ import annotations

from typing import Any

# The fixed output columns, in order, with their kinds (results.py maps kinds to Arrow types;
# SPEC.md "Output" says what each holds).
BASE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "str"), ("status", "str"), ("content", "str"), ("reasoning_content", "str"),
    ("tool_calls", "str"), ("finish_reason", "str"), ("prompt_tokens", "int"),
    ("completion_tokens", "int"), ("total_tokens", "int"), ("model", "str"),
    ("endpoint", "str"), ("request_id", "str"), ("attempts", "int32"), ("latency_s", "float"),
    ("ttft_s", "float"), ("error", "str"), ("reused", "bool"), ("request_hash", "str"),
)  # fmt: skip
# Columns --parse-json adds (and the --extract fields after them).
PARSED_COLUMNS = ("parsed", "parse_error")
# Columns a job with a schema adds (validation.py): answers checked, and the last error.
VALIDATION_COLUMNS = (("validation_attempts", "int32"), ("validation_error", "str"))
# Names a passthrough column may not take (such an input column gets an `input_` prefix).
RESERVED = (
    frozenset(name for name, _ in BASE_COLUMNS)
    | frozenset(PARSED_COLUMNS)
    | frozenset(name for name, _ in VALIDATION_COLUMNS)
)


class ColumnKinds:
    """Learns each passthrough column's type while rows are ingested."""

    def __init__(self, learned: list[list[str]] | None = None) -> None:
        """`learned`: what `learned()` returned for the rows read before (a job going on)."""
        self._kinds: dict[str, str] = dict((name, kind) for name, kind in learned or [])

    def learned(self) -> list[list[str]]:
        """Every column and its kind so far, "null" for columns with only nulls yet."""
        return [[name, kind] for name, kind in self._kinds.items()]

    def observe(self, extra: dict[str, Any] | None) -> None:
        if not extra:
            return
        for name, value in extra.items():
            if value is None:
                self._kinds.setdefault(name, "null")
                continue
            kind = _kind_of(value)
            seen = self._kinds.get(name)
            if seen is None or seen == "null":
                self._kinds[name] = kind
            elif seen != kind:
                self._kinds[name] = "float" if {seen, kind} == {"int", "float"} else "json"

    @property
    def names(self) -> list[str]:
        """Columns seen so far, in order of first appearance (new ones only append)."""
        return list(self._kinds)

    def as_list(self) -> list[list[str]]:
        return [[name, "str" if kind == "null" else kind] for name, kind in self._kinds.items()]


def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int" if -(2**63) <= value < 2**63 else "json"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    return "json"
