"""Ctrl-C, SIGTERM and a closed terminal (SIGHUP): stop submitting, let work in flight finish
within the grace period, save, and say how to resume. A second signal exits at once (the
checkpoint is consistent after every commit)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable
from contextlib import suppress

from .errors import Interrupted
from .stop import StopSignal


def install_signal_handlers(
    stop: StopSignal, grace: float, resume_command: Callable[[], str] | None = None
) -> None:
    """SIGINT, SIGTERM and SIGHUP stop the job (a second one exits at once, printing
    `resume_command()`, the way back)."""
    loop = asyncio.get_running_loop()
    seen: list[str] = []  # signals, not stops: the job may have stopped itself first

    def on_signal(signame: str) -> None:
        seen.append(signame)
        if len(seen) > 1:
            way_back = f"; resume with: {resume_command()}" if resume_command else ""
            say(f"{signame} again: exiting now. The checkpoint is consistent{way_back}")
            os._exit(130)
        say(
            f"{signame}: no new requests; waiting up to {grace:g}s for those in flight "
            "(press Ctrl-C again to quit at once)"
        )
        stop.request(Interrupted(f"interrupted by {signame}"))

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        with suppress(NotImplementedError, RuntimeError):  # RuntimeError: not the main thread
            loop.add_signal_handler(sig, on_signal, sig.name)


def say(text: str) -> None:
    try:
        sys.stderr.write(f"\n{text}\n")
        sys.stderr.flush()
    except OSError:  # the terminal closed (SIGHUP): the job goes on saving without it
        pass
