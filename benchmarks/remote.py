"""Remote input: batchrun's peak RSS reading the memory section's largest prompt set from an
S3-compatible store, against the same file read from the local disk, in the same run.

The store is moto's server (benchmarks/s3_server.py) on 127.0.0.1 in its own process; the
file is uploaded once with boto3's `upload_file` (multipart, as a big file goes to S3). The
remote job reads `s3://BUCKET/prompts-N.jsonl` through batchrun's own path (pyarrow's
S3FileSystem, the standard AWS_* variables naming the endpoint and the keys); everything else
(the fixed endpoint, the flags, a local output and checkpoint) is the memory section's. Local
and remote runs alternate (local, remote, local, remote, ...) so that the machine's noise
falls on both alike; the ratio is of the medians.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

from .clients import FIXED, batchrun_command, check_batchrun
from .context import FAST_OPTIONS, Context, fmt, fmt_median, log
from .datasets import prompt_set
from .endpoints import HERE, Server, _spawn, _wait_ready, batchrun_exe
from .measure import Run, load_average, run, spread
from .report import Section, Verdict

BUCKET = "batchrun-bench"
TARGET = 1.1
# moto accepts any keys; explicit ones keep the job off profile files and instance roles.
AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def start_s3(workdir: Path) -> Server:
    """moto's S3 server on a free port of 127.0.0.1, in its own process."""
    ready = workdir / "s3-server.url"
    ready.unlink(missing_ok=True)
    log_file = workdir / "s3-server.log"
    cmd = [sys.executable, str(HERE / "s3_server.py"), "--ready-file", str(ready)]
    proc = _spawn(cmd, log_file)
    return Server("moto", proc, _wait_ready(proc, ready, log_file, "the moto S3 server"), log_file)


def upload(endpoint: str, local: Path, key: str) -> float:
    """`local` into BUCKET/key (the bucket created first); the seconds it took."""
    import boto3

    started = time.perf_counter()
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=AWS["AWS_DEFAULT_REGION"],
        aws_access_key_id=AWS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS["AWS_SECRET_ACCESS_KEY"],
    )
    client.create_bucket(Bucket=BUCKET)
    client.upload_file(str(local), BUCKET, key)
    size = client.head_object(Bucket=BUCKET, Key=key)["ContentLength"]
    if size != local.stat().st_size:
        raise RuntimeError(f"uploaded {size} bytes of {local.stat().st_size}")
    return time.perf_counter() - started


def _env_prefix(env: dict[str, str]) -> str:
    return " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())


def remote_memory(ctx: Context) -> Section:
    rows = ctx.size("memory_rows")[-1]
    rounds = ctx.size("remote_rounds")
    where = ctx.workdir / "remote"
    where.mkdir(parents=True, exist_ok=True)
    prompts = prompt_set(ctx.data, rows)
    server = ctx.fixed_endpoint()
    before = load_average()
    s3 = start_s3(where)
    try:
        log(f"remote: moto at {s3.base_url}; uploading {prompts.name}")
        took = upload(s3.base_url, prompts, prompts.name)
        log(f"remote: uploaded {prompts.stat().st_size / 2**20:.0f} MiB in {took:.1f}s")
        url = f"s3://{BUCKET}/{prompts.name}"
        aws = {**AWS, "AWS_ENDPOINT_URL": s3.base_url}
        env = {**os.environ, **aws}
        section = Section(
            "Memory: remote input",
            f"The memory section's {rows:,}-row prompt set ({prompts.stat().st_size / 2**20:.0f} "
            "MiB of JSONL) read by `batchrun run` from the local disk and from an S3-compatible "
            "store (moto's server, benchmarks/s3_server.py, on 127.0.0.1 in its own process; "
            "the file uploaded once with boto3's multipart `upload_file`, "
            f"{took:.1f} s), with the memory section's endpoint and flags and a local output. "
            "The remote job finds the store through the standard AWS_ENDPOINT_URL, "
            "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_DEFAULT_REGION variables. Runs "
            f"alternate local, remote, local, remote ({rounds} of each), so the machine's "
            "noise falls on both; peak RSS is each process's own ru_maxrss (benchmarks/"
            "launch.py), and each output is checked (every row, in order, ok).",
            headers=["round", "input", "peak RSS MiB", "wall s", "rows/s", "output check"],
        )
        peaks: dict[str, list[float]] = {"local": [], "remote": []}
        walls: dict[str, list[float]] = {"local": [], "remote": []}
        for n in range(1, rounds + 1):
            for name, source, child_env in (
                ("local", str(prompts), None),
                ("remote", url, env),
            ):
                out = where / f"{name}-{n}.parquet"
                cmd = batchrun_command(prompts, out, server.base_url, *FAST_OPTIONS)
                cmd[len(batchrun_exe()) + 1] = source  # after `run`: the path, or the URL
                if n == 1:
                    shown = " ".join(cmd)
                    section.commands.append(
                        shown if child_env is None else f"{_env_prefix(aws)} {shown}"
                    )
                log(f"remote: round {n}, {name} input ({source})")
                result = run(cmd, where / f"{name}-{n}", timeout=3600, env=child_env)
                error = _check(result, out, rows)
                ctx.record(f"{name} input, {rows:,} rows, round {n}", error)
                if error is None:
                    peaks[name].append(result.maxrss_mib)
                    walls[name].append(result.wall_s)
                section.rows.append(
                    [
                        str(n),
                        name,
                        fmt(result.maxrss_mib, 1),
                        fmt(result.wall_s, 1),
                        fmt(rows / result.wall_s, 0),
                        "ok" if error is None else f"FAILED: {error}",
                    ]
                )
                log(
                    f"remote: {name} peak {result.maxrss_mib:.1f} MiB in {result.wall_s:.1f}s"
                    + ("" if error is None else f" (FAILED: {error})")
                )
    finally:
        s3.stop()
    section.load = f"{before} → {load_average()}"
    _verdicts(section, rows, rounds, peaks, walls)
    return section


def _check(result: Run, out: Path, rows: int) -> str | None:
    if result.timed_out:
        return "timed out"
    if result.rc != 0:
        return f"exit {result.rc}: {result.stderr.strip()[-300:]}"
    return check_batchrun(out, rows, FIXED, result.stderr)


def _verdicts(
    section: Section,
    rows: int,
    rounds: int,
    peaks: dict[str, list[float]],
    walls: dict[str, list[float]],
) -> None:
    target = f"peak RSS, remote {rows:,}-row input ≤ {TARGET}× local"
    if len(peaks["local"]) != rounds or len(peaks["remote"]) != rounds:
        section.verdicts.append(Verdict(target, "a run failed its check", None))
        return
    local, remote = spread(peaks["local"])[1], spread(peaks["remote"])[1]
    ratio = remote / local
    measured = (
        f"{ratio:.3f}× (median {remote:.1f} MiB remote / {local:.1f} MiB local, "
        f"{rounds} run{'s' if rounds > 1 else ''} of each)"
    )
    section.verdicts.append(Verdict(target, measured, ratio <= TARGET))
    wall_ratio = spread(walls["remote"])[1] / spread(walls["local"])[1]
    section.notes.append(
        f"wall time (no target): median {fmt_median(walls['local'])} s local, "
        f"{fmt_median(walls['remote'])} s remote ({wall_ratio:.2f}×)"
    )
