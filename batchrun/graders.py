"""Grading one answer: pure functions from an output row to a Grade. No I/O.

Every grader but the judge lives here (the judge asks a model: judge.py). A grade is one of:

- PASS / FAIL: the answer is right or wrong (score 1 or 0). A row with no answer (failed,
  invalid, unfinished) is wrong; so is an answer whose field is missing or that is not
  JSON where JSON is needed: the model's doing, not the grader's.
- SKIPPED: a grader that compares with an expected value, on a row without one. Left out of
  the score (what the sweep's accuracy always did with rows without `expected`).
- ERROR: the grader could not grade the row (an expected value that is not a number, a
  judge that gave no verdict). Counted apart, and scored as wrong (scoring.py's caller), so
  a grader that cannot grade never passes a gate by it.

Text is compared trimmed and case-folded unless `case_sensitive`; values that are not
strings are compared as their JSON.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from jsonschema.protocols import Validator
from jsonschema.validators import validator_for

from .grader_spec import GraderKind, GraderSpec
from .parsing import parse_answer

# The first number: thousands separators allowed ("1,234.5"), then a decimal part and an
# exponent; or a bare ".5".
NUMBER = re.compile(r"[-+]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?")
NOTE_CHARS = 200  # of a grade's note: enough to see why, small enough for every row


class GradeState(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    SKIPPED = "skipped"
    ERROR = "error"


@dataclass(frozen=True)
class Grade:
    """One grader's verdict on one row, with why (for FAIL and ERROR)."""

    state: GradeState
    note: str | None = None

    @property
    def score(self) -> float | None:
        """1 or 0 for a graded row; None when skipped or the grading failed."""
        return {GradeState.PASS: 1.0, GradeState.FAIL: 0.0}.get(self.state)


def passed(ok: bool, note: str | None = None) -> Grade:
    return Grade(GradeState.PASS) if ok else Grade(GradeState.FAIL, _short(note))


def failed(note: str) -> Grade:
    return Grade(GradeState.FAIL, _short(note))


def error(note: str) -> Grade:
    return Grade(GradeState.ERROR, _short(note))


SKIPPED = Grade(GradeState.SKIPPED, "no expected value")


@dataclass(frozen=True)
class Answer:
    """One output row as graders see it. `item_id`/`repeat` come from the output when it
    has repeats (the row id otherwise, and 0)."""

    id: str
    item_id: str
    repeat: int
    status: str
    content: str | None
    values: Mapping[str, Any] = field(default_factory=dict)  # parsed, expected, ... columns

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def parsed(self) -> tuple[Any, str | None]:
        """The answer's JSON: the output's `parsed` column when the job parsed answers,
        else parsed here the same way (a fenced block or prose around it are fine)."""
        text = self.values.get("parsed")
        if isinstance(text, str):
            try:
                return json.loads(text), None
            except json.JSONDecodeError:
                pass  # not batchrun's column (a hand-made file): parse the answer instead
        return parse_answer(self.content)


def expected_value(spec: GraderSpec, answer: Answer) -> Any:
    """The row's expected value: the grader's literal, else its column (JSON lists and
    strings in a column of mixed types are stored as JSON text: decoded)."""
    if spec.expected is not None:
        return spec.expected
    value = answer.values.get(spec.expected_column)
    if isinstance(value, str) and value[:1] in ('"', "["):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


class RowGrader:
    """A grader with what it compiles once (a JSON Schema validator), grading rows."""

    def __init__(self, spec: GraderSpec) -> None:
        if spec.kind is GraderKind.JUDGE:
            raise ValueError("a judge grades through judge.py")
        self.spec = spec
        self._validator: Validator | None = None
        if spec.schema is not None:
            self._validator = validator_for(spec.schema)(spec.schema)

    def grade(self, answer: Answer) -> Grade:
        spec = self.spec
        expected = expected_value(spec, answer)
        if expected is None and spec.needs_expected():
            return SKIPPED
        if not answer.ok:
            return failed(f"no answer (row {answer.status})")
        subject, why_not = self._subject(answer)
        if why_not is not None:
            return failed(why_not)
        kind = spec.kind
        if kind is GraderKind.EXACT:
            return self._exact(subject, expected)
        if kind is GraderKind.REGEX:
            return self._regex(subject, expected)
        if kind is GraderKind.NUMBER:
            return self._number(subject, expected)
        if kind is GraderKind.INCLUDES:
            return self._includes(subject, expected)
        return self._json_schema(subject)

    def _subject(self, answer: Answer) -> tuple[Any, str | None]:
        """What is graded: the answer, its JSON (json_schema), or a field of its JSON."""
        name = self.spec.field
        if name is None and self.spec.kind is not GraderKind.JSON_SCHEMA:
            return answer.content, None
        value, problem = answer.parsed()
        if problem is not None:
            return None, f"the answer is not JSON ({problem})"
        if name is None:
            return value, None
        for part in name.split("."):
            if not isinstance(value, dict) or part not in value:
                return None, f"the answer's JSON has no field {name!r}"
            value = value[part]
        return value, None

    def _norm(self, value: Any) -> str:
        text = (value if isinstance(value, str) else json.dumps(value)).strip()
        return text if self.spec.case_sensitive else text.casefold()

    def _exact(self, subject: Any, expected: Any) -> Grade:
        if subject is None:
            return failed("no answer text" if self.spec.field is None else "the field is null")
        return passed(self._norm(subject) == self._norm(expected), f"got {_shown(subject)}")

    def _regex(self, subject: Any, expected: Any) -> Grade:
        assert self.spec.pattern is not None
        text = _text(subject)
        found = self.spec.pattern.search(text)
        if found is None:
            return failed(f"no match for {self.spec.pattern.pattern!r}")
        group = self.spec.expected_group
        if group is None:
            return passed(True)
        captured = found.group(group)
        if captured is None:
            return failed(f"group {group!r} did not take part in the match")
        return passed(self._norm(captured) == self._norm(expected), f"group was {captured!r}")

    def _number(self, subject: Any, expected: Any) -> Grade:
        want = to_number(expected)
        if want is None:
            return error(f"expected value {_shown(expected)} is not a number")
        got = to_number(subject) if isinstance(subject, int | float) else first_number(subject)
        if got is None:
            return failed("no number in the answer")
        ok = self.spec.tolerance.allows(got, want)
        return passed(ok, f"got {got:g}, expected {want:g} (tolerance {self.spec.tolerance})")

    def _includes(self, subject: Any, expected: Any) -> Grade:
        wanted = expected if isinstance(expected, list) else [expected]
        if not wanted or any(isinstance(w, dict | list) for w in wanted):
            return error(f"expected value {_shown(expected)} is not a string or list of them")
        text = self._norm(_text(subject))
        missing = [w for w in wanted if self._norm(w) not in text]
        return passed(not missing, "missing " + ", ".join(_shown(m) for m in missing))

    def _json_schema(self, subject: Any) -> Grade:
        assert self._validator is not None
        problem = next(iter(self._validator.iter_errors(subject)), None)
        if problem is None:
            return passed(True)
        at = "/".join(str(p) for p in problem.absolute_path)
        return failed(
            f"not valid against the schema: {problem.message}" + (f" at {at}" if at else "")
        )


def first_number(value: Any) -> float | None:
    """The first number written in a text ("about 1,234.5 km" -> 1234.5)."""
    if value is None:
        return None
    found = NUMBER.search(_text(value))
    return float(found.group(0).replace(",", "")) if found else None


def to_number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip().replace(",", ""))
        except ValueError:
            return None
    return None


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


def _shown(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _short(note: str | None) -> str | None:
    if note is None or len(note) <= NOTE_CHARS:
        return note
    return note[: NOTE_CHARS - 1] + "…"
