"""Which checkpoint belongs to an output path, and which output to a checkpoint: the one rule
`run`, `status`, `export` and `report` share.

A job's checkpoint is `OUTPUT.checkpoint.sqlite` unless `--checkpoint` chose another place;
a checkpoint's settings name its output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHECKPOINT_SUFFIX = ".checkpoint.sqlite"
SQLITE_MAGIC = b"SQLite format 3\x00"
PARQUET_MAGIC = b"PAR1"


def default_checkpoint(output: Path | str) -> Path:
    return Path(str(output) + CHECKPOINT_SUFFIX)


def checkpoint_for(path: Path) -> Path | None:
    """`path` itself when it is a SQLite file, else the checkpoint beside `path` taken as an
    output path (which need not exist yet: a first run writes it at the end). None if
    there is neither."""
    if path.is_file() and starts_with(path, SQLITE_MAGIC):
        return path
    beside = default_checkpoint(path)
    return beside if beside.is_file() else None


def output_for(checkpoint: Path, settings: dict[str, Any]) -> Path | None:
    """The Parquet output of a checkpoint: beside it by name, or where its settings say."""
    candidates = []
    if checkpoint.name.endswith(CHECKPOINT_SUFFIX):
        candidates.append(checkpoint.with_name(checkpoint.name[: -len(CHECKPOINT_SUFFIX)]))
    if settings.get("output"):
        candidates.append(Path(settings["output"]))
    for candidate in candidates:
        if candidate.is_file() and starts_with(candidate, PARQUET_MAGIC):
            return candidate
    return None


def starts_with(path: Path, magic: bytes) -> bool:
    """Whether the file begins with `magic` (False when it cannot be read)."""
    try:
        with path.open("rb") as fh:
            return fh.read(len(magic)) == magic
    except OSError:
        return False
