"""The endpoint pool (issue 13): three latency-bound endpoints in one job against the sum of
each one alone, and `concurrency = "auto"` against the best fixed concurrency of a sweep on an
endpoint with a capacity limit.

Every job is `batchrun run -c CONFIG` as a user types it, with the endpoints as `[[endpoints]]`
tables of a TOML file written beside the output (out/bench/pool/); the endpoints are
`batchrun mock-server` processes, each in its own process so that no mock's CPU is a shared
bottleneck. Both parts are latency-bound on purpose (tens of rows a second, a quarter to half
a second a row): on 2 cores the mocks and batchrun together stay far from CPU-bound (the
tables show their CPU time), so a ratio says what the pool and the adaptive limit do, not
what the machine could spare. Every run's output is checked (every row, in input order, ok,
its own answer; the storm contrast may fail rows) and the mocks are reset before it.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from .clients import MOCK, check_batchrun
from .context import Context, fmt, log
from .datasets import prompt_set, row_id
from .endpoints import MockProcess, batchrun_exe, post_json, start_mock
from .measure import Child, Run, load_average, proc_cpu_seconds, spread
from .report import Section, Verdict

# Part 1: three endpoints answering after POOL_LATENCY s whatever the load (no slots).
POOL_LATENCY = 0.5
POOL_CONCURRENCY = 16  # each endpoint's fixed concurrency, alone and in the pool
POOL_NAMES = ("a", "b", "c")
SCALING_TARGET = 0.9
# Part 2: one endpoint with SLOTS batch slots (latency × active / SLOTS past them) refusing
# with 503 once OVERLOAD generations are in progress.
AUTO_LATENCY = 0.25
SLOTS = 8
OVERLOAD = 32
AUTO_MAX = 64  # max_concurrency of the "auto" endpoint: above the overload, so it can storm
STORM_LIMIT = 48  # a fixed limit past the overload, run for contrast: what a storm looks like
AUTO_TARGET = 0.9
STORM_SHARE = 0.01  # "no 5xx storm": 503s at most this share of the job's submissions
OWN_WALL = re.compile(r"wall time ([\d.]+)s")
RETRIES = re.compile(r"(\d+) retries")


@dataclass
class Job:
    """One finished `batchrun run` and what the mocks saw of it."""

    label: str
    rows: int
    run: Run
    error: str | None
    stats: dict[str, dict[str, Any]]  # mock name -> its /_mock/stats (without per-prompt data)
    mock_cpu_s: float  # the mocks' CPU time during the run, summed
    by_endpoint: dict[str, int] = field(default_factory=dict)  # the output's endpoint column
    latencies: list[float] = field(default_factory=list)  # the ok rows' latency_s column
    ok: int = 0  # rows ok in the output

    @property
    def rate(self) -> float:
        """Rows ok a second of the whole process."""
        return self.ok / self.run.wall_s

    @property
    def own_wall_s(self) -> float | None:
        match = OWN_WALL.search(self.run.stderr)
        return float(match.group(1)) if match else None

    @property
    def in_flight(self) -> float | None:
        """Mean rows in progress (Little's law): the ok rows' latency_s (first submission to
        final answer) summed over batchrun's own wall time. Without retries, the mean number
        of requests on the wire."""
        own = self.own_wall_s
        return sum(self.latencies) / own if own and self.latencies else None

    @property
    def retries(self) -> int | None:
        match = RETRIES.search(self.run.stderr)
        return int(match.group(1)) if match else None

    def code(self, mock: str, status: int) -> int:
        return int(self.stats[mock]["codes"].get(str(status), 0))


def config_text(endpoints: list[tuple[str, str]], concurrency: int | str) -> str:
    """A job's TOML: `rpm = 0` (no client-side rate limit) and one `[[endpoints]]` table per
    (name, base_url), each with `concurrency` (a number or "auto", ceiling AUTO_MAX)."""
    lines = ["rpm = 0", ""]
    for name, url in endpoints:
        lines += ["[[endpoints]]", f'name = "{name}"', f'base_url = "{url}"']
        if concurrency == "auto":
            lines += ['concurrency = "auto"', f"max_concurrency = {AUTO_MAX}"]
        else:
            lines.append(f"concurrency = {concurrency}")
        lines.append("")
    return "\n".join(lines)


def job_command(prompts: Path, config: Path, out: Path) -> list[str]:
    cmd = [*batchrun_exe(), "run", str(prompts), "-c", str(config), "-o", str(out)]
    return cmd + ["--no-progress", "--no-thinking", "--fresh"]


def _light_stats(mock: MockProcess) -> dict[str, Any]:
    stats = mock.stats()
    for bulky in ("prompts", "submit_times", "polled_ids", "seeds"):
        stats.pop(bulky, None)
    return stats


def run_job(
    ctx: Context,
    label: str,
    slug: str,
    rows: int,
    mocks: dict[str, MockProcess],
    endpoints: list[str],
    concurrency: int | str,
    timeout: float,
    storm: bool = False,
) -> tuple[Job, list[str]]:
    """`batchrun run` of the first `rows` prompts against `endpoints` (mock names), the mocks
    reset first. `storm`: rows may fail (on 503s), see _check. Returns the job and its
    command."""
    where = ctx.workdir / "pool"
    where.mkdir(parents=True, exist_ok=True)
    prompts = prompt_set(ctx.data, rows)
    config = where / f"{slug}.toml"
    config.write_text(config_text([(n, mocks[n].base_url) for n in endpoints], concurrency))
    out = where / f"{slug}.parquet"
    cmd = job_command(prompts, config, out)
    for mock in mocks.values():
        post_json(mock.base_url.rsplit("/v1", 1)[0] + "/_mock/reset", {})
    log(f"pool: {label}, {rows:,} rows")
    mock_cpu = sum(proc_cpu_seconds(mock.proc.pid) for mock in mocks.values())
    result = Child(cmd, where / slug).wait(timeout)
    mock_cpu = sum(proc_cpu_seconds(mock.proc.pid) for mock in mocks.values()) - mock_cpu
    stats = {name: _light_stats(mock) for name, mock in mocks.items()}
    error = _check(result, out, rows, stats, endpoints, storm)
    ctx.record(f"pool: {label}", error)
    job = Job(label, rows, result, error, stats, mock_cpu)
    if error is None:
        table = pq.read_table(out, columns=["endpoint", "status", "latency_s"]).to_pydict()
        job.by_endpoint = dict(Counter(table["endpoint"]))
        ok = [i for i, status in enumerate(table["status"]) if status == "ok"]
        job.ok = len(ok)
        job.latencies = [table["latency_s"][i] for i in ok]
    log(
        f"pool: {label}: {job.rate:.1f} rows/s in {result.wall_s:.1f}s"
        + ("" if error is None else f" (FAILED: {error})")
    )
    return job, cmd


def _check(
    result: Run,
    out: Path,
    rows: int,
    stats: dict[str, dict[str, Any]],
    endpoints: list[str],
    storm: bool = False,
) -> str | None:
    """None if the run is right: every row ok and its own answer (check_batchrun), one 200 a
    row at the mocks. A `storm` run may fail rows (exit 1): then every row is there, in
    order, ok or failed, and the ok ones are the 200s the mocks sent."""
    if result.timed_out:
        return "timed out"
    if storm:
        return _check_storm(result, out, rows, stats, endpoints)
    if result.rc != 0:
        return f"exit {result.rc}: {result.stderr.strip()[-300:]}"
    error = check_batchrun(out, rows, MOCK, result.stderr)
    if error is not None:
        return error
    answered = sum(int(stats[n]["codes"].get("200", 0)) for n in endpoints)
    if answered != rows:
        return f"the mocks answered {answered} requests 200, expected one per row ({rows})"
    strays = [n for n in stats if n not in endpoints and stats[n]["submissions"]]
    return f"mocks outside the job got requests: {strays}" if strays else None


def _check_storm(
    result: Run, out: Path, rows: int, stats: dict[str, dict[str, Any]], endpoints: list[str]
) -> str | None:
    if result.rc not in (0, 1):
        return f"exit {result.rc}: {result.stderr.strip()[-300:]}"
    try:
        table = pq.read_table(out, columns=["id", "status"])
    except (OSError, ValueError) as exc:
        return f"no readable output: {exc}"
    if table.column("id").to_pylist() != [row_id(i) for i in range(rows)]:
        return "ids differ from the input's, or are out of input order"
    statuses = Counter(table.column("status").to_pylist())
    if set(statuses) - {"ok", "failed"}:
        return f"statuses {dict(statuses)}"
    answered = sum(int(stats[n]["codes"].get("200", 0)) for n in endpoints)
    if answered != statuses["ok"]:
        return f"the mocks answered {answered} requests 200 for {statuses['ok']} ok rows"
    return None


# ---- part 1: three endpoints together against each alone


def scaling(ctx: Context) -> Section:
    each, rounds = ctx.size("pool_rows"), ctx.size("pool_rounds")
    single_rate = POOL_CONCURRENCY / POOL_LATENCY
    section = Section(
        "Endpoint pool: three latency-bound endpoints",
        f"Three `batchrun mock-server --latency {POOL_LATENCY}` processes (no slots, no "
        f"faults: every answer takes {POOL_LATENCY} s whatever the load), each an "
        f"`[[endpoints]]` table with `concurrency = {POOL_CONCURRENCY}` and the job's "
        f"`rpm = 0` (ideal {POOL_CONCURRENCY} / {POOL_LATENCY} s = {single_rate:.0f} rows/s an "
        f"endpoint). Each round runs a job against each endpoint alone ({each:,} rows) and "
        f"then one job with all three ({3 * each:,} rows: the same rows an endpoint), so the "
        "fixed start-up of a process weighs the same in the pool's rate as in each single "
        f"one's. rows/s is rows / wall time of the whole process (spawn to exit); {rounds} "
        f"round{'s' if rounds > 1 else ''}, the ratio is per round (pool rate / the sum of "
        "the three single rates of that round). 'at the mocks' is each mock's own count: "
        "requests answered 200 and the most generations it had at once. CPU s: batchrun's "
        "process (user + system, start-up included) and the three mocks' during the run, to "
        "set against the wall time and the machine's 2 cores.",
        headers=[
            "round",
            "job",
            "rows",
            "wall s",
            "rows/s",
            "batchrun's own wall s",
            "rows by endpoint (output column)",
            "at the mocks: 200s / peak at once",
            "CPU s: batchrun / mocks",
            "output check",
        ],  # fmt: skip
    )
    before = load_average()
    mocks: dict[str, MockProcess] = {}
    ratios: list[float] = []
    pools: list[Job] = []
    try:
        for name in POOL_NAMES:
            mocks[name] = start_mock(ctx.workdir, f"pool-{name}", latency=POOL_LATENCY)
        timeout = 3 * each / single_rate + 120
        for n in range(1, rounds + 1):
            singles: list[Job] = []
            for name in POOL_NAMES:
                job, cmd = run_job(ctx, f"round {n}, endpoint {name} alone", f"single-{name}",
                                   each, mocks, [name], POOL_CONCURRENCY, timeout)  # fmt: skip
                singles.append(job)
                if n == 1 and name == POOL_NAMES[0]:
                    section.commands.append(_shown(cmd, job))
            job, cmd = run_job(ctx, f"round {n}, pool of {len(POOL_NAMES)}", "pool", 3 * each,
                               mocks, list(POOL_NAMES), POOL_CONCURRENCY, timeout)  # fmt: skip
            pools.append(job)
            if n == 1:
                section.commands.append(_shown(cmd, job))
            for j in [*singles, job]:
                section.rows.append(_scaling_row(n, j))
            if all(j.error is None for j in [*singles, job]):
                ratios.append(job.rate / sum(j.rate for j in singles))
    finally:
        for mock in mocks.values():
            mock.stop()
    section.load = f"{before} → {load_average()}"
    target = (
        f"pool of {len(POOL_NAMES)} latency-bound endpoints ≥ {SCALING_TARGET}× the sum of "
        "their single-endpoint rates"
    )
    if len(ratios) != rounds:
        section.verdicts.append(Verdict(target, "a run failed its check", None))
        return section
    low, mid, high = spread(ratios)
    measured = f"{mid:.3f}× (median of {rounds} round{'s' if rounds > 1 else ''}"
    measured += f"; min {low:.3f}, max {high:.3f})" if rounds > 1 else ")"
    section.verdicts.append(Verdict(target, measured, mid >= SCALING_TARGET))
    shares = [min(j.by_endpoint.values()) / max(j.by_endpoint.values()) for j in pools]
    section.notes.append(
        f"rows spread over the endpoints in the pool runs: the least-loaded endpoint got "
        f"{min(shares):.1%} of the rows of the most-loaded one (worst round)"
    )
    ideal = len(POOL_NAMES) * single_rate
    own = [j.own_wall_s for j in pools if j.own_wall_s is not None]
    wall = statistics.median(j.run.wall_s for j in pools)
    section.notes.append(
        f"the pool's {3 * each:,} rows take {3 * each / ideal:.1f} s at the ideal "
        f"{ideal:.0f} rows/s; the pool runs took {wall:.1f} s (median, whole process), "
        f"{fmt(statistics.median(own), 1) if own else '—'} s by "
        "batchrun's own summary (after interpreter start-up and imports)"
    )
    return section


def _shown(cmd: list[str], job: Job) -> str:
    config = Path(cmd[cmd.index("-c") + 1])
    return f"# {config.name} ({job.label}):\n{config.read_text().strip()}\n\n" + " ".join(cmd)


def _scaling_row(n: int, job: Job) -> list[str]:
    name = job.label.split(", ", 1)[1]
    at_mocks = ", ".join(
        f"{m}: {job.code(m, 200):,} / {job.stats[m]['peak_active']}"
        for m in POOL_NAMES
        if job.stats[m]["submissions"]
    )
    own = job.own_wall_s
    return [
        str(n),
        name,
        f"{job.rows:,}",
        fmt(job.run.wall_s, 1),
        fmt(job.rate, 1),
        "—" if own is None else fmt(own, 1),
        ", ".join(f"{k}: {v:,}" for k, v in sorted(job.by_endpoint.items())) or "—",
        at_mocks or "—",
        f"{job.run.cpu_s:.1f} / {job.mock_cpu_s:.1f}",
        "ok" if job.error is None else f"FAILED: {job.error}",
    ]


# ---- part 2: "auto" against a sweep of fixed limits


def auto(ctx: Context) -> Section:
    seconds, sweep = ctx.size("auto_seconds"), ctx.size("auto_sweep")
    best_rate = SLOTS / AUTO_LATENCY

    def rows_for(limit: int) -> int:
        # About `seconds` for every run: a limit under SLOTS gets fewer rows, so that each
        # run's start-up weighs alike in its rate (the rate is whole-process).
        return round(seconds * min(limit, SLOTS) / AUTO_LATENCY)

    section = Section(
        'Endpoint pool: concurrency = "auto" on a capacity-limited endpoint',
        f"One `batchrun mock-server --latency {AUTO_LATENCY} --slots {SLOTS} --overload "
        f"{OVERLOAD}`: an answer takes {AUTO_LATENCY} s × max(1, active / {SLOTS}) (active: "
        "the generations in progress when it arrives, itself included), and a request "
        f"arriving while {OVERLOAD} are in progress is refused 503 at once. So the rate "
        f"grows with the concurrency up to {SLOTS} (ideal {best_rate:.0f} rows/s) and is flat "
        f"past it while latency climbs, until {OVERLOAD}, where 503s begin. A sweep of fixed "
        f"`concurrency` ({', '.join(map(str, sweep))}) finds the best fixed rate; then "
        f'`concurrency = "auto"` (`max_concurrency = {AUTO_MAX}`, starting at 4) runs the '
        f"best limit's rows. Each run is sized to about {seconds} s at its ideal rate "
        f"(limits under {SLOTS} get proportionally fewer rows), so the warm-up of the "
        "adaptive limit (it learns from answers, one step a round trip) is inside the "
        "measured time, and rows/s is rows / wall time of the whole process. 503s and 'peak "
        "active' (the most generations in progress at once) are the mock's own counters; "
        "'mean in flight' is Little's law on batchrun's output: the ok rows' `latency_s` "
        "(first submission to final answer) summed, over batchrun's own wall time, i.e. the "
        "mean number of requests on the wire when there are no retries; the latencies are "
        "the same column (retries and their back-off included). CPU s as in the section "
        "above. Last, for contrast and outside "
        f"the sweep, a fixed `concurrency = {STORM_LIMIT}` past the overload: what a 5xx storm "
        "looks like on this endpoint (batchrun retries each 503 with back-off, up to "
        "`max_attempts` = 6 attempts a row, then fails the row). rows/s counts rows ok.",
        headers=[
            "concurrency",
            "rows",
            "rows failed",
            "wall s",
            "rows/s",
            "vs best fixed",
            "503s (share of requests)",
            "retries",
            "peak active",
            "mean in flight",
            "latency s (median / p90)",
            "CPU s: batchrun / mocks",
            "output check",
        ],  # fmt: skip
    )
    before = load_average()
    jobs: dict[str, Job] = {}
    mock = start_mock(ctx.workdir, "pool-capacity", latency=AUTO_LATENCY, slots=SLOTS,
                      overload=OVERLOAD)  # fmt: skip
    mocks = {"capacity": mock}
    try:
        for limit in [*sweep, "auto", STORM_LIMIT]:
            storm = limit == STORM_LIMIT
            rows = rows_for(SLOTS if limit == "auto" else int(limit))
            job, cmd = run_job(ctx, f"concurrency {limit}", f"capacity-{limit}", rows, mocks,
                               ["capacity"], limit, 4 * seconds + 120, storm)  # fmt: skip
            jobs["storm" if storm else str(limit)] = job
            if limit in (sweep[0], "auto"):
                section.commands.append(_shown(cmd, job))
    finally:
        mock.stop()
    section.load = f"{before} → {load_average()}"
    fixed = {k: j for k, j in jobs.items() if k in map(str, sweep) and j.error is None}
    best = max(fixed.values(), key=lambda j: j.rate) if fixed else None
    for key, job in jobs.items():
        section.rows.append(_auto_row(key, job, best))
    _auto_verdicts(section, jobs.get("auto"), best, len(fixed) == len(sweep))
    auto_job = jobs.get("auto")
    if best is not None and auto_job is not None and auto_job.error is None:
        section.notes.append(_compared(auto_job, best))
    storm_job = jobs.get("storm")
    if storm_job is not None and storm_job.error is None:
        requests = storm_job.stats["capacity"]["submissions"]
        refused = storm_job.code("capacity", 503)
        section.notes.append(
            f"for contrast, fixed concurrency {STORM_LIMIT} (past the overload): {refused:,} "
            f"503s of {requests:,} requests ({refused / requests:.0%}), "
            f"{storm_job.rows - storm_job.ok:,} of {storm_job.rows:,} rows failed, "
            f"{storm_job.retries or 0:,} retries in all"
        )
    return section


def _compared(auto: Job, best: Job) -> str:
    def held(job: Job) -> str:
        mean = "—" if job.in_flight is None else f"{job.in_flight:.1f}"
        return f"{mean} in flight on average at a median latency of " + (
            f"{statistics.median(job.latencies):.2f} s" if job.latencies else "—"
        )

    return (
        f'"auto" held {held(auto)} on an endpoint of {SLOTS} slots (no queueing up to '
        f"{SLOTS}: {AUTO_LATENCY} s); the best fixed limit ({best.label}) held {held(best)}"
    )


def _auto_row(key: str, job: Job, best: Job | None) -> list[str]:
    requests = job.stats["capacity"]["submissions"]
    refused = job.code("capacity", 503)
    share = f"{refused:,} ({refused / requests:.1%})" if requests else "—"
    latency = "—"
    if job.latencies:
        cuts = statistics.quantiles(job.latencies, n=10)
        latency = f"{statistics.median(job.latencies):.2f} / {cuts[-1]:.2f}"
    name = {"auto": '"auto"', "storm": f"{STORM_LIMIT} (contrast, past the overload)"}
    return [
        name.get(key, key),
        f"{job.rows:,}",
        "—" if job.error else f"{job.rows - job.ok:,}",
        fmt(job.run.wall_s, 1),
        "—" if job.error else fmt(job.rate, 1),
        "—" if best is None or job.error or key == "storm" else f"{job.rate / best.rate:.3f}",
        share,
        "—" if job.retries is None else f"{job.retries:,}",
        str(job.stats["capacity"]["peak_active"]),
        "—" if job.in_flight is None else fmt(job.in_flight, 1),
        latency,
        f"{job.run.cpu_s:.1f} / {job.mock_cpu_s:.1f}",
        "ok" if job.error is None else f"FAILED: {job.error}",
    ]


def _auto_verdicts(section: Section, auto: Job | None, best: Job | None, swept: bool) -> None:
    target = f'concurrency = "auto" ≥ {AUTO_TARGET}× the best fixed concurrency of the sweep'
    storm = f'concurrency = "auto" without a 5xx storm: 503s ≤ {STORM_SHARE:.0%} of its requests'
    if auto is None or auto.error is not None or best is None or not swept:
        section.verdicts += [Verdict(target, "a run failed its check", None),
                             Verdict(storm, "a run failed its check", None)]  # fmt: skip
        return
    ratio = auto.rate / best.rate
    section.verdicts.append(
        Verdict(
            target,
            f"{ratio:.3f}× ({auto.rate:.1f} rows/s against {best.rate:.1f} at {best.label})",
            ratio >= AUTO_TARGET,
        )
    )
    requests = auto.stats["capacity"]["submissions"]
    refused = auto.code("capacity", 503)
    errors = sum(v for k, v in auto.stats["capacity"]["codes"].items() if k.startswith("5"))
    section.verdicts.append(
        Verdict(
            storm,
            f"{refused:,} 503s of {requests:,} requests ({refused / requests:.2%}), {errors} 5xx "
            f"in all; at most {auto.stats['capacity']['peak_active']} generations at once "
            f"(503 from {OVERLOAD})",
            refused <= STORM_SHARE * requests and errors <= STORM_SHARE * requests,
        )
    )


def pool(ctx: Context) -> list[Section]:
    return [scaling(ctx), auto(ctx)]
