"""One job over several local endpoints (issue 13), end to end: the CLI as a user runs it,
against mock endpoints on 127.0.0.1 that die and come back, that refuse a key, or that
hold 202 ids through an outage."""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from batchrun.config import build_config, load_toml
from batchrun.errors import ConfigError
from batchrun.factory import new_transport
from batchrun.job import run_job
from batchrun.testing import MockServer, MockSettings

from .conftest import FAST_CONFIG, prompts, run_cli, start_cli, write_jsonl
from .test_upgrade import Redirect


@pytest.fixture
def three() -> Iterator[list[MockServer]]:
    """Three endpoints, each with a latency that makes a job of a few hundred rows last a
    few seconds, and some 202s, so ids are held at each when one dies."""
    with ExitStack() as stack:
        yield [
            stack.enter_context(
                MockServer(MockSettings(seed=i, latency=0.2, p202=0.3, pending_polls=2))
            )
            for i in range(3)
        ]


def pool_config(tmp_path: Path, tables: list[str], extra: str = "") -> Path:
    path = tmp_path / "pool.toml"
    path.write_text(FAST_CONFIG + extra + "\n" + "\n".join(tables))
    return path


def endpoint_table(server: MockServer, **values: Any) -> str:
    lines = ["[[endpoints]]", f'base_url = "{server.base_url}"']
    for key, value in values.items():
        lines.append(f"{key} = {value!r}".replace("'", '"').replace("True", "true"))
    return "\n".join(lines) + "\n"


def output_rows(path: Path) -> list[dict[str, Any]]:
    return pq.read_table(path).to_pylist()


def delivered(servers: list[MockServer]) -> int:
    return sum(
        p["delivered"] for s in servers for p in s.stats()["prompts"].values()
    )  # fmt: skip


def wait_for(condition: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def assert_no_id_bought_twice(servers: list[MockServer]) -> None:
    """Every 202 id an endpoint issued was collected there, and no row was sent again while
    one of its ids was pending: an accepted request is never bought twice."""
    for server in servers:
        stats = server.stats()
        assert stats["resubmitted_while_pending"] == 0
        assert stats["accepted"] == len(stats["polled_ids"]), server.base_url


def test_one_endpoint_dies_mid_run_and_comes_back(three: list[MockServer], tmp_path: Path) -> None:
    n = 400
    data = write_jsonl(tmp_path / "in.jsonl", prompts(n))
    tables = [endpoint_table(s, name=f"replica-{i}", concurrency=4) for i, s in enumerate(three)]
    config = pool_config(tmp_path, tables)
    out = tmp_path / "out.parquet"
    log = tmp_path / "events.jsonl"
    proc = start_cli("run", str(data), "-c", str(config), "-o", str(out), "--log-json", str(log))
    dying = three[1]
    wait_for(lambda: delivered(three) >= 60)
    dying.go_down()
    time.sleep(1.0)
    dying.come_back()
    billed_before_return = sum(p["billed"] for p in dying.stats()["prompts"].values())
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr

    rows = output_rows(out)
    assert len(rows) == n and all(r["status"] == "ok" for r in rows)
    assert Counter(r["endpoint"] for r in rows).keys() == {"replica-0", "replica-1", "replica-2"}
    assert {r["model"] for r in rows} == {"qwen/qwen3.5-397b-a17b"}
    assert_no_id_bought_twice(three)
    # It came back and took rows again (after a probe), not only the ids it held.
    billed_after = sum(p["billed"] for p in dying.stats()["prompts"].values())
    assert billed_after > billed_before_return
    events = log.read_text()
    assert '"event": "endpoint"' in events and '"state": "cooling"' in events
    assert '"state": "up"' in events
    assert '"endpoints": ["replica-0", "replica-1", "replica-2"]' in events  # job_start
    assert "endpoint replica-1 cooling down" in stderr
    # The run's summary breaks the rows down by endpoint, as status and report do.
    spread = Counter(r["endpoint"] for r in rows)
    assert all(f"  replica-{i}: {spread[f'replica-{i}']} rows" in stderr for i in range(3))


def test_a_refused_key_takes_its_endpoint_out_and_the_job_goes_on(
    three: list[MockServer], tmp_path: Path
) -> None:
    for server in three:
        server.configure(api_key="right", p202=0.0)
    data = write_jsonl(tmp_path / "in.jsonl", prompts(60))
    tables = [
        endpoint_table(three[0], api_key_env="KEY_A"),
        endpoint_table(three[1], api_key_env="KEY_B"),
    ]
    config = pool_config(tmp_path, tables, "allow_insecure_http = true")
    out = tmp_path / "out.parquet"
    env = {"KEY_A": "right", "KEY_B": "wrong"}
    result = run_cli("run", str(data), "-c", str(config), "-o", str(out), env=env)
    assert result.returncode == 0, result.stderr
    assert "refused the key in $KEY_B" in result.stderr
    assert "wrong" not in result.stderr
    rows = output_rows(out)
    assert all(r["status"] == "ok" and r["endpoint"] == three[0].base_url for r in rows)

    # Every key refused: exit 3, as a job of one endpoint.
    env = {"KEY_A": "wrong", "KEY_B": "wrong"}
    result = run_cli("run", str(data), "-c", str(config), "-o", str(out), "--fresh", env=env)
    assert result.returncode == 3, result.stderr
    assert "KEY_A" in result.stderr and "KEY_B" in result.stderr


def test_a_fallback_answers_only_while_the_primary_is_down(
    three: list[MockServer], tmp_path: Path
) -> None:
    primary, fallback = three[0], three[2]
    fallback.configure(p202=0.0)
    primary.configure(p202=0.0)
    data = write_jsonl(tmp_path / "in.jsonl", prompts(40))
    tables = [
        endpoint_table(primary),
        endpoint_table(fallback, name="backup", model="other/model", fallback=True),
    ]
    config = pool_config(tmp_path, tables)
    out = tmp_path / "out.parquet"
    result = run_cli("run", str(data), "-c", str(config), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert {r["endpoint"] for r in output_rows(out)} == {primary.base_url}
    assert fallback.stats()["submissions"] == 0

    primary.go_down()
    result = run_cli("run", str(data), "-c", str(config), "-o", str(out), "--fresh")
    assert result.returncode == 0, result.stderr
    rows = output_rows(out)
    assert {r["endpoint"] for r in rows} == {"backup"}
    assert {r["model"] for r in rows} == {"other/model"}  # as served: visibly the fallback's


def test_base_url_given_several_times_is_a_pool(three: list[MockServer], tmp_path: Path) -> None:
    for server in three:
        server.configure(p202=0.0)
    data = write_jsonl(tmp_path / "in.jsonl", prompts(90))
    out = tmp_path / "out.parquet"
    config = pool_config(tmp_path, [])
    urls = [arg for s in three for arg in ("--base-url", s.base_url)]
    result = run_cli("run", str(data), "-c", str(config), "-o", str(out), *urls)
    assert result.returncode == 0, result.stderr
    spread = Counter(r["endpoint"] for r in output_rows(out))
    assert spread.keys() == {s.base_url for s in three}

    # status (from the checkpoint) and report (from the output) break the job down by endpoint
    status = json.loads(run_cli("status", str(out), "--json", check=True).stdout)
    report = json.loads(run_cli("report", str(out), "--json", check=True).stdout)
    for figures in (status["endpoints"], report["endpoints"]):
        assert {f["endpoint"]: f["rows"] for f in figures} == dict(spread)
        assert all(f["ok"] == f["rows"] and f["failed"] == 0 for f in figures)
        assert sum(f["prompt_tokens"] for f in figures) == status["tokens"]["prompt_tokens"]
        assert all(f["latency_s"] for f in figures)
    text = run_cli("status", str(out), check=True).stdout
    assert all(f"  {s.base_url}: {spread[s.base_url]} rows" in text for s in three)
    assert f"at {', '.join(s.base_url for s in three)}" in text


def test_ids_held_at_an_endpoint_are_polled_there_after_a_kill(
    three: list[MockServer], tmp_path: Path
) -> None:
    """Killed while ids are held at each endpoint, resumed with the endpoints in another
    order and one more added: each id is polled where it was issued, none bought again."""
    for server in three:
        server.configure(p202=1.0, latency=1000.0)  # held until the test moves the clock
    data = write_jsonl(tmp_path / "in.jsonl", prompts(30))
    out = tmp_path / "out.parquet"
    first = [endpoint_table(s, name=f"e{i}") for i, s in enumerate(three[:2])]
    config = pool_config(tmp_path, first)
    proc = start_cli("run", str(data), "-c", str(config), "-o", str(out))
    wait_for(lambda: sum(s.stats()["accepted"] for s in three[:2]) == 30)
    time.sleep(0.3)  # the ids are in the checkpoint within a second
    proc.kill()
    proc.communicate()
    for server in three:
        server.advance(1000.0)
    later = [endpoint_table(s, name=f"e{i}") for i, s in reversed(list(enumerate(three)))]
    config = pool_config(tmp_path, later)
    result = run_cli("run", str(data), "-c", str(config), "-o", str(out))
    assert result.returncode == 0, result.stderr
    rows = output_rows(out)
    assert all(r["status"] == "ok" for r in rows)
    assert {r["endpoint"] for r in rows} <= {"e0", "e1"}
    assert three[2].stats()["submissions"] == 0
    assert_no_id_bought_twice(three)


def test_a_run_refuses_to_drop_an_endpoint_that_holds_answers(
    three: list[MockServer], tmp_path: Path
) -> None:
    server = three[0]
    server.configure(p202=1.0, latency=1000.0)
    data = write_jsonl(tmp_path / "in.jsonl", prompts(5))
    out = tmp_path / "out.parquet"
    config = pool_config(tmp_path, [endpoint_table(server, name="held")])
    proc = start_cli("run", str(data), "-c", str(config), "-o", str(out))
    wait_for(lambda: server.stats()["accepted"] == 5)
    time.sleep(0.3)
    proc.kill()
    proc.communicate()
    config = pool_config(tmp_path, [endpoint_table(three[1], name="other")])
    result = run_cli("run", str(data), "-c", str(config), "-o", str(out))
    assert result.returncode == 2, result.stderr
    assert "held" in result.stderr and "5 rows" in result.stderr
    assert three[1].stats()["submissions"] == 0


# ---------------------------------------------------------------- the release before pools


V4 = Path(__file__).parent / "fixtures" / "checkpoint-v4"
V4_ORIGIN = "http://127.0.0.1:18233"


def copy_v4(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The fixture's folder, copied, and its held request ids by row id."""
    folder = tmp_path / "v4"
    shutil.copytree(V4, folder)
    conn = sqlite3.connect(folder / "out" / "job.parquet.checkpoint.sqlite")
    try:
        held = dict(
            conn.execute("SELECT i.row_id, l.request_id FROM items i JOIN live l USING (idx)")
        )
    finally:
        conn.close()
    return folder, held


def test_ids_a_previous_release_holds_are_polled_at_its_base_url(
    mock_server: MockServer, tmp_path: Path
) -> None:
    folder, held = copy_v4(tmp_path)
    for line in (folder / "in.jsonl").read_text().splitlines():
        row = json.loads(line)
        mock_server.hold(held[row["id"]], row["prompt"])
    cfg = build_config(load_toml(folder / "job.toml"), {"progress": False})
    origin = mock_server.base_url.rsplit("/v1", 1)[0]
    result = run_job(cfg, transport=Redirect(new_transport(cfg, None), V4_ORIGIN, origin))
    assert result.exit_code == 0
    rows = output_rows(folder / "out" / "job.parquet")
    assert [r["status"] for r in rows] == ["ok"] * 6
    assert {r["endpoint"] for r in rows} == {f"{V4_ORIGIN}/v1"}
    assert {r["request_id"] for r in rows} == set(held.values())
    assert mock_server.stats()["submissions"] == 0  # polled, never bought again


def test_a_previous_release_s_held_ids_keep_their_endpoint_in_the_config(tmp_path: Path) -> None:
    folder, _ = copy_v4(tmp_path)
    config = folder / "job.toml"
    config.write_text(config.read_text().replace("18233", "18299"))
    cfg = build_config(load_toml(config), {"progress": False})
    with pytest.raises(ConfigError, match=r"6 rows at 'http://127.0.0.1:18233/v1'"):
        run_job(cfg)
