"""How a job's files are named: the checkpoint beside its output (in the working folder for
an output in an object store, since SQLite needs a local disk), and what a path on the
command line stands for."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .remote import is_remote

CHECKPOINT_SUFFIX = ".checkpoint.sqlite"  # the default checkpoint is OUTPUT + this


def default_checkpoint_path(output: str) -> Path:
    """OUTPUT + the suffix; for an output in a store (SQLite needs a local disk), a file in
    the working folder named after the URL: s3://bkt/out/x.parquet ->
    ./s3-bkt-out-x.parquet.checkpoint.sqlite."""
    if is_remote(output):
        return Path.cwd() / (url_as_name(output) + CHECKPOINT_SUFFIX)
    return Path(output + CHECKPOINT_SUFFIX)


def url_as_name(url: str) -> str:
    """A store's URL as one local file name (s3://bkt/out/x -> s3-bkt-out-x): files kept for
    different URLs in one folder stay apart."""
    scheme, rest = url.split("://", 1)
    return "-".join(part for part in [scheme, *rest.split("/")] if part)


def job_path(given: str) -> Path:
    """A job as the command line names it (a checkpoint, or an output path): a store's URL
    stands for the checkpoint in the working folder that `run` kept for it."""
    return default_checkpoint_path(given) if is_remote(given) else Path(given)


def from_config_folder(folder: Path, value: Any) -> Any:
    """A path written in a config file, from the file's folder (so cron can run the file
    from anywhere); a store's URL as it is."""
    if not isinstance(value, str) or not value or is_remote(value):
        return value
    return os.path.normpath(folder / value)
