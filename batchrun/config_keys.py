"""What each config key accepts: one checker per `run` setting.

A checker takes the key's label for messages (`rpm`, or `job.toml: rpm` for a file's value)
and the raw value from TOML or the command line. It returns what the RunConfig field holds,
coerced where a looser form is accepted (a comma-separated `--extract`, a tools file holding
{"tools": [...]}), and raises ConfigError naming the key otherwise. `VALIDATORS` maps every
config key to its checker; its keys are `config.CONFIG_KEYS`.

Checks across keys, and which source wins, are `config.build_config`'s; what makes a URL
acceptable is `urls.py`'s.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .endpoints import check_endpoints
from .errors import ConfigError
from .urls import http_url, status_url_template, url_template


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(key: str, value: Any) -> int:
    if not _is_int(value) or value < 1:
        raise ConfigError(f"{key} must be a whole number >= 1, got {value!r}")
    return int(value)


def _optional_positive_int(key: str, value: Any) -> int | None:
    if value is None or value == 0:
        return None
    return _positive_int(key, value)


def _optional_limit(key: str, value: Any) -> int | None:
    return None if value is None else _positive_int(key, value)


def _pricing(key: str, value: Any) -> dict[str, float]:
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(f"{key} must be a table with prompt and completion (USD per 1M tokens)")
    for name in value:
        if name not in ("prompt", "completion"):
            close = difflib.get_close_matches(name, ["completion", "prompt"], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"{key}.{name} is not a price (prompt and completion, USD per 1M tokens){hint}"
            )
    for name, price in value.items():
        if isinstance(price, bool) or not isinstance(price, int | float) or price < 0:
            raise ConfigError(f"{key}.{name} must be a price >= 0 (USD per 1M tokens)")
    for name in ("prompt", "completion"):
        if name not in value:  # a missing price would count those tokens as free
            raise ConfigError(
                f"{key}.{name} is missing: give both prices (USD per 1M tokens; 0 if free)"
            )
    return {name: float(price) for name, price in value.items()}


def _optional_positive_float(key: str, value: Any) -> float | None:
    return None if value is None else _positive_float(key, value)


def _field_list(key: str, value: Any) -> tuple[str, ...]:
    """Field names: a list, or a comma-separated string (`--extract label,score`)."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list | tuple) or not value:
        raise ConfigError(f"{key} must name at least one field, e.g. label,score")
    if not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{key} must be field names, got {value!r}")
    return tuple(value)


def _engine(key: str, value: Any) -> str:
    if value not in ("local", "ray"):
        raise ConfigError(f"{key} must be local or ray, got {value!r}")
    return str(value)


def _output_format(key: str, value: Any) -> str:
    allowed = ("parquet", "openai-jsonl", "both")
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
    return str(value)


def _failure_budget(key: str, value: Any) -> str | None:
    """`N` (rows) or `N%` (of the rows finished this run); an int N is taken as rows."""
    if value is None:
        return None
    text = str(value).strip() if not isinstance(value, bool) else ""
    number = text[:-1] if text.endswith("%") else text
    try:
        amount = float(number)
    except ValueError:
        amount = -1.0
    whole = number.isdigit()
    if text.endswith("%") and 0 < amount <= 100:
        return text
    if not text.endswith("%") and whole and amount >= 1:
        return text
    raise ConfigError(
        f"{key} must be a number of rows (e.g. 50) or a percentage (e.g. 5%), got {value!r}"
    )


def _positive_float(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{key} must be a number > 0, got {value!r}")
    return float(value)


def _non_negative_float(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"{key} must be a number >= 0, got {value!r}")
    return float(value)


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    return value


def _optional_bool(key: str, value: Any) -> bool | None:
    return None if value is None else _bool(key, value)


def _string(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key} must be a non-empty string, got {value!r}")
    return value


def _env_name(key: str, value: Any) -> str:
    """The name of the variable holding the API key. A value that is no variable name may
    be the key itself, pasted in the wrong place: it is never echoed."""
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise ConfigError(
            f"{key} takes the name of an environment variable (such as NVIDIA_API_KEY), not "
            "the key itself; what was given is not a variable name (not shown: it may be a key)"
        )
    return value


def _optional_string(key: str, value: Any) -> str | None:
    return None if value is None else _string(key, value)


def _http_url(key: str, value: Any) -> str:
    return http_url(key, _string(key, value))


def _status_template(key: str, value: Any) -> str:
    return status_url_template(key, _string(key, value))


def _url_template(key: str, value: Any) -> str:
    return url_template(key, _string(key, value))


def _hold(key: str, value: Any) -> int:
    # NVCF rejects NVCF-POLL-SECONDS above 3600 with a 400 (PROTOCOL.md 2.1).
    if not _is_int(value) or not 1 <= value <= 3600:
        raise ConfigError(f"{key} must be a whole number of seconds from 1 to 3600, got {value!r}")
    return int(value)


def _rpm(key: str, value: Any) -> int:
    """Requests per minute; 0 means no limit (a local server that needs none)."""
    if not _is_int(value) or value < 0:
        raise ConfigError(
            f"{key} must be a whole number of requests per minute (0: no limit), got {value!r}"
        )
    return int(value)


def _inputs(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not value:
        raise ConfigError(f"{key} must be a list of paths, got {value!r}")
    return tuple(_string(key, v) for v in value)


def _names(key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{key} must be a list of field names, got {value!r}")
    if "model" in value or "messages" in value:
        raise ConfigError(f"{key} cannot drop model or messages")
    return tuple(value)


def _tools(key: str, value: Any) -> tuple[Mapping[str, Any], ...]:
    """OpenAI tool definitions: a list of {"type": "function", "function": {"name": ...}}."""
    if isinstance(value, Mapping) and "tools" in value:
        value = value["tools"]  # a file holding {"tools": [...], ...}
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{key} must be a non-empty list of tool definitions, got {value!r:.80}")
    for n, tool in enumerate(value):
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if not isinstance(tool, Mapping) or tool.get("type", "function") != "function":
            raise ConfigError(f'{key}[{n}] must be an object with "type": "function"')
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise ConfigError(f"{key}[{n}].function.name must be a string")
    return tuple(value)


def _tool_choice(key: str, value: Any) -> str | Mapping[str, Any]:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, Mapping) and value:
        return value
    raise ConfigError(f'{key} must be "auto", "none", "required" or a table naming a function')


def _response_format(key: str, value: Any) -> Mapping[str, Any]:
    kinds = ("text", "json_object", "json_schema")
    if not isinstance(value, Mapping) or value.get("type") not in kinds:
        raise ConfigError(f"{key} must be a table whose type is one of {', '.join(kinds)}")
    if value["type"] == "json_schema" and not isinstance(value.get("json_schema"), Mapping):
        raise ConfigError(f"{key}: type json_schema needs a json_schema table")
    return value


def _schema(key: str, value: Any) -> Mapping[str, Any] | None:
    """A JSON Schema (a table in TOML), checked as one."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key} must be a JSON Schema (a table), got {value!r}")
    from .validation import check_schema

    check_schema(key, value)
    return dict(value)


def _non_negative_whole(key: str, value: Any) -> int:
    if not _is_int(value) or value < 0:
        raise ConfigError(f"{key} must be a whole number >= 0, got {value!r}")
    return int(value)


def _template(key: str, value: Any) -> str:
    from .templates import Template  # parsing checks the placeholders now, not per row

    Template(_string(key, value), key)
    return str(value)


def load_tools_file(key: str, path: str) -> tuple[Mapping[str, Any], ...]:
    try:
        value = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{key}: {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{key}: {path} is not JSON ({exc.msg}, line {exc.lineno})") from None
    return _tools(f"{key} ({path})", value)


def request_params(key: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key} must be a table of request body fields, got {value!r}")
    for name in value:
        if name in ("messages",):
            raise ConfigError(
                f"{key}.{name} cannot be set for the whole job; it comes from each row"
            )
    return dict(value)


def _store_endpoint(key: str, value: Any) -> str | None:
    """An S3-compatible store's URL: http(s), with a host."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not re.match(r"https?://[^/\s]+/?$", value):
        raise ConfigError(
            f"{key} must be an http(s) URL of an S3-compatible store such as "
            f"'http://127.0.0.1:9000', got {value!r}"
        )
    return value.rstrip("/")


VALIDATORS: dict[str, Callable[[str, Any], Any]] = {
    "inputs": _inputs,
    "output": _string,
    "base_url": _http_url,
    "endpoints": check_endpoints,
    "model": _string,
    "api_key_env": _env_name,
    "rpm": _rpm,
    "tpm": _optional_positive_int,
    "concurrency": _positive_int,
    "max_attempts": _positive_int,
    "timeout": _positive_float,
    "hold_seconds": _hold,
    "max_pending": _positive_int,
    "status_url": _status_template,
    "status_url_fallback": _status_template,
    "assets_url": _url_template,
    "asset_upload": _optional_bool,
    "stream": _bool,
    "thinking": _bool,
    "params": request_params,
    "drop_params": _names,
    "tools": _tools,
    "tools_file": _optional_string,
    "tool_choice": _tool_choice,
    "response_format": _response_format,
    "schema": _schema,
    "schema_file": _optional_string,
    "max_validation_retries": _non_negative_whole,
    "prompt_template": _template,
    "system_prompt": _template,
    "checkpoint": _optional_string,
    "fresh": _bool,
    "retry_failed": _bool,
    "require_space": _bool,
    "limit": _optional_limit,
    "repeats": _positive_int,
    "dry_run": _bool,
    "progress": _optional_bool,
    "progress_interval": _positive_float,
    "grace": _non_negative_float,
    "max_failures": _failure_budget,
    "engine": _engine,
    "ray_address": _optional_string,
    "workers": _positive_int,
    "output_format": _output_format,
    "output_partition_rows": _optional_positive_int,
    "endpoint_url": _store_endpoint,
    "checkpoint_upload": _bool,
    "parse_json": _bool,
    "reuse": _optional_string,
    "log_json": _optional_string,
    "offline": _bool,
    "pricing": _pricing,
    "max_cost": _optional_positive_float,
    "extract": _field_list,
    "allow_insecure_http": _bool,
    "min_poll_interval": _non_negative_float,
    "max_poll_time": _positive_float,
    "max_pause": _non_negative_float,
    "backoff_base": _non_negative_float,
    "backoff_max": _non_negative_float,
}
