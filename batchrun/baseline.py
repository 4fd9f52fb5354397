"""`batchrun sweep SWEEP.toml --baseline DIR`: each cell's grades against an earlier sweep's.

DIR is an earlier sweep's output folder. It is read whole before any cell runs (so DIR may
even be this sweep's own output_dir: what it held before this run is the baseline), and a
folder that is no sweep's output is exit 2, nothing sent.

- **Cells** pair by name: a cell's name is its dataset, model and grid values, so the same
  line of the grid pairs with itself. A cell the baseline lacks gets `no baseline` (never
  a failure); cells only the baseline has are listed in the summary.
- **Rows** pair by item: the input row's id (`item_id` with repeats, else the row id).
  Each side's item score is the mean of its rows (0 or 1 without repeats). Items graded on
  one side only are counted (`not in baseline`) and left out; so are items a grader could
  not grade on either side (a judge that was down is no evidence either way).
- **Grades** are the baseline's grades.parquet, not graded again; a cell kept from before
  grades existed is graded again from its results.parquet by the graders that need no
  model. A grader defined otherwise in the baseline (another fingerprint) is compared
  anyway, with a note.
- **Verdict**: items whose score went down (right -> wrong) and up (wrong -> right) are the
  discordant pairs of McNemar's exact test (scoring.exact_binomial_p). A grader of a cell
  has `regressed` when more items went down than up and p <= alpha (the sweep's `alpha`,
  default 0.05): one flaky row (p = 1) never fails CI; thirty rows that all went wrong
  (p ≈ 2e-9) do. `improved` likewise the other way; else `no significant change`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from .errors import ConfigError
from .grade_records import Comparison, GraderScore, RowGrade, Verdict
from .grader_spec import GraderSpec
from .graders import GradeState
from .grading import (
    GRADES_FILE,
    grade_offline,
    read_answers,
    read_grades,
    score_of,
    split_by_grader,
)
from .scoring import paired_change


@dataclass
class Baseline:
    """An earlier sweep's grades, by cell and grader, read before this sweep runs."""

    folder: Path
    cells: list[str]  # every cell the baseline sweep reported, in its order
    grades: dict[str, dict[str, list[RowGrade]]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # per cell: how its grades were had


def load_baseline(folder: Path, graders: Sequence[GraderSpec]) -> Baseline:
    """Read DIR's summary and every cell's grades (graded again where none were kept)."""
    summary = folder / "summary.parquet"
    if not folder.is_dir():
        raise ConfigError(f"--baseline {folder}: no such folder")
    if not summary.is_file():
        raise ConfigError(
            f"--baseline {folder}: not a sweep's output folder (no summary.parquet); give the "
            "output_dir of an earlier `batchrun sweep`"
        )
    try:
        cells = [
            str(c) for c in pq.read_table(summary, columns=["cell"]).column("cell").to_pylist()
        ]
    except Exception as exc:  # pyarrow raises several types for a file it cannot read
        raise ConfigError(f"--baseline {summary}: not a sweep summary ({exc})") from None
    baseline = Baseline(folder, cells)
    for cell in cells:
        grades, note = _cell_grades(folder / cell, graders)
        baseline.grades[cell] = split_by_grader(grades)
        if note:
            baseline.notes[cell] = note
    return baseline


def _cell_grades(folder: Path, graders: Sequence[GraderSpec]) -> tuple[list[RowGrade], str]:
    kept = folder / GRADES_FILE
    if kept.is_file():
        return read_grades(kept), ""
    results = folder / "results.parquet"
    if results.exists():
        answers = read_answers(results, graders)
        return grade_offline(graders, answers), (
            "the baseline kept no grades for this cell: graded again from its results.parquet "
            "(judges excepted)"
        )
    return [], "the baseline has no results for this cell"


def compare(
    baseline: Baseline,
    cell: str,
    score: GraderScore,
    grades: Sequence[RowGrade],
    alpha: float,
) -> Comparison:
    """One grader of one cell against the baseline (module docstring)."""
    if cell not in baseline.cells:
        return Comparison(Verdict.NO_BASELINE, notes=["the baseline has no such cell"])
    before = baseline.grades.get(cell, {}).get(score.grader, [])
    if not before:
        why = baseline.notes.get(cell) or f"the baseline has no grades by {score.grader!r} here"
        return Comparison(Verdict.NO_BASELINE, notes=[why])
    earlier = score_of(cell, score.grader, score.kind, before[0].grader_key, before, ())
    now_items, now_bad = _items(grades)
    then_items, then_bad = _items(before)
    usable_now = {i: v for i, v in now_items.items() if i not in now_bad | then_bad}
    usable_then = {i: v for i, v in then_items.items() if i not in now_bad | then_bad}
    pairs = paired_change(usable_now, usable_then)
    down, up = len(pairs.down), len(pairs.up)
    significant = pairs.p_value <= alpha
    verdict = Verdict.NO_CHANGE
    if significant and down > up:
        verdict = Verdict.REGRESSED
    elif significant and up > down:
        verdict = Verdict.IMPROVED
    return Comparison(
        verdict=verdict,
        baseline_score=earlier.score,
        change=None
        if score.score is None or earlier.score is None
        else score.score - earlier.score,
        paired=pairs.paired,
        worse=pairs.down,
        better=pairs.up,
        p_value=pairs.p_value,
        not_in_baseline=sum(1 for i in now_items if i not in then_items),
        not_compared=len((now_bad | then_bad) & (set(now_items) | set(then_items))),
        notes=_notes(baseline, cell, score, earlier, now_items, then_items),
    )


def _items(grades: Iterable[RowGrade]) -> tuple[dict[str, list[float]], set[str]]:
    """Counted scores by item, and the items with a row that could not be graded."""
    items: dict[str, list[float]] = {}
    bad: set[str] = set()
    for g in grades:
        if g.state is GradeState.SKIPPED:
            continue
        if g.state is GradeState.ERROR:
            bad.add(g.item_id)
            continue
        items.setdefault(g.item_id, []).append(1.0 if g.state is GradeState.PASS else 0.0)
    for item in bad:
        items.setdefault(item, [])
    return items, bad


def _notes(
    baseline: Baseline,
    cell: str,
    score: GraderScore,
    earlier: GraderScore,
    now_items: dict[str, list[float]],
    then_items: dict[str, list[float]],
) -> list[str]:
    notes = [baseline.notes[cell]] if cell in baseline.notes else []
    if earlier.grader_key and earlier.grader_key != score.grader_key:
        notes.append(f"{score.grader!r} is defined otherwise in the baseline: compared anyway")
    gone = sum(1 for i in then_items if i not in now_items)
    if gone:
        notes.append(f"{gone} of the baseline's rows are not in this cell")
    new = sum(1 for i in now_items if i not in then_items)
    if new:
        notes.append(f"{new} rows are not in the baseline (not compared)")
    return notes


def cells_only_in_baseline(baseline: Baseline, cells: Iterable[str]) -> list[str]:
    """The baseline's cells this sweep did not run (renamed or removed from the grid)."""
    ran = set(cells)
    return [c for c in baseline.cells if c not in ran]
