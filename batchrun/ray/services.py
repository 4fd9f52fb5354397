"""The job's shared state as Ray actors: the rate limit, the checkpoint, the cost cap.

Plain classes; driver.py turns them into actors (`ray.remote(...)`), so they are tested
without Ray too.
"""

from __future__ import annotations

import time
from pathlib import Path

from batchrun.budget import BudgetSpent, CostBudget, Pricing
from batchrun.checkpoint import AssetCache, CheckpointWriter
from batchrun.lifecycle import Transition
from batchrun.limits import WINDOW_S, RateWindow, Reservation


class RateService:
    """The cluster's one rate limiter. Start times are wall-clock (time.time())."""

    def __init__(self, rpm: int | None, tpm: int | None) -> None:
        self._window = RateWindow(rpm, tpm)
        self._entries: dict[int, Reservation] = {}
        self._next = 0

    def _now(self) -> float:
        return time.time()

    def reserve(self, count: int, tokens: int) -> list[tuple[float, int]]:
        """`count` start slots of `tokens` each: (start time, booking id)."""
        now = self._now()
        # Bookings never settled (a failed try, slots dropped after a 429) are forgotten
        # once past the window: a correction could no longer change anything.
        for booking in [b for b, r in self._entries.items() if r.at < now - 2 * WINDOW_S]:
            del self._entries[booking]
        grants = []
        for _ in range(count):
            reservation = self._window.reserve(now, tokens)
            self._next += 1
            if reservation.entry is not None:
                self._entries[self._next] = reservation
            grants.append((reservation.at, self._next))
        return grants

    def settle(self, corrections: list[tuple[int, int | None]]) -> None:
        for booking, actual in corrections:
            reservation = self._entries.pop(booking, None)
            if reservation is not None:
                self._window.settle(reservation, actual)
        self._window.on_success()

    def rate_limited(self, retry_after: float | None) -> float:
        return self._window.on_rate_limited(self._now(), retry_after)

    def pause(self, seconds: float) -> None:
        self._window.pause(self._now() + seconds)

    def paused_until(self) -> float:
        return self._window.paused_until


class CheckpointService:
    """The checkpoint writer and the asset-id cache, in an actor on the driver's node."""

    def __init__(self, path: str, keep_answer_bodies: bool) -> None:
        self._writer = CheckpointWriter(
            Path(path), keep_answer_bodies=keep_answer_bodies, hold_on_fault=False
        )
        self._assets = AssetCache(Path(path))

    def apply(self, changes: list[Transition]) -> None:
        self._writer.apply(changes)

    def apply_now(self, changes: list[Transition]) -> None:
        self._writer.apply(changes)
        self._writer.flush()

    def flush(self) -> None:
        self._writer.flush()

    def asset(self, sha256: str) -> tuple[str, float] | None:
        return self._assets.get_now(sha256)

    def keep_asset(self, sha256: str, asset_id: str, uploaded_at: float) -> None:
        self._assets.put_now(sha256, asset_id, uploaded_at)

    def close(self) -> None:
        self._writer.close()
        self._assets.close()


class BudgetService:
    """The `--max-cost` budget, shared by every worker."""

    def __init__(self, cap: float, prompt_price: float, completion_price: float, spent: float):
        self._budget = CostBudget(cap, Pricing(prompt_price, completion_price), spent)

    def book(self, prompt_estimate: int, max_completion: int, force: bool) -> float | str:
        """The booking, or (the cap would be passed) the message to stop the job with."""
        try:
            return self._budget.book(prompt_estimate, max_completion, force=force)
        except BudgetSpent as exc:
            return str(exc)

    def release(self, booking: float) -> None:
        self._budget.release(booking)

    def settle(
        self, booking: float, prompt_tokens: int | None, completion_tokens: int | None
    ) -> None:
        self._budget.settle(booking, prompt_tokens, completion_tokens)

    def spent(self) -> float:
        return self._budget.spent
