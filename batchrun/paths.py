"""How a job's files are named: the checkpoint beside its output (in the working folder for
an output in an object store, since SQLite needs a local disk), and what a path on the
command line stands for."""

from __future__ import annotations

from pathlib import Path

from .remote import is_remote

CHECKPOINT_SUFFIX = ".checkpoint.sqlite"  # the default checkpoint is OUTPUT + this


def default_checkpoint_path(output: str) -> Path:
    """OUTPUT + the suffix; for an output in a store (SQLite needs a local disk), a file in
    the working folder named after the URL: s3://bkt/out/x.parquet ->
    ./s3-bkt-out-x.parquet.checkpoint.sqlite."""
    if is_remote(output):
        scheme, rest = output.split("://", 1)
        name = "-".join(part for part in [scheme, *rest.split("/")] if part)
        return Path.cwd() / (name + CHECKPOINT_SUFFIX)
    return Path(output + CHECKPOINT_SUFFIX)


def job_path(given: str) -> Path:
    """A job as the command line names it (a checkpoint, or an output path): a store's URL
    stands for the checkpoint in the working folder that `run` kept for it."""
    return default_checkpoint_path(given) if is_remote(given) else Path(given)
