"""batchrun/dataset.py (reading inputs) and batchrun/payloads.py (rows -> requests)."""

from __future__ import annotations

import gzip
import inspect
import itertools
import json
import tracemalloc
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchrun import dataset
from batchrun.dataset import InputFile, SourceRow, expand_inputs, file_digest, read_rows
from batchrun.errors import ConfigError
from batchrun.payloads import BodyBuilder, PreparedRow, estimate_prompt_tokens, prepare_row
from tests.conftest import prompts, write_jsonl

USER_HI = [{"role": "user", "content": "hi"}]


def rows_of(*paths: Path | str) -> list[SourceRow]:
    return list(read_rows(expand_inputs([str(p) for p in paths])))


def prep(data: dict[str, Any], loc: str = "data.jsonl:7") -> PreparedRow:
    return prepare_row(SourceRow(loc, data))


# ---------------------------------------------------------------- expand_inputs


def test_expand_files_keep_their_order_and_names(tmp_path: Path) -> None:
    b = write_jsonl(tmp_path / "b.jsonl", prompts(1))
    a = write_jsonl(tmp_path / "a.jsonl", prompts(1))
    files = expand_inputs([str(b), str(a)])
    assert [(f.path, f.name) for f in files] == [(b, "b.jsonl"), (a, "a.jsonl")]


def test_expand_directory_recursively_sorted_with_relative_names(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    write_jsonl(root / "b.jsonl", prompts(1))
    write_jsonl(root / "a.ndjson", prompts(1))
    write_jsonl(root / "sub" / "c.jsonl", prompts(1))
    (root / "notes.txt").write_text("ignored")
    (root / ".hidden.jsonl").write_text("{}\n")
    files = expand_inputs([str(root)])
    assert [f.name for f in files] == ["a.ndjson", "b.jsonl", "sub/c.jsonl"]
    assert files[2].path == root / "sub" / "c.jsonl"


def test_expand_directory_then_file_keeps_argument_order(tmp_path: Path) -> None:
    root = tmp_path / "d"
    root.mkdir()
    write_jsonl(root / "x.jsonl", prompts(1))
    single = write_jsonl(tmp_path / "first.jsonl", prompts(1))
    assert [f.name for f in expand_inputs([str(single), str(root)])] == ["first.jsonl", "x.jsonl"]


def test_expand_unsupported_suffix_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("id,prompt\n")
    with pytest.raises(ConfigError) as info:
        expand_inputs([str(path)])
    assert str(path) in str(info.value)
    assert "unsupported" in str(info.value)


def test_expand_missing_path_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "missing.jsonl"
    with pytest.raises(ConfigError) as info:
        expand_inputs([str(path)])
    assert str(path) in str(info.value)
    assert "not found" in str(info.value)


def test_expand_directory_without_inputs_is_rejected(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("no data")
    with pytest.raises(ConfigError) as info:
        expand_inputs([str(empty)])
    assert str(empty) in str(info.value)


def test_expand_nothing_is_rejected() -> None:
    with pytest.raises(ConfigError):
        expand_inputs([])


def test_input_kind_by_suffix() -> None:
    assert InputFile(Path("x.parquet"), "x.parquet").kind == "parquet"
    assert InputFile(Path("x.jsonl.gz"), "x.jsonl.gz").kind == "jsonl"
    assert InputFile(Path("x.ndjson"), "x.ndjson").kind == "jsonl"


def test_file_digest_follows_content(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", prompts(3))
    b = write_jsonl(tmp_path / "b.jsonl", prompts(3))
    c = write_jsonl(tmp_path / "c.jsonl", prompts(4))
    assert file_digest(a) == file_digest(b)
    assert file_digest(a) != file_digest(c)


# ---------------------------------------------------------------- read_rows


@pytest.mark.parametrize("name", ["in.jsonl", "in.ndjson"])
def test_read_jsonl_rows_with_locations(tmp_path: Path, name: str) -> None:
    path = write_jsonl(tmp_path / name, prompts(3))
    rows = rows_of(path)
    assert [r.loc for r in rows] == [f"{name}:1", f"{name}:2", f"{name}:3"]
    assert [r.data for r in rows] == prompts(3)
    assert all(r.error is None for r in rows)


def test_read_jsonl_gz(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        for row in prompts(2):
            fh.write(json.dumps(row) + "\n")
    rows = rows_of(path)
    assert [r.data for r in rows] == prompts(2)
    assert [r.loc for r in rows] == ["in.jsonl.gz:1", "in.jsonl.gz:2"]


def test_read_parquet_rows_with_locations(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": 1, "prompt": "a"}, {"id": 2, "prompt": "b"}]), path)
    rows = rows_of(path)
    assert [r.loc for r in rows] == ["in.parquet:1", "in.parquet:2"]
    assert [r.data for r in rows] == [{"id": 1, "prompt": "a"}, {"id": 2, "prompt": "b"}]


def test_read_parquet_numbers_rows_across_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dataset, "PARQUET_BATCH_ROWS", 3)
    path = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(prompts(10)), path, row_group_size=4)
    rows = rows_of(path)
    assert [r.loc for r in rows] == [f"in.parquet:{i}" for i in range(1, 11)]
    assert [r.data for r in rows] == prompts(10)


def test_unreadable_parquet_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"this is not parquet at all")
    with pytest.raises(ConfigError, match="bad.parquet"):
        rows_of(path)


def test_files_are_read_in_order(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", prompts(2, "A"))
    b = tmp_path / "b.parquet"
    pq.write_table(pa.Table.from_pylist(prompts(1, "B")), b)
    assert [r.loc for r in rows_of(a, b)] == ["a.jsonl:1", "a.jsonl:2", "b.parquet:1"]


def test_blank_lines_are_skipped_but_counted(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": "a", "prompt": "x"}\n\n   \n{"id": "b", "prompt": "y"}\n\n')
    rows = rows_of(path)
    assert [(r.loc, r.data["id"] if r.data else None) for r in rows] == [
        ("in.jsonl:1", "a"),
        ("in.jsonl:4", "b"),
    ]


def test_crlf_and_missing_final_newline(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"id": "a", "prompt": "x"}\r\n{"id": "b", "prompt": "y"}')
    assert [r.data for r in rows_of(path)] == [
        {"id": "a", "prompt": "x"},
        {"id": "b", "prompt": "y"},
    ]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b"{not json", "invalid JSON"),
        (b'{"id": "a", "prompt": ', "invalid JSON"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (b'"just a string"', "expected a JSON object, got str"),
        (b"42", "expected a JSON object, got int"),
        (b'{"prompt": "caf\xe9"}', "not valid UTF-8"),
    ],
)
def test_bad_line_becomes_error_row_with_location(
    tmp_path: Path, line: bytes, problem: str
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"id": "ok", "prompt": "x"}\n' + line + b'\n{"id": "ok2", "prompt": "y"}\n')
    rows = rows_of(path)
    assert len(rows) == 3
    bad = rows[1]
    assert bad.data is None
    assert bad.loc == "in.jsonl:2"
    assert bad.error is not None
    assert bad.error.startswith("in.jsonl:2")
    assert problem in bad.error
    assert rows[2].data == {"id": "ok2", "prompt": "y"}


def test_over_long_line_is_an_error_row_and_reading_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dataset, "MAX_LINE_BYTES", 40)
    path = tmp_path / "in.jsonl"
    long_line = json.dumps({"id": "long", "prompt": "x" * 500})
    exact = '{"id": "e", "prompt": "' + "y" * (40 - 25) + '"}'
    assert len(exact) == 40
    path.write_text(f'{{"id": "a", "prompt": "x"}}\n{long_line}\n{exact}\n{{"id": "b"}}\n')
    rows = rows_of(path)
    assert [r.loc for r in rows] == ["in.jsonl:1", "in.jsonl:2", "in.jsonl:3", "in.jsonl:4"]
    assert rows[1].data is None
    assert rows[1].error is not None
    assert "in.jsonl:2" in rows[1].error
    assert "longer than 40 bytes" in rows[1].error
    assert rows[2].data is not None and rows[2].data["id"] == "e"
    assert rows[3].data == {"id": "b"}


def test_truncated_gzip_keeps_rows_read_and_ends_with_error_row(tmp_path: Path) -> None:
    whole = tmp_path / "whole.jsonl.gz"
    with gzip.open(whole, "wt") as fh:
        for row in prompts(3000):
            fh.write(json.dumps(row) + "\n")
    data = whole.read_bytes()
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(data[: len(data) // 2])
    rows = rows_of(cut)
    good, last = rows[:-1], rows[-1]
    assert 0 < len(good) < 3000
    assert [r.data for r in good] == prompts(3000)[: len(good)]
    assert last.data is None
    assert last.loc == f"cut.jsonl.gz:{len(good) + 1}"
    assert last.error is not None
    assert last.error.startswith(f"cut.jsonl.gz:{len(good) + 1}")
    assert "truncated" in last.error


def test_read_rows_is_lazy_over_a_huge_file(tmp_path: Path) -> None:
    path = tmp_path / "huge.jsonl"
    line = '{"id": "r%06d", "prompt": "what is %d plus %d?", "note": "padding padding"}\n'
    with path.open("w") as fh:
        fh.writelines(line % (i, i, i) for i in range(200_000))
    size = path.stat().st_size
    assert size > 10_000_000

    tracemalloc.start()
    try:
        rows = read_rows(expand_inputs([str(path)]))
        assert inspect.isgenerator(rows)
        first = list(itertools.islice(rows, 10))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    rows.close()
    assert [r.loc for r in first] == [f"huge.jsonl:{i}" for i in range(1, 11)]
    assert first[9].data is not None and first[9].data["id"] == "r000009"
    # Reading ten rows must not have pulled the 13 MB file into memory.
    assert peak < size // 20


def test_read_rows_generator_is_lazy_across_files(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", prompts(2))
    b = tmp_path / "b.jsonl"
    b.write_text('{"id": "b1", "prompt": "x"}\n')
    rows = read_rows(expand_inputs([str(a), str(b)]))
    first = next(rows)
    b.unlink()  # not opened yet: removing it only matters once reading reaches it
    assert first.loc == "a.jsonl:1"
    assert next(rows).loc == "a.jsonl:2"
    with pytest.raises(ConfigError, match="b.jsonl"):
        next(rows)


# ---------------------------------------------------------------- prepare_row: shapes


def test_prompt_row_becomes_one_user_message() -> None:
    row = prep({"id": "q1", "prompt": "What is 2+2?"})
    assert row.error is None
    assert row.row_id == "q1"
    assert row.loc == "data.jsonl:7"
    assert row.messages is not None
    assert json.loads(row.messages) == [{"role": "user", "content": "What is 2+2?"}]
    assert row.overrides is None
    assert row.extra is None


def test_prompt_row_with_system() -> None:
    row = prep({"id": "q1", "prompt": "hi", "system": "Be brief."})
    assert row.messages is not None
    assert json.loads(row.messages) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]


def test_prompt_row_with_blank_system_has_only_user_message() -> None:
    row = prep({"id": "q1", "prompt": "hi", "system": "  "})
    assert row.messages is not None
    assert json.loads(row.messages) == [{"role": "user", "content": "hi"}]


def test_messages_row_keeps_messages() -> None:
    messages = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": [{"type": "text", "text": "look"}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]},
        {"role": "tool", "content": "42", "tool_call_id": "c1"},
    ]
    row = prep({"id": "m1", "messages": messages})
    assert row.error is None
    assert row.messages is not None
    assert json.loads(row.messages) == messages


def test_messages_given_as_json_string() -> None:
    row = prep({"id": "m1", "messages": json.dumps(USER_HI)})
    assert row.error is None
    assert row.messages is not None
    assert json.loads(row.messages) == USER_HI


def test_non_ascii_text_survives() -> None:
    row = prep({"id": "u", "prompt": "Grüß dich, 世界"})
    assert row.messages is not None
    assert json.loads(row.messages)[0]["content"] == "Grüß dich, 世界"


def test_batch_line_body_fields_become_overrides() -> None:
    row = prep(
        {
            "custom_id": "req-1",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "m/x", "messages": USER_HI, "max_tokens": 5, "temperature": 0},
        }
    )
    assert row.error is None
    assert row.row_id == "req-1"
    assert row.messages is not None
    assert json.loads(row.messages) == USER_HI
    assert row.overrides is not None
    assert json.loads(row.overrides) == {"model": "m/x", "max_tokens": 5, "temperature": 0}
    assert row.extra is None


def test_batch_line_without_method_and_url_defaults_to_chat() -> None:
    row = prep({"custom_id": "r", "body": {"messages": USER_HI}})
    assert row.error is None
    assert row.overrides is None


def test_batch_line_with_full_chat_url_is_accepted() -> None:
    row = prep(
        {"custom_id": "r", "url": "https://x/v1/chat/completions/", "body": {"messages": USER_HI}}
    )
    assert row.error is None


# ---------------------------------------------------------------- prepare_row: ids


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"id": "abc", "prompt": "x"}, "abc"),
        ({"id": 17, "prompt": "x"}, "17"),
        ({"custom_id": 5, "body": {"messages": USER_HI}}, "5"),
        ({"id": "first", "custom_id": "second", "prompt": "x"}, "first"),
        ({"id": None, "custom_id": "c", "prompt": "x"}, "c"),
        ({"prompt": "x"}, "data.jsonl:7"),
    ],
)
def test_row_id(data: dict[str, Any], expected: str) -> None:
    row = prep(data)
    assert row.error is None
    assert row.row_id == expected


def test_fallback_id_is_stable_and_distinct_per_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "noid.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
    ids = [prepare_row(r).row_id for r in rows_of(path)]
    again = [prepare_row(r).row_id for r in rows_of(path)]
    assert ids == ["noid.jsonl:1", "noid.jsonl:2"]
    assert again == ids


# ---------------------------------------------------------------- prepare_row: problems


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"id": "a"}, "no prompt, messages or body"),
        ({"id": "a", "prompt": ""}, "prompt must be a non-empty string"),
        ({"id": "a", "prompt": "   "}, "prompt must be a non-empty string"),
        ({"id": "a", "prompt": 5}, "prompt must be a non-empty string"),
        ({"id": "a", "prompt": "x", "system": 3}, "system must be a string"),
        ({"id": "a", "prompt": "x", "messages": USER_HI}, "has both 'prompt' and 'messages'"),
        ({"id": "a", "messages": USER_HI, "body": {}}, "has both 'messages' and 'body'"),
        ({"id": "a", "messages": []}, "messages must be a non-empty list"),
        ({"id": "a", "messages": "not json"}, "messages is a string that is not JSON"),
        ({"id": "a", "messages": ["hi"]}, "messages[0] must be an object"),
        ({"id": "a", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"id": "a", "messages": [{"content": "x"}]}, "messages[0].role"),
        (
            {"id": "a", "messages": [{"role": "system", "content": "s"}, {"role": "user"}]},
            "messages[1].content",
        ),
        ({"custom_id": "a", "body": {"messages": USER_HI}, "method": "GET"}, "method must be POST"),
        (
            {"custom_id": "a", "body": {"messages": USER_HI}, "url": "/v1/embeddings"},
            "url must be /v1/chat/completions",
        ),
        ({"custom_id": "a", "body": "text"}, "body must be a JSON object"),
        ({"custom_id": "a", "body": {"max_tokens": 5}}, "body.messages"),
    ],
)
def test_unusable_row_gets_error_with_location(data: dict[str, Any], problem: str) -> None:
    row = prep(data)
    assert row.error is not None
    assert row.error.startswith("data.jsonl:7: ")
    assert problem in row.error
    assert row.messages is None
    assert row.row_id == "a"


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"id": True, "prompt": "x"}, "id must be a string or an integer, got bool"),
        ({"id": 1.5, "prompt": "x"}, "id must be a string or an integer, got float"),
        ({"id": ["a"], "prompt": "x"}, "id must be a string or an integer, got list"),
        ({"custom_id": {"a": 1}, "prompt": "x"}, "custom_id must be a string or an integer"),
        ({"id": "", "prompt": "x"}, "id is empty"),
    ],
)
def test_bad_id_gets_error_and_location_as_id(data: dict[str, Any], problem: str) -> None:
    row = prep(data)
    assert row.error is not None
    assert row.error.startswith("data.jsonl:7: ")
    assert problem in row.error
    assert row.row_id == "data.jsonl:7"


def test_unreadable_source_row_keeps_its_error() -> None:
    row = prepare_row(SourceRow("in.jsonl:3", None, "in.jsonl:3: invalid JSON (x at column 1)"))
    assert row.row_id == "in.jsonl:3"
    assert row.loc == "in.jsonl:3"
    assert row.error == "in.jsonl:3: invalid JSON (x at column 1)"
    assert row.messages is None


def test_invalid_row_still_keeps_passthrough_columns() -> None:
    row = prep({"id": "a", "prompt": "", "topic": "math"})
    assert row.error is not None
    assert row.extra == {"topic": "math"}


# ---------------------------------------------------------------- passthrough


def test_other_columns_are_passed_through() -> None:
    row = prep({"id": "a", "prompt": "x", "topic": "math", "level": 3, "tags": ["t"]})
    assert row.extra == {"topic": "math", "level": 3, "tags": ["t"]}


def test_passthrough_names_clashing_with_output_columns_get_input_prefix() -> None:
    row = prep({"id": "a", "prompt": "x", "model": "gpt", "status": "draft", "error": 0})
    assert row.extra == {"input_model": "gpt", "input_status": "draft", "input_error": 0}


def test_request_keys_are_not_passed_through() -> None:
    row = prep(
        {
            "custom_id": "a",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"messages": USER_HI},
            "split": "test",
        }
    )
    assert row.extra == {"split": "test"}


# ---------------------------------------------------------------- token estimate


def test_estimate_prompt_tokens_is_positive_and_grows_with_text() -> None:
    short = estimate_prompt_tokens([{"role": "user", "content": "hi"}])
    longer = estimate_prompt_tokens([{"role": "user", "content": "hi " * 400}])
    parts = estimate_prompt_tokens(
        [{"role": "user", "content": [{"type": "text", "text": "hi " * 400}]}]
    )
    assert short > 0
    assert longer > short + 200
    assert parts == longer
    assert estimate_prompt_tokens([]) > 0


def test_prepared_row_carries_the_estimate() -> None:
    small = prep({"id": "a", "prompt": "x"})
    big = prep({"id": "b", "prompt": "x" * 4000})
    assert small.est_tokens > 0
    assert big.est_tokens >= 1000 > small.est_tokens


# ---------------------------------------------------------------- BodyBuilder

TEMPLATE = {
    "model": "m/x",
    "max_tokens": 100,
    "temperature": 0.6,
    "chat_template_kwargs": {"enable_thinking": True},
}


def test_build_is_template_plus_messages() -> None:
    body = BodyBuilder(TEMPLATE).build(json.dumps(USER_HI), None)
    assert json.loads(body) == {**TEMPLATE, "messages": USER_HI}


def test_build_with_overrides_merges_them_over_the_template() -> None:
    body = BodyBuilder(TEMPLATE).build(json.dumps(USER_HI), '{"temperature":0,"seed":3}')
    assert json.loads(body) == {**TEMPLATE, "temperature": 0, "seed": 3, "messages": USER_HI}


def test_build_with_empty_template() -> None:
    assert json.loads(BodyBuilder({}).build(json.dumps(USER_HI), None)) == {"messages": USER_HI}


def test_build_keeps_non_ascii_valid() -> None:
    messages = json.dumps([{"role": "user", "content": "héllo 世界"}], ensure_ascii=False)
    body = BodyBuilder(TEMPLATE).build(messages, None)
    assert json.loads(body.decode("utf-8"))["messages"][0]["content"] == "héllo 世界"


def test_build_from_prepared_row_round_trips() -> None:
    row = prep({"custom_id": "r", "body": {"messages": USER_HI, "max_tokens": 7}})
    assert row.messages is not None
    body = json.loads(BodyBuilder(TEMPLATE).build(row.messages, row.overrides))
    assert body["max_tokens"] == 7
    assert body["model"] == "m/x"
    assert body["messages"] == USER_HI


def test_build_with_stream_follows_job_setting_without_overrides() -> None:
    builder = BodyBuilder(TEMPLATE)
    assert builder.build_with_stream(json.dumps(USER_HI), None, True)[1] is True
    assert builder.build_with_stream(json.dumps(USER_HI), None, False)[1] is False


def test_row_body_stream_true_is_reported_and_asks_for_usage() -> None:
    data, stream = BodyBuilder(TEMPLATE).build_with_stream(
        json.dumps(USER_HI), '{"stream":true}', False
    )
    body = json.loads(data)
    assert stream is True
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


def test_row_body_stream_options_are_kept() -> None:
    data, stream = BodyBuilder(TEMPLATE).build_with_stream(
        json.dumps(USER_HI), '{"stream":true,"stream_options":{"include_usage":false}}', False
    )
    assert stream is True
    assert json.loads(data)["stream_options"] == {"include_usage": False}


def test_max_tokens_from_row_or_template() -> None:
    builder = BodyBuilder(TEMPLATE)
    assert builder.max_tokens(None) == 100
    assert builder.max_tokens('{"max_tokens":5}') == 5
    assert builder.max_tokens('{"seed":1}') == 100


def test_files_with_one_name_in_two_folders_get_distinct_ids(tmp_path: Path) -> None:
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "data.jsonl").write_text('{"prompt": "x"}\n')
    files = expand_inputs([str(tmp_path / "a" / "data.jsonl"), str(tmp_path / "b" / "data.jsonl")])
    ids = [prepare_row(r).row_id for r in read_rows(files)]
    assert len(set(ids)) == 2 and all(i.endswith("data.jsonl:1") for i in ids)


@pytest.mark.parametrize("name", ["reused", "request_hash", "parsed", "parse_error", "status"])
def test_input_columns_named_like_output_columns_are_prefixed(name: str) -> None:
    row = prepare_row(SourceRow("f:1", {"id": "a", "prompt": "p", name: 1}))
    assert row.extra == {f"input_{name}": 1}
