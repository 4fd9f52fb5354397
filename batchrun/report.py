"""`batchrun report`: what a job amounts to, for the terminal or as one web page.

This module owns the report: the figures read back from an output Parquet file (rows by
status, tokens, cost, latency and ttft percentiles, attempts, failures by cause, parse
errors, reused rows) and from the checkpoint beside it when there is one (answer times for
throughput, failure causes as the runner classified them, prices, model); and the two ways
of showing them: plain text, and a self-contained HTML page whose four matplotlib plots are
inlined as PNG data URLs.

Outputs can hold millions of rows, so the output is read in record batches, only the columns
needed, and per row only numbers are kept (latencies, token counts, answer times); error
texts are looked at batch by batch and only counts and one example per cause are kept.
"""

from __future__ import annotations

import base64
import html
import io
import re
from array import array
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .budget import job_cost
from .errors import ConfigError
from .records import DONE, FAILED, INVALID
from .stats import quantiles
from .store import Store

if TYPE_CHECKING:
    from typing import TypeAlias

    from matplotlib.axes import Axes

    Column: TypeAlias = pa.Array[Any]
    Numbers: TypeAlias = np.ndarray[Any, np.dtype[np.float64]]

CHECKPOINT_SUFFIX = ".checkpoint.sqlite"
SQLITE_MAGIC = b"SQLite format 3\x00"
NEEDED_COLUMNS = (
    "status", "latency_s", "ttft_s", "prompt_tokens", "completion_tokens", "total_tokens",
    "attempts", "error", "reused",
)  # fmt: skip
BATCH_ROWS = 65_536
LATENCY_QUANTILES = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}
TTFT_QUANTILES = {"p50": 0.5, "p95": 0.95}
STATUSES = ("ok", "failed", "invalid", "pending")
HTTP_CAUSE = re.compile(r"^(HTTP \d{3})\b")
LABEL_WIDTH = len("parse errors")  # the longest label: one layout whatever rows show
EXAMPLE_CHARS = 120  # of an error example on the terminal (the HTML page shows it whole)

# Captions of the four plots, in page order.
LATENCY = "Latency distribution"
THROUGHPUT = "Throughput over time"
TOKENS = "Tokens per row"
FAILURES = "Failures by cause"
MATPLOTLIB_MISSING = "--html needs matplotlib: pip install 'batchrun[report]'"


# ---------------------------------------------------------------- finding the files


def locate(path: Path) -> tuple[Path, Path | None]:
    """The output Parquet file and its checkpoint (None when there is none beside it).

    `path` is the output, or a checkpoint whose output can be found (beside it, or where
    its settings say it was written)."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    if _is_parquet(path):
        beside = Path(str(path) + CHECKPOINT_SUFFIX)
        return path, beside if beside.is_file() else None
    if not _starts_with(path, SQLITE_MAGIC):
        raise ConfigError(f"{path}: neither a batchrun output (Parquet) nor a batchrun checkpoint")
    store = Store.open(path)  # another SQLite file, or a newer schema: its own clear error
    try:
        settings = store.get_json("settings", {}) or {}
    finally:
        store.close()
    return _output_of(path, settings), path


def _is_parquet(path: Path) -> bool:
    return _starts_with(path, b"PAR1")


def _starts_with(path: Path, magic: bytes) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(len(magic)) == magic
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None


def _output_of(checkpoint: Path, settings: dict[str, Any]) -> Path:
    candidates = []
    if checkpoint.name.endswith(CHECKPOINT_SUFFIX):
        candidates.append(checkpoint.with_name(checkpoint.name[: -len(CHECKPOINT_SUFFIX)]))
    if settings.get("output"):
        candidates.append(Path(settings["output"]))
    for candidate in candidates:
        if candidate.is_file() and _is_parquet(candidate):
            return candidate
    raise ConfigError(
        f"{checkpoint} is a checkpoint; the report reads its output Parquet file, which is not "
        f"there. Write one with `batchrun export {checkpoint} -o OUTPUT.parquet` and report "
        "on that."
    )


# ---------------------------------------------------------------- reading the output


@dataclass
class _OutputScan:
    """Per-batch sums of the output's columns, plus the per-row numbers the plots need."""

    statuses: Counter[str] = field(default_factory=Counter)
    # Keyed as Store.totals() keys them: `bought_*` leaves out reused rows.
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


def _scan_checkpoint(path: Path) -> _CheckpointScan:
    store = Store.open(path)
    try:
        scan = _CheckpointScan(path, store.get_json("settings", {}) or {}, store.counts())
        for page in store.timeline():
            failures = []
            for finished_at, state, cause, reused, error in page:
                # Reused rows were answered all at once, from another job: not throughput.
                if state == DONE and finished_at is not None and not reused:
                    scan.answer_times.append(finished_at)
                elif state == FAILED:
                    failures.append((cause or error_cause(error), error))
            _count_causes(failures, scan.causes, scan.examples)
        return scan
    finally:
        store.close()


# ---------------------------------------------------------------- the summary


def summarize(output: Path) -> dict[str, Any]:
    """The report's figures as plain data (what `--json` prints)."""
    output, checkpoint = locate(output)
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
        "cost_usd": job_cost(settings.get("pricing"), scan.tokens),
        "latency_s": _latency_figures(_joined(scan.latencies)),
        "ttft_s": quantiles(_joined(scan.ttfts), TTFT_QUANTILES),
        "attempts": {
            "requests_sent": scan.requests_sent,
            "mean_per_row_sent": scan.requests_sent / scan.rows_sent if scan.rows_sent else None,
            "rows_retried": scan.rows_retried,
            "max": scan.max_attempts,
        },
        "throughput": _throughput(job.answer_times) if job else None,
        "failures": [
            {"cause": cause, "rows": n, "example": examples[cause]}
            for cause, n in sorted(causes.items(), key=lambda item: (-item[1], item[0]))
        ],
        "failures_from": "checkpoint" if job else "output",
        "parse_errors": scan.parse_errors,
        "reused": scan.reused,
        "notes": _notes(scan, job),
    }


def _latency_figures(latencies: Numbers) -> dict[str, float] | None:
    figures = quantiles(latencies, LATENCY_QUANTILES)
    if figures is not None:
        figures["max"] = float(latencies.max())
    return figures


def _throughput(answer_times: array[float]) -> dict[str, float] | None:
    """Ok rows per second between the first and the last answer (None under two answers)."""
    if len(answer_times) < 2:
        return None
    seconds = max(answer_times) - min(answer_times)
    if seconds <= 0:
        return None
    return {
        "ok_rows": len(answer_times),
        "seconds": seconds,
        "rows_per_s": len(answer_times) / seconds,
    }


def _notes(scan: _OutputScan, job: _CheckpointScan | None) -> list[str]:
    if job is None:
        return [
            "no checkpoint beside the output: no throughput, cost or model; failure causes "
            "are read from the error texts"
        ]
    notes = []
    finished = {"ok": DONE, "failed": FAILED, "invalid": INVALID}
    if any(scan.statuses.get(s, 0) != job.counts.get(state, 0) for s, state in finished.items()):
        notes.append(
            f"the checkpoint has moved on since the output was written (it has "
            f"{job.counts.get(DONE, 0)} ok, {job.counts.get(FAILED, 0)} failed rows): "
            f"`batchrun export {job.path} -o ...` writes a current output"
        )
    if scan.reused:
        notes.append("throughput counts only rows answered by the endpoint, not reused ones")
    return notes


# ---------------------------------------------------------------- the terminal


def summary_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, text) pairs shared by the terminal report and the HTML table."""
    status, tokens, attempts = summary["status"], summary["tokens"], summary["attempts"]
    rows = [("checkpoint", summary["checkpoint"] or "none")]
    if summary["model"]:
        rows.append(("model", summary["model"] + _endpoint_text(summary["base_url"])))
    rows += [
        ("rows", f"{summary['rows']:,}: " + ", ".join(f"{n:,} {s}" for s, n in status.items())),
        (
            "tokens",
            f"{tokens['prompt']:,} prompt + {tokens['completion']:,} completion = "
            f"{tokens['total']:,} total; {tokens['ok_rows_without_usage']:,} ok rows without "
            "usage",
        ),
    ]
    if summary["cost_usd"] is not None:
        rows.append(("cost", f"${summary['cost_usd']:.4f}"))
    rows.append(("latency", _seconds_text(summary["latency_s"], "no ok rows")))
    if summary["ttft_s"]:
        rows.append(("ttft", _seconds_text(summary["ttft_s"], "")))
    mean = attempts["mean_per_row_sent"]
    rows.append(
        (
            "attempts",
            f"{attempts['requests_sent']:,} requests sent"
            + (f", {mean:.2f} per row sent" if mean is not None else "")
            + f", {attempts['rows_retried']:,} rows retried, max {attempts['max']}",
        )
    )
    rows.append(("throughput", _throughput_text(summary)))
    if summary["parse_errors"] is not None:
        rows.append(("parse errors", f"{summary['parse_errors']:,} answers did not parse"))
    rows.append(("reused", f"{summary['reused']:,} rows answered from an earlier job"))
    return rows


def _endpoint_text(base_url: str | None) -> str:
    # Host and path only: the HTML page names the endpoint without a link out of it.
    if not base_url:
        return ""
    url = urlsplit(base_url)
    return f" at {url.netloc}{url.path}"


def _seconds_text(figures: dict[str, float] | None, empty: str) -> str:
    if not figures:
        return empty
    return ", ".join(f"{name} {value:.3f} s" for name, value in figures.items())


def _throughput_text(summary: dict[str, Any]) -> str:
    throughput = summary["throughput"]
    if throughput is None:
        if summary["checkpoint"] is None:
            return "unknown (no checkpoint beside the output)"
        return "unknown (fewer than two answers)"
    return (
        f"{throughput['rows_per_s']:.2f} ok rows/s ({throughput['ok_rows']:,} rows in "
        f"{throughput['seconds']:.1f} s, first to last answer)"
    )


def format_report(summary: dict[str, Any]) -> str:
    """The report for a terminal."""
    lines = [f"batchrun report: {summary['output']}"]
    lines += [f"  {label:<{LABEL_WIDTH}}  {text}" for label, text in summary_rows(summary)]
    for failure in summary["failures"]:
        example = failure["example"]
        if len(example) > EXAMPLE_CHARS:
            example = example[: EXAMPLE_CHARS - 1] + "…"
        lines.append(f"  failed x{failure['rows']}: {failure['cause']} (e.g. {example})")
    lines += [f"  note: {note}" for note in summary["notes"]]
    return "\n".join(lines)


# ---------------------------------------------------------------- the HTML page


@dataclass
class _Plot:
    caption: str
    alt: str  # the caption and what the plot shows (or why it shows nothing)
    png: bytes


# A plot's drawing: fills the axes, returns what it shows in words (for the alt text).
Draw = Callable[["Axes"], str]


def write_html(summary: dict[str, Any], output: Path, html_path: Path) -> None:
    """Write the report as one self-contained page: summary tables and four PNG plots inline."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError(MATPLOTLIB_MISSING) from None
    output, checkpoint = locate(output)
    scan = _scan_output(output)
    answer_times = _scan_checkpoint(checkpoint).answer_times if checkpoint else None
    latencies, tokens = _joined(scan.latencies), _joined(scan.total_tokens)
    times = None if answer_times is None else np.asarray(answer_times, dtype=float)
    failures = [(f["cause"], int(f["rows"])) for f in summary["failures"]]

    def plot(caption: str, draw: Draw, height: float = 3.6) -> _Plot:
        # A bare Figure, not pyplot: no global figure registry to leak into (nothing to
        # close), no GUI backend; savefig renders PNG with Agg.
        figure = Figure(figsize=(7.5, height), layout="constrained")
        shows = draw(figure.add_subplot())
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
        return _Plot(caption, f"{caption}: {shows}", buffer.getvalue())

    plots = [
        plot(LATENCY, lambda ax: _draw_latency(ax, latencies, summary["latency_s"])),
        plot(THROUGHPUT, lambda ax: _draw_throughput(ax, times)),
        plot(TOKENS, lambda ax: _draw_tokens(ax, tokens)),
        plot(
            FAILURES,
            lambda ax: _draw_failures(ax, failures),
            height=max(2.4, 1.2 + 0.35 * min(len(failures), MAX_CAUSES_SHOWN)),
        ),
    ]
    try:
        html_path.write_text(_page(summary, plots), encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{html_path}: cannot write the report ({exc.strerror})") from None


def _message(ax: Axes, text: str) -> str:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=12)
    ax.set_axis_off()
    return text


def _whole_numbers(axis: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def _draw_latency(ax: Axes, latencies: Numbers, quantiles: dict[str, float] | None) -> str:
    if len(latencies) == 0 or not quantiles:
        return _message(ax, "no ok rows, so no latencies")
    ax.hist(latencies, bins=40, color="#4c72b0")
    for name, style in (("p50", "--"), ("p95", ":")):
        value = quantiles[name]
        ax.axvline(value, color="black", linestyle=style, label=f"{name} {value:.3f} s")
    ax.legend()
    ax.set_xlabel("latency_s (first submission to answer), seconds")
    ax.set_ylabel("ok rows")
    _whole_numbers(ax.yaxis)
    return f"histogram of latency_s over {len(latencies):,} ok rows"


def _draw_throughput(ax: Axes, times: Numbers | None) -> str:
    if times is None:
        return _message(ax, "throughput unavailable: no checkpoint beside the output")
    if len(times) == 0:
        return _message(ax, "no rows answered by the endpoint")
    elapsed = times - times.min()
    span = float(elapsed.max())
    width = _bucket_width(span)
    edges = np.arange(0.0, span + width, width)
    if len(edges) < 2:
        edges = np.array([0.0, width])
    counts, _ = np.histogram(elapsed, bins=edges)
    unit, scale = ("minutes", 60.0) if span > 300 else ("seconds", 1.0)
    ax.bar(edges[:-1] / scale, counts / width, width=width / scale, align="edge", color="#55a868")
    ax.set_xlabel(f"{unit} since the first answer ({_width_text(width)} buckets)")
    ax.set_ylabel("ok rows / s")
    return (
        f"ok rows answered per second in {_width_text(width)} buckets, {len(times):,} rows "
        f"over {span:.1f} s"
    )


NICE_WIDTHS = (
    0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600,
    7200, 21600, 43200, 86400,
)  # fmt: skip


def _bucket_width(span: float, buckets: int = 60) -> float:
    """A round bucket width (seconds) giving at most about `buckets` buckets over `span`."""
    wanted = span / buckets
    return float(next((w for w in NICE_WIDTHS if w >= wanted), wanted))


def _width_text(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


def _draw_tokens(ax: Axes, tokens: Numbers) -> str:
    if len(tokens) == 0:
        return _message(ax, "no row reported token usage")
    ax.hist(tokens, bins=40, color="#8172b2")
    ax.set_xlabel("total_tokens per row")
    ax.set_ylabel("rows")
    _whole_numbers(ax.yaxis)
    return f"histogram of total_tokens over {len(tokens):,} rows with usage"


MAX_CAUSES_SHOWN = 15


def _draw_failures(ax: Axes, failures: list[tuple[str, int]]) -> str:
    if not failures:
        return _message(ax, "no failures")
    shown = failures
    if len(failures) > MAX_CAUSES_SHOWN:
        rest = failures[MAX_CAUSES_SHOWN - 1 :]
        shown = [*failures[: MAX_CAUSES_SHOWN - 1], (f"{len(rest)} other causes", _rows(rest))]
    # '$' would start matplotlib's mathtext; causes are arbitrary text.
    labels = [_shorten(cause, 40).replace("$", r"\$") for cause, _ in shown]
    bars = ax.barh(labels, [n for _, n in shown], color="#c44e52")
    ax.bar_label(bars, padding=3)
    ax.invert_yaxis()  # the commonest cause on top
    ax.set_xlabel("failed rows")
    _whole_numbers(ax.xaxis)
    return f"{_rows(failures):,} failed rows; " + ", ".join(
        f"{cause}: {n:,}" for cause, n in failures[:MAX_CAUSES_SHOWN]
    )


def _rows(failures: list[tuple[str, int]]) -> int:
    return sum(n for _, n in failures)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }
table { border-collapse: collapse; margin-bottom: 1.5em; }
th, td { text-align: left; padding: 0.25em 0.8em; border-bottom: 1px solid #ddd;
         vertical-align: top; }
td.n { text-align: right; }
figure { margin: 1.5em 0; }
figcaption { font-weight: bold; margin-top: 0.3em; }
img { max-width: 100%; }
.note { color: #865; }
"""


def _page(summary: dict[str, Any], plots: list[_Plot]) -> str:
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>batchrun report: {esc(summary['output'])}</title>",
        f"<style>{PAGE_STYLE}</style></head><body>",
        f"<h1>batchrun report</h1><p>{esc(summary['output'])}</p>",
        "<h2>Summary</h2>",
        _summary_table(summary),
        *(f'<p class="note">{esc(note)}</p>' for note in summary["notes"]),
        f"<h2>{FAILURES}</h2>",
        _failures_table(summary["failures"]),
        "<h2>Plots</h2>",
    ]
    for plot in plots:
        data = base64.b64encode(plot.png).decode("ascii")
        parts.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{esc(plot.alt)}">'
            f"<figcaption>{esc(plot.caption)}</figcaption></figure>"
        )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _summary_table(summary: dict[str, Any]) -> str:
    rows = summary_rows(summary)
    cells = "".join(
        f"<tr><th>{html.escape(label)}</th><td>{html.escape(text)}</td></tr>"
        for label, text in rows
    )
    return f"<table>{cells}</table>"


def _failures_table(failures: list[dict[str, Any]]) -> str:
    if not failures:
        return "<p>No failed rows.</p>"
    cells = "".join(
        f'<tr><td>{html.escape(f["cause"])}</td><td class="n">{f["rows"]:,}</td>'
        f"<td>{html.escape(f['example'])}</td></tr>"
        for f in failures
    )
    return f"<table><tr><th>cause</th><th>rows</th><th>example</th></tr>{cells}</table>"
