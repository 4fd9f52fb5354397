"""Helpers for the sweep grading tests: a sweep file beside its dataset and a fast config,
run in-process against the mock endpoint (the CLI's own path, minus the subprocess)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from batchrun.sweep import CellReport, sweep
from batchrun.sweep_file import load_sweep

from .conftest import FAST_CONFIG, write_jsonl

# Quick to give up on an endpoint that is not there.
FAST = FAST_CONFIG.replace("max_attempts = 6", "max_attempts = 2")


def write_sweep(
    folder: Path,
    body: str,
    rows: list[dict[str, Any]],
    *,
    output_dir: str = "out",
    name: str = "sweep.toml",
    dataset: str = "d.jsonl",
) -> Path:
    """`folder/name`: a sweep over `rows` (written to `folder/dataset`) with the fast config,
    its own keys and tables in `body`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "fast.toml").write_text(FAST)
    write_jsonl(folder / dataset, rows)
    path = folder / name
    path.write_text(
        f'output_dir = "{output_dir}"\ndatasets = ["{dataset}"]\nconfig = "fast.toml"\n' + body
    )
    return path


def run_sweep_here(
    path: Path, base_url: str, *, baseline: Path | None = None, junit: Path | None = None
) -> list[CellReport]:
    """`batchrun sweep PATH --base-url URL [--baseline DIR]`, in this process."""
    spec = load_sweep(path, {"base_url": base_url})
    reports, _ = sweep(spec, junit, baseline)
    return reports


def score(report: CellReport, grader: str) -> Any:
    """The named grader's GraderScore in a cell."""
    return next(s for s in report.scores if s.grader == grader)
