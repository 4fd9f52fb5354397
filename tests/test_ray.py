"""`--engine ray` end to end: a private local Ray cluster per run, against the mock endpoint.

Skipped only when Ray is not installed (`pip install 'batchrun[ray]'`; CI installs it).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from batchrun.lifecycle import RowState
from batchrun.testing import MockServer

from .conftest import prompts, run_cli, start_cli, write_jsonl
from .ledger import count, row_states, wait_until
from .test_e2e import assert_rows_answered, read_output, run_args

pytest.importorskip("ray")
pytestmark = pytest.mark.slow
RAY = ["--engine", "ray", "--ray-address", "local"]


def test_a_1000_row_job_with_202s_and_faults_matches_the_local_engine(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    mock_server.configure(p202=0.3, pending_polls=2, p500=0.03, p_drop=0.02, latency=0.005)
    inputs = prompts(1000)
    data = write_jsonl(tmp_path / "in.jsonl", inputs)
    on_ray = tmp_path / "ray.parquet"
    result = run_cli(
        *run_args(data, on_ray, mock_server, fast_config, *RAY, "--workers", "2"), timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "1000 rows: 1000 ok" in result.stderr
    assert_rows_answered(read_output(on_ray), inputs)
    stats = mock_server.stats()
    assert stats["accepted"] > 100 and stats["codes"].get("500", 0) > 0  # the faults happened
    assert all(p["billed"] == 1 for p in stats["prompts"].values()), "a request was billed twice"
    local = tmp_path / "local.parquet"
    run_cli(*run_args(data, local, mock_server, fast_config), check=True)
    same = (
        "id",
        "status",
        "content",
        "reasoning_content",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
    )
    ray_rows, local_rows = read_output(on_ray), read_output(local)
    assert [tuple(r[k] for k in same) for r in ray_rows] == [
        tuple(r[k] for k in same) for r in local_rows
    ]


def test_killing_the_driver_and_running_again_finishes_the_job(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    mock_server.configure(p202=0.5, pending_polls=3, latency=0.05, latency_jitter=0.05)
    inputs = prompts(400)
    data = write_jsonl(tmp_path / "in.jsonl", inputs)
    out = tmp_path / "out.parquet"
    checkpoint = Path(str(out) + ".checkpoint.sqlite")
    args = run_args(
        data, out, mock_server, fast_config, *RAY, "--workers", "2", "--concurrency", "8"
    )
    proc = start_cli(*args)
    wait_until(
        lambda: proc.poll() is not None or count(checkpoint, RowState.DONE) >= 60, timeout=120
    )
    assert proc.poll() is None, "the job ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    before = mock_server.stats()["prompts"]
    states = row_states(checkpoint)
    finished_before = {row for row, (state, _) in states.items() if state is RowState.DONE}
    known = {row: rid for row, (state, rid) in states.items() if state is RowState.POLLING}
    assert finished_before
    result = run_cli(*args, timeout=300)
    assert result.returncode == 0, result.stderr
    assert_rows_answered(read_output(out), inputs)
    after = mock_server.stats()["prompts"]
    prompt_of = {r["id"]: r["prompt"] for r in inputs}
    for row in finished_before:  # finished rows are never bought again
        assert after[prompt_of[row]]["submissions"] == before[prompt_of[row]]["submissions"]
    handed_out = set(mock_server.stats()["polled_ids"])
    for row, request_id in known.items():  # known ids are polled, not submitted again ...
        resent = after[prompt_of[row]]["submissions"] > before[prompt_of[row]]["submissions"]
        # ... unless the answer was in transit when the driver died (consume-once)
        assert not resent or request_id in handed_out, row


def test_the_rate_limit_holds_across_all_workers(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    rpm = 600  # 10 a second, a burst of 30: two workers sharing it may not send more
    inputs = prompts(80)
    data = write_jsonl(tmp_path / "in.jsonl", inputs)
    out = tmp_path / "out.parquet"
    result = run_cli(
        *run_args(data, out, mock_server, fast_config, *RAY, "--workers", "2", "--rpm", str(rpm)),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert_rows_answered(read_output(out), inputs)
    times = sorted(mock_server.stats()["submit_times"])
    assert len(times) == 80
    burst = 30
    for i, start in enumerate(times):
        for width in (1.0, 2.0, 4.0):
            in_window = sum(1 for t in times[i:] if t < start + width)
            assert in_window <= burst + width * rpm / 60 + 1, (width, in_window)
    # 80 requests at 10/s after a burst of 30 take at least 5 s
    assert times[-1] - times[0] >= (80 - burst) / (rpm / 60) - 0.5


def test_max_cost_holds_across_workers_and_row_events_reach_the_log(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    # $1,000 per million tokens and max_tokens 10: each request books about $0.02 at worst,
    # so a $0.20 cap stops the job after a handful of rows, whichever worker sends them.
    inputs = prompts(40)
    data = write_jsonl(tmp_path / "in.jsonl", inputs)
    out = tmp_path / "out.parquet"
    events = tmp_path / "events.jsonl"
    config = tmp_path / "cost.toml"
    config.write_text(
        fast_config.read_text() + "max_cost = 0.2\n[pricing]\nprompt = 1000\ncompletion = 1000\n"
    )
    args = run_args(
        data, out, mock_server, config, *RAY, "--workers", "2", "-p", "max_tokens=10",
        "--log-json", str(events),
    )  # fmt: skip
    result = run_cli(*args, timeout=300)
    assert result.returncode == 1, result.stderr
    assert "cost cap" in result.stderr and "--max-cost $0.2" in result.stderr
    rows = read_output(out)
    done = [r for r in rows if r["status"] == "ok"]
    assert 0 < len(done) < len(inputs)
    spent = sum(r["prompt_tokens"] + r["completion_tokens"] for r in done) * 1000 / 1e6
    assert spent <= 0.2
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    kinds = [line["event"] for line in lines]
    assert kinds[0] == "job_start" and kinds[-1] == "job_end"
    assert sorted(e["id"] for e in lines if e["event"] == "row_done") == sorted(
        r["id"] for r in done
    )
    assert any(e["event"] == "job_stop" and "cost cap" in e["reason"] for e in lines)
    # raising the cap finishes the job, and nothing finished is bought again
    before = mock_server.stats()["prompts"]
    raised = [*args, "--max-cost", "10"]
    assert run_cli(*raised, timeout=300).returncode == 0
    after = mock_server.stats()["prompts"]
    assert all(after[r["content"][len("Answer to: ") :]]["submissions"] == 1 for r in done)
    assert len(after) == len(inputs) and before.keys() <= after.keys()


def test_a_resume_on_ray_does_not_upload_an_image_again(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    pics = tmp_path / "pics"
    pics.mkdir()
    (pics / "large.jpg").write_bytes(b"\xff\xd8" + b"x" * 299_998)  # over the inline limit
    rows = [
        {"id": "first", "prompt": "One.", "images": ["pics/large.jpg"]},
        {"id": "second", "prompt": "Two. [mock:422x1]", "images": ["pics/large.jpg"]},
    ]
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.parquet"
    config = tmp_path / "assets.toml"
    config.write_text(
        fast_config.read_text() + 'asset_upload = true\nassets_url = "{origin}/v2/nvcf/assets"\n'
    )
    args = run_args(data, out, mock_server, config, *RAY, "--workers", "2", "--concurrency", "1")
    assert run_cli(*args, timeout=300).returncode == 1  # the second row was refused once
    assert mock_server.stats()["asset_uploads"] == 1
    result = run_cli(*args, "--retry-failed", timeout=300)  # a new run, other workers
    assert result.returncode == 0, result.stderr
    assert [r["status"] for r in read_output(out)] == ["ok", "ok"]
    assert mock_server.stats()["asset_uploads"] == 1  # the id came from the checkpoint


def test_answers_that_fail_the_schema_are_asked_again_on_ray(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    from .test_validation import job_config

    data = write_jsonl(
        tmp_path / "in.jsonl",
        [{"id": f"r{i}", "prompt": f"Row {i} is great [mock:offschemax1]"} for i in range(8)],
    )
    out = tmp_path / "out.parquet"
    config = job_config(tmp_path, fast_config)
    result = run_cli(*run_args(data, out, mock_server, config, *RAY, "--no-thinking"), timeout=300)
    assert result.returncode == 0, result.stderr
    rows = read_output(out)
    assert all(r["status"] == "ok" and r["validation_attempts"] == 2 for r in rows)
    status = json.loads(run_cli("status", "--json", str(out)).stdout)
    assert status["rejected"] == {"rows": 8, "answers": 8}
    assert mock_server.stats()["submissions"] == 16
