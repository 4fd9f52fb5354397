"""What every benchmark shares: the sizes (full and --quick), the run's Context (work folder,
the fixed endpoint, failures found), progress lines and number formatting.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .clients import BATCHRUN, MINIMAL, OPENAI, PREVIOUS, previous_release
from .endpoints import Server, start_fixed
from .measure import spread

FULL: dict[str, Any] = {
    "throughput_rows": 20_000,
    "warmup_rows": 2_000,
    "latency_rows": 8_000,
    "rounds": 5,
    "openai_rounds": 3,  # the SDK loop is ~15x slower: it sits out the last rounds
    "memory_rows": (20_000, 200_000, 1_000_000),
    "remote_rounds": 2,  # local, remote, local, remote on the largest memory_rows
    "resume_reps": 3,
    "resume_rows": (1_000_000, 5_000_000),
    "resume_left": 500_000,
    "ledger_rows": 20_000,
    "gc_rounds": 3,
    "pending_rows": 5_000,
    "pending_latency": 30,
    "rate_rows": 1_800,
    "rate_rpm": 600,
    "pool_rows": 960,  # an endpoint's rows: 30 s at 16 in flight and 0.5 s a row
    "pool_rounds": 2,
    "auto_seconds": 60,  # a run of the "auto" sweep, at its ideal rate
    "auto_sweep": (2, 4, 8, 12, 16, 24),
    "engine_rows": 5_000,
    "engine_rounds": 2,
}
QUICK: dict[str, Any] = {
    "throughput_rows": 2_000,
    "warmup_rows": 200,
    "latency_rows": 1_000,
    "rounds": 2,
    "openai_rounds": 2,
    "memory_rows": (2_000, 20_000, 100_000),
    "remote_rounds": 1,
    "resume_reps": 2,
    "resume_rows": (20_000, 100_000),
    "resume_left": 10_000,
    "ledger_rows": 2_000,
    "gc_rounds": 1,
    "pending_rows": 500,
    "pending_latency": 8,
    "rate_rows": 150,
    "rate_rpm": 600,
    "pool_rows": 160,
    "pool_rounds": 1,
    "auto_seconds": 8,
    "auto_sweep": (4, 8, 16),
    "engine_rows": 500,
    "engine_rounds": 1,
}
CONCURRENCY = 64
FAST_OPTIONS = ("--concurrency", "64", "--rpm", "0", "--max-pending", "256")
LATENCY_S = 0.05
CLIENTS = (MINIMAL, OPENAI, BATCHRUN, PREVIOUS)
MIB_LIMIT = 200


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class Context:
    workdir: Path
    quick: bool
    fixed: Server | None = None
    fallback_reason: str | None = None
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    _previous: list[Path | None] = field(default_factory=list)

    @property
    def previous(self) -> Path | None:
        """The previous release, exported once (None without git history)."""
        if not self._previous:
            self._previous.append(previous_release(self.workdir / "previous"))
        return self._previous[0]

    def clients(self) -> list[str]:
        return [c for c in CLIENTS if c != PREVIOUS or self.previous is not None]

    def size(self, key: str) -> Any:
        return (QUICK if self.quick else FULL)[key]

    @property
    def data(self) -> Path:
        return self.workdir / "data"

    def fixed_endpoint(self, port: int = 0) -> Server:
        if self.fixed is None or self.fixed.proc.poll() is not None:
            self.fixed, reason = start_fixed(self.workdir, port)
            if reason is not None:
                self.fallback_reason = reason
            log(f"fixed endpoint: {self.fixed.kind} at {self.fixed.base_url}")
        return self.fixed

    def stop_fixed(self) -> int:
        port = self.fixed.port if self.fixed else 0
        if self.fixed is not None:
            self.fixed.stop()
            self.fixed = None
        return port

    def record(self, what: str, error: str | None) -> bool:
        if error is not None:
            self.failures.append(f"{what}: {error}")
            log(f"CHECK FAILED {what}: {error}")
        return error is None


def fmt(value: float, digits: int = 2) -> str:
    return f"{value:,.{digits}f}"


def fmt_spread(values: list[float], digits: int = 2) -> str:
    if not values:
        return "—"
    return " / ".join(fmt(v, digits) for v in spread(values))


def fmt_median(values: list[float], digits: int = 1) -> str:
    return fmt(spread(values)[1], digits) if values else "—"


def slug(client: str) -> str:
    return "previous" if client == PREVIOUS else client.split()[0].lower()


def sizes(ctx: Context) -> dict[str, Any]:
    return QUICK if ctx.quick else FULL
