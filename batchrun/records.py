"""Plain records passed between the engine's parts. No I/O, no behaviour beyond trivia."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Row states in the checkpoint (SPEC.md: pending -> in flight -> polling -> done / failed).
PENDING = "pending"
INFLIGHT = "inflight"
POLLING = "polling"  # the server answered 202; `request_id` is what to poll
FETCHED = "fetched"  # a consume-once poll answer is stored raw, not yet parsed
DONE = "done"
FAILED = "failed"
INVALID = "invalid"

# What a finished row writes, in this order (one fixed-shape tuple per row keeps the
# checkpoint writer's per-row work small). attempts and first_submit_at are included so this
# one update is the row's whole story.
FINAL_COLUMNS = (
    "state", "attempts", "first_submit_at", "finished_at", "status_code", "request_id",
    "content", "reasoning_content", "tool_calls", "finish_reason", "prompt_tokens",
    "completion_tokens", "total_tokens", "model", "latency_s", "ttft_s", "error", "cause",
    "response",
)  # fmt: skip

# Output `status` per state; anything unfinished is reported as `pending`.
OUTPUT_STATUS = {DONE: "ok", FAILED: "failed", INVALID: "invalid"}


@dataclass(slots=True)
class WorkItem:
    """A row the engine must finish: what to send, and where it stands."""

    idx: int  # position in the input: the output's order
    row_id: str
    messages: str  # JSON array, spliced into the request body
    overrides: str | None = None  # JSON object of per-row body fields
    est_tokens: int = 0
    attempts: int = 0  # HTTP submissions so far, across runs
    request_id: str | None = None  # a 202's NVCF-REQID still to poll
    first_submit_at: float | None = None  # wall clock, for latency_s
    fetched: str | None = None  # raw consume-once answer stored before a crash
    location: str | None = None  # a 302's download URL stored before a crash
    cost_hold: float = 0.0  # worst-case cost booked against --max-cost while in flight


@dataclass(slots=True)
class Completion:
    """What a chat-completion answer says, whatever its wire shape was."""

    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[Any] | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    model: str | None = None
    ttft_s: float | None = None


@dataclass(slots=True)
class Outcome:
    """A row's final result, as the checkpoint stores it and the output shows it."""

    state: str  # DONE or FAILED
    completion: Completion = field(default_factory=Completion)
    request_id: str | None = None
    status_code: int | None = None
    error: str | None = None
    cause: str | None = None  # what kind of failure: "HTTP 422", "TransportError", ...
    latency_s: float | None = None
    raw: str | None = None  # the answer's body as received (or assembled from a stream)
