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
from dataclasses import dataclass
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
OUTPUT = f"s3://{BUCKET}/out/labels.parquet"


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


@dataclass
class Store:
    """The test server's bucket (emptied for each test), and batchrun run against it from
    a working folder (where a store's output keeps its checkpoint)."""

    client: Any
    env: dict[str, str]
    cwd: Path
    config: Path  # the fast test config

    def run(
        self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        # No key, and no AWS setting but the test's (a developer's profile must not leak in).
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        full = {k: v for k, v in inherited.items() if not k.endswith("_API_KEY")}
        full.update(env if env is not None else self.env)
        return subprocess.run(
            [sys.executable, "-m", "batchrun", *args],
            cwd=cwd or self.cwd, env=full, capture_output=True, text=True, timeout=120,
            check=False,
        )  # fmt: skip

    def put_prompts(self, key: str, rows: list[dict[str, Any]]) -> None:
        local = write_jsonl(self.cwd / "upload.jsonl", rows)
        self.client.put_object(Bucket=BUCKET, Key=key, Body=local.read_bytes())

    def two_files(self, n: int = 30) -> list[dict[str, Any]]:
        """n prompts in two objects under prompts/ (read in sorted key order)."""
        rows = prompts(n)
        self.put_prompts("prompts/b.jsonl", rows[n // 2 :])
        self.put_prompts("prompts/a.jsonl", rows[: n // 2])
        return rows

    def read(self, key: str) -> list[dict[str, Any]]:
        body = self.client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        return pq.read_table(io.BytesIO(body)).to_pylist()

    def objects(self, prefix: str = "") -> list[str]:
        listing = self.client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
        return sorted(o["Key"] for o in listing)


@pytest.fixture
def store(s3_env: dict[str, str], fast_config: Path, tmp_path: Path) -> Store:
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
    return Store(client, s3_env, tmp_path, fast_config)


@pytest.fixture
def slow_server() -> Iterator[MockServer]:
    """The mock endpoint answering in 50 ms: a run lasts long enough to be killed in."""
    with MockServer(MockSettings(seed=7, latency=0.05)) as server:
        yield server


def job_args(server: MockServer, config: Path, *extra: str) -> list[str]:
    return [
        "run", f"s3://{BUCKET}/prompts/", "-o", OUTPUT, "--base-url", server.base_url,
        "-c", str(config), "--no-progress", *extra,
    ]  # fmt: skip


def with_output(args: list[str], output: str) -> list[str]:
    return [output if a == OUTPUT else a for a in args]


def assert_all_answered(rows: list[dict[str, Any]], inputs: list[dict[str, Any]]) -> None:
    assert [r["id"] for r in rows] == [i["id"] for i in inputs]
    for row, source in zip(rows, inputs, strict=True):
        assert row["status"] == "ok" and row["content"] == f"Answer to: {source['prompt']}"


def assert_bought_once(server: MockServer, n: int) -> None:
    stats = server.stats()
    assert len(stats["prompts"]) == n
    assert all(p["billed"] == 1 for p in stats["prompts"].values()), "a request was billed twice"


# ---------------------------------------------------------------- whole jobs


def test_job_from_a_prefix_to_an_object(store: Store, mock_server: MockServer) -> None:
    inputs = store.two_files()
    result = store.run(*job_args(mock_server, store.config))
    assert result.returncode == 0, result.stderr
    assert_all_answered(store.read("out/labels.parquet"), inputs)
    assert f"output: {OUTPUT}" in result.stderr
    # The checkpoint stays on the local disk, in the working folder, named after the URL.
    assert (store.cwd / "s3-nightly-out-labels.parquet.checkpoint.sqlite").is_file()
    assert not [k for k in store.objects() if k.endswith(".tmp") or "probe" in k]
    # status and report find the job from the output's URL.
    status = store.run("status", OUTPUT)
    assert status.returncode == 0, status.stderr
    assert "30 ok" in status.stdout.replace(",", "")


def test_killed_mid_run_resumes_from_the_local_checkpoint(
    store: Store, slow_server: MockServer
) -> None:
    inputs = store.two_files(40)
    args = job_args(slow_server, store.config, "--concurrency", "2")  # a commit per row or two
    killed = store.run(*args, env={**store.env, "BATCHRUN_CRASH_AT": "commit:3"})
    assert killed.returncode == -9, killed.stderr
    assert "out/labels.parquet" not in store.objects()  # nothing uploaded by the killed run
    done_at_kill = json.loads(store.run("status", "--json", OUTPUT).stdout)["states"]["done"]
    assert 0 < done_at_kill < 40
    billed_at_kill = billed_when_quiet(slow_server)
    resumed = store.run(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert_all_answered(store.read("out/labels.parquet"), inputs)
    # The resume bought exactly the rows the checkpoint did not hold, and no accepted id
    # was sent again.
    stats = slow_server.stats()
    assert stats["billed"] - billed_at_kill == 40 - done_at_kill
    assert stats["resubmitted_while_pending"] == 0


def test_killed_during_the_upload_leaves_no_object_and_uploads_on_resume(
    store: Store, mock_server: MockServer
) -> None:
    inputs = store.two_files()
    # What a kill between an upload's write and its move leaves: removed by the next upload.
    store.client.put_object(Bucket=BUCKET, Key="out/.labels.parquet.4242.tmp", Body=b"half")
    args = job_args(mock_server, store.config)
    killed = store.run(*args, env={**store.env, "BATCHRUN_CRASH_AT": "upload:1"})
    assert killed.returncode == -9, killed.stderr
    assert "out/labels.parquet" not in store.objects()  # never half an object under the name
    resumed = store.run(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert_all_answered(store.read("out/labels.parquet"), inputs)
    assert_bought_once(mock_server, 30)  # the resume uploaded; it bought nothing again
    assert not [k for k in store.objects() if k.endswith(".tmp")]


def test_a_changed_input_object_is_refused_on_resume(store: Store, slow_server: MockServer) -> None:
    inputs = store.two_files(40)
    args = job_args(slow_server, store.config, "--concurrency", "2")
    killed = store.run(*args, env={**store.env, "BATCHRUN_CRASH_AT": "commit:3"})
    assert killed.returncode == -9
    changed = [dict(r, prompt=r["prompt"] + " Be brief.") for r in inputs[:20]]
    store.put_prompts("prompts/a.jsonl", changed)  # same key, new content (a new ETag)
    sent_before = slow_server.stats()["submissions"]
    refused = store.run(*args)
    assert refused.returncode == 2, refused.stderr
    assert "other inputs" in refused.stderr
    assert slow_server.stats()["submissions"] == sent_before


def test_an_unwritable_output_is_refused_before_anything_is_sent(
    store: Store, mock_server: MockServer
) -> None:
    store.two_files()
    nowhere = "s3://no-such-bucket/out/labels.parquet"
    result = store.run(*with_output(job_args(mock_server, store.config), nowhere))
    assert result.returncode == 2, result.stderr
    assert nowhere in result.stderr and "Traceback" not in result.stderr
    assert mock_server.stats()["submissions"] == 0
    assert not list(store.cwd.glob("*.checkpoint.sqlite"))


def test_a_missing_input_prefix_names_the_url(store: Store, mock_server: MockServer) -> None:
    result = store.run(*job_args(mock_server, store.config))
    assert result.returncode == 2, result.stderr
    assert f"s3://{BUCKET}/prompts/" in result.stderr and "not found" in result.stderr


def test_partitioned_output_in_the_store_reads_back_in_input_order(
    store: Store, mock_server: MockServer
) -> None:
    inputs = store.two_files(25)
    # An earlier, longer output's last part, and a part upload a kill cut short: both go.
    for stale in ("part-00007.parquet", ".part-00001.parquet.4242.tmp"):
        store.client.put_object(Bucket=BUCKET, Key=f"out/labels/{stale}", Body=b"old")
    args = job_args(mock_server, store.config, "--output-partition-rows", "10")
    result = store.run(*with_output(args, f"s3://{BUCKET}/out/labels"))
    assert result.returncode == 0, result.stderr
    parts = [k for k in store.objects("out/labels/") if k.endswith(".parquet")]
    assert parts == [f"out/labels/part-0000{i}.parquet" for i in range(3)]
    objects = {k for k in store.objects("out/labels/") if not k.endswith("/")}  # no dir marker
    assert objects == {*parts, "out/labels/_SUCCESS"}  # the stale part and leftover are gone
    assert [len(store.read(k)) for k in parts] == [10, 10, 5]
    assert_all_answered([r for key in parts for r in store.read(key)], inputs)


def test_uploaded_checkpoint_answers_the_next_night_with_reuse(
    store: Store, mock_server: MockServer
) -> None:
    inputs = store.two_files(12)
    first, second = store.cwd / "first", store.cwd / "second"
    first.mkdir()
    second.mkdir()
    config = store.cwd / "job.toml"
    config.write_text(store.config.read_text() + "checkpoint_upload = true\n")
    result = store.run(*job_args(mock_server, config), cwd=first)
    assert result.returncode == 0, result.stderr
    assert "out/labels.parquet.checkpoint.sqlite" in store.objects("out/")
    # The next night: a fresh machine (an empty working folder), the same prompts.
    sent = mock_server.stats()["submissions"]
    reuse = f"{OUTPUT}.checkpoint.sqlite"
    again = job_args(mock_server, store.config, "--reuse", reuse)
    result = store.run(*with_output(again, f"s3://{BUCKET}/out/labels-2.parquet"), cwd=second)
    assert result.returncode == 0, result.stderr
    assert mock_server.stats()["submissions"] == sent  # every answer came from the copy
    rows = store.read("out/labels-2.parquet")
    assert_all_answered(rows, inputs)
    assert all(r["reused"] for r in rows)
    assert not [p for p in second.iterdir() if p.name.startswith(".reuse")]


def test_endpoint_url_in_the_config_reaches_the_store_without_the_variable(
    store: Store, mock_server: MockServer
) -> None:
    inputs = store.two_files(6)
    env = dict(store.env)
    endpoint = env.pop("AWS_ENDPOINT_URL")
    config = store.cwd / "job.toml"
    config.write_text(store.config.read_text() + f'endpoint_url = "{endpoint}"\n')
    result = store.run(*job_args(mock_server, config), env=env)
    assert result.returncode == 0, result.stderr
    assert_all_answered(store.read("out/labels.parquet"), inputs)


def test_export_writes_to_the_store(store: Store, mock_server: MockServer) -> None:
    rows = prompts(5)
    local = write_jsonl(store.cwd / "in.jsonl", rows)
    out = store.cwd / "out.parquet"
    ran = store.run(
        "run", str(local), "-o", str(out), "--base-url", mock_server.base_url,
        "-c", str(store.config),
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    exported = store.run("export", str(out), "-o", f"s3://{BUCKET}/x.parquet")
    assert exported.returncode == 0, exported.stderr
    assert_all_answered(store.read("x.parquet"), rows)
