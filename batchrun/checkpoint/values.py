"""How values are stored compactly, and read back exactly. Pure.

- passthrough values (`items.extra`): a JSON array in meta `extra_columns` order, trailing
  nulls left out (the column names are stored once, not once a row);
- request ids (`results.request_id`): the 16 bytes of a UUID written in its canonical form
  (NVCF's are), any other id as text;
- request hashes (`items.request_hash`): the sha256's 32 bytes; its hex text in the output.
"""

from __future__ import annotations

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
    r = request_id
    if r[8] != "-" or r[13] != "-" or r[18] != "-" or r[23] != "-":
        return request_id
    digits = r[:8] + r[9:13] + r[14:18] + r[19:23] + r[24:]
    # Canonical only (lowercase hex digits): those read back exactly as they came.
    if not digits.isalnum() or not digits.islower() and not digits.isdigit():
        return request_id
    try:
        return bytes.fromhex(digits)
    except ValueError:
        return request_id


def decode_request_id(stored: str | bytes | None) -> str | None:
    if isinstance(stored, bytes):
        h = stored.hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    return stored


def hash_hex(stored: bytes | str | None) -> str | None:
    if isinstance(stored, bytes):
        return stored.hex()
    return stored
