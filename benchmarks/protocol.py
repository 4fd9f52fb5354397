"""Protocol behaviour under load: thousands of 202 ids polled in time on one core, and
`--rpm` held against a server that enforces it per sliding minute.
"""

from __future__ import annotations

from bisect import bisect_left

from .clients import MOCK, batchrun_command, check_batchrun, rebuys
from .context import LATENCY_S, Context, fmt, log
from .datasets import prompt_set
from .endpoints import start_mock
from .measure import load_average, pinned, proc_cpu_seconds, run
from .report import Section, Verdict


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
        ["wall s", fmt(result.wall_s, 1)],
        [
            "batchrun CPU s (share of its one core)",
            f"{result.cpu_s:.1f} ({result.cpu_s / result.wall_s:.0%})",
        ],  # fmt: skip
        ["mock CPU s (share of its core)", f"{mock_cpu:.1f} ({mock_cpu / result.wall_s:.0%})"],
        ["peak RSS MiB", fmt(result.maxrss_mib, 1)],
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
        ["wall s", fmt(result.wall_s, 1)],
    ]
    target = f"≥ 95 % of R = {rpm}/min with no 429"
    if not full:
        verdict = Verdict(target, f"{refused} 429s; run shorter than 60 s, rate not judged", None)
    else:
        ok = error is None and mean / rpm >= 0.95 and refused == 0
        verdict = Verdict(target, f"{mean / rpm:.1%} of R, {refused} 429s", ok)
    section.verdicts.append(verdict)
    return section
