"""NVCF asset ids by file sha256 (assets.py's cache), kept in the checkpoint.

Rare and small writes (one per uploaded file), committed at once on a connection of their
own, so a resumed job never uploads twice; calls run in a thread so the event loop does not
wait on disk.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from .schema import connect


class AssetCache:
    def __init__(self, path: Path) -> None:
        self._conn = connect(path)
        self._lock = asyncio.Lock()

    async def get(self, sha256: str) -> tuple[str, float] | None:
        async with self._lock:
            row = await asyncio.to_thread(self.get_now, sha256)
        return row

    async def put(self, sha256: str, asset_id: str, uploaded_at: float) -> None:
        async with self._lock:
            await asyncio.to_thread(self.put_now, sha256, asset_id, uploaded_at)

    def get_now(self, sha256: str) -> tuple[str, float] | None:
        row = self._conn.execute(
            "SELECT asset_id, uploaded_at FROM assets WHERE sha256=?", (sha256,)
        ).fetchone()
        return None if row is None else (str(row[0]), float(row[1]))

    def put_now(self, sha256: str, asset_id: str, uploaded_at: float) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO assets VALUES (?, ?, ?)", (sha256, asset_id, uploaded_at)
        )

    def close(self) -> None:
        self._conn.close()
