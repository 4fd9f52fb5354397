"""Inputs -> checkpoint: what a job is (its identity), reading every row into a new
checkpoint, resuming a matching one, and the dry run that reads without keeping anything.

Every row is validated and every id checked unique here, before anything is sent; a resume
compares fingerprints only.
"""

from __future__ import annotations

import itertools
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import remote
from .budget import Pricing
from .checkpoint import (
    Checkpoint,
    DuplicateRowId,
    FailureCause,
    IngestRow,
    remove_checkpoint,
    remove_if_never_written,
)
from .columns import ColumnKinds
from .config import RunConfig
from .dataset import InputFile, expand_inputs, file_digest, read_rows
from .errors import DatasetError, RunMismatchError
from .identity import fingerprint, identity_changes, same_job
from .lifecycle import RowState
from .payloads import RequestKeys, prepare_row
from .repeats import ONCE, Repeats
from .templates import PromptTemplate

log = logging.getLogger(__name__)

INGEST_BATCH = 5000


@dataclass
class DryRunReport:
    rows: int
    invalid: int
    prompt_tokens_est: int
    completion_tokens_max: int
    invalid_causes: list[FailureCause]
    models: dict[str, int]
    cost_range: tuple[float, float] | None = None  # USD: prompts only .. every max_tokens used
    repeats: int = 1  # the counts above are of requests: input rows times this


def input_digests(
    files: list[InputFile], known: dict[str, list[Any]] | None = None
) -> tuple[list[str], dict[str, list[Any]]]:
    """Each input's content digest (an object in a store: what the store says identifies its
    content, with its size), and what to remember of local files: [size, mtime_ns, digest]
    by path. A file whose size and modification time are what `known` says keeps its
    digest without being read again (as make and rsync judge a file unchanged), so a resume
    does not re-read a large input; any other file is hashed."""
    digests, stats = [], {}
    for f in files:
        if f.remote is not None:
            # The store names the content (ETag, generation) in one request: nothing to cache.
            digests.append(remote.content_id(f.remote))
            continue
        st = f.path.stat()
        mark = [st.st_size, st.st_mtime_ns]
        key = str(f.path.resolve())
        cached = (known or {}).get(key)
        digest = cached[2] if cached is not None and cached[:2] == mark else file_digest(f.path)
        digests.append(digest)
        stats[key] = [*mark, digest]
    return digests, stats


def prompt_template(cfg: RunConfig) -> PromptTemplate | None:
    template = PromptTemplate(cfg.prompt_template, cfg.system_prompt)
    return template if template else None


def ingest(
    checkpoint: Checkpoint,
    files: list[InputFile],
    limit: int | None,
    template: PromptTemplate | None = None,
    keys: RequestKeys | None = None,
    *,
    refill: bool = False,
    repeats: Repeats = ONCE,
) -> None:
    """Validate input rows into the checkpoint (rows and ids; nothing is sent): the first
    `limit` of them, or, on a checkpoint that holds some already, the next ones up to it.
    With `refill` (after `batchrun recover`), every row up to the limit is read again and
    those the checkpoint lost are put back. `limit` counts input rows; with `repeats`, each
    is that many checkpoint rows, all stored in the same batch."""
    start = 0 if refill else repeats.input_rows(checkpoint.stored_rows())
    # A job going on learns on from its columns so far (a checkpoint of an earlier release
    # has only their output types).
    kinds = ColumnKinds(
        checkpoint.get_json("extra_kinds", None) or checkpoint.get_json("extra_columns", [])
    )
    batch: list[IngestRow] = []

    def store() -> None:
        try:
            checkpoint.insert_rows(batch, kinds.names, missing_only=refill)
        except DuplicateRowId as dup:
            first_idx = None if dup.first_idx is None else repeats.input_rows(dup.first_idx)
            first = _location(files, first_idx)
            raise DatasetError(
                f"{dup.loc}: duplicate id {repeats.item_id(dup.row_id)!r} (first used at "
                f"{first}); ids must be unique. Nothing was sent."
            ) from None
        batch.clear()

    read = start
    for n, source in enumerate(itertools.islice(read_rows(files), start, limit), start):
        for r, row in enumerate(repeats.rows(prepare_row(source, template))):
            kinds.observe(row.extra)
            key = keys.key(row.messages, row.overrides) if keys and row.messages else None
            batch.append(IngestRow(repeats.position(n, r), row, key))
        read = n + 1
        if len(batch) >= INGEST_BATCH:
            store()
    if batch:
        store()
    checkpoint.set_json("extra_columns", kinds.as_list())
    checkpoint.set_json("extra_kinds", kinds.learned())
    # Every row read (no limit, or fewer rows than it): a raised limit has nothing to add.
    checkpoint.set_meta("input_exhausted", "1" if limit is None or read < limit else "")
    checkpoint.set_meta("ingest_complete", "1")
    log.info("read %d input rows into %s", read - start, checkpoint.path)


def _extend(checkpoint: Checkpoint, files: list[InputFile], cfg: RunConfig) -> None:
    """A raised or removed --limit: read the rows past the old one (already answered rows
    are kept; only the new ones will be sent)."""
    if checkpoint.get_meta("input_exhausted") == "1":
        return
    repeats = Repeats.of(cfg)
    if cfg.limit is not None and cfg.limit <= repeats.input_rows(checkpoint.stored_rows()):
        return
    keys = RequestKeys(cfg.body_template())
    ingest(checkpoint, files, cfg.limit, prompt_template(cfg), keys, repeats=repeats)


def _refill(checkpoint: Checkpoint, files: list[InputFile], cfg: RunConfig) -> None:
    """Put back the input rows a recovered checkpoint lost (read again from the inputs)."""
    before = checkpoint.stored_rows()
    keys = RequestKeys(cfg.body_template())
    template = prompt_template(cfg)
    ingest(checkpoint, files, cfg.limit, template, keys, refill=True, repeats=Repeats.of(cfg))
    reattached = checkpoint.reattach_results()
    checkpoint.set_meta("refill", "")
    if reattached:
        log.info("recovered checkpoint: %d rows read back have their answers again", reattached)
    log.info("recovered checkpoint: input rows read again (%d stored before)", before)


def _note_exhausted_input(checkpoint: Checkpoint) -> None:
    """For a checkpoint of an earlier release (its identity holds the limit it was read
    with): whether every input row was read."""
    if checkpoint.get_meta("input_exhausted") is not None:
        return
    limit = checkpoint.get_json("identity", {}).get("limit")
    exhausted = limit is None or checkpoint.stored_rows() < limit
    checkpoint.set_meta("input_exhausted", "1" if exhausted else "")


def _location(files: list[InputFile], idx: int | None) -> str:
    """Where input row `idx` came from (read again: only a failing job asks)."""
    if idx is None:
        return "an earlier row"
    for n, source in enumerate(read_rows(files)):
        if n == idx:
            return source.loc
    return f"row {idx}"


def open_checkpoint(cfg: RunConfig, files: list[InputFile]) -> tuple[Checkpoint, bool]:
    """Resume the checkpoint if it matches, else create and fill it. Returns (it, resumed)."""
    path = cfg.checkpoint_path
    if cfg.fresh:
        remove_checkpoint(path)
    remove_if_never_written(path)
    if path.exists():
        checkpoint = Checkpoint.open(path)
        if checkpoint.get_meta("ingest_complete") == "1":
            digests, stats = input_digests(files, checkpoint.get_json("input_stats"))
            identity = cfg.identity(digests)
            _check_same_job(checkpoint, identity, cfg)
            _note_exhausted_input(checkpoint)
            checkpoint.set_meta("fingerprint", fingerprint(identity))  # as this release writes it
            checkpoint.set_json("identity", identity)
            checkpoint.set_json("input_stats", stats)
            if checkpoint.get_meta("refill") == "1":
                _refill(checkpoint, files, cfg)
            _extend(checkpoint, files, cfg)
            checkpoint.set_row_limit(Repeats.of(cfg).row_limit(cfg.limit))
            return checkpoint, True
        checkpoint.close()  # a first run that died while reading inputs: nothing was sent
    digests, stats = input_digests(files)
    identity = cfg.identity(digests)
    try:
        checkpoint = Checkpoint.create(path)
    except BaseException:  # a disk that fills while the tables are made: no half a file
        remove_checkpoint(path)
        raise
    try:
        checkpoint.set_meta("fingerprint", fingerprint(identity))
        checkpoint.set_json("identity", identity)
        checkpoint.set_json("input_stats", stats)
        checkpoint.set_json("settings", cfg.public_dict())
        checkpoint.set_meta("created_at", str(time.time()))
        repeats, keys = Repeats.of(cfg), RequestKeys(cfg.body_template())
        ingest(checkpoint, files, cfg.limit, prompt_template(cfg), keys, repeats=repeats)
        checkpoint.set_row_limit(repeats.row_limit(cfg.limit))
    except BaseException:
        checkpoint.close()
        remove_checkpoint(path)
        raise
    return checkpoint, False


def _check_same_job(checkpoint: Checkpoint, identity: dict[str, Any], cfg: RunConfig) -> None:
    if checkpoint.get_meta("identity_lost") == "1":
        # `recover` could not read what the job was: this run's inputs and settings stand
        # for it, once (its caller records them), and every input row is read again.
        log.warning("%s lost its job record to damage: taking this run's", cfg.checkpoint_path)
        checkpoint.set_meta("identity_lost", "")
        checkpoint.set_json("settings", cfg.public_dict())
        return
    recorded = checkpoint.get_json("identity", {})
    if same_job(recorded, identity):
        return
    changed = identity_changes(recorded, identity)
    done = checkpoint.counts().get(RowState.DONE, 0)
    checkpoint.close()
    raise RunMismatchError(
        f"{cfg.checkpoint_path} belongs to a job with other inputs or request settings "
        f"(changed: {'; '.join(changed) or 'unknown'}).",
        "Run it with the original inputs and settings to resume, or add --fresh to start over "
        f"(discarding {done} finished rows); with --fresh --reuse {cfg.output} (or a copy of "
        "the checkpoint), rows whose request did not change are answered from the earlier run "
        "instead of being bought again.",
        done=done,
    )


def dry_run(cfg: RunConfig) -> DryRunReport:
    """Read, validate and build every request without sending or keeping anything."""
    files = expand_inputs(cfg.inputs, cfg.endpoint_url)
    with tempfile.TemporaryDirectory(prefix="batchrun-dry-") as tmp:
        checkpoint = Checkpoint.create(Path(tmp) / "dry.sqlite")
        try:
            ingest(checkpoint, files, cfg.limit, prompt_template(cfg), repeats=Repeats.of(cfg))
            template = cfg.body_template()
            figures = checkpoint.request_figures(
                template.get("max_tokens") or 0, str(template.get("model"))
            )
            invalid_causes = checkpoint.invalid_causes()
        finally:
            checkpoint.close()
    report = DryRunReport(
        rows=figures.rows,
        invalid=figures.invalid,
        prompt_tokens_est=figures.prompt_tokens_est,
        completion_tokens_max=figures.completion_tokens_max,
        invalid_causes=invalid_causes,
        models=figures.models,
        repeats=cfg.repeats,
    )
    pricing = Pricing.from_config(cfg.pricing)
    if pricing is not None:
        low = pricing.cost(report.prompt_tokens_est, 0)
        report.cost_range = (low, low + pricing.cost(0, report.completion_tokens_max))
    return report
