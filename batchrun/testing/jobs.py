"""The mock endpoint's pending work: accepted requests by id, until a poll hands them out.

A `Job` is one accepted request: its prompt and body, when its answer is ready (on the
endpoint's clock), how many polls must still see 202, and its answer once generated (the
endpoint generates, and bills, each answer once). `JobTable` forgets an id at the first poll
of an `expire` job, or once it has not been polled for `expire_after` seconds.

Large results are answered 302 to a zip at `/_mock/large/{token}`, as NVCF hands out results
too large to inline; `LargeResults` keeps those downloads.
"""

from __future__ import annotations

import io
import uuid
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Job:
    request_id: str
    prompt: str
    body: dict[str, Any]
    ready_at: float  # on the endpoint's clock
    touched: float  # last submission or poll, on the endpoint's clock
    polls_before_ready: int = 0
    expire_on_poll: bool = False
    large: bool = False  # answered as a 302 to a zip download
    media: list[str] = field(default_factory=list)  # what the images were, for the answer
    result: bytes | None = None


class JobTable:
    """Pending jobs by request id."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        # Pending jobs per prompt: a resubmission of a pending prompt is counted on every
        # submission, and a scan of every pending job there would grow with the backlog.
        self._prompts: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._jobs

    def add(self, job: Job) -> None:
        self._jobs[job.request_id] = job
        self._prompts[job.prompt] += 1

    def has_prompt(self, prompt: str) -> bool:
        """Whether a job for this prompt is pending."""
        return self._prompts[prompt] > 0

    def find(self, request_id: str, now: float, expire_after: float) -> Job | None:
        """The pending job for a poll, or None (unknown, or forgotten just now)."""
        job = self._jobs.get(request_id)
        if job is None:
            return None
        stale = expire_after and now - job.touched > expire_after
        if job.expire_on_poll or stale:
            self.take(request_id)
            return None
        return job

    def take(self, request_id: str) -> Job | None:
        """Remove and return the job (None: another poll took it first)."""
        job = self._jobs.pop(request_id, None)
        if job is not None:
            self._prompts[job.prompt] -= 1
            if not self._prompts[job.prompt]:
                del self._prompts[job.prompt]
        return job


class LargeResults:
    """Zipped results by download token; a download may be repeated."""

    def __init__(self) -> None:
        self._zips: dict[str, bytes] = {}

    def put(self, request_id: str, result: bytes) -> str:
        """Store a zip holding `<request id>.response`, as NVCF serves it; returns its token."""
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr(f"{request_id}.response", result)
        token = uuid.uuid4().hex
        self._zips[token] = buffer.getvalue()
        return token

    def get(self, token: str) -> bytes | None:
        return self._zips.get(token)
