"""Dataset scale: batchrun's peak RSS at three sizes, and how fast a resume sends its first
request from checkpoints with 1M and 5M rows (most of them finished).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from .clients import FIXED, batchrun_command, check_batchrun
from .context import FAST_OPTIONS, MIB_LIMIT, Context, fmt, fmt_spread, log
from .datasets import prompt_set
from .endpoints import start_fallback
from .halfdone import make_half_done
from .measure import Child, Run, load_average, run, spread
from .report import Section, Verdict


def _big_run(ctx: Context, rows: int, where: Path, name: str) -> tuple[Run, str | None, Path]:
    prompts = prompt_set(ctx.data, rows)
    out = where / f"{name}.parquet"
    server = ctx.fixed_endpoint()
    cmd = batchrun_command(prompts, out, server.base_url, *FAST_OPTIONS)
    result = run(cmd, where / name, timeout=1800)
    error = f"exit {result.rc}: {result.stderr.strip()[-300:]}" if result.rc != 0 else None
    error = error or check_batchrun(out, rows, FIXED, result.stderr)
    ctx.record(f"batchrun {rows:,} rows", error)
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
    sizes, left = ctx.size("resume_rows"), ctx.size("resume_left")
    section = Section(
        "Resume start-up: a checkpoint with finished rows",
        f"Checkpoints of {' and '.join(f'{n:,}' for n in sizes)} rows with the last {left:,} "
        "still to do, the rest done: made by benchmarks/halfdone.py with batchrun's own parts "
        "(the inputs read as `batchrun run` reads them, then rows finished through the "
        "checkpoint writer; no HTTP), so the two differ only in how many rows are finished. "
        "The same command is then run against a recorder on the job's own host and port (the "
        "fixed-response fallback server, which writes time.time() at its first request); the "
        "figure is that arrival minus time.time() just before the resume process is spawned. "
        "Each checkpoint is synced to disk once built, and one repetition (not counted) warms "
        "the page cache. Each repetition is killed (SIGKILL) once its first request has "
        "arrived, except the "
        f"last one on {sizes[0]:,} rows, which runs to the end and has its output checked (all "
        "rows ok, usage 18 per row over both runs).",
        headers=["rows", "finished at start", "repetition", "first request after s", "ended"],
    )
    port = ctx.stop_fixed()
    base_url = f"http://127.0.0.1:{port}/v1"
    firsts: dict[int, list[float]] = {}
    before = load_average()
    try:
        for rows in sizes:
            firsts[rows] = _resume_size(ctx, section, rows, left, port, base_url, rows == sizes[0])
    finally:
        ctx.fixed_endpoint(port)
    section.load = f"{before} → {load_average()}"
    reps = ctx.size("resume_reps")
    for rows in sizes:
        measured = f"{fmt_spread(firsts[rows], 3)} s (min / median / max of {len(firsts[rows])})"
        ok = len(firsts[rows]) == reps and max(firsts[rows]) <= 3.0
        section.verdicts.append(
            Verdict(
                f"first request within 3 s of starting the resume ({rows:,} rows)", measured, ok
            )
        )
    small, big = sizes
    if len(firsts[small]) == reps and len(firsts[big]) == reps:
        ratio = spread(firsts[big])[1] / spread(firsts[small])[1]
        section.verdicts.append(
            Verdict(
                f"start-up does not grow with finished rows: median at {big:,} rows ≤ 1.25× "
                f"at {small:,}",
                f"{ratio:.2f}×",
                ratio <= 1.25,
            )
        )
    return section


def _resume_size(
    ctx: Context, section: Section, rows: int, left: int, port: int, base_url: str, finish: bool
) -> list[float]:
    where = ctx.workdir / "resume" / f"rows-{rows}"
    prompts = prompt_set(ctx.data, rows)
    out = where / "resume.parquet"
    log(f"resume: building a {rows:,}-row checkpoint with {left:,} rows to do")
    built = make_half_done(prompts, out, base_url, done=rows - left)
    log(f"resume: built in {built:.0f}s")
    # What was just written goes to disk now, not while a repetition is timed; one
    # repetition, not counted, reads the files into the page cache.
    os.sync()
    cmd = batchrun_command(prompts, out, base_url, *FAST_OPTIONS, fresh=False)
    section.commands.append(" ".join(cmd))
    reps = ctx.size("resume_reps")
    firsts = []
    for rep in range(reps + 1):
        marker = where / "first-request.json"
        marker.unlink(missing_ok=True)
        recorder = start_fallback(where, port, first_request_file=marker)
        last = finish and rep == reps
        try:
            child = Child(cmd, where / f"resume-{rep}")
            record = _first_request(marker, child, timeout=60)
            if not last:
                child.signal(signal.SIGKILL)
            result = child.wait(timeout=1800)
        finally:
            recorder.stop()
        first = None if record is None else record["time"] - child.started_wall
        first_row = None if record is None else _first_row(record)
        if rep == 0:
            continue  # the warm-up
        if first is not None:
            firsts.append(first)
        ended = "killed after its first request"
        if last:
            error = f"exit {result.rc}" if result.rc != 0 else None
            error = error or check_batchrun(out, rows, FIXED, result.stderr)
            ctx.record("resumed job", error)
            ended = f"finished in {result.wall_s:.1f}s, peak RSS {result.maxrss_mib:.0f} MiB, " + (
                "output checked ok" if error is None else f"CHECK FAILED: {error}"
            )
        if first_row is not None and first_row < rows - left:
            ctx.record("resume", f"first request was row {first_row}, already done")
        section.rows.append(
            [
                f"{rows:,}",
                f"{rows - left:,}",
                str(rep),
                "none" if first is None else f"{first:.3f}",
                ended,
            ]
        )
        log(f"resume {rows:,} {rep}: first request after {first}s (row {first_row})")
    return firsts
