"""Where a job's files go when its inputs or output are URLs, and partitioned output: the
rules (no sockets), a whole job through fsspec's in-memory store (the path every scheme
pyarrow lacks takes), and a folder of parts on the local disk."""

from __future__ import annotations

from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from batchrun import remote
from batchrun.config import build_config, load_toml
from batchrun.dataset import expand_inputs, read_rows
from batchrun.errors import ConfigError
from batchrun.job import run_job
from batchrun.paths import default_checkpoint_path, job_path
from batchrun.testing import MockServer

from .conftest import prompts, write_jsonl

fsspec = pytest.importorskip("fsspec")


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("s3://bucket/key.jsonl", True),
        ("gs://bucket/prefix/", True),
        ("hf://datasets/org/name/train.parquet", True),
        ("memory://x/y.jsonl", True),
        ("file:///tmp/x.jsonl", False),
        ("C:\\data\\x.jsonl", False),
        ("data/x.jsonl", False),
        ("/abs/x.jsonl", False),
    ],
)
def test_what_counts_as_a_store_url(location: str, expected: bool) -> None:
    assert remote.is_remote(location) is expected


def test_an_uploads_leftover_names_what_it_was_for() -> None:
    assert remote.leftover_target(".labels.parquet.4242.tmp") == "labels.parquet"
    assert remote.leftover_target(".part-00001.parquet.7.tmp") == "part-00001.parquet"
    for other in ("labels.parquet", ".labels.parquet.tmp", ".x.pid.tmp", "..1.tmp"):
        assert remote.leftover_target(other) is None


def test_a_store_output_keeps_its_checkpoint_in_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    url = "s3://bkt/out/labels.parquet"
    expected = tmp_path / "s3-bkt-out-labels.parquet.checkpoint.sqlite"
    assert default_checkpoint_path(url) == expected
    assert job_path(url) == expected  # status / export / report find it from the URL
    assert default_checkpoint_path("s3://other/out/labels.parquet") != expected
    assert default_checkpoint_path("out/x.parquet") == Path("out/x.parquet.checkpoint.sqlite")


def test_config_paths_are_relative_to_the_file_but_urls_are_kept(tmp_path: Path) -> None:
    config = tmp_path / "conf" / "job.toml"
    config.parent.mkdir()
    config.write_text(
        'inputs = ["s3://bkt/prompts/", "local.jsonl"]\noutput = "gs://bkt/out/x.parquet"\n'
        'reuse = "s3://bkt/old.checkpoint.sqlite"\n'
    )
    data = load_toml(config)
    assert data["inputs"] == ["s3://bkt/prompts/", str(config.parent / "local.jsonl")]
    assert data["output"] == "gs://bkt/out/x.parquet"
    assert data["reuse"] == "s3://bkt/old.checkpoint.sqlite"


@pytest.fixture
def memory_store() -> object:
    store = fsspec.filesystem("memory")
    if store.ls("/"):  # the memory store is one per process: empty it for each test
        store.rm("/", recursive=True)
    return store


def test_inputs_in_a_store_list_sorted_and_are_fingerprinted_by_the_store(
    memory_store: object,
) -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe("/data/b.jsonl", b'{"prompt": "second"}\n')
    fs.pipe("/data/a.jsonl", b'{"prompt": "first"}\n{"prompt": "also first"}\n')
    fs.pipe("/data/notes.txt", b"not an input")
    files = expand_inputs(["memory://data/"])
    assert [f.name for f in files] == ["a.jsonl", "b.jsonl"]
    rows = list(read_rows(files))
    assert [(r.loc, r.data) for r in rows] == [
        ("a.jsonl:1", {"prompt": "first"}),
        ("a.jsonl:2", {"prompt": "also first"}),
        ("b.jsonl:1", {"prompt": "second"}),
    ]
    first = [remote.content_id(f.remote) for f in files if f.remote]
    fs.pipe("/data/a.jsonl", b'{"prompt": "changed"}\n')
    second = [remote.content_id(f.remote) for f in expand_inputs(["memory://data/"]) if f.remote]
    assert first[1] == second[1] and first[0] != second[0]


def test_a_missing_or_unsupported_object_is_named(memory_store: object) -> None:
    with pytest.raises(ConfigError, match="memory://nothing/here.jsonl: input not found"):
        expand_inputs(["memory://nothing/here.jsonl"])
    fsspec.filesystem("memory").pipe("/d/x.txt", b"x")
    with pytest.raises(ConfigError, match="memory://d/x.txt: unsupported input type"):
        expand_inputs(["memory://d/x.txt"])


def test_a_whole_job_from_and_to_a_store_through_fsspec(
    memory_store: object,
    mock_server: MockServer,
    fast_config: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    fs = fsspec.filesystem("memory")
    inputs = prompts(12)
    local = write_jsonl(tmp_path / "in.jsonl", inputs)
    fs.pipe("/jobs/in.jsonl.gz", __import__("gzip").compress(local.read_bytes()))
    cfg = build_config(
        load_toml(fast_config),
        {
            "inputs": ["memory://jobs/in.jsonl.gz"],
            "output": "memory://jobs/out/labels.parquet",
            "output_format": "both",
            "base_url": mock_server.base_url,
            "progress": False,
        },
    )
    result = run_job(cfg)
    assert result.exit_code == 0
    assert result.outputs == ["memory://jobs/out/labels.parquet", "memory://jobs/out/labels.jsonl"]
    with fs.open("/jobs/out/labels.parquet", "rb") as fh:
        rows = pq.read_table(fh).to_pylist()
    assert [r["id"] for r in rows] == [i["id"] for i in inputs]
    assert all(r["status"] == "ok" for r in rows)
    assert len(fs.cat("/jobs/out/labels.jsonl").splitlines()) == 12
    assert not [p for p in fs.find("/jobs") if p.endswith(".tmp")]
    assert cfg.checkpoint_path.parent == tmp_path and cfg.checkpoint_path.is_file()
    assert not list(tmp_path.glob(".upload-*"))  # the staged copies are gone


def run_partitioned(
    mock_server: MockServer, fast_config: Path, inputs: Path, out: Path, rows: int, **more: object
) -> int:
    cfg = build_config(
        load_toml(fast_config),
        {
            "inputs": [str(inputs)],
            "output": str(out),
            "output_partition_rows": rows,
            "base_url": mock_server.base_url,
            "progress": False,
            **more,
        },
    )
    return run_job(cfg).exit_code


def test_partitioned_output_is_a_folder_that_reads_as_one_table_in_input_order(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    inputs = prompts(23)
    source = write_jsonl(tmp_path / "in.jsonl", inputs)
    out = tmp_path / "labels"
    assert run_partitioned(mock_server, fast_config, source, out, 10) == 0
    assert sorted(p.name for p in out.iterdir()) == [f"part-0000{i}.parquet" for i in range(3)]
    assert [pq.read_metadata(p).num_rows for p in sorted(out.iterdir())] == [10, 10, 3]
    table = ds.dataset(out, format="parquet").to_table()
    assert table.column("id").to_pylist() == [i["id"] for i in inputs]
    import pandas as pd

    assert pd.read_parquet(out)["id"].tolist() == [i["id"] for i in inputs]
    # Rewritten whole: a smaller job leaves no part of the bigger one behind.
    fewer = write_jsonl(tmp_path / "fewer.jsonl", inputs[:5])
    assert run_partitioned(mock_server, fast_config, fewer, out, 10, fresh=True) == 0
    assert sorted(p.name for p in out.iterdir()) == ["part-00000.parquet"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".labels.")]


def test_a_partitioned_output_can_be_reused(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    inputs = prompts(8)
    source = write_jsonl(tmp_path / "in.jsonl", inputs)
    assert run_partitioned(mock_server, fast_config, source, tmp_path / "first", 3) == 0
    sent = mock_server.stats()["submissions"]
    again = run_partitioned(
        mock_server, fast_config, source, tmp_path / "second", 3, reuse=str(tmp_path / "first")
    )
    assert again == 0 and mock_server.stats()["submissions"] == sent


def test_a_file_where_a_partitioned_output_goes_is_refused(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", prompts(2))
    (tmp_path / "labels").write_text("a file")
    with pytest.raises(ConfigError, match="is a file; partitioned output is a folder"):
        run_partitioned(mock_server, fast_config, source, tmp_path / "labels", 3)
    assert mock_server.stats()["submissions"] == 0
