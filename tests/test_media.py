"""Images: marking local files when inputs are read, inlining or uploading them at send time."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import pytest

from batchrun.assets import ASSET_REUSE_S, AssetUploader
from batchrun.checkpoint import AssetCache, Checkpoint
from batchrun.errors import MediaError
from batchrun.media import LOCAL, MediaProblem, MediaResolver, localize, parse_marker


@pytest.fixture
def pics(tmp_path: Path) -> Path:
    (tmp_path / "a.png").write_bytes(b"\x89PNG" + b"1" * 96)  # 100 bytes
    (tmp_path / "big.webp").write_bytes(b"2" * 5000)
    (tmp_path / "clip.mp4").write_bytes(b"3" * 10)
    return tmp_path


def user(content: Any) -> list[dict[str, Any]]:
    return [{"role": "system", "content": "s"}, {"role": "user", "content": content}]


def test_images_column_is_attached_to_the_last_user_message(pics: Path) -> None:
    messages = localize(user("look"), ["a.png", "https://x.org/c.png"], pics)
    parts = messages[1]["content"]
    assert parts[0] == {"type": "text", "text": "look"}
    local = parse_marker(parts[1]["image_url"]["url"])
    assert local.path == (pics / "a.png").resolve() and local.mime == "image/png"
    assert parts[2]["image_url"]["url"] == "https://x.org/c.png"
    assert messages[0] == {"role": "system", "content": "s"}


def test_parts_with_local_paths_absolute_or_file_urls(pics: Path) -> None:
    content = [
        {"type": "image_url", "image_url": {"url": f"file://{pics / 'a.png'}"}},
        {"type": "video_url", "video_url": {"url": str(pics / "clip.mp4")}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]
    parts = localize(user(content), None, None)[1]["content"]
    assert parts[0]["image_url"]["url"].startswith(LOCAL)
    assert parse_marker(parts[1]["video_url"]["url"]).mime == "video/mp4"
    assert parts[2]["image_url"]["url"] == "data:image/png;base64,AAAA"


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (["nope.png"], "image not found: nope.png"),
        (["clip.mp4"], "clip.mp4: not a known image type"),
        ([""], "images must be a list"),
        ({"a": 1}, "images must be a list"),
    ],
)
def test_bad_images_are_row_problems(pics: Path, images: Any, message: str) -> None:
    with pytest.raises(MediaProblem, match=message):
        localize(user("x"), images, pics)


def test_images_without_a_user_message(pics: Path) -> None:
    with pytest.raises(MediaProblem, match="no user message"):
        localize([{"role": "system", "content": "s"}], ["a.png"], pics)


class FakeUploader:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    async def asset_id(self, local: Any, data: bytes) -> str:
        self.calls.append((local.sha256, len(data)))
        return "asset-1"


def test_resolver_inlines_small_and_uploads_large(pics: Path) -> None:
    marked = json.dumps(localize(user("x"), ["a.png", "big.webp"], pics))
    uploader = FakeUploader()
    resolved, ids = asyncio.run(MediaResolver(uploader, inline_max=1000).resolve(marked))  # type: ignore[arg-type]
    parts = json.loads(resolved)[1]["content"]
    small = parts[1]["image_url"]["url"]
    assert small.startswith("data:image/png;base64,")
    assert base64.b64decode(small.split(",", 1)[1]) == (pics / "a.png").read_bytes()
    assert parts[2]["image_url"]["url"] == "data:image/webp;asset_id,asset-1"
    assert ids == ["asset-1"] and uploader.calls[0][1] == 5000


def test_resolver_without_uploader_inlines_everything(pics: Path) -> None:
    marked = json.dumps(localize(user("x"), ["big.webp"], pics))
    resolved, ids = asyncio.run(MediaResolver(None, inline_max=1000).resolve(marked))
    assert ids == [] and ";base64," in resolved


def test_a_file_changed_after_reading_is_refused(pics: Path) -> None:
    marked = json.dumps(localize(user("x"), ["a.png"], pics))
    (pics / "a.png").write_bytes(b"other")
    with pytest.raises(MediaError, match="changed since the job started"):
        asyncio.run(MediaResolver(None).resolve(marked))
    (pics / "a.png").unlink()
    with pytest.raises(MediaError, match="cannot read"):
        asyncio.run(MediaResolver(None).resolve(marked))


class FakeClient:
    def __init__(self) -> None:
        self.created = 0
        self.uploaded: list[tuple[str, int, str, str]] = []

    async def create_asset(self, content_type: str, description: str) -> tuple[str, str]:
        self.created += 1
        await asyncio.sleep(0.01)
        return f"id-{self.created}", f"https://s3.example/{self.created}"

    async def upload_asset(
        self, url: str, data: bytes, content_type: str, description: str
    ) -> None:
        self.uploaded.append((url, len(data), content_type, description))


def test_uploads_once_per_content_and_again_after_a_day(tmp_path: Path, pics: Path) -> None:
    Checkpoint.create(tmp_path / "c.sqlite").close()
    local = parse_marker(
        localize(user("x"), ["big.webp"], pics)[1]["content"][1]["image_url"]["url"]
    )
    data = (pics / "big.webp").read_bytes()
    now = [1000.0]

    async def scenario() -> list[str]:
        cache = AssetCache(tmp_path / "c.sqlite")
        client = FakeClient()
        uploader = AssetUploader(client, cache, clock=lambda: now[0])  # type: ignore[arg-type]
        try:
            together = await asyncio.gather(*(uploader.asset_id(local, data) for _ in range(5)))
            again = await uploader.asset_id(local, data)
            fresh = AssetUploader(client, cache, clock=lambda: now[0])  # type: ignore[arg-type]
            resumed = await fresh.asset_id(local, data)  # a new run: the checkpoint remembers
            now[0] += ASSET_REUSE_S + 1
            expired = await fresh.asset_id(local, data)
            assert client.uploaded[0][1:] == (5000, "image/webp", f"batchrun {local.sha256[:16]}")
            return [*together, again, resumed, expired, str(client.created)]
        finally:
            cache.close()

    ids = asyncio.run(scenario())
    assert ids == ["id-1"] * 7 + ["id-2", "2"]
