"""A sweep file read and checked (`batchrun sweep`'s input; running it is sweep.py's): its
keys, the files it names, its graders (grader_spec.py) and every cell's run settings, built
before the first cell runs so that a mistake is exit 2 with nothing sent. Messages name the
file, table and key as written (`sweep.toml: [grid] max_tokens`, `sweep.toml: [run.params]
top_p`).
"""

from __future__ import annotations

import difflib
import itertools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from .errors import ConfigError
from .grader_spec import GraderSpec, implicit_grader, read_graders
from .remote import is_remote

SWEEP_KEYS = frozenset(
    {"output_dir", "datasets", "models", "config", "score_field", "max_failure_rate", "run", "grid"}
    | {"graders", "alpha", "pass_at"}
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
    # What grades each cell: the [[graders]], or the implicit exact match of score_field.
    graders: list[GraderSpec] = field(default_factory=list)
    alpha: float = 0.05  # the baseline comparison's significance level
    pass_at: tuple[int, ...] = ()  # k of pass@k to report (with repeats, also their number)


@dataclass
class Cell:
    name: str
    dataset: str
    model: str
    values: dict[str, Any]  # this cell's grid values
    cfg: RunConfig


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
        graders=_graders(path, data, layers, score_field),
        alpha=_alpha(path, data.get("alpha", 0.05)),
        pass_at=_pass_at(path, data.get("pass_at", [])),
    )


def _graders(
    path: Path,
    data: Mapping[str, Any],
    layers: list[tuple[dict[str, Any], Source]],
    score_field: str | None,
) -> list[GraderSpec]:
    """The [[graders]]; without them, exact match of the answer (or of parsed[score_field])
    against `expected`, as sweeps always scored."""
    if "graders" not in data:
        return [implicit_grader(score_field)]
    if score_field:
        raise ConfigError(
            f"{path}: score_field (or --score-field) is for a sweep without [[graders]]; with "
            'them, give the grader field = "..." (kind = "exact" is what score_field did)'
        )
    return read_graders(path, data["graders"], layers)


def _alpha(path: Path, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise ConfigError(f"{path}: alpha must be a probability between 0 and 1, got {value!r}")
    return float(value)


def _pass_at(path: Path, value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in value
    ):
        raise ConfigError(f"{path}: pass_at must be a list of whole numbers >= 1, got {value!r}")
    return tuple(sorted(set(value)))


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
        full = ref if is_remote(ref) else os.path.normpath(path.parent / ref)
        if not is_remote(full) and not Path(full).exists():
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
        if any(g.field for g in spec.graders):
            own["parse_json"] = True  # a field is read from the parsed answer
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
