"""What the disk can do to a run, told apart from a bug: a write refused because the disk
is full, the filesystem read-only or the folder gone (`disk_fault`); and how much room a job
needs, checked before anything is sent (`space_shortfalls`). Pure, but for the two calls
that ask the filesystem (`free_bytes`, `_device`).
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

# An OSError's errno, as the reason a write failed.
_ERRNO_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EFBIG: "the file size limit is reached",
    errno.EROFS: "the filesystem is read-only",
    errno.ENOENT: "its folder was removed",
    errno.EACCES: "writing there is no longer allowed",
    errno.EPERM: "writing there is no longer allowed",
    errno.EIO: "the disk reported an I/O error",
}
# SQLite does not pass the errno on: its result code (prefix of the extended name) is all
# there is. An I/O error on write is, in practice, a full disk or a removed file.
_SQLITE_REASONS = (
    ("SQLITE_FULL", "the disk is full"),
    ("SQLITE_IOERR", "the disk refused a write (full, over a size limit, or removed)"),
    ("SQLITE_READONLY", "the file or its filesystem turned read-only"),
    ("SQLITE_CANTOPEN", "its folder was removed or is no longer writable"),
)
# An answer's bytes in the checkpoint and again in the output, when the ledger has none to
# measure yet (a first run): a generous guess, as free space is what a guess must not overstate.
DEFAULT_ANSWER_BYTES = 4096
ROW_OVERHEAD_BYTES = 160  # a finished row's fixed columns, in the ledger and in the output


@dataclass(frozen=True, slots=True)
class DiskFault:
    """A write the disk refused: where, why (in words), and the error as raised."""

    path: Path
    reason: str
    detail: str

    def describe(self) -> str:
        return f"cannot write {self.path}: {self.reason} ({self.detail})"


def disk_fault(exc: BaseException, path: Path) -> DiskFault | None:
    """The disk's refusal behind `exc`, writing `path`; None when the disk is not to blame
    (a bug, which must show as one)."""
    if isinstance(exc, sqlite3.Error):
        name = getattr(exc, "sqlite_errorname", "") or ""
        for prefix, reason in _SQLITE_REASONS:
            if name.startswith(prefix):
                return DiskFault(path, reason, str(exc))
        return None
    if isinstance(exc, OSError) and exc.errno in _ERRNO_REASONS:
        where = Path(exc.filename) if isinstance(exc.filename, str) else path
        return DiskFault(where, _ERRNO_REASONS[exc.errno], exc.strerror or str(exc))
    if isinstance(exc, OSError) and _ARROW_NO_SPACE in str(exc):
        # pyarrow raises OSError without an errno, with the C library's words in its text.
        return DiskFault(path, "the disk is full", str(exc))
    return None


_ARROW_NO_SPACE = os.strerror(errno.ENOSPC)


# ---------------------------------------------------------------- room for a job


@dataclass(frozen=True, slots=True)
class SpaceNeed:
    """What a job still needs on one filesystem, and what it has there."""

    folder: Path
    needed: int
    free: int

    @property
    def short(self) -> bool:
        return self.free < self.needed


def answer_bytes(measured: float | None) -> int:
    """Bytes one more finished row takes, from the ledger's own answers when it has some."""
    if measured is None:
        return DEFAULT_ANSWER_BYTES + ROW_OVERHEAD_BYTES
    return int(measured) + ROW_OVERHEAD_BYTES


def job_needs(
    per_row: int, *, checkpoint: tuple[Path, int], output: tuple[Path, int]
) -> dict[Path, int]:
    """Bytes each folder needs, from (folder, rows) for each: the checkpoint takes the rows
    still to finish; the output, rewritten whole through a temp file, every row. Folders on
    one filesystem add up (space_shortfalls)."""
    needs: dict[Path, int] = {}
    for folder, rows in (checkpoint, output):
        needs[folder] = needs.get(folder, 0) + rows * per_row
    return needs


def space_shortfalls(needs: dict[Path, int]) -> list[SpaceNeed]:
    """The folders (one per filesystem) with less free space than the job needs there."""
    by_device: dict[int, SpaceNeed] = {}
    for folder, needed in needs.items():
        device = _device(folder)
        seen = by_device.get(device)
        free = free_bytes(folder)
        by_device[device] = SpaceNeed(folder, needed + (seen.needed if seen else 0), free)
    return [need for need in by_device.values() if need.short]


def free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


def _device(folder: Path) -> int:
    return os.stat(folder).st_dev


def megabytes(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"
