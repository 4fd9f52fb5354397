"""batchrun/budget.py: what a job's token totals cost."""

from __future__ import annotations

import dataclasses

import pytest

from batchrun.budget import Pricing, cap_to_finish, job_cost
from batchrun.checkpoint import Totals

# The bought_* sums leave out rows answered by --reuse.
TOTALS = Totals(
    rows=10,
    prompt_tokens=3_000_000,
    completion_tokens=500_000,
    total_tokens=3_500_000,
    attempts=12,
    reused=2,
    bought_prompt_tokens=2_000_000,
    bought_completion_tokens=400_000,
)


def test_job_cost_prices_only_the_bought_tokens() -> None:
    cost = job_cost({"prompt": 0.5, "completion": 2.0}, TOTALS)
    assert cost == pytest.approx(2 * 0.5 + 0.4 * 2.0)


def test_job_cost_agrees_with_pricing_cost() -> None:
    table = {"prompt": 0.35, "completion": 1.25}
    expected = Pricing(0.35, 1.25).cost(2_000_000, 400_000)
    assert job_cost(table, TOTALS) == expected


def test_job_cost_with_one_price_counts_the_other_as_free() -> None:
    assert job_cost({"completion": 10.0}, TOTALS) == pytest.approx(4.0)


@pytest.mark.parametrize("table", [None, {}])
def test_job_cost_is_none_without_prices(table: dict[str, float] | None) -> None:
    assert job_cost(table, TOTALS) is None


def test_job_cost_of_nothing_bought_is_zero() -> None:
    totals = dataclasses.replace(TOTALS, bought_prompt_tokens=0, bought_completion_tokens=0)
    assert job_cost({"prompt": 1.0, "completion": 1.0}, totals) == 0.0


def test_the_cap_to_finish_covers_rows_left_and_requests_in_flight() -> None:
    # 10 rows finished for $0.10; 90 left; each request books up to $0.20; 4 in flight.
    cap = cap_to_finish(spent=0.1, cap=0.5, finished=10, unfinished=90, worst=0.2, concurrency=4)
    assert cap == 1.9  # (0.1 + 90 x 0.01) x 1.1 + 4 x 0.2
    # Nothing known yet: every row at its worst case; never at or below the cap it stopped at.
    assert cap_to_finish(spent=0, cap=1, finished=0, unfinished=3, worst=0.2, concurrency=8) == 1.26
    assert (
        cap_to_finish(spent=5, cap=9, finished=100, unfinished=1, worst=0.5, concurrency=4) == 9.5
    )
