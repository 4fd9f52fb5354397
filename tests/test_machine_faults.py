"""Faults of the machine, made without root: a disk that fills (a file-size limit with
SIGXFSZ ignored makes writes fail as a full disk does), a damaged or truncated checkpoint,
folders removed mid-run. Each ends in a message and an exit code, never a traceback, and
loses no paid answer."""

from __future__ import annotations

import errno
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from batchrun.checkpoint import Checkpoint, CheckpointWriter
from batchrun.checkpoint import commit as commit_module
from batchrun.checkpoint.damage import CheckpointDamaged
from batchrun.checkpoint.salvage import integrity_problems, recover
from batchrun.checkpoint.unsaved import load, unsaved_path
from batchrun.lifecycle import Finished, Outcome, RowState, Submitted
from batchrun.records import Completion
from batchrun.storage import DiskFault, disk_fault
from batchrun.testing import MockServer

from .conftest import prompts, run_cli, start_cli, write_jsonl
from .ledger import Row, build
from .test_e2e import assert_rows_answered, run_args

S = RowState
NOW = 1_700_000_000.0


# ---------------------------------------------------------------- what counts as the disk's fault


def sqlite_error(name: str) -> sqlite3.OperationalError:
    exc = sqlite3.OperationalError("disk trouble")
    exc.sqlite_errorname = name
    return exc


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), "full"),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), "quota"),
        (OSError(errno.EFBIG, "File too large"), "size limit"),
        (OSError(errno.EROFS, "Read-only file system"), "read-only"),
        (FileNotFoundError(errno.ENOENT, "No such file or directory"), "removed"),
        (sqlite_error("SQLITE_FULL"), "full"),
        (sqlite_error("SQLITE_IOERR_WRITE"), "refused a write"),
        (sqlite_error("SQLITE_READONLY_DBMOVED"), "read-only"),
        (OSError("IOError: No space left on device. Detail: [errno 28]"), "full"),  # pyarrow's
    ],
)
def test_the_disk_is_blamed_for_what_is_its_fault(exc: BaseException, reason: str) -> None:
    fault = disk_fault(exc, Path("ckpt"))
    assert fault is not None and reason in fault.reason


@pytest.mark.parametrize(
    "exc",
    [
        sqlite_error("SQLITE_ERROR"),  # a bad statement: a bug
        sqlite3.InterfaceError("Error binding parameter 1"),
        OSError(errno.ECONNRESET, "Connection reset"),
        ValueError("no"),
    ],
)
def test_a_bug_is_never_taken_for_a_full_disk(exc: BaseException) -> None:
    assert disk_fault(exc, Path("ckpt")) is None


# ---------------------------------------------------------------- the writer holds on a full disk


def rows(path: Path) -> dict[str, tuple[RowState, str | None]]:
    """Every row's state and answer."""
    from batchrun.checkpoint import open_reader

    reader = open_reader(path)
    try:
        return {
            row_id: (state, content)
            for page in reader.result_pages()
            for row_id, state, content in zip(page.row_id, page.state, page.content, strict=True)
        }
    finally:
        reader.close()


def answered(text: str) -> Completion:
    return Completion(content=text, prompt_tokens=3, completion_tokens=5, total_tokens=8)


def done(idx: int, text: str) -> list[Any]:
    return [Submitted(idx, 1, NOW), Finished(idx, Outcome(S.DONE, answered(text)), 1, NOW, NOW)]


class FullDisk:
    """Commit.write refusing as a full disk does, until `free()`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.full = True
        real = commit_module.Commit.write

        def write(batch: Any, *args: Any) -> None:
            if self.full:
                raise sqlite_error("SQLITE_FULL")
            real(batch, *args)

        monkeypatch.setattr(commit_module.Commit, "write", write)

    def free(self) -> None:
        self.full = False


def test_a_full_disk_stops_the_run_once_and_holds_its_answers_until_space_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ckpt.sqlite"
    build(path, [Row(0), Row(1)]).close()
    disk = FullDisk(monkeypatch)
    faults: list[DiskFault] = []
    writer = CheckpointWriter(path, interval=0.01, on_fault=faults.append, retry_interval=0.01)
    try:
        writer.apply(done(0, "first"))
        writer.flush()  # held, not raised: the run ends cleanly
        writer.apply(done(1, "second"))
        writer.flush()
        assert len(faults) == 1 and "full" in faults[0].reason
        assert writer.holding
        assert rows(path)["r0"][0] is S.PENDING  # nothing reached the file yet
        disk.free()
        deadline = time.monotonic() + 10
        while writer.holding and time.monotonic() < deadline:
            time.sleep(0.02)  # no new work, no flush: the writer tries again by itself
    finally:
        writer.close()
    states = rows(path)
    assert states["r0"] == (S.DONE, "first") and states["r1"] == (S.DONE, "second")
    assert writer.unsaved is None and not unsaved_path(path).exists()
    assert writer.disk_error() is not None  # the run still says what happened


def test_answers_the_disk_never_took_go_to_a_side_file_that_the_next_run_restores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ckpt.sqlite"
    build(path, [Row(0), Row(1), Row(2)]).close()
    writer = CheckpointWriter(path, interval=0.01)
    writer.apply(done(0, "committed"))
    writer.flush()
    disk = FullDisk(monkeypatch)
    writer.apply(done(1, "held"))
    writer.apply([Submitted(2, 1, NOW)])
    writer.close()
    error = writer.disk_error()
    assert error is not None and error.unsaved == unsaved_path(path) and error.held == 1
    assert len(load(unsaved_path(path)).changes) == 3
    disk.free()
    checkpoint = Checkpoint.open(path)
    try:
        assert checkpoint.restore_unsaved() == 1
        assert checkpoint.restore_unsaved() == 0  # once
        assert checkpoint.totals().attempts == 3
    finally:
        checkpoint.close()
    states = rows(path)
    assert states["r0"] == (S.DONE, "committed") and states["r1"] == (S.DONE, "held")
    assert states["r2"][0] is S.INFLIGHT
    assert not unsaved_path(path).exists()


def test_a_side_file_for_rows_finished_since_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ckpt.sqlite"
    build(path, [Row(0)]).close()
    disk = FullDisk(monkeypatch)
    writer = CheckpointWriter(path)
    writer.apply(done(0, "held"))
    writer.close()
    disk.free()
    saved = unsaved_path(path).read_bytes()
    checkpoint = Checkpoint.open(path)
    checkpoint.restore_unsaved()
    checkpoint.close()
    unsaved_path(path).write_bytes(saved)  # as if the first restore died before removing it
    checkpoint = Checkpoint.open(path)
    try:
        assert checkpoint.restore_unsaved() == 0
        assert checkpoint.totals().attempts == 1
    finally:
        checkpoint.close()


# ---------------------------------------------------------------- the CLI under a file-size limit


def limited(max_bytes: int) -> Callable[[], None]:
    """A child's set-up: writes past `max_bytes` fail with EFBIG, as on a full disk."""

    def setup() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return setup


def run_limited(max_bytes: int, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    return subprocess.run(
        [sys.executable, "-m", "batchrun", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        preexec_fn=limited(max_bytes),
        check=False,
    )


def answers(out: Path) -> list[dict[str, Any]]:
    return pq.read_table(out).to_pylist()


@pytest.mark.slow
def test_a_disk_that_fills_mid_run_stops_cleanly_and_the_resume_buys_nothing_twice(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    inputs = prompts(800)
    source = write_jsonl(tmp_path / "in.jsonl", inputs)
    out = tmp_path / "out.parquet"
    stopped = run_limited(384 * 1024, *run_args(source, out, mock_server, fast_config))
    assert stopped.returncode == 1, stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert "the run stopped: cannot write" in stopped.stderr
    assert "answered rows are safe in" in stopped.stderr
    assert "Resume with: " in stopped.stderr
    sent_before = mock_server.stats()["submissions"]
    assert 0 < sent_before < 800

    resumed = run_cli(*run_args(source, out, mock_server, fast_config))
    assert resumed.returncode == 0, resumed.stderr
    assert_rows_answered(answers(out), inputs)
    # Answers that arrived after the disk filled were kept (in memory, then the side file):
    # at most the rows on the wire when it filled are bought again.
    assert mock_server.stats()["submissions"] <= 800 + 16
    assert not unsaved_path(Path(f"{out}.checkpoint.sqlite")).exists()


@pytest.mark.slow
def test_a_disk_full_while_reading_the_inputs_sends_nothing_and_says_so(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", prompts(2000))
    out = tmp_path / "out.parquet"
    result = run_limited(64 * 1024, *run_args(source, out, mock_server, fast_config))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "Nothing was sent: the checkpoint" in result.stderr
    assert "Run it again with: " in result.stderr
    assert mock_server.stats()["submissions"] == 0
    assert not Path(f"{out}.checkpoint.sqlite").exists()


# ---------------------------------------------------------------- folders that vanish


def test_an_output_the_disk_refuses_ends_cleanly_and_resumes(
    mock_server: MockServer, fast_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batchrun import destination
    from batchrun.config import build_config, load_toml
    from batchrun.errors import DiskError
    from batchrun.job import run_job

    inputs = prompts(30)
    source = write_jsonl(tmp_path / "in.jsonl", inputs)
    out = tmp_path / "out.parquet"
    cfg = build_config(
        load_toml(fast_config),
        {"inputs": [str(source)], "output": str(out), "base_url": mock_server.base_url,
         "progress": False},
    )  # fmt: skip
    real = destination.write_outputs

    def full(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device", str(out))

    monkeypatch.setattr(destination, "write_outputs", full)
    with pytest.raises(DiskError) as stopped:
        run_job(cfg)
    message = str(stopped.value)
    assert f"cannot write {out}: the disk is full" in message
    assert "30 answered rows are safe" in message and "Resume with: " in message
    monkeypatch.setattr(destination, "write_outputs", real)
    assert run_job(cfg).exit_code == 0
    assert_rows_answered(answers(out), inputs)
    assert mock_server.stats()["submissions"] == 30


def remove_mid_run(server: MockServer, args: list[str], folder: Path) -> tuple[int, str]:
    """Start the job, remove `folder` once 20 rows are sent; (exit code, stderr)."""
    proc = start_cli(*args)
    deadline = time.monotonic() + 30
    while server.stats()["submissions"] < 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    shutil.rmtree(folder)
    _, stderr = proc.communicate(timeout=120)
    return proc.returncode, stderr


@pytest.mark.slow
def test_an_output_folder_removed_mid_run_is_made_again(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    mock_server.configure(latency=0.05)
    inputs = prompts(300)
    source = write_jsonl(tmp_path / "in.jsonl", inputs)
    out = tmp_path / "published" / "out.parquet"
    ckpt = tmp_path / "job.sqlite"
    args = run_args(source, out, mock_server, fast_config, "--checkpoint", str(ckpt))
    code, stderr = remove_mid_run(mock_server, args, out.parent)
    assert code == 0, stderr
    assert_rows_answered(answers(out), inputs)
    assert mock_server.stats()["submissions"] == 300


@pytest.mark.slow
def test_a_checkpoint_removed_mid_run_is_written_again_from_the_open_job(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    mock_server.configure(latency=0.05)
    inputs = prompts(300)
    source = write_jsonl(tmp_path / "in.jsonl", inputs)
    out = tmp_path / "work" / "out.parquet"
    args = run_args(source, out, mock_server, fast_config)
    code, stderr = remove_mid_run(mock_server, args, out.parent)  # the checkpoint with it
    assert code == 0, stderr
    assert "was removed during the run: written again" in stderr
    assert_rows_answered(answers(out), inputs)
    status = run_cli("status", str(out), "--json", check=True)
    assert '"done": 300' in status.stdout


# ---------------------------------------------------------------- a damaged checkpoint


def table_leaves(path: Path, table: str) -> list[int]:
    """The leaf pages of `table`'s b-tree (SQLite's file format, section 1.6)."""
    conn = sqlite3.connect(path)
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()
    conn.close()
    data = path.read_bytes()
    size = int.from_bytes(data[16:18], "big")

    def walk(page: int) -> list[int]:
        base = (page - 1) * size
        start = base + (100 if page == 1 else 0)
        if data[start] == 0x0D:
            return [page]
        cells = int.from_bytes(data[start + 3 : start + 5], "big")
        children = []
        for i in range(cells):
            at = base + int.from_bytes(data[start + 12 + 2 * i : start + 14 + 2 * i], "big")
            children.append(int.from_bytes(data[at : at + 4], "big"))
        children.append(int.from_bytes(data[start + 8 : start + 12], "big"))
        return [leaf for child in children for leaf in walk(child)]

    return walk(root[0])


def damage_page(path: Path, page: int) -> None:
    size = int.from_bytes(path.read_bytes()[16:18], "big")
    with path.open("r+b") as fh:
        fh.seek((page - 1) * size)
        fh.write(os.urandom(size))


def recover_then_finish(job: dict[str, Any], path: Path) -> tuple[str, str]:
    """`batchrun recover PATH`, then the job's own command; both must succeed, and the job's
    output must hold every row's answer. Returns both commands' stderr."""
    recovered = run_cli("recover", str(path))
    assert recovered.returncode == 0, recovered.stderr
    finished = run_cli(*job["args"])
    assert finished.returncode == 0, finished.stderr
    assert_rows_answered(answers(job["out"]), job["inputs"])
    return recovered.stderr, finished.stderr


@pytest.fixture
def finished_job(mock_server: MockServer, fast_config: Path, tmp_path: Path) -> dict[str, Any]:
    inputs = prompts(1500)
    source = write_jsonl(tmp_path / "in.jsonl", inputs)
    out = tmp_path / "out.parquet"
    args = run_args(source, out, mock_server, fast_config)
    run_cli(*args, check=True)
    ckpt = Path(f"{out}.checkpoint.sqlite")
    conn = sqlite3.connect(ckpt)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the main file
    conn.close()
    return {"inputs": inputs, "args": args, "out": out, "ckpt": ckpt}


@pytest.mark.slow
def test_a_damaged_checkpoint_is_named_then_recovered_and_nothing_is_bought_again(
    finished_job: dict[str, Any], mock_server: MockServer
) -> None:
    ckpt, out = finished_job["ckpt"], finished_job["out"]
    leaves = table_leaves(ckpt, "results")
    damage_page(ckpt, leaves[len(leaves) // 2])
    damage_page(ckpt, table_leaves(ckpt, "items")[1])  # input rows lost too
    sent = mock_server.stats()["submissions"]

    refused = run_cli(*finished_job["args"])
    assert refused.returncode == 2
    assert "Traceback" not in refused.stderr
    assert f"{ckpt} is damaged" in refused.stderr and f"batchrun recover {ckpt}" in refused.stderr

    exported = run_cli("export", str(out), "-o", str(out.with_name("copy.parquet")))
    assert exported.returncode == 2  # it reads every answer: it meets the damage
    assert "Traceback" not in exported.stderr and f"{ckpt} is damaged" in exported.stderr

    recovered = run_cli("recover", str(out))
    assert recovered.returncode == 0, recovered.stderr
    assert f"recovered {ckpt}" in recovered.stderr
    assert "answers restored from" in recovered.stderr
    assert Path(f"{ckpt}.damaged").is_file()
    assert integrity_problems(ckpt) == []

    finished = run_cli(*finished_job["args"])
    assert finished.returncode == 0, finished.stderr
    assert_rows_answered(answers(out), finished_job["inputs"])
    assert mock_server.stats()["submissions"] == sent  # every lost answer came from the output


@pytest.mark.slow
def test_a_truncated_checkpoint_is_named_as_damaged_not_as_a_foreign_file(
    finished_job: dict[str, Any], mock_server: MockServer
) -> None:
    ckpt, out = finished_job["ckpt"], finished_job["out"]
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) * 2 // 3])
    status = run_cli("status", str(out))
    assert status.returncode == 2
    assert "truncated" in status.stderr and "batchrun recover" in status.stderr
    assert "not a batchrun checkpoint" not in status.stderr

    out.unlink()  # no output to restore from: what the damage took is bought again
    recovered = run_cli("recover", str(ckpt))
    assert recovered.returncode == 0, recovered.stderr
    sent = mock_server.stats()["submissions"]
    finished = run_cli(*finished_job["args"])
    assert finished.returncode == 0, finished.stderr
    assert_rows_answered(answers(out), finished_job["inputs"])
    rebought = mock_server.stats()["submissions"] - sent
    assert 0 < rebought < 1500  # the rows on intact pages were kept


def test_recover_leaves_an_intact_checkpoint_alone(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.sqlite"
    build(path, [Row(0), Row(1)]).close()
    before = path.read_bytes()
    result = recover(path, None)
    assert result.problems == []
    assert path.read_bytes() == before and not Path(f"{path}.damaged").exists()


def truncated_checkpoint(tmp_path: Path) -> Path:
    """A checkpoint of 3,000 rows cut to half its length (every page in the main file)."""
    path = tmp_path / "ckpt.sqlite"
    build(path, [Row(i) for i in range(3000)]).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_a_truncated_file_is_damaged_at_open(tmp_path: Path) -> None:
    path = truncated_checkpoint(tmp_path)
    with pytest.raises(CheckpointDamaged, match="truncated"):
        Checkpoint.open(path)


# ---------------------------------------------------------------- sleep and clock steps


@pytest.mark.slow
def test_a_process_stopped_past_the_poll_window_repolls_and_rebuys_only_expired_ids(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    from .ledger import count, wait_until

    mock_server.configure(p202=1.0, pending_polls=10_000, expire_after=1.0)
    inputs = prompts(12)
    source = write_jsonl(tmp_path / "in.jsonl", inputs)
    out = tmp_path / "out.parquet"
    checkpoint = Path(f"{out}.checkpoint.sqlite")
    proc = start_cli(*run_args(source, out, mock_server, fast_config))
    wait_until(lambda: count(checkpoint, RowState.POLLING) == 12)
    proc.send_signal(signal.SIGSTOP)  # the lid closes
    try:
        mock_server.advance(2.0)  # nobody polls while it sleeps: the ids expire
        mock_server.configure(p202=0.0, pending_polls=1)
    finally:
        proc.send_signal(signal.SIGCONT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert_rows_answered(answers(out), inputs)
    assert "12 re-sent after their id expired" in stderr
    stats = mock_server.stats()
    assert stats["submissions"] == 24  # each row once, then once more after its id expired
    assert stats["resubmitted_while_pending"] == 0  # never while the server still held it


def test_the_rate_window_never_reads_the_wall_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wall-clock step (NTP, a laptop's resume) must neither stall the job nor let a burst
    through --rpm: rate windows run on the monotonic loop clock only."""
    import asyncio

    from batchrun.limits import RateLimiter, RateWindow

    def stepped() -> float:
        raise AssertionError("the rate limiter read the wall clock")

    async def book(n: int) -> list[float]:
        limiter = RateLimiter(RateWindow(rpm=6000, tpm=None))
        return [(await limiter.acquire(10)).at for _ in range(n)]

    monkeypatch.setattr(time, "time", stepped)
    starts = asyncio.run(book(5))
    assert starts == sorted(starts) and starts[-1] - starts[0] < 5


# ---------------------------------------------------------------- room before spending


def test_too_little_free_space_is_warned_about_or_refused_before_anything_is_sent(
    mock_server: MockServer,
    fast_config: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from batchrun import storage
    from batchrun.config import build_config, load_toml
    from batchrun.errors import ConfigError
    from batchrun.job import run_job

    source = write_jsonl(tmp_path / "in.jsonl", prompts(20))
    out = tmp_path / "out.parquet"

    def cfg(**more: Any) -> Any:
        options = {"inputs": [str(source)], "output": str(out), "progress": False}
        return build_config(
            load_toml(fast_config), {**options, "base_url": mock_server.base_url, **more}
        )

    monkeypatch.setattr(storage, "free_bytes", lambda folder: 1000)
    with pytest.raises(ConfigError, match=r"has 0\.0 MB free; the job needs about .* MB there"):
        run_job(cfg(require_space=True))
    assert mock_server.stats()["submissions"] == 0
    caplog.set_level("WARNING")
    assert run_job(cfg()).exit_code == 0
    assert "--require-space refuses to start instead" in caplog.text
    monkeypatch.setattr(storage, "free_bytes", lambda folder: 10**12)
    caplog.clear()
    out = tmp_path / "roomy.parquet"  # a new job: rows to do, and room for them
    assert run_job(cfg(require_space=True, output=str(out))).exit_code == 0
    assert "free" not in caplog.text


def test_a_side_file_the_disk_refuses_goes_to_the_temp_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    from batchrun.checkpoint import unsaved

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    path = tmp_path / "ckpt.sqlite"
    build(path, [Row(0)]).close()
    real_save = unsaved.save

    def beside_refused(where: Path, *args: Any) -> None:
        if where == unsaved_path(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(where, *args)

    monkeypatch.setattr(unsaved, "save", beside_refused)
    disk = FullDisk(monkeypatch)
    writer = CheckpointWriter(path)
    writer.apply(done(0, "held"))
    writer.close()
    error = writer.disk_error()
    assert error is not None and error.unsaved is not None and error.lost == 0
    assert error.unsaved.parent == tmp_path / "tmp"
    disk.free()
    checkpoint = Checkpoint.open(path)
    try:
        assert checkpoint.restore_unsaved() == 1
    finally:
        checkpoint.close()
    assert rows(path)["r0"] == (S.DONE, "held")


def test_answers_no_disk_takes_are_counted_as_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batchrun.checkpoint import unsaved

    path = tmp_path / "ckpt.sqlite"
    build(path, [Row(0), Row(1)]).close()

    def refused(*args: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(unsaved, "save", refused)
    FullDisk(monkeypatch)
    writer = CheckpointWriter(path)
    writer.apply([*done(0, "a"), *done(1, "b")])
    writer.close()
    error = writer.disk_error()
    assert error is not None and error.unsaved is None and error.lost == 2


def test_a_side_file_of_an_earlier_job_at_the_same_path_is_never_applied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ckpt.sqlite"
    old = build(path, [Row(0)])
    old.set_meta("created_at", "1")
    old.close()
    disk = FullDisk(monkeypatch)
    writer = CheckpointWriter(path)
    writer.apply(done(0, "OLD JOB ANSWER"))
    writer.close()
    disk.free()
    saved = unsaved_path(path).read_bytes()
    new = build(path, [Row(0)])  # --fresh: a new job at the same path; the side file goes
    new.set_meta("created_at", "2")
    assert not unsaved_path(path).exists()
    unsaved_path(path).write_bytes(saved)  # as if it had been left (or copied) there anyway
    try:
        assert new.restore_unsaved() == 0
    finally:
        new.close()
    assert rows(path)["r0"][0] is S.PENDING
    assert Path(f"{unsaved_path(path)}.stale").is_file()


def test_without_a_run_to_stop_a_disk_fault_fails_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batchrun.errors import CheckpointWriteError

    path = tmp_path / "ckpt.sqlite"
    build(path, [Row(0)]).close()
    FullDisk(monkeypatch)
    writer = CheckpointWriter(path, hold_on_fault=False)  # Ray's checkpoint service
    try:
        writer.apply(done(0, "x"))
        with pytest.raises(CheckpointWriteError, match="checkpoint write failed"):
            writer.flush()
    finally:
        writer.close()


def test_recover_refuses_what_is_not_a_checkpoint(tmp_path: Path) -> None:
    from batchrun.errors import CheckpointError

    data = tmp_path / "in.jsonl"
    data.write_text('{"id": "a", "prompt": "hi"}\n')
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    for path in (data, other):
        before = path.read_bytes()
        with pytest.raises(CheckpointError, match="not a batchrun checkpoint"):
            recover(path, None)
        assert path.read_bytes() == before and not Path(f"{path}.damaged").exists()


def test_a_short_file_beside_a_wal_is_not_called_damaged(tmp_path: Path) -> None:
    from batchrun.checkpoint.damage import header_problem

    path = truncated_checkpoint(tmp_path)
    assert header_problem(path) is not None
    # A WAL checkpoint writes the new page count before it grows the file: with frames in
    # the WAL the short file may be one caught in between, and only a failed read tells.
    Path(f"{path}-wal").write_bytes(b"frames")
    assert header_problem(path) is None


@pytest.mark.slow
def test_a_checkpoint_that_lost_its_job_record_is_recovered_and_finished(
    finished_job: dict[str, Any], mock_server: MockServer
) -> None:
    ckpt = finished_job["ckpt"]
    conn = sqlite3.connect(ckpt)
    (meta_root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'meta'").fetchone()
    conn.close()
    damage_page(ckpt, meta_root)
    sent = mock_server.stats()["submissions"]
    _, finished = recover_then_finish(finished_job, ckpt)
    assert "lost its job record" in finished
    assert mock_server.stats()["submissions"] == sent


def test_a_wake_past_the_poll_window_is_said_once(caplog: pytest.LogCaptureFixture) -> None:
    import asyncio

    from batchrun.wake import watch_for_sleep

    readings = iter([0.0, 1.0, 2.0, 40.0, 41.0, 42.0])  # away 38 s between 2 and 40

    async def watch() -> None:
        task = asyncio.create_task(watch_for_sleep(5, tick=0.001, clock=lambda: next(readings)))
        await asyncio.wait({task})  # it ends when the readings run out
        assert isinstance(task.exception(), RuntimeError)  # StopIteration, as a task raises it

    caplog.set_level("WARNING")
    asyncio.run(watch())
    woke = [r for r in caplog.records if "was not running for 38 s" in r.getMessage()]
    assert len(woke) == 1 and "past the 10 s" in woke[0].getMessage()


def test_what_is_held_is_in_the_side_file_at_once_and_gone_once_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ckpt.sqlite"
    build(path, [Row(0), Row(1)]).close()
    disk = FullDisk(monkeypatch)
    writer = CheckpointWriter(path, interval=0.01, retry_interval=0.05)
    try:
        writer.apply(done(0, "held"))
        writer.flush()
        # A kill now would lose nothing: the held answer is already in the side file.
        assert [type(c).__name__ for c in load(unsaved_path(path)).changes] == [
            "Submitted",
            "Finished",
        ]
        writer.apply(done(1, "more"))
        writer.flush()
        assert len(load(unsaved_path(path)).changes) == 4  # rewritten whole as more arrives
        disk.free()
        deadline = time.monotonic() + 10
        while writer.holding and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not unsaved_path(path).exists()  # committed: nothing left to restore
    finally:
        writer.close()
    assert rows(path) == {"r0": (S.DONE, "held"), "r1": (S.DONE, "more")}


@pytest.mark.slow
def test_rows_under_a_damaged_interior_page_are_read_off_their_leaves(
    finished_job: dict[str, Any], mock_server: MockServer
) -> None:
    ckpt, out = finished_job["ckpt"], finished_job["out"]
    conn = sqlite3.connect(ckpt)
    roots = dict(conn.execute("SELECT name, rootpage FROM sqlite_master WHERE type = 'table'"))
    conn.close()
    data = ckpt.read_bytes()
    size = int.from_bytes(data[16:18], "big")
    for table in ("items", "results"):
        assert data[(roots[table] - 1) * size] == 0x05  # an interior page: every row below it
        damage_page(ckpt, roots[table])
    out.unlink()  # no output to restore from: every answer must come off the leaves
    sent = mock_server.stats()["submissions"]
    recovered, _ = recover_then_finish(finished_job, ckpt)
    assert "finished rows: 1,500 kept, 0 lost" in recovered
    assert mock_server.stats()["submissions"] == sent


def test_leaf_pages_read_back_every_row_as_sqlite_stored_it(tmp_path: Path) -> None:
    from batchrun.checkpoint.leaves import leaf_rows

    path = tmp_path / "plain.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, a TEXT, b REAL, c BLOB, d INTEGER)")
    rows = [
        (i, f"text {i} " + "x" * (i * 97 % 9000), i / 3, bytes([i % 256]) * (i % 5), -(i**3))
        for i in range(1, 400)
    ]  # long texts spill onto overflow pages
    conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?, ?)", rows)
    conn.execute("DELETE FROM t WHERE k % 7 = 0")  # deleted rows must not come back
    conn.commit()
    conn.close()
    found = {r.rowid: r.values for r in leaf_rows(path.read_bytes()) if len(r.values) == 5}
    assert found == {k: (None, a, b, c, d) for k, a, b, c, d in rows if k % 7}


@pytest.mark.slow
def test_answers_whose_input_rows_were_damaged_are_kept_without_an_output(
    finished_job: dict[str, Any], mock_server: MockServer
) -> None:
    ckpt, out = finished_job["ckpt"], finished_job["out"]
    leaves = table_leaves(ckpt, "items")
    damage_page(ckpt, leaves[len(leaves) // 2])  # input rows gone, their answers intact
    out.unlink()  # nothing to restore from: the answers must be the checkpoint's own
    sent = mock_server.stats()["submissions"]
    recovered, _ = recover_then_finish(finished_job, ckpt)
    assert "finished rows: 1,500 kept, 0 lost" in recovered
    assert mock_server.stats()["submissions"] == sent
