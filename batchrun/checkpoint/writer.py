"""The writer thread: a run's lifecycle transitions, committed in batches (commit.py says
what each commit writes).

The event loop only queues transitions (lifecycle.py's records); the thread folds them per
row and commits them in one transaction at most every FLUSH_INTERVAL_S, well inside SPEC.md's
200 ms for answers and 1 s for request ids. A transition that must be durable before the
caller goes on (a consume-once answer, PROTOCOL.md decision 3) is committed at once and the
caller awaits the commit. Transitions made on a running loop are gathered there and handed
to the thread as one list per interval (one wake-up per batch, not per row); from outside a
loop (tests, Ray's checkpoint service) they go straight to the thread.

When the disk refuses a commit (full, read-only, removed: storage.disk_fault), the writer
holds: the failed batch and everything after it stay in memory, the run is told at once
(`on_fault`, which stops new submissions), awaited records return as if committed (the answer
is held, and nothing can do better), and the commit is tried again every RETRY_INTERVAL_S in
case space comes back. What is held is also in a side file (unsaved.py) from the first
failure on, rewritten as more arrives, removed once a retry commits it, and otherwise
committed first by the next run (so a kill while holding loses nothing). Any other failed
commit is a bug and fails the run as one.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from batchrun.errors import CheckpointError, CheckpointWriteError, DiskError
from batchrun.lifecycle import BatchingSink, Finished, Transition
from batchrun.storage import DiskFault, disk_fault

from . import unsaved
from .commit import Callback, Commit, Names
from .damage import damage_error
from .schema import connect

FLUSH_INTERVAL_S = 0.1
RETRY_INTERVAL_S = 1.0  # a held batch is tried again this often (has space come back?)


# ---------------------------------------------------------------- what goes to the thread


@dataclass(frozen=True, slots=True)
class _Changes:
    changes: Sequence[Transition]
    urgent: bool = False  # commit at once (someone awaits it, or a batch arrived whole)
    callback: Callback | None = None


@dataclass(frozen=True, slots=True)
class _Barrier:
    """Commit everything before this, then call back (flush)."""

    callback: Callback


@dataclass(frozen=True, slots=True)
class _Stop:
    pass


_Work = _Changes | _Barrier | _Stop


# ---------------------------------------------------------------- the thread


class CheckpointWriter(BatchingSink):
    """The lifecycle Sink over the checkpoint file: a thread with its own connection."""

    def __init__(
        self,
        path: Path,
        *,
        keep_answer_bodies: bool = False,
        interval: float = FLUSH_INTERVAL_S,
        on_fault: Callable[[DiskFault], None] | None = None,
        retry_interval: float = RETRY_INTERVAL_S,
        hold_on_fault: bool = True,
    ) -> None:
        self.path = path
        self._conn = connect(path)
        self._names = Names(self._conn)
        self._stamp = unsaved.stamp_of(self._conn)  # which checkpoint a side file is for
        self._keep_bodies = keep_answer_bodies
        self._interval = interval
        self._queue: queue.SimpleQueue[_Work] = queue.SimpleQueue()
        self._gathered: list[Transition] = []
        self._handoff_timer: asyncio.TimerHandle | None = None
        self.error: BaseException | None = None  # a failed commit that is a bug
        self.commits = 0
        # The disk's refusal: the first one (kept after space comes back, for the account)
        # and whether changes are still held in memory because of it.
        self.fault: DiskFault | None = None
        self.holding = False
        self._on_fault = on_fault
        # Without a run to stop (Ray's checkpoint service), holding would only hide the fault
        # while more is bought: there a disk fault fails the run as any failed commit does.
        self._hold_on_fault = hold_on_fault
        self._retry_interval = retry_interval
        self._retry_at = 0.0
        self.unsaved: Path | None = None  # the side file of what is held, if any
        self._saved = 0  # changes in it
        self.unsaved_rows = 0  # finished rows in it
        self.lost_rows = 0  # finished rows neither committed nor saved (the side file failed)
        self._thread = threading.Thread(target=self._run, name="batchrun-checkpoint", daemon=True)
        self._thread.start()

    # ---- batches from elsewhere (Ray's checkpoint service), flushing, closing

    def apply(self, changes: Sequence[Transition]) -> None:
        """Queue transitions gathered elsewhere, committed together."""
        self._check()
        self._queue.put(_Changes(changes, urgent=True))

    def handoff(self) -> None:
        """Give the thread what the loop has gathered (call on the loop's thread)."""
        if self._handoff_timer is not None:
            self._handoff_timer.cancel()
            self._handoff_timer = None
        if self._gathered:
            gathered, self._gathered = self._gathered, []
            self._queue.put(_Changes(gathered, urgent=True))

    def flush(self, timeout: float | None = None) -> None:
        """Block until everything handed over so far is committed (call off the loop, after
        `handoff()` on it)."""
        event = threading.Event()
        failure: list[BaseException] = []

        def resolve(exc: BaseException | None) -> None:
            if exc is not None:
                failure.append(exc)
            event.set()

        self._queue.put(_Barrier(resolve))
        waited = 0.0
        while not event.wait(0.5):
            waited += 0.5
            if not self._thread.is_alive():
                raise CheckpointWriteError("checkpoint writer stopped unexpectedly")
            if timeout is not None and waited >= timeout:
                raise CheckpointWriteError("checkpoint writer did not finish in time")
        if failure:
            raise _write_error(failure[0], self.path)
        self._check()  # an earlier commit that failed unawaited (a timer's) fails a flush too

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(_Stop())
            self._thread.join()
        self._conn.close()

    def disk_error(self) -> DiskError | None:
        """After close: what the disk did to this run and where its answers are, or None."""
        if self.fault is None:
            return None
        return DiskError(
            self.fault.describe(), path=self.fault.path, unsaved=self.unsaved,
            held=self.unsaved_rows, lost=self.lost_rows,
        )  # fmt: skip

    # ---- queueing

    def _check(self) -> None:
        if self.error is not None:
            raise _write_error(self.error, self.path)

    def _later(self, change: Transition) -> None:
        self._check()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._queue.put(_Changes((change,)))
            return
        self._gathered.append(change)
        if self._handoff_timer is None:
            self._handoff_timer = loop.call_later(self._interval, self.handoff)

    async def _now(self, change: Transition) -> None:
        """Queue a transition and return once it (and all before it) is committed."""
        self._check()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def resolve(exc: BaseException | None) -> None:
            loop.call_soon_threadsafe(_settle, done, exc)

        self.handoff()  # keep the order: what was gathered goes first
        self._queue.put(_Changes((change,), urgent=True, callback=resolve))
        await done

    def _run(self) -> None:
        batch, changes = Commit(), list[Transition]()
        deadline: float | None = None
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                work: _Work | None = self._queue.get(timeout=timeout)
            except queue.Empty:
                work = None
            urgent = stop = False
            # Group commit: whatever queued up meanwhile goes into this same commit, so a
            # slow disk (one fsync per commit) makes commits bigger, not later.
            while work is not None and not stop:
                match work:
                    case _Changes(changes=more, urgent=now, callback=callback):
                        batch.add(more)
                        changes.extend(more)
                        urgent = urgent or now
                        if callback is not None:
                            batch.callbacks.append(callback)
                    case _Barrier(callback=callback):
                        batch.callbacks.append(callback)
                        urgent = True
                    case _Stop():
                        urgent = stop = True
                work = None if stop else _next(self._queue)
            if deadline is None:
                deadline = time.monotonic() + self._interval
            if urgent or time.monotonic() >= deadline:
                if self._commit(batch, force=stop):
                    batch, changes = Commit(), list[Transition]()
                else:
                    # Held: in the side file at once (a kill while holding loses nothing),
                    # and again as more arrives; those who wait for it may then go on.
                    if len(changes) != self._saved:
                        self._save_held(changes)
                    _resolve(batch, None)
                # Held: wake for the next try even if nothing more arrives.
                deadline = self._retry_at if self.holding else None
            if stop:
                return

    def _commit(self, batch: Commit, *, force: bool = False) -> bool:
        """Write `batch`; False when the disk refused it and it is held for another try."""
        error: BaseException | None = None
        if batch and self.holding and not force and time.monotonic() < self._retry_at:
            return False  # held: tried again at the next retry
        if batch:
            try:
                batch.write(self._conn, self._names, self._keep_bodies)
                self.commits += 1
                if self.holding:  # space came back: all held is in the checkpoint now
                    self.holding = False
                    self._drop_side_file()
            except Exception as exc:  # any failure must reach the run
                fault = disk_fault(exc, self.path) if self._hold_on_fault else None
                if fault is None:
                    error = self.error = exc
                else:
                    self._hold(fault)
                    return False
        _resolve(batch, error)
        return True

    def _hold(self, fault: DiskFault) -> None:
        self._retry_at = time.monotonic() + self._retry_interval
        self.holding = True
        if self.fault is None:
            self.fault = fault
            if self._on_fault is not None:
                self._on_fault(fault)

    def _save_held(self, changes: list[Transition]) -> None:
        """The side file beside the checkpoint or, if that disk refuses it too, in the
        temp folder (the next run looks in both)."""
        self._saved = len(changes)
        finished = len({c.idx for c in changes if isinstance(c, Finished)})
        for path in unsaved.unsaved_paths(self.path):
            try:
                unsaved.save(path, changes, self._keep_bodies, self._stamp)
            except OSError:
                continue
            if self.unsaved is not None and self.unsaved != path:
                self.unsaved.unlink(missing_ok=True)  # one side file: the newest, whole
            self.unsaved, self.unsaved_rows, self.lost_rows = path, finished, 0
            return
        # Neither disk took it: an earlier, shorter side file may still stand.
        self.lost_rows = finished - (self.unsaved_rows if self.unsaved else 0)

    def _drop_side_file(self) -> None:
        if self.unsaved is not None:
            self.unsaved.unlink(missing_ok=True)
        self.unsaved, self.unsaved_rows, self.lost_rows, self._saved = None, 0, 0, 0


def _resolve(batch: Commit, error: BaseException | None) -> None:
    callbacks, batch.callbacks = batch.callbacks, []
    for callback in callbacks:
        callback(error)


def _next(work: queue.SimpleQueue[_Work]) -> _Work | None:
    try:
        return work.get_nowait()
    except queue.Empty:
        return None


def _write_error(exc: BaseException, path: Path) -> CheckpointError | CheckpointWriteError:
    """A failed commit as the run reports it: a damaged page as such (with its remedy)."""
    return damage_error(exc, path) or CheckpointWriteError(f"checkpoint write failed: {exc}")


def _settle(future: asyncio.Future[None], exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is None:
        future.set_result(None)
    else:
        future.set_exception(CheckpointWriteError(f"checkpoint write failed: {exc}"))
