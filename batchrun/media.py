"""Images and videos in rows: found and checked when the inputs are read, sent at submit time.

A row may carry an `images` column (local paths, http(s) URLs or data URLs) or OpenAI content
parts with `image_url` / `video_url`. Remote and data URLs are sent as they are. A local file
is checked when the inputs are read (it must exist and be an image or video) and stored as a
marker, `batchrun-local:<sha256>:<mime>:<absolute path>`, so the checkpoint stays small and a
file changed after the job started is noticed rather than silently mixed in.

At submit time `MediaResolver` turns each marker into what the endpoint takes (PROTOCOL.md
decision 9): a base64 data URL up to 180 KB, or above that, where the NVCF asset API is
available, `data:<mime>;asset_id,<id>` plus the id in the `NVCF-INPUT-ASSET-REFERENCES`
header (uploads are done once per file content: assets.py).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import mimetypes
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import MediaError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .assets import AssetUploader

LOCAL = "batchrun-local:"
# NVIDIA: "If the size of an image is more than 180KB, it needs to be uploaded" (API reference).
INLINE_MAX_BYTES = 180_000
PART_KINDS = {"image_url": "image", "video_url": "video"}
REMOTE_PREFIXES = ("http://", "https://", "data:")


class MediaProblem(ValueError):
    """A row's image or video cannot be used (the row becomes `invalid`)."""


@dataclass(frozen=True, slots=True)
class LocalFile:
    sha256: str
    mime: str
    path: Path


# ---------------------------------------------------------------- when inputs are read


def localize(messages: list[Any], images: Any, base_dir: Path | None) -> list[Any]:
    """Attach an `images` column to the last user message; check and mark local files."""
    if images is not None:
        messages = _attach(messages, images)
    for part, kind in iter_media_parts(messages):
        holder = part[kind]
        holder["url"] = local_marker(holder["url"], PART_KINDS[kind], base_dir)
    return messages


def _attach(messages: list[Any], images: Any) -> list[Any]:
    if isinstance(images, str):
        images = [images]
    if not isinstance(images, list) or not all(isinstance(i, str) and i for i in images):
        raise MediaProblem("images must be a list of paths or URLs")
    if not images:
        return messages
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            parts = (
                [{"type": "text", "text": content}]
                if isinstance(content, str)
                else list(content or [])
            )
            parts += [{"type": "image_url", "image_url": {"url": url}} for url in images]
            message["content"] = parts
            return messages
    raise MediaProblem("images given but there is no user message to attach them to")


def iter_media_parts(messages: list[Any]) -> Iterator[tuple[dict[str, Any], str]]:
    """(part, "image_url" | "video_url") for every media part with a string URL."""
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for part in content:
            if not isinstance(part, dict):
                continue
            for kind in PART_KINDS:
                holder = part.get(kind)
                if isinstance(holder, dict) and isinstance(holder.get("url"), str):
                    yield part, kind


def local_marker(url: str, kind: str, base_dir: Path | None) -> str:
    """A remote/data URL unchanged; a local file checked, hashed and marked."""
    if url.startswith(REMOTE_PREFIXES) or url.startswith(LOCAL):
        return url
    path = Path(url[7:] if url.startswith("file://") else url).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    mime = mimetypes.guess_type(path.name)[0] or ""
    if not mime.startswith(f"{kind}/"):
        raise MediaProblem(f"{url}: not a known {kind} type (by its extension)")
    try:
        digest = _sha256(path)
    except FileNotFoundError:
        raise MediaProblem(f"{kind} not found: {url}") from None
    except OSError as exc:
        raise MediaProblem(f"cannot read {kind} {url}: {exc.strerror}") from None
    return f"{LOCAL}{digest}:{mime}:{path.resolve()}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def has_local_media(messages_json: str) -> bool:
    return LOCAL in messages_json


def parse_marker(url: str) -> LocalFile:
    sha, mime, path = url[len(LOCAL) :].split(":", 2)
    return LocalFile(sha, mime, Path(path))


# ---------------------------------------------------------------- at submit time


class MediaResolver:
    """Markers -> data URLs or asset references. `uploader` None: always inline."""

    def __init__(self, uploader: AssetUploader | None, *, inline_max: int = INLINE_MAX_BYTES):
        self._uploader = uploader
        self._inline_max = inline_max

    async def resolve(self, messages_json: str) -> tuple[str, list[str]]:
        """The messages to send, and the asset ids they reference."""
        messages = json.loads(messages_json)
        asset_ids: list[str] = []
        for part, kind in iter_media_parts(messages):
            holder = part[kind]
            if holder["url"].startswith(LOCAL):
                holder["url"], asset_id = await self._resolve_one(parse_marker(holder["url"]))
                if asset_id:
                    asset_ids.append(asset_id)
        return json.dumps(messages, ensure_ascii=False, separators=(",", ":")), asset_ids

    async def _resolve_one(self, local: LocalFile) -> tuple[str, str | None]:
        data = await asyncio.to_thread(_read_checked, local)
        if len(data) <= self._inline_max or self._uploader is None:
            return f"data:{local.mime};base64,{base64.b64encode(data).decode()}", None
        asset_id = await self._uploader.asset_id(local, data)
        return f"data:{local.mime};asset_id,{asset_id}", asset_id


def _read_checked(local: LocalFile) -> bytes:
    try:
        data = local.path.read_bytes()
    except OSError as exc:
        raise MediaError(f"cannot read {local.path}: {exc.strerror}") from None
    if hashlib.sha256(data).hexdigest() != local.sha256:
        raise MediaError(f"{local.path} changed since the job started; rerun with --fresh")
    return data
