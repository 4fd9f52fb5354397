"""batchrun/scoring.py: the sweep's statistics against hand computations (no I/O)."""

from __future__ import annotations

import math

import pytest

from batchrun.scoring import (
    clustered_stderr,
    exact_binomial_p,
    mean_pass_at_k,
    paired_change,
    pass_at_k,
    sample_stderr,
    score_stats,
)


def test_without_repeats_the_stderr_is_the_sample_stderr() -> None:
    # 3 of 4 right: p = 0.75, s² = (3·0.25² + 0.75²) / 3 = 0.25, SE = sqrt(0.25 / 4) = 0.25,
    # which is also sqrt(p (1 - p) / (n - 1)) = sqrt(0.1875 / 3).
    stats = score_stats([("a", 1.0), ("b", 1.0), ("c", 0.0), ("d", 1.0)])
    assert stats.mean == 0.75
    assert stats.stderr == pytest.approx(0.25)
    assert stats.stderr == pytest.approx(math.sqrt(0.75 * 0.25 / 3))
    assert (stats.rows, stats.items, stats.repeats, stats.clustered) == (4, 4, 1, False)
    assert sample_stderr([1.0, 1.0, 0.0, 1.0]) == pytest.approx(0.25)
    assert stats.pass_at == {}  # no repeats: no pass@k unless asked for


def test_with_repeats_the_stderr_is_clustered_by_item() -> None:
    """Items A 3/3, B 1/3, C 0/3, D 2/3: n = 12, mean 0.5. Per item, the sum of deviations
    from 0.5: 1.5, -0.5, -1.5, 0.5; squares sum to 5; CR1: sqrt(4/3 · 5) / 12 = 0.21517,
    the sample standard error of the item means (1, 1/3, 0, 2/3)."""
    rows = [("A", v) for v in (1, 1, 1)] + [("B", v) for v in (0, 0, 1)]
    rows += [("C", v) for v in (0, 0, 0)] + [("D", v) for v in (1, 0, 1)]
    stats = score_stats([(i, float(v)) for i, v in rows])
    assert stats.mean == 0.5
    assert stats.stderr == pytest.approx(math.sqrt(4 / 3 * 5) / 12)
    assert stats.stderr == pytest.approx(0.215166, abs=1e-6)
    assert stats.stderr == pytest.approx(sample_stderr([1, 1 / 3, 0, 2 / 3]))
    # Twelve independent rows would claim a smaller error: the clustering matters.
    assert sample_stderr([float(v) for _, v in rows]) == pytest.approx(math.sqrt(0.25 / 11))
    assert (stats.rows, stats.items, stats.repeats, stats.clustered) == (12, 4, 3, True)
    # pass@3 by default (the number of repeats): A, B and D have a right answer among 3.
    assert stats.pass_at == {3: pytest.approx(0.75)}


def test_clustered_stderr_with_clusters_of_different_sizes() -> None:
    # A: [1, 0] B: [1] C: [0, 0, 0]; n = 6, mean 1/3; sums of deviations 1/3, 2/3, -1
    clusters = [[1.0, 0.0], [1.0], [0.0, 0.0, 0.0]]
    spread = (1 / 3) ** 2 + (2 / 3) ** 2 + 1.0
    assert clustered_stderr(clusters) == pytest.approx(math.sqrt(3 / 2 * spread) / 6)


def test_one_item_or_none_has_no_stderr() -> None:
    assert score_stats([("a", 1.0), ("a", 0.0)]).stderr is None
    empty = score_stats([])
    assert (empty.mean, empty.stderr, empty.rows) == (None, None, 0)


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (5, 2, 1, 0.4),
        (5, 2, 2, 1 - 3 / 10),  # 1 - C(3,2)/C(5,2)
        (5, 2, 3, 1 - 1 / 10),  # 1 - C(3,3)/C(5,3)
        (5, 2, 4, 1.0),  # n - c < k: every 4 of 5 hold a right one
        (5, 0, 3, 0.0),
        (4, 4, 1, 1.0),
    ],
)
def test_pass_at_k_is_the_unbiased_estimator(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_averages_items_with_enough_samples() -> None:
    clusters = [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0]]
    # k=2: items 1 and 2 only: (1 - C(2,2)/C(3,2)) = 2/3 and 0
    assert mean_pass_at_k(clusters, 2) == pytest.approx(1 / 3)
    assert mean_pass_at_k(clusters, 4) is None
    stats = score_stats([("x", 1.0), ("x", 0.0), ("y", 0.0), ("y", 0.0)], pass_at=[1, 2, 5])
    assert stats.pass_at == {1: pytest.approx(0.25), 2: pytest.approx(0.5)}


def test_pass_at_k_refuses_impossible_counts() -> None:
    with pytest.raises(ValueError, match="pass@k needs"):
        pass_at_k(3, 4, 1)


@pytest.mark.parametrize(
    ("down", "up", "p"),
    [
        (0, 0, 1.0),
        (1, 0, 1.0),  # one flip: min(1, 2 · 1/2)
        (2, 0, 0.5),
        (5, 1, 2 * 7 / 64),  # 2 · (C(6,0) + C(6,1)) / 2^6
        (1, 5, 2 * 7 / 64),  # two-sided: symmetric
        (3, 3, 1.0),
        (30, 0, 2 / 2**30),
        (30, 2, 2 * (1 + 32 + 496) / 2**32),
    ],
)
def test_exact_mcnemar_p_value(down: int, up: int, p: float) -> None:
    assert exact_binomial_p(down, up) == pytest.approx(p, rel=1e-12)


def test_exact_mcnemar_with_many_pairs_does_not_overflow() -> None:
    assert 0.0 <= exact_binomial_p(5000, 4000) < 1e-20
    assert exact_binomial_p(5000, 5000) == 1.0


def test_paired_change_lists_flips_in_current_order() -> None:
    current = {"a": [1.0], "b": [0.0], "c": [0.0], "d": [1.0], "new": [1.0]}
    baseline = {"a": [1.0], "b": [1.0], "c": [1.0], "d": [0.0], "gone": [1.0]}
    change = paired_change(current, baseline)
    assert change.paired == 4
    assert change.down == ["b", "c"] and change.up == ["d"]
    assert change.p_value == 1.0  # 2 down, 1 up: 2 · (1 + 3) / 8 > 1
    assert change.baseline_mean == 0.75 and change.current_mean == 0.5


def test_paired_change_with_repeats_compares_item_means() -> None:
    current = {"a": [1.0, 0.0, 0.0], "b": [1.0, 1.0, 1.0]}
    baseline = {"a": [1.0, 1.0, 0.0], "b": [1.0, 1.0, 1.0]}
    change = paired_change(current, baseline)
    assert change.down == ["a"] and change.up == [] and change.paired == 2
