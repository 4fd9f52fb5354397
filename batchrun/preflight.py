"""What is checked and done before a request is sent: the config and the key, the output
folder writable (`preflight`); then the checkpoint brought up to date for this run
(`prepare`): the side file of a run the disk stopped, rows left in flight back to pending,
`--reuse` answers, answers a `recover` restores, `--offline` failures.
"""

from __future__ import annotations

import logging
import sqlite3
import tempfile
from pathlib import Path

from . import remote
from .checkpoint import Checkpoint
from .checkpoint.damage import is_damage
from .checkpoint.locate import PARQUET_MAGIC, starts_with
from .config import RunConfig
from .credentials import read_keys
from .endpoints import endpoint_specs
from .errors import BatchrunError, ConfigError
from .monitor import RunStats
from .remote import is_remote

log = logging.getLogger(__name__)


def preflight(cfg: RunConfig) -> dict[str, str | None]:
    """What can be wrong before the inputs are even read. Returns each endpoint's key by
    endpoint key (none offline)."""
    if not cfg.output:
        raise ConfigError("no output file: pass -o/--output or set output = ... in the config")
    api_keys = {} if cfg.offline else read_keys(cfg)
    check_output_location(cfg.output, cfg.endpoint_url, folder=bool(cfg.output_partition_rows))
    if cfg.reuse and not is_remote(cfg.reuse) and not Path(cfg.reuse).exists():
        raise ConfigError(f"--reuse {cfg.reuse}: no such checkpoint or output file")
    if cfg.reuse and cfg.fresh and Path(cfg.reuse).resolve() == cfg.checkpoint_path.resolve():
        raise ConfigError(
            f"--reuse {cfg.reuse} is this job's own checkpoint, which --fresh would delete; "
            "copy it elsewhere first and reuse the copy"
        )
    return api_keys


def check_output_location(output: str, endpoint_url: str | None, *, folder: bool) -> None:
    """The output can be written where it goes (and is a folder of parts, or a file, as the
    run will write it): found before anything is sent."""
    if is_remote(output):
        remote.check_writable(remote.resolve(output, endpoint_url), folder=folder)
    elif folder:
        if Path(output).is_file():
            raise ConfigError(f"output {output} is a file; partitioned output is a folder")
        check_output_writable(Path(output) / "part-00000.parquet")
    else:
        check_output_writable(Path(output))


def check_output_writable(output: Path) -> None:
    folder = output.parent if str(output.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".batchrun-probe-"):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot write the output in {folder}: {exc.strerror}") from None
    if output.is_dir():
        raise ConfigError(f"output {output} is a directory; give a file name")


def prepare(cfg: RunConfig, checkpoint: Checkpoint, resumed: bool) -> RunStats:
    """Before sending: in-flight rows back to pending, --reuse answers, --offline failures."""
    restored = checkpoint.restore_unsaved()
    if restored:
        log.info("%d answers restored from the side file of a run the disk stopped", restored)
    reset = checkpoint.prepare_resume(cfg.retry_failed, offline=cfg.offline)
    if resumed:
        log.info("resuming %s (%d rows to send again)", cfg.checkpoint_path, reset)
    reused = _reuse(cfg, checkpoint) if cfg.reuse else 0
    restored = _restore_recovered(cfg, checkpoint)
    if restored:
        log.info("%d answers restored from the output a recovered checkpoint lost", restored)
    not_cached = 0
    if cfg.offline:
        not_cached = checkpoint.fail_pending("not in cache (--offline sends nothing)", "offline")
    return RunStats(todo=checkpoint.todo(), reused=reused, not_cached=not_cached)


def _reuse(cfg: RunConfig, checkpoint: Checkpoint) -> int:
    """--reuse; one in a store (a checkpoint that `checkpoint_upload` put there, or an
    output) is downloaded beside the checkpoint first, and removed after."""
    assert cfg.reuse is not None
    if not is_remote(cfg.reuse):
        return reuse_answers(cfg, checkpoint, Path(cfg.reuse))
    from .destination import local_copy

    copy = local_copy(cfg.reuse, cfg.checkpoint_path.parent, cfg.endpoint_url)
    try:
        return reuse_answers(cfg, checkpoint, copy)
    finally:
        for end in ("", "-wal", "-shm"):  # SQLite's own files beside a checkpoint it read
            Path(f"{copy}{end}").unlink(missing_ok=True)


def _restore_recovered(cfg: RunConfig, checkpoint: Checkpoint) -> int:
    """After `batchrun recover`: answer the input rows read again from the output that held
    their answers (once)."""
    source = checkpoint.get_meta("restore_from")
    if not source:
        return 0
    from .results import read_reusable

    restored = 0
    if Path(source).is_file():
        answers = read_reusable(Path(source))
        keep = keeps_answer_bodies(cfg)
        try:
            restored = checkpoint.reuse_from_answers(answers, keep_bodies=keep, own=True)
        except BatchrunError as exc:  # once only: it must not stop every later run
            log.warning("answers not restored from %s (%s): they are sent again", source, exc)
    checkpoint.set_meta("restore_from", "")
    return restored


def reuse_answers(cfg: RunConfig, checkpoint: Checkpoint, source: Path) -> int:
    """Answer pending rows from an earlier checkpoint or output; returns rows answered."""
    from .results import read_reusable

    is_parquet = source.is_dir() or starts_with(source, PARQUET_MAGIC)  # a folder of parts
    keep = keeps_answer_bodies(cfg)
    try:
        if is_parquet:
            count = checkpoint.reuse_from_answers(read_reusable(source), keep_bodies=keep)
        else:
            count = checkpoint.reuse_from_checkpoint(source, keep_bodies=keep)
    except sqlite3.DatabaseError as exc:
        if not is_damage(exc):
            raise
        raise ConfigError(f"--reuse {source}: damaged, cannot be read ({exc})") from None
    log.info("%d rows answered from %s", count, source)
    return count


def keeps_answer_bodies(cfg: RunConfig) -> bool:
    """OpenAI batch output carries each answer's whole body: only then is it kept."""
    return cfg.output_format != "parquet"


def check_held_endpoints(cfg: RunConfig, checkpoint: Checkpoint) -> None:
    """Refuse to start without an endpoint that holds answers of this job: they are paid
    for, and only the endpoint that issued a request id can hand its answer out."""
    known = {key for spec in endpoint_specs(cfg) for key in (spec.key, spec.base_url.rstrip("/"))}
    missing = {
        endpoint: n
        for endpoint, n in checkpoint.held_by_endpoint().items()
        if endpoint is not None and endpoint not in known and endpoint.rstrip("/") not in known
    }
    if missing:
        listed = ", ".join(f"{n} rows at {endpoint!r}" for endpoint, n in sorted(missing.items()))
        raise ConfigError(
            f"answers of this job wait at endpoints this config does not list ({listed}); "
            "they are paid for and only the endpoint that issued them hands them out: add "
            "each back to [[endpoints]] (with its name, or its base_url) to collect them"
        )
