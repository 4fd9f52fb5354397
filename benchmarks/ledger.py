"""The ledger's size: checkpoint bytes a row for a nightly labelling job, this release against
the release before the compact ledger, on the same rows in the same run.

20,000 reviews (datasets.review_set: about 210 bytes a JSONL line) through configs/nightly.toml
(a prompt template, JSON answers, pricing and a cost cap) against `batchrun mock-server`, whose
answers carry the review back (about 315 bytes each). The previous release is the commit
before the compact ledger, exported with `git archive` and run from its own folder.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from .clients import PREVIOUS_RELEASE, ROOT
from .context import Context, fmt, log
from .datasets import review_set
from .endpoints import batchrun_exe, start_mock
from .measure import load_average, run
from .report import Section, Verdict

TARGET_BYTES = 700


def _command(reviews: Path, out: Path, base_url: str, exe: list[str]) -> list[str]:
    return [
        *exe, "run", str(reviews), "-c", str(ROOT / "configs" / "nightly.toml"), "-o", str(out),
        "--base-url", base_url, "--rpm", "0", "--concurrency", "64", "--no-progress",
        "--log-json", str(out.with_suffix(".events.jsonl")), "--fresh",
    ]  # fmt: skip


def _check(out: Path, rows: int) -> str | None:
    try:
        table = pq.read_table(out, columns=["status", "label"])
    except (OSError, ValueError) as exc:
        return f"no readable output: {exc}"
    ok = pc.sum(pc.equal(table.column("status"), "ok")).as_py()
    labelled = table.num_rows - table.column("label").null_count
    if table.num_rows != rows or ok != rows or labelled != rows:
        return f"{table.num_rows} rows, {ok} ok, {labelled} labelled; expected {rows} of each"
    return None


def _size(checkpoint: Path) -> int:
    return sum(
        Path(f"{checkpoint}{suffix}").stat().st_size
        for suffix in ("", "-wal")
        if Path(f"{checkpoint}{suffix}").exists()
    )


def _tables(checkpoint: Path, rows: int) -> str:
    """Bytes a row per table and index (SQLite's dbstat), largest first."""
    conn = sqlite3.connect(f"file:{checkpoint}?mode=ro", uri=True)
    try:
        sizes = conn.execute(
            "SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC"
        ).fetchall()
    except sqlite3.OperationalError as exc:  # a SQLite built without dbstat
        return f"(no per-table figures: {exc})"
    finally:
        conn.close()
    return ", ".join(f"{name} {size / rows:.0f}" for name, size in sizes if size / rows >= 1)


def ledger(ctx: Context) -> Section:
    rows = ctx.size("ledger_rows")
    where = ctx.workdir / "ledger"
    where.mkdir(parents=True, exist_ok=True)
    reviews = review_set(ctx.data, rows)
    section = Section(
        "Checkpoint size: bytes a row",
        f"{rows:,} reviews (about {os.path.getsize(reviews) / rows:.0f} bytes a JSONL line) "
        "through configs/nightly.toml (prompt template, JSON answers, pricing, cost cap) with "
        "`--rpm 0 --concurrency 64`, against `batchrun mock-server` (answers of about 315 "
        "bytes carrying the review back). Bytes a row = the checkpoint file (and any WAL) "
        f"after the job, over {rows:,}. The previous release is commit {PREVIOUS_RELEASE}, "
        "exported with `git archive` and run from its own folder on the same rows, against "
        "the same mock, in the same run. Output checked: every row ok and labelled.",
        headers=["release", "checkpoint bytes", "bytes a row", "wall s", "where the bytes go"],
    )
    before = load_average()
    results: dict[str, float] = {}
    previous = ctx.previous
    releases = [("this release", batchrun_exe(), None)]
    if previous is not None:
        old_exe = [sys.executable, "-m", "batchrun"]
        releases.insert(0, (f"previous ({PREVIOUS_RELEASE})", old_exe, previous))
    with start_mock(where, "ledger") as mock:
        for name, exe, pythonpath in releases:
            out = where / f"{name.split()[0]}.parquet"
            cmd = _command(reviews, out, mock.base_url, exe)
            env = {**os.environ, "PYTHONPATH": str(pythonpath)} if pythonpath else None
            log(f"ledger: {name}")
            result = run(cmd, where / name.split()[0], timeout=1800, env=env, cwd=where)
            error = f"exit {result.rc}: {result.stderr[-300:]}" if result.rc not in (0, 1) else None
            error = error or _check(out, rows)
            checkpoint = Path(f"{out}.checkpoint.sqlite")
            if ctx.record(f"ledger {name}", error):
                results[name] = _size(checkpoint) / rows
            section.commands.append(
                (f"PYTHONPATH={pythonpath} " if pythonpath else "") + " ".join(cmd)
            )
            section.rows.append(
                [
                    name,
                    f"{_size(checkpoint):,}" if checkpoint.exists() else "—",
                    fmt(results[name], 0) if name in results else f"FAILED: {error}",
                    fmt(result.wall_s, 1),
                    _tables(checkpoint, rows) if checkpoint.exists() else "—",
                ]
            )
    section.load = f"{before} → {load_average()}"
    now = results.get("this release")
    if now is not None:
        measured = f"{now:.0f} bytes a row"
        old = next((v for k, v in results.items() if k.startswith("previous")), None)
        if old is not None:
            measured += f" (previous release {old:.0f}, {old / now:.1f}× more)"
        section.verdicts.append(
            Verdict(
                f"checkpoint ≤ {TARGET_BYTES} bytes a row ({rows:,} reviews)",
                measured,
                now <= TARGET_BYTES,
            )  # fmt: skip
        )
    return section
