"""Answers checked against a JSON Schema, and the turn that tells the model what was wrong.

Which schema a job validates against (`schema` / `schema_file`, else a `response_format` of
type `json_schema`), whether a schema is one (checked when the config is read), what is
wrong with an answer (the validator's most relevant error, with where in the answer), and
the conversation a retry sends: the row's messages, the rejected answer as the assistant's
turn, and a user turn quoting the error. Pure: no I/O but reading a schema file.

The validator is the `jsonschema` package (maintained, every draft): the schema's own
`$schema` picks the draft, 2020-12 when it names none.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import codec
from .errors import ConfigError
from .lifecycle import RowState
from .parsing import parse_answer

DEFAULT_RETRIES = 2
INVALID_ANSWER = "invalid answer"  # the failure cause of a row whose answers never validated
FEEDBACK = (
    "Your answer did not match the required JSON schema: {problem}. Reply again with only "
    "the corrected JSON."
)
PROBLEM_CHARS = 500  # an error quoted back (and stored) at most this long


def schema_of(
    schema: Mapping[str, Any] | None,
    schema_file: str | None,
    response_format: Mapping[str, Any] | None,
) -> dict[str, Any] | None:
    """The schema answers are validated against, from the run settings of those names."""
    if schema is not None:
        return dict(schema)
    if schema_file:
        return read_schema_file(schema_file)
    if response_format and response_format.get("type") == "json_schema":
        inner = response_format.get("json_schema") or {}
        found = inner.get("schema") if isinstance(inner, Mapping) else None
        return dict(found) if isinstance(found, Mapping) else None
    return None


def load_schema_file(key: str, path: str, other: str | None) -> dict[str, Any]:
    """`schema_file`'s schema, checked; `other` names a `schema` also given (refused)."""
    if other is not None:
        raise ConfigError(f"give schema or schema_file, not both ({other}, {key})")
    schema = read_schema_file(path)
    check_schema(key, schema)
    return schema


def read_schema_file(path: str) -> dict[str, Any]:
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"schema_file {path}: not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"schema_file {path}: cannot read it ({exc})") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"schema_file {path}: not JSON ({exc.msg} at line {exc.lineno})"
        ) from None
    if not isinstance(value, dict):
        raise ConfigError(
            f"schema_file {path}: a JSON Schema is an object, got {type(value).__name__}"
        )
    return value


def check_schema(key: str, schema: Mapping[str, Any]) -> None:
    """A ConfigError naming `key` when `schema` is not a valid JSON Schema."""
    from jsonschema import SchemaError, validators

    cls = validators.validator_for(schema)
    try:
        cls.check_schema(dict(schema))
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "the top level"
        raise ConfigError(f"{key}: not a valid JSON Schema at {where}: {exc.message}") from None


class AnswerCheck:
    """Says what is wrong with an answer (None: nothing), and how many retries a row gets."""

    def __init__(self, schema: Mapping[str, Any], max_retries: int = DEFAULT_RETRIES) -> None:
        from jsonschema import validators

        self.max_retries = max_retries
        self._validator = validators.validator_for(schema)(schema)

    def problem(self, content: str | None) -> str | None:
        """Why the answer does not validate, or None. Fenced JSON and prose around it are
        read as --parse-json reads them."""
        value, error = parse_answer(content)
        if error is not None:
            return _short(f"not JSON ({error})")
        from jsonschema.exceptions import best_match

        found = best_match(self._validator.iter_errors(value))
        if found is None:
            return None
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in found.absolute_path)
        return _short(f"at ${where}: {found.message}")


def _short(text: str) -> str:
    return text if len(text) <= PROBLEM_CHARS else text[: PROBLEM_CHARS - 1] + "…"


def with_feedback(messages: str, answer: str | None, problem: str) -> str:
    """The row's conversation (a JSON array) extended by the rejected answer and a user turn
    quoting what was wrong: what the retry sends."""
    turns = codec.loads(messages)
    turns.append({"role": "assistant", "content": answer or ""})
    turns.append({"role": "user", "content": FEEDBACK.format(problem=problem)})
    return codec.dumps(turns)


def output_cells(
    states: list[RowState],
    rejected: list[int | None],
    last_errors: list[str | None],
    errors: list[str | None],
) -> list[list[Any]]:
    """The `validation_attempts` and `validation_error` columns of a page of rows: answers
    checked (rejected ones and the last), and the last validator error (a failed row's: why
    its last answer was refused)."""
    prefix = f"{INVALID_ANSWER}: "
    attempts: list[Any] = []
    messages: list[Any] = []
    for state, count, last, error in zip(states, rejected, last_errors, errors, strict=True):
        refused = state is RowState.FAILED and error is not None and error.startswith(prefix)
        answered = state is RowState.DONE or refused
        attempts.append(1 + (count or 0) if answered else count)
        messages.append(error[len(prefix) :] if refused and error else last)
    return [attempts, messages]


def output_figures(statuses: list[str | None], attempts: list[int | None]) -> dict[str, int]:
    """From an output's `status` and `validation_attempts`: rows whose answers were checked,
    rows asked again, and answers that failed the schema (an ok row's all but its last; a
    row that never validated, every one)."""
    checked = asked_again = rejected = 0
    for status, count in zip(statuses, attempts, strict=True):
        if count is None:
            continue
        checked += 1
        asked_again += count > 1
        rejected += count - 1 if status == "ok" else count
    return {"rows_checked": checked, "rows_asked_again": asked_again, "answers_rejected": rejected}


def validation_figures(output: Path) -> dict[str, int] | None:
    """Answers checked against the job's schema, from an output (None: the job had none)."""
    import pyarrow.parquet as pq

    if "validation_attempts" not in pq.read_schema(output).names:
        return None
    table = pq.read_table(output, columns=["status", "validation_attempts"])
    return output_figures(*(table.column(name).to_pylist() for name in table.column_names))
