"""`batchrun sweep SWEEP.toml`: a grid of runs for evaluation in CI, with a verdict.

A sweep file names datasets, models and a `[grid]` of values; every combination is one
cell, run as an ordinary resumable job under `output_dir/<cell>/` (running the sweep again
resumes unfinished cells and re-sends nothing finished). Cells run one after another in one
event loop and share one rate limiter, so `rpm` holds across the whole sweep.

    output_dir = "out/sweep"              # relative to the sweep file, like every path here
    datasets = ["../samples/reviews.jsonl"]
    models = ["qwen/qwen3.5-397b-a17b", "meta/llama-3.1-8b-instruct"]
    config = "local.toml"                 # optional base run config
    max_failure_rate = 0.0                # a cell fails above this share of failed/invalid rows
    alpha = 0.05                          # --baseline: the paired test's significance level
    [run]                                 # run settings for every cell (any `run` key)
    rpm = 600
    [grid]                                # each key: a list of values; run keys or body fields
    temperature = [0.0, 0.6]
    [[graders]]                           # any number; grader_spec.py and judge_config.py
    name = "label"
    kind = "exact"
    field = "label"
    min_score = 0.8

Mistakes are found before any cell runs (exit 2): reading the file and building every
cell's settings is sweep_file.py's, the graders grader_spec.py's.

After a cell's job, its output is graded by every grader (grading.py; a judge runs as a job
of its own, judge.py), the grades kept in `<cell>/grades.parquet`, each grader scored with
its standard error, compared with the baseline's grades (baseline.py) and gated (gates.py).
The summaries (summary.parquet, scores.parquet, summary.md, JUnit, GitHub's step summary)
are sweep_summary.py's. The sweep passes (exit 0) only when every cell passes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .baseline import Baseline, compare, load_baseline
from .errors import AuthError, BatchrunError, Interrupted, RunMismatchError
from .factory import new_limiter
from .gates import GateFailure, failure_rate_gate, grader_gates
from .grade_records import GraderScore
from .grading import (
    GRADES_FILE,
    grade_cell,
    grader_scores,
    read_answers,
    read_questions,
    write_grades,
)
from .job import JobResult, run_job_async
from .judge import JudgeUsage
from .lifecycle import RowState
from .limits import RateLimiter
from .stats import quantiles
from .sweep_file import Cell, SweepSpec, cells
from .sweep_summary import status_line, write_summaries

LATENCY_QUANTILES = {"p50": 0.5, "p95": 0.95}
log = logging.getLogger(__name__)


@dataclass
class CellReport:
    cell: str
    dataset: str
    model: str
    params: str
    rows: int = 0
    ok: int = 0
    failed: int = 0
    invalid: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = None
    latency_p50: float | None = None
    latency_p95: float | None = None
    accuracy: float | None = None  # the first grader's score (what older readers know)
    scored: int = 0  # ... and the rows it counted
    failure_rate: float = 0.0
    wall_s: float = 0.0
    passed: bool = False
    problem: str | None = None  # why the cell did not run or did not pass
    # The judges' requests, apart from the answers'.
    judge_requests: int = 0
    judge_prompt_tokens: int = 0
    judge_completion_tokens: int = 0
    judge_cost: float | None = None
    scores: list[GraderScore] = field(default_factory=list)
    failures: list[GateFailure] = field(default_factory=list)  # the gates that failed it


@dataclass
class _Shared:
    """What every cell of a sweep uses: the spec, rate limiters, the baseline."""

    spec: SweepSpec
    limiter: RateLimiter | None
    judge_limiters: dict[str, RateLimiter | None]
    baseline: Baseline | None


# ---------------------------------------------------------------- running


async def run_sweep(
    spec: SweepSpec, *, baseline: Baseline | None = None, say: Any = print
) -> tuple[list[CellReport], BatchrunError | None]:
    """Run every cell in turn under one shared rate limiter; report each. A bad key or a
    Ctrl-C ends the sweep early: (the cells that finished, why it ended)."""
    grid = cells(spec)
    limiter = new_limiter(grid[0].cfg) if grid else None
    shared = _Shared(spec, limiter, _judge_limiters(spec, grid, limiter), baseline)
    reports: list[CellReport] = []
    for n, cell in enumerate(grid, 1):
        try:
            report = await _run_cell(cell, shared)
        except (AuthError, Interrupted) as exc:
            return reports, exc
        reports.append(report)
        say(f"cell {n}/{len(grid)} {cell.name}: {status_line(report)}")
    return reports, None


def _judge_limiters(
    spec: SweepSpec, grid: list[Cell], shared: RateLimiter | None
) -> dict[str, RateLimiter | None]:
    """A judge on the answers' endpoint (same URL and key) shares the sweep's rate limit;
    one elsewhere has its own, from its own rpm/tpm, for the whole sweep."""
    limiters: dict[str, RateLimiter | None] = {}
    for grader in spec.graders:
        if grader.judge is None:
            continue
        judge = grader.judge.cfg
        same = bool(grid) and (judge.base_url.rstrip("/"), judge.api_key_env) == (
            grid[0].cfg.base_url.rstrip("/"),
            grid[0].cfg.api_key_env,
        )
        limiters[grader.name] = shared if same else new_limiter(judge)
    return limiters


async def _run_cell(cell: Cell, shared: _Shared) -> CellReport:
    params = json.dumps(cell.values, sort_keys=True)
    report = CellReport(cell.name, Path(cell.dataset).name, cell.model, params)
    result = await _run_job(cell, shared, report)
    if result is None:
        return report  # did not run: report.problem says why
    _fill(report, result)
    try:
        _latency(report, result.output)
        await _grade(report, cell, result, shared)
    except (AuthError, Interrupted):
        raise  # a judge's key, or Ctrl-C while judges ran: as for a cell
    except Exception as exc:  # the answers stand; the cell cannot pass ungraded, nor crash CI
        log.debug("grading %s failed", cell.name, exc_info=True)
        report.problem = f"grading failed: {type(exc).__name__}: {exc}"
    _verdict(report, result, shared.spec)
    return report


async def _run_job(cell: Cell, shared: _Shared, report: CellReport) -> JobResult | None:
    """The cell's job; None (the reason in report.problem) when it could not run."""
    started = time.monotonic()
    try:
        result = await run_job_async(cell.cfg, limiter=shared.limiter)
    except AuthError:
        raise  # a bad key fails every cell alike: stop the sweep (exit 3)
    except RunMismatchError as exc:  # the run's hint names flags a sweep does not have
        report.problem = f"{exc.problem} {_mismatch_hint(exc, cell, shared.spec)}"
        report.wall_s = time.monotonic() - started
        return None
    except BatchrunError as exc:
        report.problem = str(exc)
        report.wall_s = time.monotonic() - started
        return None
    if isinstance(result.stopped, AuthError | Interrupted):
        raise result.stopped  # the same for every cell, or the user asked to stop
    return result


def _mismatch_hint(exc: RunMismatchError, cell: Cell, spec: SweepSpec) -> str:
    """What to do about a cell whose checkpoint is another job's, from the sweep: its
    --fresh restarts every cell, and a [run] reuse (one file for every cell) keeps answers."""
    earlier = os.path.relpath(cell.cfg.output, spec.path.parent)
    return (
        "Run the sweep with its original inputs and settings to resume this cell, or run "
        f"batchrun sweep {spec.path} --fresh to start over: --fresh restarts every cell of "
        f"the sweep, not only this one (this cell's {exc.done} finished rows are discarded). "
        f'To keep the answers whose request did not change, add reuse = "{earlier}" under '
        f"[run] in {spec.path} before running it with --fresh: rows asking what this cell "
        "asked before are then answered from its earlier results instead of being bought "
        "again (reuse names one file, for every cell)."
    )


def _fill(report: CellReport, result: JobResult) -> None:
    counts = result.counts
    report.ok, report.failed, report.invalid = (
        counts.get(s, 0) for s in (RowState.DONE, RowState.FAILED, RowState.INVALID)
    )
    report.rows = sum(counts.values())
    report.prompt_tokens = result.totals.prompt_tokens
    report.completion_tokens = result.totals.completion_tokens
    report.cost = result.cost
    report.wall_s = result.wall_s
    bad = report.failed + report.invalid
    report.failure_rate = bad / report.rows if report.rows else 0.0


def _latency(report: CellReport, output: str) -> None:
    """p50/p95 latency of the cell's ok rows."""
    import pyarrow.parquet as pq

    table = pq.read_table(output, columns=["status", "latency_s"]).to_pydict()
    ok = [
        lat
        for status, lat in zip(table["status"], table["latency_s"], strict=True)
        if status == "ok" and lat is not None
    ]
    latency = quantiles(ok, LATENCY_QUANTILES)
    if latency is not None:
        report.latency_p50, report.latency_p95 = latency["p50"], latency["p95"]


async def _grade(report: CellReport, cell: Cell, result: JobResult, shared: _Shared) -> None:
    """Grade the cell's output, keep the grades, score and compare each grader."""
    spec = shared.spec
    answers = read_answers(result.output, spec.graders)
    folder = Path(cell.cfg.output).parent
    usage = JudgeUsage()
    grades = await grade_cell(
        spec.graders,
        answers,
        folder,
        lambda: read_questions(cell.cfg),
        shared.judge_limiters,
        usage,
    )
    write_grades(folder / GRADES_FILE, grades)
    report.scores = grader_scores(cell.name, spec.graders, grades, spec.pass_at)
    if shared.baseline is not None:
        for score in report.scores:
            own = [g for g in grades if g.grader == score.grader]
            score.comparison = compare(shared.baseline, cell.name, score, own, spec.alpha)
    if report.scores:  # `accuracy` is what summary.parquet's readers knew before graders
        report.accuracy, report.scored = report.scores[0].score, report.scores[0].rows
    report.judge_requests = usage.requests
    report.judge_prompt_tokens, report.judge_completion_tokens = (
        usage.prompt_tokens,
        usage.completion_tokens,
    )
    report.judge_cost = usage.cost


def _verdict(report: CellReport, result: JobResult, spec: SweepSpec) -> None:
    """Every gate of the cell; it passes when its rows all finished and no gate failed."""
    bad = report.failed + report.invalid
    gate = failure_rate_gate(report.failure_rate, spec.max_failure_rate, _causes(result))
    report.failures = [gate] if gate is not None else []
    for score in report.scores:
        report.failures += grader_gates(score, spec.alpha)
    unfinished = report.rows - report.ok - bad
    if unfinished:
        report.problem = f"{unfinished} rows not finished" + (
            f": {result.stopped}" if result.stopped else ""
        )
    elif report.failures and report.problem is None:
        report.problem = "; ".join(f.message for f in report.failures)
    report.passed = report.problem is None


def _causes(result: JobResult) -> str:
    """The failures of a cell by cause, most common first (what a CI log needs to act on)."""
    causes = [f"failed x{c.rows} {c.label}" for c in result.failure_causes]
    causes += [f"invalid x{c.rows} {c.cause} (e.g. {c.example})" for c in result.invalid_causes]
    return "; ".join(causes) or "unknown"


def sweep(
    spec: SweepSpec, junit: str | Path | None, baseline_dir: str | Path | None = None
) -> tuple[list[CellReport], list[Path]]:
    """Run the sweep and write its summaries. The baseline is read first, before any cell
    runs: a folder that is no sweep's output is exit 2 with nothing sent."""
    baseline = load_baseline(Path(baseline_dir), spec.graders) if baseline_dir else None
    reports, stopped = asyncio.run(run_sweep(spec, baseline=baseline, say=_say))
    written = write_summaries(reports, spec, baseline, Path(junit) if junit else None)
    if stopped is not None:
        raise stopped  # summaries of the cells that finished are written; exit 3 or 130
    return reports, written


def _say(text: str) -> None:
    import sys

    sys.stderr.write(text + "\n")
    sys.stderr.flush()
