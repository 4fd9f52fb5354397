"""batchrun/formats.py: CSV / TSV, Arrow IPC (Feather) and Hugging Face dataset directories as
inputs, through dataset.py's expand_inputs and read_rows as a job reads them."""

from __future__ import annotations

import gzip
import io
import itertools
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

from batchrun import formats
from batchrun.dataset import InputFile, SourceRow, expand_inputs, read_rows
from batchrun.errors import ConfigError
from batchrun.intake import input_digests
from batchrun.payloads import prepare_row
from batchrun.testing import MockServer

from .conftest import prompts, run_cli, write_jsonl


@pytest.fixture
def hf(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The real `datasets` package (the dev extra), to write what Hugging Face writes; it
    reads these at its first import and must never go online."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets

    datasets.disable_progress_bars()
    return datasets


def rows_of(*paths: Path | str) -> list[SourceRow]:
    return list(read_rows(expand_inputs([str(p) for p in paths])))


def located(rows: list[SourceRow]) -> list[tuple[str, Any]]:
    return [(r.loc, r.data if r.error is None else r.error) for r in rows]


def write_csv(path: Path, text: str) -> Path:
    path.write_bytes(text.encode())
    return path


class CountingReader(io.RawIOBase):
    """A binary stream that counts the bytes read from it: what a remote object looks like."""

    def __init__(self, data: bytes) -> None:
        self.inner = io.BytesIO(data)
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self.inner.readinto(buffer)
        self.read_bytes += n
        return n


# ---------------------------------------------------------------- CSV and TSV


def test_csv_records_become_rows_of_text_located_by_line(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "in.csv", 'id,prompt,2024\n007,123,5\n8,"Hi, there",\n9,"",6\n')
    assert located(rows_of(path)) == [
        # All text: the id keeps its zeros, a prompt of digits stays a prompt, a column
        # named by digits keeps its name.
        ("in.csv:2", {"id": "007", "prompt": "123", "2024": "5"}),
        # An empty field is missing; a quoted empty one is an empty string.
        ("in.csv:3", {"id": "8", "prompt": "Hi, there", "2024": None}),
        ("in.csv:4", {"id": "9", "prompt": "", "2024": "6"}),
    ]
    assert prepare_row(rows_of(path)[0]).row_id == "007"


def test_words_that_look_like_nulls_stay_text(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "in.csv", "prompt,note\nNA,null\nnan,N/A\n")
    assert [r.data for r in rows_of(path)] == [
        {"prompt": "NA", "note": "null"},
        {"prompt": "nan", "note": "N/A"},
    ]


def test_a_record_with_the_wrong_column_count_is_an_error_row_in_its_place(
    tmp_path: Path,
) -> None:
    text = "id,prompt\na,one\nb,two,extra\nc,three\nd\ne,five\n"
    rows = rows_of(write_csv(tmp_path / "in.csv", text))
    assert [r.loc for r in rows] == [f"in.csv:{n}" for n in range(2, 7)]
    assert [r.data["id"] if r.data else None for r in rows] == ["a", None, "c", None, "e"]
    assert rows[1].error == "in.csv:3: wrong number of columns (the header has 2, this record 3)"
    assert rows[3].error == "in.csv:5: wrong number of columns (the header has 2, this record 1)"
    # The job keeps it as an invalid row with that location, never sent.
    prepared = prepare_row(rows[1])
    assert prepared.error is not None and prepared.error.startswith("in.csv:3: ")


def test_bad_records_keep_their_place_when_pyarrow_reports_them_a_block_ahead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small blocks: pyarrow parses ahead of the batches it hands out, so bad records arrive
    # before the good ones that precede them; every record must still be in file order.
    monkeypatch.setattr(formats, "CSV_BLOCK_BYTES", 64)
    lines = ["n,prompt"] + [f"{i},p{i}" + (",extra" if i % 7 == 0 else "") for i in range(2, 300)]
    rows = rows_of(write_csv(tmp_path / "in.csv", "\n".join(lines) + "\n"))
    assert [r.loc for r in rows] == [f"in.csv:{i}" for i in range(2, 300)]
    for i, row in enumerate(rows, 2):
        if i % 7 == 0:
            assert row.data is None and row.error is not None and "this record 3" in row.error
        else:
            assert row.data == {"n": str(i), "prompt": f"p{i}"}


def test_tsv_is_split_on_tabs_only(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "in.tsv", "id\tprompt\nt1\tA, B and C\nt2\tx\ty\n")
    assert located(rows_of(path)) == [
        ("in.tsv:2", {"id": "t1", "prompt": "A, B and C"}),
        ("in.tsv:3", "in.tsv:3: wrong number of columns (the header has 2, this record 3)"),
    ]


def test_gzipped_csv_and_tsv(tmp_path: Path) -> None:
    (tmp_path / "a.csv.gz").write_bytes(gzip.compress(b"id,prompt\na1,x\n"))
    (tmp_path / "b.tsv.gz").write_bytes(gzip.compress(b"id\tprompt\nb1\ty\n"))
    assert located(rows_of(tmp_path)) == [
        ("a.csv.gz:2", {"id": "a1", "prompt": "x"}),
        ("b.tsv.gz:2", {"id": "b1", "prompt": "y"}),
    ]


def test_a_byte_order_mark_does_not_become_part_of_the_first_column(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbfid,prompt\r\nx1,hello\r\n")
    assert located(rows_of(path)) == [("excel.csv:2", {"id": "x1", "prompt": "hello"})]


def test_quoted_line_breaks_stay_in_the_value_and_later_lines_stay_true(tmp_path: Path) -> None:
    # A record spanning lines is located at its first line; the next record at its own.
    text = 'id,prompt\na,"one\ntwo\nthree"\nb,"x\r\ny",extra\nc,plain\n'
    rows = rows_of(write_csv(tmp_path / "in.csv", text))
    assert located(rows) == [
        ("in.csv:2", {"id": "a", "prompt": "one\ntwo\nthree"}),
        ("in.csv:5", "in.csv:5: wrong number of columns (the header has 2, this record 3)"),
        ("in.csv:7", {"id": "c", "prompt": "plain"}),
    ]


def test_blank_lines_and_empty_records_are_skipped_but_counted(tmp_path: Path) -> None:
    rows = rows_of(write_csv(tmp_path / "in.csv", "id,prompt\n\na,x\n,\n\nb,y\n,\n"))
    assert located(rows) == [
        ("in.csv:3", {"id": "a", "prompt": "x"}),
        ("in.csv:6", {"id": "b", "prompt": "y"}),
    ]


@pytest.mark.parametrize("text", ["", "id,prompt\n", "id,prompt", "\ufeffid,prompt\r\n"])
def test_a_csv_without_records_gives_no_rows(tmp_path: Path, text: str) -> None:
    assert rows_of(write_csv(tmp_path / "in.csv", text)) == []


def test_a_record_that_is_not_utf8_is_an_error_row_and_the_rest_is_read(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(b"id,prompt\na,ok\nb,caf\xe9\nc,fine\n")
    assert located(rows_of(path)) == [
        ("in.csv:2", {"id": "a", "prompt": "ok"}),
        ("in.csv:3", "in.csv:3: record is not valid UTF-8"),
        ("in.csv:4", {"id": "c", "prompt": "fine"}),
    ]


def test_a_file_that_is_no_csv_at_all_is_a_config_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "photo.csv"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe\x00")
    with pytest.raises(ConfigError, match="photo.csv"):
        rows_of(path)


def test_a_header_naming_a_column_twice_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'prompt' appears twice"):
        rows_of(write_csv(tmp_path / "in.csv", "prompt,prompt\na,b\n"))


def test_an_empty_header_cell_still_names_its_column(tmp_path: Path) -> None:
    # pandas' to_csv writes one above its index.
    rows = rows_of(write_csv(tmp_path / "in.csv", ",prompt\n0,hi\n"))
    assert [r.data for r in rows] == [{"column1": "0", "prompt": "hi"}]


def test_csv_reads_from_an_open_stream_a_block_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(formats, "CSV_BLOCK_BYTES", 16 * 1024)
    data = "id,prompt\n" + "".join(f"r{i},question {i} {'x' * 40}\n" for i in range(80_000))
    source = CountingReader(data.encode())
    rows = formats.read_csv("remote.csv", source, ",")
    first = list(itertools.islice(rows, 3))
    assert [(r.loc, r.data["id"] if r.data else None) for r in first] == [
        ("remote.csv:2", "r0"),
        ("remote.csv:3", "r1"),
        ("remote.csv:4", "r2"),
    ]
    # Three rows did not need the 5 MB file: pyarrow reads a few dozen blocks ahead at most.
    assert source.read_bytes < len(data) // 4
    rows.close()


def test_a_record_too_long_for_the_blocks_ends_the_file_with_an_error_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(formats, "CSV_BLOCK_BYTES", 1024)
    text = "id,prompt\n" + "a,short\n" * 3 + f"b,{'x' * 5000}\n" + "c,short\n" * 500
    rows = rows_of(write_csv(tmp_path / "in.csv", text))
    assert [r.data["id"] if r.data else None for r in rows[:3]] == ["a", "a", "a"]
    last = rows[-1]
    assert last.data is None and last.error is not None
    assert last.loc.startswith("in.csv:") and "a record longer than" in last.error


# ---------------------------------------------------------------- Arrow IPC / Feather


def test_feather_file_rows_in_batches_located_by_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(formats, "ROWS_PER_SLICE", 3)
    path = tmp_path / "in.feather"
    feather.write_feather(pa.Table.from_pylist(prompts(10)), path, chunksize=4)
    rows = rows_of(path)
    assert [r.loc for r in rows] == [f"in.feather:{i}" for i in range(1, 11)]
    assert [r.data for r in rows] == prompts(10)


@pytest.mark.parametrize("suffix", [".arrow", ".ipc"])
def test_arrow_stream_format_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"in{suffix}"
    table = pa.Table.from_pylist(prompts(5))
    with ipc.new_stream(path, table.schema) as writer:
        writer.write_table(table, max_chunksize=2)
    rows = rows_of(path)
    assert [r.loc for r in rows] == [f"in{suffix}:{i}" for i in range(1, 6)]
    assert [r.data for r in rows] == prompts(5)


def test_arrow_reads_an_open_stream_and_an_open_file() -> None:
    table = pa.Table.from_pylist(prompts(3))
    stream, file = io.BytesIO(), io.BytesIO()
    with ipc.new_stream(stream, table.schema) as writer:
        writer.write_table(table)
    with ipc.new_file(file, table.schema) as writer:
        writer.write_table(table)
    # A stream that cannot seek can only be the stream format.
    unseekable = CountingReader(stream.getvalue())
    assert [r.data for r in formats.read_arrow("s.arrow", unseekable)] == prompts(3)
    opened = pa.BufferReader(file.getvalue())
    assert [r.data for r in formats.read_arrow("f.arrow", opened)] == prompts(3)


def test_a_cut_arrow_stream_keeps_its_rows_and_ends_with_an_error_row(tmp_path: Path) -> None:
    table = pa.Table.from_pylist(prompts(6))
    sink = io.BytesIO()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=3)
    path = tmp_path / "cut.arrow"
    path.write_bytes(sink.getvalue()[:-40])  # into the second batch
    rows = rows_of(path)
    assert [r.data for r in rows[:-1]] == prompts(3)
    assert rows[-1].loc == "cut.arrow:4" and rows[-1].data is None
    assert rows[-1].error is not None and "truncated or corrupt" in rows[-1].error


@pytest.mark.parametrize("content", [b"", b"not arrow at all", b"ARROW1\x00\x00broken"])
def test_an_unreadable_arrow_file_is_a_config_error_naming_it(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "bad.arrow"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="bad.arrow"):
        rows_of(path)


def test_a_feather_v1_file_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "old.feather"
    path.write_bytes(b"FEA1" + bytes(60))  # its magic (pyarrow no longer writes version 1)
    with pytest.raises(ConfigError, match="Feather version 1"):
        rows_of(path)


# ---------------------------------------------------------------- Hugging Face directories


def hf_rows(prefix: str, n: int) -> dict[str, list[Any]]:
    return {"id": [f"{prefix}{i}" for i in range(n)], "prompt": [f"{prefix} {i}" for i in range(n)]}


def test_a_saved_dataset_is_read_in_its_own_file_order(tmp_path: Path, hf: Any) -> None:
    root = tmp_path / "mydata"
    hf.Dataset.from_dict(hf_rows("d", 5)).save_to_disk(str(root), num_shards=2)
    # A cache file beside the data (as .map() leaves) is not part of the dataset.
    feather.write_feather(pa.table({"prompt": ["stray"]}), root / "cache-0.arrow")
    state = json.loads((root / "state.json").read_text())
    names = [f["filename"] for f in state["_data_files"]]
    state["_data_files"].reverse()  # the listed order rules, not the sorted one
    (root / "state.json").write_text(json.dumps(state))
    files = expand_inputs([str(root)])
    assert [f.name for f in files] == [f"mydata/{n}" for n in reversed(names)]
    rows = list(read_rows(files))
    assert sorted(r.data["id"] for r in rows if r.data) == [f"d{i}" for i in range(5)]
    assert rows[0].loc == f"mydata/{names[1]}:1"


def test_a_single_file_dataset_is_located_by_its_name(tmp_path: Path, hf: Any) -> None:
    root = tmp_path / "mydata"
    hf.Dataset.from_dict(hf_rows("d", 3)).save_to_disk(str(root))
    rows = rows_of(root)
    assert [(r.loc, r.data) for r in rows] == [
        (f"mydata:{i + 1}", {"id": f"d{i}", "prompt": f"d {i}"}) for i in range(3)
    ]


def test_a_dataset_dict_is_read_split_by_split_in_its_order(tmp_path: Path, hf: Any) -> None:
    root = tmp_path / "mydata"
    splits = {"train": hf_rows("t", 3), "test": hf_rows("e", 2)}
    hf.DatasetDict({k: hf.Dataset.from_dict(v) for k, v in splits.items()}).save_to_disk(str(root))
    rows = rows_of(root)
    assert [r.loc for r in rows] == [
        "mydata/train:1", "mydata/train:2", "mydata/train:3", "mydata/test:1", "mydata/test:2"
    ]  # fmt: skip
    assert [r.data["id"] for r in rows if r.data] == ["t0", "t1", "t2", "e0", "e1"]
    assert all(r.base_dir == root / ("train" if r.loc.startswith("mydata/train") else "test")
               for r in rows)  # fmt: skip


def test_a_dataset_inside_an_input_folder_keeps_its_sorted_place(tmp_path: Path, hf: Any) -> None:
    root = tmp_path / "inputs"
    root.mkdir()
    write_jsonl(root / "a.jsonl", [{"id": "a", "prompt": "x"}])
    hf.Dataset.from_dict(hf_rows("m", 1)).save_to_disk(str(root / "m_data"))
    write_jsonl(root / "z.jsonl", [{"id": "z", "prompt": "y"}])
    assert [r.loc for r in rows_of(root)] == ["a.jsonl:1", "m_data:1", "z.jsonl:1"]


def test_a_dataset_dict_whose_split_is_missing_is_a_config_error(tmp_path: Path, hf: Any) -> None:
    root = tmp_path / "mydata"
    hf.DatasetDict({"train": hf.Dataset.from_dict(hf_rows("t", 1))}).save_to_disk(str(root))
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "validation"]}))
    with pytest.raises(ConfigError, match="'validation'"):
        expand_inputs([str(root)])


def test_a_changed_shard_changes_the_input_digests(tmp_path: Path, hf: Any) -> None:
    root = tmp_path / "mydata"
    hf.Dataset.from_dict(hf_rows("d", 4)).save_to_disk(str(root), num_shards=2)
    before, _ = input_digests(expand_inputs([str(root)]))
    hf.Dataset.from_dict(hf_rows("x", 4)).save_to_disk(str(root), num_shards=2)
    after, _ = input_digests(expand_inputs([str(root)]))
    assert len(before) == 2 and before != after


# ---------------------------------------------------------------- directories and kinds


def test_a_folder_mixing_formats_is_read_in_sorted_order(tmp_path: Path) -> None:
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    write_csv(root / "b.csv", "id,prompt\nb1,x\n")
    write_jsonl(root / "a.jsonl", [{"id": "a1", "prompt": "y"}])
    write_csv(root / "sub" / "c.tsv", "id\tprompt\nc1\tz\n")
    feather.write_feather(pa.table({"id": ["d1"], "prompt": ["w"]}), root / "d.feather")
    pq.write_table(pa.table({"id": ["e1"], "prompt": ["v"]}), root / "e.parquet")
    (root / "notes.json").write_text("{}")
    rows = rows_of(root)
    assert [r.loc for r in rows] == ["a.jsonl:1", "b.csv:2", "d.feather:1", "e.parquet:1",
                                     "sub/c.tsv:2"]  # fmt: skip
    assert [r.data["id"] for r in rows if r.data] == ["a1", "b1", "d1", "e1", "c1"]


@pytest.mark.parametrize(
    ("name", "kind"),
    [("x.csv", "csv"), ("x.csv.gz", "csv"), ("x.tsv", "tsv"), ("x.tsv.gz", "tsv"),
     ("x.arrow", "arrow"), ("x.feather", "arrow"), ("x.ipc", "arrow"), ("x.parquet", "parquet"),
     ("x.jsonl", "jsonl")],
)  # fmt: skip
def test_input_kind_by_suffix(name: str, kind: str) -> None:
    assert InputFile(Path(name), name).kind == kind


def test_a_csv_changed_changes_its_digest(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "in.csv", "id,prompt\na,x\n")
    before, _ = input_digests(expand_inputs([str(path)]))
    write_csv(path, "id,prompt\na,y\n")
    after, _ = input_digests(expand_inputs([str(path)]))
    assert before != after


# ---------------------------------------------------------------- a real job


@pytest.mark.slow
def test_a_job_over_a_csv_answers_its_rows_and_reports_the_bad_one(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    data = write_csv(
        tmp_path / "in.csv",
        'id,prompt,topic\n001,"What is 1 plus 1?",maths\n002,Name a colour,art,extra\n'
        '003,"Say\nhello",\n',
    )
    out = tmp_path / "out.parquet"
    args = ["run", str(data), "-o", str(out), "--base-url", mock_server.base_url]
    result = run_cli(*args, "-c", str(fast_config))
    assert result.returncode == 1, result.stderr  # one invalid row
    rows = {r["id"]: r for r in pq.read_table(out).to_pylist()}
    assert set(rows) == {"001", "003", "in.csv:3"}
    assert rows["001"]["status"] == "ok"
    assert rows["001"]["content"] == "Answer to: What is 1 plus 1?"
    assert rows["001"]["topic"] == "maths"
    assert rows["003"]["content"] == "Answer to: Say\nhello" and rows["003"]["topic"] is None
    bad = rows["in.csv:3"]
    assert bad["status"] == "invalid" and bad["error"].startswith("in.csv:3: wrong number")
    assert mock_server.stats()["submissions"] == 2
