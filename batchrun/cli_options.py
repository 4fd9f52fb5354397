"""The `run` command's options: one click option per run setting, with its help text; and
the `mock-server` command's, one per setting of the mock endpoint.

Apart from `-c`, `-p` and `-v`, which `cli.run` handles itself, each option's destination
is the config key of the same name (`--max-attempts` gives `max_attempts`), so `cli.run`
hands them to `config.build_config` as they are. An option not given is None, so that the
config file or RunConfig's default applies; the help texts therefore name the defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click


def run_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate `fn` with every `run` option, in `--help` order."""
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
            "--base-url",
            multiple=True,
            help="Endpoint base, ending before /chat/completions; several: a pool sharing "
            "every other setting. [default: NVIDIA]",
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
            "--fresh/--no-fresh",
            default=None,
            help="Discard an existing checkpoint and start over. [default: no-fresh]",
        ),
        click.option(
            "--retry-failed/--no-retry-failed",
            default=None,
            help="On resume, try failed rows again. [default: no-retry-failed]",
        ),
        click.option("--limit", type=int, help="First N rows only."),
        click.option(
            "--repeats",
            type=int,
            help="Sample every input row N times (ids ID#0..ID#N-1, a seed each). [default: 1]",
        ),
        click.option(
            "--require-space/--no-require-space",
            default=None,
            help="Refuse to start (exit 2) when the disk has less free space than the job "
            "needs, instead of warning. [default: no-require-space]",
        ),
        click.option(
            "--dry-run", is_flag=True, default=None, help="Validate and count; send nothing."
        ),
        click.option(
            "--progress/--no-progress",
            default=None,
            help="Progress bar on stderr. [default: when stderr is a TTY; else status lines]",
        ),
        click.option(
            "--progress-interval",
            type=float,
            help="Seconds between status lines when stderr is not a TTY (cron, CI). [default: 60]",
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
            "--output-partition-rows",
            type=int,
            help="Write the Parquet output as a folder of part files of N rows each.",
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


def mock_server_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate `fn` with every `mock-server` option (the mock's settings), in `--help` order."""
    options = [
        click.option("--host", default="127.0.0.1", show_default=True),
        click.option("--port", default=8000, show_default=True, help="0 picks a free port."),
        click.option("--latency", default=0.0, show_default=True, help="Seconds per answer."),
        click.option(
            "--latency-jitter", default=0.0, show_default=True, help="Plus up to this many seconds."
        ),
        click.option(
            "--p202",
            default=0.0,
            show_default=True,
            help="Share of requests answered 202 (then polled).",
        ),
        click.option(
            "--pending-polls",
            default=1,
            show_default=True,
            help="Polls answered 202 before such a result is ready.",
        ),
        click.option("--p429", default=0.0, show_default=True),
        click.option("--p500", default=0.0, show_default=True),
        click.option("--p502", default=0.0, show_default=True),
        click.option("--p503", default=0.0, show_default=True),
        click.option("--p504", default=0.0, show_default=True),
        click.option(
            "--p-drop",
            default=0.0,
            show_default=True,
            help="Share of connections closed without an answer.",
        ),
        click.option(
            "--rpm-limit",
            default=0,
            show_default=True,
            help="429 past this many requests in 60 s (0: off).",
        ),
        click.option(
            "--ratelimit-headers",
            is_flag=True,
            help="With --rpm-limit: OpenAI's x-ratelimit-*-requests headers on chat answers.",
        ),
        click.option(
            "--slots",
            default=0,
            show_default=True,
            help="Batch slots: past this many at once, latency grows with the load (0: off).",
        ),
        click.option(
            "--overload",
            default=0,
            show_default=True,
            help="503 for a request arriving while this many are being generated (0: never).",
        ),
        click.option(
            "--retry-after",
            default=1.0,
            show_default=True,
            help="Retry-After on 429s (negative: none).",
        ),
        click.option(
            "--no-status-route",
            is_flag=True,
            help="/v1/status answers a plain 404 (tests the fallback).",
        ),
        click.option(
            "--expire-after",
            default=0.0,
            show_default=True,
            help="Forget ids not polled for this long (0: never).",
        ),
        click.option(
            "--require-key-env",
            default=None,
            help="Require the key in this env var (401 otherwise).",
        ),
        click.option(
            "--reasoning-field",
            type=click.Choice(["reasoning_content", "reasoning", "think"]),
            default="reasoning_content",
            show_default=True,
        ),
        click.option("--seed", type=int, default=None, help="Seed for the fault rates."),
        click.option(
            "--ready-file",
            type=click.Path(dir_okay=False),
            help="Write the base URL here once listening.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn
