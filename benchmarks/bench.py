"""`make bench`: run the selected benchmarks and write the results document.

    python -m benchmarks.bench [--quick] [--results PATH] [--workdir PATH]
        [--only throughput,latency,memory,remote,resume,ledger,pending,rate,pool,engines,
               hotpath]

Full sizes write benchmarks/RESULTS.md; --quick (small sizes, a smoke test of the suite
itself) writes out/bench/RESULTS-quick.md unless --results says otherwise. Work files and
generated prompt sets go under out/bench/. Exit 1 if a run's output failed its check or a
benchmark could not run; a missed target is a result, not an error (exit 0).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import subprocess
import sys
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/bench.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.compare import latency, throughput  # noqa: E402
from benchmarks.context import Context, log  # noqa: E402
from benchmarks.engines import engines  # noqa: E402
from benchmarks.hotpath import hotpath  # noqa: E402
from benchmarks.ledger import ledger  # noqa: E402
from benchmarks.measure import load_average, machine  # noqa: E402
from benchmarks.pool import pool  # noqa: E402
from benchmarks.protocol import pending, rate  # noqa: E402
from benchmarks.remote import remote_memory  # noqa: E402
from benchmarks.report import Section, Verdict, render, write  # noqa: E402
from benchmarks.scale import memory, resume  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SUITES = {
    "throughput": throughput,
    "latency": latency,
    "memory": memory,
    "remote": remote_memory,
    "resume": resume,
    "ledger": ledger,
    "pending": pending,
    "rate": rate,
    "pool": pool,
    "engines": engines,
    "hotpath": hotpath,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="batchrun benchmarks")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--only", default=",".join(SUITES), help="comma-separated benchmarks")
    parser.add_argument("--results", type=Path, help="where to write the results document")
    parser.add_argument("--workdir", type=Path, default=ROOT / "out" / "bench")
    args = parser.parse_args(argv)
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(args.only) - set(SUITES))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(SUITES)}")
    if args.results is None:
        quick = args.workdir / "RESULTS-quick.md"
        args.results = quick if args.quick else ROOT / "benchmarks" / "RESULTS.md"
    return args


def _command(argv: list[str] | None) -> str:
    invoked = os.environ.get("BENCH_INVOKED")
    own = shlex.join([sys.executable, "-m", "benchmarks.bench", *(argv or sys.argv[1:])])
    return f"`{invoked}` → `{own}`" if invoked else f"`{own}`"


def _source_state() -> str:
    """The commit measured, and whether batchrun/ had uncommitted changes (editable install)."""
    git = ["git", "-C", str(ROOT)]
    try:
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run([*git, "status", "--porcelain", "batchrun"], capture_output=True,
                               text=True, check=True).stdout.split("\n")  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    changed = [line[3:] for line in dirty if line.strip()]
    return head + (f" + uncommitted changes in {', '.join(changed)}" if changed else " (clean)")


def _source_digest() -> str:
    """A digest of batchrun/*.py: the code measured (an editable install runs the tree)."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "batchrun").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode() + path.read_bytes())
    return digest.hexdigest()[:12]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
        "command": _command(argv),
        **machine(),
        "batchrun source (commit)": _source_state(),
        "load average before (1/5/15 min)": load_average(),
    }
    source = _source_digest()
    ctx = Context(workdir=args.workdir.resolve(), quick=args.quick)
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    sections: list[Section] = []
    try:
        if {"throughput", "memory", "remote", "resume", "hotpath"} & set(args.only):
            ctx.fixed_endpoint()
        for name in args.only:
            log(f"--- {name}")
            try:
                found = SUITES[name](ctx)  # a section, or a list of them
                sections += found if isinstance(found, list) else [found]
            except Exception as exc:  # one broken benchmark must not hide the others
                traceback.print_exc()
                ctx.failures.append(f"{name}: {exc!r}")
                sections.append(
                    Section(
                        name,
                        f"This benchmark crashed: `{exc!r}` (see the log).",
                        verdicts=[Verdict(name, "crashed", None)],
                    )  # fmt: skip
                )
            write(ctx.workdir / "RESULTS-partial.md", _render(ctx, info, sections, args))
    finally:
        ctx.stop_fixed()
    if _source_digest() != source:
        ctx.warnings.append(
            "batchrun/ changed while the benchmarks ran (someone edited it): different runs "
            "may have measured different code"
        )
    info["batchrun/*.py digest"] = source
    info["load average after"] = load_average()
    info["total time"] = f"{time.time() - started:.0f} s"
    text = _render(ctx, info, sections, args)
    write(args.results, text)
    log(f"wrote {args.results}")
    print(text)
    return 1 if ctx.failures else 0


def _render(ctx: Context, info: dict[str, str], sections: list[Section], args: object) -> str:
    endpoint = "nginx (benchmarks/nginx.conf)"
    warnings = []
    if ctx.fallback_reason is not None:
        endpoint = "FALLBACK benchmarks/fallback_server.py (Python asyncio), not nginx"
        warnings.append(
            "nginx could not be used, so the fixed-response endpoint is the Python fallback "
            f"server ({ctx.fallback_reason}). It spends more CPU per request than nginx, CPU "
            "the clients would otherwise have on this machine: throughput figures are not "
            "comparable with nginx runs."
        )
    warnings += ctx.warnings
    warnings += [f"output check failed: {failure}" for failure in ctx.failures]
    info = {**info, "fixed-response endpoint": endpoint}
    return render(info, warnings, sections, quick=getattr(args, "quick", False))


if __name__ == "__main__":
    sys.exit(main())
