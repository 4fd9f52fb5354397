"""`batchrun sweep SWEEP --baseline DIR`: the paired comparison on its own (no I/O), then
end to end against the local endpoint: one flipped row passes, thirty rows gone wrong are
`regressed` with exit 1, cells and rows missing from the baseline are said and not failed,
an older baseline without grades is graded again, and a folder that is no sweep's output
is exit 2 with nothing sent."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from batchrun.baseline import Baseline, compare
from batchrun.grade_records import RowGrade, Verdict
from batchrun.graders import GradeState
from batchrun.grading import score_of
from batchrun.testing import MockServer

from .conftest import run_cli
from .sweeps import run_sweep_here, score, write_sweep

# ---------------------------------------------------------------- the comparison alone


def grades(marks: str, *, key: str = "k1", repeats: int = 1) -> list[RowGrade]:
    """One grade per character: 1 pass, 0 fail, e error, s skipped; items i00, i01, ..."""
    states = {"1": GradeState.PASS, "0": GradeState.FAIL, "e": GradeState.ERROR,
              "s": GradeState.SKIPPED}  # fmt: skip
    out = []
    for n, mark in enumerate(marks):
        item, repeat = f"i{n // repeats:02d}", n % repeats
        row_id = f"{item}#{repeat}" if repeats > 1 else item
        out.append(RowGrade(row_id, item, repeat, "g", key, states[mark]))
    return out


def compared(now: list[RowGrade], before: list[RowGrade], cells: list[str] | None = None) -> Any:
    baseline = Baseline(Path("base"), cells or ["cell"], {"cell": {"g": before}})
    current = score_of("cell", "g", "exact", now[0].grader_key, now, ())
    return compare(baseline, "cell", current, now, alpha=0.05)


def test_one_flaky_row_is_no_regression() -> None:
    result = compared(grades("1" * 39 + "0"), grades("1" * 40))
    assert result.verdict is Verdict.NO_CHANGE
    assert (result.worse, result.better, result.p_value) == (["i39"], [], 1.0)
    assert result.change == pytest.approx(-1 / 40) and result.baseline_score == 1.0


def test_thirty_rows_gone_wrong_are_a_regression() -> None:
    result = compared(grades("0" * 30 + "1" * 10), grades("1" * 40))
    assert result.verdict is Verdict.REGRESSED
    assert len(result.worse) == 30 and result.worse[0] == "i00"
    assert result.p_value == pytest.approx(2 / 2**30)
    assert result.change == pytest.approx(-0.75)


def test_flips_both_ways_cancel_out() -> None:
    # 6 right -> wrong and 4 wrong -> right: p = 2 · P(X <= 4 | n = 10) = 0.754
    result = compared(grades("0" * 6 + "1" * 4 + "1" * 10), grades("1" * 6 + "0" * 4 + "1" * 10))
    assert result.verdict is Verdict.NO_CHANGE and result.p_value == pytest.approx(0.75390625)
    assert compared(grades("1" * 20), grades("0" * 20)).verdict is Verdict.IMPROVED


def test_rows_not_graded_on_either_side_are_left_out() -> None:
    # i00 could not be graded now, i01 not in the baseline; only i02 pairs; i03 is new;
    # i04 has no expected value now (skipped: not counted anywhere)
    result = compared(grades("e111s"), grades("1e1"))
    assert result.paired == 1
    assert result.not_compared == 2 and result.not_in_baseline == 1
    assert "1 rows are not in the baseline (not compared)" in result.notes


def test_a_cell_or_grader_the_baseline_lacks() -> None:
    baseline = Baseline(Path("base"), ["other"], {})
    now = grades("11")
    current = score_of("cell", "g", "exact", "k1", now, ())
    missing = compare(baseline, "cell", current, now, 0.05)
    assert missing.verdict is Verdict.NO_BASELINE and missing.notes == [
        "the baseline has no such cell"
    ]
    other = Baseline(Path("base"), ["cell"], {"cell": {}})
    assert compare(other, "cell", current, now, 0.05).notes == [
        "the baseline has no grades by 'g' here"
    ]


def test_a_grader_defined_otherwise_is_compared_with_a_note() -> None:
    result = compared(grades("11", key="k2"), grades("11", key="k1"))
    assert "'g' is defined otherwise in the baseline: compared anyway" in result.notes


def test_with_repeats_items_are_compared_by_their_mean() -> None:
    # items of 3 repeats: i00 went from 3/3 to 1/3, i01 unchanged
    result = compared(grades("100111", repeats=3), grades("111111", repeats=3))
    assert result.worse == ["i00"] and result.better == [] and result.paired == 2


# ---------------------------------------------------------------- end to end

GRADER = '[[graders]]\nname = "says_ok"\nkind = "includes"\n'


def rows(wrong: range = range(0)) -> list[dict[str, Any]]:
    """40 rows whose answer holds "ok" (the mock repeats the prompt), except `wrong`."""
    return [
        {"id": f"r{i:02d}", "prompt": f"Question {i}: say " + ("no" if i in wrong else "ok"),
         "expected": "ok"}
        for i in range(40)
    ]  # fmt: skip


@pytest.fixture
def baseline(mock_server: MockServer, tmp_path: Path) -> Path:
    """An earlier sweep where every row was right: its output folder."""
    path = write_sweep(tmp_path / "base", GRADER, rows())
    [report] = run_sweep_here(path, mock_server.base_url)
    assert report.passed and score(report, "says_ok").score == 1.0
    return tmp_path / "base/out"


def sweep_now(folder: Path, wrong: range, *extra: str, env: dict[str, str] | None = None) -> Any:
    """The current sweep (rows in `wrong` now answered wrong), and a function that runs it
    through the CLI against (endpoint URL, baseline folder)."""
    path = write_sweep(folder, GRADER, rows(wrong))
    return path, lambda url, base: run_cli(
        "sweep", str(path), "--base-url", url, "--baseline", str(base), *extra, env=env
    )


@pytest.mark.slow
def test_a_one_row_flip_passes(mock_server: MockServer, tmp_path: Path, baseline: Path) -> None:
    _, run = sweep_now(tmp_path / "now", range(7, 8), "--junit-xml", str(tmp_path / "j.xml"))
    result = run(mock_server.base_url, baseline)
    assert result.returncode == 0, result.stderr
    scores = pd.read_parquet(tmp_path / "now/out/scores.parquet").iloc[0]
    assert scores["verdict"] == "no significant change" and scores["p_value"] == 1.0
    assert list(scores["worse_ids"]) == ["r07"] and scores["change"] == pytest.approx(-0.025)
    markdown = (tmp_path / "now/out/summary.md").read_text()
    assert "| d-default | says_ok (includes) | 97.5% ± 2.5 | 40 | 0 |  | 100.0% | -2.5 pts " in (
        markdown
    )
    assert "- d-default / says_ok: right→wrong (1): `r07`; wrong→right (0): none" in markdown
    props = {p.get("name"): p.get("value") for p in ET.parse(tmp_path / "j.xml").iter("property")}
    assert props["verdict.says_ok"] == "no significant change" and props["p_value.says_ok"] == "1"


@pytest.mark.slow
def test_a_thirty_row_drop_is_regressed_with_exit_1(
    mock_server: MockServer, tmp_path: Path, baseline: Path
) -> None:
    junit, steps = tmp_path / "j.xml", tmp_path / "steps.md"
    _, run = sweep_now(
        tmp_path / "now", range(10, 40), "--junit-xml", str(junit),
        env={"GITHUB_STEP_SUMMARY": str(steps)},
    )  # fmt: skip
    result = run(mock_server.base_url, baseline)
    assert result.returncode == 1, result.stderr
    message = (
        "gate baseline [says_ok]: regressed from 100.0% to 25.0% (-75.0 points): 30 rows "
        "right -> wrong, 0 wrong -> right of 40 paired; McNemar exact p = 1.9e-09 <= alpha 0.05"
    )
    assert message in result.stderr
    failure = ET.parse(junit).getroot().find(".//failure")
    assert failure is not None and failure.get("type") == "baseline"
    assert failure.get("message") == message
    markdown = steps.read_text()
    assert "| 100.0% | -75.0 pts | 30 | 0 | 1.9e-09 | FAIL: baseline |" in markdown
    assert "right→wrong (30): `r10`, `r11`," in markdown


def test_cells_and_rows_missing_from_the_baseline_are_said_not_failed(
    mock_server: MockServer, tmp_path: Path, baseline: Path
) -> None:
    folder = tmp_path / "now"
    more = rows() + [{"id": "r40", "prompt": "say ok", "expected": "ok"}]
    path = write_sweep(folder, GRADER, more[1:])  # r00 gone, r40 new
    (folder / "e.jsonl").write_text((folder / "d.jsonl").read_text())
    path.write_text(path.read_text().replace('["d.jsonl"]', '["d.jsonl", "e.jsonl"]'))
    d_cell, e_cell = run_sweep_here(path, mock_server.base_url, baseline=baseline)
    assert d_cell.passed and e_cell.passed
    found = score(d_cell, "says_ok").comparison
    assert found.verdict is Verdict.NO_CHANGE and found.paired == 39
    assert found.not_in_baseline == 1
    assert found.notes == [
        "1 of the baseline's rows are not in this cell",
        "1 rows are not in the baseline (not compared)",
    ]
    assert score(e_cell, "says_ok").comparison.verdict is Verdict.NO_BASELINE
    markdown = (folder / "out/summary.md").read_text()
    assert "| e-default | says_ok (includes) | 100.0% ± 0.0 | 40 | 0 |  | - | - | - | - | - " in (
        markdown
    )
    assert "| no baseline |" in markdown
    assert "- e-default / says_ok: the baseline has no such cell." in markdown


def test_an_older_baseline_without_grades_is_graded_again(
    mock_server: MockServer, tmp_path: Path, baseline: Path
) -> None:
    (baseline / "d-default/grades.parquet").unlink()
    path = write_sweep(tmp_path / "now", GRADER, rows(range(1)))
    [report] = run_sweep_here(path, mock_server.base_url, baseline=baseline)
    found = score(report, "says_ok").comparison
    assert found.worse == ["r00"] and found.notes[0].startswith(
        "the baseline kept no grades for this cell: graded again from its results.parquet"
    )


def test_the_sweeps_own_output_as_baseline_is_read_before_it_runs(
    mock_server: MockServer, tmp_path: Path, baseline: Path
) -> None:
    path = tmp_path / "base/sweep.toml"
    [report] = run_sweep_here(path, mock_server.base_url, baseline=baseline)
    found = score(report, "says_ok").comparison
    assert report.passed and found.verdict is Verdict.NO_CHANGE and found.paired == 40
    assert mock_server.stats()["submissions"] == 40  # resumed: nothing bought again


@pytest.mark.slow
def test_a_baseline_that_is_no_sweep_output_is_exit_2_with_nothing_sent(
    mock_server: MockServer, tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    _, run = sweep_now(tmp_path / "now", range(0))
    for base, why in (
        (tmp_path / "nope", "no such folder"),
        (tmp_path / "empty", "not a sweep's output folder (no summary.parquet); give the "
         "output_dir of an earlier `batchrun sweep`"),
    ):  # fmt: skip
        result = run(mock_server.base_url, base)
        assert result.returncode == 2
        assert result.stderr == f"batchrun: error: --baseline {base}: {why}\n"
    assert mock_server.stats()["submissions"] == 0
    assert not (tmp_path / "now/out").exists()
