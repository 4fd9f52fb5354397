"""A sweep's summaries, where CI shows them: summary.parquet (a row per cell), scores.parquet
(a row per cell and grader), summary.md (both as tables, the flipped rows, notes), appended
to `$GITHUB_STEP_SUMMARY` when GitHub Actions sets it, and a JUnit file (a test case per
cell, each grader's figures as properties, a failure saying which gates failed and by how
much). Reading them back for `batchrun report DIR` is sweep_report.py's.
"""

from __future__ import annotations

import json
import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from .baseline import Baseline, cells_only_in_baseline
from .grade_records import GraderScore, Verdict

if TYPE_CHECKING:
    from .sweep import CellReport
    from .sweep_file import SweepSpec

log = logging.getLogger(__name__)
FLIPS_SHOWN = 50  # row ids listed per grader in summary.md (scores.parquet has them all)


def write_summaries(
    reports: list[CellReport], spec: SweepSpec, baseline: Baseline | None, junit: Path | None
) -> list[Path]:
    output_dir = spec.output_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    written = [output_dir / n for n in ("summary.parquet", "scores.parquet", "summary.md")]
    cell_frame(reports).to_parquet(written[0], index=False)
    score_frame(reports).to_parquet(written[1], index=False)
    markdown = summary_markdown(reports, spec.alpha, baseline)
    written[2].write_text(markdown)
    _append_step_summary(markdown)
    if junit is not None:
        junit.parent.mkdir(parents=True, exist_ok=True)
        junit_xml(reports).write(junit, encoding="utf-8", xml_declaration=True)
        written.append(junit)
    return written


def _append_step_summary(markdown: str) -> None:
    """GitHub Actions shows what a step appends to $GITHUB_STEP_SUMMARY on the run's page."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return
    try:
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(markdown + "\n")
    except OSError as exc:  # the summary page is a nicety: never the sweep's failure
        log.warning("could not append to GITHUB_STEP_SUMMARY (%s): %s", target, exc)


# ---------------------------------------------------------------- tables


def cell_frame(reports: list[CellReport]) -> pd.DataFrame:
    rows = []
    for r in reports:
        row = {
            f.name: getattr(r, f.name) for f in fields(r) if f.name not in ("scores", "failures")
        }
        row["gates_failed"] = ",".join(dict.fromkeys(f.gate.value for f in r.failures)) or None
        rows.append(row)
    return pd.DataFrame(rows)


SCORE_COLUMNS = (
    "cell", "grader", "kind", "grader_key", "score", "stderr", "rows", "passed", "failed",
    "errors", "skipped", "items", "repeats", "pass_at", "min_score", "first_error", "verdict",
    "baseline_score", "change", "paired", "right_to_wrong", "wrong_to_right", "p_value",
    "not_in_baseline", "not_compared", "worse_ids", "better_ids", "baseline_notes",
    "gates_failed",
)  # fmt: skip


def score_frame(reports: list[CellReport]) -> pd.DataFrame:
    """scores.parquet: one row per cell and grader (pass_at as JSON text: {"k": value})."""
    rows = [_score_row(s, r) for r in reports for s in r.scores]
    return pd.DataFrame(rows, columns=list(SCORE_COLUMNS))


def _score_row(s: GraderScore, r: CellReport) -> dict[str, Any]:
    row = {k: v for k, v in asdict(s).items() if k in SCORE_COLUMNS}
    row["pass_at"] = json.dumps({str(k): v for k, v in s.pass_at.items()}) if s.pass_at else None
    c = s.comparison
    row.update(
        verdict=c.verdict.value if c else None,
        baseline_score=c.baseline_score if c else None,
        change=c.change if c else None,
        paired=c.paired if c else None,
        right_to_wrong=len(c.worse) if c else None,
        wrong_to_right=len(c.better) if c else None,
        p_value=c.p_value if c else None,
        not_in_baseline=c.not_in_baseline if c else None,
        not_compared=c.not_compared if c else None,
        worse_ids=list(c.worse) if c else None,
        better_ids=list(c.better) if c else None,
        baseline_notes="; ".join(c.notes) if c and c.notes else None,
        gates_failed=",".join(f.gate.value for f in r.failures if f.grader == s.grader) or None,
    )
    return row


# ---------------------------------------------------------------- markdown


def score_text(s: GraderScore) -> str:
    """`80.0% ± 4.0` (the standard error in points), or `-` with nothing graded."""
    if s.score is None:
        return "-"
    text = f"{s.score:.1%}"
    return text + (f" ± {s.stderr * 100:.1f}" if s.stderr is not None else "")


def _num(value: float | None, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def summary_markdown(
    reports: list[CellReport], alpha: float = 0.05, baseline: Baseline | None = None
) -> str:
    lines = [
        "# batchrun sweep",
        "",
        f"{sum(r.passed for r in reports)} of {len(reports)} cells passed.",
        "",
        "| cell | model | params | rows | ok | failed | invalid | tokens | cost "
        "| judge tokens | judge cost | p50 s | p95 s | verdict |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in reports:
        verdict = "pass" if r.passed else f"FAIL: {r.problem}"
        judge_tokens = r.judge_prompt_tokens + r.judge_completion_tokens
        lines.append(
            f"| {r.cell} | {r.model} | `{r.params}` | {r.rows} | {r.ok} | {r.failed} | {r.invalid} "
            f"| {r.prompt_tokens + r.completion_tokens} | {_num(r.cost, '.4f')} "
            f"| {judge_tokens if r.judge_requests else ''} | {_num(r.judge_cost, '.4f')} "
            f"| {_num(r.latency_p50, '.3f')} | {_num(r.latency_p95, '.3f')} "
            f"| {_cell(verdict)} |"
        )
    lines += _scores_table(reports, baseline is not None, alpha)
    lines += _flips(reports)
    lines += _notes(reports, baseline)
    return "\n".join(lines) + "\n"


def _scores_table(reports: list[CellReport], compared: bool, alpha: float) -> list[str]:
    scores = [s for r in reports for s in r.scores]
    if not scores:
        return []
    head = "| cell | grader | score ± stderr | rows | errors | pass@k "
    rule = "|---|---|---:|---:|---:|---|"
    if compared:
        head += "| baseline | change | right→wrong | wrong→right | p "
        rule += "---:|---:|---:|---:|---:|"
    title = "## Scores (± standard error" + (
        f"; paired test at alpha {alpha:g})" if compared else ")"
    )
    lines = ["", title, "", head + "| verdict |", rule + "---|"]
    for r in reports:
        for s in r.scores:
            passes = ", ".join(f"pass@{k} {v:.1%}" for k, v in s.pass_at.items())
            row = (
                f"| {r.cell} | {s.grader} ({s.kind}) | {score_text(s)} | {s.rows} | {s.errors} "
                f"| {passes} "
            )
            if compared:
                row += _comparison_cells(s)
            lines.append(row + f"| {_cell(grader_verdict(r, s))} |")
    return lines


def _comparison_cells(s: GraderScore) -> str:
    c = s.comparison
    if c is None or c.verdict is Verdict.NO_BASELINE:
        return "| - | - | - | - | - "
    change = "" if c.change is None else f"{c.change * 100:+.1f} pts"
    return (
        f"| {_num(c.baseline_score, '.1%')} | {change} | {len(c.worse)} | {len(c.better)} "
        f"| {_num(c.p_value, '.2g')} "
    )


def grader_verdict(r: CellReport, s: GraderScore) -> str:
    """A grader's verdict in a cell: its gates that failed, else what the baseline says."""
    failed = [f.gate.value for f in r.failures if f.grader == s.grader]
    if failed:
        return "FAIL: " + ", ".join(failed)
    if s.comparison is not None:
        return s.comparison.verdict.value
    return "pass" if s.score is not None else "no graded rows"


def _flips(reports: list[CellReport]) -> list[str]:
    lines: list[str] = []
    for r in reports:
        for s in r.scores:
            c = s.comparison
            if c is None or not (c.worse or c.better):
                continue
            lines.append(
                f"- {r.cell} / {s.grader}: right→wrong ({len(c.worse)}): {_ids(c.worse)}; "
                f"wrong→right ({len(c.better)}): {_ids(c.better)}"
            )
    return ["", "## Rows that changed against the baseline", "", *lines] if lines else []


def _ids(ids: Sequence[str]) -> str:
    if not ids:
        return "none"
    shown = ", ".join(f"`{i}`" for i in ids[:FLIPS_SHOWN])
    return shown + (f" and {len(ids) - FLIPS_SHOWN} more" if len(ids) > FLIPS_SHOWN else "")


def _notes(reports: list[CellReport], baseline: Baseline | None) -> list[str]:
    notes: list[str] = []
    if baseline is not None:
        notes.append(f"Baseline: `{baseline.folder}`.")
        gone = cells_only_in_baseline(baseline, (r.cell for r in reports))
        if gone:
            notes.append(f"Cells in the baseline that this sweep did not run: {', '.join(gone)}.")
    for r in reports:
        for s in r.scores:
            if s.errors:
                notes.append(
                    f"{r.cell} / {s.grader}: {s.errors} rows could not be graded (counted as "
                    f"wrong), e.g. {s.first_error}"
                )
            c = s.comparison
            if c is not None and c.notes:
                notes.append(f"{r.cell} / {s.grader}: {'; '.join(c.notes)}.")
    return ["", "## Notes", "", *(f"- {n}" for n in notes)] if notes else []


def _cell(text: str) -> str:
    return text.replace("|", "/").replace("\n", " ")


# ---------------------------------------------------------------- JUnit


def junit_xml(reports: list[CellReport]) -> ET.ElementTree:
    failures = sum(not r.passed for r in reports)
    suites = ET.Element("testsuites", tests=str(len(reports)), failures=str(failures))
    suite = ET.SubElement(
        suites, "testsuite", name="batchrun sweep", tests=str(len(reports)), failures=str(failures)
    )
    for r in reports:
        case = ET.SubElement(
            suite, "testcase", classname="batchrun.sweep", name=r.cell, time=f"{r.wall_s:.3f}"
        )
        _properties(case, r)
        if not r.passed:
            failure = ET.SubElement(
                case, "failure", message=r.problem or "failed", type=_failure_type(r)
            )
            failure.text = "\n".join([status_line(r), *(f.message for f in r.failures)])
        out = ET.SubElement(case, "system-out")
        out.text = status_line(r)
    return ET.ElementTree(suites)


def _properties(case: ET.Element, r: CellReport) -> None:
    """Each grader's figures (`score.<grader>` ...) and the judges' usage, as properties."""
    values: list[tuple[str, Any]] = []
    for s in r.scores:
        values += [(f"score.{s.grader}", s.score), (f"stderr.{s.grader}", s.stderr)]
        values += [(f"pass_at_{k}.{s.grader}", v) for k, v in s.pass_at.items()]
        c = s.comparison
        if c is not None:
            values += [
                (f"baseline.{s.grader}", c.baseline_score), (f"change.{s.grader}", c.change),
                (f"p_value.{s.grader}", c.p_value), (f"verdict.{s.grader}", c.verdict.value),
            ]  # fmt: skip
    if r.judge_requests:
        values += [("judge_tokens", r.judge_prompt_tokens + r.judge_completion_tokens)]
        values += [("judge_cost", r.judge_cost)]
    shown = [(name, value) for name, value in values if value is not None]
    if not shown:
        return
    props = ET.SubElement(case, "properties")
    for name, value in shown:
        text = f"{value:.6g}" if isinstance(value, float) else str(value)
        ET.SubElement(props, "property", name=name, value=text)


def _failure_type(r: CellReport) -> str:
    """Which checks failed a cell, for JUnit's failure type: the gates, comma-separated."""
    if r.failures and r.problem and r.problem.startswith("gate "):
        return ",".join(dict.fromkeys(f.gate.value for f in r.failures))
    if r.problem and "not finished" in r.problem:
        return "unfinished"
    return "error"


def status_line(r: CellReport) -> str:
    """A cell in one line: its rows, each grader's score, its verdict (stderr and JUnit)."""
    if r.rows == 0 and r.problem:
        return f"did not run: {r.problem}"
    text = f"{r.ok} ok, {r.failed} failed, {r.invalid} invalid"
    graded = [s for s in r.scores if s.score is not None]
    if graded:
        text += ", " + ", ".join(f"{s.grader} {score_text(s)}" for s in graded)
    return text + (" - PASS" if r.passed else f" - FAIL ({r.problem})")
