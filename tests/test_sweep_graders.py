"""A sweep graded by every kind of grader, a judge served by the local endpoint among them,
end to end: the scores, their standard errors against a hand computation, the min_score
gate, grades.parquet, summary.md / scores.parquet / JUnit / GitHub's step summary, a rerun
that buys nothing, and `batchrun report DIR`."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner

from batchrun.cli import main
from batchrun.testing import MockServer

from .sweeps import run_sweep_here, score, write_sweep

# The mock answers JSON under response_format: {"label": <sentiment>, "answer": "Answer to:
# <prompt>"}. Per row: expected label, expected stars, words the answer must hold.
ROWS: list[dict[str, Any]] = [
    {"id": "r0", "prompt": "Review: I love this kettle, 5 stars", "expected": "positive",
     "stars": 5, "words": ["kettle", "love"]},
    {"id": "r1", "prompt": "Review: broken on arrival, 1 star", "expected": "negative",
     "stars": 2, "words": ["broken"]},
    {"id": "r2", "prompt": "Review: it is a kettle, 3 stars", "expected": "positive",
     "stars": 3.2, "words": ["kettle", "teapot"]},
    {"id": "r3", "prompt": "Review: great value, 4 stars [verdict:fail,pass,pass]",
     "expected": "positive", "stars": 4, "words": ["value"]},
    {"id": "r4", "prompt": "Review: works well, 4 stars [verdict:pass,fail,fail]",
     "expected": "positive", "stars": 40, "words": ["works", "WELL"]},
    {"id": "r5", "prompt": "Review: love it", "expected": None, "stars": None, "words": None},
]  # fmt: skip

GRADERS = """
[run]
response_format = {type = "json_object"}

[[graders]]
name = "label"
kind = "exact"
field = "label"
min_score = 0.9

[[graders]]
name = "label_re"
kind = "regex"
pattern = '"label": "(\\w+)"'
expected_group = 1

[[graders]]
name = "stars"
kind = "number"
expected_column = "stars"
tolerance = "10%"

[[graders]]
name = "mentions"
kind = "includes"
expected_column = "words"

[[graders]]
name = "shape"
kind = "json_schema"
schema = {type = "object", required = ["label", "answer"], properties = {label = {enum = ["positive", "negative"]}}}

[[graders]]
name = "judge"
kind = "judge"
model = "judge-model"
judges = 3
[graders.run]
pricing = {prompt = 1.0, completion = 2.0}
"""  # noqa: E501
# Row by row (r0..r5), by hand:
EXPECTED = {
    "label": (["pass", "pass", "fail", "pass", "pass", "skipped"], 0.8),
    "label_re": (["pass", "pass", "fail", "pass", "pass", "skipped"], 0.8),
    "stars": (["pass", "fail", "pass", "pass", "fail", "skipped"], 0.6),  # 1 vs 2; 4 vs 40
    "mentions": (["pass", "pass", "fail", "pass", "pass", "skipped"], 0.8),  # no "teapot"
    "shape": (["pass", "pass", "fail", "pass", "pass", "pass"], 5 / 6),  # neutral: no enum
    # default rubric: the expected label in the answer; r3 and r4 by their markers (2 of 3
    # pass, 1 of 3 pass); r2's answer says neutral, not positive
    "judge": (["pass", "pass", "fail", "pass", "fail", "skipped"], 0.6),
}


@pytest.fixture
def graded(mock_server: MockServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    step_summary = tmp_path / "step-summary.md"
    step_summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step_summary))
    path = write_sweep(tmp_path, GRADERS, ROWS)
    junit = tmp_path / "junit.xml"
    [report] = run_sweep_here(path, mock_server.base_url, junit=junit)
    return report, tmp_path, junit, step_summary, path


def test_every_grader_kind_scores_the_cell(graded: Any) -> None:
    report, folder, *_ = graded
    grades = pd.read_parquet(folder / "out/d-default/grades.parquet")
    for name, (states, mean) in EXPECTED.items():
        mine = grades[grades["grader"] == name]
        assert mine["id"].tolist() == [r["id"] for r in ROWS], name
        assert mine["state"].tolist() == states, name
        assert score(report, name).score == pytest.approx(mean), name
    judged = grades[grades["grader"] == "judge"].set_index("id")["note"]
    assert judged["r3"] == "2 of 3 judges say pass" and judged["r4"] == "1 of 3 judges say pass"


def test_standard_errors_match_a_hand_computation(graded: Any) -> None:
    report = graded[0]
    # n rows with p right, no repeats: sqrt(p (1 - p) / (n - 1))
    for name, n in (("label", 5), ("stars", 5), ("shape", 6), ("judge", 5)):
        s = score(report, name)
        assert s.rows == n and s.repeats == 1
        assert s.stderr == pytest.approx(math.sqrt(s.score * (1 - s.score) / (n - 1)))
    assert score(report, "label").stderr == pytest.approx(0.2)  # sqrt(.8 · .2 / 4)


def test_min_score_fails_the_cell_and_says_by_how_much(graded: Any) -> None:
    report, _, junit, *_ = graded
    assert not report.passed
    assert [(f.gate.value, f.grader) for f in report.failures] == [("min_score", "label")]
    assert report.problem == (
        "gate min_score [label]: score 80.0% is 10.0 points below min_score 90.0% (4 of 5 "
        "rows right)"
    )
    failure = ET.parse(junit).getroot().find(".//failure")
    assert failure is not None and failure.get("type") == "min_score"
    assert failure.get("message") == report.problem


def test_judges_are_a_job_of_their_own_with_tokens_and_cost_apart(
    graded: Any, mock_server: MockServer
) -> None:
    report, folder, *_ = graded
    judge = folder / "out/d-default/judge-judge"
    lines = [json.loads(line) for line in (judge / "requests.jsonl").read_text().splitlines()]
    assert len(lines) == 15 and report.judge_requests == 15  # 5 rows x 3 judges (r5 skipped)
    assert [line["params"]["seed"] for line in lines[:3]] == [0, 1, 2]
    assert "<question>\nReview: I love this kettle, 5 stars\n</question>" in lines[0]["prompt"]
    judged = pd.read_parquet(judge / "results.parquet")
    tokens = int(judged["prompt_tokens"].sum()), int(judged["completion_tokens"].sum())
    assert (report.judge_prompt_tokens, report.judge_completion_tokens) == tokens
    assert report.judge_cost == pytest.approx((tokens[0] * 1.0 + tokens[1] * 2.0) / 1e6)
    answers = pd.read_parquet(folder / "out/d-default/results.parquet")
    assert report.prompt_tokens == int(answers["prompt_tokens"].sum())  # answers' alone
    assert report.cost is None  # the answers had no prices; the judge's are its own
    assert mock_server.stats()["submissions"] == 6 + 15


def test_a_rerun_buys_nothing_and_grades_the_same(graded: Any, mock_server: MockServer) -> None:
    report, folder, *_, path = graded
    grades = folder / "out/d-default/grades.parquet"
    before = pd.read_parquet(grades)
    [again] = run_sweep_here(path, mock_server.base_url)
    assert mock_server.stats()["submissions"] == 21  # answers and verdicts resumed
    assert [s.score for s in again.scores] == [s.score for s in report.scores]
    pd.testing.assert_frame_equal(pd.read_parquet(grades), before)


def test_summaries_carry_the_scores(graded: Any) -> None:
    report, folder, junit, step_summary, _ = graded
    markdown = (folder / "out/summary.md").read_text()
    assert "## Scores (± standard error)" in markdown
    assert "| d-default | label (exact) | 80.0% ± 20.0 | 5 | 0 |  | FAIL: min_score |" in markdown
    assert "| d-default | shape (json_schema) | 83.3% ± 16.7 | 6 | 0 |  | pass |" in markdown
    assert step_summary.read_text() == "earlier step\n" + markdown + "\n"
    scores = pd.read_parquet(folder / "out/scores.parquet").set_index("grader")
    assert scores.loc["stars", "score"] == pytest.approx(0.6)
    assert scores.loc["label", "gates_failed"] == "min_score"
    summary = pd.read_parquet(folder / "out/summary.parquet")
    assert summary.loc[0, "accuracy"] == pytest.approx(0.8)  # the first grader, for old readers
    assert summary.loc[0, "judge_requests"] == 15
    props = {p.get("name"): p.get("value") for p in ET.parse(junit).getroot().iter("property")}
    assert props["score.label"] == "0.8" and props["stderr.label"] == "0.2"
    assert props["score.judge"] == "0.6" and int(props["judge_tokens"]) > 0


def test_report_shows_the_per_grader_table(graded: Any) -> None:
    folder = graded[1]
    result = CliRunner().invoke(main, ["report", str(folder / "out")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"batchrun report: sweep {folder / 'out'} (0 of 1 cells passed)"
    assert lines[1].startswith("  d-default: 6 ok, 0 failed, 0 invalid;")
    assert "judges" in lines[1] and "FAIL (gate min_score [label]" in lines[1]
    table = "\n".join(lines[3:])
    assert "label (exact)" in table and "80.0% ± 20.0" in table and "FAIL: min_score" in table
    as_json = json.loads(CliRunner().invoke(main, ["report", str(folder / "out"), "--json"]).output)
    assert [s["grader"] for s in as_json["scores"]] == list(EXPECTED)
    html = CliRunner().invoke(main, ["report", str(folder / "out"), "--html", "x.html"])
    assert html.exit_code == 2 and "--html is for one job's output" in html.output


def test_old_sweep_files_keep_their_exact_accuracy(mock_server: MockServer, tmp_path: Path) -> None:
    """No [[graders]]: exact match of the answer against `expected`, rows without one left
    out, as before graders existed."""
    rows = [
        {"id": "a", "prompt": "x", "expected": "Answer to: x"},
        {"id": "b", "prompt": "y", "expected": "nope"},
        {"id": "c", "prompt": "z"},
    ]
    [report] = run_sweep_here(write_sweep(tmp_path, "", rows), mock_server.base_url)
    assert report.passed and (report.accuracy, report.scored) == (0.5, 2)
    assert [(s.grader, s.kind, s.skipped) for s in report.scores] == [("exact", "exact", 1)]


def test_the_example_sweep_file_runs_against_the_local_endpoint(
    mock_server: MockServer, tmp_path: Path
) -> None:
    """configs/sweep-graded.toml, the README's complete example, as written (its folders
    moved here): every grader kind, a judge with 3 judges, both cells pass."""
    repo = Path(__file__).resolve().parent.parent
    text = (repo / "configs/sweep-graded.toml").read_text()
    for old, new in (
        ('"../out/sweep-graded"', str(tmp_path / "out")),
        ('"../samples/reviews.jsonl"', str(repo / "samples/reviews.jsonl")),
        ('"nightly.toml"', str(repo / "configs/nightly.toml")),
        ('"label.schema.json"', str(repo / "configs/label.schema.json")),
        ('"../out/sweep-graded/events.jsonl"', str(tmp_path / "events.jsonl")),
    ):
        assert old in text
        text = text.replace(old, json.dumps(new))
    path = tmp_path / "sweep-graded.toml"
    path.write_text(text)
    reports = run_sweep_here(path, mock_server.base_url)
    assert [r.passed for r in reports] == [True, True]
    kinds = {s.kind for s in reports[0].scores}
    assert kinds == {"exact", "regex", "number", "includes", "json_schema", "judge"}
    assert score(reports[0], "label").score == pytest.approx(0.8)
    assert reports[0].judge_requests == 60 and reports[0].judge_cost is not None


def test_a_cell_that_cannot_be_graded_fails_without_a_crash(
    mock_server: MockServer, tmp_path: Path
) -> None:
    """Answers written as OpenAI batch lines, not Parquet: the graders cannot read them."""
    body = '[run]\noutput_format = "openai-jsonl"\n[[graders]]\nname = "e"\nkind = "exact"\n'
    rows = [{"id": "a", "prompt": "x", "expected": "y"}]
    [report] = run_sweep_here(write_sweep(tmp_path, body, rows), mock_server.base_url)
    assert report.ok == 1 and not report.passed
    assert (report.problem or "").startswith("grading failed: ")


def test_report_of_a_sweep_written_before_graders(tmp_path: Path) -> None:
    """An older sweep folder: summary.parquet with its old columns, no scores.parquet."""
    old = {"cell": "d-default", "dataset": "d.jsonl", "model": "m", "params": "{}", "rows": 2,
           "ok": 2, "failed": 0, "invalid": 0, "prompt_tokens": 10, "completion_tokens": 5,
           "accuracy": 0.5, "scored": 2, "passed": True, "problem": None}  # fmt: skip
    pd.DataFrame([old]).to_parquet(tmp_path / "summary.parquet")
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"batchrun report: sweep {tmp_path} (1 of 1 cells passed)",
        "  d-default: 2 ok, 0 failed, 0 invalid; 15 tokens - PASS",
    ]
