"""NVCF assets, emulated: create an asset, PUT its bytes to a pre-signed URL, refer to it.

`POST /v2/nvcf/assets` answers an asset id and an upload URL (here on the mock itself); the
PUT must carry the Content-Type and description the asset was created with, or it is refused
as S3 refuses a request whose headers differ from those it was signed for. A chat request
then names the asset in `data:...;asset_id,<id>` and in `NVCF-INPUT-ASSET-REFERENCES`.

`AssetStore.media()` also checks inline (base64) images against the size NVIDIA accepts.
The answer mentions what each image was, so a test can tell inline from uploaded.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

from aiohttp import web

from .faults import problem


class AssetStore:
    """Assets created in this endpoint's life, with their uploaded bytes."""

    def __init__(self) -> None:
        self.assets: dict[str, dict[str, Any]] = {}  # id -> contentType, description, data
        self.uploads = 0

    def create(self, doc: dict[str, Any], upload_base: str) -> web.Response:
        """Register an asset; its upload URL is `upload_base/<id>`, pre-signed in appearance."""
        asset_id = str(uuid.uuid4())
        kind, description = doc.get("contentType"), doc.get("description")
        self.assets[asset_id] = {"contentType": kind, "description": description, "data": None}
        answer = {
            "assetId": asset_id,
            "uploadUrl": f"{upload_base}/{asset_id}?X-Amz-Signature=mock",
            "contentType": kind,
            "description": description,
        }
        return web.json_response(answer)

    async def upload(self, request: web.Request) -> web.Response:
        asset = self.assets.get(request.match_info["asset_id"])
        if asset is None:
            return no_such_key()
        same = (
            request.headers.get("Content-Type") == asset["contentType"]
            and request.headers.get("x-amz-meta-nvcf-asset-description") == asset["description"]
        )
        if not same:  # S3 refuses a PUT whose headers differ from those it was signed for
            error = b"<Error><Code>SignatureDoesNotMatch</Code></Error>"
            return web.Response(status=400, body=error, content_type="application/xml")
        asset["data"] = await request.read()
        self.uploads += 1
        return web.Response(status=200, body=b"")

    def media(
        self, messages: list[Any], references: str, inline_max: int
    ) -> tuple[list[str], web.Response | None]:
        """What each image of a request is, or the refusal NVIDIA would give."""
        named = {r.strip() for r in references.split(",") if r.strip()}
        kinds: list[str] = []
        for url in _media_urls(messages):
            kind, refusal = self._describe(url, named, inline_max)
            if refusal is not None:
                return [], refusal
            kinds.append(kind)
        return kinds, None

    def _describe(
        self, url: str, named: set[str], inline_max: int
    ) -> tuple[str, web.Response | None]:
        if ";base64," in url:
            size = len(base64.b64decode(url.split(";base64,", 1)[1]))
            if inline_max and size > inline_max:
                detail = f"inline image of {size} bytes is over {inline_max}: use the asset API"
                return "", problem(422, "Unprocessable Entity", detail)
            return f"{size} bytes inline", None
        if ";asset_id," in url:
            asset_id = url.split(";asset_id,", 1)[1]
            asset = self.assets.get(asset_id)
            if asset is None or asset.get("data") is None:
                return "", problem(404, "Not Found", f"asset {asset_id} not found")
            if asset_id not in named:
                detail = f"asset {asset_id} missing from NVCF-INPUT-ASSET-REFERENCES"
                return "", problem(422, "Unprocessable Entity", detail)
            return f"{len(asset['data'])} bytes asset", None
        return "url", None


def no_such_key() -> web.Response:
    """S3's answer for an object it does not have (uploads and large-result downloads)."""
    return web.Response(status=404, body=b"NoSuchKey", content_type="text/plain")


def _media_urls(messages: list[Any]) -> list[str]:
    """The URL of every image or video part, in order."""
    urls: list[str] = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else []:
            holder = (
                (part.get("image_url") or part.get("video_url")) if isinstance(part, dict) else None
            )
            url = holder.get("url") if isinstance(holder, dict) else None
            if isinstance(url, str):
                urls.append(url)
    return urls
