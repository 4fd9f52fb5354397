"""One job per checkpoint: an exclusive flock on `<checkpoint>.lock`, naming its holder.

The kernel drops a flock when its process dies, so a lock left by a crashed or killed run
is taken over without any clean-up; a live holder is named (pid and command) in the refusal.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from .errors import ConfigError


def lock_path(checkpoint: Path) -> Path:
    return Path(str(checkpoint) + ".lock")


def _describe_holder(pid_text: str) -> str:
    pid = pid_text.strip()
    if not pid.isdigit():
        return "another process"
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        cmd = ""
    return f"process {pid}" + (f" ({cmd[:120]})" if cmd else "")


def holder(checkpoint: Path) -> str | None:
    """Who holds the checkpoint's lock now, or None when nobody does."""
    path = lock_path(checkpoint)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _describe_holder(os.pread(fd, 64, 0).decode(errors="replace"))
    finally:
        os.close(fd)
    return None


class CheckpointLock:
    """`with CheckpointLock(path):` holds the lock or raises ConfigError naming the holder."""

    def __init__(self, checkpoint: Path) -> None:
        self.path = lock_path(checkpoint)
        self._fd: int | None = None

    def __enter__(self) -> CheckpointLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                who = _describe_holder(os.pread(fd, 64, 0).decode(errors="replace"))
                os.close(fd)
                raise ConfigError(
                    f"{self.path.with_suffix('')} is in use by {who}; "
                    "wait for that run to finish or stop it first"
                ) from None
            # The previous holder may have unlinked the file between our open and flock.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # while still holding it: see __enter__
            os.close(self._fd)
            self._fd = None
