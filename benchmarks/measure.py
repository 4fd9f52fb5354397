"""Measuring child processes and the machine: wall time, peak RSS, CPU time, summaries.

A benchmark's figure is always a whole child process, from just before it is spawned to just
after it is reaped, as measured by benchmarks/launch.py, which spawns it and reads its
rusage with wait4: peak RSS (ru_maxrss) and CPU time exact, with no sampling (see launch.py
for why the orchestrator does not spawn it directly). Output goes to files, never to pipes,
so a chatty child cannot block.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

LAUNCHER = Path(__file__).with_name("launch.py")


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
    """A running command (under the launcher), its output in `<log>.out` / `<log>.err`."""

    def __init__(
        self,
        cmd: list[str],
        log: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        self.cmd = cmd
        self._out, self._err = log.with_suffix(".out"), log.with_suffix(".err")
        self._report = log.with_suffix(".figures.json")
        self._start = Path(f"{self._report}.start")
        for stale in (self._report, self._start):
            stale.unlink(missing_ok=True)
        launcher = [sys.executable, str(LAUNCHER), str(self._report), "--", *cmd]
        with self._out.open("wb") as out, self._err.open("wb") as err:
            self.proc = subprocess.Popen(
                launcher, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=cwd
            )

    def _started(self) -> dict[str, float]:
        for _ in range(1000):
            if self._start.exists() and self._start.stat().st_size:
                return json.loads(self._start.read_text())  # type: ignore[no-any-return]
            if self.proc.poll() is not None:
                break
            time.sleep(0.005)
        raise RuntimeError(f"launcher did not start {self.cmd[0]}: {self._err.read_text()}")

    @property
    def started_wall(self) -> float:
        """time.time() just before the command was spawned."""
        return self._started()["started_wall"]

    def signal(self, sig: int = signal.SIGINT) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(self._started()["pid"]), sig)

    def wait(self, timeout: float) -> Run:
        """Reap the command (killing it after `timeout` seconds) and return its figures."""
        timed_out = False
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            self.signal(signal.SIGKILL)
            self.proc.wait()
        if not self._report.exists():
            raise RuntimeError(f"launcher failed for {self.cmd[0]}: {self._err.read_text()}")
        figures = json.loads(self._report.read_text())
        return Run(
            cmd=self.cmd,
            rc=figures["rc"],
            wall_s=figures["wall_s"],
            maxrss_mib=figures["maxrss_kib"] / 1024,  # KiB on Linux
            cpu_s=figures["cpu_s"],
            stdout=self._out.read_text(errors="replace"),
            stderr=self._err.read_text(errors="replace"),
            timed_out=timed_out,
        )


def run(
    cmd: list[str],
    log: Path,
    timeout: float,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Run:
    return Child(cmd, log, env=env, cwd=cwd).wait(timeout)


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
