"""Measuring child processes and the machine: wall time, peak RSS, CPU time, summaries.

A benchmark's figure is always a whole child process, from just before it is spawned to just
after it is reaped: `os.wait4` gives its peak RSS (ru_maxrss) and CPU time exactly, with no
sampling. Output goes to files, never to pipes, so a chatty child cannot block.
"""

from __future__ import annotations

import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path


@dataclass
class Run:
    """One finished child process."""

    cmd: list[str]
    rc: int
    wall_s: float
    maxrss_mib: float
    cpu_s: float
    stdout: str
    stderr: str
    timed_out: bool = False


class Child:
    """A running child process, its output in `<log>.out` / `<log>.err`."""

    def __init__(self, cmd: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        self.cmd = cmd
        self._out, self._err = log.with_suffix(".out"), log.with_suffix(".err")
        self.started_wall = time.time()
        self.started = time.perf_counter()
        with self._out.open("wb") as out, self._err.open("wb") as err:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: int = signal.SIGINT) -> None:
        if self.proc.returncode is None:
            os.kill(self.proc.pid, sig)

    def wait(self, timeout: float) -> Run:
        """Reap the child (killing it after `timeout` seconds) and return its figures."""
        expired = threading.Event()

        def kill() -> None:
            expired.set()
            self.signal(signal.SIGKILL)

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            _, status, usage = os.wait4(self.proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - self.started
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        return Run(
            cmd=self.cmd,
            rc=self.proc.returncode,
            wall_s=wall,
            maxrss_mib=usage.ru_maxrss / 1024,  # KiB on Linux
            cpu_s=usage.ru_utime + usage.ru_stime,
            stdout=self._out.read_text(errors="replace"),
            stderr=self._err.read_text(errors="replace"),
            timed_out=expired.is_set(),
        )


def run(cmd: list[str], log: Path, timeout: float, env: dict[str, str] | None = None) -> Run:
    return Child(cmd, log, env).wait(timeout)


def pinned(cmd: list[str], cpus: str) -> list[str]:
    """`cmd` run under taskset on the given CPU list (taskset execs: same pid, same rusage)."""
    return ["taskset", "-c", cpus, *cmd]


def proc_cpu_seconds(pid: int) -> float:
    """user + system CPU time of a live process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def spread(values: list[float]) -> tuple[float, float, float]:
    """(min, median, max)."""
    return min(values), statistics.median(values), max(values)


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _mem_total_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024 / 1024
    return 0.0


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, str]:
    return {
        "cores (nproc)": str(os.cpu_count()),
        "CPU": _cpu_model(),
        "RAM": f"{_mem_total_gib():.1f} GiB",
        "kernel": platform.release(),
        "Python": sys.version.split()[0],
        "aiohttp": _version("aiohttp"),
        "batchrun": _version("batchrun"),
        "openai": _version("openai"),
        "pyarrow": _version("pyarrow"),
    }
