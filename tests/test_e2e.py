"""End to end: the `batchrun` CLI as a subprocess against the mock endpoint on 127.0.0.1.

Every row's answer is checked against its own prompt (the mock answers "Answer to: <prompt>"
with word-count usage), and the mock's per-prompt counters prove what was bought and how often.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from batchrun.lifecycle import RowState
from batchrun.testing import MockServer

from .conftest import REPO, prompts, run_cli, start_cli, write_jsonl
from .ledger import count, counts, row_states, wait_until

pytestmark = pytest.mark.slow


def read_output(path: Path) -> list[dict[str, Any]]:
    return pq.read_table(path).to_pylist()


def expected_usage(prompt: str, system: str | None = None, thinking: bool = True) -> dict[str, int]:
    """The mock's usage: words in the messages; words in the answer (+ reasoning)."""
    prompt_words = len(prompt.split()) + (len(system.split()) if system else 0)
    answer_words = len(f"Answer to: {prompt}".split())
    if thinking:
        answer_words += len(f"Thinking about: {prompt}".split())
    return {
        "prompt_tokens": prompt_words,
        "completion_tokens": answer_words,
        "total_tokens": prompt_words + answer_words,
    }


def assert_rows_answered(rows: list[dict[str, Any]], inputs: list[dict[str, Any]]) -> None:
    """Every output row is its input row, in order, with the answer to its own prompt."""
    assert [r["id"] for r in rows] == [i["id"] for i in inputs]
    for row, source in zip(rows, inputs, strict=True):
        assert row["status"] == "ok", row
        assert row["content"] == f"Answer to: {source['prompt']}"
        assert row["reasoning_content"] == f"Thinking about: {source['prompt']}"
        usage = expected_usage(source["prompt"], source.get("system"))
        assert {k: row[k] for k in usage} == usage
        assert row["error"] is None


def run_args(inputs: Path, out: Path, server: MockServer, config: Path, *extra: str) -> list[str]:
    return [
        "run",
        str(inputs),
        "-o",
        str(out),
        "--base-url",
        server.base_url,
        "-c",
        str(config),
        *extra,
    ]


# ---------------------------------------------------------------- the basic promise


def test_samples_run_to_parquet_in_input_order(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    mock_server.configure(p202=0.3, latency=0.01)
    out = tmp_path / "out.parquet"
    result = run_cli(*run_args(REPO / "samples/prompts.jsonl", out, mock_server, fast_config))
    assert result.returncode == 0, result.stderr
    rows = read_output(out)
    inputs = [
        json.loads(line) for line in (REPO / "samples/prompts.jsonl").read_text().splitlines()
    ]
    assert [r["id"] for r in rows] == [i.get("id") or i.get("custom_id") for i in inputs]
    assert all(r["status"] == "ok" and r["content"].startswith("Answer to: ") for r in rows)
    assert all(r["total_tokens"] == r["prompt_tokens"] + r["completion_tokens"] for r in rows)
    # passthrough columns survive with their types
    assert rows[0]["source"] == "reviews" and isinstance(rows[0]["stars_hint"], int)
    assert "40 rows: 40 ok, 0 failed, 0 invalid" in result.stderr
    assert mock_server.stats()["submissions"] == 40


def test_300_rows_with_202s_500s_and_drops_lose_nothing_and_buy_nothing_twice(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    mock_server.configure(p202=0.3, p500=0.05, p_drop=0.02, pending_polls=2, latency=0.005)
    inputs = prompts(300)
    data = write_jsonl(tmp_path / "in.jsonl", inputs)
    out = tmp_path / "out.parquet"
    result = run_cli(*run_args(data, out, mock_server, fast_config))
    assert result.returncode == 0, result.stderr
    assert_rows_answered(read_output(out), inputs)
    stats = mock_server.stats()
    assert stats["accepted"] > 50 and stats["codes"].get("500", 0) > 0  # the faults happened
    assert all(p["billed"] == 1 for p in stats["prompts"].values()), "a request was billed twice"
    assert stats["resubmitted_while_pending"] == 0
    assert stats["pending"] == 0  # every accepted id was collected


def test_invalid_rows_are_reported_with_location_and_never_sent(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.parquet"
    result = run_cli(*run_args(REPO / "samples/bad_rows.jsonl", out, mock_server, fast_config))
    assert result.returncode == 1, result.stderr
    rows = {r["id"]: r for r in read_output(out)}
    assert rows["ok-1"]["status"] == "ok" and rows["ok-2"]["status"] == "ok"
    invalid = [r for r in rows.values() if r["status"] == "invalid"]
    assert len(invalid) == 8
    assert all(r["error"].startswith("bad_rows.jsonl:") for r in invalid)
    assert rows["bad_rows.jsonl:2"]["error"].startswith("bad_rows.jsonl:2: invalid JSON")
    assert "no prompt, messages or body" in rows["no-prompt"]["error"]
    assert mock_server.stats()["submissions"] == 2


def test_duplicate_ids_stop_before_anything_is_sent(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    data = write_jsonl(
        tmp_path / "dup.jsonl",
        [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"}, {"id": "a", "prompt": "z"}],
    )
    out = tmp_path / "out.parquet"
    result = run_cli(*run_args(data, out, mock_server, fast_config))
    assert result.returncode == 2
    assert "dup.jsonl:3: duplicate id 'a' (first used at dup.jsonl:1)" in result.stderr
    assert mock_server.stats()["submissions"] == 0
    assert not out.exists() and not Path(str(out) + ".checkpoint.sqlite").exists()


def test_parquet_and_directory_inputs(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    import pyarrow as pa

    folder = tmp_path / "data"
    (folder / "b").mkdir(parents=True)
    pq.write_table(
        pa.table({"id": [1, 2], "prompt": ["one", "two"], "label": [0.5, 1.5]}),
        folder / "a.parquet",
    )
    write_jsonl(folder / "b" / "c.jsonl", [{"prompt": "three"}])
    out = tmp_path / "out.parquet"
    result = run_cli(*run_args(folder, out, mock_server, fast_config))
    assert result.returncode == 0, result.stderr
    rows = read_output(out)
    assert [r["id"] for r in rows] == ["1", "2", "b/c.jsonl:1"]
    assert [r["content"] for r in rows] == ["Answer to: one", "Answer to: two", "Answer to: three"]
    assert rows[0]["label"] == 0.5


# ---------------------------------------------------------------- kill -9 and resume


def test_kill_9_then_same_command_finishes_without_resubmitting_known_ids(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    mock_server.configure(p202=0.5, pending_polls=3, latency=0.05, latency_jitter=0.1)
    inputs = prompts(200)
    data = write_jsonl(tmp_path / "in.jsonl", inputs)
    out = tmp_path / "out.parquet"
    checkpoint = Path(str(out) + ".checkpoint.sqlite")
    args = run_args(data, out, mock_server, fast_config, "--concurrency", "8", "--no-progress")
    proc = start_cli(*args)

    def under_way() -> bool:
        now = counts(checkpoint)
        return now.get(RowState.DONE, 0) >= 40 and now.get(RowState.POLLING, 0) >= 3

    try:
        wait_until(lambda: proc.poll() is not None or under_way())
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the job ended before it could be killed"
    states = row_states(checkpoint)  # what the checkpoint knew at the kill
    known_ids = {row: rid for row, (state, rid) in states.items() if state is RowState.POLLING}
    finished = {row for row, (state, _) in states.items() if state is RowState.DONE}
    assert known_ids and finished
    before = mock_server.stats()["prompts"]

    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert_rows_answered(read_output(out), inputs)
    after = mock_server.stats()["prompts"]
    prompt_of = {r["id"]: r["prompt"] for r in inputs}
    # An id whose answer was already handed out when the kill came (consume-once, in
    # transit, not yet committed) cannot be polled again: that row must be bought again.
    # Polls come back in bursts (ids accepted together are answered on the same tick), so
    # a burst can be in transit; more would mean answers waited for a commit they do not.
    in_transit = [r for r in known_ids if before[prompt_of[r]]["delivered"] > 0]
    assert len(in_transit) <= 8, in_transit
    for row in [*(set(known_ids) - set(in_transit)), *finished]:
        p = prompt_of[row]
        assert after[p]["submissions"] == before[p]["submissions"], f"{row} was sent again"
    final = row_states(checkpoint)
    assert all(final[row][1] == rid for row, rid in known_ids.items() if row not in in_transit)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGHUP], ids=["ctrl-c", "terminal-closed"])
def test_a_stop_signal_ends_cleanly_with_exit_130_and_the_resume_command(
    stop: signal.Signals, mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    """Ctrl-C, and closing the terminal (SIGHUP, as SIGTERM): the output of what is done is
    written, the lock given back, and the way back printed."""
    mock_server.configure(latency=0.2)
    inputs = prompts(200)
    data = write_jsonl(tmp_path / "in.jsonl", inputs)
    out = tmp_path / "out.parquet"
    args = run_args(data, out, mock_server, fast_config, "--concurrency", "4")
    proc = start_cli(*args)
    checkpoint = Path(str(out) + ".checkpoint.sqlite")
    wait_until(lambda: proc.poll() is not None or count(checkpoint, RowState.DONE) >= 8)
    proc.send_signal(stop)  # under way, far from done
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and not Path(f"{checkpoint}.lock").exists()
    hint = next(line for line in stderr.splitlines() if line.startswith("resume with: "))
    printed = shlex.split(hint.split(": ", 1)[1])  # the command as this one was started
    assert printed[-len(args) :] == args  # "run" and everything after it, as given
    assert printed[: -len(args)][-2:] == ["-m", "batchrun"]
    rows = read_output(out)  # the output of what is done was written
    assert len(rows) == 200
    assert {"ok", "pending"} == {r["status"] for r in rows}
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert_rows_answered(read_output(out), inputs)


# ---------------------------------------------------------------- errors and exit codes


def test_401_stops_the_job_with_exit_3_and_a_rerun_with_the_key_continues(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    mock_server.configure(api_key="nvapi-right")
    inputs = prompts(30)
    data = write_jsonl(tmp_path / "in.jsonl", inputs)
    out = tmp_path / "out.parquet"
    args = run_args(data, out, mock_server, fast_config, "--api-key-env", "MY_KEY")
    result = run_cli(*args, env={"MY_KEY": "nvapi-wrong"})
    assert result.returncode == 3, result.stderr
    assert "MY_KEY" in result.stderr and "nvapi-wrong" not in result.stderr
    states = row_states(Path(str(out) + ".checkpoint.sqlite"))
    assert not any(state is RowState.FAILED for state, _ in states.values())
    sent_with_bad_key = mock_server.stats()["submissions"]
    assert sent_with_bad_key <= 16  # stopped at once, not once per row
    result = run_cli(*args, env={"MY_KEY": "nvapi-right"})
    assert result.returncode == 0, result.stderr
    assert_rows_answered(read_output(out), inputs)


def test_422_is_not_retried_and_retry_failed_tries_again(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    inputs = prompts(5)
    inputs[2]["prompt"] += " [mock:422x1]"
    data = write_jsonl(tmp_path / "in.jsonl", inputs)
    out = tmp_path / "out.parquet"
    args = run_args(data, out, mock_server, fast_config)
    result = run_cli(*args)
    assert result.returncode == 1
    row = read_output(out)[2]
    assert row["status"] == "failed" and row["attempts"] == 1
    assert (
        row["error"]
        == "HTTP 422: Unprocessable Entity: Validation failed: temperature must be <= 1"
    )
    assert "--retry-failed" in result.stderr
    assert run_cli(*args).returncode == 1  # a plain resume keeps the failure
    result = run_cli(*args, "--retry-failed")
    assert result.returncode == 0, result.stderr
    assert_rows_answered(read_output(out), inputs)


def test_changed_settings_are_refused_until_fresh(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    data = write_jsonl(tmp_path / "in.jsonl", prompts(3))
    out = tmp_path / "out.parquet"
    args = run_args(data, out, mock_server, fast_config)
    assert run_cli(*args).returncode == 0
    result = run_cli(*args, "-p", "temperature=0.1")
    assert result.returncode == 2
    assert "changed: body.temperature" in result.stderr and "--fresh" in result.stderr
    result = run_cli(*args, "-p", "temperature=0.1", "--fresh")
    assert result.returncode == 0, result.stderr
    assert mock_server.stats()["submissions"] == 6


def test_rate_limited_server_429s_slow_the_job_down_and_every_row_finishes(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    mock_server.configure(rpm_limit=40, retry_after=0.2)
    inputs = prompts(60)
    data = write_jsonl(tmp_path / "in.jsonl", inputs)
    out = tmp_path / "out.parquet"
    proc = start_cli(*run_args(data, out, mock_server, fast_config, "--max-attempts", "50"))
    wait_until(lambda: mock_server.stats()["codes"].get("429", 0) > 0)
    # a minute passes for the mock (its window forgets the first 40) but not for the test
    mock_server.advance(61)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert_rows_answered(read_output(out), inputs)
    assert "rate-limited" in stderr


def test_status_route_missing_falls_back_once(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    mock_server.configure(p202=1.0, status_route=False)
    config = tmp_path / "c.toml"
    config.write_text(
        fast_config.read_text()
        + 'status_url_fallback = "{origin}/v2/nvcf/pexec/status/{request_id}"\n'
    )
    inputs = prompts(10)
    data = write_jsonl(tmp_path / "in.jsonl", inputs)
    out = tmp_path / "out.parquet"
    result = run_cli(*run_args(data, out, mock_server, config, "-v"))
    assert result.returncode == 0, result.stderr
    assert_rows_answered(read_output(out), inputs)
    assert result.stderr.count("does not exist (plain 404)") == 1
    assert mock_server.stats()["submissions"] == 10


# ---------------------------------------------------------------- security


def test_the_key_is_in_no_file_and_no_log(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    secret = "nvapi-SECRET-3f9a1c77"
    mock_server.configure(api_key=secret, p202=0.5, p500=0.1)
    data = write_jsonl(tmp_path / "in.jsonl", prompts(20))
    out = tmp_path / "results" / "out.parquet"
    result = run_cli(
        *run_args(data, out, mock_server, fast_config, "-vv"), env={"NVIDIA_API_KEY": secret}
    )
    assert result.returncode == 0, result.stderr
    export = run_cli(
        "export", str(out) + ".checkpoint.sqlite", "-o", str(tmp_path / "copy.parquet")
    )
    status = run_cli("status", str(out), "--json")
    for text in (result.stdout, result.stderr, export.stderr, status.stdout):
        assert secret not in text
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) >= 4
    for path in written:
        assert secret.encode() not in path.read_bytes(), path


def test_key_is_not_sent_over_plain_http_off_this_machine(
    fast_config: Path, tmp_path: Path
) -> None:
    data = write_jsonl(tmp_path / "in.jsonl", prompts(1))
    result = run_cli(
        "run",
        str(data),
        "-o",
        str(tmp_path / "o.parquet"),
        "--base-url",
        "http://10.1.2.3:8000/v1",
        env={"NVIDIA_API_KEY": "nvapi-x"},
    )
    assert result.returncode == 2
    assert "plain http" in result.stderr and "nvapi-x" not in result.stderr


# ---------------------------------------------------------------- operator commands


def test_dry_run_counts_and_sends_nothing(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.parquet"
    result = run_cli(
        *run_args(REPO / "samples/bad_rows.jsonl", out, mock_server, fast_config, "--dry-run")
    )
    assert result.returncode == 0, result.stderr
    assert "dry run: 10 rows, 2 would be sent, 8 invalid" in result.stdout
    assert "completion tokens at most: 32,768" in result.stdout
    assert mock_server.stats()["submissions"] == 0
    assert not Path(str(out) + ".checkpoint.sqlite").exists()


def test_status_and_export(mock_server: MockServer, fast_config: Path, tmp_path: Path) -> None:
    inputs = prompts(12)
    inputs[0]["prompt"] += " [mock:422]"
    data = write_jsonl(tmp_path / "in.jsonl", inputs)
    out = tmp_path / "out.parquet"
    run_cli(*run_args(data, out, mock_server, fast_config))
    status = json.loads(run_cli("status", str(out), "--json", check=True).stdout)
    assert status["states"]["done"] == 11 and status["states"]["failed"] == 1
    assert status["failures"][0]["cause"].startswith("HTTP 422")
    assert status["tokens"]["total_tokens"] == sum(r["total_tokens"] or 0 for r in read_output(out))
    copy = tmp_path / "copy.parquet"
    run_cli("export", status["checkpoint"], "-o", str(copy), check=True)
    assert pq.read_table(copy).equals(pq.read_table(out))


def test_a_second_run_on_a_busy_checkpoint_is_refused(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    mock_server.configure(latency=0.3)
    data = write_jsonl(tmp_path / "in.jsonl", prompts(40))
    out = tmp_path / "out.parquet"
    args = run_args(data, out, mock_server, fast_config, "--concurrency", "2")
    first = start_cli(*args)
    try:
        lock = Path(str(out) + ".checkpoint.sqlite.lock")
        wait_until(lock.exists, timeout=30)
        second = run_cli(*args)
        assert second.returncode == 2
        assert f"in use by process {first.pid}" in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=30)
    assert first.returncode == 130


def test_stream_and_no_stream_agree(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    outputs = {}
    for mode in ("--stream", "--no-stream"):
        out = tmp_path / f"out{mode}.parquet"
        result = run_cli(
            *run_args(REPO / "samples/prompts.jsonl", out, mock_server, fast_config, mode)
        )
        assert result.returncode == 0, result.stderr
        outputs[mode] = read_output(out)
    for a, b in zip(outputs["--stream"], outputs["--no-stream"], strict=True):
        for key in (
            "id",
            "status",
            "content",
            "reasoning_content",
            "tool_calls",
            "finish_reason",
            "total_tokens",
        ):
            assert a[key] == b[key], (key, a, b)
    assert all(r["ttft_s"] is not None for r in outputs["--stream"])


def test_limit_runs_the_first_rows_only(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.parquet"
    result = run_cli(
        *run_args(REPO / "samples/prompts.jsonl", out, mock_server, fast_config, "--limit", "7")
    )
    assert result.returncode == 0, result.stderr
    assert len(read_output(out)) == 7
    assert mock_server.stats()["submissions"] == 7


def test_environment_is_clean() -> None:
    assert not any(k.endswith("_API_KEY") for k in os.environ)
