"""The exception tree, and the exit code each branch maps to.

Row-level problems are *stored*, not raised: a row that the server rejects becomes a
`failed` row in the checkpoint. Only what stops the whole job escapes the runner.

    BatchrunError                     exit 1
    ├── ConfigError                   bad flag, config key or input path: exit 2, nothing sent
    │   └── RunMismatchError          resume with other inputs/settings: exit 2
    ├── DatasetError                  input unusable as a whole (duplicate ids): exit 2
    ├── CheckpointError               checkpoint unreadable / from a newer version: exit 2
    ├── CheckpointWriteError          a write failed mid-run: exit 1, resumable
    │   └── DiskError                 the disk refused it (full, read-only, removed): clean stop
    ├── AuthError                     401/403 or missing key: exit 3, nothing marked failed
    ├── JobStopped                    the job parked itself (long Retry-After): exit 1, resumable
    ├── Interrupted                   Ctrl-C / SIGTERM: exit 130, resumable
    └── EndpointError                 one HTTP exchange went wrong (used inside the client)
        ├── TransportError            connect/read failure, timeout           -> retry
        ├── ResponseFormatError       2xx body that is not a chat completion  -> retry
        ├── RequestExpired            a polled id is unknown (expired/consumed) -> resubmit
        ├── MediaError                a row's image vanished or changed            -> fail row
        └── StatusError               non-2xx answer (retry.classify_status picks the class)
            ├── RateLimitError        429                        -> pause everyone, retry
            ├── ServerError           408, 500, 502, 503, 504    -> retry
            └── RequestRejected       any other 4xx              -> fail row

What each error means for a row (retry, re-poll, resubmit, pause, stop, fail) is decided in
one place, retry.decide.

Messages never contain the API key: the key lives only in the transport's headers and
no exception here is built from request headers.
"""

from __future__ import annotations

from pathlib import Path

EXIT_OK = 0
EXIT_ROWS_FAILED = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_INTERRUPTED = 130


class BatchrunError(Exception):
    """Base of every error batchrun raises on purpose."""

    exit_code = EXIT_ROWS_FAILED


class ConfigError(BatchrunError):
    """A flag, config key, or path is wrong; raised before anything is sent."""

    exit_code = EXIT_USAGE


class RunMismatchError(ConfigError):
    """The checkpoint was made with other inputs or request settings. `problem` says what
    changed, `hint` what `batchrun run` can do about it (a sweep words its own), `done` how
    many finished rows a fresh start would discard."""

    def __init__(self, problem: str, hint: str = "", *, done: int = 0) -> None:
        super().__init__(f"{problem} {hint}".rstrip())
        self.problem = problem
        self.hint = hint
        self.done = done


class DatasetError(BatchrunError):
    """The input cannot be used as a whole (one bad row is an `invalid` row, not this)."""

    exit_code = EXIT_USAGE


class CheckpointError(BatchrunError):
    """The checkpoint file cannot be used."""

    exit_code = EXIT_USAGE


class CheckpointWriteError(BatchrunError):
    """Writing the checkpoint failed during a run; what was committed before still stands."""

    exit_code = EXIT_ROWS_FAILED


class DiskError(CheckpointWriteError):
    """The disk refused a write (full, read-only, its folder removed). The run stopped
    sending at once; what was committed stands, and answers the checkpoint could not take
    are in `unsaved` (a side file restored on resume) or, failing that, lost."""

    def __init__(
        self,
        message: str,
        *,
        path: Path,
        unsaved: Path | None = None,
        held: int = 0,
        lost: int = 0,
    ) -> None:
        super().__init__(message)
        self.path = path
        self.unsaved = unsaved
        self.held = held  # answered rows the checkpoint could not take, in `unsaved`
        self.lost = lost  # ... nor the side file: to be bought again


class AuthError(BatchrunError):
    """The endpoint refused our credentials; the whole job stops."""

    exit_code = EXIT_AUTH


class JobStopped(BatchrunError):
    """The job stopped itself cleanly and can be resumed later (e.g. a 503 asking for hours)."""

    exit_code = EXIT_ROWS_FAILED


class Interrupted(BatchrunError):
    """Ctrl-C or SIGTERM: the job stopped submitting and saved where it stands."""

    exit_code = EXIT_INTERRUPTED


class EndpointError(BatchrunError):
    """One HTTP exchange failed. `retryable` tells the runner whether to try again."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TransportError(EndpointError):
    """No usable HTTP answer: connection refused or dropped, timeout, truncated body."""


class ResponseFormatError(EndpointError):
    """A 2xx answer whose body is not a usable chat completion."""


class RequestExpired(EndpointError):
    """The status URL no longer knows a request id (problem+json 404): submit the row again."""


class MediaError(EndpointError):
    """A local image or video of a row cannot be sent (gone, unreadable, changed)."""

    retryable = False


class StatusError(EndpointError):
    """A non-2xx answer, with the server's own words in the message."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        retry_after: float | None = None,
        request_id: str | None = None,
        body: str | None = None,
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.status = status
        self.request_id = request_id
        self.body = body  # the answer's body as text (kept for the OpenAI batch output)


class RateLimitError(StatusError):
    """429: the server's rate limit. Everyone pauses and the job slows down."""


class ServerError(StatusError):
    """408, 500, 502, 503, 504: the server failed this time; the request may work later."""


class RequestRejected(StatusError):
    """Any other 4xx: the server will refuse this request however often it is sent."""

    retryable = False


def cause_of(exc: BaseException) -> str:
    """What kind of failure: "HTTP 422" for an answer, else the error's class name."""
    if isinstance(exc, StatusError):
        return f"HTTP {exc.status}"
    return type(exc).__name__
