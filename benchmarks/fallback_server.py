"""The fixed-response endpoint when nginx cannot run, and the resume benchmark's recorder.

A raw asyncio.Protocol HTTP/1.1 server (keep-alive, pipelining, Content-Length bodies) that
answers POST /v1/chat/completions with the same bytes nginx.conf returns: the body and the
NVCF-REQID header are read from that file, so both endpoints answer alike. Run it in its own
process: `python benchmarks/fallback_server.py --port 0 --ready-file F [--first-request-file G]`.
With --first-request-file it writes {"time": time.time(), "body": ...} on the first request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import time
from pathlib import Path

CONF = Path(__file__).with_name("nginx.conf")
ROUTE = b"POST /v1/chat/completions "


def fixed_answer(conf: Path = CONF) -> tuple[bytes, str]:
    """The body and NVCF-REQID that nginx.conf returns."""
    text = conf.read_text()
    body = re.search(r"return 200 '(.*)';", text)
    reqid = re.search(r"add_header NVCF-REQID (\S+);", text)
    if body is None or reqid is None:
        raise SystemExit(f"{conf}: no `return 200 '...'` or NVCF-REQID header found")
    return body.group(1).encode(), reqid.group(1)


def _response(status: str, body: bytes, extra: str = "") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


class FixedProtocol(asyncio.Protocol):
    """One connection: parse requests from the buffer, answer each with fixed bytes."""

    ok = b""
    first_request_file: Path | None = None

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        out = bytearray()
        close = False
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = bytes(self.buffer[:end]).lower()
            match = re.search(rb"\r\ncontent-length:\s*(\d+)", head)
            size = int(match.group(1)) if match else 0
            if len(self.buffer) < end + 4 + size:
                break
            body = bytes(self.buffer[end + 4 : end + 4 + size])
            del self.buffer[: end + 4 + size]
            if b"\r\ntransfer-encoding:" in head:
                out += _response("411 Length Required", b"{}", "Connection: close\r\n")
                close = True
                break
            if head.startswith(ROUTE.lower()):
                self._record(body)
                out += self.ok
            else:
                out += _response("404 Not Found", b'{"error":"not found"}')
            if b"\r\nconnection: close" in head:
                close = True
                break
        if out and self.transport is not None:
            self.transport.write(bytes(out))
        if close and self.transport is not None:
            self.transport.close()

    def _record(self, body: bytes) -> None:
        target = FixedProtocol.first_request_file
        if target is not None:
            FixedProtocol.first_request_file = None
            record = {"time": time.time(), "body": body[:2000].decode(errors="replace")}
            target.write_text(json.dumps(record))


async def serve(port: int, ready_file: Path | None) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(FixedProtocol, "127.0.0.1", port, backlog=4096)
    bound = server.sockets[0].getsockname()[1]
    if ready_file is not None:
        ready_file.write_text(f"http://127.0.0.1:{bound}/v1\n")  # noqa: ASYNC240
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ready-file", type=Path)
    parser.add_argument("--first-request-file", type=Path)
    args = parser.parse_args()
    body, reqid = fixed_answer()
    FixedProtocol.ok = _response("200 OK", body, f"NVCF-REQID: {reqid}\r\n")
    FixedProtocol.first_request_file = args.first_request_file
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.ready_file))


if __name__ == "__main__":
    main()
