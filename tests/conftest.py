"""Shared fixtures: a loopback mock endpoint, input writers, and the CLI as a subprocess."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchrun.testing import MockServer, MockSettings

REPO = Path(__file__).resolve().parent.parent
# Config for end-to-end runs: fast polls and back-offs so tests take seconds, not minutes.
FAST_CONFIG = """
rpm = 100000
concurrency = 16
max_attempts = 6
hold_seconds = 5
min_poll_interval = 0.02
backoff_base = 0.02
backoff_max = 0.1
grace = 5
"""


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees a real key or the developer's settings."""
    for name in list(os.environ):
        if name.endswith("_API_KEY") or name.startswith("BATCHRUN_"):
            monkeypatch.delenv(name, raising=False)
    # A sweep appends its summary there: not to the page of the CI run that runs the tests.
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


@pytest.fixture
def mock_server() -> Iterator[MockServer]:
    """The mock endpoint on 127.0.0.1, a free port, in a background thread."""
    with MockServer(MockSettings(seed=1234)) as server:
        yield server


@pytest.fixture
def fast_config(tmp_path: Path) -> Path:
    path = tmp_path / "fast.toml"
    path.write_text(FAST_CONFIG)
    return path


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    with path.open("w") as fh:
        for row in rows:
            fh.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


def prompts(n: int, prefix: str = "Question") -> list[dict[str, Any]]:
    """n rows with unique prompts (so the mock's per-prompt counters map to rows)."""
    return [{"id": f"r{i:05d}", "prompt": f"{prefix} {i}: what is {i} plus {i}?"} for i in range(n)]


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """`batchrun ARGS` in a subprocess, as a user would run it."""
    full_env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    full_env.update(env or {})
    result = subprocess.run(
        [sys.executable, "-m", "batchrun", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


_STARTED: list[subprocess.Popen[str]] = []


def start_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`batchrun ARGS` started in the background (killed after the test if still running)."""
    full_env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    full_env.update(env or {})
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchrun", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
    )
    _STARTED.append(proc)
    return proc


@pytest.fixture(autouse=True)
def no_stray_processes() -> Iterator[None]:
    """A test that fails while its job runs must not leave the job running into the next."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def read_stderr_until(proc: subprocess.Popen[str], text: str, timeout: float = 30) -> str:
    """What a running process has written to stderr, once it has written `text` (fails the
    test after `timeout`); the caller adds it to what communicate() returns later."""
    assert proc.stderr is not None
    seen = ""
    deadline = time.monotonic() + timeout
    while text not in seen:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([proc.stderr], [], [], max(0.0, left))
        if not ready:
            raise AssertionError(f"{text!r} not written within {timeout:g}s; stderr: {seen}")
        chunk = os.read(proc.stderr.fileno(), 65536).decode(errors="replace")
        if not chunk:
            raise AssertionError(f"stderr closed before {text!r}; stderr: {seen}")
        seen += chunk
    return seen


def billed_when_quiet(server: MockServer, settle: float = 0.3, timeout: float = 10) -> int:
    """The mock's billed count once no answer is still being made: a killed client's
    requests go on being answered (and billed) for a moment after the kill."""
    last, since = server.stats()["billed"], time.monotonic()
    deadline = since + timeout
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = server.stats()["billed"]
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= settle:
            return int(now)
    raise AssertionError(f"the mock kept billing for {timeout:g}s after the kill")
