"""The three clients compared, their command lines, and the check of what each one wrote.

A run only counts if its output is right: one row per input row, the input's ids (each once;
batchrun's also in input order), every row ok, each row's own answer, and token usage summing
to what the endpoint charged. A fast wrong run is reported as a failure, not as a figure.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from .datasets import prompt, row_id
from .endpoints import HERE, batchrun_exe

MINIMAL, OPENAI, BATCHRUN = "minimal aiohttp loop", "openai SDK loop", "batchrun"
PREVIOUS_RELEASE = "c33050f"  # the last commit before the compact ledger (checkpoint schema 1)
PREVIOUS = f"batchrun {PREVIOUS_RELEASE} (previous release)"
ROOT = Path(__file__).resolve().parent.parent
FIXED_CONTENT = "The answer is 42."
SUMMARY = re.compile(r"batchrun: (\d+) rows: (\d+) ok, (\d+) failed, (\d+) invalid")
REBUYS = re.compile(r"(\d+) re-sent after their id expired")


@dataclass(frozen=True)
class Expected:
    """What the endpoint answers row i: its content and its total tokens."""

    content: Callable[[int], str]
    total_tokens: Callable[[int], int]


FIXED = Expected(lambda _i: FIXED_CONTENT, lambda _i: 18)


def _mock_total(i: int) -> int:
    # The mock counts words: the prompt, and "Answer to: <prompt>" (thinking off).
    words = len(prompt(i).split())
    return words + 2 + words


MOCK = Expected(lambda i: f"Answer to: {prompt(i)}", _mock_total)


def loop_command(client: str, url: str, prompts: Path, out: Path, concurrency: int) -> list[str]:
    script = {MINIMAL: "minimal_loop.py", OPENAI: "openai_sdk_loop.py"}[client]
    return [sys.executable, str(HERE / script), "--url", url, "--prompts", str(prompts)] + [
        "--out",
        str(out),
        "--concurrency",
        str(concurrency),
    ]


def batchrun_command(
    prompts: Path, out: Path, base_url: str, *options: str, fresh: bool = True
) -> list[str]:
    """`batchrun run` with the benchmark's fixed choices (no progress bar, thinking off)."""
    cmd = [*batchrun_exe(), "run", str(prompts), "-o", str(out), "--base-url", base_url]
    cmd += ["--no-progress", "--no-thinking", *options]
    return cmd + (["--fresh"] if fresh else [])


def previous_release(workdir: Path) -> Path | None:
    """The previous release's package, exported with `git archive` into `workdir` (None
    without git history); run it with PYTHONPATH set to the folder, from outside the repo."""
    target = workdir / f"batchrun-{PREVIOUS_RELEASE}"
    if (target / "batchrun" / "__init__.py").exists():
        return target
    target.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", PREVIOUS_RELEASE, "batchrun"],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        return None
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target


def previous_command(prompts: Path, out: Path, base_url: str, *options: str) -> list[str]:
    """batchrun_command for the previous release (`python -m batchrun`)."""
    cmd = batchrun_command(prompts, out, base_url, *options)
    return [sys.executable, "-m", "batchrun", *cmd[len(batchrun_exe()) :]]


def check_loop(out: Path, rows: int, expected: Expected) -> str | None:
    """None if the loop's JSON output is right, else what is wrong."""
    try:
        results = json.loads(out.read_text())
    except (OSError, ValueError) as exc:
        return f"no readable output: {exc}"
    if len(results) != rows:
        return f"{len(results)} rows, expected {rows}"
    ids = {r[0] for r in results}
    if len(ids) != rows or ids != {row_id(i) for i in range(rows)}:
        return "ids differ from the input's (missing or duplicated)"
    index = {row_id(i): i for i in range(rows)}
    for rid, content, total in results:
        i = index[rid]
        if content != expected.content(i):
            return f"{rid}: content {content!r} is not its answer"
        if total != expected.total_tokens(i):
            return f"{rid}: total_tokens {total}, expected {expected.total_tokens(i)}"
    return None


def check_batchrun(out: Path, rows: int, expected: Expected, stderr: str = "") -> str | None:
    """None if batchrun's Parquet output (and summary line, when given) is right."""
    columns = ["id", "status", "content", "prompt_tokens", "completion_tokens", "total_tokens"]
    try:
        table = pq.read_table(out, columns=columns)
    except (OSError, ValueError) as exc:
        return f"no readable output: {exc}"
    if table.num_rows != rows:
        return f"{table.num_rows} rows, expected {rows}"
    if table.column("id").to_pylist() != [row_id(i) for i in range(rows)]:
        return "ids differ from the input's, or are out of input order"
    statuses = pc.value_counts(table.column("status")).to_pylist()
    if statuses != [{"values": "ok", "counts": rows}]:
        return f"statuses {statuses}"
    if expected is FIXED:
        contents = set(table.column("content").unique().to_pylist())
        sums = {c: pc.sum(table.column(c)).as_py() for c in columns[3:]}
        want = {
            "prompt_tokens": 12 * rows,
            "completion_tokens": 6 * rows,
            "total_tokens": 18 * rows,
        }
        if contents != {FIXED_CONTENT} or sums != want:
            return f"contents {sorted(contents)[:3]}, usage sums {sums}, expected {want}"
    else:
        contents = table.column("content").to_pylist()
        totals = table.column("total_tokens").to_pylist()
        for i, (content, total) in enumerate(zip(contents, totals, strict=True)):
            if content != expected.content(i) or total != expected.total_tokens(i):
                return f"{row_id(i)}: content {content!r} / total_tokens {total} are not its own"
    if stderr:
        match = SUMMARY.search(stderr)
        if match is None or match.groups() != (str(rows), str(rows), "0", "0"):
            return f"summary line says {match.group(0) if match else 'nothing'}"
    return None


def rebuys(stderr: str) -> int | None:
    """The summary's 'N re-sent after their id expired', or None if absent."""
    match = REBUYS.search(stderr)
    return int(match.group(1)) if match else None
