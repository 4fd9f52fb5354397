"""The `batchrun` command. Thin: parse, call the library, print, map errors to exit codes.

Exit codes (SPEC.md): 0 all rows ok; 1 some rows failed/invalid or the job stopped itself;
2 usage or config error (nothing sent); 3 authentication; 130 interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import signal
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .cli_options import mock_server_options, run_options
from .config import RunConfig, build_config, load_toml, parse_param
from .credentials import read_keys
from .endpoints import from_urls
from .errors import EXIT_USAGE, BatchrunError, ConfigError
from .paths import job_path

if TYPE_CHECKING:
    from .job import Watcher

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _fail(exc: BatchrunError) -> None:
    _say(f"batchrun: error: {exc}")
    sys.exit(exc.exit_code)


@contextlib.contextmanager
def _named_damage(path: Path) -> Iterator[None]:
    """A page of the checkpoint that does not read back, said as such (not a traceback)."""
    from .checkpoint import checkpoint_for
    from .checkpoint.damage import damage_error

    try:
        yield
    except sqlite3.DatabaseError as exc:
        damaged = damage_error(exc, checkpoint_for(path) or path)
        if damaged is None:
            raise
        raise damaged from None


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if verbose < 3:
        logging.getLogger("asyncio").setLevel(logging.WARNING)


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="batchrun", prog_name="batchrun")
def main() -> None:
    """Run prompt datasets through OpenAI-compatible chat endpoints (NVIDIA's first),
    rate-limited and resumable."""


@main.command(context_settings=CONTEXT)
@click.argument("inputs", nargs=-1, type=click.Path())
@run_options
def run(
    inputs: tuple[str, ...],
    config_path: str | None,
    params: tuple[str, ...],
    verbose: int,
    **options: Any,
) -> None:
    """Run or resume a job: every row of INPUTS (.jsonl, .jsonl.gz, .parquet, or folders of
    them) through the endpoint, results to OUTPUT. Run it again (less --fresh) to resume."""
    from .intake import dry_run
    from .job import run_job
    from .summary import (
        config_one_offs,
        dry_run_fails,
        format_dry_run,
        format_summary,
        next_command,
    )

    _setup_logging(verbose)
    # Closing the terminal ends the run as SIGTERM does (before the engine's own handlers:
    # as Ctrl-C while the inputs are read).
    signal.signal(signal.SIGHUP, signal.default_int_handler)
    undo: tuple[str, ...] = ()  # what the next command needs to undo a config's one-offs
    try:
        cfg = _config(inputs, config_path, params, options)
        undo = config_one_offs(cfg)
        if cfg.dry_run:
            if not cfg.offline:
                read_keys(cfg)  # a rehearsal fails as the run would: no key, exit 3
            report = dry_run(cfg)
            click.echo(format_dry_run(report))
            failing = dry_run_fails(report, cfg.max_failures)
            if failing:
                _say(f"batchrun: the real run would fail: {failing}")
                sys.exit(1)
            return
        result = run_job(cfg, watcher=_watcher(cfg))
    except BatchrunError as exc:
        _fail(exc)
    except KeyboardInterrupt:  # before the engine's own handlers (reading inputs) or after
        _say(
            "\nbatchrun: interrupted. The checkpoint is consistent; resume with: "
            + next_command(undo=undo)
        )
        sys.exit(130)
    _say(format_summary(result, undo=undo))
    # Everything alive now lives until exit: frozen, the interpreter's last collection
    # skips it (with pyarrow and pandas loaded, that is most of the heap).
    gc.freeze()
    sys.exit(result.exit_code)


def _watcher(cfg: RunConfig) -> Watcher | None:
    """A bar on a terminal, status lines in a log, or nothing (--no-progress)."""
    from .budget import Pricing
    from .progress import ProgressBar, StatusLines

    if cfg.progress is False:
        return None
    if cfg.progress or sys.stderr.isatty():
        return ProgressBar()
    return StatusLines(cfg.progress_interval, Pricing.from_config(cfg.pricing))


def _say(text: str) -> None:
    """A message on stderr, unless stderr is gone (a closed terminal): the run's output and
    exit code matter more than its last words."""
    with contextlib.suppress(OSError):
        click.echo(text, err=True)


def _config(
    inputs: tuple[str, ...],
    config_path: str | None,
    params: tuple[str, ...],
    options: dict[str, Any],
) -> RunConfig:
    file_values = load_toml(config_path) if config_path else {}
    cli_values = dict(options)
    cli_values.update(from_urls(cli_values.pop("base_url", ())))
    if inputs:
        cli_values["inputs"] = list(inputs)
    if params:
        cli_values["params"] = dict(parse_param(p) for p in params)
    cfg = build_config(file_values, cli_values, source=config_path or "config")
    if not cfg.inputs:
        raise ConfigError(
            "no INPUT files: give them as arguments or as inputs = [...] in the config"
        )
    if not cfg.output:
        raise ConfigError("no output file: pass -o/--output or set output = ... in the config")
    return cfg


@main.command(context_settings=CONTEXT)
@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--ids", default=20, show_default=True, help="How many pending request ids to list.")
def status(path: str, as_json: bool, ids: int) -> None:
    """Where a job stands: counts, tokens, pending request ids.

    PATH is a checkpoint, or a job's output path, written yet or not (its checkpoint is
    found beside it, as `run` puts it)."""
    from .status import format_status, job_status

    try:
        with _named_damage(job_path(path)):
            info = job_status(job_path(path), ids=ids)
    except BatchrunError as exc:
        _fail(exc)
    click.echo(json.dumps(info, indent=2) if as_json else format_status(info))


@main.command(context_settings=CONTEXT)
@click.argument("job", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(), help="Where to write.")
@click.option(
    "--output-format",
    type=click.Choice(["parquet", "openai-jsonl", "both"]),
    help="[default: the job's own]",
)
def export(job: str, output: str, output_format: str | None) -> None:
    """Write what `run` would write now (its format, parsed and extracted columns) to OUTPUT,
    even while the job runs. JOB is a checkpoint or the job's output path."""
    from .checkpoint import require_checkpoint
    from .destination import export as export_job

    try:
        with _named_damage(job_path(job)):
            paths, _ = export_job(require_checkpoint(job_path(job)), output, output_format)
    except BatchrunError as exc:
        _fail(exc)
    _say("wrote " + ", ".join(str(p) for p in paths))


@main.command(context_settings=CONTEXT)
@click.argument("output", type=click.Path())
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False),
    help="Also write a self-contained HTML page with plots (needs matplotlib).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def report(output: str, html_path: str | None, as_json: bool) -> None:
    """Sum a job up: rows by status, tokens, cost, latency, throughput, failures by cause.

    OUTPUT is a job's output path (its checkpoint too when beside it; one not written yet
    is read from the checkpoint), the checkpoint itself, or a sweep's output_dir."""
    from .report import summarize
    from .report_html import write_html
    from .report_text import format_report
    from .sweep_report import is_sweep_folder, sweep_report

    try:
        if is_sweep_folder(Path(output)):  # a sweep's output_dir: its cells and graders
            return click.echo(sweep_report(Path(output), as_json=as_json, html=html_path))
        with _named_damage(job_path(output)):
            summary = summarize(job_path(output))
        click.echo(json.dumps(summary, indent=2) if as_json else format_report(summary))
        if html_path:
            write_html(summary, Path(output), Path(html_path))
    except BatchrunError as exc:
        _fail(exc)
    if html_path:
        click.echo(f"wrote {html_path}", err=True)


@main.command(context_settings=CONTEXT)
@click.argument("path", type=click.Path(dir_okay=False, exists=True))
@click.option(
    "--from-output",
    type=click.Path(dir_okay=False, exists=True),
    help="The job's last Parquet output, for lost answers. [default: the job's output]",
)
def recover(path: str, from_output: str | None) -> None:
    """Salvage a damaged checkpoint (PATH, or a job's output path) into a new one at its
    path, keeping the damaged file as PATH.damaged; lost answers come from the job's last
    output. Then run the job again: it sends only what is still missing."""
    from .checkpoint import default_checkpoint, output_for
    from .checkpoint.salvage import recover as salvage
    from .checkpoint.salvage import settings_of
    from .lock import CheckpointLock

    checkpoint = Path(path)
    if checkpoint.suffix == ".parquet" and default_checkpoint(checkpoint).is_file():
        checkpoint = default_checkpoint(checkpoint)  # the job's output was given
    try:
        with CheckpointLock(checkpoint):
            output = (
                Path(from_output)
                if from_output
                else output_for(checkpoint, settings_of(checkpoint))
            )
            done = salvage(checkpoint, output)
    except BatchrunError as exc:
        _fail(exc)
    if not done.problems:
        _say(f"batchrun: {checkpoint} is intact (SQLite's integrity check found nothing wrong)")
        return
    _say(done.describe())


@main.command("mock-server", context_settings=CONTEXT)
@mock_server_options
def mock_server(
    host: str,
    port: int,
    no_status_route: bool,
    require_key_env: str | None,
    ready_file: str | None,
    retry_after: float,
    **rates: Any,
) -> None:
    """Serve a local NVIDIA-compatible endpoint (for demos and tests; no key needed)."""
    import os

    from .testing import MockSettings, serve

    key = os.environ.get(require_key_env) if require_key_env else None
    if require_key_env and not key:
        _fail(ConfigError(f"--require-key-env: {require_key_env} is not set"))
    settings = MockSettings(
        status_route=not no_status_route,
        api_key=key,
        retry_after=None if retry_after < 0 else retry_after,
        **rates,
    )

    def ready(url: str) -> None:
        click.echo(f"mock endpoint listening on {url}", err=True)
        if ready_file:
            Path(ready_file).write_text(url + "\n")

    try:
        asyncio.run(serve(settings, host, port, on_ready=ready))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        click.echo(f"batchrun: error: cannot listen on {host}:{port}: {exc.strerror}", err=True)
        sys.exit(EXIT_USAGE)


@main.command(context_settings=CONTEXT)
@click.argument("sweep_file", type=click.Path(dir_okay=False))
@click.option("--junit-xml", type=click.Path(dir_okay=False), help="Write one test case per cell.")
@click.option(
    "--max-failure-rate", type=float, help="A cell fails above this share of failed rows."
)
@click.option("--score-field", help="Score this field of the parsed answer against `expected`.")
@click.option("--base-url", help="Endpoint for every cell (over the sweep file).")
@click.option("--offline", is_flag=True, default=None, help="Send nothing (replay stored answers).")
@click.option("--fresh", is_flag=True, default=None, help="Start every cell over.")
@click.option("--baseline", type=click.Path(file_okay=False), help="Earlier sweep to compare with.")
@click.option("-v", "--verbose", count=True)
def sweep(sweep_file: str, junit_xml: str | None, verbose: int, **options: Any) -> None:
    """Run a grid of jobs (datasets x models x values), grade them, write summary.parquet/.md;
    exit 0 only when every cell passes its gates (with --baseline DIR: and none regressed)."""
    from .sweep import sweep as run_sweep
    from .sweep_file import load_sweep

    _setup_logging(verbose)
    try:
        spec = load_sweep(Path(sweep_file), options)
        reports, written = run_sweep(spec, junit_xml, options["baseline"])
    except BatchrunError as exc:
        _fail(exc)
    passed = sum(r.passed for r in reports)
    click.echo(
        f"sweep: {passed} of {len(reports)} cells passed; wrote " + ", ".join(map(str, written)),
        err=True,
    )
    sys.exit(0 if passed == len(reports) else 1)
