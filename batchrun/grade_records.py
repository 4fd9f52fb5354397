"""The rows a sweep's grading passes between modules: a row's grade (grades.parquet), a
grader's score in a cell (scores.parquet), and its comparison with a baseline. Plain data,
no I/O: grading.py fills them, baseline.py compares them, gates.py judges them and
sweep_summary.py shows them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from .graders import GradeState


@dataclass(frozen=True)
class RowGrade:
    """One grader's grade of one output row: a row of `<cell>/grades.parquet`."""

    id: str
    item_id: str  # the input row it answers (the id itself without repeats)
    repeat: int  # 0 without repeats
    grader: str
    grader_key: str  # the grader definition's fingerprint (grader_spec.GraderSpec.key)
    state: GradeState
    note: str | None = None  # why it failed, or why it could not be graded

    @property
    def score(self) -> float | None:
        """1 pass, 0 fail, None skipped or not gradable."""
        return {GradeState.PASS: 1.0, GradeState.FAIL: 0.0}.get(self.state)

    @property
    def counted(self) -> float | None:
        """Its value in a score: a row that could not be graded counts as wrong (so a
        broken grader cannot pass a gate); a skipped row does not count."""
        if self.state is GradeState.SKIPPED:
            return None
        return 1.0 if self.state is GradeState.PASS else 0.0


class Verdict(StrEnum):
    """What a grader's comparison with the baseline says."""

    REGRESSED = "regressed"  # fewer right, and the paired test says it is no accident
    IMPROVED = "improved"  # more right, as surely
    NO_CHANGE = "no significant change"
    NO_BASELINE = "no baseline"  # the baseline has no such cell, or no such grader there


@dataclass(frozen=True)
class Comparison:
    """One grader of one cell against the baseline's, row by row (by item with repeats)."""

    verdict: Verdict
    baseline_score: float | None = None  # the baseline's score (all its graded rows)
    change: float | None = None  # score - baseline_score
    paired: int = 0  # items graded on both sides
    worse: list[str] = field(default_factory=list)  # right -> wrong (mean down, with repeats)
    better: list[str] = field(default_factory=list)  # wrong -> right
    p_value: float | None = None  # McNemar's exact test on the flips
    not_in_baseline: int = 0  # items graded now that the baseline did not grade
    not_compared: int = 0  # items left out: ungradable (error) on either side
    notes: list[str] = field(default_factory=list)  # anything that qualifies the comparison


@dataclass
class GraderScore:
    """One grader's result in one cell: a row of scores.parquet."""

    cell: str
    grader: str
    kind: str
    grader_key: str
    score: float | None  # mean of the counted rows; None: nothing graded
    stderr: float | None
    rows: int  # rows counted (pass + fail + error)
    passed: int
    failed: int
    errors: int  # rows the grader could not grade (counted as wrong)
    skipped: int  # rows without an expected value (not counted)
    items: int
    repeats: int  # most rows an item has: > 1 means the stderr is clustered
    pass_at: dict[int, float] = field(default_factory=dict)
    min_score: float | None = None
    comparison: Comparison | None = None
    first_error: str | None = None  # an example of why rows could not be graded
