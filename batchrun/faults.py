"""Crash points for the crash-test harness (tests/crash_harness.py). Inert unless asked.

`BATCHRUN_CRASH_AT="commit:3"` makes the process SIGKILL itself the 3rd time it reaches the
named point, so the harness can kill a run exactly where a random kill rarely lands:
- `commit`: inside a checkpoint transaction, rows updated but not committed;
- `output`: halfway through writing the output file (before the rename);
- `fetched`: a consume-once poll answer received, not yet stored;
- `upload`: an output's bytes sent to an object store, the upload not yet completed.
Several points may be given, comma-separated. With the variable unset, `crash_point` is one
dictionary lookup on an empty dict.
"""

from __future__ import annotations

import itertools
import os
import signal

ENV = "BATCHRUN_CRASH_AT"


def _parse(spec: str) -> dict[str, int]:
    points: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, count = part.partition(":")
        points[name] = int(count or "1")
    return points


_TARGETS = _parse(os.environ.get(ENV, ""))
_COUNTERS = {name: itertools.count(1) for name in _TARGETS}


def crash_point(name: str) -> None:
    """SIGKILL this process if this is the configured visit of point `name`."""
    counter = _COUNTERS.get(name)
    if counter is not None and next(counter) == _TARGETS[name]:
        os.kill(os.getpid(), signal.SIGKILL)
