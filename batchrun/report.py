"""`batchrun report`: what a job amounts to, as figures (its text is report_text.py's).

This module owns the report's summary: the figures read back from an output Parquet file
(rows by status, tokens, cost, latency and ttft percentiles, attempts, failures by cause,
parse errors, reused rows) and from the checkpoint beside it when there is one (answer times
for throughput, failure causes as the runner classified them, prices, model); and the per-row
numbers the plots need. The text is `report_text.py`'s, the HTML page with its matplotlib
plots `report_html.py`'s; finding the output and checkpoint is checkpoint/locate.py's.

Outputs can hold millions of rows, so the output is read in record batches, only the columns
needed, and per row only numbers are kept (latencies, token counts, answer times); error
texts are looked at batch by batch and only counts and one example per cause are kept.
"""

from __future__ import annotations

import bisect
import re
import tempfile
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import endpoint_figures
from .budget import job_cost
from .checkpoint import FailureCause, RunRecord, Totals, locate_job, open_reader
from .checkpoint.queries import split_location
from .destination import export
from .errors import ConfigError
from .lifecycle import RowState
from .stats import quantiles
from .validation import validation_figures

if TYPE_CHECKING:
    from typing import TypeAlias

    Column: TypeAlias = pa.Array[Any]
    Numbers: TypeAlias = np.ndarray[Any, np.dtype[np.float64]]

NEEDED_COLUMNS = (
    "status", "latency_s", "ttft_s", "prompt_tokens", "completion_tokens", "total_tokens",
    "attempts", "error", "reused",
)  # fmt: skip
BATCH_ROWS = 65_536
LATENCY_QUANTILES = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}
TTFT_QUANTILES = {"p50": 0.5, "p95": 0.95}
STATUSES = ("ok", "failed", "invalid", "pending")
HTTP_CAUSE = re.compile(r"^(HTTP \d{3})\b")


# ---------------------------------------------------------------- reading the output


@dataclass
class _OutputScan:
    """Per-batch sums of the output's columns, plus the per-row numbers the plots need."""

    statuses: Counter[str] = field(default_factory=Counter)
    # Token sums by column; `bought_*` leaves out reused rows.
    tokens: Counter[str] = field(default_factory=Counter)
    ok_without_usage: int = 0
    latencies: list[Numbers] = field(default_factory=list)  # of ok rows
    ttfts: list[Numbers] = field(default_factory=list)  # of ok rows
    total_tokens: list[Numbers] = field(default_factory=list)  # of rows with usage
    requests_sent: int = 0
    rows_sent: int = 0
    rows_retried: int = 0
    max_attempts: int = 0
    causes: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    parse_errors: int | None = None
    reused: int = 0

    def bought(self) -> Totals:
        """What the output says was paid for (rows answered by --reuse cost nothing)."""
        return Totals(
            bought_prompt_tokens=self.tokens["bought_prompt_tokens"],
            bought_completion_tokens=self.tokens["bought_completion_tokens"],
        )

    def add(self, batch: pa.RecordBatch) -> None:
        status = batch.column("status")
        ok = pc.equal(status, pa.scalar("ok"))
        counted = pc.value_counts(status)
        for value, n in zip(counted.field("values"), counted.field("counts"), strict=True):
            self.statuses[str(value.as_py())] += int(n.as_py())
        self._add_tokens(batch, ok)
        self.latencies.append(_numbers(pc.filter(batch.column("latency_s"), ok)))
        self.ttfts.append(_numbers(pc.filter(batch.column("ttft_s"), ok)))
        self.total_tokens.append(_numbers(batch.column("total_tokens")))
        self._add_attempts(batch.column("attempts"))
        errors = pc.filter(batch.column("error"), pc.equal(status, pa.scalar("failed")))
        rows = ((error_cause(e), e) for e in errors.to_pylist())
        _count_causes(rows, self.causes, self.examples)
        if self.parse_errors is not None:
            column = batch.column("parse_error")
            self.parse_errors += len(column) - column.null_count

    def _add_tokens(self, batch: pa.RecordBatch, ok: Column) -> None:
        reused = batch.column("reused")
        self.reused += _sum(reused)
        bought = pc.invert(reused)
        for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
            self.tokens[name] += _sum(batch.column(name))
            self.tokens[f"bought_{name}"] += _sum(pc.filter(batch.column(name), bought))
        self.ok_without_usage += pc.filter(batch.column("total_tokens"), ok).null_count

    def _add_attempts(self, attempts: Column) -> None:
        self.requests_sent += _sum(attempts)
        self.rows_sent += _sum(pc.greater(attempts, pa.scalar(0)))
        self.rows_retried += _sum(pc.greater(attempts, pa.scalar(1)))
        self.max_attempts = max(self.max_attempts, pc.max(attempts).as_py() or 0)


def _sum(values: Column) -> int:
    """Sum of an int or bool column (true counts 1), nulls skipped."""
    return int(pc.sum(values).as_py() or 0)


def _numbers(values: Column) -> Numbers:
    """The non-null values as float64 (8 bytes a row: what is kept of each row)."""
    return np.asarray(values.drop_null().to_numpy(zero_copy_only=False), dtype=np.float64)


def _joined(chunks: list[Numbers]) -> Numbers:
    return np.concatenate(chunks) if chunks else np.empty(0, dtype=np.float64)


def error_cause(error: str | None) -> str:
    """A failed row's cause from its error text: "HTTP 422", or the text before the first ':'."""
    if not error:
        return "unknown"
    found = HTTP_CAUSE.match(error)
    if found:
        return found.group(1)
    return error.split(":", 1)[0].strip()[:60] or "unknown"


def _count_causes(
    rows: Iterable[tuple[str, str | None]], causes: Counter[str], examples: dict[str, str]
) -> None:
    for cause, error in rows:
        causes[cause] += 1
        examples.setdefault(cause, error or "")


def _scan_output(output: Path) -> _OutputScan:
    try:
        parquet = pq.ParquetFile(output)
    except Exception as exc:  # pyarrow raises many types for a file that is not Parquet
        raise ConfigError(f"{output}: not a readable Parquet file ({exc})") from None
    names = set(parquet.schema_arrow.names)
    missing = [c for c in NEEDED_COLUMNS if c not in names]
    if missing:
        raise ConfigError(f"{output}: not a batchrun output (no {', '.join(missing)} column)")
    columns = list(NEEDED_COLUMNS)
    scan = _OutputScan()
    # `parse_error` alone could be a passthrough input column; --parse-json writes both.
    if {"parsed", "parse_error"} <= names:
        columns.append("parse_error")
        scan.parse_errors = 0
    for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns):
        scan.add(batch)
    return scan


# ---------------------------------------------------------------- reading the checkpoint


@dataclass
class _CheckpointScan:
    """What only the checkpoint knows: when each answer came, causes as classified, prices."""

    path: Path
    settings: dict[str, Any]
    counts: dict[str, int]
    answer_times: array[float] = field(default_factory=lambda: array("d"))
    causes: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    runs: list[RunRecord] = field(default_factory=list)
    invalid: list[FailureCause] = field(default_factory=list)


def _scan_checkpoint(path: Path) -> _CheckpointScan:
    reader = open_reader(path)
    try:
        counts = {str(state): n for state, n in reader.counts().items()}
        scan = _CheckpointScan(path, reader.get_json("settings", {}) or {}, counts)
        scan.runs = reader.runs()
        scan.invalid = reader.invalid_causes()
        for page in reader.timeline():
            failures = []
            rows = zip(
                page.finished_at, page.state, page.cause, page.reused, page.error, strict=True
            )
            for finished_at, state, cause, reused, error in rows:
                # Reused rows were answered all at once, from another job: not throughput.
                if state is RowState.DONE and finished_at is not None and not reused:
                    scan.answer_times.append(finished_at)
                elif state is RowState.FAILED:
                    failures.append((cause or error_cause(error), error))
            _count_causes(failures, scan.causes, scan.examples)
        return scan
    finally:
        reader.close()


# ---------------------------------------------------------------- the summary


@contextmanager
def _job_files(path: Path) -> Iterator[tuple[Path, Path | None, bool]]:
    """(the Parquet file to read, the checkpoint, whether that file was exported just now)
    from either path: a job whose output is not written yet (a first run under way) is
    exported from its checkpoint first, as `run` would write it."""
    output, checkpoint = locate_job(path)
    if output is not None:
        yield output, checkpoint, False
        return
    if checkpoint is None:  # locate_job raises first; this keeps the types honest
        raise ConfigError(f"{path}: no output and no checkpoint")
    with tempfile.TemporaryDirectory(prefix="batchrun-report-") as folder:
        written, _ = export(
            checkpoint, str(Path(folder) / "output.parquet"), "parquet", one_file=True
        )
        yield Path(written[0]), checkpoint, True


def summarize(path: Path) -> dict[str, Any]:
    """The report's figures as plain data (what `--json` prints)."""
    with _job_files(path) as (output, checkpoint, exported):
        summary = _summarize(output, checkpoint, exported)
    if exported:
        summary["output"] = str(path)
        other_format = path.is_file() and checkpoint is not None and path != checkpoint
        why = "is not Parquet" if other_format else "is not written yet"
        summary["notes"].append(f"the output {why}: figures read from the checkpoint")
    return summary


def _summarize(output: Path, checkpoint: Path | None, exported: bool = False) -> dict[str, Any]:
    scan = _scan_output(output)
    job = _scan_checkpoint(checkpoint) if checkpoint else None
    settings = job.settings if job else {}
    causes, examples = (job.causes, job.examples) if job else (scan.causes, scan.examples)
    return {
        "output": str(output),
        "checkpoint": str(checkpoint) if checkpoint else None,
        "model": settings.get("model"),
        "base_url": settings.get("base_url"),
        "rows": sum(scan.statuses.values()),
        "status": {s: scan.statuses.get(s, 0) for s in (*STATUSES, *sorted(scan.statuses))},
        "tokens": {
            "prompt": scan.tokens["prompt_tokens"],
            "completion": scan.tokens["completion_tokens"],
            "total": scan.tokens["total_tokens"],
            "ok_rows_without_usage": scan.ok_without_usage,
        },
        # What the rows bought cost (reused rows cost nothing), when the job had prices.
        "cost_usd": job_cost(settings.get("pricing"), scan.bought()),
        "latency_s": _latency_figures(_joined(scan.latencies)),
        "ttft_s": quantiles(_joined(scan.ttfts), TTFT_QUANTILES),
        "attempts": {
            "requests_sent": scan.requests_sent,
            "mean_per_row_sent": scan.requests_sent / scan.rows_sent if scan.rows_sent else None,
            "rows_retried": scan.rows_retried,
            "max": scan.max_attempts,
        },
        "throughput": _throughput(job.answer_times, job.runs) if job else None,
        "failures": [
            {"cause": cause, "rows": n, "example": examples[cause]}
            for cause, n in sorted(causes.items(), key=lambda item: (-item[1], item[0]))
        ],
        "failures_from": "checkpoint" if job else "output",
        # Invalid rows by what is wrong with them, with the first place each happens.
        "invalid": [
            {"cause": c.cause, "rows": c.rows, "example": c.example}
            for c in (job.invalid if job else _invalid_from_output(output))
        ],
        "parse_errors": scan.parse_errors,
        "validation": validation_figures(output),
        "endpoints": endpoint_figures.from_output(output, settings.get("pricing")),
        "reused": scan.reused,
        "notes": _notes(scan, job, exported),
    }


def _invalid_from_output(output: Path) -> list[FailureCause]:
    """Invalid rows grouped by cause, read from the output (a job without its checkpoint)."""
    table = pq.read_table(output, columns=["status", "error"])
    invalid = table.filter(pc.field("status") == "invalid")
    counts: Counter[str] = Counter()
    first: dict[str, str] = {}
    for error in invalid.column("error").to_pylist():
        where, cause = split_location(error or "")
        counts[cause] += 1
        first.setdefault(cause, where)
    return [FailureCause(c, n, first[c]) for c, n in counts.most_common()]


def _latency_figures(latencies: Numbers) -> dict[str, float] | None:
    figures = quantiles(latencies, LATENCY_QUANTILES)
    if figures is not None:
        figures["max"] = float(latencies.max())
    return figures


def _throughput(answer_times: array[float], runs: list[RunRecord]) -> dict[str, Any] | None:
    """Ok rows per second of time spent running (the gaps between runs left out), and the
    wall time from the first start (or answer) to the last answer. None under two answers."""
    if len(answer_times) < 2:
        return None
    first, last = min(answer_times), max(answer_times)
    starts = [r.started_at for r in runs]
    wall = last - (min(starts[0], first) if starts else first)
    active = _active_seconds(sorted(answer_times), runs) if runs else last - first
    if active <= 0 or wall <= 0:
        return None
    return {
        "ok_rows": len(answer_times),
        "seconds": active,
        "rows_per_s": len(answer_times) / active,
        "wall_seconds": wall,
        "runs": max(1, len(runs)),
    }


def _active_seconds(times: list[float], runs: list[RunRecord]) -> float:
    """Time spent in runs: each from its start to its end (or, for a run that was killed,
    to its last answer)."""
    total = 0.0
    for run, after in zip(runs, [*runs[1:], None], strict=True):
        until = after.started_at if after is not None else float("inf")
        inside = times[bisect.bisect_left(times, run.started_at) : bisect.bisect_left(times, until)]
        end = run.ended_at if run.ended_at is not None else (inside[-1] if inside else None)
        if end is not None:
            total += max(0.0, min(end, until) - run.started_at)
    return total


def _notes(scan: _OutputScan, job: _CheckpointScan | None, exported: bool) -> list[str]:
    if job is None:
        return [
            "no checkpoint beside the output: no throughput, cost or model; failure causes "
            "are read from the error texts"
        ]
    notes = []
    finished = {"ok": RowState.DONE, "failed": RowState.FAILED, "invalid": RowState.INVALID}
    moved = any(
        scan.statuses.get(s, 0) != job.counts.get(state, 0) for s, state in finished.items()
    )
    if moved and not exported:  # an output exported just now: a running job moves on anyway
        notes.append(
            f"the checkpoint has moved on since the output was written (it has "
            f"{job.counts.get(RowState.DONE, 0)} ok, {job.counts.get(RowState.FAILED, 0)} "
            "failed rows): "
            f"`batchrun export {job.path} -o ...` writes a current output"
        )
    if scan.reused:
        notes.append("throughput counts only rows answered by the endpoint, not reused ones")
    return notes


# ---------------------------------------------------------------- the plots' numbers


@dataclass
class PlotNumbers:
    """The per-row numbers behind the HTML page's plots (the summary keeps only figures)."""

    latencies: Numbers  # of ok rows
    total_tokens: Numbers  # of rows with usage
    answer_times: Numbers | None  # of rows the endpoint answered; None without a checkpoint


def plot_numbers(path: Path) -> PlotNumbers:
    """Read the output (and its checkpoint) again, for `report_html.write_html`."""
    with _job_files(path) as (output, checkpoint, _):
        scan = _scan_output(output)
    answer_times = _scan_checkpoint(checkpoint).answer_times if checkpoint else None
    return PlotNumbers(
        latencies=_joined(scan.latencies),
        total_tokens=_joined(scan.total_tokens),
        answer_times=None if answer_times is None else np.asarray(answer_times, dtype=float),
    )
