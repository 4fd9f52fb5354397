"""The mock endpoint's rate limit: `rpm_limit` submissions in any sliding 60 s window.

Times come from the endpoint's clock, so a test that advances the clock past the window sees
the limit lift at once. A submission refused with 429 does not count against it. (The
client's own limiter is `batchrun.limits`; this one only plays the server.)

With `ratelimit_headers`, the window is also described the way OpenAI's API does it, in
`x-ratelimit-limit-requests`, `x-ratelimit-remaining-requests` and
`x-ratelimit-reset-requests` (a Go-style duration: "250ms", "1s", "6m0s", "1m26.4s").
"""

from __future__ import annotations

import math
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
        self._forget(now)
        if len(self._admitted) >= limit:
            return True
        self._admitted.append(now)
        return False

    def headers(self, now: float, limit: int) -> dict[str, str]:
        """OpenAI's `x-ratelimit-*-requests` headers for the window as it stands at `now`.

        Remaining is what `limit` leaves after the admitted submissions; reset is the time
        until the oldest of them leaves the window (and so one more may be admitted).
        """
        self._forget(now)
        reset = self._admitted[0] + WINDOW_SECONDS - now if self._admitted else 0.0
        return {
            "x-ratelimit-limit-requests": str(limit),
            "x-ratelimit-remaining-requests": str(max(0, limit - len(self._admitted))),
            "x-ratelimit-reset-requests": duration_text(reset),
        }

    def _forget(self, now: float) -> None:
        while self._admitted and self._admitted[0] <= now - WINDOW_SECONDS:
            self._admitted.popleft()


def duration_text(seconds: float) -> str:
    """A duration as OpenAI's headers write it (Go's format, to the millisecond).

    Rounded up (after microseconds, against float noise), so a wait never reads shorter than
    it is: a client that waits "0s" for a positive wait would be refused again.
    """
    ms = math.ceil(round(seconds * 1_000_000) / 1000)
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, frac = divmod(rest, 1000)
    text = f"{whole}" + (f".{frac:03d}".rstrip("0") if frac else "") + "s"
    if hours or minutes:
        text = f"{minutes}m{text}"
    if hours:
        text = f"{hours}h{text}"
    return text
