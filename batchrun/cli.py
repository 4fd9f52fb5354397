"""The `batchrun` command. Thin: parse, call the library, print, map errors to exit codes.

Exit codes (SPEC.md): 0 all rows ok; 1 some rows failed/invalid or the job stopped itself;
2 usage or config error (nothing sent); 3 authentication; 130 interrupted.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .config import build_config, load_toml, parse_param
from .errors import EXIT_USAGE, BatchrunError, ConfigError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _fail(exc: BatchrunError) -> None:
    click.echo(f"batchrun: error: {exc}", err=True)
    sys.exit(exc.exit_code)


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


def _run_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "-o", "--output", help="Result Parquet file (required, here or in the config)."
        ),
        click.option(
            "-c",
            "--config",
            "config_path",
            type=click.Path(dir_okay=False),
            help="TOML config file.",
        ),
        click.option(
            "--base-url", help="Endpoint base, ending before /chat/completions. [default: NVIDIA]"
        ),
        click.option("--model", help="Model name. [default: qwen/qwen3.5-397b-a17b]"),
        click.option(
            "--api-key-env",
            help="Environment variable holding the API key. [default: NVIDIA_API_KEY]",
        ),
        click.option(
            "--rpm", type=int, help="Max requests started in any 60 s window. [default: 40]"
        ),
        click.option(
            "--tpm",
            type=int,
            help="Max tokens per 60 s (estimated, corrected by usage). [default: off]",
        ),
        click.option(
            "--concurrency",
            type=int,
            help="Max requests in flight (202 polls not counted). [default: 16]",
        ),
        click.option(
            "--max-attempts", type=int, help="Tries per row for retryable failures. [default: 6]"
        ),
        click.option("--timeout", type=float, help="Seconds per HTTP call. [default: 600]"),
        click.option(
            "--hold-seconds", type=int, help="NVCF-POLL-SECONDS on submits and polls. [default: 30]"
        ),
        click.option(
            "--max-pending", type=int, help="Max request ids awaiting their result. [default: 256]"
        ),
        click.option(
            "--status-url",
            help="Where 202 results are polled. [default: {base_url}/status/{request_id}]",
        ),
        click.option(
            "--stream/--no-stream", default=None, help="SSE streaming. [default: no-stream]"
        ),
        click.option(
            "--thinking/--no-thinking",
            default=None,
            help="chat_template_kwargs.enable_thinking. [default: thinking]",
        ),
        click.option(
            "-p",
            "--param",
            "params",
            multiple=True,
            metavar="KEY=VALUE",
            help="Request body field; VALUE parsed as JSON if it parses; null removes a default.",
        ),
        click.option("--checkpoint", help="SQLite checkpoint. [default: OUTPUT.checkpoint.sqlite]"),
        click.option(
            "--fresh",
            is_flag=True,
            default=None,
            help="Discard an existing checkpoint and start over.",
        ),
        click.option(
            "--retry-failed", is_flag=True, default=None, help="On resume, try failed rows again."
        ),
        click.option("--limit", type=int, help="First N rows only."),
        click.option(
            "--dry-run", is_flag=True, default=None, help="Validate and count; send nothing."
        ),
        click.option(
            "--progress/--no-progress",
            default=None,
            help="Progress bar on stderr. [default: when stderr is a TTY]",
        ),
        click.option(
            "--grace",
            type=float,
            help="Seconds to let in-flight work finish after Ctrl-C. [default: 30]",
        ),
        click.option(
            "--tools",
            "tools_file",
            type=click.Path(dir_okay=False),
            help="JSON file of OpenAI tool definitions sent with every row.",
        ),
        click.option(
            "--output-format",
            type=click.Choice(["parquet", "openai-jsonl", "both"]),
            help="parquet, openai-jsonl (OpenAI Batch API output lines), or both. "
            "[default: parquet]",
        ),
        click.option(
            "--log-json",
            type=click.Path(dir_okay=False),
            help="Append one JSON event per line here (rows, retries, 429 pauses, totals).",
        ),
        click.option(
            "--reuse",
            type=click.Path(dir_okay=False),
            help="An earlier checkpoint or output: identical requests are answered from it.",
        ),
        click.option(
            "--offline",
            is_flag=True,
            default=None,
            help="Send nothing: rows without a reused or stored answer fail (not in cache).",
        ),
        click.option(
            "--max-cost",
            type=float,
            metavar="USD",
            help="Stop (resumable) before spending past this; needs [pricing] in the config.",
        ),
        click.option(
            "--parse-json",
            is_flag=True,
            default=None,
            help="Parse each answer's JSON (a ```json fence is fine) into a `parsed` column.",
        ),
        click.option(
            "--extract",
            metavar="A,B,...",
            help="Top-level fields of the answer's JSON, each as a typed column of its own.",
        ),
        click.option(
            "--engine",
            type=click.Choice(["local", "ray"]),
            help="Run here, or on a Ray cluster (batchrun[ray] extra). [default: local]",
        ),
        click.option(
            "--ray-address",
            metavar="ADDR|local",
            help="Ray cluster to use (HOST:PORT), or local for a private one. [default: local]",
        ),
        click.option(
            "--workers",
            type=int,
            help="Ray workers, each with its share of the limits. [default: 2]",
        ),
        click.option(
            "--max-failures",
            metavar="N|N%",
            help="Stop (resumable, exit 1) once N rows, or N% of the rows finished, failed.",
        ),
        click.option(
            "--allow-insecure-http",
            is_flag=True,
            default=None,
            help="Allow the key over plain http to a non-loopback host.",
        ),
        click.option(
            "-v", "--verbose", count=True, help="-v: info, -vv: debug (never logs the key)."
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@main.command(context_settings=CONTEXT)
@click.argument("inputs", nargs=-1, type=click.Path())
@_run_options
def run(
    inputs: tuple[str, ...],
    config_path: str | None,
    params: tuple[str, ...],
    verbose: int,
    **options: Any,
) -> None:
    """Run or resume a job: every row of INPUTS (.jsonl, .jsonl.gz, .parquet, or folders of
    them) through the endpoint, results to OUTPUT. Run the same command again to resume."""
    from .job import dry_run, run_job
    from .progress import ProgressBar, format_dry_run, format_summary

    _setup_logging(verbose)
    try:
        cfg = _config(inputs, config_path, params, options)
        if cfg.dry_run:
            click.echo(format_dry_run(dry_run(cfg)))
            return
        show = sys.stderr.isatty() if cfg.progress is None else cfg.progress
        result = run_job(cfg, watcher=ProgressBar() if show else None)
    except BatchrunError as exc:
        _fail(exc)
    except KeyboardInterrupt:  # before the engine's own handlers (reading inputs) or after
        click.echo(
            "\nbatchrun: interrupted. The checkpoint is consistent: run the same command to "
            "resume.",
            err=True,
        )
        sys.exit(130)
    click.echo(format_summary(result), err=True)
    # Everything alive now lives until exit: frozen, the interpreter's last collection
    # skips it (about 0.1 s with pyarrow and pandas loaded).
    gc.freeze()
    sys.exit(result.exit_code)


def _config(
    inputs: tuple[str, ...],
    config_path: str | None,
    params: tuple[str, ...],
    options: dict[str, Any],
) -> Any:
    file_values = load_toml(config_path) if config_path else {}
    cli_values = dict(options)
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
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--ids", default=20, show_default=True, help="How many pending request ids to list.")
def status(path: str, as_json: bool, ids: int) -> None:
    """Where a job stands: counts, tokens, pending request ids.

    PATH is a checkpoint, or an output file (its checkpoint is found beside it)."""
    from .inspect import format_status, job_status

    try:
        info = job_status(Path(path), ids=ids)
    except BatchrunError as exc:
        _fail(exc)
    click.echo(json.dumps(info, indent=2) if as_json else format_status(info))


@main.command(context_settings=CONTEXT)
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False), help="File to write."
)
@click.option(
    "--output-format",
    type=click.Choice(["parquet", "openai-jsonl", "both"]),
    default="parquet",
    show_default=True,
)
def export(checkpoint: str, output: str, output_format: str) -> None:
    """Write the results in CHECKPOINT to OUTPUT, even while the job runs."""
    from .results import write_outputs
    from .store import Store

    try:
        store = Store.open(Path(checkpoint))
        try:
            paths, _ = write_outputs(store, Path(output), output_format)
        finally:
            store.close()
    except BatchrunError as exc:
        _fail(exc)
    click.echo("wrote " + ", ".join(str(p) for p in paths), err=True)


@main.command(context_settings=CONTEXT)
@click.argument("output", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False),
    help="Also write a self-contained HTML page with plots (needs matplotlib).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def report(output: str, html_path: str | None, as_json: bool) -> None:
    """Sum a job up: rows by status, tokens, cost, latency, throughput, failures by cause.

    OUTPUT is an output Parquet file (its checkpoint is read too when it is beside it), or a
    checkpoint whose output file can be found."""
    from .report import format_report, summarize, write_html

    try:
        summary = summarize(Path(output))
        click.echo(json.dumps(summary, indent=2) if as_json else format_report(summary))
        if html_path:
            write_html(summary, Path(output), Path(html_path))
    except BatchrunError as exc:
        _fail(exc)
    if html_path:
        click.echo(f"wrote {html_path}", err=True)


@main.command("mock-server", context_settings=CONTEXT)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, help="0 picks a free port.")
@click.option("--latency", default=0.0, show_default=True, help="Seconds per answer.")
@click.option(
    "--latency-jitter", default=0.0, show_default=True, help="Plus up to this many seconds."
)
@click.option(
    "--p202", default=0.0, show_default=True, help="Share of requests answered 202 (then polled)."
)
@click.option(
    "--pending-polls",
    default=1,
    show_default=True,
    help="Polls answered 202 before such a result is ready.",
)
@click.option("--p429", default=0.0, show_default=True)
@click.option("--p500", default=0.0, show_default=True)
@click.option("--p502", default=0.0, show_default=True)
@click.option("--p503", default=0.0, show_default=True)
@click.option("--p504", default=0.0, show_default=True)
@click.option(
    "--p-drop",
    default=0.0,
    show_default=True,
    help="Share of connections closed without an answer.",
)
@click.option(
    "--rpm-limit",
    default=0,
    show_default=True,
    help="429 past this many requests in 60 s (0: off).",
)
@click.option(
    "--retry-after", default=1.0, show_default=True, help="Retry-After on 429s (negative: none)."
)
@click.option(
    "--no-status-route", is_flag=True, help="/v1/status answers a plain 404 (tests the fallback)."
)
@click.option(
    "--expire-after",
    default=0.0,
    show_default=True,
    help="Forget ids not polled for this long (0: never).",
)
@click.option(
    "--require-key-env", default=None, help="Require the key in this env var (401 otherwise)."
)
@click.option(
    "--reasoning-field",
    type=click.Choice(["reasoning_content", "reasoning", "think"]),
    default="reasoning_content",
    show_default=True,
)
@click.option("--seed", type=int, default=None, help="Seed for the fault rates.")
@click.option(
    "--ready-file", type=click.Path(dir_okay=False), help="Write the base URL here once listening."
)
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
@click.option("-v", "--verbose", count=True)
def sweep(sweep_file: str, junit_xml: str | None, verbose: int, **options: Any) -> None:
    """Run a grid of jobs (datasets x models x values) and write summary.parquet/.md.

    Exit 0 only when every cell passes."""
    from .sweep import load_sweep
    from .sweep import sweep as run_sweep

    _setup_logging(verbose)
    try:
        spec = load_sweep(Path(sweep_file), options)
        reports, written = run_sweep(spec, Path(junit_xml) if junit_xml else None)
    except BatchrunError as exc:
        _fail(exc)
    passed = sum(r.passed for r in reports)
    click.echo(
        f"sweep: {passed} of {len(reports)} cells passed; wrote " + ", ".join(map(str, written)),
        err=True,
    )
    sys.exit(0 if passed == len(reports) else 1)
