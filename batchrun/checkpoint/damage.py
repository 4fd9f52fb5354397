"""A damaged checkpoint, told apart from a file that is not one, and named as such.

Every open checks what costs nothing: the SQLite header, and that the file is as long as
the header says (a copy taken mid-write, or a truncated one, is not). A damaged page
elsewhere shows when it is read (SQLite's SQLITE_CORRUPT); `damage_error` turns that into
an error that names the file and the command that salvages it. A full check of every page
(`PRAGMA integrity_check`) costs a read of the whole file, so it is `batchrun recover`'s,
not every resume's.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from batchrun.errors import CheckpointError

from .locate import SQLITE_MAGIC

_DAMAGE_CODES = ("SQLITE_CORRUPT", "SQLITE_NOTADB")
_UNDECODABLE = "Could not decode to UTF-8"


class CheckpointDamaged(CheckpointError):
    """The checkpoint's pages do not read back: `batchrun recover` salvages what does."""

    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(
            f"{path} is damaged ({detail}). Salvage every row that reads back with: "
            f"batchrun recover {path}  (it keeps the damaged file beside it), then run the "
            "job again: it finishes the rest"
        )
        self.path = path


def header_problem(path: Path) -> str | None:
    """What is wrong with the file's first page, if it is meant to be SQLite (None: fine,
    or not SQLite at all, which is the caller's to say)."""
    try:
        with path.open("rb") as fh:
            header = fh.read(100)
        size = path.stat().st_size
        wal = Path(f"{path}-wal")
        if wal.exists() and wal.stat().st_size:
            # A WAL checkpoint writes page 1 (the new page count) before it grows the file:
            # with a WAL there, a short file may be one caught mid-checkpoint, which SQLite
            # reads fine. Only a page that does not read back says it is damaged then.
            return None
    except OSError:
        return None
    if len(header) < 100 or not header.startswith(SQLITE_MAGIC):
        return None
    page_size = page_size_of(header)
    pages = int.from_bytes(header[28:32], "big")
    # The page count is valid only when the header's "version valid for" matches its
    # change counter (SQLite's file format, section 1.3.7).
    if header[92:96] == header[24:28] and pages and size < pages * page_size:
        return f"truncated: {size:,} bytes of {pages * page_size:,}"
    return None


def page_size_of(header: bytes) -> int:
    """The page size an SQLite file header gives (the value 1 stands for 65,536)."""
    size = int.from_bytes(header[16:18], "big")
    return 65536 if size == 1 else size


def is_damage(exc: BaseException) -> bool:
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    name = getattr(exc, "sqlite_errorname", "") or ""
    # Text whose bytes were overwritten reads back as SQLite's "malformed" or, where the
    # page's structure survived, as bytes Python cannot decode.
    return name.startswith(_DAMAGE_CODES) or str(exc).startswith(_UNDECODABLE)


def damage_error(exc: BaseException, path: Path) -> CheckpointDamaged | None:
    """`exc` as the damage of the checkpoint at `path`, or None if it is not that."""
    if not is_damage(exc):
        return None
    if str(exc).startswith(_UNDECODABLE):  # its text quotes the damaged bytes: not those
        return CheckpointDamaged(path, "a stored text does not read back as UTF-8")
    return CheckpointDamaged(path, str(exc))


def check_header(path: Path) -> None:
    """Raise CheckpointDamaged when the header already shows the file is damaged."""
    problem = header_problem(path)
    if problem is not None:
        raise CheckpointDamaged(path, problem)
