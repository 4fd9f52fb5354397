"""Copying what still reads back of a damaged checkpoint into a new one (for salvage.py):
each table by rowid, a page of rows at a time, looking rows up one by one past a failed
read; then the rows below a damaged interior page, read straight off the file's leaf pages
(leaves.py) and added where the copy by rowid has none.
"""

from __future__ import annotations

import mmap
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .leaves import leaf_rows
from .schema import STATES

PROBE_CLEAR = 64  # lookups in a row that read back: past the damage, page on
PROBE_LIMIT = 10_000  # look-ups past a failed read, table end unknown (leaves: the rest)


def columns_of(conn: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


def copy_table(source: sqlite3.Connection, target: sqlite3.Connection, table: str) -> int:
    try:
        have = set(columns_of(source, table))
    except sqlite3.DatabaseError:
        return 0
    columns = [c for c in columns_of(target, table) if c in have]
    if not columns:
        return 0
    select = f"SELECT rowid, {', '.join(columns)} FROM {table}"
    insert = (
        f"INSERT OR REPLACE INTO {table} (rowid, {', '.join(columns)}) "
        f"VALUES ({', '.join('?' * (len(columns) + 1))})"
    )
    last = last_rowid(source, table)
    copied, after = 0, -(2**63)
    target.execute("BEGIN")
    while True:
        rows, after, failed = _read_from(source, select, after)
        copied += _insert(target, insert, rows)
        if not failed:
            break
        # A damaged page: look rows up one by one past it, then page on from there.
        probed, resume_after = _probe_past(source, select, after, last)
        copied += _insert(target, insert, probed)
        if resume_after is None:
            break
        after = resume_after
    target.execute("COMMIT")
    return copied


def _read_from(source: sqlite3.Connection, select: str, after: int) -> tuple[list[Any], int, bool]:
    """Rows after `after` until the end or a failed read: (rows, last rowid read, failed)."""
    rows: list[Any] = []
    try:
        for row in source.execute(f"{select} WHERE rowid > ? ORDER BY rowid", (after,)):
            rows.append(row)
            after = row[0]
    except sqlite3.DatabaseError:
        return rows, after, True
    return rows, after, False


def _probe_past(
    source: sqlite3.Connection, select: str, after: int, last: int | None
) -> tuple[list[Any], int | None]:
    """Rows after `after` looked up one rowid at a time, until PROBE_CLEAR lookups in a row
    read back (the damage is behind): (rows read, the rowid to page on from, or None when
    the table's end came first)."""
    if after < 0:
        after = -1  # rowids are positions (>= 0) or small ids (>= 1)
    end = last if last is not None and last > after else after + PROBE_LIMIT
    rows: list[Any] = []
    clear = 0
    for rowid in range(after + 1, end + 1):
        try:
            row = source.execute(f"{select} WHERE rowid = ?", (rowid,)).fetchone()
        except sqlite3.DatabaseError:
            clear = 0
            continue
        if row is not None:
            rows.append(row)
        clear += 1
        if clear >= PROBE_CLEAR:
            return rows, rowid
    return rows, None


def last_rowid(source: sqlite3.Connection, table: str) -> int | None:
    try:
        value = source.execute(f"SELECT max(rowid) FROM {table}").fetchone()[0]
    except sqlite3.DatabaseError:
        return None
    return None if value is None else int(value)


def _insert(target: sqlite3.Connection, insert: str, rows: Iterable[Any]) -> int:
    n = 0
    for row in rows:
        try:
            target.execute(insert, row)
            n += 1
        except sqlite3.IntegrityError:  # a row read back as garbage that breaks a constraint
            continue
    return n


def _is_item(v: tuple[Any, ...]) -> bool:
    return isinstance(v[1], str) and v[2] in STATES


def _is_live(v: tuple[Any, ...]) -> bool:  # not a `runs` row: its second value is a time
    if not isinstance(v[1], int) or isinstance(v[2], str):
        return False
    # Seven values since schema 5 (`endpoint`): not a `validations` row, whose fifth is a count.
    return len(v) == 6 or all(x is None or isinstance(x, str) for x in v[3:])


def _is_result(v: tuple[Any, ...]) -> bool:
    return isinstance(v[1], int)


# Each table's record widths: a row written before a column was added has one value fewer.
_SHAPES: dict[str, tuple[tuple[int, ...], Callable[[tuple[Any, ...]], bool]]] = {
    "items": ((9,), _is_item),
    "live": ((6, 7), _is_live),
    "results": ((20, 21), _is_result),
}


def copy_from_leaves(path: Path, target: sqlite3.Connection) -> dict[str, int]:
    """Rows on leaf pages that no b-tree walk reached (a damaged interior page above them),
    added where the copy by rowid has none."""
    inserts = {}
    for table in _SHAPES:
        columns = columns_of(target, table)
        inserts[table] = (
            f"INSERT OR IGNORE INTO {table} (rowid, {', '.join(columns[1:])}) "
            f"VALUES ({', '.join('?' * len(columns))})"
        )
    added = dict.fromkeys(_SHAPES, 0)
    with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        target.execute("BEGIN")
        for row in leaf_rows(data):
            for table, (widths, fits) in _SHAPES.items():
                values = row.values
                if len(values) in widths and values[0] is None and fits(values):
                    padding = (None,) * (widths[-1] - len(values))
                    cursor = target.execute(inserts[table], (row.rowid, *values[1:], *padding))
                    added[table] += cursor.rowcount
                    break
        target.execute("COMMIT")
    return added
