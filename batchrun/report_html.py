"""`batchrun report --html`: the report as one self-contained web page.

This module owns the page: the summary table (the same rows as the terminal report), the
failures table, and four matplotlib plots (latency, throughput over time, tokens per row,
failures by cause) inlined as PNG data URLs, each with alt text saying what it shows. The
figures and the per-row numbers come from `report.py`; matplotlib is an optional extra
(`batchrun[report]`), imported only here and only when a page is written.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ConfigError
from .report import plot_numbers
from .report_text import summary_rows

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from .report import Numbers

# Captions of the four plots, in page order.
LATENCY = "Latency distribution"
THROUGHPUT = "Throughput over time"
TOKENS = "Tokens per row"
FAILURES = "Failures by cause"
MATPLOTLIB_MISSING = "--html needs matplotlib: pip install 'batchrun[report]'"


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
    numbers = plot_numbers(output)
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
        plot(LATENCY, lambda ax: _draw_latency(ax, numbers.latencies, summary["latency_s"])),
        plot(THROUGHPUT, lambda ax: _draw_throughput(ax, numbers.answer_times)),
        plot(TOKENS, lambda ax: _draw_tokens(ax, numbers.total_tokens)),
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
