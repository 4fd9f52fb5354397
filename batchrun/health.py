"""Whether an endpoint of a pool gets rows: up, cooling down after a streak of failures, or
out for the rest of the run (its key was refused). Pure: clock values are passed in.

An endpoint that fails `streak` times in a row (connection refused, a 5xx, a timeout: the
server's fault, not the row's) cools down for a back-off that doubles with every cool-down
in a row, up to `max_s`. When the cool-down ends it is probed (pool.py sends a request that
buys nothing); only a probe that gets an answer brings it back. A refused key takes it out.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

STREAK = 3  # failures in a row that cool an endpoint down
COOL_BASE_S = 2.0
COOL_MAX_S = 60.0


class Health(enum.StrEnum):
    UP = "up"
    COOLING = "cooling"  # no rows until a probe after `cool_until` gets an answer
    OUT = "out"  # its key was refused: no rows for the rest of the run


@dataclass
class EndpointHealth:
    """One endpoint's health, moved by what its requests and probes came back with."""

    streak: int = STREAK
    base_s: float = COOL_BASE_S
    max_s: float = COOL_MAX_S
    state: Health = Health.UP
    failures: int = 0  # in a row, since the last success
    cool_downs: int = 0  # in a row, since it last stayed up
    cool_until: float = -math.inf
    probing: bool = False
    why: str = ""  # the failure that cooled it, or the refusal that took it out

    @property
    def up(self) -> bool:
        return self.state is Health.UP

    def on_success(self) -> None:
        self.failures = 0
        if self.state is Health.UP:
            self.cool_downs = 0

    def on_failure(self, now: float, why: str) -> bool:
        """A failure that is the server's. True when it cools the endpoint down now."""
        if self.state is not Health.UP:
            return False
        self.failures += 1
        if self.failures < self.streak:
            return False
        self.cool(now, why)
        return True

    def cool(self, now: float, why: str) -> float:
        """Cool down; returns for how long."""
        pause: float = min(self.max_s, self.base_s * 2.0**self.cool_downs)
        self.state = Health.COOLING
        self.cool_until = now + pause
        self.cool_downs += 1
        self.failures = 0
        self.why = why
        return pause

    def probe_due(self, now: float) -> bool:
        return self.state is Health.COOLING and not self.probing and now >= self.cool_until

    def probed(self, now: float, answered: bool, why: str = "") -> None:
        """A probe's result: an answer brings the endpoint back, else it cools again."""
        self.probing = False
        if self.state is not Health.COOLING:
            return
        if answered:
            self.state = Health.UP
            self.failures = 0
        else:
            self.cool(now, why or self.why)

    def take_out(self, why: str) -> None:
        self.state = Health.OUT
        self.why = why
