"""`--engine ray` end to end: a private local Ray cluster per run, against the mock endpoint.

Skipped only when Ray is not installed (`pip install 'batchrun[ray]'`; CI installs it).
"""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

import pytest

from batchrun.testing import MockServer

from .conftest import prompts, run_cli, start_cli, write_jsonl
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
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        try:
            conn = sqlite3.connect(f"file:{checkpoint}?mode=ro", uri=True, timeout=5)
            done = conn.execute("SELECT count(*) FROM items WHERE state='done'").fetchone()[0]
            conn.close()
        except sqlite3.Error:
            continue
        if done >= 60:
            break
    assert proc.poll() is None, "the job ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    before = mock_server.stats()["prompts"]
    conn = sqlite3.connect(f"file:{checkpoint}?mode=ro", uri=True, timeout=5)
    finished_before = {r[0] for r in conn.execute("SELECT row_id FROM items WHERE state='done'")}
    known = dict(conn.execute("SELECT row_id, request_id FROM items WHERE state='polling'"))
    conn.close()
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
