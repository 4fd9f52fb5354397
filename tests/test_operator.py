"""What batchrun says to its operator: summaries, hints, status, report and export, through
the CLI as a user meets them (issue 12: every message true, every next step one command)."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import shlex
import signal
import sqlite3
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from batchrun.checkpoint import RunRecord
from batchrun.config import build_config
from batchrun.errors import ConfigError
from batchrun.lifecycle import RowState
from batchrun.monitor import RunStats
from batchrun.progress import status_line
from batchrun.report import _throughput
from batchrun.summary import next_command, program
from batchrun.testing import MockServer

from .conftest import REPO, prompts, run_cli, start_cli, write_jsonl
from .ledger import count, wait_until
from .test_e2e import run_args


def rows_of(path: Path) -> list[dict[str, Any]]:
    return pq.read_table(path).to_pylist()


# ---------------------------------------------------------------- 1. invalid rows explained


def template_config(tmp_path: Path, fast_config: Path, extra: str = "") -> Path:
    config = tmp_path / "template.toml"
    config.write_text(
        fast_config.read_text() + 'prompt_template = "Label {nope}: {prompt}"\n' + extra
    )
    return config


def test_invalid_rows_are_grouped_by_cause_in_summary_status_and_report(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    data = write_jsonl(tmp_path / "in.jsonl", prompts(5))
    out = tmp_path / "out.parquet"
    config = template_config(tmp_path, fast_config)
    result = run_cli(*run_args(data, out, mock_server, config))
    assert result.returncode == 1
    line = "invalid x5: prompt_template needs column 'nope', which this row does not have"
    assert f"{line} (e.g. in.jsonl:1)" in result.stderr
    status = run_cli("status", str(out), check=True)
    assert f"{line} (e.g. in.jsonl:1)" in status.stdout
    info = json.loads(run_cli("status", str(out), "--json", check=True).stdout)
    assert info["invalid"] == [
        {"cause": line.split(": ", 1)[1], "rows": 5, "example": "in.jsonl:1"}
    ]
    report = run_cli("report", str(out), check=True)
    assert f"{line} (e.g. in.jsonl:1)" in report.stdout
    assert mock_server.stats()["submissions"] == 0


def test_a_dry_run_fails_where_the_real_run_would(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    data = write_jsonl(tmp_path / "in.jsonl", prompts(4))
    out = tmp_path / "out.parquet"
    every_row = run_cli(
        *run_args(data, out, mock_server, template_config(tmp_path, fast_config), "--dry-run")
    )
    assert every_row.returncode == 1
    assert "every row is invalid" in every_row.stderr
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [*prompts(8), {"id": "x"}, {"id": "y"}])
    over = run_cli(
        *run_args(mixed, out, mock_server, fast_config, "--dry-run", "--max-failures", "1")
    )
    assert over.returncode == 1 and "past --max-failures 1" in over.stderr
    assert "invalid x2: no prompt, messages or body" in over.stdout
    within = run_cli(
        *run_args(mixed, out, mock_server, fast_config, "--dry-run", "--max-failures", "25%")
    )
    assert within.returncode == 0, within.stderr
    assert mock_server.stats()["submissions"] == 0
    # NVIDIA's endpoint without a key: the run would exit 3, so does its rehearsal.
    keyless = run_cli("run", str(data), "-o", str(out), "--dry-run")
    assert keyless.returncode == 3 and "no API key" in keyless.stderr


# ---------------------------------------------------------------- 2. a limit that grows


def test_raising_the_limit_goes_on_and_lowering_it_hides_rows(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    inputs = prompts(6)
    data = write_jsonl(tmp_path / "in.jsonl", inputs)
    out = tmp_path / "out.parquet"
    args = run_args(data, out, mock_server, fast_config)
    assert run_cli(*args, "--limit", "2").returncode == 0
    assert [r["id"] for r in rows_of(out)] == ["r00000", "r00001"]
    grown = run_cli(*args, "--limit", "4")
    assert grown.returncode == 0, grown.stderr
    assert [r["status"] for r in rows_of(out)] == ["ok"] * 4
    assert run_cli(*args).returncode == 0  # no limit: every row
    assert len(rows_of(out)) == 6
    assert mock_server.stats()["submissions"] == 6  # each row bought once, over three runs
    lowered = run_cli(*args, "--limit", "3")
    assert lowered.returncode == 0 and "3 rows: 3 ok" in lowered.stderr
    assert [r["id"] for r in rows_of(out)] == ["r00000", "r00001", "r00002"]
    held = "3 more rows kept past --limit 3"
    assert held in lowered.stderr and held in run_cli("status", str(out)).stdout
    assert run_cli(*args).returncode == 0
    assert len(rows_of(out)) == 6 and mock_server.stats()["submissions"] == 6


def test_a_limit_recorded_by_an_earlier_release_can_be_raised(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    """Earlier releases kept the limit in the job's identity and did not record whether
    every input row was read, nor the passthrough columns' kinds."""
    first_two = [{**p, "topic": f"t{i}"} for i, p in enumerate(prompts(2))]
    data = write_jsonl(tmp_path / "in.jsonl", [*first_two, *prompts(5)[2:]])
    out = tmp_path / "out.parquet"
    args = run_args(data, out, mock_server, fast_config)
    run_cli(*args, "--limit", "2", check=True)
    checkpoint = sqlite3.connect(f"{out}.checkpoint.sqlite")
    with checkpoint:
        checkpoint.execute("DELETE FROM meta WHERE key IN ('input_exhausted', 'extra_kinds')")
        identity = json.loads(
            checkpoint.execute("SELECT value FROM meta WHERE key = 'identity'").fetchone()[0]
        )
        checkpoint.execute(
            "UPDATE meta SET value = ? WHERE key = 'identity'",
            (json.dumps({**identity, "limit": 2}),),
        )
    checkpoint.close()
    grown = run_cli(*args, "--limit", "4")
    assert grown.returncode == 0, grown.stderr
    rows = rows_of(out)
    assert [r["topic"] for r in rows] == ["t0", "t1", None, None]  # a column of the first rows
    assert [r["status"] for r in rows] == ["ok"] * 4
    assert mock_server.stats()["submissions"] == 4


# ---------------------------------------------------------------- 3 and 4. export and status


def test_export_writes_what_run_writes_from_the_checkpoint_or_the_output_path(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    config = tmp_path / "json.toml"
    config.write_text(
        fast_config.read_text()
        + 'parse_json = true\nextract = ["label"]\nresponse_format = { type = "json_object" }\n'
    )
    data = write_jsonl(tmp_path / "in.jsonl", prompts(3))
    out = tmp_path / "out.parquet"
    assert run_cli(*run_args(data, out, mock_server, config)).returncode == 0
    by_output = tmp_path / "by-output.parquet"
    by_checkpoint = tmp_path / "by-checkpoint.parquet"
    run_cli("export", str(out), "-o", str(by_output), check=True)
    run_cli("export", f"{out}.checkpoint.sqlite", "-o", str(by_checkpoint), check=True)
    written = pq.read_table(out)
    assert {"parsed", "parse_error", "label"} <= set(written.column_names)
    assert pq.read_table(by_output).equals(written)
    assert pq.read_table(by_checkpoint).equals(written)


def test_export_refuses_to_write_over_its_checkpoint_or_where_it_cannot(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    data = write_jsonl(tmp_path / "in.jsonl", prompts(2))
    out = tmp_path / "out.parquet"
    run_cli(*run_args(data, out, mock_server, fast_config), check=True)
    checkpoint = Path(f"{out}.checkpoint.sqlite")
    for target in (checkpoint, Path(f"{checkpoint}-wal")):
        refused = run_cli("export", str(out), "-o", str(target))
        assert refused.returncode == 2 and "checkpoint's own file" in refused.stderr
    assert run_cli("status", str(out)).returncode == 0  # still a checkpoint
    nowhere = run_cli("export", str(out), "-o", "/proc/no/such.parquet")
    assert nowhere.returncode == 2 and "cannot write the output" in nowhere.stderr
    assert "Traceback" not in nowhere.stderr


def test_status_export_and_report_of_a_first_run_still_under_way(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    # Slow enough that the job is still running after status, report and export on a
    # loaded machine (it is stopped at the end): else report sees a finished output.
    mock_server.configure(latency=1.0)
    data = write_jsonl(tmp_path / "in.jsonl", prompts(40))
    out = tmp_path / "out.parquet"
    proc = start_cli(*run_args(data, out, mock_server, fast_config, "--concurrency", "2"))
    checkpoint = Path(f"{out}.checkpoint.sqlite")
    wait_until(lambda: count(checkpoint, RowState.DONE) >= 2)
    assert not out.exists()  # the output is written at the end
    status = run_cli("status", str(out))
    assert status.returncode == 0, status.stderr
    assert "40 rows:" in status.stdout and "running: process" in status.stdout
    report = run_cli("report", str(out))
    assert report.returncode == 0, report.stderr
    assert "the output is not written yet: figures read from the checkpoint" in report.stdout
    assert "moved on" not in report.stdout  # it was exported just now, not written earlier
    copy = tmp_path / "now.parquet"
    run_cli("export", str(out), "-o", str(copy), check=True)
    assert pq.read_table(copy).num_rows == 40
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    missing = run_cli("status", str(tmp_path / "nothing.parquet"))
    assert missing.returncode == 2
    assert "nothing.parquet.checkpoint.sqlite" in missing.stderr


# ---------------------------------------------------------------- 5. hints that are right


def test_the_retry_hint_names_retry_failed_once(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    data = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "x [mock:422]"}])
    out = tmp_path / "out.parquet"
    args = run_args(data, out, mock_server, fast_config)
    run_cli(*args)
    again = run_cli(*args, "--retry-failed")
    assert again.returncode == 1
    hint = next(line for line in again.stderr.splitlines() if line.startswith("retry the"))
    assert hint.count("--retry-failed") == 1
    assert "failed again: fix what the causes above say first" in again.stderr


def test_a_hint_turns_off_the_one_offs_a_config_file_sets(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    config = tmp_path / "fresh.toml"
    config.write_text(fast_config.read_text() + "fresh = true\n")  # every run starts over
    data = write_jsonl(tmp_path / "in.jsonl", [*prompts(3), {"id": "x", "prompt": "[mock:422]"}])
    out = tmp_path / "out.parquet"
    first = run_cli(*run_args(data, out, mock_server, config))
    assert first.returncode == 1
    hint = next(line for line in first.stderr.splitlines() if line.startswith("retry the"))
    printed = shlex.split(hint.split(": ", 1)[1])
    assert printed[-2:] == ["--no-fresh", "--retry-failed"]
    again = run_cli(*printed[printed.index("run") :])  # pasted: the 3 answers are kept
    assert again.returncode == 1 and "3 ok, 1 failed" in again.stderr
    assert mock_server.stats()["submissions"] == 5  # 4, then the failed row once more


def test_after_a_cost_stop_the_hint_raises_the_cap(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    config = tmp_path / "cost.toml"
    config.write_text(fast_config.read_text() + "[pricing]\nprompt = 1000\ncompletion = 1000\n")
    data = write_jsonl(tmp_path / "in.jsonl", prompts(30))
    out = tmp_path / "out.parquet"
    # max_tokens far above what the answers use: each request books ~$0.2 while a row costs
    # ~$0.01, so a cap from the cost of a row alone would stop again on the bookings of the
    # four requests in flight.
    args = run_args(
        data, out, mock_server, config, "-p", "max_tokens=200", "--concurrency", "4",
        "--max-cost", "0.5",
    )  # fmt: skip
    stopped = run_cli(*args)
    assert stopped.returncode == 1 and "cost cap" in stopped.stderr
    assert "run the same command" not in stopped.stderr  # the hint below is the command
    hint = next(line for line in stopped.stderr.splitlines() if line.startswith("raise the cap"))
    command = hint.split(": ", 1)[1]
    assert command.count("--max-cost") == 1 and "--max-cost 0.5" not in command
    cap = float(command.split("--max-cost ", 1)[1].split()[0])
    assert cap > 0.5
    printed = shlex.split(command)
    finished = run_cli(*printed[printed.index("run") :])  # the printed command, as printed
    assert finished.returncode == 0, finished.stderr


def test_hints_name_batchrun_as_it_was_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "batchrun").write_text("")
    assert program(".venv/bin/batchrun", sys.executable) == [".venv/bin/batchrun"]
    on_path = tmp_path / "batchrun"
    on_path.write_text("#!/bin/sh\n")
    on_path.chmod(0o755)
    assert program(str(on_path), sys.executable) == ["batchrun"]
    assert program("/x/batchrun/__main__.py", sys.executable)[1:] == ["-m", "batchrun"]
    command = next_command(["run", "in.jsonl", "--fresh", "--max-cost=2"], prog=["batchrun"],
                           add=("--max-cost", "5"))  # fmt: skip
    assert command == "batchrun run in.jsonl --max-cost 5"


# ---------------------------------------------------------------- 6. active time in the report


def test_throughput_counts_time_spent_running_not_the_gap_between_runs() -> None:
    runs = [
        RunRecord(1, 0.0, 10.0, 130, 10, 10),
        RunRecord(2, 1000.0, 1010.0, 0, 10, 10),
    ]
    answers = __import__("array").array("d", [*(i + 1.0 for i in range(10)),
                                              *(1001.0 + i for i in range(10))])  # fmt: skip
    figures = _throughput(answers, runs)
    assert figures is not None
    assert figures["seconds"] == 20.0 and figures["rows_per_s"] == 1.0
    assert figures["wall_seconds"] == 1010.0 and figures["runs"] == 2
    killed = [RunRecord(1, 0.0, None, None, None, None), runs[1]]  # run 1 ended by a kill
    figures = _throughput(answers, killed)
    assert figures is not None and figures["seconds"] == 20.0


def test_report_shows_running_time_over_runs(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    data = write_jsonl(tmp_path / "in.jsonl", prompts(4))
    out = tmp_path / "out.parquet"
    args = run_args(data, out, mock_server, fast_config)
    run_cli(*args, "--limit", "2", check=True)
    run_cli(*args, check=True)
    summary = json.loads(run_cli("report", str(out), "--json", check=True).stdout)
    assert summary["throughput"]["runs"] == 2
    assert summary["throughput"]["seconds"] <= summary["throughput"]["wall_seconds"]


# ---------------------------------------------------------------- 7. closed terminals
# (SIGHUP: test_e2e.py's stop-signal test)


def test_a_terminal_of_zero_size_still_gets_a_bar(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    """A pseudo-terminal reports 0 x 0 until someone sets its size (as `script` and some CI
    runners leave it): tqdm then draws a bar of no width, and hides it below a screen of no
    lines. The run's stderr is such a terminal here."""
    mock_server.configure(latency=0.1)
    data = write_jsonl(tmp_path / "in.jsonl", prompts(12))
    args = run_args(data, tmp_path / "out.parquet", mock_server, fast_config, "--concurrency", "2")
    main, side = pty.openpty()
    assert os.get_terminal_size(side) == (0, 0)
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchrun", *args], stderr=side, stdout=subprocess.DEVNULL
    )
    os.close(side)
    drawn = b""
    with contextlib.suppress(OSError):  # EIO once the run has closed its end
        while chunk := os.read(main, 65536):
            drawn += chunk
    os.close(main)
    assert proc.wait(timeout=60) == 0
    frames = drawn.decode(errors="replace").split("batchrun: 12 rows")[0]
    assert "12/12" in frames and "row/s" in frames, frames


# ---------------------------------------------------------------- 8. logs get progress


def test_cron_logs_get_a_status_line_every_interval(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    mock_server.configure(latency=0.1)
    data = write_jsonl(tmp_path / "in.jsonl", prompts(20))
    out = tmp_path / "out.parquet"
    result = run_cli(
        *run_args(
            data, out, mock_server, fast_config, "--concurrency", "1", "--progress-interval", "0.3"
        )  # fmt: skip
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if " of 20 rows" in line]
    assert len(lines) >= 2
    assert "ok" in lines[0] and "rows/s" in lines[0] and "tokens" in lines[0]


def test_a_status_line_says_everything_a_log_needs() -> None:
    stats = RunStats(todo=200, ok=90, failed=10, pending_ids=3, prompt_tokens=900,
                     completion_tokens=100, started=0.0)  # fmt: skip
    line = status_line(stats, None, now=50.0)
    assert line.startswith("batchrun: 100 of 200 rows (50.0%): 90 ok, 10 failed, 3 awaiting")
    assert "2.0 rows/s, 50s left; 1,000 tokens" in line


# ---------------------------------------------------------------- 9 and 10


def test_make_demo_shows_the_beginning_of_each_answer() -> None:
    demo = (REPO / "Makefile").read_text().split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    assert ".str.slice(0, 48)" in demo and "slice(-" not in demo


def test_a_mismatch_shows_old_and_new_values_and_the_way_to_keep_paid_answers(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    data = write_jsonl(tmp_path / "in.jsonl", prompts(2))
    out = tmp_path / "out.parquet"
    args = run_args(data, out, mock_server, fast_config)
    run_cli(*args, check=True)
    changed = run_cli(*args, "-p", "temperature=0.1")
    assert changed.returncode == 2
    assert "body.temperature: 0.6 -> 0.1" in changed.stderr
    assert f"--fresh --reuse {out}" in changed.stderr
    reused = run_cli(*args, "--fresh", "--reuse", str(out))
    assert reused.returncode == 0 and "2 rows answered from --reuse" in reused.stderr


# ---------------------------------------------------------------- also: sweeps and config


def test_a_failed_sweep_gate_names_itself_and_the_causes(
    mock_server: MockServer, tmp_path: Path
) -> None:
    from .test_labelling import sweep_file

    junit = tmp_path / "junit.xml"
    run_cli("sweep", str(sweep_file(tmp_path, [0.0, 1.5])), "--base-url",
            mock_server.base_url, "--junit-xml", str(junit))  # fmt: skip
    failures = ET.parse(junit).getroot().iter("failure")
    failure = next(failures)
    assert failure.get("type") == "max_failure_rate"
    assert "HTTP 422" in (failure.get("message") or "")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"temprature": 0.5}, "temprature is not a field of this endpoint's requests; "
         "did you mean 'temperature'?"),
        ({"temperature": "hot"}, "temperature must be a number, got 'hot'"),
        ({"temperature": 1.5}, "temperature must be between 0 and 1 (NVIDIA's API reference), "
         "got 1.5"),
        ({"max_tokens": 0}, "max_tokens must be >= 1, got 0"),
        ({"chat_template_kwargs": {"enable_thinking": "yes"}},
         "chat_template_kwargs.enable_thinking must be true or false, got 'yes'"),
        ({"chat_template_kwargs": {"enable_thinkng": True}}, "chat_template_kwargs.enable_thinkng "
         "is not a field of this endpoint's requests; did you mean 'enable_thinking'?"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("source", ["command line", "file"])
def test_request_fields_are_checked_against_nvidias_reference(
    params: dict[str, Any], message: str, source: str
) -> None:
    """A field is named where it was set: `-p NAME`, or the file and its [params] table."""
    with pytest.raises(ConfigError) as info:
        if source == "file":
            build_config({"params": params}, source="job.toml")
        else:
            build_config(cli_values={"params": params})
    where = "job.toml: [params] " if source == "file" else "-p "
    assert str(info.value) == where + message


def test_other_servers_keep_their_own_fields_and_ranges() -> None:
    local = {"base_url": "http://127.0.0.1:8000/v1"}
    cfg = build_config(cli_values={**local, "params": {"min_p": 0.1, "temperature": 1.5}})
    assert cfg.params == {"min_p": 0.1, "temperature": 1.5}
    with pytest.raises(ConfigError, match="^-p temperature must be a number"):
        build_config(cli_values={**local, "params": {"temperature": "hot"}})


def test_a_pricing_typo_is_named_with_the_suggestion() -> None:
    with pytest.raises(ConfigError, match=r"pricing.promt is not a price .*did you mean 'prompt'"):
        build_config({"pricing": {"promt": 1.0}})
    with pytest.raises(ConfigError, match=r"pricing.completion is missing"):
        build_config({"pricing": {"prompt": 0.6}})  # not free: forgotten


def test_a_key_given_where_its_variable_name_goes_is_never_echoed(tmp_path: Path) -> None:
    secret = "nvapi-SUPERSECRET123"
    data = write_jsonl(tmp_path / "in.jsonl", prompts(1))
    out = tmp_path / "out.parquet"
    on_the_line = run_cli("run", str(data), "-o", str(out), "--api-key-env", secret)
    config = tmp_path / "key.toml"
    config.write_text(f'api_key_env = "{secret}"\n')
    in_a_file = run_cli("run", str(data), "-o", str(out), "-c", str(config))
    for result in (on_the_line, in_a_file):
        assert result.returncode == 2
        assert "takes the name of an environment variable" in result.stderr
        assert "SUPERSECRET" not in result.stderr + result.stdout


def test_report_takes_an_output_in_openai_batch_format(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    data = write_jsonl(tmp_path / "in.jsonl", prompts(3))
    out = tmp_path / "out.jsonl"
    args = run_args(data, out, mock_server, fast_config, "--output-format", "openai-jsonl")
    run_cli(*args, check=True)
    report = run_cli("report", str(out))
    assert report.returncode == 0, report.stderr
    assert "the output is not Parquet: figures read from the checkpoint" in report.stdout
    assert run_cli("status", str(out)).returncode == 0
