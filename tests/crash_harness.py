"""Crash-test harness: kill batchrun with SIGKILL at random moments and at chosen crash
points (inside a checkpoint commit, inside the output write, between receiving a consume-once
answer and storing it), or fill its disk mid-run (a file-size limit: the run must stop
cleanly, exit 1, no traceback), run the same command again, repeat; then prove every row is
right.

Used by tests/test_crash.py (a few cycles, in `make test`) and by `make crash-test`:

    python -m tests.crash_harness --cycles 100

Checked after every kill: the checkpoint passes SQLite's integrity check and the output file,
if there is one, reads whole. Checked when each job finally completes: one output row per input
row, in order, none lost or duplicated, each carrying the answer to its own prompt and the
server's usage; and no request id the checkpoint knew at a kill was submitted again, except
an id whose answer the server had already handed out when the kill came (consume-once: the
answer was in transit and cannot be fetched again). Those, and requests killed before they
had an id (the documented hold exposure), are counted as re-buys, never as losses.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from batchrun.errors import CheckpointError
from batchrun.faults import ENV as CRASH_ENV
from batchrun.lifecycle import RowState
from batchrun.testing import MockServer, MockSettings
from tests.ledger import row_states

CONFIG = """
rpm = 100000
concurrency = 8
hold_seconds = 5
max_attempts = 20
min_poll_interval = 0.02
backoff_base = 0.02
backoff_max = 0.2
grace = 2
"""


@dataclass
class CrashReport:
    cycles: int = 0  # kills
    jobs: int = 0
    rows_verified: int = 0
    lost_rows: int = 0
    duplicated_rows: int = 0
    wrong_rows: int = 0
    resubmitted_known_ids: int = 0
    in_transit_rebuys: int = 0
    bought_twice: int = 0  # billed more than once in all (in-transit + killed before an id)
    corrupt_checkpoints: int = 0
    unreadable_outputs: int = 0
    leftover_temp_files: int = 0  # half-written outputs of killed runs, still there at the end
    unexpected_exits: list[str] = field(default_factory=list)
    kills: Counter[str] = field(default_factory=Counter)
    unreached: Counter[str] = field(default_factory=Counter)  # crash points a run never hit

    @property
    def dead_points(self) -> list[str]:
        """Crash points aimed at but never reached: the code moved and the test went blind.

        Every run writes its output, so `output` must fire whenever it is aimed at.
        """
        return sorted(k for k in ("output",) if self.unreached[k] and not self.kills[k])

    @property
    def ok(self) -> bool:
        return not (
            self.dead_points
            or self.lost_rows
            or self.duplicated_rows
            or self.wrong_rows
            or self.resubmitted_known_ids
            or self.corrupt_checkpoints
            or self.unreadable_outputs
            or self.leftover_temp_files
            or self.unexpected_exits
        )

    def text(self) -> str:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.kills.items()))
        return "\n".join(
            [
                f"crash test: {self.cycles} kill/resume cycles over {self.jobs} jobs ({kinds})",
                f"  rows verified: {self.rows_verified}",
                f"  lost rows: {self.lost_rows}",
                f"  duplicated rows: {self.duplicated_rows}",
                f"  rows with a wrong answer or usage: {self.wrong_rows}",
                f"  known request ids submitted again: {self.resubmitted_known_ids}",
                f"  corrupt checkpoints: {self.corrupt_checkpoints}",
                f"  unreadable output files: {self.unreadable_outputs}",
                f"  temp files left behind: {self.leftover_temp_files}",
                f"  unexpected exits: {len(self.unexpected_exits)}",
                "  crash points aimed at but never reached: "
                + (", ".join(f"{k} {n}" for k, n in sorted(self.unreached.items())) or "none"),
                f"  re-buys, consume-once answers in transit at a kill: {self.in_transit_rebuys}",
                f"  requests billed more than once (in transit, or killed before a 202 id): "
                f"{self.bought_twice}",
                "  verdict: " + ("PASS" if self.ok else "FAIL"),
            ]
        )


def _inputs(n: int, job: int) -> list[dict[str, Any]]:
    return [
        {"id": f"j{job}-r{i:04d}", "prompt": f"Job {job} question {i}: what is {i} times 3?"}
        for i in range(n)
    ]


@dataclass(frozen=True)
class KillPlan:
    """What ends the next run: a SIGKILL after `delay`, a crash point (`env`), or a disk
    that fills once a file grows `disk_room` bytes past the checkpoint's size."""

    label: str
    env: dict[str, str] = field(default_factory=dict)
    delay: float | None = None
    disk_room: int | None = None


def _kill_plan(rng: random.Random) -> KillPlan:
    kinds = ["random", "commit", "output", "fetched", "diskfull"]
    kind = rng.choices(kinds, weights=[5, 3, 1, 2, 2])[0]
    if kind == "random":
        return KillPlan("random", delay=rng.uniform(0.05, 2.5))
    if kind == "diskfull":
        return KillPlan("diskfull", disk_room=rng.randint(32, 256) * 1024)
    visit = {"commit": rng.randint(1, 25), "output": 1, "fetched": rng.randint(1, 8)}[kind]
    return KillPlan(kind, env={CRASH_ENV: f"{kind}:{visit}"})


def _disk_limit(checkpoint: Path, room: int | None) -> Any:
    """A child set-up making writes fail as a full disk does past the checkpoint's size plus
    `room` bytes (SIGXFSZ ignored: the write fails with EFBIG instead of killing)."""
    if room is None:
        return None
    limit = (checkpoint.stat().st_size if checkpoint.exists() else 0) + room

    def setup() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return setup


def _expected_end(code: int, plan: KillPlan, stderr: str) -> bool:
    if plan.disk_room is not None:  # a clean stop, said in words
        return code == 1 and "the run stopped: cannot write" in stderr and "Traceback" not in stderr
    return code == -signal.SIGKILL


def _checkpoint_states(path: Path) -> dict[str, tuple[RowState, str | None]]:
    """Every row's state and request id; none for a checkpoint killed while being made."""
    try:
        return row_states(path)
    except CheckpointError:
        return {}


def _intact(path: Path) -> bool:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return bool(conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok")
    finally:
        conn.close()


def _expected(prompt: str) -> tuple[str, int, int]:
    answer = f"Answer to: {prompt}"
    completion = len(answer.split()) + len(f"Thinking about: {prompt}".split())
    return answer, len(prompt.split()), completion


def _verify_job(out: Path, inputs: list[dict[str, Any]], report: CrashReport) -> None:
    rows = pq.read_table(out).to_pylist()
    ids = [r["id"] for r in rows]
    wanted = [i["id"] for i in inputs]
    report.duplicated_rows += len(ids) - len(set(ids))
    report.lost_rows += len(set(wanted) - set(ids))
    prompt_of = {i["id"]: i["prompt"] for i in inputs}
    for row in rows:
        prompt = prompt_of.get(row["id"])
        if prompt is None:
            report.wrong_rows += 1
            continue
        answer, prompt_tokens, completion_tokens = _expected(prompt)
        right = (
            row["status"] == "ok"
            and row["content"] == answer
            and row["prompt_tokens"] == prompt_tokens
            and row["completion_tokens"] == completion_tokens
        )
        report.wrong_rows += not right
    if ids != wanted and not report.lost_rows and not report.duplicated_rows:
        report.wrong_rows += 1  # out of order
    report.rows_verified += len(rows)


def run_harness(
    workdir: Path, *, cycles: int, rows: int = 300, seed: int = 0, verbose: bool = False
) -> CrashReport:
    rng = random.Random(seed)
    report = CrashReport()
    settings = MockSettings(
        seed=seed, p202=0.3, pending_polls=2, p500=0.03, p502=0.01, p_drop=0.02,
        latency=0.03, latency_jitter=0.08,
    )  # fmt: skip
    config = workdir / "crash.toml"
    config.write_text(CONFIG)
    with MockServer(settings) as server:
        while report.cycles < cycles:
            _one_job(server, workdir, config, rows, rng, report, cycles, verbose)
    return report


def _one_job(
    server: MockServer,
    workdir: Path,
    config: Path,
    rows: int,
    rng: random.Random,
    report: CrashReport,
    cycles: int,
    verbose: bool,
) -> None:
    job = report.jobs
    report.jobs += 1
    inputs = _inputs(rows, job)
    data = workdir / f"job{job}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in inputs))
    out = workdir / f"job{job}.parquet"
    checkpoint = Path(str(out) + ".checkpoint.sqlite")
    command = [sys.executable, "-m", "batchrun", "run", str(data), "-o", str(out)]
    command += ["--base-url", server.base_url, "-c", str(config), "--no-progress"]
    known: list[tuple[str, str, int]] = []  # (prompt, request id, submissions at the kill)
    prompt_of = {r["id"]: r["prompt"] for r in inputs}
    while True:
        plan = _kill_plan(rng) if report.cycles < cycles else KillPlan("none")
        label = plan.label
        proc = subprocess.Popen(
            command,
            env={**os.environ, **plan.env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_disk_limit(checkpoint, plan.disk_room),
        )
        if plan.delay is not None:
            try:
                proc.wait(timeout=plan.delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
        _, stderr = proc.communicate(timeout=300)
        if proc.returncode == 0:
            if plan.env or plan.disk_room:  # aimed at, and the run finished without it
                report.unreached[label] += 1
            break
        if not _expected_end(proc.returncode, plan, stderr):
            report.unexpected_exits.append(f"exit {proc.returncode}: {stderr[-500:]}")
            return
        report.cycles += 1
        report.kills[label] += 1
        if checkpoint.exists() and not _intact(checkpoint):
            report.corrupt_checkpoints += 1
        if out.exists():
            try:
                pq.read_table(out)
            except Exception:  # noqa: BLE001 - any failure to read is what we count
                report.unreadable_outputs += 1
        if checkpoint.exists():
            submissions = server.stats()["prompts"]
            for row_id, (state, rid) in _checkpoint_states(checkpoint).items():
                if state is RowState.POLLING and rid:
                    prompt = prompt_of[row_id]
                    known.append((prompt, rid, submissions.get(prompt, {}).get("submissions", 0)))
        if verbose:
            print(f"  job {job}: killed ({label}), {len(known)} known ids so far", flush=True)
    _verify_job(out, inputs, report)
    report.leftover_temp_files += len(list(workdir.glob(f".{out.name}.*.tmp")))
    stats = server.stats()
    polled = set(stats["polled_ids"])
    for prompt, rid, submitted in known:
        if stats["prompts"][prompt]["submissions"] > submitted:
            if rid in polled:
                report.in_transit_rebuys += 1
            else:
                report.resubmitted_known_ids += 1
    report.bought_twice += sum(
        p["billed"] - 1 for k, p in stats["prompts"].items() if k.startswith(f"Job {job} ")
    )
    if verbose:
        print(f"job {job} verified ({report.cycles}/{cycles} kills)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=100, help="kill/resume cycles")
    parser.add_argument("--rows", type=int, default=300, help="rows per job")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--workdir", type=Path, default=Path("out/crash-test"))
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    for stale in [*args.workdir.glob("job*"), *args.workdir.glob(".job*")]:
        stale.unlink()
    started = time.monotonic()
    report = run_harness(
        args.workdir, cycles=args.cycles, rows=args.rows, seed=args.seed, verbose=args.verbose
    )
    print(report.text())
    print(f"  seed {args.seed}, {time.monotonic() - started:.0f}s")
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
