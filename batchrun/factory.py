"""How an Engine is put together: one factory for the local runner and a Ray worker.

What differs between runners is where the job's shared state lives; `Services` names it:
the rate limiter, the checkpoint sink, the asset-id cache, the cost budget and the event log
are local objects in one process, and proxies to cluster services on Ray (ray/worker.py).
Everything else (the HTTP client, the media resolver, the retry policy, the cost guard)
is built here, the same way for both.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .assets import AssetIds, AssetUploader
from .budget import Budget, CostGuard
from .client import EndpointClient
from .clock import SYSTEM_CLOCK, Clock
from .concurrency import AdaptiveLimit, ConcurrencyLimit, FixedLimit
from .config import RunConfig
from .endpoints import EndpointSpec, endpoint_config, endpoint_specs
from .engine import Engine, EngineParts
from .lifecycle import Lifecycle, Sink
from .limits import Limiter, RateLimiter, RateWindow
from .media import MediaResolver
from .monitor import EventSink, Monitor, RunStats
from .payloads import BodyBuilder
from .pool import Endpoint, EndpointPool
from .stop import StopSignal
from .transport import AiohttpTransport, Transport


@dataclass
class Services:
    """A runner's shared state, as the engine uses it. `limiter`, when given, is the first
    endpoint's (shared with other jobs, or a cluster's); any other endpoint gets its own."""

    limiter: Limiter | None
    sink: Sink
    assets: AssetIds | None = None
    budget: Budget | None = None
    events: EventSink | None = None


def new_transports(cfg: RunConfig, keys: Mapping[str, str | None]) -> dict[str, Transport]:
    """A transport for each endpoint, holding that endpoint's key (credentials.read_keys)."""
    return {
        spec.key: new_transport(endpoint_config(cfg, spec), keys.get(spec.key))
        for spec in endpoint_specs(cfg)
    }


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


def build_pool(
    cfg: RunConfig,
    transports: Callable[[EndpointSpec], Transport],
    limiter: Limiter | None,
    clock: Clock,
    monitor: Monitor | None = None,
) -> EndpointPool:
    """The job's endpoints (one without `[[endpoints]]`), each with its client, limits and
    request body (its model may be its own)."""
    endpoints: list[Endpoint] = []
    for spec in endpoint_specs(cfg):
        own = endpoint_config(cfg, spec)
        concurrency: ConcurrencyLimit = (
            AdaptiveLimit(maximum=own.concurrency) if spec.auto else FixedLimit(own.concurrency)
        )
        endpoints.append(
            Endpoint(
                spec=spec,
                cfg=own,
                client=EndpointClient(transports(spec), own),
                limiter=limiter if limiter is not None and not endpoints else new_limiter(own),
                builder=BodyBuilder(own.body_template()),
                concurrency=concurrency,
            )
        )
    return EndpointPool(endpoints, clock, monitor, job_key_env=cfg.api_key_env)


def build_engine(
    cfg: RunConfig,
    transport: Transport | Mapping[str, Transport],
    services: Services,
    *,
    stats: RunStats | None = None,
    stop: StopSignal | None = None,
    clock: Clock = SYSTEM_CLOCK,
    rng: random.Random | None = None,
) -> Engine:
    """An Engine for `cfg` over `transport` (one for every endpoint, or one each by endpoint
    key), its shared state in `services`."""
    monitor = Monitor(stats, services.events)

    def transport_of(spec: EndpointSpec) -> Transport:
        return transport[spec.key] if isinstance(transport, Mapping) else transport

    pool = build_pool(cfg, transport_of, services.limiter, clock, monitor)
    uploader = None
    if pool.first.cfg.uses_assets() and services.assets is not None:
        uploader = AssetUploader(pool.first.client, services.assets)
    parts = EngineParts(
        pool=pool,
        rows=Lifecycle(services.sink),
        monitor=monitor,
        stop=stop or StopSignal(clock),
        media=MediaResolver(uploader),
        costs=CostGuard(services.budget, BodyBuilder(cfg.body_template()).max_tokens),
        clock=clock,
        rng=rng or random.Random(),
    )
    return Engine(cfg, parts)
