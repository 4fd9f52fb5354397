"""The local runner's dispatcher: feeds every unfinished row of the checkpoint to an Engine.

Ids the server already holds go first, a task each at once (NVCF drops an id nobody polls).
New rows go through a queue to a fixed pool of workers, one row at a time each: no task per
row, and at most `max_pending` rows (summed over the endpoints) between their first
submission and their answer. Rows
are read from the checkpoint a page at a time, in input order, off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import suppress
from typing import Protocol

from .engine import Engine
from .errors import AuthError
from .lifecycle import RowState, WorkItem
from .limits import Capacity

log = logging.getLogger(__name__)

DISPATCH_PAGE = 1000
HELD = (RowState.POLLING, RowState.FETCHED)  # the server holds (or held) their answers


class PageSource(Protocol):
    """Pages of rows in given states, in input order (the checkpoint)."""

    def work_pages(self, states: Sequence[RowState], page: int) -> Iterator[list[WorkItem]]: ...


async def items(
    source: PageSource, states: Sequence[RowState], page: int
) -> AsyncIterator[list[WorkItem]]:
    """`source.work_pages`, each page read in a thread (SQLite must not block the loop)."""
    pages = source.work_pages(states, page)
    none: list[WorkItem] = []
    while rows := await asyncio.to_thread(next, pages, none):
        yield rows


async def dispatch(engine: Engine, source: PageSource) -> None:
    """Run every unfinished row: held ids first, then the rest, in input order."""
    pool = engine.pool
    capacity = Capacity(pool.max_pending)
    stop_watch = asyncio.create_task(_close_on_stop(engine, capacity))

    async def run(item: WorkItem) -> None:
        try:
            await engine.run_item(item)
        finally:
            capacity.release()

    async def worker(todo: asyncio.Queue[WorkItem | None]) -> None:
        while (item := await todo.get()) is not None:
            if await capacity.acquire():
                await run(item)

    try:
        async with asyncio.TaskGroup() as tasks:
            async for page in items(source, HELD, DISPATCH_PAGE):
                for item in page:
                    capacity.take()  # pending at the server: poll now, whatever the limit
                    tasks.create_task(run(item))
            todo: asyncio.Queue[WorkItem | None] = asyncio.Queue(maxsize=2 * pool.max_concurrency)
            workers = [tasks.create_task(worker(todo)) for _ in range(pool.max_pending)]
            async for page in items(source, (RowState.PENDING,), DISPATCH_PAGE):
                if engine.stopping:
                    break
                for item in page:
                    await todo.put(item)
            for _ in workers:
                await todo.put(None)
    finally:
        stop_watch.cancel()
        await pool.close()


async def _close_on_stop(engine: Engine, capacity: Capacity) -> None:
    await engine.stop.event.wait()
    capacity.close()


async def run_engine(engine: Engine, source: PageSource) -> None:
    """Dispatch everything; once a stop is requested, give in-flight work `grace` seconds.

    Raises AuthError at once (nothing more is sent); raises the stop reason, if any, after
    the work in flight has settled.
    """
    main = asyncio.create_task(dispatch(engine, source))
    stop = asyncio.create_task(engine.stop.event.wait())
    try:
        await asyncio.wait({main, stop}, return_when=asyncio.FIRST_COMPLETED)
        if not main.done():
            done, _ = await asyncio.wait({main}, timeout=engine.cfg.grace)
            if not done:
                log.warning("grace period over: abandoning work in flight (it resumes next run)")
                main.cancel()
        try:
            await main
        except asyncio.CancelledError:
            if not engine.stopping:
                raise
        except BaseExceptionGroup as group:
            raise _first_meaningful(group) from None
    finally:
        stop.cancel()
        if not main.done():
            main.cancel()
            with suppress(asyncio.CancelledError, BaseException):
                await main
    if engine.stop.reason is not None:
        raise engine.stop.reason


def _first_meaningful(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """Pick AuthError over anything else in a TaskGroup's exception group."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for exc in leaves:
        if isinstance(exc, AuthError):
            return exc
    return leaves[0]
