"""Repeats: every input row sampled N times (`repeats = N`, `--repeats N`).

With N > 1 each input row becomes N checkpoint rows, side by side in input order:
- ids `<id>#0` .. `<id>#<N-1>`: input ids are unique and `#<r>` ends every one, so these are;
- checkpoint positions n*N + r for input row n: positions stay dense and in input order, so
  the checkpoint's `--limit` and resume arithmetic hold, in input rows times N;
- passthrough columns `repeat` (r) and `item_id` (the input row's id), first among the
  passthrough columns; input columns of those names become `input_repeat`, `input_item_id`;
- a `seed` in every repeat's request: base + r, where base is the row's own seed (its
  `params` or batch `body`), else the job's `seed` param, else 0. So repeats are distinct
  samples, and a rerun sends byte-identical requests (resume and `--reuse` match on them);
- an invalid input row gives N invalid rows, one per repeat, never sent: every input row is
  N rows, whatever it holds (and positions stay dense without a schema change).

N = 1 changes nothing: ids, requests, output and the job's fingerprint are those of a job
without repeats. Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

from . import codec
from .errors import ConfigError

if TYPE_CHECKING:
    from .config import RunConfig
    from .payloads import PreparedRow

SEPARATOR = "#"
COLUMNS = ("repeat", "item_id")  # the passthrough columns repeats add, in order
INT64_MAX = 2**63 - 1  # seeds travel as JSON integers that orjson (and servers) take


def check_repeats(
    repeats: int, params: Mapping[str, Any], drop_params: Collection[str], label: str
) -> None:
    """Repeats need a seed per request; a job that removes `seed` cannot have them."""
    dropped = "seed" in drop_params or ("seed" in params and params["seed"] is None)
    if repeats > 1 and dropped:
        raise ConfigError(
            f"{label} = {repeats} sends each repeat its own seed (distinct samples, distinct "
            "requests), but this job removes seed from the body (drop_params or seed = null)"
        )


@dataclasses.dataclass(frozen=True)
class Repeats:
    """How many samples of each input row a job takes, and the job's own seed (if any)."""

    count: int = 1
    job_seed: Any = None

    @classmethod
    def of(cls, cfg: RunConfig) -> Repeats:
        return cls(cfg.repeats, cfg.body_template().get("seed"))

    def position(self, input_row: int, repeat: int = 0) -> int:
        """The checkpoint position of an input row's repeat."""
        return input_row * self.count + repeat

    def input_rows(self, checkpoint_rows: int) -> int:
        """Input rows held by this many checkpoint rows (ingest stores whole input rows)."""
        return checkpoint_rows // self.count

    def row_limit(self, limit: int | None) -> int | None:
        """`--limit` counts input rows; the checkpoint's limit counts its own rows."""
        return None if limit is None else limit * self.count

    def item_id(self, row_id: str) -> str:
        """The input row's id of a checkpoint row's id."""
        return row_id if self.count == 1 else row_id.rsplit(SEPARATOR, 1)[0]

    def rows(self, row: PreparedRow) -> list[PreparedRow]:
        """The checkpoint rows of an input row: itself, or its N repeats."""
        if self.count == 1:
            return [row]
        base = _own_seed(row.overrides)
        base = self.job_seed if base is None else base
        base = 0 if base is None else base
        problem = None if row.error else _seed_problem(base, self.count)
        error = row.error or (f"{row.loc}: {problem}" if problem else None)
        extra, renamed = _extra(row.extra)
        return [
            dataclasses.replace(
                row,
                row_id=f"{row.row_id}{SEPARATOR}{r}",
                overrides=row.overrides if error else _with_seed(row.overrides, base + r),
                extra={"repeat": r, "item_id": row.row_id, **extra},
                error=error,
                # The prompt template is filled from the stored passthrough values: renamed
                # ones would not give the same messages back, so those rows keep theirs.
                templated=row.templated and not renamed,
            )
            for r in range(self.count)
        ]


ONCE = Repeats()  # a job without repeats


def _own_seed(overrides: str | None) -> Any:
    """The seed a row's own body fields set (None: none)."""
    return codec.loads(overrides).get("seed") if overrides else None


def _seed_problem(base: Any, count: int) -> str | None:
    if isinstance(base, bool) or not isinstance(base, int):
        return f"seed must be a whole number to derive each repeat's seed from, got {base!r}"
    if not -INT64_MAX - 1 <= base <= INT64_MAX - (count - 1):
        return f"seed {base} is too large to derive {count} repeats' seeds (seed + repeat)"
    return None


def _with_seed(overrides: str | None, seed: int) -> str:
    fields = codec.loads(overrides) if overrides else {}
    fields["seed"] = seed  # a row's own seed keeps its place among its fields
    return codec.dumps(fields)


def _extra(extra: dict[str, Any] | None) -> tuple[dict[str, Any], bool]:
    """The input's passthrough values, those named like a repeats column renamed (as the
    fixed columns' namesakes are); and whether any was."""
    if not extra:
        return {}, False
    renamed = any(name in extra for name in COLUMNS)
    if not renamed:
        return extra, False
    return {(f"input_{k}" if k in COLUMNS else k): v for k, v in extra.items()}, True
