"""The mock endpoint's rate limit: `rpm_limit` submissions in any sliding 60 s window.

Times come from the endpoint's clock, so a test that advances the clock past the window sees
the limit lift at once. A submission refused with 429 does not count against it. (The
client's own limiter is `batchrun.limits`; this one only plays the server.)
"""

from __future__ import annotations

from collections import deque

WINDOW_SECONDS = 60.0


class RpmWindow:
    """The times of the submissions admitted in the last window."""

    def __init__(self) -> None:
        self._admitted: deque[float] = deque()

    def refuses(self, now: float, limit: int) -> bool:
        """Whether a submission at `now` is over `limit` (0: no limit); admitted ones count."""
        if limit <= 0:
            return False
        while self._admitted and self._admitted[0] <= now - WINDOW_SECONDS:
            self._admitted.popleft()
        if len(self._admitted) >= limit:
            return True
        self._admitted.append(now)
        return False
