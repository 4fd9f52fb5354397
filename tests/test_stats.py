"""batchrun/stats.py: the quantiles behind report's and sweep's latency figures."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest

from batchrun.stats import quantiles

# The report's latency and the sweep's: every fraction either of them asks for.
AT = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}


@pytest.mark.parametrize("size", [1, 2, 3, 10, 101, 1000])
def test_quantiles_equal_pandas_default(size: int) -> None:
    """The sweep took its p50/p95 from pandas' Series.quantile: same figures, exactly."""
    values = np.random.default_rng(size).lognormal(mean=0.0, sigma=1.0, size=size)
    series = pd.Series(values)
    figures = quantiles(series, AT)
    assert figures == {name: float(series.quantile(q)) for name, q in AT.items()}


def test_quantiles_interpolate_between_ranks() -> None:
    assert quantiles([1.0, 2.0, 3.0, 4.0], {"p50": 0.5, "p90": 0.9}) == {
        "p50": 2.5,
        "p90": pytest.approx(3.7),
    }


def test_quantiles_keep_the_order_of_their_names() -> None:
    figures = quantiles([3, 1, 2], {"p95": 0.95, "p50": 0.5})
    assert figures is not None
    assert list(figures) == ["p95", "p50"]


@pytest.mark.parametrize("empty", [[], np.empty(0), pd.Series([], dtype=float)])
def test_quantiles_of_nothing_are_none(empty: npt.ArrayLike) -> None:
    assert quantiles(empty, AT) is None
