"""Built for how it is used: templates, structured labels, cost, reuse/offline, sweeps, events."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from batchrun.errors import ConfigError
from batchrun.parsing import extract_fields, parse_answer
from batchrun.templates import PromptTemplate, Template, TemplateProblem
from batchrun.testing import MockServer

from .conftest import REPO, prompts, run_cli, write_jsonl
from .test_e2e import read_output, run_args

# ---------------------------------------------------------------- units: templates, parsing


def test_template_fills_columns_and_keeps_literal_braces() -> None:
    template = PromptTemplate('Rate {review} as {{"label": ...}}; n={n}', "You label {product}s.")
    messages = template.prompt_messages({"review": "Great!", "n": 3, "product": "mug"})
    assert messages == [
        {"role": "system", "content": "You label mugs."},
        {"role": "user", "content": 'Rate Great! as {"label": ...}; n=3'},
    ]


def test_a_rows_own_system_column_wins_over_system_prompt() -> None:
    template = PromptTemplate("{q}", "default system")
    assert template.prompt_messages({"q": "x", "system": "mine"})[0]["content"] == "mine"


@pytest.mark.parametrize("row", [{}, {"review": None}])
def test_missing_column_names_the_column(row: dict[str, Any]) -> None:
    with pytest.raises(TemplateProblem, match="prompt_template needs column 'review'"):
        PromptTemplate("Rate {review}", None).prompt_messages(row)


@pytest.mark.parametrize(
    "text", ["{a.__class__}", "{a[0]}", "{a!r}", "{a:>{b}}", "{0}", "{}", "{unclosed"]
)
def test_templates_cannot_reach_into_objects(text: str) -> None:
    with pytest.raises(ConfigError):
        Template(text, "prompt_template")


@pytest.mark.parametrize(
    ("answer", "value"),
    [
        ('{"label": "positive"}', {"label": "positive"}),
        ('Sure!\n```json\n{"label": "neutral"}\n```\nHope that helps.', {"label": "neutral"}),
        ("```\n[1, 2]\n```", [1, 2]),
        (
            'The label is {"label": "negative", "score": 0.9} as asked.',
            {"label": "negative", "score": 0.9},
        ),
    ],
)
def test_parse_answer_tolerates_fences_and_prose(answer: str, value: Any) -> None:
    assert parse_answer(answer) == (value, None)


@pytest.mark.parametrize("answer", ["positive", "", None, "{label: positive}"])
def test_parse_answer_reports_what_is_wrong(answer: str | None) -> None:
    value, error = parse_answer(answer)
    assert value is None and error


def test_extract_fields() -> None:
    assert extract_fields({"label": "x", "score": 2}, ["label", "missing"]) == {
        "label": "x",
        "missing": None,
    }
    assert extract_fields([1], ["label"]) == {"label": None}


# ---------------------------------------------------------------- end to end

pytestmark = pytest.mark.slow


def labelling_args(server: MockServer, config: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "-c", str(config), "--base-url", server.base_url, "-o", str(out), *extra]


@pytest.fixture
def nightly(tmp_path: Path, fast_config: Path) -> Path:
    """configs/nightly.toml, made fast and pointed into tmp_path."""
    text = (REPO / "configs/nightly.toml").read_text()
    text = text.replace(
        '"../samples/reviews.jsonl"', json.dumps(str(REPO / "samples/reviews.jsonl"))
    )
    text = text.replace('"../out/nightly/events.jsonl"', json.dumps(str(tmp_path / "events.jsonl")))
    config = tmp_path / "nightly.toml"
    config.write_text(
        fast_config.read_text()
        + "\n".join(
            line for line in text.splitlines() if not line.startswith(("rpm", "concurrency"))
        )
    )
    return config


def test_nightly_labelling_recipe(mock_server: MockServer, nightly: Path, tmp_path: Path) -> None:
    mock_server.configure(json_fence=True)  # answers wrapped in ```json with prose around
    out = tmp_path / "labels.parquet"
    result = run_cli(*labelling_args(mock_server, nightly, out))
    assert result.returncode == 0, result.stderr
    frame = pd.read_parquet(out)
    assert list(frame["status"].unique()) == ["ok"]
    assert frame["label"].tolist()[:3] == ["positive", "negative", "neutral"]
    assert frame["parse_error"].isna().all()
    assert json.loads(frame["parsed"][0])["label"] == "positive"
    sent = mock_server.stats()["prompts"]
    prompt = next(p for p in sent if "screen is gorgeous" in p)
    assert prompt.startswith("Label the sentiment of this headphones review")
    body = sent[prompt]["last_body"]
    assert body["response_format"] == {"type": "json_object"} and body["temperature"] == 0.0
    assert "cost $" in result.stderr
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert events[0]["event"] == "job_start" and events[-1]["event"] == "job_end"
    assert sum(e["event"] == "row_done" for e in events) == 20
    assert events[-1]["tokens"]["total_tokens"] == int(frame["total_tokens"].sum())


def test_template_missing_column_is_invalid_and_unparsed_answers_counted(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    nightly = tmp_path / "labels.toml"
    nightly.write_text(
        fast_config.read_text()
        + 'prompt_template = "Label this {product} review. Review: {review}"\n'
        + 'response_format = { type = "json_object" }\nparse_json = true\nextract = ["label"]\n'
    )
    rows = [
        {"id": "a", "review": "Works well.", "product": "lamp"},
        {"id": "b", "product": "lamp"},  # no review
        {
            "id": "c",
            "review": "Meh.",
            "product": "lamp",
            "params": {"response_format": {"type": "text"}},
        },
    ]
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    out = tmp_path / "labels.parquet"
    result = run_cli(*labelling_args(mock_server, nightly, out), str(data))
    assert result.returncode == 1  # one invalid row
    got = {r["id"]: r for r in read_output(out)}
    assert got["b"]["status"] == "invalid"
    assert (
        got["b"]["error"]
        == "rows.jsonl:2: prompt_template needs column 'review', which this row does not have"
    )
    assert got["a"]["label"] == "positive" and got["a"]["parse_error"] is None
    assert got["c"]["status"] == "ok" and got["c"]["label"] is None, got["c"]
    assert got["c"]["parse_error"].startswith("not JSON"), got["c"]
    assert "1 answers did not parse as JSON" in result.stderr


def test_dry_run_estimates_tokens_and_cost(
    nightly: Path, tmp_path: Path, mock_server: MockServer
) -> None:
    result = run_cli(*labelling_args(mock_server, nightly, tmp_path / "x.parquet", "--dry-run"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout
    assert "dry run: 20 rows, 20 would be sent, 0 invalid" in lines
    assert "completion tokens at most: 5,120" in lines  # 20 rows x max_tokens 256
    prompt_est = int(lines.split("estimated prompt tokens: ~")[1].split()[0].replace(",", ""))
    low = prompt_est * 0.60 / 1e6
    assert f"cost: ${low:.4f} (prompts only) to ${low + 5120 * 2.40 / 1e6:.4f}" in lines
    assert mock_server.stats()["submissions"] == 0


def test_cost_cap_stops_the_job_and_a_higher_cap_resumes_it(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(fast_config.read_text() + "[pricing]\nprompt = 1000\ncompletion = 1000\n")
    inputs = prompts(40)
    data = write_jsonl(tmp_path / "in.jsonl", inputs)
    out = tmp_path / "out.parquet"
    args = run_args(data, out, mock_server, config, "-p", "max_tokens=20", "--concurrency", "2")
    # each request's worst case: (~10 estimated prompt + 20 completion) tokens at $1000/M = ~$0.03
    result = run_cli(*args, "--max-cost", "0.5")
    assert result.returncode == 1
    assert "cost cap" in result.stderr
    rows = read_output(out)
    done = [r for r in rows if r["status"] == "ok"]
    spent = sum((r["prompt_tokens"] + r["completion_tokens"]) * 1000 / 1e6 for r in done)
    assert 0 < spent <= 0.5 and len(done) < 40
    assert mock_server.stats()["submissions"] == len(done)  # nothing sent past the cap
    result = run_cli(*args, "--max-cost", "100")
    assert result.returncode == 0, result.stderr
    assert all(r["status"] == "ok" for r in read_output(out))
    assert mock_server.stats()["submissions"] == 40


def test_reuse_resends_only_what_a_change_affects(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    inputs = prompts(10)
    first = write_jsonl(tmp_path / "first.jsonl", inputs)
    out_a = tmp_path / "a.parquet"
    run_cli(*run_args(first, out_a, mock_server, fast_config), check=True)
    assert mock_server.stats()["submissions"] == 10
    changed = [dict(r) for r in inputs]
    changed[4]["params"] = {"seed": 7}  # one row's settings change
    changed.append({"id": "new", "prompt": "A brand new question"})
    second = write_jsonl(tmp_path / "second.jsonl", changed)
    out_b = tmp_path / "b.parquet"
    result = run_cli(
        *run_args(
            second, out_b, mock_server, fast_config, "--reuse", str(out_a) + ".checkpoint.sqlite"
        )
    )
    assert result.returncode == 0, result.stderr
    assert mock_server.stats()["submissions"] == 12  # only the changed row and the new one
    rows = read_output(out_b)
    assert [r["reused"] for r in rows] == [True] * 4 + [False] + [True] * 5 + [False]
    assert [r["content"] for r in rows[:10]] == [r["content"] for r in read_output(out_a)]
    assert "9 rows answered from --reuse" in result.stderr
    # a job-wide change affects every request: nothing can be reused
    out_c = tmp_path / "c.parquet"
    run_cli(
        *run_args(
            first, out_c, mock_server, fast_config, "-p", "temperature=0.2", "--reuse", str(out_a)
        ),
        check=True,
    )
    assert mock_server.stats()["submissions"] == 22


def test_offline_replay_sends_nothing(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    inputs = prompts(6)
    data = write_jsonl(tmp_path / "in.jsonl", inputs)
    out_a = tmp_path / "a.parquet"
    run_cli(*run_args(data, out_a, mock_server, fast_config), check=True)
    sent = mock_server.stats()["submissions"]
    more = write_jsonl(tmp_path / "more.jsonl", [*inputs, {"id": "x", "prompt": "never asked"}])
    out_b = tmp_path / "b.parquet"
    same_job = ("run", str(more), "-o", str(out_b), "-c", str(fast_config))
    same_job += ("--base-url", mock_server.base_url)
    # from the earlier output file (not its checkpoint), with no key; the endpoint is never asked
    result = run_cli(*same_job, "--offline", "--reuse", str(out_a))
    assert result.returncode == 1
    assert mock_server.stats()["submissions"] == sent
    rows = read_output(out_b)
    assert [r["status"] for r in rows] == ["ok"] * 6 + ["failed"]
    assert rows[-1]["error"] == "not in cache (--offline sends nothing)"
    assert [r["content"] for r in rows[:6]] == [r["content"] for r in read_output(out_a)]
    # the next run that may send asks for what the offline one could not answer
    run_cli(*same_job, check=True)
    assert mock_server.stats()["submissions"] == sent + 1
    assert read_output(out_b)[-1]["content"] == "Answer to: never asked"


def sweep_file(tmp_path: Path, temperatures: list[float]) -> Path:
    text = (REPO / "configs/sweep.toml").read_text()
    text = text.replace('"../out/sweep"', json.dumps(str(tmp_path / "sweep")))
    text = text.replace(
        '"../samples/reviews.jsonl"', json.dumps(str(REPO / "samples/reviews.jsonl"))
    )
    text = text.replace('"nightly.toml"', json.dumps(str(REPO / "configs/nightly.toml")))
    text = text.replace('"../out/sweep/events.jsonl"', json.dumps(str(tmp_path / "events.jsonl")))
    text = text.replace("temperature = [0.0, 0.6]", f"temperature = {temperatures}")
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    return path


def test_a_2x2_sweep_writes_summary_junit_and_passes(
    mock_server: MockServer, tmp_path: Path
) -> None:
    junit = tmp_path / "junit.xml"
    args = [
        "sweep",
        str(sweep_file(tmp_path, [0.0, 0.6])),
        "--base-url",
        mock_server.base_url,
        "--junit-xml",
        str(junit),
    ]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    summary = pd.read_parquet(tmp_path / "sweep" / "summary.parquet")
    assert len(summary) == 4 and summary["passed"].all()
    assert set(summary["model"]) == {"qwen/qwen3.5-397b-a17b", "meta/llama-3.3-70b-instruct"}
    assert (summary["ok"] == 20).all() and (summary["accuracy"] == 0.8).all()
    assert (summary["latency_p95"] >= summary["latency_p50"]).all()
    assert "4 of 4 cells passed" in (tmp_path / "sweep" / "summary.md").read_text()
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "4" and suite.get("failures") == "0"
    sent = mock_server.stats()["submissions"]
    assert sent == 80
    assert run_cli(*args).returncode == 0  # a rerun resumes finished cells: nothing is sent
    assert mock_server.stats()["submissions"] == sent


def test_a_failing_cell_fails_the_sweep(mock_server: MockServer, tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    # temperature 1.5 is out of the API's range: every row of those cells fails with a 422
    result = run_cli(
        "sweep",
        str(sweep_file(tmp_path, [0.0, 1.5])),
        "--base-url",
        mock_server.base_url,
        "--junit-xml",
        str(junit),
    )
    assert result.returncode == 1
    summary = pd.read_parquet(tmp_path / "sweep" / "summary.parquet")
    assert summary["passed"].tolist() == [True, False, True, False]
    failures = ET.parse(junit).getroot().findall(".//failure")
    assert len(failures) == 2 and "100.0% of rows failed" in failures[0].get("message", "")
    assert "2 of 4 cells passed" in result.stderr


def test_a_refused_key_ends_the_sweep_with_exit_3(mock_server: MockServer, tmp_path: Path) -> None:
    mock_server.configure(api_key="nvapi-right")
    path = sweep_file(tmp_path, [0.0, 0.6])
    args = ["sweep", str(path), "--base-url", mock_server.base_url]
    result = run_cli(*args, env={"NVIDIA_API_KEY": "nvapi-wrong"})
    assert result.returncode == 3, result.stderr
    assert mock_server.stats()["submissions"] <= 16  # the first cell's first requests, no more
