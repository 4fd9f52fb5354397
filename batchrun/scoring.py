"""The statistics of a sweep's scores: pure functions on numbers, no I/O, no pandas.

A grader gives every graded row a score of 0 or 1. For one grader of one cell:

- **score**: the mean over its graded rows, x̄ = Σx / n.
- **standard error**, clustered by item (the input row a repeat answers), the cluster-robust
  (CR1) standard error of a mean: with G items, item g's rows x_gi,

      SE = sqrt( G / (G - 1) · Σ_g ( Σ_i (x_gi - x̄) )² ) / n

  With one row per item this is exactly the sample standard error s / √n (s² with n - 1),
  which for 0/1 scores is sqrt( p (1 - p) / (n - 1) ); with k repeats of every item it is
  the sample standard error of the G item means. Repeats of one item are not independent
  draws (an item the model cannot do fails every time), so treating them as n independent
  rows would understate the error; the clustered form does not. None under two items.
- **pass@k** (k samples of an item, at least one right), the unbiased estimator per item
  with n graded repeats of which c are right, averaged over the items with n ≥ k:

      pass@k = 1 - C(n - c, k) / C(n, k)

- **paired comparison** against a baseline (`baseline.py`): per item, the mean of its rows
  now and in the baseline; items whose mean went down or up are the discordant pairs of
  McNemar's test, and the exact two-sided p-value is the binomial tail
  p = min(1, 2 · Σ_{i ≤ min(d, u)} C(d + u, i) / 2^(d + u)) for d down and u up. With one
  row per item (scores 0/1) this is McNemar's exact test; with repeats, the sign test on
  the items' means. Computed with math.comb (exact integers), no scipy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ScoreStats:
    """One grader's figures over one cell's graded rows."""

    mean: float | None  # None: no graded row
    stderr: float | None  # None: fewer than two items
    rows: int  # graded rows (n)
    items: int  # distinct items among them (G)
    repeats: int  # most rows any item has (1: no repeats)
    pass_at: dict[int, float] = field(default_factory=dict)

    @property
    def clustered(self) -> bool:
        """Whether the standard error is clustered over repeats (an item has several rows)."""
        return self.repeats > 1


def score_stats(rows: Iterable[tuple[str, float]], pass_at: Sequence[int] = ()) -> ScoreStats:
    """The figures of graded rows given as (item id, score). pass@k for every k asked for
    (with repeats, k = the fewest repeats an item has is added), where some item has k rows."""
    by_item = group_by_item(rows)
    values = [v for scores in by_item.values() for v in scores]
    if not values:
        return ScoreStats(None, None, 0, 0, 0)
    sizes = [len(scores) for scores in by_item.values()]
    ks = set(pass_at)
    if max(sizes) > 1:
        ks.add(min(sizes))
    passes = {k: v for k in sorted(ks) if (v := mean_pass_at_k(by_item.values(), k)) is not None}
    return ScoreStats(
        mean=sum(values) / len(values),
        stderr=clustered_stderr(by_item.values()),
        rows=len(values),
        items=len(by_item),
        repeats=max(sizes),
        pass_at=passes,
    )


def group_by_item(rows: Iterable[tuple[str, float]]) -> dict[str, list[float]]:
    """Scores by item, items in first-seen order."""
    by_item: dict[str, list[float]] = {}
    for item, value in rows:
        by_item.setdefault(item, []).append(value)
    return by_item


def clustered_stderr(clusters: Iterable[Sequence[float]]) -> float | None:
    """The CR1 cluster-robust standard error of the mean of every value (module docstring)."""
    groups = [list(g) for g in clusters if g]
    n = sum(len(g) for g in groups)
    if len(groups) < 2:
        return None
    mean = sum(sum(g) for g in groups) / n
    spread = sum(sum(x - mean for x in g) ** 2 for g in groups)
    return math.sqrt(len(groups) / (len(groups) - 1) * spread) / n


def sample_stderr(values: Sequence[float]) -> float | None:
    """s / √n with the n - 1 sample variance (the clustered form with one row per item)."""
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    return math.sqrt(sum((x - mean) ** 2 for x in values) / (n - 1) / n)


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k of one item: n samples, c of them right."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    if n - c < k:  # every choice of k samples holds a right one
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def mean_pass_at_k(clusters: Iterable[Sequence[float]], k: int) -> float | None:
    """pass@k averaged over the items with at least k rows (a row is right at score 1)."""
    values = [
        pass_at_k(len(scores), sum(1 for s in scores if s >= 1.0), k)
        for scores in clusters
        if len(scores) >= k
    ]
    return sum(values) / len(values) if values else None


def exact_binomial_p(down: int, up: int) -> float:
    """The exact two-sided p-value of McNemar's test (the sign test) on `down` + `up`
    discordant pairs: how likely a split at least this uneven is if neither way is likelier."""
    if down < 0 or up < 0:
        raise ValueError("counts of discordant pairs cannot be negative")
    n = down + up
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(down, up) + 1))
    # int / int: Python rounds the exact quotient, so a large n neither overflows nor drifts.
    return min(1.0, 2 * tail / (1 << n))


@dataclass(frozen=True)
class PairedChange:
    """Items compared with a baseline: which went down, which up, and the test's p-value."""

    paired: int  # items with graded rows on both sides
    down: list[str]  # items whose mean dropped (right -> wrong)
    up: list[str]  # items whose mean rose (wrong -> right)
    p_value: float
    baseline_mean: float | None  # the row mean over the paired items, each side
    current_mean: float | None


def paired_change(
    current: Mapping[str, Sequence[float]], baseline: Mapping[str, Sequence[float]]
) -> PairedChange:
    """Pair items present (with graded rows) on both sides, current order kept."""
    items = [i for i, scores in current.items() if scores and baseline.get(i)]
    down: list[str] = []
    up: list[str] = []
    for item in items:
        now, before = _mean(current[item]), _mean(baseline[item])
        if now < before:
            down.append(item)
        elif now > before:
            up.append(item)
    return PairedChange(
        paired=len(items),
        down=down,
        up=up,
        p_value=exact_binomial_p(len(down), len(up)),
        baseline_mean=_row_mean(baseline[i] for i in items),
        current_mean=_row_mean(current[i] for i in items),
    )


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _row_mean(groups: Iterable[Sequence[float]]) -> float | None:
    values = [v for g in groups for v in g]
    return sum(values) / len(values) if values else None
