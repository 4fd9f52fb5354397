"""`batchrun sweep SWEEP.toml`: a grid of runs for evaluation in CI, with a verdict.

A sweep file names datasets, models and a `[grid]` of values; every combination is one
cell, run as an ordinary resumable job under `output_dir/<cell>/` (running the sweep again
resumes unfinished cells and re-sends nothing finished). Cells run one after another in one
event loop and share one rate limiter, so `rpm` holds across the whole sweep.

    output_dir = "out/sweep"              # relative to the sweep file, like every path here
    datasets = ["../samples/reviews.jsonl"]
    models = ["qwen/qwen3.5-397b-a17b", "meta/llama-3.1-8b-instruct"]
    config = "local.toml"                 # optional base run config
    score_field = "label"                 # optional: score parsed[label], not the answer
    max_failure_rate = 0.0                # a cell fails above this share of failed/invalid rows
    [run]                                 # run settings for every cell (any `run` key)
    rpm = 600
    [grid]                                # each key: a list of values; run keys or body fields
    temperature = [0.0, 0.6]

Mistakes are found before any cell runs (exit 2): reading the file and building every
cell's settings is sweep_file.py's.

Writes `summary.parquet` and `summary.md` in output_dir (per cell: rows ok/failed/invalid,
tokens, cost, latency p50/p95, and the exact-match accuracy against an `expected` column),
and with `--junit-xml` one test case per cell, failed where the cell's failure rate is over
`max_failure_rate`. The sweep passes (exit 0) only when every cell passes.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import AuthError, BatchrunError, Interrupted, RunMismatchError
from .factory import new_limiter
from .job import JobResult, run_job_async
from .lifecycle import RowState
from .stats import quantiles
from .sweep_file import Cell, SweepSpec, cells

LATENCY_QUANTILES = {"p50": 0.5, "p95": 0.95}


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
    accuracy: float | None = None
    scored: int = 0
    failure_rate: float = 0.0
    wall_s: float = 0.0
    passed: bool = False
    problem: str | None = None  # why the cell did not run or did not pass


# ---------------------------------------------------------------- running


async def run_sweep(
    spec: SweepSpec, *, say: Any = print
) -> tuple[list[CellReport], BatchrunError | None]:
    """Run every cell in turn under one shared rate limiter; report each. A bad key or a
    Ctrl-C ends the sweep early: (the cells that finished, why it ended)."""
    grid = cells(spec)
    limiter = new_limiter(grid[0].cfg) if grid else None
    reports: list[CellReport] = []
    for n, cell in enumerate(grid, 1):
        try:
            report = await _run_cell(cell, spec, limiter)
        except (AuthError, Interrupted) as exc:
            return reports, exc
        reports.append(report)
        say(f"cell {n}/{len(grid)} {cell.name}: {_one_line(report)}")
    return reports, None


async def _run_cell(cell: Cell, spec: SweepSpec, limiter: Any) -> CellReport:
    params = json.dumps(cell.values, sort_keys=True)
    report = CellReport(cell.name, Path(cell.dataset).name, cell.model, params)
    started = time.monotonic()
    try:
        result = await run_job_async(cell.cfg, limiter=limiter)
    except AuthError:
        raise  # a bad key fails every cell alike: stop the sweep (exit 3)
    except RunMismatchError as exc:  # the run's hint names flags a sweep does not have
        report.problem = f"{exc.problem} {_mismatch_hint(exc, cell, spec)}"
        report.wall_s = time.monotonic() - started
        return report
    except BatchrunError as exc:
        report.problem = str(exc)
        report.wall_s = time.monotonic() - started
        return report
    if isinstance(result.stopped, AuthError | Interrupted):
        raise result.stopped  # the same for every cell, or the user asked to stop
    _fill(report, result, spec)
    return report


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


def _fill(report: CellReport, result: JobResult, spec: SweepSpec) -> None:
    counts = result.counts
    report.ok, report.failed, report.invalid = (
        counts.get(s, 0) for s in (RowState.DONE, RowState.FAILED, RowState.INVALID)
    )
    report.rows = sum(counts.values())
    report.prompt_tokens = result.totals.prompt_tokens
    report.completion_tokens = result.totals.completion_tokens
    report.cost = result.cost
    report.wall_s = result.wall_s
    frame = _read(result.output)
    latency = quantiles(frame.loc[frame["status"] == "ok", "latency_s"].dropna(), LATENCY_QUANTILES)
    if latency is not None:
        report.latency_p50, report.latency_p95 = latency["p50"], latency["p95"]
    report.accuracy, report.scored = _accuracy(frame, spec.score_field)
    bad = report.failed + report.invalid
    report.failure_rate = bad / report.rows if report.rows else 0.0
    unfinished = report.rows - report.ok - bad
    if unfinished:
        report.problem = f"{unfinished} rows not finished" + (
            f": {result.stopped}" if result.stopped else ""
        )
    elif report.failure_rate > spec.max_failure_rate:
        report.problem = (
            f"gate max_failure_rate: {report.failure_rate:.1%} of rows failed or invalid, over "
            f"{spec.max_failure_rate:.1%}; causes: {_causes(result)}"
        )
    report.passed = report.problem is None


def _causes(result: JobResult) -> str:
    """The failures of a cell by cause, most common first (what a CI log needs to act on)."""
    causes = [f"failed x{c.rows} {c.label}" for c in result.failure_causes]
    causes += [f"invalid x{c.rows} {c.cause} (e.g. {c.example})" for c in result.invalid_causes]
    return "; ".join(causes) or "unknown"


def _read(output: str) -> pd.DataFrame:
    import pyarrow.parquet as pq

    names = set(pq.ParquetFile(output).schema_arrow.names)
    wanted: list[str] = [
        c for c in ("status", "content", "latency_s", "expected", "parsed") if c in names
    ]
    return pd.read_parquet(output, columns=wanted)


def _accuracy(frame: pd.DataFrame, score_field: str | None) -> tuple[float | None, int]:
    """Exact match (trimmed, case-folded) of the answer, or of parsed[score_field]."""
    if "expected" not in frame:
        return None, 0
    scored = frame[frame["expected"].notna()]
    if not len(scored):
        return None, 0
    if score_field:
        answers = scored.get("parsed", pd.Series(index=scored.index, dtype=object)).map(
            lambda text: _field(text, score_field)
        )
    else:
        answers = scored["content"]
    ok = scored["status"] == "ok"
    hits = [
        bool(o) and _norm(a) == _norm(e)
        for o, a, e in zip(ok, answers, scored["expected"], strict=True)
    ]
    return sum(hits) / len(hits), len(hits)


def _field(parsed: Any, name: str) -> Any:
    if not isinstance(parsed, str):
        return None
    value = json.loads(parsed)
    return value.get(name) if isinstance(value, dict) else None


def _norm(value: Any) -> str:
    if value is None:
        return "\0none"
    return (value if isinstance(value, str) else json.dumps(value)).strip().casefold()


def _one_line(r: CellReport) -> str:
    if r.rows == 0 and r.problem:
        return f"did not run: {r.problem}"
    text = f"{r.ok} ok, {r.failed} failed, {r.invalid} invalid"
    if r.accuracy is not None:
        text += f", accuracy {r.accuracy:.1%} of {r.scored}"
    return text + (" - PASS" if r.passed else f" - FAIL ({r.problem})")


# ---------------------------------------------------------------- summaries


def write_summaries(reports: list[CellReport], output_dir: Path, junit: Path | None) -> list[Path]:
    output_dir.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame([asdict(r) for r in reports])
    written = [output_dir / "summary.parquet", output_dir / "summary.md"]
    frame.to_parquet(written[0], index=False)
    written[1].write_text(summary_markdown(reports))
    if junit is not None:
        junit.parent.mkdir(parents=True, exist_ok=True)
        junit_xml(reports).write(junit, encoding="utf-8", xml_declaration=True)
        written.append(junit)
    return written


def summary_markdown(reports: list[CellReport]) -> str:
    def num(value: float | None, fmt: str) -> str:
        return "" if value is None else format(value, fmt)

    lines = [
        "# batchrun sweep",
        "",
        f"{sum(r.passed for r in reports)} of {len(reports)} cells passed.",
        "",
        "| cell | model | params | rows | ok | failed | invalid | tokens | cost "
        "| p50 s | p95 s | accuracy | verdict |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in reports:
        verdict = "pass" if r.passed else f"FAIL: {r.problem}"
        lines.append(
            f"| {r.cell} | {r.model} | `{r.params}` | {r.rows} | {r.ok} | {r.failed} | {r.invalid} "
            f"| {r.prompt_tokens + r.completion_tokens} | {num(r.cost, '.4f')} "
            f"| {num(r.latency_p50, '.3f')} | {num(r.latency_p95, '.3f')} "
            f"| {num(r.accuracy, '.1%')} | {verdict.replace('|', '/')} |"
        )
    return "\n".join(lines) + "\n"


def junit_xml(reports: list[CellReport]) -> ET.ElementTree:
    failures = sum(not r.passed for r in reports)
    suites = ET.Element("testsuites", tests=str(len(reports)), failures=str(failures))
    suite = ET.SubElement(
        suites, "testsuite", name="batchrun sweep", tests=str(len(reports)), failures=str(failures)
    )
    for r in reports:
        case = ET.SubElement(
            suite, "testcase", classname="batchrun.sweep", name=r.cell, time=f"{r.wall_s:.3f}"
        )
        if not r.passed:
            failure = ET.SubElement(
                case, "failure", message=r.problem or "failed", type=_gate(r.problem)
            )
            failure.text = f"{_one_line(r)}\n{r.problem or ''}"
        out = ET.SubElement(case, "system-out")
        out.text = _one_line(r)
    return ET.ElementTree(suites)


def _gate(problem: str | None) -> str:
    """Which check failed a cell, for JUnit's failure type."""
    if problem is None:
        return "failed"
    if problem.startswith("gate "):
        return problem.split(":", 1)[0].removeprefix("gate ")
    return "unfinished" if "not finished" in problem else "error"


def sweep(spec: SweepSpec, junit: Path | None) -> tuple[list[CellReport], list[Path]]:
    reports, stopped = asyncio.run(run_sweep(spec, say=_say))
    written = write_summaries(reports, spec.output_dir, junit)
    if stopped is not None:
        raise stopped  # summaries of the cells that finished are written; exit 3 or 130
    return reports, written


def _say(text: str) -> None:
    import sys

    sys.stderr.write(text + "\n")
    sys.stderr.flush()
