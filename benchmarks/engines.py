"""The same job on the local engine and on Ray (`--engine ray --ray-address local`) with 1
and 2 workers, against the 50 ms mock endpoint: what Ray costs and gives on one machine.

Rounds are interleaved (local, ray x1, ray x2, local, ...); each run is a whole process and
its output is checked like every other batchrun run here. A private local Ray cluster is
started and stopped by each Ray run, so its fixed cost is in the figures.
"""

from __future__ import annotations

from .clients import MOCK, batchrun_command, check_batchrun
from .context import FAST_OPTIONS, LATENCY_S, Context, fmt, fmt_spread, log
from .datasets import prompt_set
from .endpoints import post_json, start_mock
from .measure import load_average, run, spread
from .report import Section

ENGINES = {
    "local engine": (),
    "ray, 1 worker": ("--engine", "ray", "--ray-address", "local", "--workers", "1"),
    "ray, 2 workers": ("--engine", "ray", "--ray-address", "local", "--workers", "2"),
}


def engines(ctx: Context) -> Section:
    rows = ctx.size("engine_rows")
    rounds = ctx.size("engine_rounds")
    prompts = prompt_set(ctx.data, rows)
    section = Section(
        "Engines: local vs Ray with 1 and 2 workers",
        f"{rows:,} rows, 64 in flight in all (split across the workers), against "
        f"`batchrun mock-server --latency {LATENCY_S}` in its own process; {rounds} "
        "interleaved rounds. Each Ray run starts and stops a private local cluster "
        "(`--ray-address local`), so Ray's fixed cost is included. Requires the ray extra.",
        headers=[
            "engine",
            "valid runs",
            "wall s (min / median / max)",
            "rows/s (median)",
            "vs local engine, same round (median)",
            "peak RSS MiB (driver)",
        ],  # fmt: skip
    )
    try:
        import ray  # noqa: F401
    except ImportError:
        section.notes.append("Ray is not installed (pip install 'batchrun[ray]'): not measured.")
        return section
    mock = start_mock(ctx.workdir, "engines", latency=LATENCY_S)
    before = load_average()
    walls: dict[str, list[float]] = {name: [] for name in ENGINES}
    rss: dict[str, list[float]] = {name: [] for name in ENGINES}
    ratios: dict[str, list[float]] = {name: [] for name in ENGINES}
    try:
        for n in range(1, rounds + 1):
            local_wall = None
            for name, options in ENGINES.items():
                log(f"engines: round {n}, {name}")
                post_json(mock.base_url.rsplit("/v1", 1)[0] + "/_mock/reset", {})
                tag = name.replace(" ", "").replace(",", "-")
                out = ctx.workdir / "engines" / f"{tag}-{n}.parquet"
                cmd = batchrun_command(prompts, out, mock.base_url, *FAST_OPTIONS, *options)
                result = run(cmd, ctx.workdir / "engines" / f"log-{n}", timeout=900)
                if n == 1:
                    section.commands.append(" ".join(cmd))
                error = f"exit {result.rc}" if result.rc != 0 else None
                error = error or check_batchrun(out, rows, MOCK, result.stderr)
                if not ctx.record(f"{name} round {n}", error):
                    continue
                walls[name].append(result.wall_s)
                rss[name].append(result.maxrss_mib)
                if name == "local engine":
                    local_wall = result.wall_s
                if local_wall:
                    ratios[name].append(local_wall / result.wall_s)
    finally:
        mock.stop()
    section.load = f"{before} → {load_average()}"
    for name in ENGINES:
        good = walls[name]
        section.rows.append(
            [
                name,
                f"{len(good)} of {rounds}",
                fmt_spread(good) if good else "—",
                fmt(rows / spread(good)[1], 0) if good else "—",
                fmt(spread(ratios[name])[1], 3) if ratios[name] else "—",
                fmt(spread(rss[name])[1], 0) if rss[name] else "—",
            ]
        )
    section.notes.append(
        "On one 2-core machine Ray adds workers but no cores: expect its fixed start-up and "
        "the actor hops to cost more than they give. Ray pays off past one machine."
    )
    return section
