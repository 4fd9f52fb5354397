"""The endpoints a job sends to: `[[endpoints]]` tables, checked, and what each one inherits.

Without `[[endpoints]]` a job has one endpoint, made from its own `base_url`, `rpm`,
`concurrency` and so on, exactly as before there were pools. With it, every table names a
`base_url` and may set its own key variable, model, limits, weight and 202 settings; what a
table leaves out comes from the job's settings. `fallback = true` marks an endpoint that
gets rows only while every other one is down or cooling (pool.py).

An endpoint's `key` (its `name`, else its base URL) is what the checkpoint stores with each
row it sent and what the `endpoint` output column shows, so a resumed run polls a 202's id
at the endpoint that issued it. Endpoints are not part of the job's identity: adding one,
removing one or changing its limits goes on with the same checkpoint (identity.py).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from .config import RunConfig

AUTO = "auto"  # concurrency found by the pool's adaptive limit (concurrency.py)
DEFAULT_MAX_CONCURRENCY = 64  # the ceiling of "auto" when max_concurrency is not given


@dataclass(frozen=True)
class EndpointSpec:
    """One `[[endpoints]]` table; None means "the job's setting"."""

    base_url: str
    name: str | None = None
    api_key_env: str | None = None
    model: str | None = None
    rpm: int | None = None  # 0: no limit
    tpm: int | None = None
    concurrency: int | str | None = None  # a number, or "auto"
    max_concurrency: int | None = None  # the ceiling of "auto"
    max_pending: int | None = None
    weight: float = 1.0
    status_url: str | None = None
    hold_seconds: int | None = None
    fallback: bool = False

    @property
    def key(self) -> str:
        """What rows record as the endpoint that answered them."""
        return self.name or self.base_url.rstrip("/")

    @property
    def auto(self) -> bool:
        return self.concurrency == AUTO


def _weight(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{key} must be a number > 0, got {value!r}")
    return float(value)


def _concurrency(key: str, value: Any) -> int | str:
    if value == AUTO:
        return AUTO
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f'{key} must be a whole number >= 1 or "auto", got {value!r}')
    return value


def _fallback(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    return value


def endpoint_checkers() -> dict[str, Any]:
    """Each `[[endpoints]]` key's checker: the job-level key's, where there is one."""
    from .config_keys import VALIDATORS  # config_keys imports this module's checker

    same = ("base_url", "api_key_env", "model", "rpm", "tpm", "max_pending", "status_url")
    checkers: dict[str, Any] = {key: VALIDATORS[key] for key in same}
    checkers |= {
        "name": VALIDATORS["model"],  # a non-empty string
        "concurrency": _concurrency,
        "max_concurrency": VALIDATORS["concurrency"],
        "weight": _weight,
        "hold_seconds": VALIDATORS["hold_seconds"],
        "fallback": _fallback,
    }
    return checkers


def check_endpoints(key: str, value: Any) -> tuple[EndpointSpec, ...]:
    """The `endpoints` key: a list of tables (TOML's `[[endpoints]]`); an empty list is the
    job's single endpoint. Every message names the table by position: `endpoints[2].rpm`."""
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{key} must be a list of tables ([[endpoints]]), got {value!r}")
    specs = tuple(_spec(f"{key}[{i}]", table) for i, table in enumerate(value))
    _check_together(key, specs)
    return specs


def _spec(label: str, table: Any) -> EndpointSpec:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{label} must be a table with a base_url, got {table!r}")
    checkers = endpoint_checkers()
    for name in table:
        if name not in checkers:
            close = difflib.get_close_matches(name, sorted(checkers), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{label}: unknown key {name!r}{hint}")
    if "base_url" not in table:
        raise ConfigError(f"{label} needs a base_url")
    values = {name: checkers[name](f"{label}.{name}", v) for name, v in table.items()}
    spec = EndpointSpec(**values)
    if spec.max_concurrency is not None and not spec.auto:
        raise ConfigError(f'{label}.max_concurrency is the ceiling of concurrency = "auto"')
    return spec


def _check_together(key: str, specs: tuple[EndpointSpec, ...]) -> None:
    seen: dict[str, int] = {}
    for i, spec in enumerate(specs):
        if spec.key in seen:
            what = "name" if spec.name else "base_url"
            raise ConfigError(
                f"{key}[{i}] has the same {what} as {key}[{seen[spec.key]}] ({spec.key!r}); "
                "give each endpoint its own name"
            )
        seen[spec.key] = i
    if specs and all(spec.fallback for spec in specs):
        raise ConfigError(f"{key}: every endpoint is a fallback; at least one must not be")


def from_urls(urls: tuple[str, ...]) -> dict[str, Any]:
    """The settings `--base-url` gives (nothing when not given). Given several times: one
    endpoint per URL, sharing every other setting. On the command line they replace the
    config file's endpoints, so one `--base-url` is a job of one endpoint again."""
    if not urls:
        return {}
    endpoints = [{"base_url": url} for url in urls] if len(urls) > 1 else []
    return {"base_url": urls[0], "endpoints": endpoints}


def job_endpoint(cfg: RunConfig) -> EndpointSpec:
    """The one endpoint of a job without `[[endpoints]]`: its own settings."""
    return EndpointSpec(base_url=cfg.base_url)


def endpoint_specs(cfg: RunConfig) -> tuple[EndpointSpec, ...]:
    return cfg.endpoints or (job_endpoint(cfg),)


def endpoint_config(cfg: RunConfig, spec: EndpointSpec) -> RunConfig:
    """The job's settings as seen by one endpoint: the table's values over the job's. An
    "auto" endpoint's `concurrency` is its ceiling (what its connection pool must hold)."""
    ceiling = spec.max_concurrency or max(DEFAULT_MAX_CONCURRENCY, cfg.concurrency)
    concurrency = spec.concurrency if isinstance(spec.concurrency, int) else None
    return replace(
        cfg,
        base_url=spec.base_url,
        api_key_env=spec.api_key_env or cfg.api_key_env,
        model=spec.model or cfg.model,
        rpm=cfg.rpm if spec.rpm is None else spec.rpm,
        tpm=cfg.tpm if spec.tpm is None else spec.tpm,
        concurrency=ceiling if spec.auto else concurrency or cfg.concurrency,
        max_pending=spec.max_pending or cfg.max_pending,
        status_url=spec.status_url or cfg.status_url,
        hold_seconds=spec.hold_seconds or cfg.hold_seconds,
        endpoints=(),
    )


def check_endpoints_against_job(cfg: RunConfig, label: Callable[[str], str]) -> bool:
    """The job's settings as each endpoint sees them, checked (`label` names a key where it
    was set); the job's single endpoint when it has no `[[endpoints]]`. True when any
    endpoint is NVIDIA's (whose rules then apply to the request body)."""
    if cfg.engine == "ray" and cfg.endpoints:
        raise ConfigError(
            f"{label('endpoints')}: the Ray engine sends to the job's base_url alone; "
            'run an endpoint pool with engine = "local" (README: Endpoint pools)'
        )
    nvidia = False
    for spec in endpoint_specs(cfg):
        own = endpoint_config(cfg, spec)
        nvidia = nvidia or own.is_nvidia()
        if own.is_nvidia() and own.timeout <= own.hold_seconds:
            whose = f"the hold_seconds of endpoint {spec.key}" if cfg.endpoints else "hold_seconds"
            raise ConfigError(
                f"{label('timeout')} ({own.timeout:g}s) must be longer than {whose} "
                f"({own.hold_seconds}s): the server may hold a request that long before it "
                "answers 202"
            )
    return nvidia
