"""Passthrough columns: the type each one gets in the output, learned while rows are read.

Pure Python (no pyarrow), so reading the inputs does not pay pyarrow's import.
"""

from __future__ import annotations

from typing import Any


class ColumnKinds:
    """Learns each passthrough column's type while rows are ingested."""

    def __init__(self) -> None:
        self._kinds: dict[str, str] = {}

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
