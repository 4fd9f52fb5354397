"""`batchrun sweep SWEEP.toml`: a grid of runs for evaluation in CI, with a verdict.

A sweep file names datasets, models and a `[grid]` of values; every combination is one
cell, run as an ordinary resumable job under `output_dir/<cell>/` (running the sweep again
resumes unfinished cells and re-sends nothing finished). Cells run one after another in one
event loop and share one rate limiter, so `rpm` holds across the whole sweep.

    output_dir = "out/sweep"              # relative to the sweep file, like every path here
    datasets = ["../samples/reviews.jsonl"]
    models = ["qwen/qwen3.5-397b-a17b", "meta/llama-3.1-8b-instruct"]
    config = "local.toml"                 # optional base run config
    score_field = "label"                 # optional: score parsed[label], not the answer
    max_failure_rate = 0.0                # a cell fails above this share of failed/invalid rows
    [run]                                 # run settings for every cell (any `run` key)
    rpm = 600
    [grid]                                # each key: a list of values; run keys or body fields
    temperature = [0.0, 0.6]

Mistakes are found before any cell runs (exit 2): the files the sweep names (datasets, the
base config, a `[run]` reuse) are checked when the sweep file is read, and every cell's
settings are built before the first one runs; messages name the file, table and key as
written (`sweep.toml: [grid] max_tokens`, `sweep.toml: [run.params] top_p`).

Writes `summary.parquet` and `summary.md` in output_dir (per cell: rows ok/failed/invalid,
tokens, cost, latency p50/p95, and the exact-match accuracy against an `expected` column),
and with `--junit-xml` one test case per cell, failed where the cell's failure rate is over
`max_failure_rate`. The sweep passes (exit 0) only when every cell passes.
"""

from __future__ import annotations

import asyncio
import difflib
import itertools
import json
import os
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .body_fields import DOCUMENTED
from .config import (
    COMMAND_LINE,
    CONFIG_KEYS,
    RunConfig,
    Source,
    build_config_from,
    load_toml,
    read_toml,
)
from .dataset import expand_inputs
from .errors import AuthError, BatchrunError, ConfigError, Interrupted, RunMismatchError
from .factory import new_limiter
from .job import JobResult, run_job_async
from .lifecycle import RowState
from .stats import quantiles

LATENCY_QUANTILES = {"p50": 0.5, "p95": 0.95}
SWEEP_KEYS = frozenset(
    {"output_dir", "datasets", "models", "config", "score_field", "max_failure_rate", "run", "grid"}
)


@dataclass
class SweepSpec:
    path: Path
    output_dir: Path
    datasets: list[str]
    models: list[str | None]
    # Run settings shared by every cell, each layer over the ones before it (config file,
    # [run], CLI), with where it was written for messages.
    layers: list[tuple[dict[str, Any], Source]]
    grid: dict[str, list[Any]]
    score_field: str | None
    max_failure_rate: float


@dataclass
class Cell:
    name: str
    dataset: str
    model: str
    values: dict[str, Any]  # this cell's grid values
    cfg: RunConfig


@dataclass
class CellReport:
    cell: str
    dataset: str
    model: str
    params: str
    rows: int = 0
    ok: int = 0
    failed: int = 0
    invalid: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = None
    latency_p50: float | None = None
    latency_p95: float | None = None
    accuracy: float | None = None
    scored: int = 0
    failure_rate: float = 0.0
    wall_s: float = 0.0
    passed: bool = False
    problem: str | None = None  # why the cell did not run or did not pass


# ---------------------------------------------------------------- the sweep file


def load_sweep(path: Path, cli: Mapping[str, Any]) -> SweepSpec:
    """Read and check a sweep file; CLI values (None: not given) win over it."""
    data = load_toml_table(path)
    folder = path.parent
    if not data.get("output_dir") or not data.get("datasets"):
        raise ConfigError(f"{path}: a sweep needs output_dir and datasets")
    layers: list[tuple[dict[str, Any], Source]] = []
    if "config" in data:
        layers.append(_base_config(path, data["config"]))
    run = _table(data, "run", path)
    for key in ("inputs", "output", "model", "checkpoint"):
        if key in run:
            raise ConfigError(f"{path}: [run] {key} is set per cell by the sweep")
    layers.append((_relative(folder, run), Source(str(path), "run", "run.params")))
    cli_values = {k: v for k, v in cli.items() if v is not None and k in CONFIG_KEYS}
    layers.append((cli_values, COMMAND_LINE))
    grid = _table(data, "grid", path)
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: [grid] {key} must be a non-empty list of values")
    models = data.get("models") or [None]
    if not isinstance(models, list) or not all(m is None or isinstance(m, str) for m in models):
        raise ConfigError(f"{path}: models must be a list of model names")
    if not isinstance(data["output_dir"], str):
        raise ConfigError(f"{path}: output_dir must be a folder's path, got {data['output_dir']!r}")
    datasets = _datasets(path, data["datasets"])
    _check_reuse(layers)
    rate = cli.get("max_failure_rate")
    rate = data.get("max_failure_rate", 0.0) if rate is None else rate
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
        raise ConfigError(f"{path}: max_failure_rate must be a share from 0 to 1, got {rate!r}")
    score_field = cli.get("score_field") or data.get("score_field")
    return SweepSpec(
        path=path,
        output_dir=Path(os.path.normpath(folder / data["output_dir"])),
        datasets=datasets,
        models=models,
        layers=layers,
        grid=grid,
        score_field=score_field,
        max_failure_rate=float(rate),
    )


def load_toml_table(path: Path) -> dict[str, Any]:
    """The sweep file's table, its keys checked (run keys are checked per cell later)."""
    data = read_toml(path, "sweep")
    for key in data:
        if key in SWEEP_KEYS:
            continue
        close = difflib.get_close_matches(key, sorted(SWEEP_KEYS), n=1)
        if close:
            hint = f"did you mean {close[0]!r}?"
        elif key in CONFIG_KEYS:
            hint = "a run setting: put it under [run], or list its values under [grid]"
        elif key in DOCUMENTED:
            hint = "a request body field: put it under [run.params], or its values under [grid]"
        else:
            hint = f"known: {', '.join(sorted(SWEEP_KEYS))}"
        raise ConfigError(f"{path}: unknown sweep key {key!r} ({hint})")
    return data


def _base_config(path: Path, ref: Any) -> tuple[dict[str, Any], Source]:
    """The run config a sweep file names (`config = "job.toml"`, relative to the sweep
    file), read and checked now: a missing one is the sweep file's mistake."""
    if not isinstance(ref, str) or not ref:
        raise ConfigError(f"{path}: config must be the path of a run config file, got {ref!r}")
    config = Path(os.path.normpath(path.parent / ref))
    if not config.exists():
        raise ConfigError(
            f"{path}: config = {ref!r}: {config} not found (paths in a sweep file are "
            "relative to it)"
        )
    return load_toml(config), Source(str(config))


def _datasets(path: Path, value: Any) -> list[str]:
    """The datasets' paths (relative to the sweep file), each checked now, before any cell
    runs: a missing one is the sweep file's mistake, not a cell's failure."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(d, str) and d for d in value):
        raise ConfigError(f"{path}: datasets must be a list of input paths, got {value!r}")
    found: list[str] = []
    for ref in value:
        full = os.path.normpath(path.parent / ref)
        if not Path(full).exists():
            raise ConfigError(
                f"{path}: datasets: {ref!r}: {full} not found (paths in a sweep file are "
                "relative to it)"
            )
        try:
            expand_inputs([full])
        except ConfigError as exc:
            raise ConfigError(f"{path}: datasets: {ref!r}: {exc}") from None
        found.append(full)
    return found


def _check_reuse(layers: list[tuple[dict[str, Any], Source]]) -> None:
    """An earlier run to reuse answers from must exist before any cell runs."""
    for values, source in reversed(layers):  # the last layer that sets it wins
        if "reuse" not in values:
            continue
        reuse = values["reuse"]
        if isinstance(reuse, str) and reuse and not Path(reuse).is_file():
            raise ConfigError(f"{source.key('reuse')}: no such checkpoint or output file: {reuse}")
        return


def _table(data: Mapping[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: [{key}] must be a table")
    return dict(value)


def _relative(folder: Path, run: dict[str, Any]) -> dict[str, Any]:
    for key in ("tools_file", "reuse", "log_json"):
        if isinstance(run.get(key), str):
            run[key] = os.path.normpath(folder / run[key])
    return run


def cells(spec: SweepSpec) -> list[Cell]:
    """Every combination of dataset, model and grid values, each a validated run config."""
    names = list(spec.grid)
    sweep_file = str(spec.path)
    out: list[Cell] = []
    for dataset, model, combo in itertools.product(
        spec.datasets, spec.models, itertools.product(*spec.grid.values())
    ):
        values = dict(zip(names, combo, strict=True))
        name = _slug(
            "-".join(
                [Path(dataset).name.split(".")[0], model or "default"]
                + [f"{k}={v}" for k, v in values.items()]
            )
        )
        # What the sweep sets per cell; then the grid's values, run settings or body fields.
        own: dict[str, Any] = {"inputs": [dataset]}
        if model is not None:
            own["model"] = model
        if spec.score_field:
            own["parse_json"] = True  # the field is read from the parsed answer
        grid = {k: v for k, v in values.items() if k in CONFIG_KEYS}
        params = {k: v for k, v in values.items() if k not in CONFIG_KEYS}
        if params:
            grid["params"] = params
        output = {"output": str(spec.output_dir / name / "results.parquet")}
        cfg = build_config_from(
            [
                *spec.layers,
                (own, Source(sweep_file)),
                (grid, Source(sweep_file, "grid", "grid")),
                (output, Source(sweep_file)),
            ]
        )
        out.append(Cell(name, dataset, cfg.model, values, cfg))
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_")[:120]


# ---------------------------------------------------------------- running


async def run_sweep(
    spec: SweepSpec, *, say: Any = print
) -> tuple[list[CellReport], BatchrunError | None]:
    """Run every cell in turn under one shared rate limiter; report each. A bad key or a
    Ctrl-C ends the sweep early: (the cells that finished, why it ended)."""
    grid = cells(spec)
    limiter = new_limiter(grid[0].cfg) if grid else None
    reports: list[CellReport] = []
    for n, cell in enumerate(grid, 1):
        try:
            report = await _run_cell(cell, spec, limiter)
        except (AuthError, Interrupted) as exc:
            return reports, exc
        reports.append(report)
        say(f"cell {n}/{len(grid)} {cell.name}: {_one_line(report)}")
    return reports, None


async def _run_cell(cell: Cell, spec: SweepSpec, limiter: Any) -> CellReport:
    params = json.dumps(cell.values, sort_keys=True)
    report = CellReport(cell.name, Path(cell.dataset).name, cell.model, params)
    started = time.monotonic()
    try:
        result = await run_job_async(cell.cfg, limiter=limiter)
    except AuthError:
        raise  # a bad key fails every cell alike: stop the sweep (exit 3)
    except RunMismatchError as exc:  # the run's hint names flags a sweep does not have
        report.problem = f"{exc.problem} {_mismatch_hint(exc, cell, spec)}"
        report.wall_s = time.monotonic() - started
        return report
    except BatchrunError as exc:
        report.problem = str(exc)
        report.wall_s = time.monotonic() - started
        return report
    if isinstance(result.stopped, AuthError | Interrupted):
        raise result.stopped  # the same for every cell, or the user asked to stop
    _fill(report, result, spec)
    return report


def _mismatch_hint(exc: RunMismatchError, cell: Cell, spec: SweepSpec) -> str:
    """What to do about a cell whose checkpoint is another job's, from the sweep: its
    --fresh restarts every cell, and a [run] reuse (one file for every cell) keeps answers."""
    earlier = os.path.relpath(cell.cfg.output, spec.path.parent)
    return (
        "Run the sweep with its original inputs and settings to resume this cell, or run "
        f"batchrun sweep {spec.path} --fresh to start over: --fresh restarts every cell of "
        f"the sweep, not only this one (this cell's {exc.done} finished rows are discarded). "
        f'To keep the answers whose request did not change, add reuse = "{earlier}" under '
        f"[run] in {spec.path} before running it with --fresh: rows asking what this cell "
        "asked before are then answered from its earlier results instead of being bought "
        "again (reuse names one file, for every cell)."
    )


def _fill(report: CellReport, result: JobResult, spec: SweepSpec) -> None:
    counts = result.counts
    report.ok, report.failed, report.invalid = (
        counts.get(s, 0) for s in (RowState.DONE, RowState.FAILED, RowState.INVALID)
    )
    report.rows = sum(counts.values())
    report.prompt_tokens = result.totals.prompt_tokens
    report.completion_tokens = result.totals.completion_tokens
    report.cost = result.cost
    report.wall_s = result.wall_s
    frame = _read(result.output)
    latency = quantiles(frame.loc[frame["status"] == "ok", "latency_s"].dropna(), LATENCY_QUANTILES)
    if latency is not None:
        report.latency_p50, report.latency_p95 = latency["p50"], latency["p95"]
    report.accuracy, report.scored = _accuracy(frame, spec.score_field)
    bad = report.failed + report.invalid
    report.failure_rate = bad / report.rows if report.rows else 0.0
    unfinished = report.rows - report.ok - bad
    if unfinished:
        report.problem = f"{unfinished} rows not finished" + (
            f": {result.stopped}" if result.stopped else ""
        )
    elif report.failure_rate > spec.max_failure_rate:
        report.problem = (
            f"gate max_failure_rate: {report.failure_rate:.1%} of rows failed or invalid, over "
            f"{spec.max_failure_rate:.1%}; causes: {_causes(result)}"
        )
    report.passed = report.problem is None


def _causes(result: JobResult) -> str:
    """The failures of a cell by cause, most common first (what a CI log needs to act on)."""
    causes = [f"failed x{c.rows} {c.label}" for c in result.failure_causes]
    causes += [f"invalid x{c.rows} {c.cause} (e.g. {c.example})" for c in result.invalid_causes]
    return "; ".join(causes) or "unknown"


def _read(output: Path) -> pd.DataFrame:
    import pyarrow.parquet as pq

    names = set(pq.ParquetFile(output).schema_arrow.names)
    wanted: list[str] = [
        c for c in ("status", "content", "latency_s", "expected", "parsed") if c in names
    ]
    return pd.read_parquet(output, columns=wanted)


def _accuracy(frame: pd.DataFrame, score_field: str | None) -> tuple[float | None, int]:
    """Exact match (trimmed, case-folded) of the answer, or of parsed[score_field]."""
    if "expected" not in frame:
        return None, 0
    scored = frame[frame["expected"].notna()]
    if not len(scored):
        return None, 0
    if score_field:
        answers = scored.get("parsed", pd.Series(index=scored.index, dtype=object)).map(
            lambda text: _field(text, score_field)
        )
    else:
        answers = scored["content"]
    ok = scored["status"] == "ok"
    hits = [
        bool(o) and _norm(a) == _norm(e)
        for o, a, e in zip(ok, answers, scored["expected"], strict=True)
    ]
    return sum(hits) / len(hits), len(hits)


def _field(parsed: Any, name: str) -> Any:
    if not isinstance(parsed, str):
        return None
    value = json.loads(parsed)
    return value.get(name) if isinstance(value, dict) else None


def _norm(value: Any) -> str:
    if value is None:
        return "\0none"
    return (value if isinstance(value, str) else json.dumps(value)).strip().casefold()


def _one_line(r: CellReport) -> str:
    if r.rows == 0 and r.problem:
        return f"did not run: {r.problem}"
    text = f"{r.ok} ok, {r.failed} failed, {r.invalid} invalid"
    if r.accuracy is not None:
        text += f", accuracy {r.accuracy:.1%} of {r.scored}"
    return text + (" - PASS" if r.passed else f" - FAIL ({r.problem})")


# ---------------------------------------------------------------- summaries


def write_summaries(reports: list[CellReport], output_dir: Path, junit: Path | None) -> list[Path]:
    output_dir.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame([asdict(r) for r in reports])
    written = [output_dir / "summary.parquet", output_dir / "summary.md"]
    frame.to_parquet(written[0], index=False)
    written[1].write_text(summary_markdown(reports))
    if junit is not None:
        junit.parent.mkdir(parents=True, exist_ok=True)
        junit_xml(reports).write(junit, encoding="utf-8", xml_declaration=True)
        written.append(junit)
    return written


def summary_markdown(reports: list[CellReport]) -> str:
    def num(value: float | None, fmt: str) -> str:
        return "" if value is None else format(value, fmt)

    lines = [
        "# batchrun sweep",
        "",
        f"{sum(r.passed for r in reports)} of {len(reports)} cells passed.",
        "",
        "| cell | model | params | rows | ok | failed | invalid | tokens | cost "
        "| p50 s | p95 s | accuracy | verdict |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in reports:
        verdict = "pass" if r.passed else f"FAIL: {r.problem}"
        lines.append(
            f"| {r.cell} | {r.model} | `{r.params}` | {r.rows} | {r.ok} | {r.failed} | {r.invalid} "
            f"| {r.prompt_tokens + r.completion_tokens} | {num(r.cost, '.4f')} "
            f"| {num(r.latency_p50, '.3f')} | {num(r.latency_p95, '.3f')} "
            f"| {num(r.accuracy, '.1%')} | {verdict.replace('|', '/')} |"
        )
    return "\n".join(lines) + "\n"


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
        if not r.passed:
            failure = ET.SubElement(
                case, "failure", message=r.problem or "failed", type=_gate(r.problem)
            )
            failure.text = f"{_one_line(r)}\n{r.problem or ''}"
        out = ET.SubElement(case, "system-out")
        out.text = _one_line(r)
    return ET.ElementTree(suites)


def _gate(problem: str | None) -> str:
    """Which check failed a cell, for JUnit's failure type."""
    if problem is None:
        return "failed"
    if problem.startswith("gate "):
        return problem.split(":", 1)[0].removeprefix("gate ")
    return "unfinished" if "not finished" in problem else "error"


def sweep(spec: SweepSpec, junit: Path | None) -> tuple[list[CellReport], list[Path]]:
    reports, stopped = asyncio.run(run_sweep(spec, say=_say))
    written = write_summaries(reports, spec.output_dir, junit)
    if stopped is not None:
        raise stopped  # summaries of the cells that finished are written; exit 3 or 130
    return reports, written


def _say(text: str) -> None:
    import sys

    sys.stderr.write(text + "\n")
    sys.stderr.flush()
