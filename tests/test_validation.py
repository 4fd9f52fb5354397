"""Answers validated against a JSON Schema, retried with feedback: the checker and the
feedback turn (pure), the lifecycle move, the settings, and whole jobs against the mock
endpoint, which answers off-schema first when a prompt carries `[mock:offschemaxN]`."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from batchrun.config import build_config, load_toml
from batchrun.errors import ConfigError
from batchrun.factory import new_transport
from batchrun.job import run_job
from batchrun.lifecycle import IllegalTransition, Lifecycle, RowState, WorkItem
from batchrun.records import Completion
from batchrun.testing import MockServer, MockSettings
from batchrun.validation import (
    FEEDBACK,
    INVALID_ANSWER,
    AnswerCheck,
    output_cells,
    schema_of,
    with_feedback,
)

from .conftest import REPO, billed_when_quiet, run_cli, write_jsonl
from .test_upgrade import Redirect

LABEL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "answer": {"type": "string"},
    },
    "required": ["label"],
}
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "label", "schema": LABEL_SCHEMA}}


# ---------------------------------------------------------------- the checker


def test_a_valid_answer_has_no_problem_and_fenced_json_is_read() -> None:
    check = AnswerCheck(LABEL_SCHEMA)
    assert check.problem('{"label": "positive"}') is None
    assert check.problem('Sure:\n```json\n{"label": "neutral"}\n```') is None


def test_the_problem_says_where_and_what() -> None:
    check = AnswerCheck(LABEL_SCHEMA)
    assert check.problem('{"label": 0}') == "at $.label: 0 is not of type 'string'"
    assert check.problem('{"answer": "x"}') == "at $: 'label' is a required property"
    assert check.problem("no JSON here").startswith("not JSON (")
    assert check.problem(None) == "not JSON (empty answer)"
    long = AnswerCheck({"type": "string", "maxLength": 1}).problem(json.dumps("x" * 2000))
    assert long is not None and len(long) <= 500


def test_feedback_extends_the_conversation_with_the_answer_and_the_error() -> None:
    messages = json.dumps([{"role": "user", "content": "Label: great"}])
    extended = json.loads(with_feedback(messages, '{"label": 0}', "at $.label: wrong"))
    assert extended == [
        {"role": "user", "content": "Label: great"},
        {"role": "assistant", "content": '{"label": 0}'},
        {"role": "user", "content": FEEDBACK.format(problem="at $.label: wrong")},
    ]


def test_which_schema_a_job_validates_against() -> None:
    assert schema_of(None, None, RESPONSE_FORMAT) == LABEL_SCHEMA
    assert schema_of({"type": "object"}, None, RESPONSE_FORMAT) == {"type": "object"}
    assert schema_of(None, None, {"type": "json_object"}) is None
    assert schema_of(None, None, None) is None


def test_output_cells_count_answers_checked_and_keep_the_last_error() -> None:
    states = [RowState.DONE, RowState.DONE, RowState.FAILED, RowState.FAILED, RowState.PENDING]
    attempts, errors = output_cells(
        states,
        [None, 1, 2, None, 1],
        [None, "at $.label: was 0", "at $: earlier", None, "at $: pending"],
        [None, None, f"{INVALID_ANSWER}: at $.label: last", "HTTP 500: boom", None],
    )
    assert attempts == [1, 2, 3, None, 1]
    assert errors == [None, "at $.label: was 0", "at $.label: last", None, "at $: pending"]


# ---------------------------------------------------------------- the lifecycle move


class _Sink:
    def __init__(self) -> None:
        self.moves: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        return lambda change: self.moves.append(change)


def test_a_rejected_answer_sends_the_row_again_with_its_conversation() -> None:
    sink = _Sink()
    rows = Lifecycle(sink)  # type: ignore[arg-type]
    item = WorkItem(idx=3, row_id="r3", messages="[]")
    rows.submit(item, 1.0)
    rows.reject(item, Completion(content="{}", prompt_tokens=4), "at $: bad", '["more"]')
    assert item.state is RowState.INFLIGHT and item.rejected == 1 and item.messages == '["more"]'
    rejected = sink.moves[-1]
    assert (rejected.idx, rejected.rejected, rejected.error) == (3, 1, "at $: bad")
    rows.submit(item, 2.0)  # and it may be sent again
    with pytest.raises(IllegalTransition):
        rows.reject(WorkItem(idx=4, row_id="r4", messages="[]"), Completion(), "x", "[]")


# ---------------------------------------------------------------- settings


def test_schema_settings_are_checked_and_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="schema: not a valid JSON Schema"):
        build_config({}, {"schema": {"type": "no-such-type"}})
    with pytest.raises(ConfigError, match="max_validation_retries must be a whole number"):
        build_config({}, {"max_validation_retries": -1})
    with pytest.raises(ConfigError, match="schema_file .*: not found"):
        build_config({}, {"schema_file": str(tmp_path / "none.json")})
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="a JSON Schema is an object"):
        build_config({}, {"schema_file": str(bad)})
    good = tmp_path / "label.schema.json"
    good.write_text(json.dumps(LABEL_SCHEMA))
    config = tmp_path / "job.toml"
    config.write_text('schema_file = "label.schema.json"\nmax_validation_retries = 1\n')
    cfg = build_config(load_toml(config), {})
    assert cfg.answer_schema() == LABEL_SCHEMA and cfg.max_validation_retries == 1
    with pytest.raises(ConfigError, match="give schema or schema_file, not both"):
        build_config(load_toml(config), {"schema": {"type": "object"}})


# ---------------------------------------------------------------- whole jobs


@pytest.fixture
def slow_server() -> Iterator[MockServer]:
    with MockServer(MockSettings(seed=11, latency=0.05)) as server:
        yield server


def job_config(tmp_path: Path, fast_config: Path, retries: int = 2) -> Path:
    config = tmp_path / "job.toml"
    config.write_text(
        fast_config.read_text()
        + f"max_validation_retries = {retries}\n"
        + '[response_format]\ntype = "json_schema"\n'
        + '[response_format.json_schema]\nname = "label"\n'
        + '[response_format.json_schema.schema]\ntype = "object"\nrequired = ["label"]\n'
        + '[response_format.json_schema.schema.properties.label]\ntype = "string"\n'
    )
    return config


def rows_of(path: Path) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in pq.read_table(path).to_pylist()}


def words(text: str) -> int:
    return len(text.split())


def test_an_off_schema_answer_is_asked_again_and_every_answer_is_counted(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    prompts = {
        "a": "I love it [mock:offschemax1]",
        "b": "It is broken [mock:offschemax2]",
        "c": "Works well",
    }
    source = write_jsonl(
        tmp_path / "in.jsonl", [{"id": k, "prompt": p} for k, p in prompts.items()]
    )
    out = tmp_path / "out.parquet"
    config = job_config(tmp_path, fast_config)
    result = run_cli(
        "run", str(source), "-o", str(out), "--base-url", mock_server.base_url, "-c", str(config),
        "--no-thinking", "--parse-json", "--extract", "label",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "3 answers did not match the schema and were asked again" in result.stderr
    rows = rows_of(out)
    assert {k: r["validation_attempts"] for k, r in rows.items()} == {"a": 2, "b": 3, "c": 1}
    assert rows["a"]["validation_error"] == "at $.label: 0 is not of type 'string'"
    assert rows["c"]["validation_error"] is None
    assert {k: r["label"] for k, r in rows.items()} == {
        "a": "positive",
        "b": "negative",
        "c": "positive",
    }
    assert all(r["status"] == "ok" and r["parse_error"] is None for r in rows.values())
    # The retry carried the rejected answer and the error: the mock's prompt count says so.
    assert rows["a"]["prompt_tokens"] > words(prompts["a"]) + words(FEEDBACK)
    # Every answer's tokens are in the totals: the rows' own, plus each rejected answer's
    # (asked with the conversation so far, answered with a numeric label).
    status = json.loads(run_cli("status", "--json", str(out)).stdout)
    tokens = status["tokens"]
    rejected_completion = sum(
        words(json.dumps({"label": 0, "answer": f"Answer to: {prompts[k]}"})) * n
        for k, n in (("a", 1), ("b", 2))
    )
    own_completion = sum(r["completion_tokens"] for r in rows.values())
    assert tokens["bought_completion_tokens"] == own_completion + rejected_completion
    assert tokens["bought_prompt_tokens"] > sum(r["prompt_tokens"] for r in rows.values())
    stats = mock_server.stats()
    assert stats["submissions"] == 6 and stats["resubmitted_while_pending"] == 0
    assert status["rejected"] == {"rows": 2, "answers": 3}
    assert (
        "3 answers did not match the schema; 2 rows asked again"
        in run_cli("status", str(out)).stdout
    )
    report = run_cli("report", "--json", str(out))
    assert json.loads(report.stdout)["validation"] == {
        "rows_checked": 3, "rows_asked_again": 2, "answers_rejected": 3
    }  # fmt: skip
    assert (
        "3 rows checked against the schema, 2 asked again, 3 answers rejected"
        in run_cli("report", str(out)).stdout
    )


def test_a_row_that_never_validates_fails_with_its_last_answer_and_can_be_retried(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    source = write_jsonl(
        tmp_path / "in.jsonl",
        [{"id": "bad", "prompt": "Great [mock:offschemax3]"}, {"id": "good", "prompt": "Great"}],
    )
    out = tmp_path / "out.parquet"
    config = job_config(tmp_path, fast_config, retries=1)
    args = [
        "run",
        str(source),
        "-o",
        str(out),
        "--base-url",
        mock_server.base_url,
        "-c",
        str(config),
    ]
    result = run_cli(*args, "--no-thinking")
    assert result.returncode == 1, result.stderr
    bad = rows_of(out)["bad"]
    assert bad["status"] == "failed" and bad["validation_attempts"] == 2
    assert bad["error"] == f"{INVALID_ANSWER}: at $.label: 0 is not of type 'string'"
    assert json.loads(bad["content"])["label"] == 0  # the last answer is kept
    assert INVALID_ANSWER in result.stderr  # the summary groups it as a failure cause
    report = json.loads(run_cli("report", "--json", str(out)).stdout)
    assert report["validation"]["answers_rejected"] == 2  # both of the failed row's answers
    spent = json.loads(run_cli("status", "--json", str(out)).stdout)["tokens"]
    # --retry-failed starts the conversation afresh: with three retries allowed now, the
    # fourth answer is good; what the failed row bought before stays counted.
    more = job_config(tmp_path, fast_config, retries=3)
    again = run_cli(*args[:-2], "-c", str(more), "--no-thinking", "--retry-failed")
    assert again.returncode == 0, again.stderr
    bad = rows_of(out)["bad"]
    assert bad["status"] == "ok" and bad["validation_attempts"] == 4
    now = json.loads(run_cli("status", "--json", str(out)).stdout)["tokens"]
    assert now["bought_completion_tokens"] > spent["bought_completion_tokens"]
    assert mock_server.stats()["submissions"] == 3 + 4


def test_a_kill_during_retries_resumes_without_buying_a_kept_answer_again(
    slow_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    n = 16
    source = write_jsonl(
        tmp_path / "in.jsonl",
        [{"id": f"r{i:02d}", "prompt": f"Row {i} is great [mock:offschemax1]"} for i in range(n)],
    )
    out = tmp_path / "out.parquet"
    config = job_config(tmp_path, fast_config)
    args = [
        "run", str(source), "-o", str(out), "--base-url", slow_server.base_url, "-c", str(config),
        "--no-thinking", "--concurrency", "2",
    ]  # fmt: skip
    killed = run_cli(*args, env={"BATCHRUN_CRASH_AT": "commit:6"})
    assert killed.returncode == -9, killed.stderr
    ckpt = sqlite3.connect(f"{out}.checkpoint.sqlite")
    rejected = {i for (i,) in ckpt.execute("SELECT idx FROM validations")}
    done = {i for (i,) in ckpt.execute("SELECT idx FROM items WHERE state = 14")}
    ckpt.close()
    assert rejected, "no rejected answer was committed before the kill"
    # Answers a row has on disk: its rejected one, and its good one when done.
    kept = sum((i in rejected) + (i in done) for i in range(n))
    billed = billed_when_quiet(slow_server)
    resumed = run_cli(*args)
    assert resumed.returncode == 0, resumed.stderr
    rows = rows_of(out)
    assert all(r["status"] == "ok" and r["validation_attempts"] == 2 for r in rows.values())
    # Each row needs two answers; the resume bought exactly those not on disk.
    assert slow_server.stats()["billed"] - billed == 2 * n - kept
    assert slow_server.stats()["resubmitted_while_pending"] == 0


def test_a_checkpoint_of_the_previous_release_resumes_and_gains_the_table(
    mock_server: MockServer, tmp_path: Path
) -> None:
    shutil.copytree(REPO / "tests" / "fixtures" / "checkpoint-v3", tmp_path / "v3")
    config = tmp_path / "v3" / "job.toml"
    checkpoint = tmp_path / "v3" / "out" / "job.parquet.checkpoint.sqlite"
    cfg = build_config(load_toml(config), {"progress": False})
    origin = mock_server.base_url.rsplit("/v1", 1)[0]
    redirect = Redirect(new_transport(cfg, None), "http://127.0.0.1:18232", origin)
    result = run_job(cfg, transport=redirect)
    assert result.exit_code == 0
    rows = rows_of(tmp_path / "v3" / "out" / "job.parquet")
    assert sorted(rows) == [f"r{i}" for i in range(6)]
    assert all(r["status"] == "ok" for r in rows.values())
    assert mock_server.stats()["submissions"] == 3  # only the rows past the old limit
    conn = sqlite3.connect(checkpoint)
    try:
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        assert version == ("5",)
        # The table the upgrade added, empty: no answer of this job failed a schema.
        assert conn.execute("SELECT count(*) FROM validations").fetchone() == (0,)
    finally:
        conn.close()
