"""What a checkpoint's reads return (queries.py): typed figures and pages, never tuples."""

from __future__ import annotations

from dataclasses import dataclass

from batchrun.lifecycle import RowState


@dataclass(frozen=True, slots=True)
class Totals:
    """Sums over the whole job (every run): tokens, requests, rows."""

    rows: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    attempts: int = 0  # HTTP submissions
    reused: int = 0  # rows answered by --reuse
    bought_prompt_tokens: int = 0  # ... of rows not reused: what was paid for
    bought_completion_tokens: int = 0


@dataclass(frozen=True, slots=True)
class FailureCause:
    cause: str
    rows: int
    example: str | None

    @property
    def label(self) -> str:
        return f"{self.cause} (e.g. {self.example})"


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run of the job: when it started and, unless it was killed, when and how it ended."""

    run: int
    started_at: float
    ended_at: float | None
    exit_code: int | None
    rows_finished: int | None
    requests: int | None


@dataclass(frozen=True, slots=True)
class PendingId:
    row_id: str
    request_id: str


@dataclass(slots=True)
class ResultPage:
    """Output rows in input order, one list per column (what the output writer builds from)."""

    idx: list[int]
    row_id: list[str]
    state: list[RowState]
    content: list[str | None]
    reasoning_content: list[str | None]
    tool_calls: list[str | None]
    finish_reason: list[str | None]
    prompt_tokens: list[int | None]
    completion_tokens: list[int | None]
    total_tokens: list[int | None]
    model: list[str | None]
    request_id: list[str | None]
    attempts: list[int]
    latency_s: list[float | None]
    ttft_s: list[float | None]
    error: list[str | None]
    reused: list[bool]
    request_hash: list[str | None]
    extra: list[str | None]  # passthrough values: a JSON array, meta extra_columns order
    status_code: list[int | None]
    body: list[str | None]  # a failure's error body, or a kept answer body
    rejected: list[int | None]  # answers that failed the job's schema (None: none did)
    rejected_error: list[str | None]  # what was wrong with the last of them
    endpoint: list[str | None]  # the endpoint that answered (its name or base URL)

    def __len__(self) -> int:
        return len(self.idx)


@dataclass(slots=True)
class TimelinePage:
    """Finished rows (done or failed), in input order: when and how each one ended."""

    finished_at: list[float | None]
    state: list[RowState]
    cause: list[str | None]
    reused: list[bool]
    error: list[str | None]


@dataclass(frozen=True, slots=True)
class RequestFigures:
    """What a dry run reports."""

    rows: int
    invalid: int
    prompt_tokens_est: int
    completion_tokens_max: int
    models: dict[str, int]
