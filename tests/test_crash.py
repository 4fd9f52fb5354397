"""The short crash test: a few SIGKILL/resume cycles (`make crash-test` runs 100)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .crash_harness import run_harness

pytestmark = pytest.mark.slow


def test_kill_9_at_random_moments_and_crash_points_loses_nothing(tmp_path: Path) -> None:
    report = run_harness(tmp_path, cycles=8, rows=150, seed=20261125)
    print(report.text())
    assert report.cycles == 8
    assert report.rows_verified == 150 * report.jobs
    assert report.ok, report.text()
