"""The job's side of the disk: the free-space check before anything is sent, and the account
of a run the disk stopped (what is safe, what it still needs, how to resume).

What counts as the disk's fault, and the arithmetic of room, are storage.py's; this module
reads the checkpoint for the figures and words the messages.
"""

from __future__ import annotations

import logging
import sqlite3
from contextlib import closing, suppress
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import CheckpointReader
from .checkpoint.schema import connect
from .config import RunConfig
from .errors import ConfigError, DiskError
from .lifecycle import RowState
from .remote import is_remote
from .storage import DiskFault, answer_bytes, job_needs, megabytes, space_shortfalls
from .summary import config_one_offs, next_command

log = logging.getLogger(__name__)


def check_space(cfg: RunConfig, checkpoint: CheckpointReader, unfinished: int) -> None:
    """Warn (or, with --require-space, refuse) when a folder the job writes has less free
    space than its `unfinished` rows need."""
    if not unfinished:
        return
    per_row = answer_bytes(checkpoint.answer_bytes())
    needs = job_needs(
        per_row,
        checkpoint=(_folder(cfg.checkpoint_path), unfinished),
        output=(_output_folder(cfg), checkpoint.row_count()),
    )
    for need in space_shortfalls(needs):
        problem = (
            f"{need.folder} has {megabytes(need.free)} free; the job needs about "
            f"{megabytes(need.needed)} there ({unfinished:,} rows to go into the checkpoint "
            f"and all {checkpoint.row_count():,} into the output, about {per_row:,} bytes each)"
        )
        if cfg.require_space:
            raise ConfigError(f"{problem}. Nothing was sent (--require-space).")
        log.warning(
            "%s. The run stops cleanly if the disk fills; --require-space refuses to start "
            "instead.",
            problem,
        )


def disk_stop(cfg: RunConfig, error: DiskError) -> DiskError:
    """`error` with the whole account: what failed, what is safe, what to do."""
    lines = [f"the run stopped: {error}."]
    ledger = _read_ledger(cfg.checkpoint_path)
    if ledger is None:
        lines.append(
            f"  Nothing was sent: the checkpoint {cfg.checkpoint_path} could not be made. It "
            "takes about the size of the inputs, and as much again for the answers."
        )
    else:
        done = ledger.counts.get(RowState.DONE, 0)
        lines.append("  Nothing more was sent after that.")
        lines.append(f"  {done:,} answered rows are safe in {cfg.checkpoint_path}.")
    if error.unsaved is not None:
        lines.append(
            f"  {error.held:,} more answers the checkpoint could not take are in "
            f"{error.unsaved}; the next run puts them in the checkpoint."
        )
    if error.lost:
        lines.append(
            f"  {error.lost:,} answers received after the disk filled could not be saved "
            "anywhere (nor in a side file): they will be bought again."
        )
    if ledger is not None:
        lines.append(_room_line(error.path, ledger, error.held))
    verb = "Run it again with" if ledger is None else "Resume with"
    lines.append(f"  {verb}: {next_command(undo=config_one_offs(cfg))}")
    return DiskError("\n".join(lines), path=error.path, unsaved=error.unsaved, held=error.held)


def from_fault(fault: DiskFault) -> DiskError:
    return DiskError(fault.describe(), path=fault.path)


def fault_path(exc: BaseException, cfg: RunConfig) -> Path:
    """The file a failed write was most likely to: SQLite's is the checkpoint; an OSError
    names its file, or else it came from the output writer."""
    if isinstance(exc, sqlite3.Error) or is_remote(cfg.output):
        return cfg.checkpoint_path  # a store's output is staged beside the checkpoint
    return Path(cfg.output)


def _room_line(path: Path, ledger: _Ledger, held: int) -> str:
    unfinished = max(0, sum(n for s, n in ledger.counts.items() if not s.finished) - held)
    rows = sum(ledger.counts.values())
    per_row = answer_bytes(ledger.answer_bytes)
    # The rows to go into the checkpoint; every row into the output, which is rewritten whole.
    need = (unfinished + rows) * per_row
    folder = path if path.is_dir() else _folder(path)
    return (
        f"  The job needs about {megabytes(need)} more at {folder} ({unfinished:,} rows to "
        f"go into the checkpoint, all {rows:,} into the output): free that much, or make "
        "the folder writable again."
    )


@dataclass(frozen=True, slots=True)
class _Ledger:
    counts: dict[RowState, int]
    answer_bytes: float | None


def _read_ledger(path: Path) -> _Ledger | None:
    """The checkpoint's figures, read-only (None when it cannot be read either)."""
    with (
        suppress(sqlite3.Error, OSError),
        closing(CheckpointReader(path, connect(path, readonly=True))) as reader,
    ):
        return _Ledger(reader.counts(), reader.answer_bytes())
    return None


def _output_folder(cfg: RunConfig) -> Path:
    """Where the output takes local space: its folder, or the checkpoint's for a store's
    output (staged there whole before the upload)."""
    if is_remote(cfg.output):
        return _folder(cfg.checkpoint_path)
    return _folder(Path(cfg.output))  # a folder of parts is made beside it, then renamed


def _folder(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")
