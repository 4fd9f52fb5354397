"""What a run says when it ends: the summary, the dry run's report, and the one command that
comes next (resume, retry the failed rows, raise the cost cap), written the way this
batchrun was started, so it can be pasted as it is.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .config import RunConfig, failure_budget
from .endpoint_figures import lines as endpoint_lines
from .lifecycle import RowState

if TYPE_CHECKING:
    from .checkpoint import FailureCause
    from .intake import DryRunReport
    from .job import JobResult

# Flags that must not be repeated in a command that comes next.
_ONE_OFF = ("--fresh", "--retry-failed", "--dry-run")


def program(argv0: str | None = None, executable: str | None = None) -> list[str]:
    """How this batchrun was started: `batchrun` when that is what the PATH finds, the path
    it was started by otherwise (`.venv/bin/batchrun`), or `python -m batchrun`."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    executable = sys.executable if executable is None else executable
    if argv0.endswith("__main__.py") or argv0 == "-m":
        python = os.path.basename(executable)
        found = shutil.which(python)
        same = found is not None and os.path.realpath(found) == os.path.realpath(executable)
        return [python if same else executable, "-m", "batchrun"]
    name = os.path.basename(argv0)
    found = shutil.which(name)
    if found is not None and os.path.realpath(found) == os.path.realpath(argv0):
        return [name]
    return [argv0]


def next_command(
    argv: Sequence[str] | None = None,
    *,
    add: Sequence[str] = (),
    prog: list[str] | None = None,
    undo: Sequence[str] = (),
) -> str:
    """The command as it was run, less one-off flags (--fresh, --retry-failed, --dry-run),
    plus `undo` (what a config file's one-offs need, see config_one_offs), with `add`
    appended; `add` replaces an option already given (`--max-cost 5`)."""
    args = list(sys.argv[1:] if argv is None else argv)
    args = [a for a in args if a not in _ONE_OFF]
    if add and add[0].startswith("--") and len(add) == 2:
        args = _without_option(args, add[0])
    return shlex.join([*(prog if prog is not None else program()), *args, *undo, *add])


def config_one_offs(cfg: RunConfig, argv: Sequence[str] | None = None) -> tuple[str, ...]:
    """The flags that turn off a one-off a config file set (`fresh = true` there would
    start the job over on every resume), for the commands that come next."""
    given = set(sys.argv[1:] if argv is None else argv)
    undo = []
    if cfg.fresh and "--fresh" not in given:
        undo.append("--no-fresh")
    if cfg.retry_failed and "--retry-failed" not in given:
        undo.append("--no-retry-failed")
    return tuple(undo)


def _without_option(args: list[str], name: str) -> list[str]:
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg == name:
            skip = True
            continue
        if not arg.startswith(f"{name}="):
            kept.append(arg)
    return kept


def format_summary(
    result: JobResult,
    argv: Sequence[str] | None = None,
    prog: list[str] | None = None,
    undo: Sequence[str] = (),
) -> str:
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
    if stats.rejected:
        lines.append(
            f"  {stats.rejected} answers did not match the schema and were asked again "
            "(their tokens are counted)"
        )
    if stats.reused:
        lines.append(f"  {stats.reused} rows answered from --reuse (not bought again)")
    if stats.not_cached:
        lines.append(f"  {stats.not_cached} rows had no stored answer (--offline sent nothing)")
    if stats.no_usage:
        lines.append(f"  {stats.no_usage} answers came without token usage (usage left empty)")
    if result.parse_errors:
        lines.append(f"  {result.parse_errors} answers did not parse as JSON (see parse_error)")
    lines += past_limit_lines(result.rows_past_limit, total, result.repeats)
    if result.endpoints:
        lines += ["  by endpoint:", *endpoint_lines(result.endpoints)]
    lines += [f"  failed x{c.rows}: {c.label}" for c in result.failure_causes]
    lines += invalid_lines(result.invalid_causes)
    lines.append("  output: " + ", ".join(str(p) for p in result.outputs))
    lines.append(f"  checkpoint: {result.checkpoint}")
    if result.stopped is not None:
        lines.append(f"stopped: {result.stopped}")
    lines += _next_steps(result, unfinished, failed, argv, prog, undo)
    return "\n".join(lines)


def invalid_lines(causes: Sequence[FailureCause]) -> list[str]:
    return [f"  invalid x{c.rows}: {c.cause} (e.g. {c.example})" for c in causes]


def _next_steps(
    result: JobResult,
    unfinished: int,
    failed: int,
    argv: Sequence[str] | None,
    prog: list[str] | None,
    undo: Sequence[str],
) -> list[str]:
    lines = []
    if unfinished:
        waiting = result.counts.get(RowState.POLLING, 0) + result.counts.get(RowState.FETCHED, 0)
        if waiting:
            lines.append(
                f"  {waiting} rows await their result at the server: resume within about a "
                "minute, or their ids expire and they are bought again"
            )
        if result.cap_to_finish is not None:
            cap = result.cap_to_finish
            lines.append(
                f"raise the cap to finish ({unfinished} rows left at the cost of a row so far, "
                f"with room for the requests in flight): "
                + next_command(argv, add=("--max-cost", f"{cap:g}"), prog=prog, undo=undo)
            )
        else:
            lines.append(f"resume with: {next_command(argv, prog=prog, undo=undo)}")
    elif failed:
        keep = [flag for flag in undo if flag != "--no-retry-failed"]
        command = next_command(argv, add=("--retry-failed",), prog=prog, undo=keep)
        retried = "--retry-failed" in (sys.argv[1:] if argv is None else argv)
        if retried and result.stats.failed == failed:  # every row retried failed again
            lines.append("the failed rows failed again: fix what the causes above say first")
        lines.append(f"retry the failed rows with: {command}")
    return lines


def format_dry_run(report: DryRunReport) -> str:
    valid = report.rows - report.invalid
    rows = f"{report.rows} rows"
    if report.repeats > 1:  # every count is of requests: say what they are made of
        rows += f" ({report.rows // report.repeats} input rows x {report.repeats} repeats)"
    lines = [
        f"dry run: {rows}, {valid} would be sent, {report.invalid} invalid",
        f"  estimated prompt tokens: ~{report.prompt_tokens_est:,}",
        f"  completion tokens at most: {report.completion_tokens_max:,} (max_tokens x rows)",
        "  models: " + ", ".join(f"{m} ({n})" for m, n in report.models.items()),
    ]
    if report.cost_range is not None:
        low, high = report.cost_range
        lines.append(f"  cost: ${low:.4f} (prompts only) to ${high:.4f} (every max_tokens used)")
    lines += invalid_lines(report.invalid_causes)
    return "\n".join(lines)


def dry_run_fails(report: DryRunReport, max_failures: str | None) -> str | None:
    """Why a rehearsal should fail where the real run would: every row invalid, or more
    invalid rows than --max-failures allows. None when it passes."""
    if report.rows and report.invalid == report.rows:
        return "every row is invalid: nothing would be sent"
    rows, percent = failure_budget(max_failures)
    over = (rows is not None and report.invalid >= rows) or (
        percent is not None and report.rows and 100.0 * report.invalid / report.rows > percent
    )
    if over:
        return (
            f"{report.invalid} of {report.rows} rows are invalid: "
            f"past --max-failures {max_failures}"
        )
    return None


def past_limit_lines(past: int, rows: int, repeats: int = 1) -> list[str]:
    """What a lowered --limit holds back (the summary and status say it alike). `rows` are
    checkpoint rows; --limit counts input rows, each `repeats` of them."""
    if not past:
        return []
    return [
        f"  {past} more rows kept past --limit {rows // repeats} (with their answers; the "
        "tokens above count them): raise or drop --limit to include them"
    ]
