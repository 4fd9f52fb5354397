"""A job's figures broken down by the endpoint that answered each row: rows, ok and failed,
tokens, latency and cost, for `status` (from the checkpoint) and `report` (from the output).

Only rows an endpoint answered count: a reused, invalid or unsent row has no endpoint. A job
whose rows all came from one endpoint has no breakdown (its totals say it all).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .budget import job_cost
from .checkpoint.figures import Totals

if TYPE_CHECKING:
    from .checkpoint.queries import CheckpointReader

LATENCY_AT = {"p50": 0.5, "p95": 0.95}
OUTPUT_COLUMNS = ("endpoint", "status", "prompt_tokens", "completion_tokens", "latency_s")


@dataclass
class EndpointFigures:
    endpoint: str
    rows: int = 0
    ok: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: dict[str, float] | None = None  # quantiles of its ok rows (the mean: status)
    cost_usd: float | None = None
    _latencies: list[Any] = field(default_factory=list, repr=False)  # arrays of ok rows'

    def done(self, pricing: Mapping[str, float] | None) -> dict[str, Any]:
        if self._latencies:
            import numpy as np

            from .stats import quantiles  # numpy: not at start-up

            self.latency_s = quantiles(np.concatenate(self._latencies), LATENCY_AT)
        self.cost_usd = job_cost(
            pricing,
            Totals(
                bought_prompt_tokens=self.prompt_tokens,
                bought_completion_tokens=self.completion_tokens,
            ),
        )
        figures = asdict(self)
        figures.pop("_latencies")
        return figures


def breakdown(
    figures: Iterable[EndpointFigures], pricing: Mapping[str, float] | None
) -> list[dict[str, Any]] | None:
    """The figures as plain data, most rows first; None for fewer than two endpoints."""
    kept = sorted(figures, key=lambda f: (-f.rows, f.endpoint))
    return [f.done(pricing) for f in kept] if len(kept) > 1 else None


def from_output(output: Path, pricing: Mapping[str, float] | None) -> list[dict[str, Any]] | None:
    """The breakdown from an output file (None: an output from before pools, or one
    endpoint). Reads five columns a batch at a time."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(output)
    if "endpoint" not in parquet.schema_arrow.names:
        return None
    by_endpoint: dict[str, EndpointFigures] = {}
    for batch in parquet.iter_batches(batch_size=65_536, columns=list(OUTPUT_COLUMNS)):
        _add_batch(batch, by_endpoint)
    return breakdown(by_endpoint.values(), pricing)


def from_checkpoint(
    reader: CheckpointReader, pricing: Mapping[str, float] | None
) -> list[dict[str, Any]] | None:
    """The breakdown from a checkpoint's answers (latency: the mean of ok rows)."""
    figures = [
        EndpointFigures(
            endpoint,
            rows,
            ok,
            failed,
            prompt,
            completion,
            latency_s=None if mean is None else {"mean": mean},
        )  # fmt: skip
        for endpoint, rows, ok, failed, prompt, completion, mean in reader.by_endpoint()
    ]
    return breakdown(figures, pricing)


def _add_batch(batch: Any, by_endpoint: dict[str, EndpointFigures]) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    table = pa.Table.from_batches([batch]).filter(pc.is_valid(batch.column("endpoint")))
    status = table.column("status")
    ok, failed = pc.equal(status, pa.scalar("ok")), pc.equal(status, pa.scalar("failed"))
    table = table.append_column("ok", ok).append_column("failed", failed)
    sums = table.group_by("endpoint").aggregate(
        [("endpoint", "count"), ("ok", "sum"), ("failed", "sum"),
         ("prompt_tokens", "sum"), ("completion_tokens", "sum")]
    )  # fmt: skip
    for row in sums.to_pylist():
        f = by_endpoint.setdefault(row["endpoint"], EndpointFigures(row["endpoint"]))
        f.rows += row["endpoint_count"]
        f.ok += row["ok_sum"] or 0
        f.failed += row["failed_sum"] or 0
        f.prompt_tokens += row["prompt_tokens_sum"] or 0
        f.completion_tokens += row["completion_tokens_sum"] or 0
        mine = pc.and_(ok, pc.equal(table.column("endpoint"), pa.scalar(row["endpoint"])))
        latency = pc.filter(table.column("latency_s"), mine).drop_null()
        f._latencies.append(np.asarray(latency.to_numpy(zero_copy_only=False), dtype=float))


def lines(figures: list[dict[str, Any]] | None) -> list[str]:
    """One line per endpoint, for `status` and `report`."""
    out: list[str] = []
    for f in figures or []:
        latency = f["latency_s"] or {}
        shown = ", ".join(f"{name} {value:.2f}s" for name, value in latency.items())
        cost = f" ${f['cost_usd']:.4f}" if f["cost_usd"] is not None else ""
        out.append(
            f"  {f['endpoint']}: {f['rows']:,} rows ({f['ok']:,} ok, {f['failed']:,} failed), "
            f"{f['prompt_tokens'] + f['completion_tokens']:,} tokens{cost}"
            + (f", latency {shown}" if shown else "")
        )
    return out
