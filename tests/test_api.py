"""The whole API end to end: streaming, thinking, tool calls, images, per-row settings and the
OpenAI Batch output format, against the mock endpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from batchrun.testing import MockServer

from .conftest import REPO, prompts, run_cli, write_jsonl
from .test_e2e import assert_rows_answered, read_output, run_args

pytestmark = pytest.mark.slow
MODES = ["--stream", "--no-stream"]


# ---------------------------------------------------------------- streaming and thinking


def test_streaming_without_usage_leaves_usage_empty(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    mock_server.configure(stream_usage=False)  # llama.cpp's server sends none
    data = write_jsonl(tmp_path / "in.jsonl", prompts(5))
    out = tmp_path / "out.parquet"
    result = run_cli(*run_args(data, out, mock_server, fast_config, "--stream"))
    assert result.returncode == 0, result.stderr
    rows = read_output(out)
    assert all(r["status"] == "ok" and r["content"].startswith("Answer to: ") for r in rows)
    assert all(r["total_tokens"] is None and r["ttft_s"] is not None for r in rows)
    assert "5 answers came without token usage" in result.stderr


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("form", ["reasoning_content", "reasoning", "think", "think-no-open"])
def test_reasoning_in_every_form_lands_in_reasoning_content(
    form: str, mode: str, mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    mock_server.configure(reasoning_field=form)
    inputs = prompts(4)
    data = write_jsonl(tmp_path / "in.jsonl", inputs)
    out = tmp_path / "out.parquet"
    result = run_cli(*run_args(data, out, mock_server, fast_config, mode))
    assert result.returncode == 0, result.stderr
    assert_rows_answered(read_output(out), inputs)  # content is the answer only


def test_no_thinking_asks_for_none_and_gets_none(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    inputs = prompts(2)
    data = write_jsonl(tmp_path / "in.jsonl", inputs)
    out = tmp_path / "out.parquet"
    run_cli(*run_args(data, out, mock_server, fast_config, "--no-thinking"), check=True)
    assert all(r["reasoning_content"] is None for r in read_output(out))
    body = mock_server.stats()["prompts"][inputs[0]["prompt"]]["last_body"]
    assert body["chat_template_kwargs"] == {"enable_thinking": False}


# ---------------------------------------------------------------- tools


@pytest.mark.parametrize("streamed", ["index", "id", "whole"])
def test_tool_calls_whole_and_in_deltas_agree_with_non_streaming(
    streamed: str, mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    mock_server.configure(tool_call_stream=streamed)
    args = ["--tools", str(REPO / "samples/tools.json")]
    outputs = {}
    for mode in MODES:
        out = tmp_path / f"out{mode}.parquet"
        result = run_cli(
            *run_args(
                REPO / "samples/tool_prompts.jsonl", out, mock_server, fast_config, *args, mode
            )
        )
        assert result.returncode == 0, result.stderr
        outputs[mode] = read_output(out)
    for a, b in zip(*outputs.values(), strict=True):
        assert (a["tool_calls"], a["finish_reason"], a["content"]) == (
            b["tool_calls"],
            b["finish_reason"],
            b["content"],
        )
    rows = {r["id"]: r for r in outputs["--stream"]}
    calls = json.loads(rows["tool-1"]["tool_calls"])
    assert rows["tool-1"]["finish_reason"] == "tool_calls"
    assert calls[0]["function"]["name"] == "describe_harry_potter_character"
    assert json.loads(calls[0]["function"]["arguments"]) == {"name": "Hermione Jean Granger"}
    assert json.loads(json.loads(rows["tool-3"]["tool_calls"])[0]["function"]["arguments"]) == {
        "color_hex": "#00ff00"
    }
    assert rows["tool-4"]["tool_calls"] is None and rows["tool-4"]["finish_reason"] == "stop"


def test_tools_from_the_config_file(
    mock_server: MockServer, tmp_path: Path, fast_config: Path
) -> None:
    config = tmp_path / "job.toml"
    tools = json.loads((REPO / "samples/tools.json").read_text())
    (tmp_path / "tools.json").write_text(json.dumps(tools))
    config.write_text(fast_config.read_text() + 'tools_file = "tools.json"\ntool_choice = "auto"\n')
    out = tmp_path / "out.parquet"
    run_cli(*run_args(REPO / "samples/tool_prompts.jsonl", out, mock_server, config), check=True)
    body = mock_server.stats()["prompts"]
    sent = next(iter(body.values()))["last_body"]
    assert sent["tools"] == tools and sent["tool_choice"] == "auto"
    assert read_output(out)[0]["tool_calls"] is not None


def test_a_rows_own_tools(mock_server: MockServer, fast_config: Path, tmp_path: Path) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "lookup_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    row = {
        "custom_id": "w",
        "body": {
            "messages": [{"role": "user", "content": "Call lookup_weather for Oslo"}],
            "tools": [tool],
        },
    }
    data = write_jsonl(tmp_path / "in.jsonl", [row])
    out = tmp_path / "out.parquet"
    run_cli(*run_args(data, out, mock_server, fast_config), check=True)
    assert json.loads(read_output(out)[0]["tool_calls"])[0]["function"]["name"] == "lookup_weather"


# ---------------------------------------------------------------- images


@pytest.fixture
def pictures(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "pics"
    folder.mkdir()
    small = folder / "small.png"
    small.write_bytes(b"\x89PNG" + bytes(range(256)) * 4)  # 1,028 bytes
    large = folder / "large.jpg"
    large.write_bytes(b"\xff\xd8" + b"x" * 299_998)  # 300,000 bytes: over the inline limit
    return {"small": small, "large": large}


def image_rows(pictures: dict[str, Path]) -> list[dict[str, Any]]:
    return [
        {"id": "a", "prompt": "Describe this.", "images": ["pics/small.png"]},
        {
            "id": "b",
            "prompt": "And this one.",
            "images": ["pics/large.jpg", "https://example.com/cat.png"],
        },
        {
            "id": "c",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Compare."},
                        {"type": "image_url", "image_url": {"url": str(pictures["large"])}},
                    ],
                }
            ],
        },
    ]


def test_small_images_inline_large_ones_as_assets_uploaded_once(
    pictures: dict[str, Path], mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    data = write_jsonl(tmp_path / "in.jsonl", image_rows(pictures))
    out = tmp_path / "out.parquet"
    result = run_cli(
        *run_args(
            data,
            out,
            mock_server,
            fast_config,
            "--concurrency",
            "1",
            "-c",
            str(assets_config(tmp_path, fast_config)),
        )
    )
    assert result.returncode == 0, result.stderr
    rows = {r["id"]: r for r in read_output(out)}
    assert rows["a"]["content"] == "Answer to: Describe this. [images: 1028 bytes inline]"
    assert rows["b"]["content"] == "Answer to: And this one. [images: 300000 bytes asset, url]"
    assert rows["c"]["content"] == "Answer to: Compare. [images: 300000 bytes asset]"
    assert mock_server.stats()["asset_uploads"] == 1  # the same file, uploaded once
    checkpoint = (tmp_path / "out.parquet.checkpoint.sqlite").read_bytes()
    assert b"base64" not in checkpoint.split(b"Answer to")[0]  # markers stored, not the image


def assets_config(tmp_path: Path, fast_config: Path) -> Path:
    config = tmp_path / "assets.toml"
    config.write_text(
        fast_config.read_text() + 'asset_upload = true\nassets_url = "{origin}/v2/nvcf/assets"\n'
    )
    return config


def test_a_resume_does_not_upload_again(
    pictures: dict[str, Path], mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    rows = [
        {"id": "first", "prompt": "One.", "images": ["pics/large.jpg"]},
        {"id": "stopper", "prompt": "Two [mock:503x1=10800]"},  # stops the job (resumable)
        {"id": "later", "prompt": "Three.", "images": ["pics/large.jpg"]},
    ]
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.parquet"
    # one row at a time, so the first is answered before the second stops the job
    config = assets_config(tmp_path, fast_config)
    args = run_args(data, out, mock_server, config, "--max-pending", "1")
    assert run_cli(*args).returncode == 1
    assert mock_server.stats()["asset_uploads"] == 1
    assert [r["status"] for r in read_output(out)] == ["ok", "pending", "pending"]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert read_output(out)[2]["content"] == "Answer to: Three. [images: 300000 bytes asset]"
    assert mock_server.stats()["asset_uploads"] == 1


def test_without_the_asset_api_large_images_go_inline(
    pictures: dict[str, Path], mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    mock_server.configure(inline_image_max=0)  # a vLLM-like server takes any size
    data = write_jsonl(tmp_path / "in.jsonl", image_rows(pictures))
    out = tmp_path / "out.parquet"
    run_cli(*run_args(data, out, mock_server, fast_config), check=True)  # asset_upload: auto (off)
    assert (
        read_output(out)[1]["content"]
        == "Answer to: And this one. [images: 300000 bytes inline, url]"
    )
    assert mock_server.stats()["asset_uploads"] == 0


def test_missing_or_wrong_images_make_the_row_invalid(
    pictures: dict[str, Path], mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    (tmp_path / "pics" / "notes.txt").write_text("not an image")
    rows = [
        {"id": "gone", "prompt": "x", "images": ["pics/nope.png"]},
        {"id": "text", "prompt": "x", "images": ["pics/notes.txt"]},
        {"id": "bad", "prompt": "x", "images": 5},
        {"id": "fine", "prompt": "x", "images": ["pics/small.png"]},
    ]
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.parquet"
    result = run_cli(*run_args(data, out, mock_server, fast_config))
    assert result.returncode == 1
    got = {r["id"]: r for r in read_output(out)}
    assert (
        got["gone"]["status"] == "invalid"
        and "image not found: pics/nope.png" in got["gone"]["error"]
    )
    assert got["gone"]["error"].startswith("in.jsonl:1: ")
    assert "pics/notes.txt: not a known image type" in got["text"]["error"]
    assert "images must be a list" in got["bad"]["error"]
    assert got["fine"]["status"] == "ok"
    assert mock_server.stats()["submissions"] == 1


def test_an_image_changed_mid_job_fails_its_row(
    pictures: dict[str, Path], mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    rows = [
        {"id": "stopper", "prompt": "Two [mock:503x1=10800]"},
        {"id": "pic", "prompt": "x", "images": ["pics/small.png"]},
    ]
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.parquet"
    args = run_args(data, out, mock_server, fast_config, "--concurrency", "1")
    assert run_cli(*args).returncode == 1
    pictures["small"].write_bytes(b"\x89PNG changed")
    assert run_cli(*args).returncode == 1
    row = read_output(out)[1]
    assert row["status"] == "failed" and "changed since the job started" in row["error"]


# ---------------------------------------------------------------- per-row settings


def test_row_settings_override_the_job_and_flags_override_the_config(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    config = tmp_path / "job.toml"
    config.write_text(
        fast_config.read_text() + "[params]\ntemperature = 0.3\nseed = 1\ntop_k = 5\n"
    )
    rows = [
        {"id": "plain", "prompt": "p1"},
        {"id": "params", "prompt": "p2", "params": {"temperature": 0.9, "max_tokens": 7}},
        {"id": "params-text", "prompt": "p3", "params": '{"seed": 42}'},
        {
            "custom_id": "batch",
            "body": {"messages": [{"role": "user", "content": "p4"}], "top_p": 0.5},
        },
    ]
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.parquet"
    run_cli(*run_args(data, out, mock_server, config, "-p", "seed=2"), check=True)
    sent = {p: s["last_body"] for p, s in mock_server.stats()["prompts"].items()}
    assert (sent["p1"]["temperature"], sent["p1"]["seed"], sent["p1"]["top_k"]) == (0.3, 2, 5)
    assert (sent["p2"]["temperature"], sent["p2"]["max_tokens"], sent["p2"]["seed"]) == (0.9, 7, 2)
    assert sent["p3"]["seed"] == 42
    assert (sent["p4"]["top_p"], sent["p4"]["seed"]) == (0.5, 2)


def test_bad_params_column_is_an_invalid_row(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    data = write_jsonl(
        tmp_path / "in.jsonl",
        [{"id": "x", "prompt": "p", "params": "{oops"}, {"id": "y", "prompt": "q", "params": [1]}],
    )
    out = tmp_path / "out.parquet"
    run_cli(*run_args(data, out, mock_server, fast_config))
    errors = [r["error"] for r in read_output(out)]
    assert "params is a string that is not JSON" in errors[0]
    assert "params must be a JSON object" in errors[1]


# ---------------------------------------------------------------- OpenAI batch output


def test_openai_batch_output_lines(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    rows = [
        {
            "custom_id": "ok-1",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": "hello"}]},
        },
        {
            "custom_id": "rejected",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": "x [mock:422]"}]},
        },
        {"custom_id": "invalid", "method": "POST", "url": "/v1/embeddings", "body": {}},
    ]
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "results.parquet"
    result = run_cli(*run_args(data, out, mock_server, fast_config, "--output-format", "both"))
    assert result.returncode == 1
    assert out.exists()
    lines = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [line["custom_id"] for line in lines] == ["ok-1", "rejected", "invalid"]
    ok, rejected, invalid = lines
    assert ok["error"] is None and ok["response"]["status_code"] == 200
    assert ok["response"]["body"]["object"] == "chat.completion"
    assert ok["response"]["body"]["choices"][0]["message"]["content"] == "Answer to: hello"
    assert ok["response"]["request_id"] == read_output(out)[0]["request_id"]
    assert rejected["response"]["status_code"] == 422 and rejected["error"] is None
    assert rejected["response"]["body"]["detail"].startswith("Validation failed")
    assert invalid["response"] is None and invalid["error"]["code"] == "invalid_request"
    assert all(line["id"].startswith("batch_req_") for line in lines)
    # the output is a valid input again: batchrun can re-run its own batch file
    jsonl_only = tmp_path / "only.jsonl"
    run_cli(
        *run_args(
            data,
            jsonl_only,
            mock_server,
            fast_config,
            "--output-format",
            "openai-jsonl",
            "--checkpoint",
            str(tmp_path / "c2.sqlite"),
        )
    )
    assert len(jsonl_only.read_text().splitlines()) == 3
    assert json.loads(jsonl_only.read_text().splitlines()[0])["custom_id"] == "ok-1"
