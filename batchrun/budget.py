"""Money: prices per million tokens, and the `--max-cost` cap (pure logic, no I/O).

The cap must hold even for work already on the wire, so each request books its worst case
(its estimated prompt plus `max_tokens` of completion) before it is sent, and the booking is
replaced by the real cost from the answer's usage. A request that would take spent + booked
over the cap is not sent: the job stops cleanly instead, and a later run (with a higher cap,
or tomorrow's) resumes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


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


def job_cost(pricing_table: Mapping[str, float] | None, totals: Mapping[str, int]) -> float | None:
    """What a job's bought tokens cost, from its `pricing` setting and token totals keyed as
    `Store.totals()` keys them; None when the job has no prices. Rows answered by `--reuse`
    are not in the bought totals: they cost nothing."""
    pricing = Pricing.from_config(pricing_table)
    if pricing is None:
        return None
    return pricing.cost(totals["bought_prompt_tokens"], totals["bought_completion_tokens"])


class CostBudget:
    """Spent + booked must stay within `cap`. Not thread-safe: one event loop owns it."""

    def __init__(self, cap: float, pricing: Pricing, spent: float = 0.0) -> None:
        self.cap = cap
        self.pricing = pricing
        self.spent = spent
        self.booked = 0.0

    def book(
        self, prompt_estimate: int, max_completion: int, *, force: bool = False
    ) -> float | None:
        """Book a request's worst case; None when it would pass the cap (unless `force`:
        an answer already bought in an earlier run is counted, not refused)."""
        worst = self.pricing.cost(prompt_estimate, max_completion)
        if not force and self.spent + self.booked + worst > self.cap:
            return None
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
