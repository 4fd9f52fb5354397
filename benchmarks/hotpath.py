"""Hot-path choices: the measurements behind decisions the code explains (codec.py's orjson,
results.py building Arrow columns without pa.array, job.tuned_gc), so the docstrings can say
why and point here for how much.
"""

from __future__ import annotations

import json
import statistics
import sys
import timeit
from collections.abc import Callable

import orjson

from .clients import FIXED, batchrun_command, check_batchrun
from .context import FAST_OPTIONS, Context, log
from .datasets import prompt, prompt_set
from .measure import load_average, run
from .report import Section

LINE = json.dumps({"id": "r0000001", "prompt": prompt(1)}).encode()
COMPLETION = json.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1764470000,
        "model": "qwen/qwen3.5-397b-a17b",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "The answer is 42. " * 8},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 60, "total_tokens": 72},
    }
).encode()
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt(2)}]
NO_GC_TUNING = (
    "import contextlib, sys, batchrun.job as job; job.tuned_gc = contextlib.nullcontext; "
    "from batchrun.cli import main; sys.argv[0] = 'batchrun'; main()"
)


def _per_call_us(fn: Callable[[], object]) -> float:
    timer = timeit.Timer(fn)
    loops, _ = timer.autorange()
    return min(timer.repeat(5, loops)) / loops * 1e6


def _json(section: Section) -> None:
    cases = [
        ("read a prompt line", lambda: json.loads(LINE), lambda: orjson.loads(LINE)),
        ("parse a completion", lambda: json.loads(COMPLETION), lambda: orjson.loads(COMPLETION)),
        (
            "write messages",
            lambda: json.dumps(MESSAGES, ensure_ascii=False, separators=(",", ":")),
            lambda: orjson.dumps(MESSAGES).decode(),
        ),
    ]
    for what, stdlib, fast in cases:
        a, b = _per_call_us(stdlib), _per_call_us(fast)
        section.rows.append(
            [f"JSON: {what}", f"json {a:.2f} µs", f"orjson {b:.2f} µs", f"{a / b:.1f}×"]
        )


def _process(ctx: Context, code: str) -> tuple[float, float]:
    """Median wall time and peak RSS of a fresh interpreter running `code` (3 runs)."""
    runs = [
        run([sys.executable, "-c", code], ctx.workdir / "hotpath" / "import", timeout=60)
        for _ in range(3)
    ]
    return statistics.median(r.wall_s for r in runs), statistics.median(r.maxrss_mib for r in runs)


def _imports(ctx: Context, section: Section) -> None:
    cases = [
        ("output columns: pa.array() on lists vs Arrow's StringBuilder and cast",
         "import pyarrow as pa; pa.array([1])", "import pyarrow as pa"),
        ("version lookup: importlib.metadata at start-up vs on demand",
         "import importlib.metadata", "pass"),
    ]  # fmt: skip
    for what, without, with_it in cases:
        (a, a_rss), (b, b_rss) = _process(ctx, without), _process(ctx, with_it)
        section.rows.append(
            [what, f"{a:.2f} s, {a_rss:.0f} MiB", f"{b:.2f} s, {b_rss:.0f} MiB", f"{a / b:.2f}×"]
        )


def _gc(ctx: Context, section: Section) -> None:
    rows = ctx.size("throughput_rows")
    prompts = prompt_set(ctx.data, rows)
    server = ctx.fixed_endpoint()
    walls: dict[str, list[float]] = {"tuned": [], "default": []}
    for round_ in range(ctx.size("gc_rounds")):
        for name in walls:
            out = ctx.workdir / "hotpath" / f"gc-{name}-{round_}.parquet"
            cmd = batchrun_command(prompts, out, server.base_url, *FAST_OPTIONS)
            if name == "default":
                cmd = [sys.executable, "-c", NO_GC_TUNING, *cmd[1:]]
            result = run(cmd, ctx.workdir / "hotpath" / f"gc-{name}-{round_}", timeout=600)
            error = f"exit {result.rc}" if result.rc else None
            if ctx.record(f"gc {name}", error or check_batchrun(out, rows, FIXED, result.stderr)):
                walls[name].append(result.wall_s)
    if all(walls.values()):
        tuned, default = (statistics.median(walls[k]) for k in ("tuned", "default"))
        section.rows.append(
            [
                f"whole run, {rows:,} rows (fixed endpoint): garbage collector",
                f"default {default:.2f} s",
                f"job.tuned_gc {tuned:.2f} s",
                f"{default / tuned:.2f}×",
            ]
        )


def hotpath(ctx: Context) -> Section:
    section = Section(
        "Hot-path choices",
        "Figures behind choices the code explains. JSON: µs per call, best of 5 timeit "
        "repeats in this process, on a prompt line, a 600-byte chat completion and a "
        "two-message list. Imports: a fresh interpreter running only that code (the second "
        "column's `python -c pass` is the interpreter alone), median of 3, wall time and peak "
        "RSS from the launcher. Garbage collector: the throughput "
        "benchmark's batchrun command with job.tuned_gc and with it replaced by a null "
        "context (through `python -c`, no switch in batchrun), interleaved rounds, median "
        "wall time; outputs checked. No targets: these explain, they do not gate.",
        headers=["what", "without the choice", "with it", "ratio"],
    )
    before = load_average()
    log("hotpath: JSON")
    _json(section)
    log("hotpath: imports")
    _imports(ctx, section)
    log("hotpath: garbage collector")
    _gc(ctx, section)
    section.load = f"{before} → {load_average()}"
    section.notes.append("ratio: without the choice over with it (above 1: the choice pays)")
    return section
