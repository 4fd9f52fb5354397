"""A whole job: inputs -> checkpoint -> engine -> output. The library face of `batchrun run`.

Order of work, so that everything that can fail cheaply fails before a request is sent:
config and key checks, output folder writable (preflight.py), input digests, the checkpoint
lock, then the checkpoint (intake.py: created and filled from the inputs on the first run,
compared on a resume; then prepared for this run), the free-space check (disk.py), then the
engine (local, or on Ray), then the output file, written from the checkpoint whatever way the
engine stopped. A write the disk refuses ends the run there, as a DiskError that says what
is safe and how to resume (disk.py); a damaged checkpoint, as CheckpointDamaged.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .budget import BudgetSpent, CostBudget, Pricing, cap_to_finish, job_cost
from .checkpoint import AssetCache, Checkpoint, CheckpointWriter, FailureCause, Totals
from .checkpoint.damage import damage_error
from .config import RunConfig
from .dataset import expand_inputs
from .disk import check_space, disk_stop, fault_path, from_fault
from .dispatch import run_engine
from .endpoint_figures import from_checkpoint
from .endpoints import endpoint_specs
from .errors import BatchrunError, DiskError
from .events import EventLog
from .factory import Services, build_engine, new_transports
from .intake import open_checkpoint
from .lifecycle import RowState
from .limits import RateLimiter
from .lock import CheckpointLock
from .monitor import RunStats
from .preflight import check_held_endpoints, keeps_answer_bodies, preflight, prepare
from .remote import is_remote
from .signals import install_signal_handlers
from .stop import StopSignal
from .storage import DiskFault, disk_fault
from .summary import config_one_offs, next_command
from .transport import Transport
from .wake import watch_for_sleep

log = logging.getLogger(__name__)


@dataclass
class JobResult:
    """How a run ended, for the summary and the exit code."""

    exit_code: int
    output: str  # a path, or a store's URL
    outputs: list[str]
    checkpoint: Path
    counts: dict[RowState, int]
    totals: Totals
    stats: RunStats
    wall_s: float
    resumed: bool
    stopped: BatchrunError | None = None
    failure_causes: list[FailureCause] = field(default_factory=list)
    invalid_causes: list[FailureCause] = field(default_factory=list)
    parse_errors: int = 0  # ok answers whose JSON did not parse (--parse-json / --extract)
    cost: float | None = None  # USD over all runs, when [pricing] is set
    cap_to_finish: float | None = None  # after a --max-cost stop: a cap that lets it finish
    rows_past_limit: int = 0  # kept from earlier runs past a lowered --limit
    repeats: int = 1  # samples of each input row (rows above are checkpoint rows)
    endpoints: list[dict[str, Any]] | None = None  # a pool's figures by endpoint


class Watcher(Protocol):
    """Something that follows a run's counters until cancelled (the progress bar)."""

    async def watch(self, stats: RunStats) -> None: ...


def run_job(
    cfg: RunConfig,
    *,
    watcher: Watcher | None = None,
    transport: Transport | None = None,
) -> JobResult:
    """Run or resume the job described by `cfg` and write its output."""
    return asyncio.run(run_job_async(cfg, watcher=watcher, transport=transport))


@dataclass
class _Parts:
    """What a run is wired from, besides its config and checkpoint (tests swap some)."""

    api_keys: dict[str, str | None]  # by endpoint key
    watcher: Watcher | None
    transport: Transport | None
    limiter: RateLimiter | None
    events: EventLog | None


async def run_job_async(
    cfg: RunConfig,
    *,
    watcher: Watcher | None = None,
    transport: Transport | None = None,
    limiter: RateLimiter | None = None,
) -> JobResult:
    """The same, inside a running loop; `limiter` may be shared by several jobs (sweeps)."""
    api_keys = preflight(cfg)
    files = expand_inputs(cfg.inputs, cfg.endpoint_url)
    started = time.monotonic()
    events = EventLog(Path(cfg.log_json)) if cfg.log_json else None
    try:
        with CheckpointLock(cfg.checkpoint_path), tuned_gc():
            checkpoint, resumed = open_checkpoint(cfg, files)
            try:
                stats = prepare(cfg, checkpoint, resumed)
                if not cfg.offline:
                    check_held_endpoints(cfg, checkpoint)
                if not cfg.offline:
                    check_space(cfg, checkpoint, stats.todo)
                run = checkpoint.start_run()
                if events is not None:
                    events.emit("job_start", **_start_fields(cfg, checkpoint, stats, resumed))
                stopped: BatchrunError | None = None
                if not cfg.offline:
                    parts = _Parts(api_keys, watcher, transport, limiter, events)
                    try:
                        await _run_engine(cfg, checkpoint, stats, parts)
                    except DiskError:
                        raise  # no output to write, nor run to record: the disk is refusing
                    except BatchrunError as exc:
                        stopped = exc
                checkpoint.rescue_if_removed()
                result = _finish(cfg, checkpoint, stats, started, resumed, stopped)
                checkpoint.end_run(run, result.exit_code, stats.finished, stats.submissions)
                if events is not None:
                    events.emit("job_end", **_end_fields(result))
                return result
            finally:
                checkpoint.close()
    except DiskError as exc:
        raise disk_stop(cfg, exc) from None
    except (OSError, sqlite3.Error) as exc:
        if (damaged := damage_error(exc, cfg.checkpoint_path)) is not None:
            raise damaged from None
        fault = disk_fault(exc, fault_path(exc, cfg))
        if fault is None:
            raise
        raise disk_stop(cfg, from_fault(fault)) from None
    finally:
        if events is not None:
            with suppress(OSError):  # a full disk must not hide how the run ended
                events.close()


@contextmanager
def tuned_gc() -> Iterator[None]:
    """Fewer and cheaper garbage collections while a job runs.

    A run allocates a few objects per request and keeps almost none, and what exists when
    it starts (modules, config) lives to the end. Frozen, that never gets traversed again;
    a gen-0 threshold of 50,000 (700 by default) makes collections rare (benchmarks/
    RESULTS.md, "Hot-path choices", measures the difference).
    """
    threshold, frozen_before = gc.get_threshold(), gc.get_freeze_count()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        if not frozen_before:  # unfreeze() thaws everything: only if we froze it all
            gc.unfreeze()


def _finish(
    cfg: RunConfig,
    checkpoint: Checkpoint,
    stats: RunStats,
    started: float,
    resumed: bool,
    stopped: BatchrunError | None,
) -> JobResult:
    """Write the output (whatever way the run ended) and sum the job up."""
    from .destination import output_settings, upload_checkpoint, write_outputs

    outputs, parse_errors = write_outputs(
        checkpoint, cfg.output, output_settings(cfg), cfg.checkpoint_path.parent
    )
    if cfg.checkpoint_upload and is_remote(cfg.output):
        url = upload_checkpoint(checkpoint, cfg.output, cfg.endpoint_url)
        log.info("checkpoint copied to %s", url)
    counts = checkpoint.counts()
    totals = checkpoint.totals()
    cost = job_cost(cfg.pricing, totals)
    return JobResult(
        exit_code=_exit_code(counts, stopped),
        output=outputs[0],
        outputs=outputs,
        checkpoint=cfg.checkpoint_path,
        counts=counts,
        totals=totals,
        stats=stats,
        wall_s=time.monotonic() - started,
        resumed=resumed,
        stopped=stopped,
        failure_causes=checkpoint.failure_causes(),
        invalid_causes=checkpoint.invalid_causes(),
        parse_errors=parse_errors,
        cost=cost,
        cap_to_finish=_cap_to_finish(cfg, counts, cost, stopped),
        rows_past_limit=checkpoint.rows_past_limit(),
        repeats=cfg.repeats,
        endpoints=from_checkpoint(checkpoint, cfg.pricing) if len(cfg.endpoints) > 1 else None,
    )


def _cap_to_finish(
    cfg: RunConfig, counts: dict[RowState, int], cost: float | None, stopped: BatchrunError | None
) -> float | None:
    pricing = Pricing.from_config(cfg.pricing)
    if not isinstance(stopped, BudgetSpent) or cfg.max_cost is None or pricing is None:
        return None
    finished = counts.get(RowState.DONE, 0) + counts.get(RowState.FAILED, 0)
    unfinished = sum(counts.values()) - finished - counts.get(RowState.INVALID, 0)
    worst = stopped.worst or pricing.cost(0, cfg.body_template().get("max_tokens"))
    return cap_to_finish(
        spent=cost or 0.0,
        cap=cfg.max_cost,
        finished=finished,
        unfinished=unfinished,
        worst=worst,
        concurrency=cfg.concurrency,
    )


def _start_fields(
    cfg: RunConfig, checkpoint: Checkpoint, stats: RunStats, resumed: bool
) -> dict[str, Any]:
    return {
        "output": cfg.output,
        "checkpoint": str(cfg.checkpoint_path),
        "model": cfg.model,
        "base_url": cfg.base_url,
        "endpoints": [spec.key for spec in endpoint_specs(cfg)],
        "rows": checkpoint.row_count(),
        "to_send": stats.todo,
        "resumed": resumed,
        "reused": stats.reused,
        "not_cached": stats.not_cached,
    }


def _end_fields(result: JobResult) -> dict[str, Any]:
    return {
        "exit_code": result.exit_code,
        "states": {str(state): n for state, n in result.counts.items()},
        "tokens": asdict(result.totals),
        "cost": result.cost,
        "wall_s": round(result.wall_s, 3),
        "sent": result.stats.submissions,
        "retries": result.stats.retries,
        "rate_limited": result.stats.rate_limited,
        "rebuys": result.stats.rebuys,
        "stopped": str(result.stopped) if result.stopped else None,
    }


def _exit_code(counts: dict[RowState, int], stopped: BatchrunError | None) -> int:
    if stopped is not None:
        return stopped.exit_code
    unfinished = sum(n for s, n in counts.items() if s is not RowState.DONE)
    return 1 if unfinished else 0


async def _run_engine(
    cfg: RunConfig, checkpoint: Checkpoint, stats: RunStats, parts: _Parts
) -> None:
    watching = asyncio.create_task(parts.watcher.watch(stats)) if parts.watcher else None
    warming = asyncio.create_task(asyncio.to_thread(_warm_up_output))
    waking = asyncio.create_task(watch_for_sleep(cfg.hold_seconds))
    stop = StopSignal()
    install_signal_handlers(stop, cfg.grace, lambda: next_command(undo=config_one_offs(cfg)))
    budget = _budget(cfg, checkpoint.totals())
    try:
        if cfg.engine == "ray":
            from .ray.driver import run_on_ray

            await run_on_ray(cfg, checkpoint, stats, stop, budget, parts.events)
        else:
            await _run_local(cfg, checkpoint, stats, stop, budget, parts)
    finally:
        waking.cancel()
        if watching is not None:
            watching.cancel()
            # A bar whose terminal closed (OSError) is no reason to lose the run's output.
            with suppress(asyncio.CancelledError, OSError):
                await watching
        # Only a speed-up: never let it hide how the run ended (a failed import of pyarrow
        # shows when the output is written).
        with suppress(Exception):
            await warming


async def _run_local(
    cfg: RunConfig,
    checkpoint: Checkpoint,
    stats: RunStats,
    stop: StopSignal,
    budget: CostBudget | None,
    parts: _Parts,
) -> None:
    transports = new_transports(cfg, parts.api_keys) if parts.transport is None else {}
    loop = asyncio.get_running_loop()

    def on_fault(fault: DiskFault) -> None:  # on the writer's thread: stop sending at once
        loop.call_soon_threadsafe(stop.request, from_fault(fault))

    writer = CheckpointWriter(
        checkpoint.path, keep_answer_bodies=keeps_answer_bodies(cfg), on_fault=on_fault
    )
    assets = AssetCache(checkpoint.path)
    try:
        services = Services(
            limiter=parts.limiter,
            sink=writer,
            assets=assets,
            budget=budget,
            events=parts.events,
        )
        engine = build_engine(cfg, parts.transport or transports, services, stats=stats, stop=stop)
        with suppress(DiskError):  # the writer's account of it, below, says what was saved
            await run_engine(engine, checkpoint)
    finally:
        try:
            for transport in [parts.transport] if parts.transport else transports.values():
                await transport.close()
            writer.handoff()
            await asyncio.to_thread(writer.flush)
        finally:
            await asyncio.to_thread(writer.close)
            assets.close()
    if (disk := writer.disk_error()) is not None:
        raise disk


def _warm_up_output() -> None:
    """Import the output writer and pyarrow with it while the job waits on the network, not
    at start-up or at the end, when the user waits for it."""
    from . import results  # noqa: F401


def _budget(cfg: RunConfig, totals: Totals) -> CostBudget | None:
    pricing = Pricing.from_config(cfg.pricing)
    if cfg.max_cost is None or pricing is None:
        return None
    spent = job_cost(cfg.pricing, totals) or 0.0
    return CostBudget(cfg.max_cost, pricing, spent)
