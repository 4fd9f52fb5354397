"""Fail early, before spending: every mistake that can be seen before the first request is
reported (exit 2, naming what is wrong and where) with nothing sent. Plus the lock and the
second Ctrl-C."""

from __future__ import annotations

import os
import shlex
import signal
import sqlite3
from pathlib import Path

import pytest

from batchrun.checkpoint import SCHEMA_VERSION, Checkpoint
from batchrun.testing import MockServer

from .conftest import prompts, read_stderr_until, run_cli, start_cli, write_jsonl
from .ledger import wait_until
from .test_e2e import assert_rows_answered, read_output, run_args

pytestmark = pytest.mark.slow


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "in.jsonl", prompts(5))


def nothing_sent(server: MockServer) -> None:
    assert server.stats()["submissions"] == 0


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_folder(
    mock_server: MockServer, fast_config: Path, data: Path, tmp_path: Path
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = run_cli(*run_args(data, locked / "out.parquet", mock_server, fast_config))
    assert result.returncode == 2 and "cannot write the output" in result.stderr
    nothing_sent(mock_server)


def test_output_path_under_a_file(
    mock_server: MockServer, fast_config: Path, data: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    result = run_cli(*run_args(data, blocker / "out.parquet", mock_server, fast_config))
    assert result.returncode == 2 and "cannot write the output" in result.stderr
    nothing_sent(mock_server)


def test_checkpoint_from_a_newer_version(
    mock_server: MockServer, fast_config: Path, data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.parquet"
    checkpoint = Checkpoint.create(Path(str(out) + ".checkpoint.sqlite"))
    checkpoint.set_meta("schema_version", str(SCHEMA_VERSION + 1))
    checkpoint.close()
    result = run_cli(*run_args(data, out, mock_server, fast_config))
    assert result.returncode == 2 and "newer batchrun" in result.stderr
    nothing_sent(mock_server)


def test_a_foreign_file_as_checkpoint_is_refused_and_left_alone(
    mock_server: MockServer, fast_config: Path, data: Path, tmp_path: Path
) -> None:
    foreign = tmp_path / "mine.sqlite"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    before = foreign.read_bytes()
    result = run_cli(
        *run_args(
            data, tmp_path / "o.parquet", mock_server, fast_config, "--checkpoint", str(foreign)
        )
    )
    assert result.returncode == 2 and "not a batchrun checkpoint" in result.stderr
    assert foreign.read_bytes() == before
    nothing_sent(mock_server)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rpm", "-1"], "rpm must be a whole number"),
        (
            ["--hold-seconds", "4000"],
            "hold_seconds must be a whole number of seconds from 1 to 3600",
        ),
        (["--max-failures", "lots"], "max_failures must be a number of rows"),
        (["--status-url", "{base_url}/status"], "status_url must contain {request_id}"),
        (["--base-url", "ftp://example.com/v1"], "base_url must be an http:// or https:// URL"),
        (["--concurrency", "-1"], "concurrency must be a whole number >= 1"),
    ],
)
def test_bad_flags_name_the_setting(
    args: list[str],
    message: str,
    mock_server: MockServer,
    fast_config: Path,
    data: Path,
    tmp_path: Path,
) -> None:
    result = run_cli(*run_args(data, tmp_path / "o.parquet", mock_server, fast_config), *args)
    assert result.returncode == 2
    assert message in result.stderr
    nothing_sent(mock_server)


def test_bad_config_file_value_names_file_and_key(
    mock_server: MockServer, data: Path, tmp_path: Path
) -> None:
    config = tmp_path / "job.toml"
    config.write_text("rpm = 40\nconcurency = 4\n")
    result = run_cli(
        "run",
        str(data),
        "-o",
        str(tmp_path / "o.parquet"),
        "--base-url",
        mock_server.base_url,
        "-c",
        str(config),
    )
    assert result.returncode == 2
    assert "job.toml: unknown key 'concurency' (did you mean 'concurrency'?)" in result.stderr
    config.write_text('timeout = "soon"\n')
    result = run_cli(
        "run",
        str(data),
        "-o",
        str(tmp_path / "o.parquet"),
        "--base-url",
        mock_server.base_url,
        "-c",
        str(config),
    )
    assert (
        result.returncode == 2
        and "job.toml: timeout must be a number > 0, got 'soon'" in result.stderr
    )
    nothing_sent(mock_server)


def test_bad_request_field_names_the_file_and_table_or_the_flag(
    mock_server: MockServer, fast_config: Path, data: Path, tmp_path: Path
) -> None:
    """A body field is named where the user set it: the config file's [params] table, or
    `-p` on the command line (never a `params.` the user did not write)."""
    config = tmp_path / "job.toml"
    config.write_text(fast_config.read_text() + '[params]\ntop_p = "high"\n')
    result = run_cli(*run_args(data, tmp_path / "o.parquet", mock_server, config))
    assert result.returncode == 2
    assert f"error: {config}: [params] top_p must be a number, got 'high'\n" in result.stderr
    args = run_args(data, tmp_path / "o.parquet", mock_server, fast_config, "-p", "top_p=high")
    result = run_cli(*args)
    assert result.returncode == 2
    assert "error: -p top_p must be a number, got 'high'\n" in result.stderr
    nothing_sent(mock_server)


def test_missing_input_and_missing_key(tmp_path: Path) -> None:
    result = run_cli("run", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "o.parquet"))
    assert result.returncode == 3 and "NVIDIA_API_KEY" in result.stderr  # the key is checked first
    result = run_cli(
        "run",
        str(tmp_path / "nope.jsonl"),
        "-o",
        str(tmp_path / "o.parquet"),
        env={"NVIDIA_API_KEY": "k"},
    )
    assert result.returncode == 2 and "nope.jsonl: input not found" in result.stderr


def test_stale_lock_from_a_dead_process_is_taken_over(
    mock_server: MockServer, fast_config: Path, data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.parquet"
    lock = Path(str(out) + ".checkpoint.sqlite.lock")
    lock.write_text("999999")  # left behind by a run that was killed: nobody holds it
    result = run_cli(*run_args(data, out, mock_server, fast_config))
    assert result.returncode == 0, result.stderr
    assert not lock.exists()


def test_second_ctrl_c_exits_at_once_and_the_checkpoint_is_consistent(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    mock_server.configure(latency=5.0)  # requests in flight will not finish within the test
    inputs = prompts(20)
    data = write_jsonl(tmp_path / "in.jsonl", inputs)
    out = tmp_path / "out.parquet"
    args = run_args(data, out, mock_server, fast_config, "--concurrency", "4", "--grace", "60")
    proc = start_cli(*args, "--fresh")
    wait_until(lambda: mock_server.stats()["submissions"] >= 4)
    proc.send_signal(signal.SIGINT)
    first = read_stderr_until(proc, "no new requests")  # the first one was handled
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=10)  # not the 60 s grace
    stderr = first + rest
    assert proc.returncode == 130
    assert "again: exiting now" in stderr
    # The way back is printed, less the --fresh that would discard what was done.
    hint = stderr.split("resume with: ", 1)[1].splitlines()[0]
    assert shlex.split(hint)[-len(args) :] == args and "--fresh" not in hint
    checkpoint = Path(str(out) + ".checkpoint.sqlite")
    conn = sqlite3.connect(checkpoint)  # SQLite's own check, under batchrun's reading
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    mock_server.configure(latency=0.0)
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert_rows_answered(read_output(out), inputs)


def test_fresh_with_reuse_of_the_same_checkpoint_is_refused(
    mock_server: MockServer, fast_config: Path, data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.parquet"
    run_cli(*run_args(data, out, mock_server, fast_config), check=True)
    checkpoint = Path(str(out) + ".checkpoint.sqlite")
    result = run_cli(
        *run_args(data, out, mock_server, fast_config, "--fresh", "--reuse", str(checkpoint))
    )
    assert result.returncode == 2 and "which --fresh would delete" in result.stderr
    assert checkpoint.exists()
