"""The checkpoint as its job owns it: create or open (migrating), ingest the inputs, and the
moves a job makes between runs. Reads are CheckpointReader's (queries.py); a run's row
updates go through CheckpointWriter (writer.py), on a connection of its own.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchrun.errors import CheckpointError
from batchrun.lifecycle import RowState
from batchrun.payloads import PreparedRow

from . import reuse, unsaved
from .damage import check_header, damage_error
from .locate import SQLITE_MAGIC, starts_with
from .queries import NO_LIMIT, CheckpointReader
from .schema import APP_ID, OPEN, STATE_CODES, connect, migrate
from .setaside import set_aside_results
from .upgrade import recount_totals
from .values import encode_extra

log = logging.getLogger(__name__)

_CODE = STATE_CODES


@dataclass(slots=True)
class IngestRow:
    """An input row as ingest hands it over: its position, what was read, its request key."""

    idx: int
    row: PreparedRow
    request_hash: bytes | None


class DuplicateRowId(Exception):
    """Two input rows share an id; the caller knows where the first one came from."""

    def __init__(self, row_id: str, first_idx: int | None, loc: str) -> None:
        super().__init__(row_id)
        self.row_id, self.first_idx, self.loc = row_id, first_idx, loc


def remove_checkpoint(path: Path) -> None:
    """The checkpoint's files, and any side file of a run the disk stopped (`--fresh`: its
    answers belong to the job being discarded)."""
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    for side_file in unsaved.unsaved_paths(path):
        side_file.unlink(missing_ok=True)


class Checkpoint(CheckpointReader):
    """A checkpoint opened for writing by the job that holds its lock."""

    @classmethod
    def create(cls, path: Path) -> Checkpoint:
        remove_checkpoint(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect(path)
        migrate(conn)
        return cls(path, conn)

    @classmethod
    def open(cls, path: Path) -> Checkpoint:
        """An existing checkpoint, upgraded to this release's schema if it is older."""
        conn = _connect_existing(path)
        try:
            migrate(conn, on_upgrade=lambda old, new: _say_upgrade(path, old, new))
        except CheckpointError as exc:
            conn.close()
            raise CheckpointError(f"{path}: {exc}") from None
        except BaseException:
            conn.close()
            raise
        return cls(path, conn)

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        super().__init__(path, conn)
        self._inode = os.stat(path).st_ino

    # ---- the file itself

    def rescue_if_removed(self) -> bool:
        """If the checkpoint's file (or its folder) was removed while this job had it open,
        write it again at its path from the open connection, which still reads it whole.
        True if it had to."""
        try:
            if os.stat(self.path).st_ino == self._inode:
                return False
        except FileNotFoundError:
            pass
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.copy_to(self.path)
        log.warning("%s was removed during the run: written again from the open job", self.path)
        self._inode = os.stat(self.path).st_ino
        return True

    def copy_to(self, path: Path) -> None:
        """A whole, consistent copy of the checkpoint at `path` (SQLite's backup, from this
        open connection, even while the job writes)."""
        target = sqlite3.connect(path)
        try:
            self._conn.backup(target)
        finally:
            target.close()

    # ---- meta

    def set_meta(self, key: str, value: str) -> None:
        self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def set_json(self, key: str, value: Any) -> None:
        self.set_meta(key, json.dumps(value))

    def set_row_limit(self, limit: int | None) -> None:
        """The job's --limit from now on: rows past it stay stored, out of every read."""
        self.set_meta("row_limit", "" if limit is None else str(limit))
        self._upto = NO_LIMIT if limit is None else limit

    # ---- runs

    def start_run(self) -> int:
        """Record that a run starts now; returns its number."""
        cursor = self._conn.execute("INSERT INTO runs (started_at) VALUES (?)", (time.time(),))
        return int(cursor.lastrowid or 0)

    def end_run(self, run: int, exit_code: int, rows_finished: int, requests: int) -> None:
        self._conn.execute(
            "UPDATE runs SET ended_at = ?, exit_code = ?, rows_finished = ?, requests = ? "
            "WHERE run = ?",
            (time.time(), exit_code, rows_finished, requests, run),
        )

    # ---- ingest

    def insert_rows(
        self, rows: Sequence[IngestRow], extra_names: Sequence[str], *, missing_only: bool = False
    ) -> None:
        """Store input rows (one transaction). A duplicate id raises DuplicateRowId; with
        `missing_only`, rows at positions already stored are left as they are."""
        values = [_item_values(r, extra_names) for r in rows]
        verb = "INSERT OR IGNORE" if missing_only else "INSERT"
        try:
            self._conn.execute("BEGIN")
            self._conn.executemany(f"{verb} INTO items VALUES (?,?,?,?,?,?,?,?,?)", values)
            self._conn.execute("COMMIT")
        except sqlite3.IntegrityError:
            self._conn.execute("ROLLBACK")
            raise self._duplicate(rows) from None

    def _duplicate(self, rows: Sequence[IngestRow]) -> DuplicateRowId:
        seen: dict[str, int] = {}
        for new in rows:
            row_id = new.row.row_id
            first = seen.get(row_id)
            if first is None:
                found = self._conn.execute(
                    "SELECT idx FROM items WHERE row_id=?", (row_id,)
                ).fetchone()
                first = found[0] if found else None
            if first is not None:
                return DuplicateRowId(row_id, first, new.row.loc)
            seen[row_id] = new.idx
        return DuplicateRowId("?", None, "?")

    # ---- between runs

    def reattach_results(self) -> int:
        """After a refill: rows read back whose answer `recover` kept are finished again
        (done, or failed when the answer is an error). Returns how many."""
        done, failed, pending = (
            _CODE[s] for s in (RowState.DONE, RowState.FAILED, RowState.PENDING)
        )
        return self._conn.execute(
            "UPDATE items SET state = CASE WHEN (SELECT r.error FROM results r WHERE "
            f"r.idx = items.idx) IS NULL THEN {done} ELSE {failed} END "
            f"WHERE {OPEN} AND state = {pending} AND idx IN (SELECT idx FROM results)"
        ).rowcount

    def recount_totals(self) -> None:
        """Totals from the finished rows' answers (after a recovery that lost them)."""
        recount_totals_sql(self._conn)

    def restore_unsaved(self) -> int:
        """Commit (then remove) a disk-stopped run's side file; returns rows it finished."""
        return unsaved.restore(self._conn, self.path, self.get_meta("created_at"))

    def prepare_resume(self, retry_failed: bool, offline: bool = False) -> int:
        """Rows left in flight by a crash go back to pending (at-least-once delivery).

        With `retry_failed`, failed rows are pending again too (keeping their attempts);
        rows an --offline run failed for want of a stored answer are, whenever this run is
        not offline. Returns rows reset.
        """
        conn = self._conn
        conn.execute("BEGIN")
        inflight = f"{OPEN} AND state = {_CODE[RowState.INFLIGHT]}"
        # Nothing came back for these: what they were sent with is void; attempts stay.
        conn.execute(
            "UPDATE live SET request_id = NULL, location = NULL, answer = NULL "
            f"WHERE idx IN (SELECT idx FROM items WHERE {inflight})"
        )
        reset = conn.execute(
            f"UPDATE items SET state = ? WHERE {inflight}", (_CODE[RowState.PENDING],)
        ).rowcount
        if retry_failed or not offline:
            reset += self._retry_failed(only_offline=not retry_failed)
        conn.execute("COMMIT")
        return reset

    def _retry_failed(self, *, only_offline: bool) -> int:
        conn = self._conn
        offline = "AND r.cause = (SELECT id FROM names WHERE name = 'offline')"
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS again AS SELECT idx FROM items WHERE 0")
        conn.execute("DELETE FROM temp.again")
        conn.execute(
            "INSERT INTO temp.again SELECT items.idx FROM items JOIN results AS r "
            f"ON r.idx = items.idx WHERE {OPEN} AND items.state = ? "
            + (offline if only_offline else ""),
            (_CODE[RowState.FAILED],),
        )
        chosen = "idx IN (SELECT idx FROM temp.again)"
        # Attempts and the first submission carry over into the next try (they stay in
        # `totals`); the failed result itself, tokens included, leaves the ledger. A row
        # never sent (an --offline failure) gets no `live` row: the writer takes a first
        # send to mean there is none to delete when the row finishes.
        conn.execute(
            "INSERT OR REPLACE INTO live (idx, attempts, first_submit_at) "
            f"SELECT idx, attempts, first_submit_at FROM results WHERE {chosen} "
            "AND attempts > 0"
        )
        set_aside_results(conn, chosen)  # the result goes; what it bought stays counted
        n = conn.execute(
            f"UPDATE items SET state = ? WHERE {chosen}", (_CODE[RowState.PENDING],)
        ).rowcount
        conn.execute("DELETE FROM temp.again")
        return int(n)

    def reuse_from_checkpoint(self, source: Path, *, keep_bodies: bool = False) -> int:
        """Answer pending rows from an earlier checkpoint's done rows; returns rows answered."""
        return reuse.from_checkpoint(self._conn, source, keep_bodies)

    def reuse_from_answers(
        self,
        batches: Iterable[list[reuse.ReusedAnswer]],
        *,
        keep_bodies: bool = False,
        own: bool = False,
    ) -> int:
        """The same from answers read out of an earlier output file (`own`: this job's, lost
        to damage and restored by `recover`: not reused, and in the totals already)."""
        return reuse.from_answers(self._conn, batches, keep_bodies, own=own)

    def fail_pending(self, error: str, cause: str) -> int:
        """Mark every row still to be sent failed (--offline: nothing is sent)."""
        conn = self._conn
        conn.execute("BEGIN")
        conn.execute("INSERT OR IGNORE INTO names (name) VALUES (?)", (cause,))
        pending = f"{OPEN} AND items.state = {_CODE[RowState.PENDING]}"
        conn.execute(
            "INSERT OR REPLACE INTO results (idx, attempts, first_submit_at, finished_at, "
            "error, cause) SELECT items.idx, coalesce(l.attempts, 0), l.first_submit_at, ?, ?, "
            "(SELECT id FROM names WHERE name = ?) FROM items LEFT JOIN live AS l "
            f"ON l.idx = items.idx WHERE {pending}",
            (time.time(), error, cause),
        )
        conn.execute(f"DELETE FROM live WHERE idx IN (SELECT idx FROM items WHERE {pending})")
        n = conn.execute(
            f"UPDATE items SET state = ? WHERE {pending}", (_CODE[RowState.FAILED],)
        ).rowcount
        conn.execute("COMMIT")
        return int(n)


def _item_values(new: IngestRow, extra_names: Sequence[str]) -> tuple[Any, ...]:
    row = new.row
    state = RowState.INVALID if row.error else RowState.PENDING
    return (
        new.idx,
        row.row_id,
        _CODE[state],
        None if row.templated else row.messages,
        row.overrides,
        encode_extra(row.extra, extra_names),
        row.est_tokens,
        new.request_hash,
        row.error,
    )


def recount_totals_sql(conn: sqlite3.Connection) -> None:
    """The totals row, in one transaction, from the answers kept (after a damaged one)."""
    conn.execute("BEGIN")
    recount_totals(conn)  # the same sums an upgrade makes (live rows' attempts included)
    conn.execute("COMMIT")


def remove_if_never_written(path: Path) -> bool:
    """Remove a checkpoint a process was killed while creating (a SQLite file with no tables
    yet): it holds nothing, and left there it would stop every later run. True if removed."""
    if not path.is_file():
        return False
    try:
        probe = connect(path, readonly=True)
        try:
            app_id = probe.execute("PRAGMA application_id").fetchone()[0]
            tables = probe.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        finally:
            probe.close()
    except sqlite3.DatabaseError:
        return False
    if app_id in (0, APP_ID) and tables == 0:
        remove_checkpoint(path)
        return True
    return False


def _connect_existing(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint here")
    check_header(path)
    # Look before touching: connect() switches the file to WAL, which must not happen to
    # somebody else's database.
    try:
        probe = connect(path, readonly=True)
        try:
            from .schema import schema_version

            if schema_version(probe) == 0:
                raise CheckpointError("not a batchrun checkpoint (an empty database)")
        finally:
            probe.close()
    except sqlite3.DatabaseError as exc:
        if starts_with(path, SQLITE_MAGIC) and (damaged := damage_error(exc, path)) is not None:
            raise damaged from None
        raise CheckpointError(f"{path}: not a batchrun checkpoint ({exc})") from None
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return connect(path)


def _say_upgrade(path: Path, old: int, new: int) -> None:
    log.warning("upgrading %s from checkpoint schema %d to %d (once)", path, old, new)


def open_reader(path: Path) -> CheckpointReader:
    """A checkpoint for reading (status, report, export), even while a job writes it.

    One written by an earlier release is upgraded first, under its lock: that fails, naming
    the holder, while an older batchrun is running it.
    """
    conn = _connect_existing(path)
    try:
        from .schema import SCHEMA_VERSION, schema_version

        version = schema_version(conn)
    finally:
        conn.close()
    if version > SCHEMA_VERSION:
        raise CheckpointError(
            f"{path}: written by a newer batchrun (checkpoint schema {version}, this version "
            f"reads up to {SCHEMA_VERSION}); upgrade batchrun to read it"
        )
    if version == 0:  # a job's first instant: it is making the file
        raise CheckpointError(f"{path}: empty (a job that has just started is making it)")
    current = version == SCHEMA_VERSION
    if not current:
        from batchrun.lock import CheckpointLock

        with CheckpointLock(path):
            Checkpoint.open(path).close()
    return CheckpointReader(path, connect(path, readonly=True))
