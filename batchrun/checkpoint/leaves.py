"""Rows read straight off a damaged SQLite file's table leaf pages, for `recover`.

Where an interior b-tree page is damaged, SQLite cannot reach the leaf pages under it, although
they may be intact. This reads every page of the file that is a table leaf (SQLite's file
format, sections 1.6 and 2.1: cells of a payload size, a rowid and a record, with overflow
pages for long records), skipping the pages on the freelist, and yields each row it decodes
with its rowid. Which table a row belongs to is the caller's to decide from its shape. Pure
(bytes in, rows out); a cell that does not decode is skipped.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .damage import page_size_of

TABLE_LEAF = 0x0D
Data = bytes | mmap.mmap  # the file, read or mapped (a mapped file need not fit in memory)


@dataclass(frozen=True, slots=True)
class LeafRow:
    rowid: int
    values: tuple[Any, ...]


def leaf_rows(data: Data) -> Iterator[LeafRow]:
    """Every row on every table leaf page of the file `data` that is not on the freelist."""
    if len(data) < 100:
        return
    page_size = page_size_of(data[:100])
    usable = page_size - data[20]
    free = _freelist(data, page_size)
    for page in range(1, len(data) // page_size + 1):
        if page in free:
            continue
        base = (page - 1) * page_size
        header = base + (100 if page == 1 else 0)
        if data[header] != TABLE_LEAF:
            continue
        cells = int.from_bytes(data[header + 3 : header + 5], "big")
        for i in range(cells):
            at = base + int.from_bytes(data[header + 8 + 2 * i : header + 10 + 2 * i], "big")
            try:
                row = _cell(data, at, page_size, usable)
            except (IndexError, ValueError, struct.error, UnicodeDecodeError):
                continue
            if row is not None:
                yield row


def _freelist(data: Data, page_size: int) -> set[int]:
    pages: set[int] = set()
    trunk = int.from_bytes(data[32:36], "big")
    while trunk and trunk not in pages and trunk * page_size <= len(data):
        pages.add(trunk)
        base = (trunk - 1) * page_size
        count = int.from_bytes(data[base + 4 : base + 8], "big")
        for i in range(min(count, page_size // 4 - 2)):
            pages.add(int.from_bytes(data[base + 8 + 4 * i : base + 12 + 4 * i], "big"))
        trunk = int.from_bytes(data[base : base + 4], "big")
    return pages


def _varint(data: Data | bytes, at: int) -> tuple[int, int]:
    """SQLite's varint at `at`: (value, where the next field starts)."""
    value = 0
    for i in range(8):
        byte = data[at + i]
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, at + i + 1
    return (value << 8) | data[at + 8], at + 9


def _cell(data: Data, at: int, page_size: int, usable: int) -> LeafRow | None:
    size, at = _varint(data, at)
    rowid, at = _varint(data, at)
    if rowid >= 1 << 63:
        rowid -= 1 << 64
    payload = _payload(data, at, size, page_size, usable)
    if payload is None:
        return None
    return LeafRow(rowid, _record(payload))


def _payload(data: Data, at: int, size: int, page_size: int, usable: int) -> bytes | None:
    most = usable - 35
    if size <= most:
        return data[at : at + size]
    least = (usable - 12) * 32 // 255 - 23
    local = least + (size - least) % (usable - 4)
    local = local if local <= most else least
    parts = [data[at : at + local]]
    left = size - local
    page = int.from_bytes(data[at + local : at + local + 4], "big")
    seen: set[int] = set()
    while left > 0:
        if not page or page in seen or page * page_size > len(data):
            return None
        seen.add(page)
        base = (page - 1) * page_size
        chunk = data[base + 4 : base + 4 + min(left, usable - 4)]
        parts.append(chunk)
        left -= len(chunk)
        page = int.from_bytes(data[base : base + 4], "big")
    return b"".join(parts)


_INTS = {1: 1, 2: 2, 3: 3, 4: 4, 5: 6, 6: 8}


def _record(payload: bytes) -> tuple[Any, ...]:
    header_size, at = _varint(payload, 0)
    types = []
    while at < header_size:
        kind, at = _varint(payload, at)
        types.append(kind)
    values: list[Any] = []
    at = header_size
    for kind in types:
        if kind in (0, 10, 11):
            values.append(None)
        elif kind in _INTS:
            n = _INTS[kind]
            values.append(int.from_bytes(payload[at : at + n], "big", signed=True))
            at += n
        elif kind == 7:
            values.append(struct.unpack(">d", payload[at : at + 8])[0])
            at += 8
        elif kind in (8, 9):
            values.append(kind - 8)
        else:
            n = (kind - 12) // 2 if kind % 2 == 0 else (kind - 13) // 2
            raw = payload[at : at + n]
            if len(raw) != n:
                raise ValueError("record runs past its payload")
            values.append(raw if kind % 2 == 0 else raw.decode("utf-8"))
            at += n
    return tuple(values)
