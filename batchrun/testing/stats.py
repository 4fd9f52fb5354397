"""The mock endpoint's counters, served at `GET /_mock/stats`.

Per prompt: submissions, billed answers, answers delivered, and the last body sent (without
its messages); overall: status codes sent, 202s, polls, resubmissions while an id was pending,
the most requests in flight at once, submission times (on the endpoint's clock) and the ids a
poll handed out. With these a test proves that nothing was bought twice. Requests that differ
only in their `seed` (repeats of one row) share a prompt: `seeds` records, by prompt, the seed
of every submission that carried one, in order, so a test can tell them apart.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class PromptStats:
    submissions: int = 0
    billed: int = 0
    delivered: int = 0
    last_body: dict[str, Any] = field(default_factory=dict)  # without the messages


@dataclass
class EndpointStats:
    prompts: dict[str, PromptStats] = field(default_factory=dict)
    codes: Counter[int] = field(default_factory=Counter)
    submit_times: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))
    polls: int = 0
    accepted: int = 0
    resubmitted_while_pending: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    polled_ids: set[str] = field(default_factory=set)  # ids whose result a poll handed out
    seeds: dict[str, list[Any]] = field(default_factory=dict)  # prompt -> seed per submission

    def for_prompt(self, prompt: str) -> PromptStats:
        entry = self.prompts.get(prompt)
        if entry is None:
            entry = self.prompts[prompt] = PromptStats()
        return entry

    def record_submission(
        self, prompt: str, body: dict[str, Any], now: float, pending: bool
    ) -> None:
        """A submission of `prompt` at `now`; `pending`: an earlier one still has an id."""
        stats = self.for_prompt(prompt)
        stats.submissions += 1
        stats.last_body = {k: v for k, v in body.items() if k != "messages"}
        if "seed" in body:
            self.seeds.setdefault(prompt, []).append(body["seed"])
        self.submit_times.append(now)
        self.resubmitted_while_pending += pending

    @contextmanager
    def serving(self) -> Iterator[None]:
        """Count a request in flight for the duration of the block."""
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            yield
        finally:
            self.in_flight -= 1

    def snapshot(self, *, pending: int, asset_uploads: int) -> dict[str, Any]:
        """The counters as JSON-ready data."""
        prompts = self.prompts.values()
        return {
            "submissions": sum(p.submissions for p in prompts),
            "billed": sum(p.billed for p in prompts),
            "delivered": sum(p.delivered for p in prompts),
            "accepted": self.accepted,
            "polls": self.polls,
            "pending": pending,
            "resubmitted_while_pending": self.resubmitted_while_pending,
            "max_in_flight": self.max_in_flight,
            "codes": {str(k): v for k, v in sorted(self.codes.items())},
            "prompts": {k: asdict(v) for k, v in self.prompts.items()},
            "submit_times": list(self.submit_times),
            "polled_ids": sorted(self.polled_ids),
            "asset_uploads": asset_uploads,
            "seeds": {k: list(v) for k, v in self.seeds.items()},
        }
