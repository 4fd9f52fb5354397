"""`batchrun recover`: every row of a damaged checkpoint that still reads back, copied into a
new one that takes its place; the damaged file is kept beside it.

Each table is copied by rowid, a page of rows at a time; where a read fails (a damaged
page), rows are looked up one by one past it, so one bad page costs its own rows only. Rows
below a damaged interior page, which no look-up reaches, are then read straight off the
file's leaf pages (rowcopy.py, leaves.py) and added where the copy has none.
Then the copy is made whole: answers whose row is gone are dropped, rows whose answer is
gone are sent again, unless the job's last output holds their answer (restored as a
reused answer: not bought again), and input rows that are gone are read again from the
inputs by the next run (meta `refill`).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchrun.errors import BatchrunError, CheckpointError, DiskError
from batchrun.lifecycle import RowState
from batchrun.storage import disk_fault

from .damage import header_problem, page_size_of
from .locate import PARQUET_MAGIC, SQLITE_MAGIC, starts_with
from .rowcopy import copy_from_leaves, copy_table, last_rowid
from .schema import APP_ID, SCHEMA_VERSION, STATE_CODES, STATES, connect, migrate
from .store import Checkpoint, recount_totals_sql, remove_checkpoint

log = logging.getLogger(__name__)

# Tables copied, in this order (names before results, whose columns point into it).
# `migrations` is the new file's own.
TABLES = (
    "meta", "names", "totals", "runs", "assets", "items", "live", "results", "validations"
)  # fmt: skip
_DONE = STATE_CODES[RowState.DONE]
_FAILED = STATE_CODES[RowState.FAILED]
_PENDING = STATE_CODES[RowState.PENDING]
_HELD = (STATE_CODES[RowState.POLLING], STATE_CODES[RowState.FETCHED])


@dataclass
class Recovery:
    """What `recover` did."""

    checkpoint: Path
    damaged_copy: Path
    problems: list[str]  # what the integrity check found
    rows: int = 0  # input rows kept
    rows_lost: int = 0  # input rows to be read again from the inputs
    answers: int = 0  # finished rows kept (done or failed)
    answers_lost: int = 0  # finished rows whose answer did not read back
    restored: int = 0  # ... of them answered again from the last output
    output: Path | None = None  # the output they were restored from

    def describe(self) -> str:
        found = [line for p in self.problems for line in p.splitlines() if line[:3] != "***"]
        problem, more = (found or ["unreadable pages"])[0], len(found) - 1
        lines = [
            f"batchrun: recovered {self.checkpoint} (the damaged file is kept as "
            f"{self.damaged_copy})",
            f"  damage found: {problem}" + (f" (and {more} more)" if more > 0 else ""),
            f"  input rows: {self.rows:,} kept, {self.rows_lost:,} lost (read again from the "
            "inputs by the next run)",
            f"  finished rows: {self.answers:,} kept, {self.answers_lost:,} lost",
        ]
        if self.output is not None:
            lines.append(f"  answers restored from {self.output}: {self.restored:,}")
        lines.append(
            "  Finish the job with the `batchrun run` command that made it (without --fresh): "
            "it sends only the rows still without an answer."
        )
        return "\n".join(lines)


def integrity_problems(path: Path, limit: int = 20) -> list[str]:
    """SQLite's full check of every page ([] when the file is intact)."""
    try:
        conn = connect(path, readonly=True)
        try:
            found = [row[0] for row in conn.execute(f"PRAGMA integrity_check({limit})")]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        return [str(exc)]
    return [] if found == ["ok"] else found


def recover(path: Path, output: Path | None) -> Recovery:
    """Salvage `path` in place (the damaged file moves to PATH.damaged). `output`, when
    given and a Parquet file, answers again rows whose answers were lost."""
    _check_is_checkpoint(path)
    if output is not None and not starts_with(output, PARQUET_MAGIC):
        raise CheckpointError(f"--from-output {output}: not a Parquet output of a batchrun job")
    problems = integrity_problems(path)
    damaged = path.with_name(path.name + ".damaged")
    result = Recovery(path, damaged, problems)
    if not problems:
        return result
    fresh = path.with_name(path.name + ".recovering")
    try:
        totals_lost = _salvage_into(fresh, path, result, output)
    except BaseException as exc:
        remove_checkpoint(fresh)  # nothing half-made is left behind (a full disk, say)
        fault = disk_fault(exc, fresh)
        if fault is None:
            raise
        message = f"recover stopped: {fault.describe()}; {path} is as it was"
        raise DiskError(message, path=path) from None

    _swap(path, fresh, damaged)
    if output is not None and result.answers_lost:
        result.output = output
        result.restored = _restore_from(path, output, recount=totals_lost)
    return result


def _salvage_into(fresh: Path, path: Path, result: Recovery, output: Path | None) -> bool:
    """Copy what reads back of `path` into a new checkpoint at `fresh`; True when the totals
    did not read back (recounted from the answers kept)."""
    remove_checkpoint(fresh)
    readable = _readable_copy(path)
    source = connect(readable or path, readonly=True)
    target = connect(fresh)
    try:
        _check_version(source, path)
        migrate(target)
        before = _Before(_finished_before(source), last_rowid(source, "items"))
        copied = {table: copy_table(source, target, table) for table in TABLES}
        log.info("recover: rows copied per table: %s", copied)
        found = copy_from_leaves(readable or path, target)
        log.info("recover: rows found on leaf pages SQLite could not reach: %s", found)
        _make_whole(target, result, before, output)
        if not copied["totals"]:
            recount_totals_sql(target)
        return not copied["totals"]
    finally:
        source.close()
        target.close()
        if readable is not None:
            readable.unlink()


# Tables whose rows are looked for on every leaf page, by their shape: how many values a
# record has, and a test of its values (the first is the rowid alias, stored as NULL).
def _check_is_checkpoint(path: Path) -> None:
    """Refuse what is not a batchrun checkpoint: recover would replace it with an empty one."""
    if not starts_with(path, SQLITE_MAGIC):
        raise CheckpointError(f"{path}: not a batchrun checkpoint (not an SQLite file)")
    try:
        conn = connect(path, readonly=True)
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        return  # a first page that does not read: salvage what the others hold
    if app_id != APP_ID:
        raise CheckpointError(f"{path}: not a batchrun checkpoint (another SQLite database)")


def _readable_copy(path: Path) -> Path | None:
    """For a truncated file, a copy whose header claims only the pages it has: SQLite reads
    nothing of a file shorter than its header says, and everything on the pages left of
    one that says the truth. None when the file is not truncated."""
    if header_problem(path) is None:
        return None
    data = bytearray(path.read_bytes())
    page_size = page_size_of(bytes(data[:100]))
    pages = len(data) // page_size
    del data[pages * page_size :]
    data[28:32] = pages.to_bytes(4, "big")
    copy = path.with_name(path.name + ".readable")
    copy.write_bytes(data)
    return copy


@dataclass(frozen=True, slots=True)
class _Before:
    """What the damaged file said of itself, where that still reads."""

    finished: int | None  # rows done or failed
    last_idx: int | None  # the last input row's position


def _check_version(source: sqlite3.Connection, path: Path) -> None:
    try:
        row = source.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.DatabaseError:
        return  # taken to be this release's: the copy is checked row by row anyway
    if row is not None and int(row[0]) < 2:
        raise CheckpointError(
            f"{path}: written by a release older than the compact ledger (schema {row[0]}); "
            "recover it with that release, or start over with --fresh --reuse on its output"
        )


def settings_of(path: Path) -> dict[str, Any]:
    """The job's settings as the damaged file recorded them ({} where they do not read)."""
    try:
        conn = connect(path, readonly=True)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'settings'").fetchone()
        finally:
            conn.close()
        settings = json.loads(row[0]) if row else {}
    except (sqlite3.DatabaseError, ValueError):
        return {}
    return settings if isinstance(settings, dict) else {}


def _finished_before(source: sqlite3.Connection) -> int | None:
    try:
        row = source.execute(
            f"SELECT count(*) FROM items WHERE state IN ({_DONE}, {_FAILED})"
        ).fetchone()
    except sqlite3.DatabaseError:
        return None
    return int(row[0])


# ---------------------------------------------------------------- making the copy whole


def _make_whole(
    conn: sqlite3.Connection, result: Recovery, before: _Before, output: Path | None
) -> None:
    conn.execute("BEGIN")
    known = ",".join(str(code) for code in STATES)
    conn.execute(f"DELETE FROM items WHERE state NOT IN ({known}) OR row_id IS NULL")
    # An answer whose input row is gone stays: the next run reads the row back from the
    # inputs (refill) and the answer is its own again (Checkpoint.reattach_results).
    conn.execute("DELETE FROM live WHERE idx NOT IN (SELECT idx FROM items)")
    # A finished row whose answer is gone is to be sent again; so is one that was to be
    # polled or fetched whose request id or link is gone.
    lost = conn.execute(
        f"UPDATE items SET state = {_PENDING} WHERE state IN ({_DONE}, {_FAILED}) "
        "AND idx NOT IN (SELECT idx FROM results)"
    ).rowcount
    conn.execute(
        f"UPDATE items SET state = {_PENDING} WHERE state IN ({_HELD[0]}, {_HELD[1]}) AND idx "
        "NOT IN (SELECT idx FROM live WHERE coalesce(request_id, location, answer) IS NOT NULL)"
    )
    # A result whose row says otherwise (its state's page was older): the result stands.
    conn.execute(
        f"UPDATE items SET state = CASE WHEN (SELECT error FROM results r WHERE r.idx = items.idx)"
        f" IS NULL THEN {_DONE} ELSE {_FAILED} END "
        f"WHERE state NOT IN ({_DONE}, {_FAILED}) AND idx IN (SELECT idx FROM results)"
    )
    rows, last = conn.execute("SELECT count(*), max(idx) FROM items").fetchone()
    expected = (before.last_idx if before.last_idx is not None else (last or -1)) + 1
    result.rows = rows
    result.rows_lost = max(0, expected - rows)
    result.answers = conn.execute("SELECT count(*) FROM results").fetchone()[0]
    if before.finished is not None:
        lost = max(lost, before.finished - result.answers)
    result.answers_lost = lost
    meta = "INSERT OR REPLACE INTO meta VALUES (?, ?)"
    conn.execute(meta, ("schema_version", str(SCHEMA_VERSION)))
    kept = {key for (key,) in conn.execute("SELECT key FROM meta")}
    if "identity" not in kept or "ingest_complete" not in kept:
        # What the job was (inputs, settings) did not read back: the next run's own stands
        # for it once (intake.py), and every input row is read again.
        conn.execute(meta, ("identity_lost", "1"))
        conn.execute(meta, ("ingest_complete", "1"))
        before = _Before(before.finished, None)
    if result.rows_lost or before.last_idx is None:
        # Input rows lost (in the middle, or at the end) are read again from the inputs by
        # the next run, and answered from the output first if it holds them.
        conn.execute(meta, ("refill", "1"))
        conn.execute(meta, ("input_exhausted", ""))
        if output is not None:
            conn.execute(meta, ("restore_from", str(output)))
    conn.execute("COMMIT")


def _swap(path: Path, fresh: Path, damaged: Path) -> None:
    """The recovered file takes the checkpoint's name; the damaged one moves aside."""
    remove_checkpoint(damaged)
    for suffix in ("", "-wal", "-shm"):
        old = Path(str(path) + suffix)
        if old.exists():
            os.replace(old, Path(str(damaged) + suffix))
    for suffix in ("-wal", "-shm"):
        Path(str(fresh) + suffix).unlink(missing_ok=True)
    os.replace(fresh, path)


def _restore_from(path: Path, output: Path, *, recount: bool) -> int:
    """Answer lost rows from `output` (`recount`: the totals were rebuilt from the answers
    kept, so they are rebuilt again with these)."""
    from batchrun.results import read_reusable

    checkpoint = Checkpoint.open(path)
    try:
        restored = checkpoint.reuse_from_answers(read_reusable(output), own=True)
        if recount:
            checkpoint.recount_totals()
        return restored
    except BatchrunError as exc:  # not an output it can read answers from: bought again
        log.warning("answers not restored from %s: %s", output, exc)
        return 0
    finally:
        checkpoint.close()
