"""The rate limits a server announces in its answer headers. Pure: headers in, a record out.

OpenAI, and NVIDIA or a gateway in front of vLLM when they send them, report the caller's
quota as `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`: the quota, what is left of
it, and when it fills up again (an OpenAI duration such as `6m0s`, or plain seconds).
`read_server_limits` turns them into a `ServerLimits`; `pause_s` says how long to wait when
a quota is used up. Deciding what to do with that (pause an endpoint, pick another) is the
pool's business, not this module's.

Not read here: `Retry-After` (responses.py), the IETF draft's `RateLimit-*` headers, and
resets given as a date or an epoch timestamp. A value that cannot be read counts as absent:
a server's odd header must never fail a request that succeeded.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

_PREFIX = "x-ratelimit-"
# Go's duration format, which OpenAI's reset headers use: "1h2m3.5s", "6m0s", "20ms".
# ASCII digits only: no "inf", "nan", exponents, signs or other scripts' digits.
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(h|ms|m|s|us|µs|μs|ns)")
_UNIT_S = {
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ns": 1e-9,
}
_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")
# Bounded: int() refuses strings of thousands of digits, and a header must never raise.
_COUNT = re.compile(r"[0-9]{1,18}")
# A quota resets within a day; a week's margin. Longer is an epoch timestamp or garbage, and
# taken as a duration it would pause the job for decades.
MAX_RESET_S = 7 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """What one answer's headers said; None where a header was absent or unreadable."""

    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests_s: float | None = None  # seconds until the request quota is full again
    reset_tokens_s: float | None = None
    limit_requests: int | None = None
    limit_tokens: int | None = None

    def pause_s(self) -> float | None:
        """Seconds to wait before the next request: the reset of each quota that is used up
        (the longer, if both are). None if none is used up, or none gives its reset."""
        waits = [
            reset
            for remaining, reset in (
                (self.remaining_requests, self.reset_requests_s),
                (self.remaining_tokens, self.reset_tokens_s),
            )
            if remaining == 0 and reset is not None
        ]
        return max(waits, default=None)


def read_server_limits(headers: Mapping[str, str]) -> ServerLimits | None:
    """The `x-ratelimit-*` headers of an answer; None when it has none that can be read.

    `headers` is looked up with lowercase names: aiohttp's CIMultiDict (any case) or a plain
    dict with lowercase keys."""
    limits = ServerLimits(
        remaining_requests=_count(headers, "remaining-requests"),
        remaining_tokens=_count(headers, "remaining-tokens"),
        reset_requests_s=_reset(headers, "reset-requests"),
        reset_tokens_s=_reset(headers, "reset-tokens"),
        limit_requests=_count(headers, "limit-requests"),
        limit_tokens=_count(headers, "limit-tokens"),
    )
    return None if limits == ServerLimits() else limits


def parse_duration(text: str) -> float | None:
    """Seconds in an OpenAI (Go) duration ("1s", "6m0s", "20ms", "1h2m3.5s") or a plain
    number of seconds ("12", "0.5"); None for anything else."""
    text = text.strip()
    if _SECONDS.fullmatch(text):
        seconds = float(text)
    else:
        parts = _DURATION_PART.findall(text)
        # findall skips what does not match: the parts must spell the whole text.
        if not parts or "".join(number + unit for number, unit in parts) != text:
            return None
        seconds = sum(float(number) * _UNIT_S[unit] for number, unit in parts)
    return seconds if math.isfinite(seconds) else None


def _count(headers: Mapping[str, str], name: str) -> int | None:
    raw = headers.get(_PREFIX + name)
    if raw is None or not _COUNT.fullmatch(raw.strip()):
        return None
    return int(raw)


def _reset(headers: Mapping[str, str], name: str) -> float | None:
    raw = headers.get(_PREFIX + name)
    seconds = None if raw is None else parse_duration(raw)
    return seconds if seconds is not None and seconds <= MAX_RESET_S else None
