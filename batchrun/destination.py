"""Where a job's output goes: the file(s) each --output-format writes (OUTPUT, or Parquet and
OpenAI JSONL side by side), one Parquet file or a folder of parts (--output-partition-rows),
on the local disk or in an object store.

A store's output is written whole on the local disk first, beside the checkpoint, and then
uploaded so that it appears whole or not at all (remote.upload); a run killed during the
upload uploads again when it is resumed. A folder of parts in a store cannot change in one
step, so it is marked complete by an empty `_SUCCESS` object, removed before the first part
is replaced and written after the last (as Hadoop and Spark do): a reader that waits for it
never reads a mix of two runs. pyarrow, pandas, DuckDB and Spark skip files named `_*`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from . import remote
from .checkpoint import Checkpoint, CheckpointReader
from .config import RunConfig
from .errors import ConfigError
from .paths import CHECKPOINT_SUFFIX, url_as_name
from .results import remove, write_openai_jsonl, write_output
from .validation import schema_of

OUTPUT_FORMATS = ("parquet", "openai-jsonl", "both")
SUCCESS_MARKER = "_SUCCESS"


@dataclass(frozen=True, slots=True)
class OutputSettings:
    """What shapes the written output, beside the rows: the run settings of the same names."""

    output_format: str = "parquet"
    parse_json: bool = False
    extract: tuple[str, ...] = ()
    output_partition_rows: int | None = None
    endpoint_url: str | None = None
    validated: bool = False  # answers checked against a schema: the validation columns


def output_settings(cfg: RunConfig) -> OutputSettings:
    return OutputSettings(
        output_format=cfg.output_format,
        parse_json=cfg.parse_json,
        extract=cfg.extract,
        output_partition_rows=cfg.output_partition_rows,
        endpoint_url=cfg.endpoint_url,
        validated=cfg.answer_schema() is not None,
    )


def output_paths(output: str, output_format: str) -> dict[str, str]:
    """Which files a run writes: Parquet at OUTPUT, JSONL at OUTPUT, or both side by side."""
    if output_format == "parquet":
        return {"parquet": output}
    if output_format == "openai-jsonl":
        return {"openai-jsonl": output}
    stem = output.removesuffix(".parquet") if output.endswith(".parquet") else output
    return {"parquet": output, "openai-jsonl": stem + ".jsonl"}


def write_outputs(
    checkpoint: CheckpointReader, output: str, settings: OutputSettings, staging: Path
) -> tuple[list[str], int]:
    """Write the job's output file(s); a store's are staged in `staging` (a local folder)
    and uploaded. Returns (where they were written, answers that did not parse)."""
    paths = output_paths(output, settings.output_format)
    parse_errors = 0
    for kind, target in paths.items():
        if remote.is_remote(target):
            obj = remote.resolve(target, settings.endpoint_url)
            local = staging / f".upload-{url_as_name(target)}"
            errors = _write(checkpoint, local, kind, settings)
            _upload(local, obj, folder=kind == "parquet" and bool(settings.output_partition_rows))
            remove(local)
        else:
            errors = _write(checkpoint, Path(target), kind, settings)
        parse_errors = max(parse_errors, errors)
    return list(paths.values()), parse_errors


def _write(checkpoint: CheckpointReader, path: Path, kind: str, settings: OutputSettings) -> int:
    """One output file (or folder) on the local disk. Returns answers that did not parse."""
    if kind == "openai-jsonl":
        write_openai_jsonl(checkpoint, path)
        return 0
    _, parse_errors = write_output(
        checkpoint,
        path,
        parse_json=settings.parse_json,
        extract=settings.extract,
        part_rows=settings.output_partition_rows,
        validated=settings.validated,
    )
    return parse_errors


def _upload(local: Path, obj: remote.RemoteObject, *, folder: bool) -> None:
    if not folder:
        remote.upload(local, obj)
        return
    marker = remote.child(obj, SUCCESS_MARKER)
    remote.delete_if_there(marker)
    before = {o.name for o in remote.list_files(obj, recursive=False)}
    parts = {p.name for p in local.iterdir()}
    for name in sorted(parts):
        remote.upload(local / name, remote.child(obj, name), tidy=False)  # tidied once below
    for name in sorted(before - parts - {SUCCESS_MARKER}):
        # A part of an earlier, longer output, or an upload of a part a kill cut short.
        if name.startswith("part-") or remote.leftover_target(name) in parts:
            remote.delete_if_there(remote.child(obj, name))
    remote.put_bytes(marker, b"")


def export(
    checkpoint: Path, output: str, output_format: str | None = None, *, one_file: bool = False
) -> tuple[list[str], int]:
    """Write what `run` would write now from `checkpoint` (its own settings say the format,
    --parse-json, --extract, the partitions and the store), even while a job runs; with
    `one_file`, a single Parquet file whatever the partitions. Returns (where, answers
    unparsed)."""
    from .checkpoint import open_reader

    reader = open_reader(checkpoint)
    try:
        stored = reader.get_json("settings", {}) or {}
        settings = OutputSettings(
            output_format=output_format or stored.get("output_format") or "parquet",
            parse_json=bool(stored.get("parse_json")),
            extract=tuple(stored.get("extract") or ()),
            output_partition_rows=None if one_file else stored.get("output_partition_rows"),
            endpoint_url=stored.get("endpoint_url"),
            validated=schema_of(stored.get("schema"), None, stored.get("response_format"))
            is not None,
        )
        _refuse_the_checkpoint(checkpoint, output_paths(output, settings.output_format).values())
        from .preflight import check_output_location

        folder = bool(settings.output_partition_rows)
        check_output_location(output, settings.endpoint_url, folder=folder)
        return write_outputs(reader, output, settings, checkpoint.parent)
    finally:
        reader.close()


def _refuse_the_checkpoint(checkpoint: Path, paths: Iterable[str]) -> None:
    """An export must not land on the checkpoint it reads (or its WAL, index or lock)."""
    own = {Path(f"{checkpoint}{end}").resolve() for end in ("", "-wal", "-shm", ".lock")}
    for path in paths:
        if not remote.is_remote(path) and Path(path).resolve() in own:
            raise ConfigError(
                f"-o {path} is the checkpoint's own file ({checkpoint}): writing there would "
                "destroy every stored answer; give another path"
            )


def upload_checkpoint(checkpoint: Checkpoint, output: str, endpoint_url: str | None) -> str:
    """A consistent copy of the job's open checkpoint put beside a store's output as
    OUTPUT.checkpoint.sqlite, where `--reuse` can take it next time. Returns its URL."""
    url = output.rstrip("/") + CHECKPOINT_SUFFIX
    local = checkpoint.path.with_name(f".{checkpoint.path.name}.upload")
    try:
        checkpoint.copy_to(local)
        remote.upload(local, remote.resolve(url, endpoint_url))
    finally:
        local.unlink(missing_ok=True)
    return url


def local_copy(url: str, folder: Path, endpoint_url: str | None) -> Path:
    """A store's file (a checkpoint or output to --reuse) downloaded into `folder`."""
    obj = remote.resolve(url, endpoint_url)
    if remote.kind(obj) == "missing":
        raise ConfigError(f"--reuse {url}: no such checkpoint or output in the store")
    local = folder / f".reuse-{url_as_name(url)}"
    remote.download(obj, local)
    return local
