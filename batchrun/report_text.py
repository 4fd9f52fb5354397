"""`batchrun report` as text: the summary's figures as label/text rows (the terminal's and
the HTML table's) and the terminal report. The figures are report.py's.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from .endpoint_figures import lines as endpoint_lines

LABEL_WIDTH = len("parse errors")  # the longest label: one layout whatever rows show
EXAMPLE_CHARS = 120  # of an error example on the terminal (the HTML page shows it whole)


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
    checked = summary.get("validation")
    if checked:
        rows.append(
            (
                "validation",
                f"{checked['rows_checked']:,} rows checked against the schema, "
                f"{checked['rows_asked_again']:,} asked again, "
                f"{checked['answers_rejected']:,} answers rejected",
            )
        )
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
    runs = throughput["runs"]
    return (
        f"{throughput['rows_per_s']:.2f} ok rows/s ({throughput['ok_rows']:,} rows in "
        f"{throughput['seconds']:.1f} s of running"
        + (f" over {runs} runs; " if runs > 1 else "; ")
        + f"{throughput['wall_seconds']:.1f} s from start to last answer)"
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
    for invalid in summary["invalid"]:
        lines.append(
            f"  invalid x{invalid['rows']}: {invalid['cause']} (e.g. {invalid['example']})"
        )
    if summary.get("endpoints"):
        lines += ["  by endpoint:", *endpoint_lines(summary["endpoints"])]
    lines += [f"  note: {note}" for note in summary["notes"]]
    return "\n".join(lines)
