"""`batchrun status`: where a job stands, read from its checkpoint (or its output file)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from .budget import job_cost
from .errors import CheckpointError
from .job_files import checkpoint_beside
from .lock import holder
from .records import DONE, FAILED, FETCHED, INFLIGHT, INVALID, PENDING, POLLING
from .store import Store


def job_status(path: Path, *, ids: int = 20) -> dict[str, Any]:
    """A checkpoint's counts, tokens and pending ids; or an output file's status counts."""
    checkpoint = path
    if path.name.endswith(".parquet"):
        companion = checkpoint_beside(path)
        if not companion.exists():
            return _output_status(path)
        checkpoint = companion
    store = Store.open(checkpoint)
    try:
        counts = store.counts()
        settings = store.get_json("settings", {})
        totals = store.totals()
        return {
            "checkpoint": str(checkpoint),
            "running": holder(checkpoint),
            "rows": sum(counts.values()),
            "states": {
                s: counts.get(s, 0)
                for s in (DONE, FAILED, INVALID, PENDING, INFLIGHT, POLLING, FETCHED)
            },
            "tokens": totals,
            "cost": job_cost(settings.get("pricing"), totals),
            "pending_request_ids": [
                {"id": row_id, "request_id": rid} for row_id, rid in store.pending_request_ids(ids)
            ],
            "failures": [{"cause": c, "rows": n} for c, n in store.failure_causes()],
            "model": settings.get("model"),
            "base_url": settings.get("base_url"),
            "output": settings.get("output"),
            "created_at": float(store.get_meta("created_at") or 0) or None,
        }
    finally:
        store.close()


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
    unfinished = states[PENDING] + states[INFLIGHT] + states[POLLING] + states[FETCHED]
    tokens = info["tokens"]
    lines = [
        f"{info['checkpoint']}" + (f"  (running: {info['running']})" if info["running"] else ""),
        f"  {info['rows']} rows: {states[DONE]} ok, {states[FAILED]} failed, "
        f"{states[INVALID]} invalid, {unfinished} to do"
        f" ({states[POLLING] + states[FETCHED]} awaiting a 202 result)",
        f"  tokens: {tokens['prompt_tokens']:,} prompt + {tokens['completion_tokens']:,} "
        f"completion = {tokens['total_tokens']:,}; {tokens['attempts']} requests sent"
        + (f"; cost ${info['cost']:.4f}" if info.get("cost") is not None else ""),
        f"  model {info['model']} at {info['base_url']}",
    ]
    if info.get("created_at"):
        lines.append(
            f"  started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(info['created_at']))}"
        )
    for failure in info["failures"]:
        lines.append(f"  failed x{failure['rows']}: {failure['cause']}")
    for entry in info["pending_request_ids"]:
        lines.append(f"  pending: {entry['id']} -> request {entry['request_id']}")
    return "\n".join(lines)
