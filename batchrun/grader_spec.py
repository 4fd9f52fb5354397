"""A sweep file's `[[graders]]` tables, read and checked when the sweep file is read.

Every mistake is a ConfigError (exit 2, before any cell runs) naming the file, the grader
and the key: `sweep.toml: [[graders]] 'fmt' pattern: not a regular expression (...)`.
Regular expressions are compiled and JSON schemas checked here, once; a judge's rubric,
settings and key are checked by judge_config.py. Grading a row is graders.py's.

    [[graders]]
    name = "label"          # unique; names the grader in summaries and grades.parquet
    kind = "exact"          # exact | regex | number | includes | json_schema | judge
    field = "label"         # optional: grade parsed[label] (dotted for nested), not the answer
    expected_column = "expected"   # where each row's expected value is (the default)
    # expected = "yes"      # or one literal expected value for every row
    min_score = 0.8         # optional gate: the cell fails below this score
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for

from .config import Source
from .errors import ConfigError
from .judge_config import JUDGE_KEYS, JudgeSpec, compile_regex, read_judge


class GraderKind(StrEnum):
    EXACT = "exact"
    REGEX = "regex"
    NUMBER = "number"
    INCLUDES = "includes"
    JSON_SCHEMA = "json_schema"
    JUDGE = "judge"


COMMON_KEYS = frozenset({"name", "kind", "min_score"})
_COMPARING = frozenset({"field", "expected", "expected_column", "case_sensitive"})
KIND_KEYS: dict[GraderKind, frozenset[str]] = {
    GraderKind.EXACT: _COMPARING,
    GraderKind.REGEX: _COMPARING | {"pattern", "expected_group"},
    GraderKind.NUMBER: frozenset({"field", "expected", "expected_column", "tolerance"}),
    GraderKind.INCLUDES: _COMPARING,
    GraderKind.JSON_SCHEMA: frozenset({"field", "schema", "schema_file"}),
    GraderKind.JUDGE: JUDGE_KEYS,
}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # it names a folder and a JUnit property


@dataclass(frozen=True)
class Tolerance:
    """How far a number may be from the expected one: absolute, or `percent` of it."""

    amount: float = 0.0
    relative: bool = False

    def allows(self, got: float, want: float) -> bool:
        limit = abs(want) * self.amount / 100 if self.relative else self.amount
        # A hair of slack so that 0.1 + 0.2 is 0.3 with no tolerance, as a reader means it.
        return abs(got - want) <= limit + 1e-9 * max(1.0, abs(want))

    def __str__(self) -> str:
        return f"{self.amount:g}%" if self.relative else f"{self.amount:g}"


@dataclass(frozen=True)
class GraderSpec:
    """One grader, checked. `key` fingerprints what it computes (not its gate), so a
    baseline graded by another definition of the same name is noticed."""

    name: str
    kind: GraderKind
    key: str = ""
    min_score: float | None = None
    field: str | None = None  # grade parsed[field], not the answer
    expected: Any = None  # one literal for every row; None: the row's expected_column
    expected_column: str = "expected"
    case_sensitive: bool = False
    pattern: re.Pattern[str] | None = None
    expected_group: int | str | None = None
    tolerance: Tolerance = Tolerance()
    schema: Mapping[str, Any] | None = None
    judge: JudgeSpec | None = None

    def needs_expected(self) -> bool:
        """Whether a row without an expected value cannot be graded (it is skipped)."""
        if self.kind is GraderKind.JSON_SCHEMA:
            return False
        if self.kind is GraderKind.REGEX:
            return self.expected_group is not None
        if self.kind is GraderKind.JUDGE:
            return self.judge is not None and self.judge.uses("expected")
        return True

    def columns(self) -> list[str]:
        """Output columns this grader reads besides the answer."""
        wanted = ["parsed"] if self.field else []
        if self.expected is None and self.needs_expected():
            wanted.append(self.expected_column)
        return wanted


def implicit_grader(score_field: str | None) -> GraderSpec:
    """The grader of a sweep file without [[graders]]: exact match against `expected`, of
    the answer or of parsed[score_field] (what `score_field` always meant)."""
    spec = GraderSpec(name="exact", kind=GraderKind.EXACT, field=score_field)
    return _with_key(spec, {"kind": "exact", "field": score_field})


def read_graders(
    path: Path, value: Any, sweep_layers: Sequence[tuple[dict[str, Any], Source]]
) -> list[GraderSpec]:
    """The sweep file's `[[graders]]`, each checked; names unique."""
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise ConfigError(f"{path}: graders must be [[graders]] tables, got {value!r}")
    specs: list[GraderSpec] = []
    for n, table in enumerate(value, 1):
        spec = _read_grader(path, n, table, sweep_layers)
        if any(s.name == spec.name for s in specs):
            raise ConfigError(f"{path}: [[graders]] {spec.name!r}: two graders have this name")
        specs.append(spec)
    return specs


@dataclass(frozen=True)
class _Where:
    """Names a grader's key in messages: `sweep.toml: [[graders]] 'fmt' pattern`."""

    path: Path
    name: str

    def key(self, key: str) -> str:
        return f"{self.path}: [[graders]] {self.name!r} {key}"


def _read_grader(
    path: Path, n: int, table: dict[str, Any], sweep_layers: Sequence[tuple[dict[str, Any], Source]]
) -> GraderSpec:
    name = table.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise ConfigError(
            f"{path}: [[graders]] #{n}: name must be letters, digits, '_', '.' or '-' (it "
            f"names a folder), got {name!r}"
        )
    where = _Where(path, name)
    kind = _kind(where, table.get("kind"))
    _check_keys(where, kind, table)
    common: dict[str, Any] = {"name": name, "kind": kind, "min_score": _min_score(where, table)}
    if kind is GraderKind.JUDGE:
        judge = read_judge(where.key, path, table, sweep_layers)
        spec = GraderSpec(**common, judge=judge, expected_column=judge.expected_column)
        return _with_key(spec, {"kind": kind, **judge.identity()})
    values = _comparison(where, kind, table)
    spec = GraderSpec(**common, **values)
    return _with_key(spec, {"kind": kind, **_identity(values)})


def _kind(where: _Where, value: Any) -> GraderKind:
    try:
        return GraderKind(value)
    except ValueError:
        known = ", ".join(k.value for k in GraderKind)
        raise ConfigError(f"{where.key('kind')} must be one of {known}, got {value!r}") from None


def _check_keys(where: _Where, kind: GraderKind, table: Mapping[str, Any]) -> None:
    allowed = COMMON_KEYS | KIND_KEYS[kind]
    for key in table:
        if key in allowed:
            continue
        close = difflib.get_close_matches(key, sorted(allowed), n=1)
        other = [k.value for k, keys in KIND_KEYS.items() if key in keys]
        hint = (
            f"did you mean {close[0]!r}?"
            if close
            else f"a key of {', '.join(other)} graders"
            if other
            else f"known: {', '.join(sorted(allowed))}"
        )
        raise ConfigError(f"{where.key(key)}: not a key of {kind.value} graders ({hint})")


def _min_score(where: _Where, table: Mapping[str, Any]) -> float | None:
    value = table.get("min_score")
    if value is None:
        return None
    if not _is_number(value) or not 0 <= value <= 1:
        raise ConfigError(f"{where.key('min_score')} must be a share from 0 to 1, got {value!r}")
    return float(value)


def _comparison(where: _Where, kind: GraderKind, table: Mapping[str, Any]) -> dict[str, Any]:
    """The checked values of a grader that compares rows with no model of its own."""
    values: dict[str, Any] = {
        "field": _optional_text(where, table, "field"),
        "expected_column": _optional_text(where, table, "expected_column") or "expected",
        "case_sensitive": _flag(where, table, "case_sensitive"),
    }
    if "expected" in table:
        if "expected_column" in table:
            raise ConfigError(
                f"{where.key('expected')}: give expected or expected_column, not both"
            )
        values["expected"] = _literal(where, kind, table["expected"])
    if kind is GraderKind.REGEX:
        values.update(_regex(where, table, has_expected="expected" in table))
    elif kind is GraderKind.NUMBER:
        values["tolerance"] = _tolerance(where, table.get("tolerance", 0))
    elif kind is GraderKind.JSON_SCHEMA:
        values["schema"] = _schema(where, table)
    return values


def _identity(values: Mapping[str, Any]) -> dict[str, Any]:
    """What a comparing grader computes, as plain data for its fingerprint."""
    shown = dict(values)
    if shown.get("pattern") is not None:
        shown["pattern"] = shown["pattern"].pattern
    if "tolerance" in shown:
        shown["tolerance"] = str(shown["tolerance"])
    return shown


def _with_key(spec: GraderSpec, identity: Mapping[str, Any]) -> GraderSpec:
    blob = json.dumps(identity, sort_keys=True, default=str)
    key = hashlib.sha256(blob.encode()).hexdigest()[:12]
    return replace(spec, key=key)


def _literal(where: _Where, kind: GraderKind, value: Any) -> Any:
    """A literal `expected`: a string or number (includes: also a list of strings)."""
    if kind is GraderKind.INCLUDES and isinstance(value, list):
        if value and all(isinstance(v, str) for v in value):
            return list(value)
    elif kind is GraderKind.NUMBER:
        if _is_number(value) or (isinstance(value, str) and _as_float(value) is not None):
            return value
        raise ConfigError(f"{where.key('expected')} must be a number, got {value!r}")
    elif isinstance(value, str) or _is_number(value):
        return value
    what = "a string or a list of strings" if kind is GraderKind.INCLUDES else "a string or number"
    raise ConfigError(f"{where.key('expected')} must be {what}, got {value!r}")


def _regex(where: _Where, table: Mapping[str, Any], *, has_expected: bool) -> dict[str, Any]:
    text = table.get("pattern")
    if not isinstance(text, str) or not text:
        raise ConfigError(f"{where.key('pattern')}: a regex grader needs a pattern (a string)")
    pattern = compile_regex(where.key("pattern"), text)
    group = table.get("expected_group")
    if group is None:
        if has_expected or "expected_column" in table:
            raise ConfigError(
                f"{where.key('expected_group')}: needed to compare with an expected value "
                "(which group of the pattern to compare)"
            )
        return {"pattern": pattern}
    if isinstance(group, bool) or not isinstance(group, int | str):
        raise ConfigError(f"{where.key('expected_group')} must be a group number or name")
    if (isinstance(group, int) and not 0 <= group <= pattern.groups) or (
        isinstance(group, str) and group not in pattern.groupindex
    ):
        named = f", named {', '.join(pattern.groupindex)}" if pattern.groupindex else ""
        raise ConfigError(
            f"{where.key('expected_group')}: the pattern has no group {group!r} "
            f"({pattern.groups} groups{named})"
        )
    return {"pattern": pattern, "expected_group": group}


def _tolerance(where: _Where, value: Any) -> Tolerance:
    """`tolerance = 0.5` (absolute) or `tolerance = "2%"` (of the expected value)."""
    relative = isinstance(value, str) and value.strip().endswith("%")
    amount: float | None = None
    if isinstance(value, str):
        amount = _as_float(value.strip().removesuffix("%"))
    elif _is_number(value):
        amount = float(value)
    if amount is None or amount < 0 or not math.isfinite(amount):
        raise ConfigError(
            f'{where.key("tolerance")} must be a number >= 0 or a percentage like "2%", '
            f"got {value!r}"
        )
    return Tolerance(amount, relative)


def _schema(where: _Where, table: Mapping[str, Any]) -> Mapping[str, Any]:
    """The grader's JSON Schema (inline, or a JSON file beside the sweep file), checked
    against its draft's metaschema now, so a broken schema fails no row later."""
    inline, ref = table.get("schema"), table.get("schema_file")
    if (inline is None) == (ref is None):
        raise ConfigError(f"{where.key('schema')}: give schema (a table) or schema_file, one")
    key = "schema"
    if ref is not None:
        key = "schema_file"
        if not isinstance(ref, str) or not ref:
            raise ConfigError(f"{where.key(key)} must be a path, got {ref!r}")
        inline = _read_json(where, where.path.parent / ref)
    if not isinstance(inline, dict):
        raise ConfigError(f"{where.key(key)} must be a JSON Schema object, got {inline!r}")
    try:
        validator_for(inline).check_schema(inline)
    except SchemaError as exc:
        at = "/".join(str(p) for p in exc.path)
        raise ConfigError(
            f"{where.key(key)}: not a valid JSON Schema: {exc.message}"
            + (f" (at {at})" if at else "")
        ) from None
    return inline


def _read_json(where: _Where, file: Path) -> Any:
    try:
        return json.loads(file.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"{where.key('schema_file')}: {file} not found (paths in a sweep file are relative "
            "to it)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where.key('schema_file')}: cannot read {file}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where.key('schema_file')}: {file} is not JSON ({exc})") from None


def _optional_text(where: _Where, table: Mapping[str, Any], key: str) -> str | None:
    value = table.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(f"{where.key(key)} must be a non-empty string, got {value!r}")
    return value


def _flag(where: _Where, table: Mapping[str, Any], key: str) -> bool:
    value = table.get(key, False)
    if not isinstance(value, bool):
        raise ConfigError(f"{where.key(key)} must be true or false, got {value!r}")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _as_float(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None
