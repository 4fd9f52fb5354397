"""The operator's view while a job runs: a tqdm bar on a terminal, a status line every
`--progress-interval` seconds where stderr is a log (cron, CI). The summary at the end is
summary.py's.

The engine never imports tqdm: it only bumps counters in RunStats; the watchers sample them,
so following a run costs nothing per row.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from tqdm import tqdm

from .budget import Pricing

if TYPE_CHECKING:
    from .monitor import RunStats

# The size to assume when a terminal reports none (some CI terminals and `script` report
# 0 x 0): tqdm draws a bar of width 0 as nothing, and hides a bar below a screen of 0 lines.
FALLBACK_COLUMNS = 80
FALLBACK_LINES = 24

REFRESH_S = 0.5


class ProgressBar:
    """A tqdm bar on stderr: rows finished of rows to do, with ok/failed/202s/rates."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr
        self._bar: tqdm[Any] | None = None

    async def watch(self, stats: RunStats) -> None:
        columns, lines = terminal_size(self._stream)
        bar: tqdm[Any] = tqdm(
            total=stats.todo,
            unit="row",
            file=self._stream,
            dynamic_ncols=columns > 0,
            ncols=None if columns > 0 else FALLBACK_COLUMNS,
            nrows=None if lines > 0 else FALLBACK_LINES,
            smoothing=0.1,
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


def terminal_size(stream: TextIO) -> tuple[int, int]:
    """The terminal's columns and lines as it reports them (0 for what it reports none of,
    or when it is no terminal)."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return 0, 0
    return size.columns, size.lines


class StatusLines:
    """One line every `interval` seconds, for logs: rows done of the total, ok and failed,
    ids awaiting a 202 result, rate, time left, tokens and (with prices) cost this run."""

    def __init__(
        self, interval: float, pricing: Pricing | None = None, stream: TextIO | None = None
    ) -> None:
        self._interval = interval
        self._pricing = pricing
        self._stream = stream or sys.stderr

    async def watch(self, stats: RunStats) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                self._stream.write(status_line(stats, self._pricing) + "\n")
                self._stream.flush()
            except OSError:  # the log went away (a closed terminal): keep the job going
                return


def status_line(stats: RunStats, pricing: Pricing | None, now: float | None = None) -> str:
    elapsed = max(1e-9, (time.monotonic() if now is None else now) - stats.started)
    done, total = stats.finished, stats.todo
    rate = done / elapsed
    left = f"{_duration((total - done) / rate)} left" if rate > 0 and total > done else "—"
    tokens = stats.prompt_tokens + stats.completion_tokens
    cost = ""
    if pricing is not None:
        cost = f", ${pricing.cost(stats.prompt_tokens, stats.completion_tokens):.4f} this run"
    share = f" ({100 * done / total:.1f}%)" if total else ""
    return (
        f"batchrun: {done:,} of {total:,} rows{share}: {stats.ok:,} ok, {stats.failed:,} "
        f"failed, {stats.pending_ids:,} awaiting a 202 result; {rate:.1f} rows/s, {left}; "
        f"{tokens:,} tokens{cost}"
    )


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
