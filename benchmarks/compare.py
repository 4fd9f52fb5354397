"""Client comparisons: batchrun vs the minimal aiohttp loop vs the openai SDK loop.

Interleaved rounds (A, B, C, A, B, C, ...) on the same prompts against the same server, each
run a whole process, each output checked; ratios are taken within a round. `throughput` uses
the fixed-response endpoint, `latency` the 50 ms mock in its own process.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from .clients import (
    BATCHRUN,
    FIXED,
    MINIMAL,
    MOCK,
    OPENAI,
    PREVIOUS,
    Expected,
    batchrun_command,
    check_batchrun,
    check_loop,
    loop_command,
    previous_command,
)
from .context import (
    CLIENTS as CLIENT_ORDER,
)
from .context import (
    CONCURRENCY,
    FAST_OPTIONS,
    LATENCY_S,
    Context,
    fmt,
    fmt_median,
    fmt_spread,
    log,
    sizes,
    slug,
)
from .datasets import prompt_set
from .endpoints import MockProcess, Server, post_json, start_mock
from .measure import Run, load_average, proc_cpu_seconds, run, spread
from .report import Section, Verdict


@dataclass
class Sample:
    client: str
    round: int
    run: Run
    error: str | None
    server_cpu_s: float | None = None  # the mock's CPU time during this run

    @property
    def inner_s(self) -> float | None:
        """The client's own timing: after interpreter start and imports."""
        if self.client in (BATCHRUN, PREVIOUS):
            match = re.search(r"wall time ([\d.]+)s", self.run.stderr)
            return float(match.group(1)) if match else None
        try:
            return float(json.loads(self.run.stdout)["seconds"])
        except (ValueError, KeyError, TypeError):
            return None


def _one_client(
    ctx: Context, where: Path, client: str, k: int, server: Server, prompts: Path, rows: int,
    expected: Expected,
) -> Sample:  # fmt: skip
    mock = server if isinstance(server, MockProcess) else None
    if mock is not None:
        post_json(mock.base_url.rsplit("/v1", 1)[0] + "/_mock/reset", {})
        server_cpu = proc_cpu_seconds(mock.proc.pid)
    env, cwd = None, None
    if client == BATCHRUN:
        out = where / f"batchrun-{k}.parquet"
        cmd = batchrun_command(prompts, out, server.base_url, *FAST_OPTIONS)
    elif client == PREVIOUS:
        out = where / f"previous-{k}.parquet"
        cmd = previous_command(prompts, out, server.base_url, *FAST_OPTIONS)
        # Its own folder first on the path, and not this repository as the working folder.
        env, cwd = {**os.environ, "PYTHONPATH": str(ctx.previous)}, ctx.previous
    else:
        out = where / f"{slug(client)}-{k}.json"
        out.unlink(missing_ok=True)
        cmd = loop_command(client, server.chat_url, prompts, out, CONCURRENCY)
    result = run(cmd, where / f"{slug(client)}-{k}", timeout=900, env=env, cwd=cwd)
    sample = Sample(client, k, result, None)
    if mock is not None:
        sample.server_cpu_s = proc_cpu_seconds(mock.proc.pid) - server_cpu
    error = f"exit {result.rc}: {result.stderr.strip()[-300:]}" if result.rc != 0 else None
    if error is None and client in (BATCHRUN, PREVIOUS):
        error = check_batchrun(out, rows, expected, result.stderr)
    elif error is None:
        error = check_loop(out, rows, expected)
    if error is None and mock is not None:
        stats = mock.stats()
        if stats["submissions"] != rows or stats["codes"] != {"200": rows}:
            error = f"mock saw {stats['submissions']} submissions, codes {stats['codes']}"
    ctx.record(f"{client} round {k}", error)
    sample.error = error
    return sample


def _compare(
    ctx: Context, name: str, server: Server, rows: int, expected: Expected
) -> list[Sample]:
    """Rounds of each client in turn on the same prompts; a discarded warm-up first."""
    where = ctx.workdir / name
    warm = ctx.size("warmup_rows")
    for client in ctx.clients():
        _one_client(ctx, where / "warmup", client, 0, server, prompt_set(ctx.data, warm), warm,
                    expected)  # fmt: skip
    prompts = prompt_set(ctx.data, rows)
    samples = []
    for k in range(1, ctx.size("rounds") + 1):
        for client in ctx.clients():
            if client == OPENAI and k > ctx.size("openai_rounds"):
                continue
            sample = _one_client(ctx, where, client, k, server, prompts, rows, expected)
            log(f"{name} round {k} {client}: {sample.run.wall_s:.2f}s"
                + (f" INVALID ({sample.error})" if sample.error else ""))  # fmt: skip
            samples.append(sample)
    return samples


def _comparison_table(
    samples: list[Sample], rows: int, section: Section, clients: list[str]
) -> dict[str, list[float]]:
    """Fill the section's table; returns each client's per-round rate ratios vs the loop."""
    base = {s.round: s.run.wall_s for s in samples if s.client == MINIMAL and s.error is None}
    ratios: dict[str, list[float]] = {}
    section.headers = [
        "client", "valid runs", "wall s (min / median / max)", "rows/s (median)",
        "rate vs minimal loop, same round (min / median / max)", "peak RSS MiB (median)",
        "CPU s (median)", "own timing s, after start-up (median)",
    ]  # fmt: skip
    for client in clients:
        mine = [s for s in samples if s.client == client]
        good = [s for s in mine if s.error is None]
        walls = [s.run.wall_s for s in good]
        ratios[client] = [base[s.round] / s.run.wall_s for s in good if s.round in base]
        median_wall = spread(walls)[1] if walls else 0.0
        section.rows.append(
            [
                client,
                f"{len(good)} of {len(mine)}",
                fmt_spread(walls),
                fmt(rows / median_wall, 0) if walls else "—",
                fmt_spread(ratios[client], 3),
                fmt_median([s.run.maxrss_mib for s in good], 0),
                fmt_median([s.run.cpu_s for s in good], 2),
                fmt_median([s.inner_s for s in good if s.inner_s is not None], 2),
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


_ROUNDS_NOTE = (
    "{rounds} rounds; the openai SDK loop, much slower, runs in the first {openai_rounds} only."
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
        f"minimal loop of the same round. {_ROUNDS_NOTE.format(**sizes(ctx))} batchrun runs "
        "with its checkpoint and Parquet output on, as always. 'Own timing' is what each "
        "client reports itself (the loops' `seconds`, batchrun's summary `wall time`), i.e. "
        "without interpreter start-up and imports: the difference to the wall time is start-up.",
    )
    before = load_average()
    samples = _compare(ctx, "throughput", server, rows, FIXED)
    section.load = f"{before} → {load_average()}"
    ratios = _comparison_table(samples, rows, section, ctx.clients())
    section.commands = [" ".join(s.run.cmd) for s in samples if s.round == 1]
    section.verdicts.append(_ratio_verdict(ratios[BATCHRUN], 0.7, "fixed endpoint"))
    section.notes += _what_limits(samples, rows, section.verdicts[-1])
    section.notes.append(
        "openai SDK loop rate vs minimal loop (no target): "
        + (f"{spread(ratios[OPENAI])[1]:.3f}× median" if ratios[OPENAI] else "no valid run")
    )
    section.notes += _against_previous(samples)
    section.notes += _where_time_goes(samples, rows)
    return section


class _Medians(NamedTuple):
    """One client's medians over its valid runs."""

    cpu_us: float  # CPU per row, µs
    busy: float  # CPU / wall
    inner_s: float | None  # its own timing (after start-up)
    fixed_s: float | None  # start-up and teardown: wall minus its own timing


def _medians(samples: list[Sample], client: str, rows: int) -> _Medians | None:
    good = [s for s in samples if s.client == client and s.error is None]
    if not good:
        return None
    timed = [s for s in good if s.inner_s is not None]
    return _Medians(
        cpu_us=spread([s.run.cpu_s for s in good])[1] / rows * 1e6,
        busy=spread([s.run.cpu_s / s.run.wall_s for s in good])[1],
        inner_s=spread([s.inner_s or 0.0 for s in timed])[1] if timed else None,
        fixed_s=spread([s.run.wall_s - (s.inner_s or 0.0) for s in timed])[1] if timed else None,
    )


def _against_previous(samples: list[Sample]) -> list[str]:
    """This release's rate over the previous release's, round by round (no target)."""
    before = {s.round: s.run.wall_s for s in samples if s.client == PREVIOUS and s.error is None}
    ratios = [
        before[s.round] / s.run.wall_s
        for s in samples
        if s.client == BATCHRUN and s.error is None and s.round in before
    ]
    if not ratios:
        return []
    return [
        f"this release vs the previous release, same rounds (no target): "
        f"{fmt_spread(ratios, 3)} (min / median / max; above 1: this release is faster)"
    ]


def _where_time_goes(samples: list[Sample], rows: int) -> list[str]:
    """What limits each client: CPU per row and start-up (wall minus its own timing)."""
    base = {s.round: s.inner_s for s in samples if s.client == MINIMAL and s.error is None}
    inner_ratios = [
        base[s.round] / s.inner_s
        for s in samples
        if s.client == BATCHRUN and s.error is None and s.inner_s and base.get(s.round)
    ]
    notes = []
    if inner_ratios:
        notes.append(
            "batchrun vs minimal loop on their own timings, i.e. without interpreter start-up "
            f"and imports (same rounds): {fmt_spread(inner_ratios, 3)} (min / median / max); "
            "not the target's measure, shown to split the gap into start-up and steady state"
        )
    for client in sorted({s.client for s in samples}, key=[*CLIENT_ORDER].index):
        m = _medians(samples, client, rows)
        if m is None:
            continue
        fixed = "—" if m.fixed_s is None else f"{m.fixed_s:.2f}"
        notes.append(
            f"where the time goes, {client}: {m.cpu_us:,.0f} µs of CPU per row, CPU / wall "
            f"{m.busy:.0%}; start-up and teardown outside its own timing {fixed} s (median)"
        )
    return notes


def _what_limits(samples: list[Sample], rows: int, verdict: Verdict) -> list[str]:
    """For a missed target: what the measurements say limits batchrun, in one line."""
    if verdict.passed is not False:
        return []
    mine, loop = _medians(samples, BATCHRUN, rows), _medians(samples, MINIMAL, rows)
    if mine is None or loop is None or mine.inner_s is None or loop.inner_s is None:
        return []  # (fixed_s is set whenever inner_s is)
    assert mine.fixed_s is not None and loop.fixed_s is not None
    if mine.busy >= 0.9:
        return [
            f"what limits it: CPU. batchrun is CPU-bound here (CPU / wall {mine.busy:.0%}), "
            f"so its {mine.cpu_us:,.0f} µs of CPU per row against the minimal loop's "
            f"{loop.cpu_us:,.0f} µs set the ratio ({loop.cpu_us / mine.cpu_us:.2f}); the gap "
            "is per-row work, not waiting"
        ]
    return [
        f"what limits it: not CPU. batchrun is not CPU-bound (CPU / wall {mine.busy:.0%}); "
        f"of its {mine.inner_s + mine.fixed_s:.2f} s, {mine.fixed_s:.2f} s is start-up and "
        f"teardown outside its own timing (the loop's: {loop.fixed_s:.2f} s), and its own "
        f"timing ({mine.inner_s:.2f} s vs the loop's {loop.inner_s:.2f} s) includes reading "
        "every row into the checkpoint before the first request and writing the Parquet output"
    ]


def latency(ctx: Context) -> Section:
    rows = ctx.size("latency_rows")
    ideal = CONCURRENCY / LATENCY_S
    mock = start_mock(ctx.workdir, "latency", latency=LATENCY_S)
    section = Section(
        "Latency-bound: 50 ms endpoint",
        f"{rows:,} rows, {CONCURRENCY} in flight, against `batchrun mock-server --latency "
        f"{LATENCY_S}` in its own process (ideal rate {CONCURRENCY} / {LATENCY_S} s = "
        f"{ideal:,.0f} rows/s). Interleaved rounds as above "
        f"({_ROUNDS_NOTE.format(**sizes(ctx))[:-1].lower()}); the mock is reset before each run "
        "and must have seen exactly one submission per row, all answered 200.",
    )
    before = load_average()
    try:
        samples = _compare(ctx, "latency", mock, rows, MOCK)
    finally:
        mock.stop()
    section.load = f"{before} → {load_average()}"
    ratios = _comparison_table(samples, rows, section, ctx.clients())
    section.commands = [" ".join(s.run.cmd) for s in samples if s.round == 1]
    section.verdicts.append(_ratio_verdict(ratios[BATCHRUN], 0.95, "50 ms endpoint"))
    section.notes += _what_limits(samples, rows, section.verdicts[-1])
    for client in ctx.clients():
        good = [s for s in samples if s.client == client and s.error is None]
        if good:
            share = rows / spread([s.run.wall_s for s in good])[1] / ideal
            busy = spread([(s.server_cpu_s or 0) / s.run.wall_s for s in good])[1]
            section.notes.append(
                f"{client}: {share:.1%} of the ideal {ideal:,.0f} rows/s; the mock was busy "
                f"{busy:.0%} of a core meanwhile (median)"
            )
    section.notes += _against_previous(samples)
    section.notes += _where_time_goes(samples, rows)
    return section
