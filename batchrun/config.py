"""Run settings: RunConfig and its defaults, config files, CLI overrides. What makes a job
a job (its fingerprint) is `identity.py`'s; the API key is read in `credentials.py`.

Precedence is CLI flag > config file > the defaults below. Every `run` option has the same
name as a config key (dashes become underscores); request body fields go under `[params]`.
`build_config` merges the sources, checks each value with its key's checker
(`config_keys.py`), then checks the settings against each other; every message names a
value where it was set (`job.toml: [params] top_p`, `-p top_p`: a `Source`), and a sweep
stacks layers of its own through `build_config_from`. This module reads config files (and,
through `config_keys`, a `--tools` file), never the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .body_fields import check_body_fields
from .config_keys import VALIDATORS, load_tools_file, request_params
from .endpoints import EndpointSpec, check_endpoints_against_job
from .errors import ConfigError
from .paths import default_checkpoint_path, from_config_folder
from .repeats import check_repeats
from .urls import is_nvidia_host
from .validation import load_schema_file, schema_of

NVIDIA_BASE_URL = "https://integrate.api.nvidia.com/v1"
NVIDIA_MODEL = "qwen/qwen3.5-397b-a17b"
DEFAULT_STATUS_URL = "{base_url}/status/{request_id}"
NVCF_ASSETS_URL = "https://api.nvcf.nvidia.com/v2/nvcf/assets"
# PROTOCOL.md decision 1: where polls go once `{base_url}/status` proves not to exist.
NVCF_STATUS_URL = "https://api.nvcf.nvidia.com/v2/nvcf/pexec/status/{request_id}"

# Request body defaults from the API reference for qwen/qwen3.5-397b-a17b.
BODY_DEFAULTS: dict[str, Any] = {
    "max_tokens": 16384, "temperature": 0.60, "top_p": 0.95, "top_k": 20,
    "presence_penalty": 0, "repetition_penalty": 1,
}  # fmt: skip


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs, validated. Field names are the config keys."""

    inputs: tuple[str, ...] = ()
    output: str = ""
    base_url: str = NVIDIA_BASE_URL
    endpoints: tuple[EndpointSpec, ...] = ()  # [[endpoints]]: a pool (endpoints.py)
    model: str = NVIDIA_MODEL
    api_key_env: str = "NVIDIA_API_KEY"
    rpm: int = 40
    tpm: int | None = None
    concurrency: int = 16
    max_attempts: int = 6
    timeout: float = 600.0
    hold_seconds: int = 30
    max_pending: int = 256
    status_url: str = DEFAULT_STATUS_URL
    status_url_fallback: str = NVCF_STATUS_URL
    assets_url: str = NVCF_ASSETS_URL  # {origin} and {base_url} may be used
    asset_upload: bool | None = None  # images over 180 KB via assets; None: on for NVIDIA
    stream: bool = False
    thinking: bool = True
    params: Mapping[str, Any] = field(default_factory=dict)
    drop_params: tuple[str, ...] = ()
    tools: tuple[Mapping[str, Any], ...] | None = None  # OpenAI tool definitions
    tools_file: str | None = None  # a JSON file of them (--tools FILE)
    tool_choice: str | Mapping[str, Any] | None = None
    response_format: Mapping[str, Any] | None = None  # {"type": "json_object"} or json_schema
    schema: Mapping[str, Any] | None = None  # answers must validate (else: response_format's)
    schema_file: str | None = None  # a JSON file holding that schema (read into `schema`)
    max_validation_retries: int = 2  # asks again, quoting the error, this many times a row
    prompt_template: str | None = None  # "{column}" placeholders filled from each row
    system_prompt: str | None = None
    checkpoint: str | None = None
    fresh: bool = False
    retry_failed: bool = False
    require_space: bool = False  # too little free disk for the job: refuse, not warn
    limit: int | None = None
    repeats: int = 1  # samples of every input row (repeats.py)
    dry_run: bool = False
    progress: bool | None = None
    progress_interval: float = 60.0  # a status line this often when stderr is not a terminal
    grace: float = 30.0
    max_failures: str | None = None  # "N" rows, or "N%" of rows finished this run
    engine: str = "local"  # or "ray"
    ray_address: str | None = None  # "local" (a private one-machine cluster) or HOST:PORT
    workers: int = 2  # Ray workers (actors), each with its share of the limits
    output_format: str = "parquet"  # or "openai-jsonl", or "both"
    output_partition_rows: int | None = None  # Parquet output as a folder of parts this big
    endpoint_url: str | None = None  # an S3-compatible store's URL (as AWS_ENDPOINT_URL)
    checkpoint_upload: bool = False  # the finished checkpoint also beside a store's output
    pricing: Mapping[str, float] | None = None  # USD per million prompt/completion tokens
    max_cost: float | None = None  # USD; the job stops before spending past it
    log_json: str | None = None  # one JSON event per line: job start/end, rows, retries, 429s
    reuse: str | None = None  # an earlier checkpoint or output: answers to identical requests
    offline: bool = False  # send nothing: rows with no reused or stored answer fail
    parse_json: bool = False  # parse each answer's JSON into a `parsed` column
    extract: tuple[str, ...] = ()  # top-level fields of that JSON, one typed column each
    allow_insecure_http: bool = False
    # Tuning knobs, config-file only (documented in configs/local.toml).
    min_poll_interval: float = 1.0
    max_poll_time: float = 3600.0  # give up on an id polled this long (NVCF keeps one 1 h)
    max_pause: float = 900.0
    backoff_base: float = 1.0
    backoff_max: float = 60.0

    @property
    def checkpoint_path(self) -> Path:
        if self.checkpoint:
            return Path(self.checkpoint)
        return default_checkpoint_path(self.output)

    def chat_url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    def url_values(self) -> dict[str, str]:
        """What `{base_url}` and `{origin}` mean in the URL templates."""
        parts = urlsplit(self.base_url)
        return {"base_url": self.base_url.rstrip("/"), "origin": f"{parts.scheme}://{parts.netloc}"}

    def is_nvidia(self) -> bool:
        return is_nvidia_host(urlsplit(self.base_url).hostname or "")

    def uses_assets(self) -> bool:
        return self.is_nvidia() if self.asset_upload is None else self.asset_upload

    def key_urls(self) -> list[str]:
        """Every URL the key may be sent to: the endpoint, where its 202s are polled, and
        the asset API. NVIDIA's fallback hosts only for a key meant for NVIDIA."""
        values = self.url_values()
        urls = [self.base_url, self.status_url.format(request_id="x", **values)]
        if self.is_nvidia() or self.status_url_fallback != NVCF_STATUS_URL:
            urls.append(self.status_url_fallback.format(request_id="x", **values))
        if self.uses_assets():
            urls.append(self.assets_url.format(**values))
        return urls

    def body_template(self) -> dict[str, Any]:
        """The request body every row starts from (row fields are merged over it).

        A `params` value of None (`-p top_k=null`), or a name in `drop_params`, removes
        that field, for servers that reject NVIDIA's sampling fields.
        """
        body: dict[str, Any] = {"model": self.model, **BODY_DEFAULTS}
        body["chat_template_kwargs"] = {"enable_thinking": self.thinking}
        if self.tools:
            body["tools"] = [dict(t) for t in self.tools]
        if self.tool_choice is not None:
            body["tool_choice"] = self.tool_choice
        if self.response_format is not None:
            body["response_format"] = dict(self.response_format)
        if self.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        for key, value in self.params.items():
            if value is None:
                body.pop(key, None)
            elif isinstance(value, dict) and isinstance(body.get(key), dict):
                body[key] = {**body[key], **value}
            else:
                body[key] = value
        for key in self.drop_params:
            body.pop(key, None)
        return body

    def answer_schema(self) -> dict[str, Any] | None:
        """What every answer must match (validation.schema_of); None: no validation."""
        return schema_of(self.schema, None, self.response_format)

    def public_dict(self) -> dict[str, Any]:
        """Settings as plain data for the checkpoint and logs (never holds the key)."""
        data = dataclasses.asdict(self)
        data["params"] = dict(self.params)
        data["inputs"] = list(self.inputs)
        data["drop_params"] = list(self.drop_params)
        data["tools"] = [dict(t) for t in self.tools] if self.tools else None
        return data

    def identity(self, input_digests: list[str]) -> dict[str, Any]:
        """What the work is: inputs plus every setting that changes what is sent. Not
        `limit`: a job whose limit is raised goes on (new rows are read), one whose limit is
        lowered shows fewer rows; neither is another job. `repeats` only when over 1, so that
        a job without repeats keeps the fingerprint it had before there were any. Nor where
        it is sent: endpoints come and go without making another job (endpoints.py)."""
        identity = {
            "inputs": input_digests,
            "body": self.body_template(),
            "prompt_template": self.prompt_template,
            "system_prompt": self.system_prompt,
        }
        return identity | ({"repeats": self.repeats} if self.repeats > 1 else {})


def failure_budget(spec: str | None) -> tuple[int | None, float | None]:
    """(rows, percent) from a validated `max_failures` value."""
    if spec is None:
        return None, None
    if spec.endswith("%"):
        return None, float(spec[:-1])
    return int(spec), None


CONFIG_KEYS = frozenset(VALIDATORS)


def read_toml(path: Path, kind: str) -> dict[str, Any]:
    """A TOML file's top-level table, for config and sweep files alike. A missing,
    unreadable or malformed file is a ConfigError naming it; `kind` ("config", "sweep")
    says which file was not found. Checking the keys is the caller's business."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{kind} file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a config file; syntax errors and unknown keys name the file and the key."""
    path = Path(path)
    data = read_toml(path, "config")
    for key in data:
        if key not in CONFIG_KEYS:
            raise ConfigError(f"{path}: unknown key {key!r}{_did_you_mean(key)}")
    return _relative_to(path.parent, data)


PATH_KEYS = ("inputs", "output", "checkpoint", "tools_file", "schema_file", "reuse", "log_json")


def _relative_to(folder: Path, data: dict[str, Any]) -> dict[str, Any]:
    """Paths in a config file are relative to the file, so cron can run it from anywhere."""
    for key in PATH_KEYS:
        value = data.get(key)
        if isinstance(value, str):
            data[key] = from_config_folder(folder, value)
        elif key == "inputs" and isinstance(value, list):
            data[key] = [from_config_folder(folder, v) for v in value]
    return data


def _did_you_mean(key: str) -> str:
    close = difflib.get_close_matches(key.replace("-", "_"), sorted(CONFIG_KEYS), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass(frozen=True)
class Source:
    """Where a layer of settings was written, so that a message names a value as its user
    wrote it: a config file (and the table in it that holds the run settings), or the
    command line (`file` None)."""

    file: str | None = None
    table: str | None = None  # a sweep file's "run" or "grid"; None: the file's top level
    params_table: str = "params"  # where its request body fields are ("run.params", "grid")

    def key(self, key: str) -> str:
        """`rpm` (command line), `job.toml: rpm`, `sweep.toml: [run] rpm`."""
        if self.file is None:
            return key
        return f"{self.file}: [{self.table}] {key}" if self.table else f"{self.file}: {key}"

    def param(self, path: str) -> str:
        """A request body field: `-p top_p`, `job.toml: [params] top_p`,
        `sweep.toml: [run.params] top_p`, `sweep.toml: [grid] top_p`."""
        if self.file is None:
            return f"-p {path}"
        return f"{self.file}: [{self.params_table}] {path}"

    def unknown(self, key: str) -> str:
        """The message for a key that is no run setting."""
        if self.file is None:
            return f"command line: unknown setting {key!r}{_did_you_mean(key)}"
        where = f" in [{self.table}]" if self.table else ""
        return f"{self.file}: unknown key {key!r}{where}{_did_you_mean(key)}"


COMMAND_LINE = Source()


def build_config(
    file_values: Mapping[str, Any] | None = None,
    cli_values: Mapping[str, Any] | None = None,
    *,
    source: str = "config",
) -> RunConfig:
    """Merge defaults < config file < CLI (None on the CLI means "not given") and validate."""
    return build_config_from(
        [(file_values or {}, Source(source)), (cli_values or {}, COMMAND_LINE)]
    )


def build_config_from(layers: Sequence[tuple[Mapping[str, Any], Source]]) -> RunConfig:
    """Merge layers of settings, each over the ones before it, and validate. `params` tables
    are merged field by field; every message names a value where its layer set it."""
    merged: dict[str, Any] = {}
    origin: dict[str, Source] = {}
    param_origin: dict[str, Source] = {}
    for values, where in layers:
        for key, value in values.items():
            if key not in CONFIG_KEYS:
                raise ConfigError(where.unknown(key))
            if where.file is None and value is None:
                continue
            if key == "params":  # merged across sources, so checked before merging
                value = _request_params(value, where)
                param_origin.update(dict.fromkeys(value, where))
                value = {**merged.get("params", {}), **value}
            merged[key] = value
            origin[key] = where
    checked: dict[str, Any] = {}
    for key, value in merged.items():
        checked[key] = VALIDATORS[key](origin[key].key(key), value)
    if checked.get("tools_file"):
        if checked.get("tools"):
            raise ConfigError(
                f"give tools or tools_file (--tools), not both ({origin['tools'].key('tools')}, "
                f"{origin['tools_file'].key('tools_file')})"
            )
        checked["tools"] = load_tools_file(
            origin["tools_file"].key("tools_file"), checked["tools_file"]
        )
    if checked.get("schema_file"):
        other = origin["schema"].key("schema") if checked.get("schema") is not None else None
        label = origin["schema_file"].key("schema_file")
        checked["schema"] = load_schema_file(label, checked["schema_file"], other)
    cfg = RunConfig(**checked)
    _check_consistency(cfg, _Labels(origin, param_origin))
    return cfg


def _request_params(value: Any, where: Source) -> dict[str, Any]:
    if isinstance(value, Mapping) and "messages" in value:
        raise ConfigError(
            f"{where.param('messages')} cannot be set for the whole job; it comes from each row"
        )
    return request_params(where.key("params"), value)


@dataclass(frozen=True)
class _Labels:
    """How to name a merged setting in a message: by the layer that set it."""

    keys: Mapping[str, Source]
    params: Mapping[str, Source]

    def key(self, key: str) -> str:
        return self.keys.get(key, COMMAND_LINE).key(key)

    def param(self, path: str) -> str:
        return self.params.get(path.split(".", 1)[0], COMMAND_LINE).param(path)


def _check_consistency(cfg: RunConfig, labels: _Labels) -> None:
    if cfg.backoff_max < cfg.backoff_base:
        raise ConfigError(f"{labels.key('backoff_max')} must be >= backoff_base")
    if "model" in cfg.params:
        raise ConfigError(f"{labels.param('model')}: set the model with --model / model = ...")
    nvidia = check_endpoints_against_job(cfg, labels.key)
    check_body_fields(cfg.params, labels.param, nvidia=nvidia)
    check_repeats(cfg.repeats, cfg.params, cfg.drop_params, labels.key("repeats"))
    if cfg.max_cost is not None and "max_tokens" not in cfg.body_template():
        raise ConfigError(
            f"{labels.key('max_cost')} needs max_tokens: it bounds what each request may cost"
        )
    if cfg.max_cost is not None and not cfg.pricing:
        raise ConfigError(
            f"{labels.key('max_cost')} needs prices: add a [pricing] table (prompt, completion)"
        )


def parse_param(text: str) -> tuple[str, Any]:
    """`-p KEY=VALUE`: VALUE is parsed as JSON when it parses, else kept as a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--param expects KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value
