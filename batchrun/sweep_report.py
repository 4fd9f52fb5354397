"""`batchrun report DIR` for a sweep's output_dir: its cells and the per-grader table, read
back from the summary.parquet and scores.parquet the sweep wrote (sweep_summary.py). A
sweep written before graders existed has no scores.parquet: its cells are shown alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from .errors import ConfigError


def is_sweep_folder(path: Path) -> bool:
    return path.is_dir() and (path / "summary.parquet").is_file()


def sweep_figures(folder: Path) -> dict[str, Any]:
    """The sweep's cells and scores as plain data (what `--json` prints)."""
    cells = _rows(folder / "summary.parquet")
    scores_file = folder / "scores.parquet"
    scores = _rows(scores_file) if scores_file.is_file() else []
    for score in scores:
        score["pass_at"] = json.loads(score["pass_at"]) if score.get("pass_at") else {}
    return {
        "sweep": str(folder),
        "cells": cells,
        "passed": sum(bool(c.get("passed")) for c in cells),
        "scores": scores,
    }


def _rows(path: Path) -> list[dict[str, Any]]:
    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several types for a file it cannot read
        raise ConfigError(f"{path}: not a readable sweep summary ({exc})") from None


def sweep_report(folder: Path, *, as_json: bool, html: str | None) -> str:
    if html:
        raise ConfigError(
            f"{folder} is a sweep's output folder: --html is for one job's output (its summary "
            f"is {folder / 'summary.md'}; `batchrun report {folder}/<cell>/results.parquet "
            "--html FILE` plots one cell)"
        )
    figures = sweep_figures(folder)
    return json.dumps(figures, indent=2, default=str) if as_json else format_sweep(figures)


def format_sweep(figures: dict[str, Any]) -> str:
    """The report for a terminal: a line per cell, then the per-grader table."""
    cells = figures["cells"]
    lines = [
        f"batchrun report: sweep {figures['sweep']} ({figures['passed']} of {len(cells)} "
        "cells passed)"
    ]
    for c in cells:
        verdict = "PASS" if c.get("passed") else f"FAIL ({c.get('problem')})"
        tokens = (c.get("prompt_tokens") or 0) + (c.get("completion_tokens") or 0)
        text = (
            f"  {c['cell']}: {c.get('ok', 0)} ok, {c.get('failed', 0)} failed, "
            f"{c.get('invalid', 0)} invalid; {tokens:,} tokens"
        )
        judge = (c.get("judge_prompt_tokens") or 0) + (c.get("judge_completion_tokens") or 0)
        if c.get("judge_requests"):
            text += f"; judges {judge:,} tokens"
            if c.get("judge_cost") is not None:
                text += f" (${c['judge_cost']:.4f})"
        lines.append(f"{text} - {verdict}")
    if figures["scores"]:
        lines += ["", *_table(figures["scores"])]
    return "\n".join(lines)


HEADERS = ("cell", "grader", "score ± stderr", "rows", "errors", "pass@k", "baseline", "change",
           "right→wrong", "wrong→right", "p", "verdict")  # fmt: skip


def _table(scores: list[dict[str, Any]]) -> list[str]:
    compared = any(s.get("verdict") is not None for s in scores)
    headers = HEADERS if compared else HEADERS[:6] + HEADERS[-1:]
    rows = [_score_cells(s, compared) for s in scores]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    out = ["  " + "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        out.append("  " + "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return out


def _score_cells(s: dict[str, Any], compared: bool) -> list[str]:
    score = "-" if s.get("score") is None else f"{s['score']:.1%}"
    if s.get("stderr") is not None:
        score += f" ± {s['stderr'] * 100:.1f}"
    passes = ", ".join(f"@{k} {v:.1%}" for k, v in s["pass_at"].items())
    cells = [
        s["cell"],
        f"{s['grader']} ({s['kind']})",
        score,
        str(s.get("rows") or 0),
        str(s.get("errors") or 0),
        passes,
    ]
    if compared:
        cells += [
            "-" if s.get("baseline_score") is None else f"{s['baseline_score']:.1%}",
            "-" if s.get("change") is None else f"{s['change'] * 100:+.1f} pts",
            str(s.get("right_to_wrong") or 0),
            str(s.get("wrong_to_right") or 0),
            "-" if s.get("p_value") is None else f"{s['p_value']:.2g}",
        ]
    gates = s.get("gates_failed")
    verdict = (
        f"FAIL: {gates}"
        if gates
        else s.get("verdict") or ("pass" if s.get("score") is not None else "no graded rows")
    )
    return [*cells, verdict]
