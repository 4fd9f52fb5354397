"""A job's files: the output Parquet file and the SQLite checkpoint beside it.

`batchrun report` is given either file and finds the other here (`locate`), telling them
apart by their first bytes, not by their names. `batchrun status` looks for the checkpoint
beside an output with `checkpoint_beside`. Opening a checkpoint goes through `Store`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import CHECKPOINT_SUFFIX
from .errors import ConfigError
from .store import Store

SQLITE_MAGIC = b"SQLite format 3\x00"


def checkpoint_beside(output: Path) -> Path:
    """Where the checkpoint of `output` is when the job used the default name."""
    return Path(str(output) + CHECKPOINT_SUFFIX)


def locate(path: Path) -> tuple[Path, Path | None]:
    """The output Parquet file and its checkpoint (None when there is none beside it).

    `path` is the output, or a checkpoint whose output can be found (beside it, or where
    its settings say it was written)."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    if _is_parquet(path):
        beside = checkpoint_beside(path)
        return path, beside if beside.is_file() else None
    if not _starts_with(path, SQLITE_MAGIC):
        raise ConfigError(f"{path}: neither a batchrun output (Parquet) nor a batchrun checkpoint")
    store = Store.open(path)  # another SQLite file, or a newer schema: its own clear error
    try:
        settings = store.get_json("settings", {}) or {}
    finally:
        store.close()
    return _output_of(path, settings), path


def _is_parquet(path: Path) -> bool:
    return _starts_with(path, b"PAR1")


def _starts_with(path: Path, magic: bytes) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(len(magic)) == magic
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None


def _output_of(checkpoint: Path, settings: dict[str, Any]) -> Path:
    candidates = []
    if checkpoint.name.endswith(CHECKPOINT_SUFFIX):
        candidates.append(checkpoint.with_name(checkpoint.name[: -len(CHECKPOINT_SUFFIX)]))
    if settings.get("output"):
        candidates.append(Path(settings["output"]))
    for candidate in candidates:
        if candidate.is_file() and _is_parquet(candidate):
            return candidate
    raise ConfigError(
        f"{checkpoint} is a checkpoint; the report reads its output Parquet file, which is not "
        f"there. Write one with `batchrun export {checkpoint} -o OUTPUT.parquet` and report "
        "on that."
    )
