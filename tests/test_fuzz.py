"""Property tests: broken input never becomes a traceback.

Readers, row validation and the config loader are fed arbitrary bytes, arbitrary JSON,
Parquet columns of the wrong type, odd encodings and huge lines. The result must always be
a row with a clear error naming its location, or a ConfigError naming the key.
"""

from __future__ import annotations

import gzip
import json
import string
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchrun import dataset
from batchrun.config import CONFIG_KEYS, build_config, load_toml
from batchrun.dataset import InputFile, read_rows
from batchrun.errors import ConfigError
from batchrun.payloads import BodyBuilder, prepare_row

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
row_keys = st.sampled_from(
    ["id", "custom_id", "prompt", "system", "messages", "method", "url", "body", "other"]
)
rows = st.dictionaries(row_keys | st.text(max_size=6), json_values, max_size=6)


def rows_of(path: Path) -> list[Any]:
    return [prepare_row(source) for source in read_rows([InputFile(path, path.name)])]


def check_prepared(prepared: list[Any]) -> None:
    builder = BodyBuilder({"model": "m", "max_tokens": 5})
    for row in prepared:
        if row.error is not None:
            assert row.error.startswith(f"{row.loc}: ") or row.error.startswith(row.loc)
            assert row.messages is None
        else:
            body = json.loads(builder.build(row.messages, row.overrides))
            assert isinstance(body["messages"], list) and body["messages"]


@FUZZ
@given(st.lists(st.binary(max_size=200), max_size=20))
def test_arbitrary_bytes_lines(
    tmp_path_factory: pytest.TempPathFactory, lines: list[bytes]
) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "in.jsonl"
    path.write_bytes(b"\n".join(lines))
    check_prepared(rows_of(path))


@FUZZ
@given(st.lists(rows, max_size=15))
def test_arbitrary_json_objects(
    tmp_path_factory: pytest.TempPathFactory, objects: list[dict[str, Any]]
) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "in.jsonl"
    path.write_text("".join(json.dumps(o) + "\n" for o in objects))
    prepared = rows_of(path)
    assert len(prepared) == len(objects)
    check_prepared(prepared)


@FUZZ
@given(st.lists(json_values.filter(lambda v: not isinstance(v, dict)), max_size=10))
def test_top_level_json_that_is_not_an_object(
    tmp_path_factory: pytest.TempPathFactory, values: list[Any]
) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "in.jsonl"
    path.write_text("".join(json.dumps(v) + "\n" for v in values))
    for row in rows_of(path):
        # Infinity and integers beyond 64 bits are not JSON to a strict parser: invalid too
        assert row.error is not None
        assert "expected a JSON object" in row.error or "invalid JSON" in row.error


@pytest.mark.parametrize(
    "column",
    [
        pa.array([1, 2], pa.int64()),
        pa.array([1.5, None], pa.float64()),
        pa.array([b"\xff\x00", b"ok"], pa.binary()),
        pa.array([[1, 2], []], pa.list_(pa.int64())),
        pa.array([{"a": 1}, {"a": 2}], pa.struct([("a", pa.int64())])),
        pa.array([True, False]),
        pa.array([None, None], pa.null()),
    ],
    ids=["int", "float", "binary", "list", "struct", "bool", "null"],
)
@pytest.mark.parametrize("name", ["prompt", "messages", "id", "system", "body"])
def test_parquet_columns_of_the_wrong_type(tmp_path: Path, name: str, column: pa.Array) -> None:
    table = pa.table(
        {name: column} | ({} if name in ("prompt", "messages", "body") else {"prompt": ["a", "b"]})
    )
    path = tmp_path / "in.parquet"
    pq.write_table(table, path)
    prepared = rows_of(path)
    assert len(prepared) == 2
    check_prepared(prepared)
    if name in ("prompt", "messages", "body", "system"):
        assert any(row.error for row in prepared) or name == "system"


def test_utf8_bom_and_crlf_lines_are_read(tmp_path: Path) -> None:
    path = tmp_path / "windows.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"id": "a", "prompt": "x"}\r\n{"id": "b", "prompt": "y"}\r\n')
    prepared = rows_of(path)
    assert [(r.row_id, r.error) for r in prepared] == [("a", None), ("b", None)]


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16"])
def test_other_encodings_give_row_errors_not_tracebacks(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "odd.jsonl"
    path.write_bytes('{"id": "é", "prompt": "naïve café"}\n{"prompt": "ß"}\n'.encode(encoding))
    prepared = rows_of(path)
    assert prepared
    check_prepared(prepared)


def test_huge_line_is_one_invalid_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dataset, "MAX_LINE_BYTES", 1000)
    path = tmp_path / "big.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        fh.write('{"id": "a", "prompt": "ok"}\n')
        fh.write('{"id": "b", "prompt": "' + "x" * 5000 + '"}\n')
        fh.write('{"id": "c", "prompt": "ok"}\n')
    prepared = rows_of(path)
    assert [r.row_id for r in prepared if r.error is None] == ["a", "c"]
    assert "big.jsonl.gz:2: line longer than 1000 bytes" in prepared[1].error


# ---------------------------------------------------------------- the config loader

config_values = st.one_of(json_values, st.lists(st.text(max_size=5), max_size=3))


@FUZZ
@given(st.dictionaries(st.sampled_from(sorted(CONFIG_KEYS)), config_values, max_size=6))
def test_config_values_of_any_type(values: dict[str, Any]) -> None:
    for source in ("file", "cli"):
        try:
            cfg = build_config(
                values if source == "file" else None, values if source == "cli" else None
            )
        except ConfigError as exc:
            assert (
                any(key in str(exc) for key in values)
                or "backoff" in str(exc)
                or "model" in str(exc)
                or (source == "cli" and "params" in values and str(exc).startswith("-p "))
            )
        else:
            assert cfg.body_template()["model"]


@FUZZ
@given(st.text(alphabet=string.printable, max_size=200))
def test_config_files_of_any_text(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    path = tmp_path_factory.mktemp("cfg") / "c.toml"
    path.write_text(text)
    try:
        values = load_toml(path)
        build_config(values, source=str(path))
    except ConfigError as exc:
        assert str(path) in str(exc) or "must" in str(exc)
