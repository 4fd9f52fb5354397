"""Dataset scale: batchrun's peak RSS at three sizes, and how fast a resume of the largest,
half done, sends its first request.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

from .clients import FIXED, batchrun_command, check_batchrun
from .context import FAST_OPTIONS, MIB_LIMIT, Context, fmt, fmt_spread, log
from .datasets import prompt_set
from .endpoints import start_fallback
from .measure import Child, Run, load_average, run
from .report import Section, Verdict


def _big_run(ctx: Context, rows: int, where: Path, name: str) -> tuple[Run, str | None, Path]:
    prompts = prompt_set(ctx.data, rows)
    out = where / f"{name}.parquet"
    server = ctx.fixed_endpoint()
    cmd = batchrun_command(prompts, out, server.base_url, *FAST_OPTIONS)
    result = run(cmd, where / name, timeout=1800)
    error = f"exit {result.rc}: {result.stderr.strip()[-300:]}" if result.rc != 0 else None
    error = error or check_batchrun(out, rows, FIXED, result.stderr)
    if ctx.record(f"batchrun {rows:,} rows", error):
        ctx.big_job = (prompts, out, rows)
    return result, error, out


def memory(ctx: Context) -> Section:
    sizes = ctx.size("memory_rows")
    section = Section(
        "Memory: peak RSS by dataset size",
        "batchrun against the fixed endpoint, `--rpm 0 --concurrency 64 --max-pending 256`, "
        "one whole run per size; peak RSS is the process's own ru_maxrss, read with wait4 by "
        "benchmarks/launch.py (exact, not sampled). One sample per size: RSS varies little "
        "between runs, wall time does.",
        headers=["rows", "peak RSS MiB", "wall s", "rows/s", "output check"],
    )
    before = load_average()
    peaks: dict[int, float] = {}
    for rows in sizes:
        log(f"memory: batchrun on {rows:,} rows")
        result, error, _ = _big_run(ctx, rows, ctx.workdir / "memory", f"rows-{rows}")
        section.commands.append(" ".join(result.cmd))
        if error is None:
            peaks[rows] = result.maxrss_mib
        section.rows.append(
            [
                f"{rows:,}",
                fmt(result.maxrss_mib, 1),
                fmt(result.wall_s, 1),
                fmt(rows / result.wall_s, 0),
                "ok" if error is None else f"FAILED: {error}",
            ]
        )
        log(f"memory: {rows:,} rows peak {result.maxrss_mib:.1f} MiB in {result.wall_s:.1f}s")
    section.load = f"{before} → {load_average()}"
    small, mid, big = sizes
    if small in peaks and mid in peaks:
        ratio = peaks[mid] / peaks[small]
        section.verdicts.append(
            Verdict(f"peak RSS at {mid:,} ≤ 1.2× at {small:,}", f"{ratio:.3f}×", ratio <= 1.2)
        )
    for rows, strict in ((mid, False), (big, True)):
        if rows in peaks:
            ok = peaks[rows] < MIB_LIMIT if strict else peaks[rows] <= MIB_LIMIT
            target = f"peak RSS at {rows:,} rows {'<' if strict else '≤'} {MIB_LIMIT} MiB"
            section.verdicts.append(Verdict(target, f"{peaks[rows]:.1f} MiB", ok))
    return section


RESULT_COLUMNS = (
    "request_id", "location", "first_submit_at", "finished_at", "status_code", "content",
    "reasoning_content", "tool_calls", "finish_reason", "prompt_tokens", "completion_tokens",
    "total_tokens", "model", "latency_s", "ttft_s", "error", "cause", "response",
)  # fmt: skip


def half_pending(checkpoint: Path, rows: int) -> int:
    """Turn a finished checkpoint into a half-done one: the second half back to pending."""
    conn = sqlite3.connect(checkpoint, isolation_level=None)
    try:
        cleared = ", ".join(f"{c}=NULL" for c in RESULT_COLUMNS)
        conn.execute(
            f"UPDATE items SET state='pending', attempts=0, {cleared} WHERE idx >= ?", (rows // 2,)
        )
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return int(conn.execute("SELECT count(*) FROM items WHERE state='done'").fetchone()[0])
    finally:
        conn.close()


def _first_request(path: Path, child: Child, timeout: float) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and child.proc.poll() is None:
        if path.exists() and path.stat().st_size:
            return json.loads(path.read_text())  # type: ignore[no-any-return]
        time.sleep(0.01)
    return json.loads(path.read_text()) if path.exists() and path.stat().st_size else None


def _first_row(record: dict[str, Any]) -> int:
    body = json.loads(record["body"])
    text = body["messages"][-1]["content"]
    return int(text.split(":", 1)[0].removeprefix("Row "))


def resume(ctx: Context) -> Section:
    rows = ctx.size("memory_rows")[-1]
    if ctx.big_job is None or ctx.big_job[2] != rows:
        log(f"resume: making a finished {rows:,}-row job first")
        _big_run(ctx, rows, ctx.workdir / "memory", f"rows-{rows}")
    if ctx.big_job is None:
        return Section("Resume start-up", "the finished job to start from failed its check")
    prompts, out, _ = ctx.big_job
    checkpoint = Path(f"{out}.checkpoint.sqlite")
    section = Section(
        "Resume start-up: half-done checkpoint",
        f"A finished {rows:,}-row job (the memory run), its second half set back to `pending` "
        "with sqlite3 (results cleared), as an interrupted run leaves it. The same command is "
        "run again against a recorder on the job's own host and port (the fixed-response "
        "fallback server, which writes time.time() at its first request); the figure is that "
        "arrival minus time.time() just before the resume process is spawned. Every "
        "repetition but the last is killed (SIGKILL) once its first request has arrived and the "
        "half reset again; the last runs to the end and its output is checked (all rows ok, "
        "usage 18 per row over both runs). Page cache warm (the checkpoint was just written).",
        headers=[
            "repetition",
            "rows done at start",
            "first request after s",
            "first row sent",
            "ended",
        ],  # fmt: skip
    )
    port = ctx.stop_fixed()
    base_url = f"http://127.0.0.1:{port}/v1"
    firsts: list[float] = []
    before = load_average()
    reps = ctx.size("resume_reps")
    try:
        for rep in range(1, reps + 1):
            done = half_pending(checkpoint, rows)
            marker = ctx.workdir / "resume" / "first-request.json"
            marker.parent.mkdir(parents=True, exist_ok=True)
            recorder = start_fallback(ctx.workdir / "resume", port, first_request_file=marker)
            cmd = batchrun_command(prompts, out, base_url, *FAST_OPTIONS, fresh=False)
            try:
                child = Child(cmd, ctx.workdir / "resume" / f"resume-{rep}")
                record = _first_request(marker, child, timeout=60)
                last = rep == reps
                if not last:
                    child.signal(signal.SIGKILL)
                result = child.wait(timeout=1800)
            finally:
                recorder.stop()
            section.commands = [" ".join(cmd)]
            first = None if record is None else record["time"] - child.started_wall
            first_row = None if record is None else _first_row(record)
            if first is not None:
                firsts.append(first)
            ended = "killed after its first request"
            if last:
                error = f"exit {result.rc}" if result.rc != 0 else None
                error = error or check_batchrun(out, rows, FIXED, result.stderr)
                ctx.record("resumed job", error)
                ended = (
                    f"finished in {result.wall_s:.1f}s, peak RSS {result.maxrss_mib:.0f} MiB, "
                    + ("output checked ok" if error is None else f"CHECK FAILED: {error}")
                )
            if first_row is not None and first_row < rows // 2:
                ctx.record("resume", f"first request was row {first_row}, already done")
            section.rows.append(
                [
                    str(rep),
                    f"{done:,}",
                    "none" if first is None else f"{first:.3f}",
                    "—" if first_row is None else f"r{first_row:07d}",
                    ended,
                ]  # fmt: skip
            )
            log(f"resume {rep}: first request after {first}s (row {first_row})")
    finally:
        ctx.fixed_endpoint(port)
    section.load = f"{before} → {load_average()}"
    measured = f"{fmt_spread(firsts, 3)} s (min / median / max of {len(firsts)})"
    ok = bool(firsts) and len(firsts) == reps and max(firsts) <= 3.0
    section.verdicts.append(
        Verdict(f"first request within 3 s of starting the resume ({rows:,} rows)", measured, ok)
    )
    return section
