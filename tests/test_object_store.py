"""Inputs and outputs in an object store: whole jobs from and to a real S3 protocol server
(moto's server mode on 127.0.0.1), killed mid-run and mid-upload and resumed, a changed input
object refused, an unwritable output refused before anything is sent; partitioned output.
Nothing here reaches a real cloud: every request goes to the loopback server."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from batchrun.testing import MockServer, MockSettings

from .conftest import billed_when_quiet, prompts, write_jsonl

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

pytestmark = pytest.mark.slow

BUCKET = "nightly"


@pytest.fixture(scope="module")
def s3_env() -> Iterator[dict[str, str]]:
    """An S3-compatible server on a free loopback port, and the environment a job needs to
    reach it through the standard AWS variables."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    yield env
    server.stop()


@pytest.fixture
def s3(s3_env: dict[str, str]) -> Any:
    """A client of the test server with an empty bucket."""
    client = boto3.client(
        "s3",
        endpoint_url=s3_env["AWS_ENDPOINT_URL"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    names = [b["Name"] for b in client.list_buckets().get("Buckets", [])]
    if BUCKET in names:
        for obj in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=obj["Key"])
    else:
        client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture
def slow_server() -> Iterator[MockServer]:
    """The mock endpoint answering in 50 ms: a run lasts long enough to be killed in."""
    with MockServer(MockSettings(seed=7, latency=0.05)) as server:
        yield server


def batchrun(
    cwd: Path, env: dict[str, str], *args: str, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`batchrun ARGS` run from `cwd` (where a store's output keeps its checkpoint)."""
    full = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    full.update(env)
    full.update(extra_env or {})
    return subprocess.run(
        [sys.executable, "-m", "batchrun", *args],
        cwd=cwd,
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def put_prompts(s3: Any, key: str, rows: list[dict[str, Any]], tmp_path: Path) -> None:
    local = write_jsonl(tmp_path / "upload.jsonl", rows)
    s3.put_object(Bucket=BUCKET, Key=key, Body=local.read_bytes())


def read_object(s3: Any, key: str) -> list[dict[str, Any]]:
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return pq.read_table(io.BytesIO(body)).to_pylist()


def keys(s3: Any, prefix: str = "") -> list[str]:
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return sorted(o["Key"] for o in listing)


def job_args(server: MockServer, config: Path, *extra: str) -> list[str]:
    return [
        "run",
        f"s3://{BUCKET}/prompts/",
        "-o",
        f"s3://{BUCKET}/out/labels.parquet",
        "--base-url",
        server.base_url,
        "-c",
        str(config),
        "--no-progress",
        *extra,
    ]


def two_files(s3: Any, tmp_path: Path, n: int = 30) -> list[dict[str, Any]]:
    """n prompts in two objects under prompts/ (read in sorted key order)."""
    rows = prompts(n)
    put_prompts(s3, "prompts/b.jsonl", rows[n // 2 :], tmp_path)
    put_prompts(s3, "prompts/a.jsonl", rows[: n // 2], tmp_path)
    return rows


def assert_all_answered(rows: list[dict[str, Any]], inputs: list[dict[str, Any]]) -> None:
    assert [r["id"] for r in rows] == [i["id"] for i in inputs]
    for row, source in zip(rows, inputs, strict=True):
        assert row["status"] == "ok" and row["content"] == f"Answer to: {source['prompt']}"


def assert_bought_once(server: MockServer, n: int) -> None:
    stats = server.stats()
    assert len(stats["prompts"]) == n
    assert all(p["billed"] == 1 for p in stats["prompts"].values()), "a request was billed twice"


# ---------------------------------------------------------------- whole jobs


def test_job_from_a_prefix_to_an_object(
    s3: Any,
    s3_env: dict[str, str],
    mock_server: MockServer,
    fast_config: Path,
    tmp_path: Path,
) -> None:
    inputs = two_files(s3, tmp_path)
    result = batchrun(tmp_path, s3_env, *job_args(mock_server, fast_config))
    assert result.returncode == 0, result.stderr
    assert_all_answered(read_object(s3, "out/labels.parquet"), inputs)
    assert "output: s3://nightly/out/labels.parquet" in result.stderr
    # The checkpoint stays on the local disk, in the working folder, named after the URL.
    assert (tmp_path / "s3-nightly-out-labels.parquet.checkpoint.sqlite").is_file()
    assert not [k for k in keys(s3) if k.endswith(".tmp") or "probe" in k]
    # status and report find the job from the output's URL.
    status = batchrun(tmp_path, s3_env, "status", f"s3://{BUCKET}/out/labels.parquet")
    assert status.returncode == 0, status.stderr
    assert "30 ok" in status.stdout.replace(",", "")


def test_killed_mid_run_resumes_from_the_local_checkpoint(
    s3: Any,
    s3_env: dict[str, str],
    slow_server: MockServer,
    fast_config: Path,
    tmp_path: Path,
) -> None:
    inputs = two_files(s3, tmp_path, 40)
    args = job_args(slow_server, fast_config, "--concurrency", "2")  # a commit per row or two
    killed = batchrun(tmp_path, s3_env, *args, extra_env={"BATCHRUN_CRASH_AT": "commit:3"})
    assert killed.returncode == -9, killed.stderr
    assert "out/labels.parquet" not in keys(s3)  # nothing uploaded by the killed run
    status = batchrun(tmp_path, s3_env, "status", "--json", f"s3://{BUCKET}/out/labels.parquet")
    done_at_kill = json.loads(status.stdout)["states"]["done"]
    assert 0 < done_at_kill < 40
    billed_at_kill = billed_when_quiet(slow_server)
    resumed = batchrun(tmp_path, s3_env, *args)
    assert resumed.returncode == 0, resumed.stderr
    assert_all_answered(read_object(s3, "out/labels.parquet"), inputs)
    # The resume bought exactly the rows the checkpoint did not hold, and no accepted id
    # was sent again.
    stats = slow_server.stats()
    assert stats["billed"] - billed_at_kill == 40 - done_at_kill
    assert stats["resubmitted_while_pending"] == 0


def test_killed_during_the_upload_leaves_no_object_and_uploads_on_resume(
    s3: Any,
    s3_env: dict[str, str],
    mock_server: MockServer,
    fast_config: Path,
    tmp_path: Path,
) -> None:
    inputs = two_files(s3, tmp_path)
    args = job_args(mock_server, fast_config)
    killed = batchrun(tmp_path, s3_env, *args, extra_env={"BATCHRUN_CRASH_AT": "upload:1"})
    assert killed.returncode == -9, killed.stderr
    assert "out/labels.parquet" not in keys(s3)  # never half an object under the final name
    resumed = batchrun(tmp_path, s3_env, *args)
    assert resumed.returncode == 0, resumed.stderr
    assert_all_answered(read_object(s3, "out/labels.parquet"), inputs)
    assert_bought_once(mock_server, 30)  # the resume uploaded; it bought nothing again
    assert not [k for k in keys(s3) if k.endswith(".tmp")]


def test_a_changed_input_object_is_refused_on_resume(
    s3: Any,
    s3_env: dict[str, str],
    slow_server: MockServer,
    fast_config: Path,
    tmp_path: Path,
) -> None:
    inputs = two_files(s3, tmp_path, 40)
    args = job_args(slow_server, fast_config, "--concurrency", "2")  # a commit per row or two
    killed = batchrun(tmp_path, s3_env, *args, extra_env={"BATCHRUN_CRASH_AT": "commit:3"})
    assert killed.returncode == -9
    changed = [dict(r, prompt=r["prompt"] + " Be brief.") for r in inputs[:20]]
    put_prompts(s3, "prompts/a.jsonl", changed, tmp_path)  # same key, new content (ETag)
    sent_before = slow_server.stats()["submissions"]
    refused = batchrun(tmp_path, s3_env, *args)
    assert refused.returncode == 2, refused.stderr
    assert "other inputs" in refused.stderr
    assert slow_server.stats()["submissions"] == sent_before


def test_an_unwritable_output_is_refused_before_anything_is_sent(
    s3: Any,
    s3_env: dict[str, str],
    mock_server: MockServer,
    fast_config: Path,
    tmp_path: Path,
) -> None:
    two_files(s3, tmp_path)
    args = job_args(mock_server, fast_config)
    args[args.index("-o") + 1] = "s3://no-such-bucket/out/labels.parquet"
    result = batchrun(tmp_path, s3_env, *args)
    assert result.returncode == 2, result.stderr
    assert "s3://no-such-bucket/out/labels.parquet" in result.stderr
    assert "Traceback" not in result.stderr
    assert mock_server.stats()["submissions"] == 0
    assert not list(tmp_path.glob("*.checkpoint.sqlite"))


def test_a_missing_input_prefix_names_the_url(
    s3: Any, s3_env: dict[str, str], mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    result = batchrun(tmp_path, s3_env, *job_args(mock_server, fast_config))
    assert result.returncode == 2, result.stderr
    assert f"s3://{BUCKET}/prompts/" in result.stderr and "not found" in result.stderr


def test_partitioned_output_in_the_store_reads_back_in_input_order(
    s3: Any,
    s3_env: dict[str, str],
    mock_server: MockServer,
    fast_config: Path,
    tmp_path: Path,
) -> None:
    inputs = two_files(s3, tmp_path, 25)
    args = job_args(mock_server, fast_config, "--output-partition-rows", "10")
    args[args.index("-o") + 1] = f"s3://{BUCKET}/out/labels"
    result = batchrun(tmp_path, s3_env, *args)
    assert result.returncode == 0, result.stderr
    parts = [k for k in keys(s3, "out/labels/") if k.endswith(".parquet")]
    assert parts == [f"out/labels/part-0000{i}.parquet" for i in range(3)]
    assert "out/labels/_SUCCESS" in keys(s3, "out/labels/")
    rows = [r for key in parts for r in read_object(s3, key)]
    assert [len(read_object(s3, k)) for k in parts] == [10, 10, 5]
    assert_all_answered(rows, inputs)


def test_uploaded_checkpoint_answers_the_next_night_with_reuse(
    s3: Any,
    s3_env: dict[str, str],
    mock_server: MockServer,
    fast_config: Path,
    tmp_path: Path,
) -> None:
    inputs = two_files(s3, tmp_path, 12)
    first = tmp_path / "first"
    first.mkdir()
    config = tmp_path / "job.toml"
    config.write_text(fast_config.read_text() + "checkpoint_upload = true\n")
    result = batchrun(first, s3_env, *job_args(mock_server, config))
    assert result.returncode == 0, result.stderr
    assert "out/labels.parquet.checkpoint.sqlite" in keys(s3, "out/")
    # The next night: a fresh machine (an empty working folder), the same prompts.
    second = tmp_path / "second"
    second.mkdir()
    sent = mock_server.stats()["submissions"]
    reuse = f"s3://{BUCKET}/out/labels.parquet.checkpoint.sqlite"
    again = job_args(mock_server, fast_config, "--reuse", reuse)
    again[again.index("-o") + 1] = f"s3://{BUCKET}/out/labels-2.parquet"
    result = batchrun(second, s3_env, *again)
    assert result.returncode == 0, result.stderr
    assert mock_server.stats()["submissions"] == sent  # every answer came from the copy
    rows = read_object(s3, "out/labels-2.parquet")
    assert_all_answered(rows, inputs)
    assert all(r["reused"] for r in rows)
    assert not [p for p in second.iterdir() if p.name.startswith(".reuse")]


def test_endpoint_url_in_the_config_reaches_the_store_without_the_variable(
    s3: Any,
    s3_env: dict[str, str],
    mock_server: MockServer,
    fast_config: Path,
    tmp_path: Path,
) -> None:
    inputs = two_files(s3, tmp_path, 6)
    env = dict(s3_env)
    endpoint = env.pop("AWS_ENDPOINT_URL")
    config = tmp_path / "job.toml"
    config.write_text(fast_config.read_text() + f'endpoint_url = "{endpoint}"\n')
    stripped = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "batchrun", *job_args(mock_server, config)],
        cwd=tmp_path,
        env={**stripped, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert_all_answered(read_object(s3, "out/labels.parquet"), inputs)


def test_export_writes_to_the_store(
    s3: Any,
    s3_env: dict[str, str],
    mock_server: MockServer,
    fast_config: Path,
    tmp_path: Path,
) -> None:
    rows = prompts(5)
    local = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.parquet"
    ran = batchrun(
        tmp_path,
        s3_env,
        "run",
        str(local),
        "-o",
        str(out),
        "--base-url",
        mock_server.base_url,
        "-c",
        str(fast_config),
    )
    assert ran.returncode == 0, ran.stderr
    exported = batchrun(tmp_path, s3_env, "export", str(out), "-o", f"s3://{BUCKET}/x.parquet")
    assert exported.returncode == 0, exported.stderr
    assert_all_answered(read_object(s3, "x.parquet"), rows)
