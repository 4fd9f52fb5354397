"""A checkpoint written by the previous release resumes under this one with nothing finished
bought again (tests/fixtures/checkpoint-v1/README.md says what it holds and how it was made).

The fixture's job talked to 127.0.0.1:18231, and that base URL is part of its fingerprint, so
the resume keeps it and its transport carries every request to this test's mock endpoint.
"""

from __future__ import annotations

import shutil
import sqlite3
import threading
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from batchrun.checkpoint import SCHEMA_VERSION, AssetCache, open_reader
from batchrun.config import build_config, load_toml
from batchrun.factory import new_transport
from batchrun.job import JobResult, run_job
from batchrun.transport import Response, Transport

from .conftest import REPO, prompts, write_jsonl
from .ledger import wait_until
from .test_e2e import read_output

FIXTURE = REPO / "tests" / "fixtures" / "checkpoint-v1"
RECORDED = "http://127.0.0.1:18231"  # where the fixture's job sent its requests


class Redirect:
    """A Transport that sends what was meant for `old` to `new` instead."""

    def __init__(self, inner: Transport, old: str, new: str) -> None:
        self._inner, self._old, self._new = inner, old, new

    @asynccontextmanager
    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None = None,
        time_limit: float,
    ) -> AsyncIterator[Response]:
        target = url.replace(self._old, self._new, 1)
        async with self._inner.request(
            method, target, headers=headers, body=body, time_limit=time_limit
        ) as resp:
            yield resp

    async def close(self) -> None:
        await self._inner.close()


@pytest.fixture
def job(tmp_path: Path) -> Path:
    """A copy of the fixture (the test writes to it); returns its job.toml."""
    shutil.copytree(FIXTURE, tmp_path / "v1")
    return tmp_path / "v1" / "job.toml"


def v1_rows(checkpoint: Path) -> dict[str, tuple[str, str | None, int]]:
    """The schema-1 file as the previous release left it: row_id -> (state, request id,
    attempts). Read with SQL: it is that release's layout, before any upgrade."""
    conn = sqlite3.connect(f"file:{checkpoint}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT row_id, state, request_id, attempts FROM items").fetchall()
    finally:
        conn.close()
    return {row_id: (state, rid, attempts) for row_id, state, rid, attempts in rows}


def resume(config: Path, server: Any) -> JobResult:
    cfg = build_config(load_toml(config), {"progress": False})
    origin = server.base_url.rsplit("/v1", 1)[0]
    return run_job(cfg, transport=Redirect(new_transport(cfg, None), RECORDED, origin))


def test_a_previous_release_checkpoint_resumes_with_nothing_finished_bought_again(
    job: Path, mock_server: Any
) -> None:
    checkpoint = job.parent / "out" / "job.parquet.checkpoint.sqlite"
    before = v1_rows(checkpoint)
    lines = (job.parent / "job.jsonl").read_text().splitlines()
    prompt = {r["id"]: r.get("prompt") for r in map(_json, lines)}
    # The ids the previous run was polling are still held by "the server": ready to hand out.
    for row_id, (state, rid, _) in before.items():
        if state == "polling":
            assert rid is not None
            mock_server.hold(rid, prompt[row_id])

    finished: list[JobResult] = []
    runner = threading.Thread(target=lambda: finished.append(resume(job, mock_server)))
    runner.start()
    # r14's stored 302 link is dead (the previous server is gone): it is bought again, and
    # its prompt asks the mock for 120 s: move the mock's clock rather than wait.
    wait_until(lambda: _submissions(mock_server, prompt["r14"]) >= 1)
    mock_server.advance(121)
    runner.join(timeout=120)
    assert finished, "the resumed job did not end"
    result = finished[0]

    rows = {r["id"]: r for r in read_output(job.parent / "out" / "job.parquet")}
    assert result.exit_code == 1  # r08 stays failed and two rows are invalid, as before
    status = {row_id: r["status"] for row_id, r in rows.items()}
    assert [row_id for row_id, s in status.items() if s == "ok"] == [
        *(f"r{i:02d}" for i in range(8)), *(f"r{i:02d}" for i in range(11, 24))
    ]  # fmt: skip
    assert status["r08"] == "failed" and "HTTP 422" in rows["r08"]["error"]
    assert status["job.jsonl:10"] == "invalid" and status["r10"] == "invalid"
    for row_id, row in rows.items():
        if row["status"] == "ok":
            assert row["content"] == f"Answer to: {prompt[row_id]}", row_id
            assert row["topic"] and row["n"] is not None  # passthrough columns survived
    assert [rows[f"r{i:02d}"]["reused"] for i in range(8)] == [False] * 5 + [True] * 3

    sent = {row_id: _submissions(mock_server, p) for row_id, p in prompt.items() if p}
    never_sent = [r for r, (s, _, _) in before.items() if s in ("done", "failed", "polling")]
    assert all(sent[r] == 0 for r in never_sent), "a finished or held row was bought again"
    assert sent["r15"] == 0  # its consume-once answer was in the checkpoint
    assert sent["r14"] == 1  # its link had expired: bought again, once
    assert all(sent[f"r{i:02d}"] == 1 for i in range(16, 24))
    assert result.stats.rebuys == 1
    assert [rows[f"r{i:02d}"]["attempts"] for i in (14, 16, 18)] == [2, 2, 1]
    for row_id, (state, rid, _) in before.items():
        if state == "polling":
            assert rows[row_id]["request_id"] == rid  # polled, not submitted

    reader = open_reader(checkpoint)
    try:
        assert reader.get_meta("schema_version") == str(SCHEMA_VERSION)
    finally:
        reader.close()
    assets = AssetCache(checkpoint)
    try:
        assert assets.get_now("ab" * 32) == (
            "0f0f0f0f-aaaa-bbbb-cccc-123456789abc",
            pytest.approx(1796006401.28279),
        )
    finally:
        assets.close()


def test_answers_of_a_previous_release_are_reused_from_its_checkpoint_or_output(
    tmp_path: Path, mock_server: Any, fast_config: Path
) -> None:
    earlier = FIXTURE / "out" / "earlier.parquet"
    untouched = (earlier.read_bytes(), Path(f"{earlier}.checkpoint.sqlite").read_bytes())
    rows = [{"id": f"q{i}", "prompt": f"Fixture question {i}"} for i in (5, 6, 7)]
    rows += prompts(1, prefix="New")
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    for source in (earlier, Path(f"{earlier}.checkpoint.sqlite")):
        out = tmp_path / f"{source.suffix}.parquet"
        cfg = build_config(
            load_toml(fast_config),
            {"inputs": [str(data)], "output": str(out), "base_url": mock_server.base_url,
             "reuse": str(source), "progress": False},
        )  # fmt: skip
        result = run_job(cfg)
        assert result.exit_code == 0
        assert result.stats.reused == 3
        assert [r["reused"] for r in read_output(out)] == [True, True, True, False]
    assert mock_server.stats()["submissions"] == 2  # only the new row, once per job
    assert (earlier.read_bytes(), Path(f"{earlier}.checkpoint.sqlite").read_bytes()) == untouched


def _json(line: str) -> dict[str, Any]:
    import json

    try:
        value: dict[str, Any] = json.loads(line)
    except json.JSONDecodeError:
        return {"id": "job.jsonl:10"}  # the fixture's one line that is not JSON
    return value


def _submissions(server: Any, prompt: str | None) -> int:
    if prompt is None:
        return 0
    entry = server.stats()["prompts"].get(prompt)
    return int(entry["submissions"]) if entry else 0
