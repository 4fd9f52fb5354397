"""The SQLite checkpoint: every row's state, request id and answer. The only sqlite3 user.

- schema.py: the tables, every column, and the numbered migrations applied on open;
- upgrade.py: migration 2's data move (the compact ledger);
- values.py: how values are stored compactly;
- queries.py: reads as typed rows and pages (CheckpointReader); figures.py: their types;
- store.py: the checkpoint its job owns: create, open, ingest, moves between runs;
- writer.py: the writer thread, the lifecycle Sink of a run; commit.py: what a commit writes;
- unsaved.py: the side file of what a full disk would not take, restored by the next run;
- damage.py: a damaged checkpoint named as such; salvage.py, rowcopy.py, leaves.py:
  `batchrun recover`;
- reuse.py: `--reuse` from an earlier checkpoint or output;
- assets.py: uploaded NVCF asset ids;
- locate.py: which checkpoint belongs to an output path, and back.
"""

from __future__ import annotations

from .assets import AssetCache
from .figures import (
    FailureCause,
    PendingId,
    RequestFigures,
    ResultPage,
    RunRecord,
    TimelinePage,
    Totals,
)
from .locate import (
    checkpoint_for,
    default_checkpoint,
    locate_job,
    output_for,
    require_checkpoint,
)
from .queries import CheckpointReader
from .reuse import ReusedAnswer
from .schema import SCHEMA_VERSION
from .store import (
    Checkpoint,
    DuplicateRowId,
    IngestRow,
    open_reader,
    remove_checkpoint,
    remove_if_never_written,
)
from .writer import FLUSH_INTERVAL_S, CheckpointWriter

__all__ = [
    "FLUSH_INTERVAL_S",
    "SCHEMA_VERSION",
    "AssetCache",
    "Checkpoint",
    "CheckpointReader",
    "CheckpointWriter",
    "DuplicateRowId",
    "FailureCause",
    "IngestRow",
    "PendingId",
    "RequestFigures",
    "ResultPage",
    "ReusedAnswer",
    "RunRecord",
    "TimelinePage",
    "Totals",
    "checkpoint_for",
    "default_checkpoint",
    "locate_job",
    "open_reader",
    "output_for",
    "remove_checkpoint",
    "remove_if_never_written",
    "require_checkpoint",
]
