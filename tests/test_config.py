"""batchrun/config.py, identity.py and credentials.py: precedence, validation, request body
template, fingerprint, the key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from batchrun.config import (
    CONFIG_KEYS,
    NVIDIA_BASE_URL,
    NVIDIA_MODEL,
    RunConfig,
    build_config,
    failure_budget,
    load_toml,
    parse_param,
)
from batchrun.credentials import read_api_key
from batchrun.errors import AuthError, ConfigError
from batchrun.identity import fingerprint, identity_changes, same_job

SECRET = "nvapi-SECRET-do-not-leak-0123456789"
DIGESTS = ["a" * 64]


def write_toml(tmp_path: Path, text: str, name: str = "job.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------- precedence


def test_defaults_when_nothing_is_given() -> None:
    cfg = build_config()
    assert cfg.base_url == NVIDIA_BASE_URL
    assert cfg.model == NVIDIA_MODEL
    assert cfg.api_key_env == "NVIDIA_API_KEY"
    assert (cfg.rpm, cfg.tpm, cfg.concurrency, cfg.max_attempts) == (40, None, 16, 6)
    assert (cfg.timeout, cfg.hold_seconds, cfg.max_pending) == (600.0, 30, 256)
    assert cfg.stream is False
    assert cfg.thinking is True
    assert cfg.limit is None


def test_file_value_overrides_default() -> None:
    assert build_config({"rpm": 100}, {}).rpm == 100


def test_cli_value_overrides_file_value() -> None:
    assert build_config({"rpm": 100}, {"rpm": 7}).rpm == 7


def test_cli_none_means_not_given_so_file_value_stands() -> None:
    cfg = build_config({"rpm": 100, "model": "m/file"}, {"rpm": None, "model": None})
    assert cfg.rpm == 100
    assert cfg.model == "m/file"


def test_cli_false_is_a_value_and_overrides_file_true() -> None:
    cfg = build_config({"stream": True, "thinking": True}, {"stream": False, "thinking": False})
    assert cfg.stream is False
    assert cfg.thinking is False


def test_params_from_file_and_cli_are_merged_cli_winning() -> None:
    cfg = build_config(
        {"params": {"top_k": 5, "seed": 1}},
        {"params": {"seed": 2, "max_tokens": 64}},
    )
    assert dict(cfg.params) == {"top_k": 5, "seed": 2, "max_tokens": 64}


def test_toml_file_values_reach_the_config(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        'model = "m/x"\nrpm = 5\ntimeout = 42\n[params]\ntemperature = 0.1\n',
    )
    cfg = build_config(load_toml(path), {"rpm": 9}, source=str(path))
    assert cfg.model == "m/x"
    assert cfg.rpm == 9
    assert cfg.timeout == 42.0
    assert isinstance(cfg.timeout, float)
    assert cfg.params == {"temperature": 0.1}


def test_base_url_trailing_slash_is_stripped() -> None:
    cfg = build_config({}, {"base_url": "http://127.0.0.1:8000/v1/"})
    assert cfg.base_url == "http://127.0.0.1:8000/v1"
    assert cfg.chat_url() == "http://127.0.0.1:8000/v1/chat/completions"


def test_single_input_string_becomes_a_tuple() -> None:
    assert build_config({"inputs": "data.jsonl"}).inputs == ("data.jsonl",)


def test_tpm_zero_means_off() -> None:
    assert build_config({"tpm": 0}).tpm is None
    assert build_config({"tpm": 5000}).tpm == 5000


def test_checkpoint_path_defaults_next_to_output() -> None:
    cfg = build_config({}, {"output": "out/res.parquet"})
    assert cfg.checkpoint_path == Path("out/res.parquet.checkpoint.sqlite")
    cfg = build_config({}, {"output": "out/res.parquet", "checkpoint": "ck.sqlite"})
    assert cfg.checkpoint_path == Path("ck.sqlite")


# ---------------------------------------------------------------- validation

BAD_VALUES: list[tuple[str, Any]] = [
    ("inputs", []),
    ("inputs", 5),
    ("inputs", [""]),
    ("output", ""),
    ("output", 3),
    ("base_url", "ftp://example.com/v1"),
    ("base_url", "not a url"),
    ("base_url", "http://"),
    ("endpoints", {"base_url": "http://127.0.0.1:9/v1"}),
    ("endpoints", [{"rpm": 5}]),
    ("endpoints", [{"base_url": "http://127.0.0.1:9/v1", "weigth": 2}]),
    ("endpoints", [{"base_url": "http://127.0.0.1:9/v1", "concurrency": "max"}]),
    ("endpoints", [{"base_url": "http://127.0.0.1:9/v1", "weight": 0}]),
    ("endpoints", [{"base_url": "http://127.0.0.1:9/v1", "max_concurrency": 8}]),
    ("endpoints", [{"base_url": "http://127.0.0.1:9/v1"}, {"base_url": "http://127.0.0.1:9/v1"}]),
    ("endpoints", [{"base_url": "http://127.0.0.1:9/v1", "fallback": True}]),
    ("model", ""),
    ("api_key_env", 5),
    ("rpm", -1),
    ("rpm", 1.5),
    ("rpm", True),
    ("rpm", "40"),
    ("tpm", -1),
    ("tpm", 2.5),
    ("concurrency", 0),
    ("concurrency", True),
    ("max_attempts", 0),
    ("timeout", 0),
    ("timeout", -1),
    ("timeout", "10"),
    ("timeout", True),
    ("hold_seconds", 0),
    ("hold_seconds", 3601),
    ("hold_seconds", 1.5),
    ("max_pending", 0),
    ("status_url", "http://x/status"),
    ("status_url", "/status/{request_id}"),
    ("status_url", "{base_url}/{foo}/{request_id}"),
    ("status_url_fallback", "https://x/status"),
    ("stream", "yes"),
    ("stream", 1),
    ("thinking", 0),
    ("params", "temperature=1"),
    ("params", ["a"]),
    ("params", {"messages": []}),
    ("drop_params", "top_k"),
    ("drop_params", ["model"]),
    ("drop_params", ["messages"]),
    ("drop_params", [""]),
    ("checkpoint", ""),
    ("fresh", "no"),
    ("retry_failed", 1),
    ("require_space", "yes"),
    ("limit", -5),
    ("limit", 2.5),
    ("repeats", 0),
    ("repeats", "2"),
    ("dry_run", "x"),
    ("progress", "auto"),
    ("grace", -1),
    ("allow_insecure_http", "true"),
    ("assets_url", "ftp://x/assets"),
    ("assets_url", "{nope}/assets"),
    ("asset_upload", "yes"),
    ("tools", []),
    ("tools", [{"type": "retrieval"}]),
    ("tools", [{"type": "function", "function": {"description": "no name"}}]),
    ("tools", "describe"),
    ("tools_file", ""),
    ("tool_choice", ""),
    ("tool_choice", 3),
    ("output_format", "csv"),
    ("schema", "a string"),
    ("schema", {"type": 12}),
    ("schema_file", 3),
    ("max_validation_retries", -1),
    ("max_validation_retries", "two"),
    ("output_partition_rows", -5),
    ("output_partition_rows", "many"),
    ("endpoint_url", "127.0.0.1:9000"),
    ("endpoint_url", "http://h:9000/bucket"),
    ("checkpoint_upload", "yes"),
    ("parse_json", "yes"),
    ("reuse", ""),
    ("offline", 1),
    ("log_json", ""),
    ("max_poll_time", 0),
    ("engine", "spark"),
    ("workers", 0),
    ("ray_address", ""),
    ("pricing", {"prompt": -1}),
    ("pricing", {"input": 1}),
    ("pricing", "cheap"),
    ("max_cost", 0),
    ("max_cost", "10"),
    ("extract", ""),
    ("extract", [1]),
    ("response_format", {"type": "xml"}),
    ("response_format", {"type": "json_schema"}),
    ("prompt_template", "{a.b}"),
    ("prompt_template", "{0}"),
    ("prompt_template", "{x!r}"),
    ("prompt_template", "{unclosed"),
    ("system_prompt", "{x:>10}"),
    ("max_failures", "0"),
    ("max_failures", "5.5"),
    ("max_failures", "0%"),
    ("max_failures", "101%"),
    ("max_failures", "many"),
    ("max_failures", True),
    ("min_poll_interval", -0.1),
    ("max_pause", -1),
    ("backoff_base", -1),
    ("backoff_max", -1),
    ("progress_interval", 0),
    ("progress_interval", "often"),
]


def test_bad_value_table_covers_every_config_key() -> None:
    assert {key for key, _ in BAD_VALUES} == set(CONFIG_KEYS)


@pytest.mark.parametrize(("key", "value"), BAD_VALUES)
def test_bad_cli_value_is_rejected_naming_the_key(key: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        build_config({}, {key: value})
    # a request body field given on the command line is named as `-p` gave it
    named = "-p messages" if value == {"messages": []} else key
    assert named in str(info.value)


@pytest.mark.parametrize(("key", "value"), BAD_VALUES)
def test_bad_file_value_is_rejected_naming_file_and_key(key: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        build_config({key: value}, {}, source="configs/my-job.toml")
    assert "configs/my-job.toml" in str(info.value)
    assert key in str(info.value)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("hold_seconds", 1, 1),
        ("hold_seconds", 29, 29),
        ("grace", 0, 0.0),
        ("timeout", 30.5, 30.5),
        ("limit", 3, 3),
        ("status_url", "{base_url}/poll/{request_id}", "{base_url}/poll/{request_id}"),
        ("status_url", "{origin}/s/{request_id}", "{origin}/s/{request_id}"),
        ("drop_params", ["top_k"], ("top_k",)),
        ("progress", None, None),
    ],
)
def test_boundary_values_are_accepted(key: str, value: Any, expected: Any) -> None:
    assert getattr(build_config({key: value}), key) == expected


def test_backoff_max_below_backoff_base_is_rejected() -> None:
    with pytest.raises(ConfigError, match="backoff_max"):
        build_config({"backoff_base": 5, "backoff_max": 1})


def test_model_in_params_is_rejected() -> None:
    with pytest.raises(ConfigError, match="^-p model: set the model with --model"):
        build_config({}, {"params": {"model": "x"}})


def test_unknown_key_in_build_config_suggests_the_right_one() -> None:
    with pytest.raises(ConfigError) as info:
        build_config({"rmp": 10}, {}, source="job.toml")
    message = str(info.value)
    assert "job.toml" in message
    assert "'rmp'" in message
    assert "did you mean 'rpm'" in message


def test_unknown_cli_key_with_dashes_suggests_underscore_name() -> None:
    with pytest.raises(ConfigError, match="did you mean 'max_attempts'"):
        build_config({}, {"max-attempts": 3})


def test_unknown_key_in_toml_names_file_and_suggestion(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "concurency = 4\n")
    with pytest.raises(ConfigError) as info:
        load_toml(path)
    message = str(info.value)
    assert str(path) in message
    assert "'concurency'" in message
    assert "did you mean 'concurrency'" in message


def test_unknown_key_far_from_any_known_key_has_no_suggestion(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "zzzzzz = 4\n")
    with pytest.raises(ConfigError) as info:
        load_toml(path)
    assert "'zzzzzz'" in str(info.value)
    assert "did you mean" not in str(info.value)


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "rpm = = 4\n", name="broken.toml")
    with pytest.raises(ConfigError) as info:
        load_toml(path)
    assert str(path) in str(info.value)
    assert "not valid TOML" in str(info.value)


def test_missing_config_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="nope.toml"):
        load_toml(path)


def test_load_toml_returns_known_keys_and_params(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'rpm = 3\nstream = true\n[params]\nstop = ["x"]\n')
    assert load_toml(path) == {"rpm": 3, "stream": True, "params": {"stop": ["x"]}}


# ---------------------------------------------------------------- -p KEY=VALUE


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("temperature=0.2", ("temperature", 0.2)),
        ("max_tokens=64", ("max_tokens", 64)),
        ('stop=["a","b"]', ("stop", ["a", "b"])),
        ('response_format={"type":"json_object"}', ("response_format", {"type": "json_object"})),
        ("top_k=null", ("top_k", None)),
        ("flag=true", ("flag", True)),
        ("name=hello world", ("name", "hello world")),
        ("expr=a=b", ("expr", "a=b")),
        ("empty=", ("empty", "")),
        (" spaced =1", ("spaced", 1)),
    ],
)
def test_parse_param(text: str, expected: tuple[str, Any]) -> None:
    assert parse_param(text) == expected


@pytest.mark.parametrize("text", ["temperature", "=5", "  =5", ""])
def test_parse_param_without_key_or_equals_is_rejected(text: str) -> None:
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_param(text)


# ---------------------------------------------------------------- request body template


def test_body_template_has_api_reference_defaults() -> None:
    body = build_config().body_template()
    assert body == {
        "model": NVIDIA_MODEL,
        "max_tokens": 16384,
        "temperature": 0.6,
        "top_p": 0.95,
        "top_k": 20,
        "presence_penalty": 0,
        "repetition_penalty": 1,
        "chat_template_kwargs": {"enable_thinking": True},
    }


def test_body_template_thinking_off() -> None:
    body = build_config({}, {"thinking": False}).body_template()
    assert body["chat_template_kwargs"] == {"enable_thinking": False}


def test_body_template_stream_asks_for_usage() -> None:
    body = build_config({}, {"stream": True}).body_template()
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


def test_body_template_without_stream_has_no_stream_fields() -> None:
    body = build_config().body_template()
    assert "stream" not in body
    assert "stream_options" not in body


def test_body_template_params_override_defaults_and_add_fields() -> None:
    cfg = build_config({}, {"params": {"temperature": 0.1, "seed": 42}, "model": "m/y"})
    body = cfg.body_template()
    assert body["temperature"] == 0.1
    assert body["seed"] == 42
    assert body["model"] == "m/y"
    assert body["top_p"] == 0.95


def test_body_template_none_param_removes_field() -> None:
    body = build_config({}, {"params": {"top_k": None, "repetition_penalty": None}}).body_template()
    assert "top_k" not in body
    assert "repetition_penalty" not in body
    assert body["top_p"] == 0.95


def test_body_template_drop_params_removes_fields() -> None:
    body = build_config({"drop_params": ["top_k", "chat_template_kwargs"]}).body_template()
    assert "top_k" not in body
    assert "chat_template_kwargs" not in body
    assert body["temperature"] == 0.6


def test_body_template_dict_param_merges_into_dict_default() -> None:
    cfg = build_config({}, {"params": {"chat_template_kwargs": {"reasoning_budget": 100}}})
    body = cfg.body_template()
    assert body["chat_template_kwargs"] == {"enable_thinking": True, "reasoning_budget": 100}


def test_body_template_dict_param_can_override_thinking_key() -> None:
    cfg = build_config({}, {"params": {"chat_template_kwargs": {"enable_thinking": False}}})
    assert cfg.body_template()["chat_template_kwargs"] == {"enable_thinking": False}


def test_body_template_is_a_fresh_copy_each_time() -> None:
    cfg = build_config()
    body = cfg.body_template()
    body["chat_template_kwargs"]["enable_thinking"] = False
    body["temperature"] = 2
    again = cfg.body_template()
    assert again["chat_template_kwargs"] == {"enable_thinking": True}
    assert again["temperature"] == 0.6


# ---------------------------------------------------------------- identity / fingerprint


def fp(cfg: RunConfig, digests: list[str] = DIGESTS) -> str:
    return fingerprint(cfg.identity(digests))


def test_same_settings_give_same_fingerprint() -> None:
    a = build_config({"rpm": 10}, {"params": {"seed": 1}})
    b = build_config({"rpm": 10}, {"params": {"seed": 1}})
    assert fp(a) == fp(b)
    assert len(fp(a)) == 64


@pytest.mark.parametrize(
    ("changes", "expected_change"),
    [
        ({"params": {"temperature": 0.1}}, "body.temperature: 0.6 -> 0.1"),
        ({"model": "other/model"}, "body.model: 'qwen/qwen3.5-397b-a17b' -> 'other/model'"),
        ({"thinking": False}, 'body.chat_template_kwargs: {"enable_thinking": true} -> {'),
        ({"stream": True}, "body.stream: (none) -> true"),
        ({"drop_params": ["top_k"]}, "body.top_k: 20 -> (none)"),
    ],
)
def test_changed_request_setting_changes_fingerprint(
    changes: dict[str, Any], expected_change: str
) -> None:
    base = build_config()
    changed = build_config({}, changes)
    assert fp(base) != fp(changed)
    changes = identity_changes(base.identity(DIGESTS), changed.identity(DIGESTS))
    assert any(change.startswith(expected_change) for change in changes), changes


def test_a_limit_is_not_part_of_what_the_job_is() -> None:
    """Raising a limit extends the job and lowering it hides rows (issue 12): neither is
    another job, and a checkpoint whose identity still names a limit is the same job."""
    base, limited = build_config(), build_config({}, {"limit": 10})
    assert fp(base) == fp(limited)
    recorded = {**limited.identity(DIGESTS), "limit": 10}  # as releases before it recorded
    assert same_job(recorded, base.identity(DIGESTS))
    assert identity_changes(recorded, base.identity(DIGESTS)) == []
    assert not same_job(recorded, build_config({}, {"model": "m"}).identity(DIGESTS))


def test_changed_input_digest_changes_fingerprint() -> None:
    cfg = build_config()
    assert fp(cfg, ["a" * 64]) != fp(cfg, ["b" * 64])
    assert fp(cfg, ["a" * 64]) != fp(cfg, ["a" * 64, "b" * 64])
    changes = identity_changes(cfg.identity(["a" * 64]), cfg.identity(["b" * 64]))
    assert changes == ["inputs: the content of input file 1 (of 1) changed"]
    two = identity_changes(cfg.identity(["a" * 64]), cfg.identity(["a" * 64, "b" * 64]))
    assert two == ["inputs: 1 file -> 2 files"]


def test_identity_changes_lists_exactly_what_changed() -> None:
    old = build_config().identity(DIGESTS)
    new = build_config({}, {"params": {"temperature": 0.1, "seed": 3}}).identity(DIGESTS)
    assert identity_changes(old, new) == [
        "body.seed: (none) -> 3",
        "body.temperature: 0.6 -> 0.1",
    ]
    assert identity_changes(old, old) == []


def test_base_url_trailing_slash_does_not_change_fingerprint() -> None:
    a = build_config({}, {"base_url": "http://127.0.0.1:8000/v1"})
    b = build_config({}, {"base_url": "http://127.0.0.1:8000/v1/"})
    assert fp(a) == fp(b)


@pytest.mark.parametrize(
    "changes",
    [
        {"rpm": 1},
        {"tpm": 1000},
        {"concurrency": 1},
        {"max_attempts": 1},
        {"timeout": 50},
        {"hold_seconds": 1},
        {"max_pending": 1},
        {"grace": 1},
        {"retry_failed": True},
        {"fresh": True},
        {"dry_run": True},
        {"progress": False},
        {"output": "elsewhere.parquet"},
        {"checkpoint": "elsewhere.sqlite"},
        {"api_key_env": "OTHER_KEY"},
        {"min_poll_interval": 0.01},
        {"backoff_base": 0.1, "backoff_max": 0.2},
    ],
)
def test_pacing_and_run_options_do_not_change_fingerprint(changes: dict[str, Any]) -> None:
    assert fp(build_config()) == fp(build_config({}, changes))


# ---------------------------------------------------------------- the API key


def cfg_for(base_url: str, **extra: Any) -> RunConfig:
    return build_config({}, {"base_url": base_url, **extra})


def test_missing_key_for_nvidia_host_is_auth_error_naming_env_var() -> None:
    with pytest.raises(AuthError, match="NVIDIA_API_KEY"):
        read_api_key(cfg_for(NVIDIA_BASE_URL), {})


def test_missing_key_names_the_configured_env_var() -> None:
    cfg = cfg_for("https://ai.api.nvidia.com/v1", api_key_env="MY_TEAM_KEY")
    with pytest.raises(AuthError, match="MY_TEAM_KEY"):
        read_api_key(cfg, {"NVIDIA_API_KEY": SECRET})


def test_empty_key_counts_as_missing() -> None:
    with pytest.raises(AuthError):
        read_api_key(cfg_for(NVIDIA_BASE_URL), {"NVIDIA_API_KEY": ""})


@pytest.mark.parametrize(
    "base_url", ["http://127.0.0.1:8000/v1", "http://localhost:8000/v1", "https://llm.internal/v1"]
)
def test_missing_key_for_non_nvidia_host_is_none(base_url: str) -> None:
    assert read_api_key(cfg_for(base_url), {}) is None


def test_key_is_returned_for_https() -> None:
    assert read_api_key(cfg_for(NVIDIA_BASE_URL), {"NVIDIA_API_KEY": SECRET}) == SECRET


def test_key_is_read_from_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NVIDIA_API_KEY", SECRET)
    assert read_api_key(cfg_for(NVIDIA_BASE_URL)) == SECRET


@pytest.mark.parametrize(
    "base_url",
    ["http://127.0.0.1:8000/v1", "http://localhost:8000/v1", "http://[::1]:8000/v1"],
)
def test_key_over_http_to_loopback_is_allowed(base_url: str) -> None:
    assert read_api_key(cfg_for(base_url), {"NVIDIA_API_KEY": SECRET}) == SECRET


@pytest.mark.parametrize(
    "base_url",
    [
        "http://10.0.0.5:8000/v1",
        "http://integrate.api.nvidia.com/v1",
        "http://localhost.example.com/v1",
    ],
)
def test_key_over_http_to_other_hosts_is_refused(base_url: str) -> None:
    with pytest.raises(ConfigError) as info:
        read_api_key(cfg_for(base_url), {"NVIDIA_API_KEY": SECRET})
    assert "NVIDIA_API_KEY" in str(info.value)
    assert "allow-insecure-http" in str(info.value)


def test_allow_insecure_http_lets_the_key_travel_over_http() -> None:
    cfg = cfg_for("http://10.0.0.5:8000/v1", allow_insecure_http=True)
    assert read_api_key(cfg, {"NVIDIA_API_KEY": SECRET}) == SECRET


def test_key_never_appears_in_error_messages() -> None:
    errors: list[BaseException] = []
    attempts = [
        (cfg_for("http://10.0.0.5/v1"), {"NVIDIA_API_KEY": SECRET}),
        (cfg_for("http://integrate.api.nvidia.com/v1"), {"NVIDIA_API_KEY": SECRET}),
        (cfg_for(NVIDIA_BASE_URL, api_key_env="OTHER"), {"NVIDIA_API_KEY": SECRET}),
    ]
    for cfg, env in attempts:
        with pytest.raises((ConfigError, AuthError)) as info:
            read_api_key(cfg, env)
        errors.append(info.value)
    assert len(errors) == 3
    for exc in errors:
        assert SECRET not in str(exc)
        assert SECRET not in repr(exc)
        assert all(SECRET not in str(arg) for arg in exc.args)


def test_public_dict_never_holds_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NVIDIA_API_KEY", SECRET)
    cfg = build_config({}, {"inputs": ["a.jsonl"], "params": {"seed": 1}})
    read_api_key(cfg)
    data = cfg.public_dict()
    assert SECRET not in repr(data)
    assert data["inputs"] == ["a.jsonl"]
    assert data["params"] == {"seed": 1}


@pytest.mark.parametrize(
    ("file_params", "cli_params"), [("x", {"a": 1}), ({"a": 1}, "x"), (["a"], {"a": 1})]
)
def test_params_that_are_not_tables_are_config_errors_when_merged(
    file_params: Any, cli_params: Any
) -> None:
    with pytest.raises(ConfigError, match="params"):
        build_config({"params": file_params}, {"params": cli_params}, source="job.toml")


@pytest.mark.parametrize(
    ("value", "expected"),
    [(50, (50, None)), ("50", (50, None)), ("5%", (None, 5.0)), ("0.5%", (None, 0.5))],
)
def test_failure_budget_rows_or_percent(value: Any, expected: tuple[Any, Any]) -> None:
    cfg = build_config(cli_values={"max_failures": value})
    assert failure_budget(cfg.max_failures) == expected


TOOL = {"type": "function", "function": {"name": "name_a_color", "parameters": {"type": "object"}}}


def test_tools_go_into_every_request_body() -> None:
    cfg = build_config(cli_values={"tools": [TOOL], "tool_choice": "auto"})
    body = cfg.body_template()
    assert body["tools"] == [TOOL] and body["tool_choice"] == "auto"


def test_tools_file_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "tools.json").write_text(json.dumps({"tools": [TOOL]}))
    config = tmp_path / "conf" / "job.toml"
    config.write_text('tools_file = "tools.json"\noutput = "out/r.parquet"\ninputs = ["d.jsonl"]\n')
    cfg = build_config(load_toml(config), source=str(config))
    assert cfg.body_template()["tools"] == [TOOL]
    assert cfg.output == str(tmp_path / "conf" / "out" / "r.parquet")
    assert cfg.inputs == (str(tmp_path / "conf" / "d.jsonl"),)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "is not JSON"),
        ("[]", "non-empty list"),
        ('[{"type": "function"}]', "function.name"),
    ],
)
def test_bad_tools_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "tools.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        build_config(cli_values={"tools_file": str(path)})


def test_tools_and_tools_file_together_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "tools.json"
    path.write_text(json.dumps([TOOL]))
    with pytest.raises(ConfigError, match="not both"):
        build_config({"tools": [TOOL]}, {"tools_file": str(path)})


def test_nvidia_requests_must_be_allowed_to_outlast_the_hold() -> None:
    with pytest.raises(ConfigError, match="timeout .* must be longer than hold_seconds"):
        build_config(cli_values={"hold_seconds": 3600})  # the default timeout is 600
    assert build_config(cli_values={"hold_seconds": 3600, "timeout": 3700}).hold_seconds == 3600
    local = {"base_url": "http://127.0.0.1:8000/v1", "timeout": 0.5}
    assert build_config(cli_values=local).timeout == 0.5  # the hold means nothing there


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"timeout": 10}, "job.toml: timeout (10s) must be longer than hold_seconds (30s)"),
        ({"backoff_base": 5, "backoff_max": 1}, "job.toml: backoff_max must be >= backoff_base"),
        ({"max_cost": 1.0}, "job.toml: max_cost needs prices"),
        ({"params": {"model": "m"}}, "job.toml: [params] model: set the model with --model"),
    ],
)
def test_checks_across_keys_name_the_file_that_set_the_value(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(values, source="job.toml")
    assert str(info.value).startswith(message)
