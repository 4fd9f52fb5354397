"""Repeats (`repeats = N`, `--repeats N`): every input row sampled N times.

Units (no sockets): the rows an input row becomes (ids, columns, seeds, invalid rows), the
setting and the job's identity, ingest with --limit and resume, the dry run. End to end (the
CLI as a subprocess against the mock endpoint): the seeds actually sent, a kill and resume
that buys nothing twice, a changed N, --limit, a sweep cell.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from batchrun import codec
from batchrun.config import RunConfig, build_config
from batchrun.dataset import SourceRow, expand_inputs
from batchrun.errors import ConfigError, DatasetError, RunMismatchError
from batchrun.identity import identity_changes
from batchrun.intake import dry_run, open_checkpoint
from batchrun.lifecycle import RowState
from batchrun.payloads import BodyBuilder, RequestKeys, prepare_row
from batchrun.repeats import Repeats
from batchrun.summary import format_dry_run
from batchrun.testing import MockServer, MockSettings

from .conftest import billed_when_quiet, prompts, run_cli, write_jsonl
from .ledger import row_states
from .test_e2e import read_output, run_args

LOC = "in.jsonl:1"


def prepared(data: dict[str, Any] | None, error: str | None = None) -> Any:
    return prepare_row(SourceRow(data=data, loc=LOC, error=error))


def seeds(rows: list[Any]) -> list[Any]:
    return [codec.loads(r.overrides)["seed"] if r.overrides else None for r in rows]


# ---------------------------------------------------------------- one input row -> N rows


def test_one_repeat_leaves_the_row_as_it_was() -> None:
    row = prepared({"id": "a", "prompt": "hi", "topic": "x"})
    assert Repeats(1, job_seed=5).rows(row) == [row]


def test_n_repeats_have_suffixed_ids_columns_and_seeds_0_to_n() -> None:
    row = prepared({"id": "a", "prompt": "hi", "topic": "x"})
    rows = Repeats(3).rows(row)
    assert [r.row_id for r in rows] == ["a#0", "a#1", "a#2"]
    assert [r.extra for r in rows] == [
        {"repeat": n, "item_id": "a", "topic": "x"} for n in range(3)
    ]
    assert seeds(rows) == [0, 1, 2]
    assert {r.messages for r in rows} == {row.messages} and not any(r.error for r in rows)


def test_seeds_come_from_the_rows_own_seed_else_the_jobs() -> None:
    plain = prepared({"id": "a", "prompt": "hi"})
    assert seeds(Repeats(3, job_seed=42).rows(plain)) == [42, 43, 44]
    own = prepared({"id": "b", "prompt": "hi", "params": {"max_tokens": 9, "seed": 100}})
    rows = Repeats(3, job_seed=42).rows(own)  # the row's own seed wins over the job's
    assert [codec.loads(r.overrides) for r in rows] == [
        {"max_tokens": 9, "seed": s} for s in (100, 101, 102)
    ]
    batch = prepared({"custom_id": "c", "body": {"messages": [{"role": "user", "content": "x"}],
                                                 "seed": 7}})  # fmt: skip
    assert seeds(Repeats(2).rows(batch)) == [7, 8]


def test_repeats_send_distinct_requests_and_the_same_ones_every_time() -> None:
    row = prepared({"id": "a", "prompt": "hi"})
    template = build_config({"params": {"seed": 3}}).body_template()
    keys, builder = RequestKeys(template), BodyBuilder(template)
    first = [keys.key(r.messages, r.overrides) for r in Repeats(4, 3).rows(row)]
    again = [keys.key(r.messages, r.overrides) for r in Repeats(4, 3).rows(row)]
    assert len(set(first)) == 4 and first == again
    bodies = [json.loads(builder.build(r.messages, r.overrides)) for r in Repeats(4, 3).rows(row)]
    assert [b["seed"] for b in bodies] == [3, 4, 5, 6]


@pytest.mark.parametrize(
    ("seed", "problem"),
    [("abc", "seed must be a whole number"), (True, "seed must be a whole number"),
     (2**63 - 2, "too large to derive 4 repeats' seeds")],
)  # fmt: skip
def test_a_seed_no_repeat_can_be_derived_from_makes_the_row_invalid(
    seed: Any, problem: str
) -> None:
    rows = Repeats(4).rows(prepared({"id": "a", "prompt": "hi", "params": {"seed": seed}}))
    assert len(rows) == 4 and all(r.error and r.error.startswith(f"{LOC}: ") for r in rows)
    assert all(problem in (r.error or "") for r in rows)


def test_an_invalid_input_row_is_invalid_in_every_repeat() -> None:
    for row in (prepared({"id": "bad", "nope": 1}), prepared(None, error=f"{LOC}: invalid JSON")):
        rows = Repeats(3).rows(row)
        assert [r.extra["repeat"] for r in rows if r.extra] == [0, 1, 2]
        assert {r.extra["item_id"] for r in rows if r.extra} == {row.row_id}
        assert all(r.error == row.error for r in rows)


def test_input_columns_named_like_the_repeat_columns_are_renamed() -> None:
    row = prepared({"id": "a", "prompt": "hi", "repeat": "yes", "item_id": 9})
    extra = Repeats(2).rows(row)[1].extra
    assert extra == {"repeat": 1, "item_id": "a", "input_repeat": "yes", "input_item_id": 9}


# ---------------------------------------------------------------- the setting and the job


def test_the_setting_takes_a_whole_number_of_at_least_one() -> None:
    assert build_config({}).repeats == 1
    assert build_config({"repeats": 2}, {"repeats": 5}).repeats == 5  # the CLI wins
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(ConfigError, match="repeats must be a whole number >= 1"):
            build_config({}, {"repeats": bad})


@pytest.mark.parametrize("removed", [{"drop_params": ["seed"]}, {"params": {"seed": None}}])
def test_repeats_are_refused_when_the_job_removes_seed(removed: dict[str, Any]) -> None:
    build_config(removed)  # fine without repeats
    with pytest.raises(ConfigError, match="repeats = 3 sends each repeat its own seed"):
        build_config(removed, {"repeats": 3})


def test_identity_is_unchanged_at_one_repeat_and_names_a_change_of_n() -> None:
    digests = ["d1"]
    one = build_config({}).identity(digests)
    assert "repeats" not in one  # jobs made before repeats keep their fingerprint
    four = build_config({}, {"repeats": 4}).identity(digests)
    assert identity_changes(one, four) == ["repeats: 1 -> 4"]
    eight = build_config({}, {"repeats": 8}).identity(digests)
    assert identity_changes(four, eight) == ["repeats: 4 -> 8"]


def job(tmp_path: Path, **values: Any) -> RunConfig:
    return build_config({"inputs": [str(tmp_path / "in.jsonl")],
                         "output": str(tmp_path / "out.parquet"), **values})  # fmt: skip


def stored(cfg: RunConfig) -> list[tuple[int, str]]:
    with sqlite3.connect(cfg.checkpoint_path) as conn:
        return conn.execute("SELECT idx, row_id FROM items ORDER BY idx").fetchall()


def test_limit_counts_input_rows_and_a_raised_limit_adds_their_repeats(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in.jsonl", prompts(4))
    cfg = job(tmp_path, repeats=3, limit=2)
    files = expand_inputs(cfg.inputs)
    checkpoint, resumed = open_checkpoint(cfg, files)
    assert not resumed and checkpoint.row_count() == 6
    checkpoint.close()
    ids = [f"r{i:05d}#{r}" for i in range(4) for r in range(3)]
    assert stored(cfg) == list(enumerate(ids[:6]))
    checkpoint, resumed = open_checkpoint(job(tmp_path, repeats=3, limit=3), files)
    assert resumed and checkpoint.row_count() == 9
    checkpoint.close()
    assert stored(cfg) == list(enumerate(ids[:9]))  # only the third row's repeats were added
    checkpoint, _ = open_checkpoint(job(tmp_path, repeats=3, limit=1), files)
    assert (checkpoint.row_count(), checkpoint.rows_past_limit()) == (3, 6)
    checkpoint.close()
    checkpoint, _ = open_checkpoint(job(tmp_path, repeats=3), files)
    assert checkpoint.row_count() == 12
    checkpoint.close()
    assert stored(cfg) == list(enumerate(ids))


def test_a_changed_n_is_refused_as_another_job(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in.jsonl", prompts(2))
    files = expand_inputs([str(tmp_path / "in.jsonl")])
    open_checkpoint(job(tmp_path, repeats=2), files)[0].close()
    for n in (1, 3):
        with pytest.raises(RunMismatchError, match=rf"changed: repeats: 2 -> {n}\)"):
            open_checkpoint(job(tmp_path, repeats=n), files)
    assert len(stored(job(tmp_path))) == 4  # left as it was


def test_a_duplicate_id_is_named_as_the_input_wrote_it(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}])
    cfg = job(tmp_path, repeats=2)
    with pytest.raises(DatasetError, match=r"in.jsonl:2: duplicate id 'a' \(first used at .*"
                                           r"in.jsonl:1\)"):  # fmt: skip
        open_checkpoint(cfg, expand_inputs(cfg.inputs))


def test_dry_run_counts_and_estimates_multiply_by_n(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in.jsonl", [*prompts(3), {"id": "bad"}])
    pricing = {"pricing": {"prompt": 1.0, "completion": 2.0}}
    once, four = dry_run(job(tmp_path, **pricing)), dry_run(job(tmp_path, repeats=4, **pricing))
    assert (four.rows, four.invalid) == (16, 4) and (once.rows, once.invalid) == (4, 1)
    assert four.prompt_tokens_est == 4 * once.prompt_tokens_est > 0
    assert four.completion_tokens_max == 4 * once.completion_tokens_max > 0
    assert four.models == {k: 4 * v for k, v in once.models.items()}
    assert once.cost_range and four.cost_range
    assert four.cost_range == pytest.approx(tuple(4 * c for c in once.cost_range))
    assert "dry run: 16 rows (4 input rows x 4 repeats), 12 would be sent, 4 invalid" in (
        format_dry_run(four)
    )
    assert "dry run: 4 rows, 3 would be sent, 1 invalid" in format_dry_run(once)


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_every_row_is_sampled_n_times_in_input_order_with_distinct_seeds(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    inputs = prompts(3)
    inputs[1]["params"] = {"seed": 100}  # a row that fixes its seed: each repeat from it
    data = write_jsonl(tmp_path / "in.jsonl", inputs)
    out = tmp_path / "out.parquet"
    args = run_args(data, out, mock_server, fast_config, "--repeats", "4")
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    rows = read_output(out)
    assert [r["id"] for r in rows] == [f"{i['id']}#{r}" for i in inputs for r in range(4)]
    assert [(r["item_id"], r["repeat"]) for r in rows] == [
        (i["id"], r) for i in inputs for r in range(4)
    ]
    prompt_of = {i["id"]: i["prompt"] for i in inputs}
    assert all(r["status"] == "ok" for r in rows)
    assert all(r["content"] == f"Answer to: {prompt_of[r['item_id']]}" for r in rows)
    stats = mock_server.stats()
    sent = {p: sorted(s) for p, s in stats["seeds"].items()}
    assert sent == {
        inputs[0]["prompt"]: [0, 1, 2, 3],
        inputs[1]["prompt"]: [100, 101, 102, 103],
        inputs[2]["prompt"]: [0, 1, 2, 3],
    }
    assert stats["billed"] == 12
    assert len({r["request_hash"] for r in rows}) == 12
    # The same command again: the job is done, nothing is sent.
    assert run_cli(*args).returncode == 0
    assert mock_server.stats()["submissions"] == 12
    status = json.loads(run_cli("status", str(out), "--json", check=True).stdout)
    assert status["states"]["done"] == status["rows"] == 12
    report = run_cli("report", str(out))
    assert report.returncode == 0, report.stderr
    assert "12: 12 ok, 0 failed, 0 invalid" in report.stdout


@pytest.fixture
def slow_server() -> Any:
    with MockServer(MockSettings(seed=7, latency=0.05)) as server:
        yield server


@pytest.mark.slow
def test_a_killed_job_resumes_without_buying_a_committed_repeat_again(
    slow_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    inputs = prompts(10)
    data = write_jsonl(tmp_path / "in.jsonl", inputs)
    out = tmp_path / "out.parquet"
    args = run_args(data, out, slow_server, fast_config, "--repeats", "4", "--concurrency", "2")
    killed = run_cli(*args, env={"BATCHRUN_CRASH_AT": "commit:3"})
    assert killed.returncode == -9, killed.stderr
    states = row_states(Path(f"{out}.checkpoint.sqlite"))
    assert len(states) == 40
    done = [row_id for row_id, (state, _) in states.items() if state is RowState.DONE]
    assert 0 < len(done) < 40
    billed_when_quiet(slow_server)  # what was on the wire at the kill is answered first
    before = slow_server.stats()
    resumed = run_cli(*args)
    assert resumed.returncode == 0, resumed.stderr
    rows = read_output(out)
    assert [r["id"] for r in rows] == [f"{i['id']}#{r}" for i in inputs for r in range(4)]
    assert all(r["status"] == "ok" for r in rows)
    after = slow_server.stats()
    prompt_of = {i["id"]: i["prompt"] for i in inputs}
    for row_id in done:  # a committed repeat (its prompt and seed) was not sent again
        item, repeat = row_id.rsplit("#", 1)
        prompt, seed = prompt_of[item], int(repeat)
        assert before["seeds"][prompt].count(seed) == 1, row_id
        assert after["seeds"][prompt].count(seed) == 1, row_id
    # The resume bought exactly the repeats the checkpoint did not hold.
    assert after["billed"] - before["billed"] == 40 - len(done)
    assert all(sorted(set(s)) == [0, 1, 2, 3] for s in after["seeds"].values())


@pytest.mark.slow
def test_a_changed_n_is_refused_and_fresh_reuse_buys_only_the_new_repeats(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    inputs = prompts(3)
    data = write_jsonl(tmp_path / "in.jsonl", inputs)
    out = tmp_path / "out.parquet"
    args = run_args(data, out, mock_server, fast_config)
    assert run_cli(*args, "--repeats", "2").returncode == 0
    assert mock_server.stats()["submissions"] == 6
    for n, shown in (("4", "repeats: 2 -> 4"), ("1", "repeats: 2 -> 1")):
        refused = run_cli(*args, "--repeats", n)
        assert refused.returncode == 2
        assert f"changed: {shown})" in refused.stderr and "--fresh --reuse" in refused.stderr
    assert mock_server.stats()["submissions"] == 6  # nothing sent by the refused runs
    raised = run_cli(*args, "--repeats", "4", "--fresh", "--reuse", str(out))
    assert raised.returncode == 0, raised.stderr
    stats = mock_server.stats()
    assert stats["submissions"] == 12  # only repeats 2 and 3 of each row were bought
    assert all(sorted(s) == [0, 1, 2, 3] for s in stats["seeds"].values())
    rows = read_output(out)
    assert [(r["repeat"], r["reused"]) for r in rows[:4]] == [
        (0, True),
        (1, True),
        (2, False),
        (3, False),
    ]


@pytest.mark.slow
def test_limit_counts_input_rows_end_to_end(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    data = write_jsonl(tmp_path / "in.jsonl", prompts(5))
    out = tmp_path / "out.parquet"
    args = run_args(data, out, mock_server, fast_config, "--repeats", "3")
    assert run_cli(*args, "--limit", "2").returncode == 0
    assert [r["id"] for r in read_output(out)][-1] == "r00001#2"
    assert mock_server.stats()["submissions"] == 6
    assert run_cli(*args, "--limit", "3").returncode == 0  # raised: only row 3's repeats
    assert len(read_output(out)) == 9 and mock_server.stats()["submissions"] == 9
    lowered = run_cli(*args, "--limit", "1")  # the summary and status name the limit as given
    held = "6 more rows kept past --limit 1 "
    assert lowered.returncode == 0 and held in lowered.stderr, lowered.stderr
    assert held in run_cli("status", str(out), check=True).stdout
    assert len(read_output(out)) == 3 and mock_server.stats()["submissions"] == 9


@pytest.mark.slow
def test_a_sweep_cell_takes_repeats_from_its_run_table(
    mock_server: MockServer, tmp_path: Path
) -> None:
    write_jsonl(tmp_path / "d.jsonl", prompts(2))
    sweep = tmp_path / "s.toml"
    sweep.write_text('output_dir = "out"\ndatasets = ["d.jsonl"]\n'
                     "[run]\nrepeats = 3\nrpm = 0\nmin_poll_interval = 0.02\n")  # fmt: skip
    result = run_cli("sweep", str(sweep), "--base-url", mock_server.base_url)
    assert result.returncode == 0, result.stderr
    (cell,) = (tmp_path / "out").glob("*/results.parquet")
    rows = read_output(cell)
    assert [r["id"] for r in rows] == [f"r0000{i}#{r}" for i in range(2) for r in range(3)]
    assert mock_server.stats()["submissions"] == 6
