"""The local NVIDIA-compatible endpoint (`batchrun mock-server`) as a testing package.

A test double for demos, tests and benchmarks, split by concern:
`settings` (MockSettings), `clock` (the injected clock), `answers` (what a completion says),
`judge` (verdicts for a sweep's judge grader),
`streaming` (SSE), `faults` (prompt markers, fault rates, problem bodies), `validation`
(refused requests), `assets` (NVCF asset uploads and image checks), `jobs` (ids pending a
poll, large results), `ratelimit` (the rpm window), `capacity` (batch slots and overload),
`stats` (the counters), `app` (MockEndpoint: the routes and the life of a request),
`outage` (going down and coming back on the same port) and `server` (MockServer, serve).

Nothing in the `batchrun` engine imports this package.
"""

from __future__ import annotations

from batchrun.clock import Clock, SystemClock

from .app import MockEndpoint
from .clock import ManualClock, MovableClock, OffsetClock
from .server import MockServer, serve
from .settings import MockSettings

__all__ = [
    "Clock",
    "ManualClock",
    "MockEndpoint",
    "MockServer",
    "MockSettings",
    "MovableClock",
    "OffsetClock",
    "SystemClock",
    "serve",
]
