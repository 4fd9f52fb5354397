"""NVCF assets for large images (PROTOCOL.md section 3), uploaded once per file content.

An image over the inline limit is uploaded through the asset API: create the asset (a JSON
POST that returns an id and a presigned upload URL), PUT the bytes with the same
Content-Type and description headers (S3 rejects a mismatch), then reference it as
`data:<mime>;asset_id,<id>`. Ids are kept in the checkpoint keyed by the file's sha256, so a
resumed job does not upload again; NVCF deletes assets after 24 h, so an id older than
ASSET_REUSE_S is uploaded afresh. Concurrent rows with the same image share one upload.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .client import EndpointClient
    from .media import LocalFile


class AssetIds(Protocol):
    """Where uploaded asset ids are kept by file sha256 (store.AssetCache: the checkpoint)."""

    async def get(self, sha256: str) -> tuple[str, float] | None: ...

    async def put(self, sha256: str, asset_id: str, uploaded_at: float) -> None: ...


# Assets live 24 h; stop reusing one an hour before, so it cannot vanish mid-request.
ASSET_REUSE_S = 23 * 3600
UPLOADS_AT_ONCE = 4  # large files: a few at a time, whatever the rows in flight


class AssetUploader:
    def __init__(
        self,
        client: EndpointClient,
        cache: AssetIds,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._cache = cache
        self._clock = clock
        self._uploading: dict[str, asyncio.Future[str]] = {}
        self._slots = asyncio.Semaphore(UPLOADS_AT_ONCE)
        self.uploads = 0

    async def asset_id(self, local: LocalFile, data: bytes) -> str:
        cached = await self._cache.get(local.sha256)
        if cached is not None and self._clock() - cached[1] < ASSET_REUSE_S:
            return cached[0]
        running = self._uploading.get(local.sha256)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._uploading[local.sha256] = future
        try:
            asset_id = await self._upload(local, data)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark it retrieved; waiters (if any) still get it
            raise
        finally:
            del self._uploading[local.sha256]
        future.set_result(asset_id)
        return asset_id

    async def _upload(self, local: LocalFile, data: bytes) -> str:
        description = f"batchrun {local.sha256[:16]}"
        async with self._slots:
            asset_id, upload_url = await self._client.create_asset(local.mime, description)
            await self._client.upload_asset(upload_url, data, local.mime, description)
        self.uploads += 1
        await self._cache.put(local.sha256, asset_id, self._clock())
        return asset_id
