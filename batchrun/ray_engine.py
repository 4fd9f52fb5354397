"""`--engine ray`: the same engine on a Ray cluster (an optional extra: batchrun[ray]).

Nothing about a row's life changes: each Ray worker runs batchrun's own Engine (one aiohttp
session per worker, its share of `--concurrency` and `--max-pending`). What is shared
becomes a service, as DISTRIBUTED.md recommends:

- the rate limit: one `RateService` actor holds the RateWindow (sliding 60 s windows, GCRA
  pacing, the 429 slow-down) and grants start times; workers take single slots when rpm is
  small and small chunks when it is large, so rpm/tpm hold across the whole cluster;
- the checkpoint: one `CheckpointService` actor, pinned to the driver's node (SQLite must
  stay on one machine), owns the CheckpointWriter; workers send their updates in batches
  every 100 ms, and a consume-once answer is committed before the worker goes on.

The driver reads the inputs and keeps the checkpoint exactly as the local engine does
(ingest, duplicate ids, resume, output), then streams the rows still to do to the workers as
Arrow record batches, a bounded number in flight, resumed request ids first. A worker that
dies loses only what it had in flight (rows resume as `pending`, ids as `polling`).

The API key is read by each worker from its own environment (the same variable), never
passed through Ray, whose task specs and logs live on disk.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import pyarrow as pa

from .assets import AssetUploader
from .client import EndpointClient
from .config import RunConfig, build_config, is_loopback, read_api_key
from .errors import AuthError, BatchrunError, ConfigError
from .limits import WINDOW_S, RateWindow, Reservation
from .media import MediaResolver
from .records import FETCHED, PENDING, POLLING, WorkItem
from .runner import (
    DISPATCH_PAGE,
    Engine,
    PageSource,
    RunStats,
    StopSignal,
    failure_budget_spent,
    item_from_row,
)
from .store import FINAL, GENERIC, SUBMITTED, CheckpointWriter

log = logging.getLogger(__name__)

# A WorkItem as an Arrow row (what the driver sends a worker).
WORK_COLUMNS = tuple(f.name for f in fields(WorkItem) if f.name != "cost_hold")
SINK_INTERVAL_S = 0.1
SLOT_CHUNK_MIN_RPM = 600  # below this, slots are granted one at a time (fairness)


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("--engine ray needs Ray: pip install 'batchrun[ray]'") from None
    return ray


# ---------------------------------------------------------------- services (actors)


class RateService:
    """The cluster's one rate limiter. Start times are wall-clock (time.time())."""

    def __init__(self, rpm: int | None, tpm: int | None) -> None:
        self._window = RateWindow(rpm, tpm)
        self._entries: dict[int, Reservation] = {}
        self._next = 0

    def _now(self) -> float:
        return time.time()

    def reserve(self, count: int, tokens: int) -> list[tuple[float, int]]:
        """`count` start slots of `tokens` each: (start time, booking id)."""
        now = self._now()
        # Bookings never settled (a failed try, slots dropped after a 429) are forgotten
        # once past the window: a correction could no longer change anything.
        for booking in [b for b, r in self._entries.items() if r.at < now - 2 * WINDOW_S]:
            del self._entries[booking]
        grants = []
        for _ in range(count):
            reservation = self._window.reserve(now, tokens)
            self._next += 1
            if reservation.entry is not None:
                self._entries[self._next] = reservation
            grants.append((reservation.at, self._next))
        return grants

    def settle(self, corrections: list[tuple[int, int | None]]) -> None:
        for booking, actual in corrections:
            reservation = self._entries.pop(booking, None)
            if reservation is not None:
                self._window.settle(reservation, actual)
        self._window.on_success()

    def rate_limited(self, retry_after: float | None) -> float:
        return self._window.on_rate_limited(self._now(), retry_after)

    def pause(self, seconds: float) -> None:
        self._window.pause(self._now() + seconds)

    def paused_until(self) -> float:
        return self._window.paused_until


class CheckpointService:
    """The checkpoint writer, in an actor on the driver's node."""

    def __init__(self, path: str) -> None:
        self._writer = CheckpointWriter(Path(path))

    def apply(self, ops: list[tuple[int, int, Any]]) -> None:
        self._writer.apply(ops)

    def apply_now(self, ops: list[tuple[int, int, Any]]) -> None:
        self._writer.apply(ops)
        self._writer.flush()

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


# ---------------------------------------------------------------- worker-side proxies


class RemoteLimiter:
    """The RateLimiter interface the Engine uses, backed by the RateService actor."""

    def __init__(self, service: Any, rpm: int | None, tpm: int | None, expected: int) -> None:
        self._service = service
        self._limited = bool(rpm or tpm)
        self._chunk = 1 if not rpm or rpm < SLOT_CHUNK_MIN_RPM else 8
        self._slots: deque[tuple[float, int]] = deque()
        self._corrections: list[tuple[int, int | None]] = []
        self._paused_until = 0.0
        self._checked = 0.0
        self.expected_completion = float(expected)

    async def acquire(
        self, prompt_tokens: int = 0, *, sleep: Callable[[float], Awaitable[None]] | None = None
    ) -> Reservation:
        nap = sleep or asyncio.sleep
        if not self._limited:
            await self._wait_out_pause(nap)
            return Reservation(time.time())
        if not self._slots:
            tokens = prompt_tokens + int(self.expected_completion)
            self._slots.extend(await self._service.reserve.remote(self._chunk, tokens))
        at, booking = self._slots.popleft()
        delay = at - time.time()
        if delay > 0:
            await nap(delay)
        return Reservation(at, tokens=booking)  # `tokens` carries the booking id here

    async def _wait_out_pause(self, nap: Callable[[float], Awaitable[None]]) -> None:
        # Unlimited jobs still share 429 pauses; look them up at most twice a second.
        now = time.time()
        if now - self._checked > 0.5:
            self._checked = now
            self._paused_until = await self._service.paused_until.remote()
        if self._paused_until > now:
            await nap(self._paused_until - now)

    def settle(self, reservation: Reservation, total: int | None, completion: int | None) -> None:
        if completion is not None:
            self.expected_completion += 0.1 * (completion - self.expected_completion)
        if self._limited:
            self._corrections.append((reservation.tokens, total))
            if len(self._corrections) >= 32:
                self.flush_corrections()

    def flush_corrections(self) -> None:
        if self._corrections:
            self._service.settle.remote(self._corrections)
            self._corrections = []

    def on_rate_limited(self, retry_after: float | None) -> float:
        self._slots.clear()  # slots booked before the 429 are given up (erring low)
        self._service.rate_limited.remote(retry_after)
        self._checked = 0.0
        return retry_after if retry_after is not None else 1.0

    def pause(self, seconds: float) -> None:
        self._service.pause.remote(seconds)
        self._checked = 0.0


class RemoteSink:
    """The Sink interface, backed by the CheckpointService: updates sent every 100 ms."""

    def __init__(self, service: Any) -> None:
        self._service = service
        self._ops: list[tuple[int, int, Any]] = []
        self._timer: asyncio.TimerHandle | None = None

    def _add(self, kind: int, idx: int, payload: Any) -> None:
        self._ops.append((kind, idx, payload))
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(SINK_INTERVAL_S, self.send)

    def send(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._ops:
            ops, self._ops = self._ops, []
            self._service.apply.remote(ops)  # one caller, a one-at-a-time actor: in order

    def update(self, idx: int, columns: dict[str, Any]) -> None:
        self._add(GENERIC, idx, columns)

    def submitted(self, idx: int, attempts: int, first_submit_at: float | None) -> None:
        self._add(SUBMITTED, idx, (attempts, first_submit_at))

    def finished(self, idx: int, values: tuple[Any, ...]) -> None:
        self._add(FINAL, idx, values)

    async def update_now(self, idx: int, columns: dict[str, Any]) -> None:
        self._ops.append((GENERIC, idx, columns))
        ops, self._ops = self._ops, []
        await self._service.apply_now.remote(ops)

    async def drain(self) -> None:
        ops, self._ops = self._ops, []
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self._service.apply_now.remote(ops)


class MemoryAssetCache:
    """The AssetCache interface kept in a worker's memory (the checkpoint is not at hand)."""

    def __init__(self) -> None:
        self._ids: dict[str, tuple[str, float]] = {}

    async def get(self, sha256: str) -> tuple[str, float] | None:
        return self._ids.get(sha256)

    async def put(self, sha256: str, asset_id: str, uploaded_at: float) -> None:
        self._ids[sha256] = (asset_id, uploaded_at)


class ChatWorker:
    """One Ray worker: batchrun's Engine on its own loop, fed Arrow record batches."""

    def __init__(
        self, settings: dict[str, Any], rate: Any, checkpoint: Any, share: dict[str, int]
    ) -> None:
        self._settings = settings
        self._rate = rate
        self._checkpoint = checkpoint
        self._share = share
        self._engine: Engine | None = None
        self._sink: RemoteSink | None = None
        self._limiter: RemoteLimiter | None = None
        self._transport: Any = None

    def _setup(self) -> Engine:
        from .transport import AiohttpTransport

        cfg = build_config(None, {**self._settings, **self._share})
        self._transport = AiohttpTransport(
            api_key=read_api_key(cfg),  # from this worker's environment
            trusted_urls=cfg.key_urls(),
            connections=cfg.concurrency + cfg.max_pending + 4,
            allow_insecure_http=cfg.allow_insecure_http,
        )
        expected = min(cfg.body_template().get("max_tokens") or 512, 512)
        self._limiter = RemoteLimiter(self._rate, cfg.rpm or None, cfg.tpm, expected)
        self._sink = RemoteSink(self._checkpoint)
        client = EndpointClient(self._transport, cfg)
        # Large images: each worker uploads a file once per run (ids are not shared).
        uploader = AssetUploader(client, MemoryAssetCache()) if cfg.uses_assets() else None
        return Engine(
            cfg,
            client,
            self._limiter,
            self._sink,
            RunStats(),
            stop=StopSignal(),
            media=MediaResolver(uploader),
        )

    async def process(self, batch: pa.RecordBatch) -> dict[str, Any]:
        """Drive every row of the batch to its end; return this worker's counters so far."""
        if self._engine is None:
            self._engine = self._setup()
        engine = self._engine
        items = [WorkItem(**row) for row in batch.to_pylist()]
        try:
            await asyncio.gather(*(engine.run_item(item) for item in items))
        finally:
            assert self._sink is not None and self._limiter is not None
            self._sink.send()
            self._limiter.flush_corrections()
        counters = asdict(engine.stats)
        return {k: counters[k] for k in _COUNTERS} | {
            "causes": dict(engine.stats.causes),
            "stop": str(engine.stop.reason) if engine.stop.reason else None,
            "stop_kind": type(engine.stop.reason).__name__ if engine.stop.reason else None,
        }

    async def stop(self) -> None:
        if self._engine is not None:
            self._engine.request_stop()

    async def close(self) -> None:
        if self._sink is not None:
            await self._sink.drain()
        if self._transport is not None:
            await self._transport.close()


_COUNTERS = (
    "ok", "failed", "submissions", "polls", "accepted", "rebuys", "retries", "rate_limited",
    "prompt_tokens", "completion_tokens", "no_usage",
)  # fmt: skip


# ---------------------------------------------------------------- the driver


def worker_settings(cfg: RunConfig) -> dict[str, Any]:
    """The run settings a worker needs, as plain data (paths already resolved)."""
    data = cfg.public_dict()
    defaults = RunConfig().public_dict()
    data["tools_file"] = None  # tools already loaded into `tools`
    # The driver checks --max-failures over all workers; each would count only its own.
    driver_only = ("inputs", "output", "engine", "ray_address", "workers", "log_json", "reuse",
                   "checkpoint", "max_failures")  # fmt: skip
    return {
        k: v for k, v in data.items() if k not in driver_only and v is not None and v != defaults[k]
    }


def shares(cfg: RunConfig, workers: int) -> dict[str, int]:
    return {
        "concurrency": max(1, math.ceil(cfg.concurrency / workers)),
        "max_pending": max(1, math.ceil(cfg.max_pending / workers)),
    }


def start_ray(address: str, temp_dir: Path) -> tuple[Any, bool]:
    """Attach to a cluster, or start a private one for this job ("local"). (ray, started)."""
    ray = _ray()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    logging.getLogger("ray").setLevel(logging.ERROR)  # Ray's chatter is not the job's output
    local = address == "local"
    if local or is_loopback(f"http://{address.split(':')[0]}"):
        # Keep a one-machine cluster on 127.0.0.1 (DISTRIBUTED.md: "Loopback").
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    options: dict[str, Any] = {
        "log_to_driver": False,
        "configure_logging": False,
        "include_dashboard": False,
        "ignore_reinit_error": True,
    }
    if local:
        temp_dir.mkdir(parents=True, exist_ok=True)
        # More logical CPUs than cores: this is I/O-bound work (DISTRIBUTED.md: deadlock).
        options |= {"num_cpus": 4, "object_store_memory": 256 * 2**20, "_temp_dir": str(temp_dir)}
    ray.init(address=address, **options)
    return ray, local


async def run_on_ray(
    cfg: RunConfig,
    source: PageSource,
    checkpoint: Path,
    stats: RunStats,
    stop: StopSignal,
) -> None:
    """Dispatch the job's rows to Ray workers; raise what stopped it, as run_engine does."""
    ray, started = start_ray(cfg.ray_address or "local", Path(f"/tmp/batchrun-ray-{os.getpid()}"))
    actors: list[Any] = []
    try:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        rate = ray.remote(num_cpus=0)(RateService).remote(cfg.rpm or None, cfg.tpm)
        store = (
            # One call at a time: a worker's updates are applied in the order it sent them.
            ray.remote(num_cpus=0, max_concurrency=1)(CheckpointService)
            .options(scheduling_strategy=here)
            .remote(str(checkpoint))
        )
        worker_class = ray.remote(num_cpus=0.25)(ChatWorker)
        settings, share = worker_settings(cfg), shares(cfg, cfg.workers)
        workers = [worker_class.remote(settings, rate, store, share) for _ in range(cfg.workers)]
        actors = [rate, store, *workers]
        await _feed(cfg, source, workers, stats, stop)
        await asyncio.gather(*(w.close.remote() for w in workers))
        await store.flush.remote()
        await store.close.remote()
    finally:
        for actor in actors:
            ray.kill(actor)
        if started:
            ray.shutdown()
    if stop.reason is not None:
        raise stop.reason


async def _feed(
    cfg: RunConfig, source: PageSource, workers: list[Any], stats: RunStats, stop: StopSignal
) -> None:
    """Send batches round-robin, at most two per worker in flight; gather their counters."""
    share = shares(cfg, len(workers))
    # Rows in flight per worker stay under its share of --max-pending: two batches each.
    size = max(1, min(2 * share["concurrency"], share["max_pending"] // 2, DISPATCH_PAGE))
    inflight: dict[Any, int] = {}  # task -> worker index
    load = [0] * len(workers)
    seen: list[dict[str, Any]] = [{} for _ in workers]  # each worker's latest counters

    async def settle_one() -> None:
        done, _ = await asyncio.wait(list(inflight), return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            worker = inflight.pop(task)
            load[worker] -= 1
            _merge(cfg, stats, stop, task, seen, worker)

    for states in ((POLLING, FETCHED), (PENDING,)):
        async for batch in _batches(source, states, size):
            # Ids the server holds are all sent at once (NVCF drops one nobody polls);
            # new rows wait for room: two batches in flight per worker.
            while states == (PENDING,) and min(load) >= 2 and not stop.is_set:
                await settle_one()
            if stop.is_set:
                break
            target = load.index(min(load))
            task = asyncio.ensure_future(workers[target].process.remote(batch))
            inflight[task] = target
            load[target] += 1
    if stop.is_set:
        await asyncio.gather(*(w.stop.remote() for w in workers))
        # In-flight work gets the grace period, as on the local engine; then it is abandoned.
        done, _ = await asyncio.wait(list(inflight), timeout=cfg.grace)
        for task in done:
            _merge(cfg, stats, stop, task, seen, inflight.pop(task))
        for task in inflight:
            task.cancel()
        return
    while inflight:
        await settle_one()


def _merge(
    cfg: RunConfig,
    stats: RunStats,
    stop: StopSignal,
    task: asyncio.Future[Any],
    seen: list[dict[str, Any]],
    worker: int,
) -> None:
    """Fold a finished batch's report into the job's counters and stop reason."""
    try:
        report = task.result()
    except Exception as exc:  # a worker raised: an AuthError stops everything
        cause = getattr(exc, "cause", None) or exc
        if isinstance(cause, AuthError) or "AuthError" in type(cause).__name__:
            stop.request(AuthError(str(cause).splitlines()[-1]))
        else:
            stop.request(BatchrunError(f"a Ray worker failed: {str(exc).splitlines()[-1]}"))
        return
    # Counters are a worker's totals so far, and batches finish in any order: keep the
    # largest seen per worker (they only grow), and sum over the workers.
    latest = seen[worker]
    for key in _COUNTERS:
        latest[key] = max(latest.get(key, 0), report[key])
    causes = latest.setdefault("causes", Counter())
    for cause, n in report["causes"].items():
        causes[cause] = max(causes[cause], n)
    for key in _COUNTERS:
        setattr(stats, key, sum(w.get(key, 0) for w in seen))
    stats.causes = sum((w.get("causes", Counter()) for w in seen), Counter())
    if report["stop"] and stop.reason is None:
        from . import errors

        kind = getattr(errors, report["stop_kind"] or "", BatchrunError)
        stop.request(kind(report["stop"]))
    spent = failure_budget_spent(cfg, stats)
    if spent is not None and stop.reason is None:
        stop.request(spent)


async def _batches(source: PageSource, states: tuple[str, ...], size: int) -> Any:
    """Pages of rows as Arrow record batches (what a worker takes), `size` rows each."""
    after = -1
    while True:
        rows = await asyncio.to_thread(source.work_page, after, size, states)
        if not rows:
            return
        columns = list(zip(*(_work_row(row) for row in rows), strict=True))
        yield pa.RecordBatch.from_arrays([pa.array(c) for c in columns], names=list(WORK_COLUMNS))
        after = rows[-1][0]


def _work_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    item = item_from_row(row)
    return tuple(getattr(item, name) for name in WORK_COLUMNS)
