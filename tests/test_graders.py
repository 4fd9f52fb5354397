"""Sweep graders without a network: [[graders]] tables checked when the sweep file is read
(exit 2 naming file, grader and key), each kind grading rows, and a hand-made output with
repeats (`item_id`, `repeat`) scored with clustered standard errors and pass@k."""

from __future__ import annotations

import asyncio
import json
import math
import tomllib
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchrun.errors import AuthError, ConfigError
from batchrun.grader_spec import GraderKind, GraderSpec, read_graders
from batchrun.graders import Answer, GradeState, RowGrader, first_number
from batchrun.grading import grade_cell, grader_scores, read_answers, read_grades, write_grades
from batchrun.judge import JudgeUsage
from batchrun.sweep_file import load_sweep
from batchrun.testing import MockServer

from .conftest import prompts, run_cli
from .sweeps import write_sweep


def grader(text: str, folder: Path | None = None) -> GraderSpec:
    """One [[graders]] table, as the sweep file would give it."""
    path = (folder or Path(".")) / "s.toml"
    return read_graders(path, tomllib.loads("[[graders]]\n" + text)["graders"], [])[0]


def answer(content: str | None, status: str = "ok", **values: Any) -> Answer:
    return Answer("r1", "r1", 0, status, content, values)


def grade(spec_text: str, content: str | None, status: str = "ok", **values: Any) -> Any:
    got = RowGrader(grader(spec_text)).grade(answer(content, status, **values))
    return got.state.value, got.note


# ---------------------------------------------------------------- each kind


@pytest.mark.parametrize(
    ("spec", "content", "values", "expected"),
    [
        ('name="e"\nkind="exact"', "  Positive ", {"expected": "positive"}, ("pass", None)),
        ('name="e"\nkind="exact"\ncase_sensitive=true', "Positive", {"expected": "positive"},
         ("fail", "got 'Positive'")),
        ('name="e"\nkind="exact"', "x", {}, ("skipped", "no expected value")),
        ('name="e"\nkind="exact"\nfield="label"', '{"label": "neg"}', {"expected": "neg"},
         ("pass", None)),
        ('name="e"\nkind="exact"\nfield="a.b"', '```json\n{"a": {"b": 4}}\n```', {"expected": 4},
         ("pass", None)),
        ('name="e"\nkind="exact"\nfield="label"', "no json here", {"expected": "neg"},
         ("fail", "the answer is not JSON (not JSON: Expecting value at line 1 column 1)")),
        ('name="e"\nkind="exact"\nfield="label"', '{"other": 1}', {"expected": "neg"},
         ("fail", "the answer's JSON has no field 'label'")),
        ('name="e"\nkind="exact"\nexpected="yes"', "YES", {}, ("pass", None)),
        ('name="r"\nkind="regex"\npattern="^\\\\d+ apples$"', "12 apples", {}, ("pass", None)),
        ('name="r"\nkind="regex"\npattern="^\\\\d+ apples$"', "many apples", {},
         ("fail", "no match for '^\\\\d+ apples$'")),
        ('name="r"\nkind="regex"\npattern="answer: (?P<a>\\\\w+)"\nexpected_group="a"',
         "The answer: Paris.", {"expected": "paris"}, ("pass", None)),
        ('name="r"\nkind="regex"\npattern="answer: (\\\\w+)"\nexpected_group=1',
         "The answer: Lyon.", {"expected": "paris"}, ("fail", "group was 'Lyon'")),
        ('name="n"\nkind="number"', "It is 1,234.5 km", {"expected": 1234.5}, ("pass", None)),
        ('name="n"\nkind="number"\ntolerance=0.5', "about 10.4", {"expected": "10"},
         ("pass", None)),
        ('name="n"\nkind="number"\ntolerance="5%"', "-21 degrees", {"expected": -20},
         ("pass", None)),
        ('name="n"\nkind="number"\ntolerance="4%"', "-21 degrees", {"expected": -20},
         ("fail", "got -21, expected -20 (tolerance 4%)")),
        ('name="n"\nkind="number"', "0.1 + 0.2", {"expected": 0.1}, ("pass", None)),
        ('name="n"\nkind="number"', "none", {"expected": 3}, ("fail", "no number in the answer")),
        ('name="n"\nkind="number"', "3", {"expected": "three"},
         ("error", "expected value 'three' is not a number")),
        ('name="n"\nkind="number"\nfield="n"', '{"n": 7}', {"expected": 7}, ("pass", None)),
        ('name="i"\nkind="includes"', "Paris is in France", {"expected": "paris"},
         ("pass", None)),
        ('name="i"\nkind="includes"', "Paris is in France", {"expected": '["Paris", "Spain"]'},
         ("fail", "missing 'Spain'")),
        ('name="i"\nkind="includes"\nexpected=["is", "in"]', "Paris is in France", {},
         ("pass", None)),
        ('name="j"\nkind="json_schema"\nschema={type="object", required=["a"]}', '{"a": 1}', {},
         ("pass", None)),
        ('name="j"\nkind="json_schema"\nschema={type="object", required=["a"]}', '{"b": 1}', {},
         ("fail", "not valid against the schema: 'a' is a required property")),
        ('name="j"\nkind="json_schema"\nschema={type="integer"}\nfield="a.b"',
         '{"a": {"b": "x"}}', {}, ("fail", "not valid against the schema: 'x' is not of type "
                                   "'integer'")),
        ('name="j"\nkind="json_schema"\nschema={type="object"}', "not json", {},
         ("fail", "the answer is not JSON (not JSON: Expecting value at line 1 column 1)")),
    ],
)  # fmt: skip
def test_each_kind_grades_a_row(
    spec: str, content: str, values: dict[str, Any], expected: tuple[str, str | None]
) -> None:
    assert grade(spec, content, **values) == expected


def test_a_row_without_an_answer_is_wrong_not_an_error() -> None:
    assert grade('name="e"\nkind="exact"', None, "failed", expected="x") == (
        "fail",
        "no answer (row failed)",
    )
    # ... unless it has nothing to be compared with: then it is not counted at all
    assert grade('name="e"\nkind="exact"', None, "failed")[0] == "skipped"
    assert grade('name="j"\nkind="json_schema"\nschema={}', None, "invalid")[0] == "fail"


def test_parsed_column_is_used_when_the_job_parsed_answers() -> None:
    spec = grader('name="e"\nkind="exact"\nfield="label"')
    got = RowGrader(spec).grade(answer("prose", expected="x", parsed='{"label": "x"}'))
    assert got.state is GradeState.PASS


@pytest.mark.parametrize(
    ("text", "number"),
    [("about 1,234.5 km", 1234.5), ("-3e2 K", -300.0), ("x .5 y", 0.5), ("1, 2, 3", 1.0),
     ("none", None)],
)  # fmt: skip
def test_first_number(text: str, number: float | None) -> None:
    assert first_number(text) == number


# ---------------------------------------------------------------- checked at load


HEAD = 'output_dir = "out"\ndatasets = ["d.jsonl"]\n'


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('name="fmt"\nkind="regex"\npattern="("',
         "[[graders]] 'fmt' pattern: not a regular expression (missing ), unterminated "
         "subpattern at position 0)"),
        ('name="fmt"\nkind="regex"\npatern="x"',
         "[[graders]] 'fmt' patern: not a key of regex graders (did you mean 'pattern'?)"),
        ('name="e"\nkind="exact"\ntolerance=1',
         "[[graders]] 'e' tolerance: not a key of exact graders (a key of number graders)"),
        ('name="k"\nkind="fuzzy"',
         "[[graders]] 'k' kind must be one of exact, regex, number, includes, json_schema, "
         "judge, got 'fuzzy'"),
        ('kind="exact"', "[[graders]] #1: name must be letters, digits, '_', '.' or '-' (it "
         "names a folder), got None"),
        ('name="n"\nkind="number"\ntolerance="ten%"',
         "[[graders]] 'n' tolerance must be a number >= 0 or a percentage like \"2%\", got "
         "'ten%'"),
        ('name="n"\nkind="number"\nexpected="x"', "[[graders]] 'n' expected must be a number, "
         "got 'x'"),
        ('name="r"\nkind="regex"\npattern="(a)"\nexpected_group=2',
         "[[graders]] 'r' expected_group: the pattern has no group 2 (1 groups)"),
        ('name="r"\nkind="regex"\npattern="(a)"\nexpected="a"',
         "[[graders]] 'r' expected_group: needed to compare with an expected value (which "
         "group of the pattern to compare)"),
        ('name="e"\nkind="exact"\nmin_score=1.5',
         "[[graders]] 'e' min_score must be a share from 0 to 1, got 1.5"),
        ('name="j"\nkind="json_schema"\nschema={type="nope"}',
         "[[graders]] 'j' schema: not a valid JSON Schema: 'nope' is not valid under any of "
         "the given schemas (at type)"),
        ('name="j"\nkind="json_schema"\nschema_file="nope.json"',
         "[[graders]] 'j' schema_file: {folder}/nope.json not found (paths in a sweep file are "
         "relative to it)"),
        ('name="j"\nkind="json_schema"', "[[graders]] 'j' schema: give schema (a table) or "
         "schema_file, one"),
        ('name="a"\nkind="exact"\n[[graders]]\nname="a"\nkind="regex"\npattern="x"',
         "[[graders]] 'a': two graders have this name"),
        ('name="judge"\nkind="judge"\nbase_url="http://127.0.0.1:9/v1"',
         "[[graders]] 'judge' model: a judge needs its model (a model name)"),
        ('name="judge"\nkind="judge"\nmodel="m"\nrubric="Is {answr} right?"',
         "[[graders]] 'judge' rubric: unknown placeholder {answr} (known: {question}, "
         "{answer}, {expected}; write {{ and }} for braces)"),
        ('name="judge"\nkind="judge"\nmodel="m"\nrubric="Is it right?"',
         "[[graders]] 'judge' rubric: a rubric must show the judge the {answer}"),
        ('name="judge"\nkind="judge"\nmodel="m"\njudges=0',
         "[[graders]] 'judge' judges must be a whole number >= 1, got 0"),
        ('name="judge"\nkind="judge"\nmodel="m"\nverdict_pattern="VERDICT: PASS"',
         "[[graders]] 'judge' verdict_pattern: needs a group around the verdict word, as in "
         "'VERDICT:\\s*(PASS|FAIL)'"),
        ('name="judge"\nkind="judge"\nmodel="m"\n[graders.run]\nrpn=5',
         "[[graders]] 'judge' run.rpn: not a run setting (did you mean 'rpm'?)"),
        ('name="judge"\nkind="judge"\nmodel="m"\n[graders.run]\nprompt_template="{x}"',
         "[[graders]] 'judge' run.prompt_template: not a judge's setting (the sweep sets a "
         "judge job's inputs and output per cell, and the rubric is its prompt)"),
        ('name="judge"\nkind="judge"\nmodel="m"\n[graders.run.params]\ntemperature="hot"',
         "[[graders]] 'judge' run.params.temperature must be a number, got 'hot'"),
    ],
)  # fmt: skip
def test_a_grader_mistake_names_the_file_grader_and_key(
    tmp_path: Path, table: str, message: str
) -> None:
    (tmp_path / "d.jsonl").write_text('{"id": 1, "prompt": "x"}\n')
    path = tmp_path / "s.toml"
    # a judge asks a loopback endpoint here unless its table says otherwise: no key needed
    path.write_text(HEAD + '[run]\nbase_url = "http://127.0.0.1:9/v1"\n[[graders]]\n' + table)
    with pytest.raises(ConfigError) as caught:
        load_sweep(path, {})
    assert str(caught.value) == f"{path}: " + message.replace("{folder}", str(tmp_path))


def test_score_field_and_graders_do_not_mix(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_text('{"id": 1, "prompt": "x"}\n')
    path = tmp_path / "s.toml"
    path.write_text(HEAD + '[[graders]]\nname="e"\nkind="exact"\n')
    with pytest.raises(ConfigError, match="score_field .* is for a sweep without"):
        load_sweep(path, {"score_field": "label"})


def test_without_graders_score_field_is_an_exact_grader(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_text('{"id": 1, "prompt": "x"}\n')
    path = tmp_path / "s.toml"
    path.write_text(HEAD + 'score_field = "label"\n')
    spec = load_sweep(path, {})
    assert [(g.name, g.kind, g.field) for g in spec.graders] == [
        ("exact", GraderKind.EXACT, "label")
    ]


def test_a_judge_on_nvidia_without_its_key_stops_before_any_cell(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_text('{"id": 1, "prompt": "x"}\n')
    path = tmp_path / "s.toml"
    path.write_text(
        HEAD + '[run]\nbase_url = "http://127.0.0.1:9/v1"\n'
        '[[graders]]\nname="judge"\nkind="judge"\nmodel="m"\n'
        'base_url = "https://integrate.api.nvidia.com/v1"\napi_key_env = "JUDGE_KEY"\n'
    )
    with pytest.raises(AuthError) as caught:
        load_sweep(path, {})
    assert str(caught.value) == (
        f"{path}: [[graders]] 'judge' api_key_env: no API key: set the environment variable "
        "JUDGE_KEY (or name another one with --api-key-env)"
    )


@pytest.mark.slow
def test_a_bad_pattern_is_exit_2_with_nothing_sent(mock_server: MockServer, tmp_path: Path) -> None:
    path = write_sweep(tmp_path, '[[graders]]\nname="fmt"\nkind="regex"\npattern="[a-"\n',
                       prompts(2))  # fmt: skip
    result = run_cli("sweep", str(path), "--base-url", mock_server.base_url)
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"batchrun: error: {path}: [[graders]] 'fmt' pattern: not a regular expression "
        "(unterminated character set at position 0)\n"
    )
    assert mock_server.stats()["submissions"] == 0
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- repeats, hand-made


def repeats_output(path: Path) -> Path:
    """An output as `repeats = 3` writes it (the feature is another branch's): items A..D,
    ids `<item>#<r>`, `item_id` and `repeat` columns. Right answers: A 3/3, B 1/3, C 0/3,
    D 2/3; one row of D failed."""
    right = {"A": [1, 1, 1], "B": [0, 0, 1], "C": [0, 0, 0], "D": [1, 0, 1]}
    rows = []
    for item, marks in right.items():
        for r, mark in enumerate(marks):
            failed = item == "D" and r == 1
            rows.append({
                "id": f"{item}#{r}", "item_id": item, "repeat": r,
                "status": "failed" if failed else "ok",
                "content": None if failed else ("yes" if mark else "no"),
                "expected": "yes",
            })  # fmt: skip
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, path)
    return path


def test_repeats_are_scored_with_clustered_stderr_and_pass_at_k(tmp_path: Path) -> None:
    output = repeats_output(tmp_path / "results.parquet")
    spec = grader('name="yes"\nkind="exact"')
    answers = read_answers(output, [spec])
    assert [(a.id, a.item_id, a.repeat) for a in answers[:4]] == [
        ("A#0", "A", 0), ("A#1", "A", 1), ("A#2", "A", 2), ("B#0", "B", 0)
    ]  # fmt: skip
    grades = asyncio.run(grade_cell([spec], answers, tmp_path, dict, {}, JudgeUsage()))
    write_grades(tmp_path / "grades.parquet", grades)
    assert read_grades(tmp_path / "grades.parquet") == grades
    [score] = grader_scores("cell", [spec], grades, pass_at=[1])
    # by hand: 6 of 12 right; item sums of deviations from 0.5: 1.5, -0.5, -1.5, 0.5
    assert (score.score, score.rows, score.items, score.repeats) == (0.5, 12, 4, 3)
    assert score.stderr == pytest.approx(math.sqrt(4 / 3 * 5) / 12)
    # pass@1 = mean of item means; pass@3 (the repeats): A, B, D have one right of three
    assert score.pass_at == {1: pytest.approx(0.5), 3: pytest.approx(0.75)}
    assert (score.passed, score.failed, score.errors) == (6, 6, 0)


def test_without_repeat_columns_every_row_is_its_own_item(tmp_path: Path) -> None:
    output = tmp_path / "results.parquet"
    rows = [{"id": f"r{i}", "status": "ok", "content": c, "expected": "yes"}
            for i, c in enumerate(["yes", "yes", "no", "yes", "no"])]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), output)
    spec = grader('name="yes"\nkind="exact"')
    grades = asyncio.run(
        grade_cell([spec], read_answers(output, [spec]), tmp_path, dict, {}, JudgeUsage())
    )
    [score] = grader_scores("cell", [spec], grades, pass_at=[])
    assert score.score == 0.6 and score.repeats == 1 and score.pass_at == {}
    assert score.stderr == pytest.approx(math.sqrt(0.6 * 0.4 / 4))  # sqrt(p(1-p)/(n-1))


def test_grades_parquet_columns(tmp_path: Path) -> None:
    output = repeats_output(tmp_path / "results.parquet")
    spec = grader('name="yes"\nkind="exact"')
    grades = asyncio.run(
        grade_cell([spec], read_answers(output, [spec]), tmp_path, dict, {}, JudgeUsage())
    )
    write_grades(tmp_path / "grades.parquet", grades)
    table = pq.read_table(tmp_path / "grades.parquet")
    assert table.column_names == [
        "id", "item_id", "repeat", "grader", "grader_key", "state", "score", "note"
    ]  # fmt: skip
    row = table.slice(4, 1).to_pylist()[0]  # B#1: wrong
    assert row == {
        "id": "B#1", "item_id": "B", "repeat": 1, "grader": "yes", "grader_key": spec.key,
        "state": "fail", "score": 0.0, "note": "got 'no'",
    }  # fmt: skip
    failed_row = table.slice(10, 1).to_pylist()[0]  # D#1: no answer
    assert failed_row["state"] == "fail" and failed_row["note"] == "no answer (row failed)"
    assert json.loads(json.dumps(row))  # plain values only
