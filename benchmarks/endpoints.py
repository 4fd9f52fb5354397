"""The servers the benchmarks talk to, each in its own process, and their start and stop.

- the fixed-response endpoint: nginx with benchmarks/nginx.conf when nginx is installed and
  starts, else benchmarks/fallback_server.py (the caller reports that loudly);
- the latency endpoint: `batchrun mock-server`, with its settings as command-line flags and
  its counters read from GET /_mock/stats;
- the recorder for the resume benchmark: the fallback server writing its first request.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CHAT = "/chat/completions"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def batchrun_exe() -> list[str]:
    """The venv's `batchrun` script (the command a user types), else `python -m batchrun`."""
    script = Path(sys.executable).with_name("batchrun")
    return [str(script)] if script.exists() else [sys.executable, "-m", "batchrun"]


class Server:
    """A server process and the base URL (ending in /v1) it answers on."""

    def __init__(self, kind: str, proc: subprocess.Popen[bytes], base_url: str, log: Path):
        self.kind, self.proc, self.base_url, self.log = kind, proc, base_url, log

    @property
    def chat_url(self) -> str:
        return self.base_url + CHAT

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1].split("/", 1)[0])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _spawn(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _wait_ready(proc: subprocess.Popen[bytes], ready: Path, log: Path, what: str) -> str:
    """The URL the server wrote to `ready` once listening."""
    for _ in range(300):
        if ready.exists() and ready.read_text().strip():
            return ready.read_text().strip()
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{what} did not start:\n{log.read_text(errors='replace')[-2000:]}")


def _wait_port(proc: subprocess.Popen[bytes], port: int) -> bool:
    for _ in range(100):
        if proc.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def post_json(url: str, body: dict[str, Any]) -> tuple[int, bytes]:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return resp.status, resp.read()


def start_nginx(workdir: Path, port: int) -> Server:
    """nginx on `port` with benchmarks/nginx.conf; raises RuntimeError if it cannot run.

    BENCH_NGINX=off in the environment skips it (to exercise the fallback)."""
    if os.environ.get("BENCH_NGINX") == "off":
        raise RuntimeError("nginx switched off with BENCH_NGINX=off")
    exe = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else "")
    if not exe:
        raise RuntimeError("nginx is not installed")
    prefix = workdir / "nginx"
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    conf = (HERE / "nginx.conf").read_text()
    conf = conf.replace("@PORT@", str(port)).replace("@PREFIX@", str(prefix))
    filled = prefix / "nginx.conf"
    filled.write_text(conf)
    log = prefix / "stderr.log"
    cmd = [exe, "-c", str(filled), "-p", str(prefix), "-e", str(prefix / "error.log")]
    proc = _spawn(cmd, log)
    if not _wait_port(proc, port):
        proc.kill()
        proc.wait()
        errors = log.read_text(errors="replace") + _tail(prefix / "error.log")
        raise RuntimeError(f"nginx did not start: {errors.strip()[-1000:]}")
    server = Server("nginx", proc, f"http://127.0.0.1:{port}/v1", log)
    status, body = post_json(server.chat_url, {"model": "m", "messages": []})
    if status != 200 or b'"total_tokens":18' not in body:
        server.stop()
        raise RuntimeError(f"nginx answered {status} {body[:200]!r}")
    return server


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-1000:] if path.exists() else ""


def start_fallback(workdir: Path, port: int, first_request_file: Path | None = None) -> Server:
    """benchmarks/fallback_server.py on `port` (0: any free port)."""
    ready = workdir / f"fallback-{port}.url"
    ready.unlink(missing_ok=True)
    cmd = [sys.executable, str(HERE / "fallback_server.py"), "--port", str(port)]
    cmd += ["--ready-file", str(ready)]
    if first_request_file is not None:
        first_request_file.unlink(missing_ok=True)
        cmd += ["--first-request-file", str(first_request_file)]
    log = workdir / f"fallback-{port}.log"
    proc = _spawn(cmd, log)
    return Server("fallback", proc, _wait_ready(proc, ready, log, "the fallback server"), log)


def start_fixed(workdir: Path, port: int = 0) -> tuple[Server, str | None]:
    """The fixed-response endpoint: (server, None) with nginx, else (fallback, why not nginx)."""
    port = port or free_port()
    try:
        return start_nginx(workdir, port), None
    except (RuntimeError, OSError) as exc:
        return start_fallback(workdir, port), str(exc)


class MockProcess(Server):
    """`batchrun mock-server` in its own process."""

    def stats(self) -> dict[str, Any]:
        origin = self.base_url.rsplit("/v1", 1)[0]
        with urllib.request.urlopen(f"{origin}/_mock/stats", timeout=60) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]


def start_mock(workdir: Path, name: str, cpus: str | None = None, **settings: Any) -> MockProcess:
    """The mock endpoint with settings as flags, e.g. latency=0.05, rpm_limit=600; a boolean
    is a switch (ratelimit_headers=True gives `--ratelimit-headers`, False leaves it out)."""
    ready = workdir / f"mock-{name}.url"
    ready.unlink(missing_ok=True)
    cmd = [*batchrun_exe(), "mock-server", "--port", str(settings.pop("port", 0))]
    cmd += ["--ready-file", str(ready)]
    for key, value in settings.items():
        flag = f"--{key.replace('_', '-')}"
        if isinstance(value, bool):
            cmd += [flag] if value else []
        else:
            cmd += [flag, str(value)]
    if cpus is not None:
        cmd = ["taskset", "-c", cpus, *cmd]
    log = workdir / f"mock-{name}.log"
    proc = _spawn(cmd, log)
    url = _wait_ready(proc, ready, log, "the mock server")
    return MockProcess("mock", proc, url, log)
