"""Run one command and report its exact figures: `python launch.py REPORT -- CMD...`.

Why a launcher: Linux keeps a process's peak RSS across exec, so a child spawned straight from
the orchestrator (which holds pyarrow and whole result tables) would report the orchestrator's
peak as its own. Spawned from this small process instead, the command's ru_maxrss is its own
(with this launcher's ~10 MiB as the floor). Writes REPORT.start ({"pid", "started_wall"}) at
once and REPORT ({"rc", "wall_s", "maxrss_kib", "cpu_s"}) at the end; SIGINT and SIGTERM are
passed on to the command. Standard library only, so it starts fast and stays small.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time


def main() -> int:
    report, separator, *cmd = sys.argv[1:]
    if separator != "--" or not cmd:
        raise SystemExit("usage: launch.py REPORT -- CMD...")
    started_wall = time.time()
    started = time.perf_counter()
    child = subprocess.Popen(cmd)

    def forward(signum: int, _frame: object) -> None:
        os.kill(child.pid, signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    with open(report + ".start", "w") as fh:
        json.dump({"pid": child.pid, "started_wall": started_wall}, fh)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    rc = child.returncode = os.waitstatus_to_exitcode(status)
    figures = {
        "rc": rc,
        "wall_s": wall,
        "maxrss_kib": usage.ru_maxrss,
        "cpu_s": usage.ru_utime + usage.ru_stime,
    }
    with open(report, "w") as fh:
        json.dump(figures, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
