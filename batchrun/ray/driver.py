"""The Ray driver: start or attach to a cluster, start the services and the workers, and
stream the checkpoint's unfinished rows to them, resumed ids first; fold their reports into
the job's counters, stop reason and event log.

A worker that dies loses only what it had in flight (rows resume as `pending`, ids as
`polling`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import pyarrow as pa

from batchrun.budget import CostBudget
from batchrun.checkpoint import CheckpointReader
from batchrun.config import RunConfig
from batchrun.dispatch import DISPATCH_PAGE, HELD, PageSource, items
from batchrun.errors import AuthError, BatchrunError, ConfigError
from batchrun.events import EventLog
from batchrun.lifecycle import RowState, WorkItem
from batchrun.monitor import WORKER_COUNTERS, RunStats, failure_budget_spent
from batchrun.stop import StopSignal
from batchrun.urls import is_loopback

from .services import BudgetService, CheckpointService, RateService
from .worker import ChatWorker

log = logging.getLogger(__name__)

WORK_COLUMNS = tuple(f.name for f in fields(WorkItem))


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("--engine ray needs Ray: pip install 'batchrun[ray]'") from None
    return ray


def worker_settings(cfg: RunConfig) -> dict[str, Any]:
    """The run settings a worker needs, as plain data (paths already resolved)."""
    data = cfg.public_dict()
    defaults = RunConfig().public_dict()
    data["tools_file"] = None  # tools already loaded into `tools`
    # The driver checks --max-failures over all workers (each would count only its own),
    # and owns the log, the reuse and the cost cap's state.
    driver_only = ("inputs", "output", "engine", "ray_address", "workers", "log_json", "reuse",
                   "checkpoint", "max_failures", "max_cost")  # fmt: skip
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
    source: CheckpointReader,
    stats: RunStats,
    stop: StopSignal,
    budget: CostBudget | None,
    events: EventLog | None,
) -> None:
    """Dispatch the job's rows to Ray workers; raise what stopped it, as run_engine does."""
    from batchrun.preflight import keeps_answer_bodies

    ray, started = start_ray(cfg.ray_address or "local", Path(f"/tmp/batchrun-ray-{os.getpid()}"))
    actors: list[Any] = []
    try:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        service = ray.remote(num_cpus=0)
        rate = service(RateService).remote(cfg.rpm or None, cfg.tpm)
        store = (
            # One call at a time: a worker's transitions are applied in the order it sent them.
            ray.remote(num_cpus=0, max_concurrency=1)(CheckpointService)
            .options(scheduling_strategy=here)
            .remote(str(source.path), keeps_answer_bodies(cfg))
        )
        cap = None
        if budget is not None:
            prices = budget.pricing
            cap = service(BudgetService).remote(
                budget.cap, prices.prompt, prices.completion, budget.spent
            )
        share = shares(cfg, cfg.workers)
        worker = ray.remote(num_cpus=0.25)(ChatWorker)
        workers = [
            worker.remote(worker_settings(cfg), share, rate, store, cap, events is not None)
            for _ in range(cfg.workers)
        ]
        actors = [rate, store, *([cap] if cap is not None else []), *workers]
        await _Feed(cfg, workers, stats, stop, events).run(source)
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


class _Feed:
    """Batches round-robin to the workers, at most two per worker in flight; their reports
    folded into the job's counters, stop reason and event log."""

    def __init__(
        self,
        cfg: RunConfig,
        workers: list[Any],
        stats: RunStats,
        stop: StopSignal,
        events: EventLog | None,
    ) -> None:
        self.cfg, self.workers, self.stats, self.stop, self.events = (
            cfg,
            workers,
            stats,
            stop,
            events,
        )
        share = shares(cfg, len(workers))
        # Rows in flight per worker stay under its share of --max-pending: two batches each.
        self.size = max(1, min(2 * share["concurrency"], share["max_pending"] // 2, DISPATCH_PAGE))
        self.inflight: dict[asyncio.Future[Any], int] = {}  # batch -> worker index
        self.load = [0] * len(workers)
        self.seen: list[dict[str, Any]] = [{} for _ in workers]  # each worker's latest counters

    async def run(self, source: PageSource) -> None:
        for states in (HELD, (RowState.PENDING,)):
            async for batch in _batches(source, states, self.size):
                # Ids the server holds are all sent at once (NVCF drops one nobody polls);
                # new rows wait for room: two batches in flight per worker.
                while states != HELD and min(self.load) >= 2 and not self.stop.is_set:
                    await self._settle_one()
                if self.stop.is_set:
                    break
                target = self.load.index(min(self.load))
                task = asyncio.ensure_future(self.workers[target].process.remote(batch))
                self.inflight[task] = target
                self.load[target] += 1
        if self.stop.is_set:
            await self._stop_workers()
            return
        while self.inflight:
            await self._settle_one()

    async def _stop_workers(self) -> None:
        await asyncio.gather(*(w.stop.remote() for w in self.workers))
        # In-flight work gets the grace period, as on the local engine; then it is abandoned.
        done, _ = await asyncio.wait(list(self.inflight), timeout=self.cfg.grace)
        for task in done:
            self._merge(task, self.inflight.pop(task))
        for task in self.inflight:
            task.cancel()

    async def _settle_one(self) -> None:
        done, _ = await asyncio.wait(list(self.inflight), return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            worker = self.inflight.pop(task)
            self.load[worker] -= 1
            self._merge(task, worker)

    def _merge(self, task: asyncio.Future[Any], worker: int) -> None:
        """Fold a finished batch's report into the job's counters and stop reason."""
        try:
            report = task.result()
        except Exception as exc:  # a worker raised: an AuthError stops everything
            cause = getattr(exc, "cause", None) or exc
            if isinstance(cause, AuthError):
                self.stop.request(cause)
            else:
                self.stop.request(
                    BatchrunError(f"a Ray worker failed: {str(exc).splitlines()[-1]}")
                )
            return
        self._count(report, worker)
        for event in report["events"]:
            if self.events is not None:
                self.events.emit(event.pop("event"), **event)
        if isinstance(report["stop"], BatchrunError) and self.stop.reason is None:
            self.stop.request(report["stop"])
        spent = failure_budget_spent(self.cfg.max_failures, self.stats)
        if spent is not None and self.stop.reason is None:
            self.stop.request(spent)

    def _count(self, report: dict[str, Any], worker: int) -> None:
        # Counters are a worker's totals so far, and batches finish in any order: keep the
        # largest seen per worker (they only grow), and sum over the workers.
        latest = self.seen[worker]
        for key in WORKER_COUNTERS:
            latest[key] = max(latest.get(key, 0), report[key])
        causes = latest.setdefault("causes", Counter())
        for cause, n in report["causes"].items():
            causes[cause] = max(causes[cause], n)
        for key in WORKER_COUNTERS:
            setattr(self.stats, key, sum(w.get(key, 0) for w in self.seen))
        self.stats.causes = sum((w.get("causes", Counter()) for w in self.seen), Counter())


async def _batches(
    source: PageSource, states: Sequence[RowState], size: int
) -> AsyncIterator[pa.RecordBatch]:
    """Rows as Arrow record batches (what a worker takes), `size` rows each."""
    async for page in items(source, states, size):
        columns = [[getattr(item, name) for item in page] for name in WORK_COLUMNS]
        columns[WORK_COLUMNS.index("state")] = [str(item.state) for item in page]
        yield pa.RecordBatch.from_arrays([pa.array(c) for c in columns], names=list(WORK_COLUMNS))
