"""`batchrun status`: where a job stands, read from its checkpoint (or its output file)."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from .budget import job_cost
from .checkpoint import checkpoint_for, open_reader, require_checkpoint
from .endpoint_figures import from_checkpoint
from .endpoint_figures import lines as endpoint_lines
from .errors import CheckpointError
from .lifecycle import RowState
from .lock import holder
from .summary import past_limit_lines

S = RowState


def job_status(path: Path, *, ids: int = 20) -> dict[str, Any]:
    """A checkpoint's counts, tokens and pending ids; or an output file's status counts."""
    checkpoint = checkpoint_for(path)
    if checkpoint is None:
        if not path.is_file():
            require_checkpoint(path)  # says where it looked
        return _output_status(path)
    reader = open_reader(checkpoint)
    try:
        counts = reader.counts()
        settings = reader.get_json("settings", {})
        totals = reader.totals()
        pooled = len(settings.get("endpoints") or []) > 1
        return {
            "checkpoint": str(checkpoint),
            "running": holder(checkpoint),
            "rows": sum(counts.values()),
            "rows_past_limit": reader.rows_past_limit(),
            "repeats": reader.get_json("identity", {}).get("repeats", 1),
            "states": {str(s): counts.get(s, 0) for s in RowState},
            "tokens": asdict(totals),
            "cost": job_cost(settings.get("pricing"), totals),
            "pending_request_ids": [
                {"id": p.row_id, "request_id": p.request_id}
                for p in reader.pending_request_ids(ids)
            ],
            "failures": [{"cause": c.label, "rows": c.rows} for c in reader.failure_causes()],
            "rejected": dict(zip(("rows", "answers"), reader.answers_rejected(), strict=True)),
            "invalid": [
                {"cause": c.cause, "rows": c.rows, "example": c.example}
                for c in reader.invalid_causes()
            ],
            # A pool's only: it reads every answer (the figures above come from `totals`).
            "endpoints": from_checkpoint(reader, settings.get("pricing")) if pooled else None,
            "model": settings.get("model"),
            "base_url": settings.get("base_url"),
            "pool": [e.get("name") or e["base_url"] for e in settings.get("endpoints") or []],
            "output": settings.get("output"),
            "created_at": float(reader.get_meta("created_at") or 0) or None,
        }
    finally:
        reader.close()


def _output_status(path: Path) -> dict[str, Any]:
    try:
        table = pq.read_table(
            path, columns=["status", "prompt_tokens", "completion_tokens", "total_tokens"]
        )
    except Exception as exc:  # pyarrow raises many types for a file that is not Parquet
        raise CheckpointError(
            f"{path}: neither a checkpoint nor a batchrun output ({exc})"
        ) from None
    counted = table.group_by("status").aggregate([("status", "count")])
    statuses = dict(
        zip(counted["status"].to_pylist(), counted["status_count"].to_pylist(), strict=True)
    )
    tokens = {
        name: int(pc.sum(table.column(name)).as_py() or 0)
        for name in ("prompt_tokens", "completion_tokens", "total_tokens")
    }
    return {
        "output": str(path),
        "rows": table.num_rows,
        "statuses": statuses,
        "tokens": tokens,
    }


def format_status(info: dict[str, Any]) -> str:
    if "states" not in info:
        statuses = ", ".join(f"{n} {s}" for s, n in info["statuses"].items())
        tokens = info["tokens"]["total_tokens"]
        return f"{info['output']}: {info['rows']} rows ({statuses}); {tokens:,} tokens"
    states = info["states"]
    unfinished = states[S.PENDING] + states[S.INFLIGHT] + states[S.POLLING] + states[S.FETCHED]
    tokens = info["tokens"]
    lines = [
        f"{info['checkpoint']}" + (f"  (running: {info['running']})" if info["running"] else ""),
        f"  {info['rows']} rows: {states[S.DONE]} ok, {states[S.FAILED]} failed, "
        f"{states[S.INVALID]} invalid, {unfinished} to do"
        f" ({states[S.POLLING] + states[S.FETCHED]} awaiting a 202 result)",
        f"  tokens: {tokens['prompt_tokens']:,} prompt + {tokens['completion_tokens']:,} "
        f"completion = {tokens['total_tokens']:,}; {tokens['attempts']} requests sent"
        + (f"; cost ${info['cost']:.4f}" if info.get("cost") is not None else ""),
        f"  model {info['model']} at {', '.join(info.get('pool') or [info['base_url']])}",
    ]
    if info.get("created_at"):
        lines.append(
            f"  started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(info['created_at']))}"
        )
    past, repeats = info.get("rows_past_limit", 0), info.get("repeats", 1)
    lines += past_limit_lines(past, info["rows"], repeats)
    rejected = info.get("rejected") or {}
    if rejected.get("answers"):
        lines.append(
            f"  {rejected['answers']} answers did not match the schema; "
            f"{rejected['rows']} rows asked again"
        )
    lines += endpoint_lines(info.get("endpoints"))
    for failure in info["failures"]:
        lines.append(f"  failed x{failure['rows']}: {failure['cause']}")
    for invalid in info["invalid"]:
        lines.append(
            f"  invalid x{invalid['rows']}: {invalid['cause']} (e.g. {invalid['example']})"
        )
    for entry in info["pending_request_ids"]:
        lines.append(f"  pending: {entry['id']} -> request {entry['request_id']}")
    return "\n".join(lines)
