"""How an Engine is put together: one factory for the local runner and a Ray worker.

What differs between runners is where the job's shared state lives; `Services` names it:
the rate limiter, the checkpoint sink, the asset-id cache, the cost budget and the event log
are local objects in one process, and proxies to cluster services on Ray (ray/worker.py).
Everything else (the HTTP client, the media resolver, the retry policy, the cost guard)
is built here, the same way for both.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .assets import AssetIds, AssetUploader
from .budget import Budget, CostGuard
from .client import EndpointClient
from .clock import SYSTEM_CLOCK, Clock
from .config import RunConfig
from .engine import Engine, EngineParts
from .lifecycle import Lifecycle, Sink
from .limits import Limiter, RateLimiter, RateWindow
from .media import MediaResolver
from .monitor import EventSink, Monitor, RunStats
from .payloads import BodyBuilder
from .stop import StopSignal
from .transport import AiohttpTransport, Transport


@dataclass
class Services:
    """A runner's shared state, as the engine uses it."""

    limiter: Limiter
    sink: Sink
    assets: AssetIds | None = None
    budget: Budget | None = None
    events: EventSink | None = None


def new_transport(cfg: RunConfig, api_key: str | None) -> AiohttpTransport:
    return AiohttpTransport(
        api_key=api_key,
        trusted_urls=cfg.key_urls(),
        connections=cfg.concurrency + cfg.max_pending + 4,
        allow_insecure_http=cfg.allow_insecure_http,
    )


def new_limiter(cfg: RunConfig) -> RateLimiter:
    return RateLimiter(
        RateWindow(cfg.rpm or None, cfg.tpm), expected_completion=expected_completion(cfg)
    )


def expected_completion(cfg: RunConfig) -> int:
    """Completion tokens to book per request before an answer says (follows real usage)."""
    return min(cfg.body_template().get("max_tokens") or 512, 512)


def build_engine(
    cfg: RunConfig,
    transport: Transport,
    services: Services,
    *,
    stats: RunStats | None = None,
    stop: StopSignal | None = None,
    clock: Clock = SYSTEM_CLOCK,
    rng: random.Random | None = None,
) -> Engine:
    """An Engine for `cfg` over `transport`, its shared state in `services`."""
    client = EndpointClient(transport, cfg)
    uploader = None
    if cfg.uses_assets() and services.assets is not None:
        uploader = AssetUploader(client, services.assets)
    parts = EngineParts(
        client=client,
        limiter=services.limiter,
        rows=Lifecycle(services.sink),
        monitor=Monitor(stats, services.events),
        stop=stop or StopSignal(clock),
        media=MediaResolver(uploader),
        costs=CostGuard(services.budget, BodyBuilder(cfg.body_template()).max_tokens),
        clock=clock,
        rng=rng or random.Random(),
    )
    return Engine(cfg, parts)
