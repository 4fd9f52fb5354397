"""Named quantiles of a set of numbers: the latency figures of `batchrun report` and
`batchrun sweep` come from here, so the two agree.

numpy's default method (linear interpolation between the closest ranks) is also pandas'
default for `Series.quantile`, which the sweep used before.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt


def quantiles(values: npt.ArrayLike, at: Mapping[str, float]) -> dict[str, float] | None:
    """{name: the `at[name]` quantile of `values`}, in the order of `at`; None when empty."""
    numbers = np.asarray(values, dtype=np.float64)
    if numbers.size == 0:
        return None
    found = np.quantile(numbers, list(at.values()))
    return {name: float(value) for name, value in zip(at, found, strict=True)}
