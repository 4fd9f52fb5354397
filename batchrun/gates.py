"""A sweep cell's gates: each check that can fail a cell, and a message that says which one
failed and by how much (what a CI log and a JUnit failure show).

- `max_failure_rate` (sweep key): the share of rows that failed or were invalid;
- `min_score` (per grader): the grader's score;
- `baseline` (with --baseline): the grader regressed against the baseline (baseline.py).

They are separate: a cell whose rows all answered can fail on its score, and one over its
failure budget fails on that whatever its score.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .grade_records import GraderScore, Verdict


class Gate(StrEnum):
    FAILURE_RATE = "max_failure_rate"
    MIN_SCORE = "min_score"
    BASELINE = "baseline"


@dataclass(frozen=True)
class GateFailure:
    gate: Gate
    message: str  # begins "gate <name>", says by how much
    grader: str | None = None


def failure_rate_gate(rate: float, limit: float, causes: str) -> GateFailure | None:
    if rate <= limit:
        return None
    return GateFailure(
        Gate.FAILURE_RATE,
        f"gate max_failure_rate: {rate:.1%} of rows failed or invalid, "
        f"{_points(rate - limit)} over the limit of {limit:.1%}; causes: {causes}",
    )


def min_score_gate(score: GraderScore) -> GateFailure | None:
    limit = score.min_score
    if limit is None:
        return None
    head = f"gate min_score [{score.grader}]:"
    if score.score is None:
        return GateFailure(
            Gate.MIN_SCORE,
            f"{head} no graded rows ({score.skipped} without an expected value) against "
            f"min_score {limit:.1%}",
            score.grader,
        )
    if score.score >= limit:
        return None
    text = (
        f"{head} score {score.score:.1%} is {_points(limit - score.score)} below min_score "
        f"{limit:.1%} ({score.passed} of {score.rows} rows right)"
    )
    if score.errors:
        text += (
            f"; {score.errors} rows could not be graded, counted wrong (e.g. {score.first_error})"
        )
    return GateFailure(Gate.MIN_SCORE, text, score.grader)


def regression_gate(score: GraderScore, alpha: float) -> GateFailure | None:
    found = score.comparison
    if found is None or found.verdict is not Verdict.REGRESSED:
        return None
    assert found.p_value is not None
    text = f"gate baseline [{score.grader}]: regressed"
    if found.baseline_score is not None and score.score is not None and found.change is not None:
        text += (
            f" from {found.baseline_score:.1%} to {score.score:.1%} "
            f"({_signed_points(found.change)})"
        )
    text += (
        f": {len(found.worse)} rows right -> wrong, {len(found.better)} wrong -> right of "
        f"{found.paired} paired; McNemar exact p = {found.p_value:.2g} <= alpha {alpha:g}"
    )
    return GateFailure(Gate.BASELINE, text, score.grader)


def grader_gates(score: GraderScore, alpha: float) -> list[GateFailure]:
    return [g for g in (min_score_gate(score), regression_gate(score, alpha)) if g is not None]


def _points(share: float) -> str:
    return f"{share * 100:.1f} points"


def _signed_points(share: float) -> str:
    return f"{share * 100:+.1f} points"
