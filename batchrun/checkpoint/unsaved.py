"""The side file of a run the disk stopped: the transitions its checkpoint could not take
(answers paid for among them), saved beside it and committed first thing on the next run.

One JSON object a line: a header, then one transition each, in the order they were made.
The file is small (at most the rows in flight when the disk filled), written under a
temporary name and renamed, so it is whole or absent. It goes beside the checkpoint or, when
that disk refuses it too, into the temp folder under a name made from the checkpoint's path.
Its header carries the checkpoint's creation stamp: a side file is never applied to another
job's checkpoint made at the same path (`--fresh`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sqlite3
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from batchrun import codec
from batchrun.errors import CheckpointError
from batchrun.lifecycle import TRANSITIONS, Finished, Outcome, RowState, Transition
from batchrun.records import Completion

log = logging.getLogger(__name__)

FORMAT = 1
_KINDS = {kind.__name__: kind for kind in TRANSITIONS}


@dataclasses.dataclass(frozen=True, slots=True)
class Unsaved:
    """What the side file holds."""

    changes: list[Transition]
    keep_answer_bodies: bool
    stamp: str | None  # the checkpoint's meta `created_at`


def unsaved_path(checkpoint: Path) -> Path:
    return Path(str(checkpoint) + ".unsaved")


def unsaved_paths(checkpoint: Path) -> list[Path]:
    """Where a side file may be, in the order tried: beside the checkpoint, then the temp
    folder."""
    digest = hashlib.sha256(str(checkpoint.resolve()).encode()).hexdigest()[:16]
    return [unsaved_path(checkpoint), Path(tempfile.gettempdir()) / f"batchrun-{digest}.unsaved"]


def stamp_of(conn: sqlite3.Connection) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = 'created_at'").fetchone()
    return None if row is None else str(row[0])


def save(
    path: Path, changes: Sequence[Transition], keep_answer_bodies: bool, stamp: str | None
) -> None:
    """Write the side file (replacing one left by an earlier stop: it holds more)."""
    header = {
        "batchrun_unsaved": FORMAT,
        "keep_answer_bodies": keep_answer_bodies,
        "checkpoint_created_at": stamp,
    }
    temporary = Path(str(path) + ".tmp")
    try:
        with temporary.open("w", encoding="utf-8") as fh:
            fh.write(json.dumps(header) + "\n")
            for change in changes:
                fh.write(json.dumps(_encode(change)) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def load(path: Path) -> Unsaved:
    """The side file's transitions; ValueError names the line that does not read."""
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        header = json.loads(lines[0]) if lines else {}
    except json.JSONDecodeError:
        header = {}
    if header.get("batchrun_unsaved") != FORMAT:
        raise ValueError(f"{path}:1: not a batchrun side file")
    changes = []
    for number, line in enumerate(lines[1:], start=2):
        try:
            changes.append(_decode(json.loads(line)))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{number}: unreadable transition ({exc})") from None
    stamp = header.get("checkpoint_created_at")
    return Unsaved(changes, bool(header.get("keep_answer_bodies")), stamp)


def _encode(change: Transition) -> dict[str, Any]:
    return {"kind": type(change).__name__, **dataclasses.asdict(change)}


def _decode(data: dict[str, Any]) -> Transition:
    kind = _KINDS[data.pop("kind")]
    if kind is Finished:
        outcome = data["outcome"]
        completion = Completion(**outcome.pop("completion"))
        data["outcome"] = Outcome(
            state=RowState(outcome.pop("state")), completion=completion, **outcome
        )
    return kind(**data)


def restore(conn: sqlite3.Connection, checkpoint: Path, stamp: str | None) -> int:
    """Commit every side file of `checkpoint` (stamped `stamp`) and remove it. Rows finished
    since (a second restore) are left as they are; a side file of another checkpoint once at
    this path is moved aside, unused. Returns the rows it finished."""
    return sum(_restore(conn, path, stamp) for path in unsaved_paths(checkpoint) if path.is_file())


def _restore(conn: sqlite3.Connection, path: Path, stamp: str | None) -> int:
    from .commit import Commit, Names

    try:
        saved = load(path)
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"{exc}: move it aside to resume without it (the answers in it are bought again)"
        ) from None
    if saved.stamp != stamp:
        stale = path.with_name(path.name + ".stale")
        path.replace(stale)
        log.warning("%s belongs to an earlier job at this path: moved to %s", path, stale)
        return 0
    idxs = codec.dumps(sorted({c.idx for c in saved.changes}))
    finished = {
        idx
        for (idx,) in conn.execute(
            "SELECT idx FROM results WHERE idx IN (SELECT value FROM json_each(?))", (idxs,)
        )
    }
    batch = Commit()
    batch.add([c for c in saved.changes if c.idx not in finished])
    if batch:
        batch.write(conn, Names(conn), saved.keep_answer_bodies)
    path.unlink()
    return sum(1 for row in batch.rows.values() if row.finished is not None)
