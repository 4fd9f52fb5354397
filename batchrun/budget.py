"""Money: prices per million tokens, the `--max-cost` cap, and each row's hold on it.

The cap must hold even for work already on the wire, so each request books its worst case
(its estimated prompt plus `max_tokens` of completion) before it is sent, and the booking is
replaced by the real cost from the answer's usage. A request that would take spent + booked
over the cap is not sent: the job stops cleanly instead, and a later run (with a higher cap,
or tomorrow's) resumes it. The cap is `CostBudget` in one process, a service on Ray
(ray/services.py); the engine holds its rows' bookings through `CostGuard` either way.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .errors import JobStopped

if TYPE_CHECKING:
    from .checkpoint import Totals
    from .lifecycle import WorkItem
    from .records import Completion


@dataclass(frozen=True)
class Pricing:
    """USD per million tokens."""

    prompt: float
    completion: float

    @classmethod
    def from_config(cls, table: Mapping[str, float] | None) -> Pricing | None:
        if not table:
            return None
        return cls(float(table.get("prompt", 0.0)), float(table.get("completion", 0.0)))

    def cost(self, prompt_tokens: int | None, completion_tokens: int | None) -> float:
        return (
            (prompt_tokens or 0) * self.prompt + (completion_tokens or 0) * self.completion
        ) / 1e6


def job_cost(pricing: Mapping[str, float] | None, totals: Totals) -> float | None:
    """USD spent on a job over all its runs (tokens reused from elsewhere cost nothing);
    None without prices."""
    prices = Pricing.from_config(pricing)
    if prices is None:
        return None
    return prices.cost(totals.bought_prompt_tokens, totals.bought_completion_tokens)


class BudgetSpent(JobStopped):
    """The next request could pass --max-cost: the job stops (resumable). `worst` is the
    refused request's worst case (None when it crossed a process boundary as text)."""

    def __init__(self, message: str, worst: float | None = None) -> None:
        super().__init__(message)
        self.worst = worst


def cap_to_finish(
    *, spent: float, cap: float, finished: int, unfinished: int, worst: float, concurrency: int
) -> float:
    """A --max-cost that lets a stopped job finish: what it spent, the rows left at the
    cost of a row so far (the worst case while nothing is known), and room for the
    bookings of a full set of requests in flight; a tenth over, in cents, rounded up, and
    always enough for at least one more request than `cap`."""
    per_row = spent / finished if finished and spent else worst
    in_flight = min(unfinished, max(1, concurrency)) * worst
    wanted = max((spent + unfinished * per_row) * 1.1 + in_flight, cap + worst)
    return math.ceil(round(wanted * 100, 6)) / 100  # round: 1.2600000000000002 is 1.26


class CostBudget:
    """Spent + booked must stay within `cap`. Not thread-safe: one event loop owns it."""

    def __init__(self, cap: float, pricing: Pricing, spent: float = 0.0) -> None:
        self.cap = cap
        self.pricing = pricing
        self.spent = spent
        self.booked = 0.0

    def book(self, prompt_estimate: int, max_completion: int, *, force: bool = False) -> float:
        """Book a request's worst case, or raise BudgetSpent (unless `force`: an answer
        already bought in an earlier run is counted, not refused)."""
        worst = self.pricing.cost(prompt_estimate, max_completion)
        if not force and self.spent + self.booked + worst > self.cap:
            raise BudgetSpent(
                f"cost cap: ${self.spent:.4f} spent and ${self.booked:.4f} booked for requests "
                f"in flight; the next request (up to ${worst:.4f}) could pass --max-cost "
                f"${self.cap:g}. Finished rows are kept.",
                worst,
            )
        self.booked += worst
        return worst

    def release(self, booking: float) -> None:
        self.booked = max(0.0, self.booked - booking)

    def settle(
        self, booking: float, prompt_tokens: int | None, completion_tokens: int | None
    ) -> None:
        """Replace a booking by what the answer cost (its worst case when usage is missing)."""
        self.release(booking)
        if prompt_tokens is None and completion_tokens is None:
            self.spent += booking
        else:
            self.spent += self.pricing.cost(prompt_tokens, completion_tokens)


class Budget(Protocol):
    """The cap as the engine sees it: a CostBudget here, or the Ray cluster's service."""

    def book(
        self, prompt_estimate: int, max_completion: int, *, force: bool = False
    ) -> float | Awaitable[float]: ...

    def release(self, booking: float) -> None: ...

    def settle(
        self, booking: float, prompt_tokens: int | None, completion_tokens: int | None
    ) -> None: ...


class CostGuard:
    """Each row's booking against the budget, from its first try to its answer."""

    def __init__(self, budget: Budget | None, max_tokens: Callable[[str | None], int | None]):
        self._budget = budget
        self._max_tokens = max_tokens
        self._holds: dict[int, float] = {}

    @property
    def capped(self) -> bool:
        """Whether there is a cap to book against (no --max-cost: nothing to do)."""
        return self._budget is not None

    def holds(self, item: WorkItem) -> bool:
        return item.idx in self._holds

    async def book(self, item: WorkItem, *, force: bool = False) -> None:
        """Book the row's worst case (raises BudgetSpent when it does not fit)."""
        if self._budget is None:
            return
        booking = self._budget.book(
            item.est_tokens, self._max_tokens(item.overrides) or 0, force=force
        )
        if not isinstance(booking, float):
            booking = await booking
        self._holds[item.idx] = self._holds.get(item.idx, 0.0) + booking

    def release(self, item: WorkItem) -> None:
        booking = self._holds.pop(item.idx, None)
        if booking and self._budget is not None:
            self._budget.release(booking)

    def settle(self, item: WorkItem, completion: Completion) -> None:
        booking = self._holds.pop(item.idx, 0.0)
        if self._budget is not None:
            self._budget.settle(booking, completion.prompt_tokens, completion.completion_tokens)
