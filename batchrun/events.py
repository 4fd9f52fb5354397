"""`--log-json FILE`: one JSON object per line for cron jobs and log shippers.

Events: `job_start`, `row_done`, `row_failed` (with cause), `retry`, `rate_limited` (429
pauses), `paused` (a long Retry-After), `job_stop` (why a job stopped itself) and `job_end`
(totals). Each line has `ts` (Unix seconds) and `event`. Lines are appended, so the log of a
resumed job continues the earlier one's. Nothing here sees request headers, so the key cannot
reach the log. Writes are buffered: flushed when an event comes FLUSH_S or more after the last
flush, and at the end of the job (a kill -9 can cost the last second of events). A stop asked
for by a signal shows in `job_end` (`stopped`), not as a `job_stop` event.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import IO, Any

FLUSH_S = 1.0


class EventLog:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[str] = path.open("a", encoding="utf-8")
        self._flushed = time.monotonic()

    def emit(self, event: str, **fields: Any) -> None:
        record = {"ts": round(time.time(), 3), "event": event, **fields}
        self._fh.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        now = time.monotonic()
        if now - self._flushed >= FLUSH_S:
            self._fh.flush()
            self._flushed = now

    def close(self) -> None:
        self._fh.close()
