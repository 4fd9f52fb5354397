"""Judge graders: the mock endpoint's judge mode, reading verdicts and the majority (pure),
then judges at work against the local endpoint: agreeing and disagreeing, a reply without a
verdict, a judge that cannot be reached (counted, never a crash), a judge's refused key
(the sweep stops, exit 3), and answers that changed (earlier verdicts reused, not bought)."""

from __future__ import annotations

import socket
import tomllib
from pathlib import Path

import pandas as pd
import pytest

from batchrun.errors import AuthError
from batchrun.grader_spec import read_graders
from batchrun.graders import GradeState
from batchrun.judge import majority, read_verdict
from batchrun.judge_config import DEFAULT_RUBRIC
from batchrun.testing import MockServer, MockSettings
from batchrun.testing.judge import is_judge_prompt, judge_reply

from .sweeps import run_sweep_here, score, write_sweep


def rubric(answer: str, expected: str) -> str:
    return DEFAULT_RUBRIC.format(question="q", answer=answer, expected=expected)


# ---------------------------------------------------------------- the mock's judge mode


def test_a_judge_prompt_is_one_with_answer_and_expected_blocks() -> None:
    assert is_judge_prompt(rubric("Paris", "paris"))
    assert not is_judge_prompt("What is <answer>x</answer>?")
    assert not is_judge_prompt("Question 1: what is 1 plus 1?")


def test_the_mock_judge_passes_an_answer_holding_the_expected_text() -> None:
    assert judge_reply(rubric("It is  PARIS, France", "paris"), {}).endswith("VERDICT: PASS")
    reply = judge_reply(rubric("It is Lyon", "paris"), {})
    assert reply == "The answer does not contain the expected text.\nVERDICT: FAIL"


@pytest.mark.parametrize(
    ("marker", "seeds", "verdicts"),
    [
        ("[verdict:fail]", [None, 0, 1], ["FAIL", "FAIL", "FAIL"]),
        ("[verdict:pass,fail,fail]", [0, 1, 2, 3], ["PASS", "FAIL", "FAIL", "PASS"]),
        ("[verdict:none]", [0], [None]),
    ],
)
def test_markers_decide_each_judges_verdict_by_its_seed(
    marker: str, seeds: list[int | None], verdicts: list[str | None]
) -> None:
    prompt = rubric(f"Paris {marker}", "paris")
    for seed, verdict in zip(seeds, verdicts, strict=True):
        reply = judge_reply(prompt, {} if seed is None else {"seed": seed})
        assert reply.endswith(f"VERDICT: {verdict}") if verdict else "VERDICT" not in reply


# ---------------------------------------------------------------- verdicts and the majority


def judge_spec(text: str = ""):  # type: ignore[no-untyped-def]
    table = tomllib.loads(
        '[[graders]]\nname = "j"\nkind = "judge"\nmodel = "m"\n'
        'base_url = "http://127.0.0.1:9/v1"\n' + text
    )
    spec = read_graders(Path("s.toml"), table["graders"], [])[0].judge
    assert spec is not None
    return spec


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("Looks right.\nVERDICT: PASS", True),
        ("verdict: fail", False),
        ("VERDICT: FAIL at first, but on reflection\nVERDICT: PASS", True),  # the last one
        ("I cannot tell.", "no verdict in the judge's reply ('I cannot tell.')"),
        (None, "no verdict in the judge's reply (empty)"),
    ],
)
def test_read_verdict_takes_the_last_match(reply: str | None, verdict: bool | str) -> None:
    assert read_verdict(judge_spec(), reply) == verdict


def test_a_verdict_pattern_of_ones_own() -> None:
    spec = judge_spec("verdict_pattern = 'Grade: (\\w+)'")
    assert read_verdict(spec, "Grade: correct") is True
    assert read_verdict(spec, "Grade: wrong") is False
    assert read_verdict(spec, "Grade: maybe") == "verdict 'maybe' is neither pass nor fail"


def test_majority_of_the_verdicts_given() -> None:
    assert majority([True, False, True]).state is GradeState.PASS
    assert majority([True, False]).state is GradeState.FAIL  # a tie fails
    lost = majority([True, "judge request failed: HTTP 500"])
    assert lost.state is GradeState.PASS
    assert lost.note == "1 of 1 judges say pass; 1 gave none (judge request failed: HTTP 500)"
    none = majority(["no verdict in the judge's reply (empty)"])
    assert none.state is GradeState.ERROR
    assert none.note == "judge: no verdict in the judge's reply (empty)"


# ---------------------------------------------------------------- judges at work


ROWS = [
    {"id": "a", "prompt": "Capital of France? Paris", "expected": "Paris"},
    {"id": "b", "prompt": "Capital of Italy? Milan", "expected": "Rome"},
    {"id": "c", "prompt": "Capital of Spain? Madrid [verdict:fail,pass,pass]", "expected": "x"},
    {"id": "d", "prompt": "Capital of Peru? Lima [verdict:pass,fail,fail]", "expected": "Lima"},
    {"id": "e", "prompt": "Capital of Chad? [verdict:none]", "expected": "N'Djamena"},
]


def judge_table(judges: int = 3, extra: str = "") -> str:
    return (
        f'[[graders]]\nname = "judge"\nkind = "judge"\nmodel = "judge-model"\n'
        f"judges = {judges}\nmin_score = 0.5\n{extra}"
    )


def grades_of(folder: Path) -> dict[str, tuple[str, str]]:
    frame = pd.read_parquet(folder / "out/d-default/grades.parquet")
    return {r.id: (r.state, r.note) for r in frame.itertuples()}


def test_judges_agree_and_disagree_by_majority(mock_server: MockServer, tmp_path: Path) -> None:
    [report] = run_sweep_here(write_sweep(tmp_path, judge_table(), ROWS), mock_server.base_url)
    assert grades_of(tmp_path) == {
        "a": ("pass", "3 of 3 judges say pass"),  # the answer holds "Paris"
        "b": ("fail", "0 of 3 judges say pass"),  # not "Rome"
        "c": ("pass", "2 of 3 judges say pass"),  # the markers outvote the texts
        "d": ("fail", "1 of 3 judges say pass"),
        "e": ("error", "judge: no verdict in the judge's reply ('I cannot tell whether this "
              "answer is right.')"),
    }  # fmt: skip
    judged = score(report, "judge")
    assert (judged.score, judged.errors, judged.rows) == (0.4, 1, 5)  # the error counts wrong
    assert not report.passed and "gate min_score [judge]: score 40.0% is 10.0 points below" in (
        report.problem or ""
    )
    assert "1 rows could not be graded, counted wrong (e.g. judge: no verdict" in (
        report.problem or ""
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_judge_is_counted_not_a_crash(
    mock_server: MockServer, tmp_path: Path
) -> None:
    nowhere = f'base_url = "http://127.0.0.1:{free_port()}/v1"\n'
    path = write_sweep(tmp_path, judge_table(1, nowhere), ROWS[:2])
    [report] = run_sweep_here(path, mock_server.base_url)
    assert report.ok == 2 and report.failed == 0  # the answers stand
    judged = score(report, "judge")
    assert (judged.score, judged.errors) == (0.0, 2)
    state, note = grades_of(tmp_path)["a"]
    assert state == "error" and note.startswith("judge: judge request failed: ")
    assert report.failures[0].gate.value == "min_score"
    markdown = (tmp_path / "out/summary.md").read_text()
    assert "- d-default / judge: 2 rows could not be graded (counted as wrong), e.g. judge:" in (
        markdown
    )


def test_a_judges_refused_key_stops_the_sweep(mock_server: MockServer, tmp_path: Path) -> None:
    with MockServer(MockSettings(seed=1, api_key="judge-right")) as judge_server:
        extra = f'base_url = "{judge_server.base_url}"\napi_key_env = "JUDGE_KEY"\n'
        path = write_sweep(tmp_path, judge_table(1, extra), ROWS[:2])
        with pytest.MonkeyPatch.context() as env:
            env.setenv("JUDGE_KEY", "judge-wrong")
            with pytest.raises(AuthError) as caught:
                run_sweep_here(path, mock_server.base_url)
        assert "JUDGE_KEY" in str(caught.value)  # the judge said no, naming its key's variable
        assert mock_server.stats()["submissions"] == 2  # the answers were bought
    assert (tmp_path / "out/summary.md").exists()  # summaries of what finished are written


def test_answers_that_changed_reuse_the_earlier_verdicts(
    mock_server: MockServer, tmp_path: Path
) -> None:
    """A cell resumed with more rows: its judge job is another job; verdicts of the rows
    judged before are reused from its earlier answers, only the new row's are bought."""
    path = write_sweep(tmp_path, "[run]\nlimit = 2\n" + judge_table(1), ROWS[:3])
    run_sweep_here(path, mock_server.base_url)
    assert mock_server.stats()["submissions"] == 2 + 2
    path.write_text(path.read_text().replace("limit = 2", "limit = 3"))
    [report] = run_sweep_here(path, mock_server.base_url)
    assert mock_server.stats()["submissions"] == 4 + 1 + 1  # one answer, one verdict
    assert list(grades_of(tmp_path)) == ["a", "b", "c"]
    assert score(report, "judge").rows == 3
    judged = pd.read_parquet(tmp_path / "out/d-default/judge-judge/results.parquet")
    assert judged["reused"].tolist() == [True, True, False]
