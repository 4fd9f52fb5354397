"""One Ray worker: batchrun's Engine, built by factory.build_engine over the services'
proxies, fed Arrow record batches of rows by the driver."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any

import pyarrow as pa

from batchrun.config import build_config
from batchrun.credentials import read_api_key
from batchrun.engine import Engine
from batchrun.factory import Services, build_engine, expected_completion, new_transport
from batchrun.lifecycle import RowState, WorkItem
from batchrun.monitor import WORKER_COUNTERS, RunStats

from .proxies import EventBuffer, RemoteAssets, RemoteBudget, RemoteLimiter, RemoteSink


def item_of(row: dict[str, Any]) -> WorkItem:
    """A WorkItem from a record batch row (driver.work_batch wrote it)."""
    return WorkItem(**{**row, "state": RowState(row["state"])})


class ChatWorker:
    def __init__(
        self,
        settings: dict[str, Any],
        share: dict[str, int],
        rate: Any,
        checkpoint: Any,
        budget: Any | None,
        log_events: bool,
    ) -> None:
        self._settings = {**settings, **share}
        self._rate, self._checkpoint, self._budget = rate, checkpoint, budget
        self._events = EventBuffer() if log_events else None
        self._engine: Engine | None = None
        self._sink: RemoteSink | None = None
        self._limiter: RemoteLimiter | None = None
        self._transport: Any = None

    def _setup(self) -> Engine:
        cfg = build_config(None, self._settings)
        # The key comes from this worker's environment, never through Ray (its task specs
        # and logs live on disk).
        self._transport = new_transport(cfg, read_api_key(cfg))
        self._limiter = RemoteLimiter(
            self._rate, cfg.rpm or None, cfg.tpm, expected_completion(cfg)
        )
        self._sink = RemoteSink(self._checkpoint)
        services = Services(
            limiter=self._limiter,
            sink=self._sink,
            assets=RemoteAssets(self._checkpoint),
            budget=RemoteBudget(self._budget) if self._budget is not None else None,
            events=self._events,
        )
        return build_engine(cfg, self._transport, services, stats=RunStats())

    async def process(self, batch: pa.RecordBatch) -> dict[str, Any]:
        """Drive every row of the batch to its end; return this worker's report so far."""
        if self._engine is None:
            self._engine = self._setup()
        engine = self._engine
        items = [item_of(row) for row in batch.to_pylist()]
        try:
            await asyncio.gather(*(engine.run_item(item) for item in items))
        finally:
            assert self._sink is not None and self._limiter is not None
            self._sink.send()
            self._limiter.flush_corrections()
        counters = asdict(engine.monitor.stats)
        return {k: counters[k] for k in WORKER_COUNTERS} | {
            "causes": dict(engine.monitor.stats.causes),
            "stop": engine.stop.reason,
            "events": self._events.drain() if self._events is not None else [],
        }

    async def stop(self) -> None:
        if self._engine is not None:
            self._engine.request_stop()

    async def close(self) -> None:
        if self._sink is not None:
            await self._sink.drain()
        if self._transport is not None:
            await self._transport.close()
