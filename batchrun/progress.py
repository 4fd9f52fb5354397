"""The operator's view: the tqdm bar while a job runs, and the summary when it ends.

The engine never imports tqdm: it only bumps counters in RunStats; `ProgressBar.watch`
samples them twice a second, so the bar costs nothing per row.
"""

from __future__ import annotations

import asyncio
import shlex
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from tqdm import tqdm

from .lifecycle import RowState

if TYPE_CHECKING:
    from .intake import DryRunReport
    from .job import JobResult
    from .monitor import RunStats

REFRESH_S = 0.5


class ProgressBar:
    """A tqdm bar on stderr: rows finished of rows to do, with ok/failed/202s/rates."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr
        self._bar: tqdm[Any] | None = None

    async def watch(self, stats: RunStats) -> None:
        bar: tqdm[Any] = tqdm(
            total=stats.todo, unit="row", file=self._stream, dynamic_ncols=True, smoothing=0.1
        )
        self._bar = bar
        shown = 0
        try:
            while True:
                shown = self._refresh(bar, stats, shown)
                await asyncio.sleep(REFRESH_S)
        finally:
            self._refresh(bar, stats, shown)
            bar.close()

    def _refresh(self, bar: tqdm[Any], stats: RunStats, shown: int) -> int:
        done = stats.finished
        if done > shown:
            bar.update(done - shown)
        elapsed = max(1e-9, time.monotonic() - stats.started)
        tokens = stats.prompt_tokens + stats.completion_tokens
        bar.set_postfix_str(
            f"ok={stats.ok} failed={stats.failed} 202s={stats.pending_ids} "
            f"req/s={stats.submissions / elapsed:.1f} tok/s={tokens / elapsed:.0f}",
            refresh=False,
        )
        return done


def resume_command(argv: list[str] | None = None) -> str:
    """The command that resumes this job: the same one, without --fresh."""
    args = list(sys.argv[1:] if argv is None else argv)
    return shlex.join(["batchrun", *(a for a in args if a != "--fresh")])


def format_summary(result: JobResult, argv: list[str] | None = None) -> str:
    counts = result.counts
    ok, failed = counts.get(RowState.DONE, 0), counts.get(RowState.FAILED, 0)
    invalid = counts.get(RowState.INVALID, 0)
    total = sum(counts.values())
    unfinished = total - ok - failed - invalid
    stats, totals = result.stats, result.totals
    lines = [
        f"batchrun: {total} rows: {ok} ok, {failed} failed, {invalid} invalid"
        + (f", {unfinished} not finished" if unfinished else ""),
        f"  this run: {stats.finished} rows finished, {stats.submissions} requests sent, "
        f"{stats.accepted} answered 202, {stats.retries} retries, "
        f"{stats.rate_limited} rate-limited, "
        f"{stats.rebuys} re-sent after their id expired",
        f"  tokens (all runs): {totals.prompt_tokens:,} prompt + "
        f"{totals.completion_tokens:,} completion = {totals.total_tokens:,}"
        + (f", cost ${result.cost:.4f}" if result.cost is not None else ""),
        f"  wall time {result.wall_s:.1f}s"
        + (f", {stats.finished / result.wall_s:.1f} rows/s" if result.wall_s > 0 else ""),
    ]
    if stats.reused:
        lines.append(f"  {stats.reused} rows answered from --reuse (not bought again)")
    if stats.not_cached:
        lines.append(f"  {stats.not_cached} rows had no stored answer (--offline sent nothing)")
    if stats.no_usage:
        lines.append(f"  {stats.no_usage} answers came without token usage (usage left empty)")
    if result.parse_errors:
        lines.append(f"  {result.parse_errors} answers did not parse as JSON (see parse_error)")
    for cause in result.failure_causes:
        lines.append(f"  failed x{cause.rows}: {cause.label}")
    lines.append("  output: " + ", ".join(str(p) for p in result.outputs))
    lines.append(f"  checkpoint: {result.checkpoint}")
    if result.stopped is not None:
        lines.append(f"stopped: {result.stopped}")
    if unfinished:
        waiting = counts.get(RowState.POLLING, 0) + counts.get(RowState.FETCHED, 0)
        if waiting:
            lines.append(
                f"  {waiting} rows await their result at the server: resume within about a "
                "minute, or their ids expire and they are bought again"
            )
        lines.append(f"resume with: {resume_command(argv)}")
    elif failed:
        lines.append(f"retry the failed rows with: {resume_command(argv)} --retry-failed")
    return "\n".join(lines)


def format_dry_run(report: DryRunReport) -> str:
    valid = report.rows - report.invalid
    lines = [
        f"dry run: {report.rows} rows, {valid} would be sent, {report.invalid} invalid",
        f"  estimated prompt tokens: ~{report.prompt_tokens_est:,}",
        f"  completion tokens at most: {report.completion_tokens_max:,} (max_tokens x rows)",
        "  models: " + ", ".join(f"{m} ({n})" for m, n in report.models.items()),
    ]
    if report.cost_range is not None:
        low, high = report.cost_range
        lines.append(f"  cost: ${low:.4f} (prompts only) to ${high:.4f} (every max_tokens used)")
    lines += [f"  invalid: {e}" for e in report.invalid_examples]
    if report.invalid > len(report.invalid_examples):
        lines.append(f"  ... and {report.invalid - len(report.invalid_examples)} more invalid rows")
    return "\n".join(lines)
