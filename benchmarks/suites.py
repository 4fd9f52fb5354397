"""The six benchmarks of the issue, each returning a report Section.

throughput and latency compare the three clients in interleaved rounds (A, B, C, A, B, C...)
against the fixed endpoint and the 50 ms mock; memory runs batchrun at three sizes; resume
times a half-done checkpoint's first request; pending holds thousands of 202 ids on one core;
rate checks --rpm against a server enforcing it. Every run's output is checked (clients.py);
a run that fails its check is reported as such and never enters a figure.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from bisect import bisect_left
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .clients import (
    BATCHRUN,
    FIXED,
    MINIMAL,
    MOCK,
    OPENAI,
    Expected,
    batchrun_command,
    check_batchrun,
    check_loop,
    loop_command,
    rebuys,
)
from .datasets import prompt_set
from .endpoints import MockProcess, Server, post_json, start_fallback, start_fixed, start_mock
from .measure import Child, Run, load_average, pinned, proc_cpu_seconds, run, spread
from .report import Section, Verdict

FULL: dict[str, Any] = {
    "throughput_rows": 20_000,
    "warmup_rows": 2_000,
    "latency_rows": 8_000,
    "rounds": 3,
    "memory_rows": (20_000, 200_000, 1_000_000),
    "resume_reps": 3,
    "pending_rows": 5_000,
    "pending_latency": 30,
    "rate_rows": 1_800,
    "rate_rpm": 600,
}
QUICK: dict[str, Any] = {
    "throughput_rows": 2_000,
    "warmup_rows": 200,
    "latency_rows": 1_000,
    "rounds": 2,
    "memory_rows": (2_000, 20_000, 100_000),
    "resume_reps": 2,
    "pending_rows": 500,
    "pending_latency": 8,
    "rate_rows": 150,
    "rate_rpm": 600,
}
CONCURRENCY = 64
FAST_OPTIONS = ("--concurrency", "64", "--rpm", "0", "--max-pending", "256")
LATENCY_S = 0.05
CLIENTS = (MINIMAL, OPENAI, BATCHRUN)
MIB_LIMIT = 200


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class Context:
    workdir: Path
    quick: bool
    fixed: Server | None = None
    fallback_reason: str | None = None
    big_job: tuple[Path, Path, int] | None = None  # prompts, output, rows (a finished job)
    failures: list[str] = field(default_factory=list)

    def size(self, key: str) -> Any:
        return (QUICK if self.quick else FULL)[key]

    @property
    def data(self) -> Path:
        return self.workdir / "data"

    def fixed_endpoint(self, port: int = 0) -> Server:
        if self.fixed is None or self.fixed.proc.poll() is not None:
            self.fixed, reason = start_fixed(self.workdir, port)
            if reason is not None:
                self.fallback_reason = reason
            log(f"fixed endpoint: {self.fixed.kind} at {self.fixed.base_url}")
        return self.fixed

    def stop_fixed(self) -> int:
        port = self.fixed.port if self.fixed else 0
        if self.fixed is not None:
            self.fixed.stop()
            self.fixed = None
        return port

    def record(self, what: str, error: str | None) -> bool:
        if error is not None:
            self.failures.append(f"{what}: {error}")
            log(f"CHECK FAILED {what}: {error}")
        return error is None


def _fmt(value: float, digits: int = 2) -> str:
    return f"{value:,.{digits}f}"


def _spread(values: list[float], digits: int = 2) -> str:
    if not values:
        return "—"
    return " / ".join(_fmt(v, digits) for v in spread(values))


def _median(values: list[float], digits: int = 1) -> str:
    return _fmt(spread(values)[1], digits) if values else "—"


def _slug(client: str) -> str:
    return client.split()[0].lower()


# ---------------------------------------------------------------- client comparisons


@dataclass
class Sample:
    client: str
    round: int
    run: Run
    error: str | None


def _one_client(
    ctx: Context, where: Path, client: str, k: int, server: Server, prompts: Path, rows: int,
    expected: Expected,
) -> Sample:  # fmt: skip
    if isinstance(server, MockProcess):
        post_json(server.base_url.rsplit("/v1", 1)[0] + "/_mock/reset", {})
    if client == BATCHRUN:
        out = where / f"batchrun-{k}.parquet"
        cmd = batchrun_command(prompts, out, server.base_url, *FAST_OPTIONS)
    else:
        out = where / f"{_slug(client)}-{k}.json"
        out.unlink(missing_ok=True)
        cmd = loop_command(client, server.chat_url, prompts, out, CONCURRENCY)
    result = run(cmd, where / f"{_slug(client)}-{k}", timeout=900)
    error = f"exit {result.rc}: {result.stderr.strip()[-300:]}" if result.rc != 0 else None
    if error is None and client == BATCHRUN:
        error = check_batchrun(out, rows, expected, result.stderr)
    elif error is None:
        error = check_loop(out, rows, expected)
    if error is None and isinstance(server, MockProcess):
        stats = server.stats()
        if stats["submissions"] != rows or stats["codes"] != {"200": rows}:
            error = f"mock saw {stats['submissions']} submissions, codes {stats['codes']}"
    ctx.record(f"{client} round {k}", error)
    return Sample(client, k, result, error)


def _compare(
    ctx: Context, name: str, server: Server, rows: int, expected: Expected
) -> list[Sample]:
    """Rounds of each client in turn on the same prompts; a discarded warm-up first."""
    where = ctx.workdir / name
    warm = ctx.size("warmup_rows")
    for client in CLIENTS:
        _one_client(ctx, where / "warmup", client, 0, server, prompt_set(ctx.data, warm), warm,
                    expected)  # fmt: skip
    prompts = prompt_set(ctx.data, rows)
    samples = []
    for k in range(1, ctx.size("rounds") + 1):
        for client in CLIENTS:
            sample = _one_client(ctx, where, client, k, server, prompts, rows, expected)
            log(f"{name} round {k} {client}: {sample.run.wall_s:.2f}s"
                + (f" INVALID ({sample.error})" if sample.error else ""))  # fmt: skip
            samples.append(sample)
    return samples


def _comparison_table(samples: list[Sample], rows: int, section: Section) -> dict[str, list[float]]:
    """Fill the section's table; returns each client's per-round rate ratios vs the loop."""
    base = {s.round: s.run.wall_s for s in samples if s.client == MINIMAL and s.error is None}
    ratios: dict[str, list[float]] = {}
    section.headers = [
        "client", "valid runs", "wall s (min / median / max)", "rows/s (median)",
        "rate vs minimal loop, same round (min / median / max)", "peak RSS MiB (median)",
        "CPU s (median)",
    ]  # fmt: skip
    for client in CLIENTS:
        mine = [s for s in samples if s.client == client]
        good = [s for s in mine if s.error is None]
        walls = [s.run.wall_s for s in good]
        ratios[client] = [base[s.round] / s.run.wall_s for s in good if s.round in base]
        median_wall = spread(walls)[1] if walls else 0.0
        section.rows.append(
            [
                client,
                f"{len(good)} of {len(mine)}",
                _spread(walls),
                _fmt(rows / median_wall, 0) if walls else "—",
                _spread(ratios[client], 3),
                _median([s.run.maxrss_mib for s in good], 0),
                _median([s.run.cpu_s for s in good], 2),
            ]
        )
    return ratios


def _ratio_verdict(ratios: list[float], target: float, what: str) -> Verdict:
    if not ratios:
        return Verdict(
            f"batchrun ≥ {target}× the minimal loop's rate ({what})", "no valid run", None
        )
    median = spread(ratios)[1]
    return Verdict(
        f"batchrun ≥ {target}× the minimal loop's rate ({what})",
        f"{median:.3f}× (median of {len(ratios)} rounds; min {min(ratios):.3f}, "
        f"max {max(ratios):.3f})",
        median >= target,
    )


def throughput(ctx: Context) -> Section:
    rows = ctx.size("throughput_rows")
    server = ctx.fixed_endpoint()
    section = Section(
        "Throughput against the fixed endpoint",
        f"{rows:,} rows, {CONCURRENCY} requests in flight, against {server.kind} answering a "
        "fixed chat completion at once. Each figure is one whole process, spawn to exit "
        "(interpreter start, reading the prompts, writing the results included). Rounds are "
        f"interleaved (minimal, openai, batchrun, minimal, ...) after one discarded warm-up "
        f"round of {ctx.size('warmup_rows'):,} rows; the ratio compares each client with the "
        "minimal loop of the same round. batchrun runs with its checkpoint and Parquet output "
        "on, as always.",
    )
    before = load_average()
    samples = _compare(ctx, "throughput", server, rows, FIXED)
    section.load = f"{before} → {load_average()}"
    ratios = _comparison_table(samples, rows, section)
    section.commands = [" ".join(s.run.cmd) for s in samples if s.round == 1]
    section.verdicts.append(_ratio_verdict(ratios[BATCHRUN], 0.7, "fixed endpoint"))
    section.notes.append(
        "openai SDK loop rate vs minimal loop (no target): "
        + (f"{spread(ratios[OPENAI])[1]:.3f}× median" if ratios[OPENAI] else "no valid run")
    )
    return section


def latency(ctx: Context) -> Section:
    rows = ctx.size("latency_rows")
    ideal = CONCURRENCY / LATENCY_S
    mock = start_mock(ctx.workdir, "latency", latency=LATENCY_S)
    section = Section(
        "Latency-bound: 50 ms endpoint",
        f"{rows:,} rows, {CONCURRENCY} in flight, against `batchrun mock-server --latency "
        f"{LATENCY_S}` in its own process (ideal rate {CONCURRENCY} / {LATENCY_S} s = "
        f"{ideal:,.0f} rows/s). Interleaved rounds as above; the mock is reset before each run "
        "and must have seen exactly one submission per row, all answered 200.",
    )
    before = load_average()
    try:
        samples = _compare(ctx, "latency", mock, rows, MOCK)
    finally:
        mock.stop()
    section.load = f"{before} → {load_average()}"
    ratios = _comparison_table(samples, rows, section)
    section.commands = [" ".join(s.run.cmd) for s in samples if s.round == 1]
    section.verdicts.append(_ratio_verdict(ratios[BATCHRUN], 0.95, "50 ms endpoint"))
    for client in CLIENTS:
        walls = [s.run.wall_s for s in samples if s.client == client and s.error is None]
        if walls:
            share = rows / spread(walls)[1] / ideal
            section.notes.append(f"{client}: {share:.1%} of the ideal {ideal:,.0f} rows/s")
    return section


# ---------------------------------------------------------------- memory and resume


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
        "one whole run per size; peak RSS is the process's ru_maxrss from wait4 (exact, not "
        "sampled). One sample per size: RSS varies little between runs, wall time does.",
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
                _fmt(result.maxrss_mib, 1),
                _fmt(result.wall_s, 1),
                _fmt(rows / result.wall_s, 0),
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
    measured = f"{_spread(firsts, 3)} s (min / median / max of {len(firsts)})"
    ok = bool(firsts) and len(firsts) == reps and max(firsts) <= 3.0
    section.verdicts.append(
        Verdict(f"first request within 3 s of starting the resume ({rows:,} rows)", measured, ok)
    )
    return section


# ---------------------------------------------------------------- 202s and rate limits


def pending(ctx: Context) -> Section:
    rows, wait = ctx.size("pending_rows"), ctx.size("pending_latency")
    hold = 2
    window = max(2 * hold, 10)
    prompts = prompt_set(ctx.data, rows)
    out = ctx.workdir / "pending" / "pending.parquet"
    mock = start_mock(ctx.workdir, "pending", cpus="1", latency=wait, p202=1.0,
                      pending_polls=0, expire_after=window)  # fmt: skip
    options = ("--concurrency", "256", "--max-pending", str(rows), "--rpm", "0")
    cmd = pinned(
        batchrun_command(prompts, out, mock.base_url, *options, "--hold-seconds", str(hold)), "0"
    )
    section = Section(
        f"{rows:,} request ids pending at once",
        f"The mock (own process, `taskset -c 1`) answers every submission 202 at once and has "
        f"the result ready {wait} s later; it forgets an id not polled for {window} s (NVCF's "
        f"window max(2 × hold, 10 s) for hold {hold} s): such a poll gets 404 and batchrun "
        f"re-buys the row. batchrun runs on one core (`taskset -c 0`), min_poll_interval at its "
        "default 1 s.",
        commands=[" ".join(cmd)],
        headers=["figure", "value"],
    )
    before = load_average()
    try:
        mock_cpu = proc_cpu_seconds(mock.proc.pid)
        log(f"pending: {rows:,} ids, ready after {wait}s")
        result = run(cmd, ctx.workdir / "pending" / "batchrun", timeout=wait + 600)
        mock_cpu = proc_cpu_seconds(mock.proc.pid) - mock_cpu
        stats = mock.stats()
    finally:
        mock.stop()
    section.load = f"{before} → {load_average()}"
    error = f"exit {result.rc}: {result.stderr.strip()[-300:]}" if result.rc != 0 else None
    error = error or check_batchrun(out, rows, MOCK, result.stderr)
    ctx.record("pending", error)
    times = stats["submit_times"]
    span = max(times) - min(times) if times else float("nan")
    resent, expired = rebuys(result.stderr), stats["codes"].get("404", 0)
    section.rows = [
        ["rows ok / output check", "ok" if error is None else f"FAILED: {error}"],
        ["submissions seen by the mock (one per row expected)", f"{stats['submissions']:,}"],
        ["answered 202", f"{stats['accepted']:,}"],
        ["all submitted within", f"{span:.2f} s (results ready {wait} s after each)"],
        ["polls", f"{stats['polls']:,}"],
        ["polls answered 404 (id expired)", str(expired)],
        ["re-sent after their id expired (batchrun summary)", str(resent)],
        ["wall s", _fmt(result.wall_s, 1)],
        [
            "batchrun CPU s (share of its one core)",
            f"{result.cpu_s:.1f} ({result.cpu_s / result.wall_s:.0%})",
        ],  # fmt: skip
        ["mock CPU s (share of its core)", f"{mock_cpu:.1f} ({mock_cpu / result.wall_s:.0%})"],
        ["peak RSS MiB", _fmt(result.maxrss_mib, 1)],
    ]
    ok = error is None and resent == 0 and expired == 0 and span < wait
    section.verdicts.append(
        Verdict(
            f"{rows:,} pending ids all polled within the {window} s window on one core",
            f"{expired} expired, {resent} re-sent, {stats['accepted']:,} accepted in {span:.1f} s",
            ok,
        )
    )
    return section


def _windows(times: list[float]) -> tuple[int, float, bool]:
    """(busiest 60 s window, mean over full 60 s windows, whether any window was full)."""
    times = sorted(times)
    busiest = max(bisect_left(times, t + 60.0) - i for i, t in enumerate(times))
    span = times[-1] - times[0]
    if span < 60:
        return busiest, (len(times) - 1) / span * 60 if span > 0 else 0.0, False
    starts = [times[0] + s for s in range(int(span - 60) + 1)]
    counts = [bisect_left(times, s + 60.0) - bisect_left(times, s) for s in starts]
    return busiest, sum(counts) / len(counts), True


def rate(ctx: Context) -> Section:
    rows, rpm = ctx.size("rate_rows"), ctx.size("rate_rpm")
    prompts = prompt_set(ctx.data, rows)
    out = ctx.workdir / "rate" / "rate.parquet"
    mock = start_mock(ctx.workdir, "rate", latency=LATENCY_S, rpm_limit=rpm)
    cmd = batchrun_command(prompts, out, mock.base_url, "--rpm", str(rpm), "--concurrency", "64")
    section = Section(
        "Rate fidelity",
        f"{rows:,} rows at `--rpm {rpm}` against the mock enforcing {rpm} submissions per "
        f"sliding 60 s window (429 past it), {LATENCY_S * 1000:.0f} ms latency: "
        f"{rows / rpm * 60:.0f} s of work at the full rate. Windows are counted on the mock's "
        "arrival times.",
        commands=[" ".join(cmd)],
        headers=["figure", "value"],
    )
    before = load_average()
    try:
        log(f"rate: {rows:,} rows at --rpm {rpm} (about {rows / rpm:.0f} min)")
        result = run(cmd, ctx.workdir / "rate" / "batchrun", timeout=rows / rpm * 60 * 2 + 120)
        stats = mock.stats()
    finally:
        mock.stop()
    section.load = f"{before} → {load_average()}"
    error = f"exit {result.rc}: {result.stderr.strip()[-300:]}" if result.rc != 0 else None
    error = error or check_batchrun(out, rows, MOCK, result.stderr)
    ctx.record("rate", error)
    times = stats["submit_times"] or [0.0]
    busiest, mean, full = _windows(times)
    refused = stats["codes"].get("429", 0)
    section.rows = [
        ["rows ok / output check", "ok" if error is None else f"FAILED: {error}"],
        ["submissions", f"{stats['submissions']:,}"],
        ["first to last submission", f"{max(times) - min(times):.1f} s"],
        ["busiest 60 s window", f"{busiest} ({busiest / rpm:.1%} of R)"],
        [
            "mean over 60 s windows" + ("" if full else " (no full window: extrapolated)"),
            f"{mean:.1f} ({mean / rpm:.1%} of R)",
        ],  # fmt: skip
        ["429s", str(refused)],
        ["wall s", _fmt(result.wall_s, 1)],
    ]
    target = f"≥ 95 % of R = {rpm}/min with no 429"
    if not full:
        verdict = Verdict(target, f"{refused} 429s; run shorter than 60 s, rate not judged", None)
    else:
        ok = error is None and mean / rpm >= 0.95 and refused == 0
        verdict = Verdict(target, f"{mean / rpm:.1%} of R, {refused} 429s", ok)
    section.verdicts.append(verdict)
    return section


SUITES = {
    "throughput": throughput,
    "latency": latency,
    "memory": memory,
    "resume": resume,
    "pending": pending,
    "rate": rate,
}
