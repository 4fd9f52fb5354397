"""An S3-compatible server for the remote-input benchmark: moto's ThreadedMotoServer on
127.0.0.1, in its own process so that neither its CPU nor its memory (it holds the uploaded
objects) lands in the benchmark orchestrator. `python benchmarks/s3_server.py --ready-file F`
listens on a free port, writes its endpoint URL (http://127.0.0.1:PORT) to F and serves until
SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from moto.server import ThreadedMotoServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=args.port, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    partial = args.ready_file.with_suffix(".partial")
    partial.write_text(f"http://{host}:{port}\n")
    partial.replace(args.ready_file)
    stop.wait()
    server.stop()


if __name__ == "__main__":
    main()
