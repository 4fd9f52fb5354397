"""Which checkpoint belongs to an output path, and which output to a checkpoint: the one rule
`run`, `status`, `export` and `report` share.

A job's checkpoint is `OUTPUT.checkpoint.sqlite` unless `--checkpoint` chose another place
(an output in an object store keeps it in the working folder); a checkpoint's settings name
its output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from batchrun.errors import ConfigError
from batchrun.paths import CHECKPOINT_SUFFIX, default_checkpoint_path

SQLITE_MAGIC = b"SQLite format 3\x00"
PARQUET_MAGIC = b"PAR1"


def default_checkpoint(output: Path | str) -> Path:
    return default_checkpoint_path(str(output))


def checkpoint_for(path: Path) -> Path | None:
    """`path` itself when it is a SQLite file, else the checkpoint beside `path` taken as an
    output path (which need not exist yet: a first run writes it at the end). None if
    there is neither."""
    if path.is_file() and starts_with(path, SQLITE_MAGIC):
        return path
    beside = default_checkpoint(path)
    return beside if beside.is_file() else None


def require_checkpoint(path: Path) -> Path:
    """checkpoint_for(path), or a ConfigError saying where it looked."""
    found = checkpoint_for(path)
    if found is None:
        raise ConfigError(
            f"{path}: no checkpoint there, and none beside it as a job's output "
            f"({default_checkpoint(path)}); a job run with --checkpoint PATH keeps it at PATH"
        )
    return found


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


def locate_job(path: Path) -> tuple[Path | None, Path | None]:
    """A job's output Parquet file and its checkpoint, from either one (`batchrun report`).
    The output is None while a first run has not written it yet, or when it is not Parquet
    (the checkpoint is there); the checkpoint is None for an output whose checkpoint is
    gone."""
    if path.is_file() and starts_with(path, PARQUET_MAGIC):
        return path, checkpoint_for(path)
    if path.is_file() and not starts_with(path, SQLITE_MAGIC):
        beside = checkpoint_for(path)  # an output in another format (OpenAI batch JSONL)
        if beside is None:
            raise ConfigError(
                f"{path}: neither a batchrun output (Parquet) nor a batchrun checkpoint, and "
                "no checkpoint beside it"
            )
        return None, beside
    checkpoint = require_checkpoint(path)
    if checkpoint != path:  # an output path whose file is not written yet
        return None, checkpoint
    from batchrun.checkpoint.store import open_reader  # another SQLite file: its own error

    reader = open_reader(path)
    try:
        settings = reader.get_json("settings", {}) or {}
    finally:
        reader.close()
    return output_for(path, settings), path
