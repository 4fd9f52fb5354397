"""The fault matrix: one faulty answer per job, its row's outcome, and nothing else disturbed.

Each job has 8 rows; row 3 carries a mock marker (see batchrun/testing/faults.py) that makes
the endpoint misbehave for that row. The other rows must come out ok after one attempt.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from batchrun.lifecycle import RowState
from batchrun.testing import MockServer

from .conftest import prompts, run_cli, start_cli, write_jsonl
from .ledger import count, wait_until
from .test_e2e import assert_rows_answered, expected_usage, run_args

pytestmark = pytest.mark.slow
FAULTY = 3


def job_with_marker(tmp_path: Path, marker: str) -> tuple[Path, list[dict[str, Any]]]:
    inputs = prompts(8)
    inputs[FAULTY]["prompt"] += f" {marker}"
    return write_jsonl(tmp_path / "in.jsonl", inputs), inputs


def others_undisturbed(rows: list[dict[str, Any]], inputs: list[dict[str, Any]]) -> None:
    keep = [i for i in range(len(inputs)) if i != FAULTY]
    assert_rows_answered([rows[i] for i in keep], [inputs[i] for i in keep])
    assert all(rows[i]["attempts"] == 1 for i in keep)


RETRIED_THEN_OK = [
    ("[mock:badjsonx1]", []),  # a truncated JSON body
    ("[mock:nochoicesx1]", []),  # a 200 without choices
    ("[mock:500x2]", []),
    ("[mock:502x1]", []),
    ("[mock:503x1]", []),
    ("[mock:504x1]", []),  # empty body + NVCF-REQID: the request was cancelled
    ("[mock:408x1]", []),
    ("[mock:429x1=0.1]", []),
    ("[mock:429x1]", ["-c-retry-after-none"]),
    ("[mock:dropx2]", []),  # connection closed without an answer
    ("[mock:slowx1=3]", ["--timeout", "2"]),  # slower than --timeout
    ("[mock:cutstreamx1]", ["--stream"]),  # an SSE stream cut off mid-answer
]


@pytest.mark.parametrize(("marker", "extra"), RETRIED_THEN_OK, ids=[m for m, _ in RETRIED_THEN_OK])
def test_fault_is_retried_and_the_row_ends_ok(
    marker: str, extra: list[str], mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    if "-c-retry-after-none" in extra:
        mock_server.configure(retry_after=None)
        extra = []
    data, inputs = job_with_marker(tmp_path, marker)
    out = tmp_path / "out.parquet"
    result = run_cli(*run_args(data, out, mock_server, fast_config, *extra))
    assert result.returncode == 0, result.stderr
    rows = pq.read_table(out).to_pylist()
    assert_rows_answered(rows, inputs)
    times = int(marker.split("x")[1].split("=")[0].rstrip("]"))
    assert rows[FAULTY]["attempts"] == times + 1
    others_undisturbed(rows, inputs)


def test_answer_without_usage_is_ok_with_empty_usage(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    data, inputs = job_with_marker(tmp_path, "[mock:nousage]")
    out = tmp_path / "out.parquet"
    result = run_cli(*run_args(data, out, mock_server, fast_config))
    assert result.returncode == 0, result.stderr
    rows = pq.read_table(out).to_pylist()
    row = rows[FAULTY]
    assert row["status"] == "ok" and row["attempts"] == 1
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (
        None,
        None,
        None,
    )
    assert "1 answers came without token usage" in result.stderr
    others_undisturbed(rows, inputs)


def test_large_result_302_zip_is_downloaded(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    data, inputs = job_with_marker(tmp_path, "[mock:302]")
    out = tmp_path / "out.parquet"
    result = run_cli(*run_args(data, out, mock_server, fast_config))
    assert result.returncode == 0, result.stderr
    rows = pq.read_table(out).to_pylist()
    assert_rows_answered(rows, inputs)
    assert rows[FAULTY]["attempts"] == 1
    assert mock_server.stats()["codes"]["302"] == 1


@pytest.mark.parametrize("marker", ["[mock:422]", "[mock:400]"])
def test_client_errors_fail_the_row_without_retry(
    marker: str, mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    data, inputs = job_with_marker(tmp_path, marker)
    out = tmp_path / "out.parquet"
    result = run_cli(*run_args(data, out, mock_server, fast_config))
    assert result.returncode == 1
    rows = pq.read_table(out).to_pylist()
    assert rows[FAULTY]["status"] == "failed" and rows[FAULTY]["attempts"] == 1
    assert rows[FAULTY]["error"].startswith(f"HTTP {marker[6:9]}: ")
    assert f"failed x1: HTTP {marker[6:9]}" in result.stderr
    others_undisturbed(rows, inputs)


def test_503_asking_for_hours_stops_the_job_cleanly_and_it_resumes(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    data, inputs = job_with_marker(tmp_path, "[mock:503x1=10800]")
    out = tmp_path / "out.parquet"
    args = run_args(data, out, mock_server, fast_config, "--concurrency", "1")
    result = run_cli(*args)
    assert result.returncode == 1
    assert "asked to wait 10800s" in result.stderr and "resume" in result.stderr
    rows = pq.read_table(out).to_pylist()
    assert rows[FAULTY]["status"] == "pending"  # not failed: it will be sent again
    assert all(r["status"] in ("ok", "pending") for r in rows)
    result = run_cli(*args)  # later, the function is back
    assert result.returncode == 0, result.stderr
    assert_rows_answered(pq.read_table(out).to_pylist(), inputs)


def test_ids_that_expired_while_the_job_was_down_are_bought_again(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    mock_server.configure(p202=1.0, pending_polls=10_000, expire_after=1.0)
    inputs = prompts(12)
    data = write_jsonl(tmp_path / "in.jsonl", inputs)
    out = tmp_path / "out.parquet"
    checkpoint = Path(str(out) + ".checkpoint.sqlite")
    args = run_args(data, out, mock_server, fast_config)
    proc = start_cli(*args)
    try:
        wait_until(lambda: count(checkpoint, RowState.POLLING) == 12)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    mock_server.advance(2.0)  # the laptop sleeps; nobody polls; the ids expire
    mock_server.configure(p202=0.0, pending_polls=1)
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert_rows_answered(pq.read_table(out).to_pylist(), inputs)
    assert "12 re-sent after their id expired" in result.stderr


def test_failure_budget_stops_a_broken_job_early(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    inputs = prompts(200)
    for row in inputs[:100]:
        row["prompt"] += " [mock:422]"
    data = write_jsonl(tmp_path / "in.jsonl", inputs)
    out = tmp_path / "out.parquet"
    args = run_args(
        data, out, mock_server, fast_config, "--max-failures", "10%", "--concurrency", "2"
    )
    result = run_cli(*args)
    assert result.returncode == 1
    assert "failure budget spent" in result.stderr
    assert "failed x" in result.stderr and "HTTP 422" in result.stderr
    rows = pq.read_table(out).to_pylist()
    statuses = [r["status"] for r in rows]
    assert statuses.count("failed") < 40  # stopped long before burning through the batch
    assert statuses.count("pending") > 100
    sent = mock_server.stats()["submissions"]
    assert sent < 60


def test_absolute_failure_budget(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    inputs = prompts(30)
    for row in inputs:
        row["prompt"] += " [mock:500]"
    data = write_jsonl(tmp_path / "in.jsonl", inputs)
    out = tmp_path / "out.parquet"
    result = run_cli(
        *run_args(
            data,
            out,
            mock_server,
            fast_config,
            "--max-failures",
            "3",
            "--concurrency",
            "1",
            "--max-attempts",
            "2",
        )
    )
    assert result.returncode == 1
    statuses = [r["status"] for r in pq.read_table(out).to_pylist()]
    assert statuses.count("failed") == 3 and statuses.count("pending") == 27


def test_usage_is_the_servers(mock_server: MockServer, fast_config: Path, tmp_path: Path) -> None:
    # guards the helper used above: the mock's usage is words, as expected_usage says
    data = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "one two three"}])
    out = tmp_path / "out.parquet"
    run_cli(*run_args(data, out, mock_server, fast_config), check=True)
    row = pq.read_table(out).to_pylist()[0]
    assert row["total_tokens"] == expected_usage("one two three")["total_tokens"] == 3 + 5 + 5
