"""A judge grader's settings (`kind = "judge"`), read and checked with the sweep file.

    [[graders]]
    name = "judge"
    kind = "judge"
    model = "meta/llama-3.3-70b-instruct"     # required: who judges
    # base_url, api_key_env: default to the sweep's (and its --base-url)
    judges = 3                                # N judges per answer, the majority wins
    rubric = "...{question}...{answer}...{expected}..."   # or rubric_file; a default exists
    verdict_pattern = 'VERDICT:\\s*(PASS|FAIL)'           # its group: the verdict word
    # config = "judge.toml"                   # a run config for the judge job
    [graders.run]                             # any run setting for the judge job
    rpm = 20
    [graders.run.params]
    temperature = 0.7

The judge job's settings are layered like a cell's: from the sweep's config file, [run] and
command line only what says how to reach and pace an endpoint (INHERITED: not the answers'
model, prompt template or request fields), then the grader's `config` file, its `run` table,
and its `model` / `base_url` / `api_key_env`. The result is validated and its key read now,
so a judge that could not be asked is exit 2 (or 3, for the key) before any cell runs.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import CONFIG_KEYS, RunConfig, Source, build_config_from, load_toml
from .credentials import read_api_key
from .errors import AuthError, ConfigError
from .templates import Template

JUDGE_KEYS = frozenset(
    {"rubric", "rubric_file", "model", "base_url", "api_key_env", "judges", "verdict_pattern"}
    | {"expected_column", "config", "run"}
)
PLACEHOLDERS = ("question", "answer", "expected")
# The mock endpoint's judge mode (batchrun/testing/judge.py) recognises this layout: the
# answer and the expected answer in tagged blocks.
DEFAULT_RUBRIC = """\
You are grading an answer to a question against the expected answer.

<question>
{question}
</question>

<answer>
{answer}
</answer>

<expected>
{expected}
</expected>

Does the answer agree with the expected answer? Say why in one or two sentences, then end \
with a last line that is exactly "VERDICT: PASS" or "VERDICT: FAIL".
"""
DEFAULT_VERDICT = r"(?i)VERDICT:\s*(PASS|FAIL)"
PASS_WORDS = frozenset({"pass", "yes", "true", "correct", "right", "1"})
FAIL_WORDS = frozenset({"fail", "no", "false", "incorrect", "wrong", "0"})
# Run settings a judge takes from the sweep: how to reach and pace the endpoint.
INHERITED = frozenset(
    {"base_url", "api_key_env", "status_url", "status_url_fallback", "timeout"}
    | {"hold_seconds", "max_pending", "max_attempts", "min_poll_interval", "max_poll_time"}
    | {"max_pause", "backoff_base", "backoff_max", "grace", "allow_insecure_http", "rpm"}
    | {"tpm", "concurrency", "fresh", "offline", "endpoint_url"}
)
# Set per cell by the sweep, or meaningless for a judge (the rubric is its prompt).
NOT_FOR_JUDGES = frozenset(
    {"inputs", "output", "checkpoint", "prompt_template", "reuse", "output_format"}
)


@dataclass(frozen=True)
class JudgeSpec:
    """A judge, checked: its rubric, how many judges, how a verdict is read, and its job's
    settings (`cfg`; inputs and output are set per cell)."""

    rubric: Template
    judges: int
    verdict: re.Pattern[str]
    expected_column: str
    cfg: RunConfig

    def uses(self, placeholder: str) -> bool:
        return placeholder in self.rubric.columns

    def identity(self) -> dict[str, Any]:
        """What decides its verdicts, for the grader's fingerprint."""
        return {
            "rubric": self.rubric.text,
            "judges": self.judges,
            "verdict_pattern": self.verdict.pattern,
            "expected_column": self.expected_column,
            "body": self.cfg.body_template(),
            "system_prompt": self.cfg.system_prompt,
        }


@dataclass(frozen=True)
class GraderSource(Source):
    """A layer of a judge's settings written in a grader's table (messages name it)."""

    grader: str = ""

    def key(self, key: str) -> str:
        inner = f"{self.table}." if self.table else ""
        return f"{self.file}: [[graders]] {self.grader!r} {inner}{key}"

    def param(self, path: str) -> str:
        return f"{self.file}: [[graders]] {self.grader!r} {self.params_table}.{path}"

    def unknown(self, key: str) -> str:
        close = difflib.get_close_matches(key, sorted(CONFIG_KEYS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{self.key(key)}: not a run setting{hint}"


def read_judge(
    label: Callable[[str], str],
    path: Path,
    table: Mapping[str, Any],
    sweep_layers: Sequence[tuple[dict[str, Any], Source]],
) -> JudgeSpec:
    """A judge grader's table, checked (`label` names one of its keys in messages)."""
    rubric = _rubric(label, path, table)
    judges = table.get("judges", 1)
    if isinstance(judges, bool) or not isinstance(judges, int) or judges < 1:
        raise ConfigError(f"{label('judges')} must be a whole number >= 1, got {judges!r}")
    expected_column = table.get("expected_column", "expected")
    if not isinstance(expected_column, str) or not expected_column:
        raise ConfigError(f"{label('expected_column')} must be a column name")
    cfg = _judge_config(label, path, table, sweep_layers)
    return JudgeSpec(rubric, judges, _verdict(label, table), expected_column, cfg)


def _rubric(label: Callable[[str], str], path: Path, table: Mapping[str, Any]) -> Template:
    text, key = table.get("rubric"), "rubric"
    if "rubric_file" in table:
        if text is not None:
            raise ConfigError(f"{label('rubric')}: give rubric or rubric_file, not both")
        key = "rubric_file"
        text = _read_text(label(key), path.parent / str(table[key]))
    if text is None:
        text = DEFAULT_RUBRIC
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{label(key)} must be a non-empty template string")
    template = Template(text, label(key))
    unknown = [c for c in template.columns if c not in PLACEHOLDERS]
    if unknown:
        raise ConfigError(
            f"{label(key)}: unknown placeholder {{{unknown[0]}}} (known: "
            + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
            + "; write {{ and }} for braces)"
        )
    if "answer" not in template.columns:
        raise ConfigError(f"{label(key)}: a rubric must show the judge the {{answer}}")
    return template


def _read_text(key: str, file: Path) -> str:
    try:
        return file.read_text()
    except FileNotFoundError:
        raise ConfigError(
            f"{key}: {file} not found (paths in a sweep file are relative to it)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{key}: cannot read {file}: {exc}") from None


def compile_regex(label: str, text: str) -> re.Pattern[str]:
    """A sweep file's regular expression, or a ConfigError naming where it was written."""
    try:
        return re.compile(text)
    except re.error as exc:
        raise ConfigError(f"{label}: not a regular expression ({exc})") from None


def _verdict(label: Callable[[str], str], table: Mapping[str, Any]) -> re.Pattern[str]:
    text = table.get("verdict_pattern", DEFAULT_VERDICT)
    if not isinstance(text, str) or not text:
        raise ConfigError(f"{label('verdict_pattern')} must be a regular expression")
    pattern = compile_regex(label("verdict_pattern"), text)
    if pattern.groups < 1:
        raise ConfigError(
            f"{label('verdict_pattern')}: needs a group around the verdict word, as in "
            r"'VERDICT:\s*(PASS|FAIL)'"
        )
    return pattern


def _judge_config(
    label: Callable[[str], str],
    path: Path,
    table: Mapping[str, Any],
    sweep_layers: Sequence[tuple[dict[str, Any], Source]],
) -> RunConfig:
    model = table.get("model")
    if not isinstance(model, str) or not model:
        raise ConfigError(f"{label('model')}: a judge needs its model (a model name)")
    name = str(table["name"])
    layers: list[tuple[Mapping[str, Any], Source]] = [
        ({k: v for k, v in values.items() if k in INHERITED}, source)
        for values, source in sweep_layers
    ]
    if "config" in table:
        layers.append(_config_file(label, path, table["config"]))
    run = table.get("run", {})
    if not isinstance(run, dict):
        raise ConfigError(f"{label('run')} must be a table of run settings")
    _refuse(label, run, "run.")
    layers.append((_relative(path.parent, run), GraderSource(str(path), "run", "run.params", name)))
    own = {k: table[k] for k in ("model", "base_url", "api_key_env") if k in table}
    layers.append((own, GraderSource(str(path), None, "params", name)))
    cfg = build_config_from(layers)
    _check_key(label, cfg)
    return cfg


def _config_file(
    label: Callable[[str], str], path: Path, ref: Any
) -> tuple[dict[str, Any], Source]:
    if not isinstance(ref, str) or not ref:
        raise ConfigError(f"{label('config')} must be the path of a run config file, got {ref!r}")
    file = path.parent / ref
    if not file.exists():
        raise ConfigError(
            f"{label('config')} = {ref!r}: {file} not found (paths in a sweep file are "
            "relative to it)"
        )
    values = load_toml(file)
    _refuse(lambda key: f"{file}: {key}", values, "")
    return values, Source(str(file))


def _refuse(label: Callable[[str], str], values: Mapping[str, Any], prefix: str) -> None:
    for key in values:
        if key in NOT_FOR_JUDGES:
            raise ConfigError(
                f"{label(prefix + key)}: not a judge's setting (the sweep sets a judge job's "
                "inputs and output per cell, and the rubric is its prompt)"
            )


def _relative(folder: Path, run: dict[str, Any]) -> dict[str, Any]:
    out = dict(run)
    for key in ("tools_file", "log_json"):
        if isinstance(out.get(key), str):
            out[key] = str(folder / out[key])
    return out


def _check_key(label: Callable[[str], str], cfg: RunConfig) -> None:
    """The judge's key, read now: a judge that cannot be asked stops the sweep before any
    cell runs, not after the answers were bought."""
    if cfg.offline:
        return
    try:
        read_api_key(cfg)
    except AuthError as exc:
        raise AuthError(f"{label('api_key_env')}: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"{label('base_url')}: {exc}") from None
