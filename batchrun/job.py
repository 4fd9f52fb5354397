"""A whole job: inputs -> checkpoint -> engine -> output. The library face of `batchrun run`.

Order of work, so that everything that can fail cheaply fails before a request is sent:
config and key checks, output folder writable, input digests, the checkpoint lock, then the
checkpoint (created and filled from the inputs on the first run: every row validated and ids
checked unique; on a resume only the fingerprint is compared), then the engine, then the
output file, written from the checkpoint whatever way the engine stopped.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .assets import AssetUploader
from .budget import CostBudget, Pricing
from .client import EndpointClient
from .columns import ColumnKinds
from .config import RunConfig, fingerprint, identity_changes, read_api_key
from .dataset import InputFile, expand_inputs, file_digest, read_rows
from .errors import (
    BatchrunError,
    ConfigError,
    Interrupted,
    RunMismatchError,
)
from .events import EventLog
from .limits import RateLimiter, RateWindow
from .lock import CheckpointLock
from .media import MediaResolver
from .payloads import RequestKeys, dump_extra, prepare_row
from .records import DONE, FAILED, INVALID, PENDING
from .runner import Engine, RunStats, StopSignal, run_engine
from .store import AssetCache, CheckpointWriter, Store, remove_checkpoint
from .templates import PromptTemplate
from .transport import AiohttpTransport, Transport

log = logging.getLogger(__name__)

INGEST_BATCH = 5000


@dataclass
class JobResult:
    """How a run ended, for the summary and the exit code."""

    exit_code: int
    output: Path
    outputs: list[Path]
    checkpoint: Path
    counts: dict[str, int]
    totals: dict[str, int]
    stats: RunStats
    wall_s: float
    resumed: bool
    stopped: BatchrunError | None = None
    failure_causes: list[tuple[str, int]] = field(default_factory=list)
    parse_errors: int = 0  # ok answers whose JSON did not parse (--parse-json / --extract)
    cost: float | None = None  # USD over all runs, when [pricing] is set


@dataclass
class DryRunReport:
    rows: int
    invalid: int
    prompt_tokens_est: int
    completion_tokens_max: int
    invalid_examples: list[str]
    models: dict[str, int]
    cost_range: tuple[float, float] | None = None  # USD: prompts only .. every max_tokens used


# ---------------------------------------------------------------- checkpoint set-up


def ingest(
    store: Store,
    files: list[InputFile],
    limit: int | None,
    template: PromptTemplate | None = None,
    keys: RequestKeys | None = None,
) -> None:
    """Validate every input row into the checkpoint (rows and ids; nothing is sent)."""
    kinds = ColumnKinds()
    batch: list[tuple[Any, ...]] = []
    for n, source in enumerate(itertools.islice(read_rows(files), limit)):
        row = prepare_row(source, template)
        kinds.observe(row.extra)
        batch.append(
            (
                n,
                row.row_id,
                row.loc,
                INVALID if row.error else PENDING,
                row.messages,
                row.overrides,
                dump_extra(row.extra),
                row.est_tokens,
                row.error,
                keys.key(row.messages, row.overrides) if keys and row.messages else None,
            )
        )
        if len(batch) >= INGEST_BATCH:
            store.insert_items(batch)
            batch.clear()
    if batch:
        store.insert_items(batch)
    store.set_json("extra_columns", kinds.as_list())
    store.set_meta("ingest_complete", "1")
    log.info("read %d input rows into %s", store.row_count(), store.path)


def open_checkpoint(
    cfg: RunConfig, files: list[InputFile], identity: dict[str, Any]
) -> tuple[Store, bool]:
    """Resume the checkpoint if it matches, else create and fill it. Returns (store, resumed)."""
    path = cfg.checkpoint_path
    if cfg.fresh:
        remove_checkpoint(path)
    if path.exists():
        store = Store.open(path)
        if store.get_meta("ingest_complete") == "1":
            _check_same_job(store, identity, cfg)
            return store, True
        store.close()  # a first run that died while reading inputs: nothing was sent
    store = Store.create(path)
    try:
        store.set_meta("fingerprint", fingerprint(identity))
        store.set_json("identity", identity)
        store.set_json("settings", cfg.public_dict())
        store.set_meta("created_at", str(time.time()))
        ingest(store, files, cfg.limit, prompt_template(cfg), RequestKeys(cfg.body_template()))
    except BaseException:
        store.close()
        remove_checkpoint(path)
        raise
    return store, False


def prompt_template(cfg: RunConfig) -> PromptTemplate | None:
    template = PromptTemplate(cfg.prompt_template, cfg.system_prompt)
    return template if template else None


def _check_same_job(store: Store, identity: dict[str, Any], cfg: RunConfig) -> None:
    if store.get_meta("fingerprint") == fingerprint(identity):
        return
    changed = identity_changes(store.get_json("identity", {}), identity)
    done = store.counts().get(DONE, 0)
    store.close()
    raise RunMismatchError(
        f"{cfg.checkpoint_path} belongs to a job with other inputs or request settings "
        f"(changed: {', '.join(changed) or 'unknown'}). Run it with the original inputs and "
        f"settings to resume, or add --fresh to start over (discarding {done} finished rows)."
    )


def check_output_writable(output: Path) -> None:
    folder = output.parent if str(output.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".batchrun-probe-"):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot write the output in {folder}: {exc.strerror}") from None
    if output.is_dir():
        raise ConfigError(f"output {output} is a directory; give a file name")


def input_identity(cfg: RunConfig) -> tuple[list[InputFile], dict[str, Any]]:
    files = expand_inputs(cfg.inputs)
    return files, cfg.identity([file_digest(f.path) for f in files])


# ---------------------------------------------------------------- dry run


def dry_run(cfg: RunConfig) -> DryRunReport:
    """Read, validate and build every request without sending or keeping anything."""
    files, identity = input_identity(cfg)
    with tempfile.TemporaryDirectory(prefix="batchrun-dry-") as tmp:
        store = Store.create(Path(tmp) / "dry.sqlite")
        try:
            ingest(store, files, cfg.limit, prompt_template(cfg))
            return _dry_report(store, cfg)
        finally:
            store.close()


def _dry_report(store: Store, cfg: RunConfig) -> DryRunReport:
    template = cfg.body_template()
    figures = store.request_figures(template.get("max_tokens") or 0, str(template.get("model")))
    report = DryRunReport(**figures)
    pricing = Pricing.from_config(cfg.pricing)
    if pricing is not None:
        low = pricing.cost(report.prompt_tokens_est, 0)
        report.cost_range = (low, low + pricing.cost(0, report.completion_tokens_max))
    return report


# ---------------------------------------------------------------- the run


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


async def run_job_async(
    cfg: RunConfig,
    *,
    watcher: Watcher | None = None,
    transport: Transport | None = None,
    limiter: RateLimiter | None = None,
) -> JobResult:
    """The same, inside a running loop; `limiter` may be shared by several jobs (sweeps)."""
    api_key = preflight(cfg)
    files, identity = input_identity(cfg)
    started = time.monotonic()
    events = EventLog(Path(cfg.log_json)) if cfg.log_json else None
    try:
        with CheckpointLock(cfg.checkpoint_path), tuned_gc():
            store, resumed = open_checkpoint(cfg, files, identity)
            try:
                stats = _prepare(cfg, store, resumed)
                if events is not None:
                    events.emit("job_start", **_start_fields(cfg, store, stats, resumed))
                stopped: BatchrunError | None = None
                if not cfg.offline:
                    parts = _Parts(api_key, watcher, transport, limiter, events)
                    try:
                        await _run_engine(cfg, store, stats, parts)
                    except BatchrunError as exc:
                        stopped = exc
                result = _finish(cfg, store, stats, started, resumed, stopped)
                if events is not None:
                    events.emit("job_end", **_end_fields(result))
                return result
            finally:
                store.close()
    finally:
        if events is not None:
            events.close()


@contextmanager
def tuned_gc() -> Iterator[None]:
    """Fewer and cheaper garbage collections while a job runs.

    A run allocates a few objects per request and keeps almost none, and what exists when
    it starts (modules, config) lives to the end. Frozen, that never gets traversed again;
    a gen-0 threshold of 50,000 (700 by default) makes collections rare. Measured by hand
    with the throughput benchmark's batchrun command (benchmarks/RESULTS.md) under
    /usr/bin/time, 3 interleaved rounds with and without: median wall time 3.71 s -> 3.19 s,
    peak RSS unchanged (freeze alone 3.60 s, threshold alone 3.33 s).
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


def preflight(cfg: RunConfig) -> str | None:
    """What can be wrong before the inputs are even read. Returns the key (None offline)."""
    if not cfg.output:
        raise ConfigError("no output file: pass -o/--output or set output = ... in the config")
    api_key = None if cfg.offline else read_api_key(cfg)
    check_output_writable(Path(cfg.output))
    if cfg.reuse and not Path(cfg.reuse).is_file():
        raise ConfigError(f"--reuse {cfg.reuse}: no such checkpoint or output file")
    if cfg.reuse and cfg.fresh and Path(cfg.reuse).resolve() == cfg.checkpoint_path.resolve():
        raise ConfigError(
            f"--reuse {cfg.reuse} is this job's own checkpoint, which --fresh would delete; "
            "copy it elsewhere first and reuse the copy"
        )
    return api_key


def _prepare(cfg: RunConfig, store: Store, resumed: bool) -> RunStats:
    """Before sending: in-flight rows back to pending, --reuse answers, --offline failures."""
    reset = store.prepare_resume(cfg.retry_failed, offline=cfg.offline)
    if resumed:
        log.info("resuming %s (%d rows to send again)", cfg.checkpoint_path, reset)
    reused = reuse_answers(store, Path(cfg.reuse)) if cfg.reuse else 0
    not_cached = 0
    if cfg.offline:
        not_cached = store.fail_pending("not in cache (--offline sends nothing)", "offline")
    return RunStats(todo=_todo(store), reused=reused, not_cached=not_cached)


def _finish(
    cfg: RunConfig,
    store: Store,
    stats: RunStats,
    started: float,
    resumed: bool,
    stopped: BatchrunError | None,
) -> JobResult:
    """Write the output (whatever way the run ended) and sum the job up."""
    from .results import write_outputs

    outputs, parse_errors = write_outputs(
        store, Path(cfg.output), cfg.output_format, parse_json=cfg.parse_json, extract=cfg.extract
    )
    counts = store.counts()
    totals = store.totals()
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
        failure_causes=store.failure_causes(),
        parse_errors=parse_errors,
        cost=job_cost(cfg, totals),
    )


def _start_fields(cfg: RunConfig, store: Store, stats: RunStats, resumed: bool) -> dict[str, Any]:
    return {
        "output": cfg.output,
        "checkpoint": str(cfg.checkpoint_path),
        "model": cfg.model,
        "base_url": cfg.base_url,
        "rows": store.row_count(),
        "to_send": stats.todo,
        "resumed": resumed,
        "reused": stats.reused,
        "not_cached": stats.not_cached,
    }


def _end_fields(result: JobResult) -> dict[str, Any]:
    return {
        "exit_code": result.exit_code,
        "states": result.counts,
        "tokens": result.totals,
        "cost": result.cost,
        "wall_s": round(result.wall_s, 3),
        "sent": result.stats.submissions,
        "retries": result.stats.retries,
        "rate_limited": result.stats.rate_limited,
        "rebuys": result.stats.rebuys,
        "stopped": str(result.stopped) if result.stopped else None,
    }


def reuse_answers(store: Store, source: Path) -> int:
    """Answer pending rows from an earlier checkpoint or output; returns rows answered."""
    from .results import read_reusable

    with source.open("rb") as fh:
        is_parquet = fh.read(4) == b"PAR1"
    count = (
        store.reuse_from_rows(read_reusable(source))
        if is_parquet
        else store.reuse_from_checkpoint(source)
    )
    log.info("%d rows answered from %s", count, source)
    return count


def _todo(store: Store) -> int:
    counts = store.counts()
    return sum(n for state, n in counts.items() if state not in (DONE, FAILED, INVALID))


def _exit_code(counts: dict[str, int], stopped: BatchrunError | None) -> int:
    if stopped is not None:
        return stopped.exit_code
    unfinished = sum(n for s, n in counts.items() if s not in (DONE,))
    return 1 if unfinished else 0


@dataclass
class _Parts:
    """What a run is wired from, besides its config and checkpoint (tests swap some)."""

    api_key: str | None
    watcher: Watcher | None
    transport: Transport | None
    limiter: RateLimiter | None
    events: EventLog | None


def new_limiter(cfg: RunConfig) -> RateLimiter:
    return RateLimiter(
        RateWindow(cfg.rpm or None, cfg.tpm),
        expected_completion=min(cfg.body_template().get("max_tokens") or 512, 512),
    )


async def _run_engine(cfg: RunConfig, store: Store, stats: RunStats, parts: _Parts) -> None:
    watching = asyncio.create_task(parts.watcher.watch(stats)) if parts.watcher else None
    warming = asyncio.create_task(asyncio.to_thread(_warm_up_output))
    try:
        if cfg.engine == "ray":
            from .ray_engine import run_on_ray

            stop = StopSignal()
            _install_signal_handlers(stop, cfg.grace)
            await run_on_ray(cfg, store, cfg.checkpoint_path, stats, stop)
        else:
            await _run_local(cfg, store, stats, parts)
    finally:
        if watching is not None:
            watching.cancel()
            with suppress(asyncio.CancelledError):
                await watching
        # Only a speed-up: never let it hide how the run ended (a failed import of pyarrow
        # shows when the output is written).
        with suppress(Exception):
            await warming


async def _run_local(cfg: RunConfig, store: Store, stats: RunStats, parts: _Parts) -> None:
    transport = parts.transport or AiohttpTransport(
        api_key=parts.api_key,
        trusted_urls=cfg.key_urls(),
        connections=cfg.concurrency + cfg.max_pending + 4,
        allow_insecure_http=cfg.allow_insecure_http,
    )
    writer = CheckpointWriter(store.path)
    assets = AssetCache(store.path)
    try:
        client = EndpointClient(transport, cfg)
        uploader = AssetUploader(client, assets) if cfg.uses_assets() else None
        engine = Engine(
            cfg,
            client,
            parts.limiter or new_limiter(cfg),
            writer,
            stats,
            media=MediaResolver(uploader),
            budget=_budget(cfg, store),
            events=parts.events,
        )
        _install_signal_handlers(engine.stop, cfg.grace)
        await run_engine(engine, store)
    finally:
        try:
            await transport.close()
            writer.handoff()
            await asyncio.to_thread(writer.flush)
        finally:
            writer.close()
            assets.close()


def _warm_up_output() -> None:
    """Import the output writer and pyarrow with it (about 0.13 s with numpy) while the
    job waits on the network, not at start-up or at the end, when the user waits for it."""
    from . import results  # noqa: F401


def _budget(cfg: RunConfig, store: Store) -> CostBudget | None:
    pricing = Pricing.from_config(cfg.pricing)
    if cfg.max_cost is None or pricing is None:
        return None
    totals = store.totals()
    spent = pricing.cost(totals["bought_prompt_tokens"], totals["bought_completion_tokens"])
    return CostBudget(cfg.max_cost, pricing, spent)


def job_cost(cfg: RunConfig, totals: dict[str, int]) -> float | None:
    pricing = Pricing.from_config(cfg.pricing)
    if pricing is None:
        return None
    return pricing.cost(totals["bought_prompt_tokens"], totals["bought_completion_tokens"])


def _install_signal_handlers(stop: StopSignal, grace: float) -> None:
    loop = asyncio.get_running_loop()
    seen: list[str] = []  # signals, not stops: the job may have stopped itself first

    def on_signal(signame: str) -> None:
        seen.append(signame)
        if len(seen) > 1:
            _say(
                f"{signame} again: exiting now. The checkpoint is consistent; run the same "
                "command to resume."
            )
            os._exit(130)
        _say(
            f"{signame}: no new requests; waiting up to {grace:g}s for those in flight "
            "(press Ctrl-C again to quit at once)"
        )
        stop.request(Interrupted(f"interrupted by {signame}"))

    for sig in (signal.SIGINT, signal.SIGTERM):
        with suppress(NotImplementedError, RuntimeError):  # RuntimeError: not the main thread
            loop.add_signal_handler(sig, on_signal, sig.name)


def _say(text: str) -> None:
    sys.stderr.write(f"\n{text}\n")
    sys.stderr.flush()
