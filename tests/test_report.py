"""batchrun/report.py and `batchrun report`: the summary, its text and JSON, the HTML page.

Fast tests use a hand-made output file (exact figures) and an --offline job run in-process
(a real checkpoint, nothing sent). The end-to-end tests, marked slow, run a real job through
the CLI against the mock endpoint and check the report against the output's own numbers.
"""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from batchrun.checkpoint import open_reader
from batchrun.cli import main
from batchrun.errors import ConfigError
from batchrun.lifecycle import RowState
from batchrun.report import error_cause, summarize
from batchrun.report_html import write_html
from batchrun.report_text import format_report
from batchrun.results import output_schema
from batchrun.testing import MockServer, MockSettings

from .conftest import FAST_CONFIG, prompts, run_cli, write_jsonl

CAPTIONS = ("Latency distribution", "Throughput over time", "Tokens per row", "Failures by cause")
IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="([^"]*)">')
ERROR_422 = 'HTTP 422: Unprocessable Entity: value must be <= 1 & "x"'


def invoke(*args: str) -> Any:
    """`batchrun ARGS` in-process."""
    return CliRunner().invoke(main, list(args))


def images(page: str) -> list[tuple[bytes, str]]:
    """(PNG bytes, alt text) of every inline image on the page."""
    return [(base64.b64decode(data), html.unescape(alt)) for data, alt in IMG.findall(page)]


def assert_self_contained_page(page: str) -> list[tuple[bytes, str]]:
    found = images(page)
    assert page.count("<img ") == 4
    assert len(found) == 4
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") for png, _ in found)
    for caption, (_, alt) in zip(CAPTIONS, found, strict=True):
        assert f"<figcaption>{caption}</figcaption>" in page
        assert alt.startswith(f"{caption}: ")
    assert "http://" not in page
    assert "https://" not in page
    return found


# ---------------------------------------------------------------- a hand-made output


def output_row(**values: Any) -> dict[str, Any]:
    row = {name: None for name in output_schema([]).names}
    row.update(attempts=1, reused=False)
    row.update(values)
    return row


HAND_MADE = [
    output_row(id="a", status="ok", latency_s=1.0, ttft_s=0.1, prompt_tokens=10,
               completion_tokens=5, total_tokens=15),
    output_row(id="b", status="ok", latency_s=2.0, ttft_s=0.3, prompt_tokens=20,
               completion_tokens=5, total_tokens=25, attempts=2),
    output_row(id="c", status="ok", latency_s=3.0, prompt_tokens=30, completion_tokens=5,
               total_tokens=35, reused=True, attempts=0),
    output_row(id="d", status="ok", latency_s=4.0, attempts=3),  # no usage from the server
    output_row(id="e", status="failed", latency_s=0.5, error=ERROR_422),
    output_row(id="f", status="failed", latency_s=9.0, attempts=6,
               error="connection dropped: peer closed"),
    output_row(id="g", status="invalid", attempts=0, error="data.jsonl:7: invalid JSON"),
    output_row(id="h", status="pending", attempts=0),
]  # fmt: skip


@pytest.fixture
def hand_made(tmp_path: Path) -> Path:
    path = tmp_path / "hand.parquet"
    pq.write_table(pa.Table.from_pylist(HAND_MADE, schema=output_schema([])), path)
    return path


def test_summary_of_an_output_alone(hand_made: Path) -> None:
    summary = summarize(hand_made)
    assert summary["checkpoint"] is None
    assert summary["rows"] == 8
    assert summary["status"] == {"ok": 4, "failed": 2, "invalid": 1, "pending": 1}
    assert summary["tokens"] == {
        "prompt": 60,
        "completion": 15,
        "total": 75,
        "ok_rows_without_usage": 1,
    }
    assert summary["cost_usd"] is None  # prices live in the checkpoint
    # ok rows only: 1, 2, 3, 4 s (the failed rows' 0.5 and 9.0 are left out)
    assert summary["latency_s"] == pytest.approx(
        {"p50": 2.5, "p90": 3.7, "p95": 3.85, "p99": 3.97, "max": 4.0}
    )
    assert summary["ttft_s"] == pytest.approx({"p50": 0.2, "p95": 0.29})
    assert summary["attempts"] == {
        "requests_sent": 13,
        "mean_per_row_sent": pytest.approx(13 / 5),
        "rows_retried": 3,
        "max": 6,
    }
    assert summary["throughput"] is None
    assert summary["failures"] == [
        {"cause": "HTTP 422", "rows": 1, "example": ERROR_422},
        {"cause": "connection dropped", "rows": 1, "example": "connection dropped: peer closed"},
    ]
    assert summary["failures_from"] == "output"
    assert summary["parse_errors"] is None
    assert summary["reused"] == 1
    json.dumps(summary)  # --json prints it as is


def test_report_text(hand_made: Path) -> None:
    text = format_report(summarize(hand_made))
    lines = text.splitlines()
    assert lines[0] == f"batchrun report: {hand_made}"
    assert "  rows          8: 4 ok, 2 failed, 1 invalid, 1 pending" in lines
    assert "  tokens        60 prompt + 15 completion = 75 total; 1 ok rows without usage" in lines
    assert (
        "  latency       p50 2.500 s, p90 3.700 s, p95 3.850 s, p99 3.970 s, max 4.000 s" in lines
    )
    assert "  attempts      13 requests sent, 2.60 per row sent, 3 rows retried, max 6" in lines
    assert "  throughput    unknown (no checkpoint beside the output)" in lines
    assert f"  failed x1: HTTP 422 (e.g. {ERROR_422})" in lines
    assert "  failed x1: connection dropped (e.g. connection dropped: peer closed)" in lines


def test_parse_errors_are_counted_when_the_job_parsed_answers(tmp_path: Path) -> None:
    rows = [
        output_row(id="a", status="ok", parsed='{"x": 1}', parse_error=None),
        output_row(id="b", status="ok", parsed=None, parse_error="not JSON"),
        output_row(id="c", status="ok", parsed=None, parse_error="not JSON"),
    ]
    path = tmp_path / "parsed.parquet"
    schema = output_schema([["parsed", "str"], ["parse_error", "str"]])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    assert summarize(path)["parse_errors"] == 2
    assert "  parse errors  2 answers did not parse" in format_report(summarize(path))


def test_a_passthrough_column_named_parse_error_is_not_counted(tmp_path: Path) -> None:
    rows = [output_row(id="a", status="ok", parse_error="an input value")]
    path = tmp_path / "passthrough.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=output_schema([["parse_error", "str"]])), path)
    assert summarize(path)["parse_errors"] is None


def test_html_of_an_output_alone(hand_made: Path, tmp_path: Path) -> None:
    page_path = tmp_path / "report.html"
    write_html(summarize(hand_made), hand_made, page_path)
    page = page_path.read_text()
    found = assert_self_contained_page(page)
    alts = [alt for _, alt in found]
    assert alts[0] == "Latency distribution: histogram of latency_s over 4 ok rows"
    assert (
        alts[1] == "Throughput over time: throughput unavailable: no checkpoint beside the output"
    )
    assert alts[2] == "Tokens per row: histogram of total_tokens over 3 rows with usage"
    assert alts[3] == "Failures by cause: 2 failed rows; HTTP 422: 1, connection dropped: 1"
    assert html.escape(ERROR_422) in page
    assert ERROR_422 not in page  # only its escaped form
    assert "<td>8: 4 ok, 2 failed, 1 invalid, 1 pending</td>" in page


def test_html_says_no_failures_when_there_are_none(tmp_path: Path) -> None:
    path = tmp_path / "clean.parquet"
    rows = [output_row(id="a", status="ok", latency_s=1.0, total_tokens=3)]
    pq.write_table(pa.Table.from_pylist(rows, schema=output_schema([])), path)
    write_html(summarize(path), path, tmp_path / "clean.html")
    page = (tmp_path / "clean.html").read_text()
    assert images(page)[3][1] == "Failures by cause: no failures"
    assert "<p>No failed rows.</p>" in page


def test_html_without_matplotlib_is_a_config_error(
    hand_made: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import raises ImportError
    with pytest.raises(ConfigError, match=re.escape("pip install 'batchrun[report]'")):
        write_html(summarize(hand_made), hand_made, tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        ("HTTP 422: Unprocessable Entity: bad", "HTTP 422"),
        ("HTTP 500", "HTTP 500"),
        ("not in cache (--offline sends nothing)", "not in cache (--offline sends nothing)"),
        ("timed out: after 600 s", "timed out"),
        (None, "unknown"),
        ("", "unknown"),
    ],
)
def test_error_cause(error: str | None, cause: str) -> None:
    assert error_cause(error) == cause


def test_cli_report_and_json(hand_made: Path) -> None:
    result = invoke("report", str(hand_made))
    assert result.exit_code == 0, result.output
    assert result.stdout == format_report(summarize(hand_made)) + "\n"
    result = invoke("report", str(hand_made), "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["status"] == {
        "ok": 4,
        "failed": 2,
        "invalid": 1,
        "pending": 1,
    }


def test_cli_report_on_a_file_that_is_not_an_output_exits_2(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "data.jsonl", prompts(2))
    result = invoke("report", str(data))
    assert result.exit_code == 2
    assert "neither a batchrun output (Parquet) nor a batchrun checkpoint" in result.stderr
    result = invoke("report", str(tmp_path / "missing.parquet"))
    assert result.exit_code == 2


def test_cli_report_on_a_parquet_file_that_is_not_an_output_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "other.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), path)
    result = invoke("report", str(path))
    assert result.exit_code == 2
    assert "not a batchrun output (no status, latency_s" in result.stderr


def test_cli_html_to_an_unwritable_place_exits_2(hand_made: Path, tmp_path: Path) -> None:
    result = invoke("report", str(hand_made), "--html", str(tmp_path / "no" / "r.html"))
    assert result.exit_code == 2
    assert "cannot write the report" in result.stderr


# ---------------------------------------------------------------- a real checkpoint, offline


@pytest.fixture
def offline_job(tmp_path: Path) -> Path:
    """A job run in-process with --offline: every row fails with cause `offline`."""
    data = write_jsonl(tmp_path / "data.jsonl", [*prompts(7), '{"id": "broken", '])
    out = tmp_path / "off.parquet"
    result = invoke("run", str(data), "-o", str(out), "--offline", "--base-url",
                    "http://127.0.0.1:9/v1")  # fmt: skip
    assert result.exit_code == 1, result.output
    return out


def test_report_reads_causes_from_the_checkpoint(offline_job: Path, tmp_path: Path) -> None:
    summary = summarize(offline_job)
    assert summary["checkpoint"] == f"{offline_job}.checkpoint.sqlite"
    assert summary["status"] == {"ok": 0, "failed": 7, "invalid": 1, "pending": 0}
    assert summary["failures_from"] == "checkpoint"
    assert [(f["cause"], f["rows"]) for f in summary["failures"]] == [("offline", 7)]
    assert summary["model"] == "qwen/qwen3.5-397b-a17b"
    assert summary["throughput"] is None
    assert summary["notes"] == []
    write_html(summary, offline_job, tmp_path / "off.html")
    alts = [alt for _, alt in assert_self_contained_page((tmp_path / "off.html").read_text())]
    assert alts[0] == "Latency distribution: no ok rows, so no latencies"
    assert alts[1] == "Throughput over time: no rows answered by the endpoint"
    assert alts[3] == "Failures by cause: 7 failed rows; offline: 7"


def test_report_notes_a_checkpoint_newer_than_the_output(
    offline_job: Path, hand_made: Path
) -> None:
    shutil.copy(hand_made, offline_job)  # an output that does not match the checkpoint
    summary = summarize(offline_job)
    assert summary["status"]["ok"] == 4  # the figures are the output's
    assert summary["notes"] == [
        f"the checkpoint has moved on since the output was written (it has 0 ok, 7 failed "
        f"rows): `batchrun export {offline_job}.checkpoint.sqlite -o ...` writes a current "
        "output",
        "throughput counts only rows answered by the endpoint, not reused ones",
    ]


def test_report_on_a_sqlite_file_that_is_not_a_checkpoint_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.close()
    result = invoke("report", str(path))
    assert result.exit_code == 2
    assert "not a batchrun checkpoint" in result.stderr


def test_report_on_the_checkpoint_finds_its_output(offline_job: Path) -> None:
    checkpoint = Path(f"{offline_job}.checkpoint.sqlite")
    assert summarize(checkpoint) == summarize(offline_job)
    offline_job.unlink()  # as during a first run: the report is read from the checkpoint
    result = invoke("report", str(checkpoint))
    assert result.exit_code == 0, result.stderr
    assert "read from the checkpoint" in result.stdout


def test_checkpoint_timeline_pages(offline_job: Path) -> None:
    reader = open_reader(Path(f"{offline_job}.checkpoint.sqlite"))
    try:
        pages = list(reader.timeline(page=3))
        whole = list(reader.timeline())
    finally:
        reader.close()
    assert [len(p.state) for p in pages] == [3, 3, 1]  # the invalid row is not finished work
    assert [s for p in pages for s in p.state] == whole[0].state
    rows = {
        (state, cause, reused)
        for p in pages
        for state, cause, reused in zip(p.state, p.cause, p.reused, strict=True)
    }
    assert rows == {(RowState.FAILED, "offline", False)}
    assert all(isinstance(t, float) for t in whole[0].finished_at)


# ---------------------------------------------------------------- end to end


PRICES = {"prompt": 1000.0, "completion": 2000.0}  # USD per 1M tokens: a visible cost


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A real job via the CLI: 3 rows fail with HTTP 422, 2 succeed on a retry, 1 invalid."""
    tmp = tmp_path_factory.mktemp("report")
    rows: list[Any] = prompts(12)
    for i, row in enumerate(rows):
        if i % 4 == 0:
            row["prompt"] += " [mock:422]"
        elif i in (1, 6):
            row["prompt"] += " [mock:500x1]"
    rows.append('{"id": "broken", "prompt": ')
    data = write_jsonl(tmp / "data.jsonl", rows)
    config = tmp / "fast.toml"
    config.write_text(
        FAST_CONFIG + f"[pricing]\nprompt = {PRICES['prompt']}\ncompletion = "
        f"{PRICES['completion']}\n"
    )
    out = tmp / "out.parquet"
    with MockServer(MockSettings(seed=1, latency=0.01, latency_jitter=0.02)) as server:
        args = ["run", str(data), "-o", str(out), "--base-url", server.base_url, "-c", str(config)]
        result = run_cli(*args)
    assert result.returncode == 1, result.stderr
    yield out


def output_figures(out: Path) -> dict[str, Any]:
    rows = pq.read_table(out).to_pylist()
    bought = [r for r in rows if not r["reused"]]
    return {
        "rows": rows,
        "tokens": {k: sum(r[f"{k}_tokens"] or 0 for r in rows) for k in PRICE_KEYS},
        "cost": sum(
            (r["prompt_tokens"] or 0) * PRICES["prompt"]
            + (r["completion_tokens"] or 0) * PRICES["completion"]
            for r in bought
        )
        / 1e6,
        "attempts": sum(r["attempts"] for r in rows),
        "error_422": next(r["error"] for r in rows if r["status"] == "failed"),
    }


PRICE_KEYS = ("prompt", "completion", "total")


@pytest.mark.slow
def test_printed_report_of_a_real_job(job: Path) -> None:
    expected = output_figures(job)
    assert expected["tokens"]["total"] > 0
    result = run_cli("report", str(job), check=True)
    lines = result.stdout.splitlines()
    tokens = expected["tokens"]
    assert "  rows          13: 9 ok, 3 failed, 1 invalid, 0 pending" in lines
    assert (
        f"  tokens        {tokens['prompt']:,} prompt + {tokens['completion']:,} completion = "
        f"{tokens['total']:,} total; 0 ok rows without usage"
    ) in lines
    assert f"  cost          ${expected['cost']:.4f}" in lines
    assert (
        f"  attempts      {expected['attempts']} requests sent, "
        f"{expected['attempts'] / 12:.2f} per row sent, 2 rows retried, max 2"
    ) in lines
    assert f"  failed x3: HTTP 422 (e.g. {expected['error_422']})" in lines
    assert re.search(r"^  throughput    [\d.]+ ok rows/s \(9 rows in ", result.stdout, re.M)
    assert "note:" not in result.stdout


@pytest.mark.slow
def test_json_report_of_a_real_job(job: Path) -> None:
    expected = output_figures(job)
    summary = json.loads(run_cli("report", str(job), "--json", check=True).stdout)
    assert summary["status"] == {"ok": 9, "failed": 3, "invalid": 1, "pending": 0}
    assert {k: summary["tokens"][k] for k in PRICE_KEYS} == expected["tokens"]
    assert summary["cost_usd"] == pytest.approx(expected["cost"])
    assert summary["failures"] == [
        {"cause": "HTTP 422", "rows": 3, "example": expected["error_422"]}
    ]
    assert summary["failures_from"] == "checkpoint"
    ok_latencies = sorted(r["latency_s"] for r in expected["rows"] if r["status"] == "ok")
    assert summary["latency_s"]["max"] == pytest.approx(ok_latencies[-1])
    assert summary["throughput"]["ok_rows"] == 9
    checkpoint = f"{job}.checkpoint.sqlite"
    via_checkpoint = json.loads(run_cli("report", checkpoint, "--json", check=True).stdout)
    assert via_checkpoint == summary


@pytest.mark.slow
def test_html_report_of_a_real_job(job: Path, tmp_path: Path) -> None:
    page_path = tmp_path / "report.html"
    result = run_cli("report", str(job), "--html", str(page_path), check=True)
    assert f"wrote {page_path}" in result.stderr
    page = page_path.read_text()
    alts = [alt for _, alt in assert_self_contained_page(page)]
    assert alts[0] == "Latency distribution: histogram of latency_s over 9 ok rows"
    assert alts[1].startswith("Throughput over time: ok rows answered per second in ")
    assert alts[3] == "Failures by cause: 3 failed rows; HTTP 422: 3"
    error = output_figures(job)["error_422"]
    assert "<=" in error  # the mock's detail, so escaping is really tested
    assert html.escape(error) in page
    assert error not in page


@pytest.mark.slow
def test_report_of_an_output_without_its_checkpoint(job: Path, tmp_path: Path) -> None:
    alone = tmp_path / "alone.parquet"
    shutil.copy(job, alone)
    result = run_cli("report", str(alone), "--html", str(tmp_path / "alone.html"), check=True)
    lines = result.stdout.splitlines()
    assert "  rows          13: 9 ok, 3 failed, 1 invalid, 0 pending" in lines
    assert "  throughput    unknown (no checkpoint beside the output)" in lines
    assert any(line.startswith("  failed x3: HTTP 422 (e.g. HTTP 422: ") for line in lines)
    assert not any(line.startswith("  cost") for line in lines)
    alts = [alt for _, alt in images((tmp_path / "alone.html").read_text())]
    assert (
        alts[1] == "Throughput over time: throughput unavailable: no checkpoint beside the output"
    )


@pytest.mark.slow
def test_report_of_a_file_that_is_not_an_output_exits_2(job: Path) -> None:
    data = job.parent / "data.jsonl"
    result = run_cli("report", str(data))
    assert result.returncode == 2
    assert result.stderr.startswith("batchrun: error: ")
    assert "neither a batchrun output (Parquet) nor a batchrun checkpoint" in result.stderr
