"""How values are stored compactly, and read back exactly. Pure.

- passthrough values (`items.extra`): a JSON array in meta `extra_columns` order, trailing
  nulls left out (the column names are stored once, not once a row);
- request ids (`results.request_id`): the 16 bytes of a UUID written in its canonical form
  (NVCF's are), any other id as text;
- request hashes (`items.request_hash`): the sha256's 32 bytes; its hex text in the output.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from batchrun import codec


def encode_extra(values: dict[str, Any] | None, names: Sequence[str]) -> str | None:
    """`values` as a JSON array aligned with `names` (every key must be among them)."""
    if not values:
        return None
    row = [values.get(name) for name in names]
    while row and row[-1] is None:
        row.pop()
    return codec.dumps(row) if row else None


def decode_extra(text: str | None, names: Sequence[str]) -> dict[str, Any]:
    if not text:
        return {}
    return dict(zip(names, codec.loads(text), strict=False))


def encode_request_id(request_id: str | None) -> str | bytes | None:
    if request_id is None or len(request_id) != 36:
        return request_id
    try:
        parsed = uuid.UUID(request_id)
    except ValueError:
        return request_id
    return parsed.bytes if str(parsed) == request_id else request_id


def decode_request_id(stored: str | bytes | None) -> str | None:
    if isinstance(stored, bytes):
        return str(uuid.UUID(bytes=stored))
    return stored


def hash_hex(stored: bytes | str | None) -> str | None:
    if isinstance(stored, bytes):
        return stored.hex()
    return stored
