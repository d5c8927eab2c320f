"""`nrm bus up`: run the embedded bus in the foreground until interrupted."""

from __future__ import annotations

import asyncio
import signal
import threading
from pathlib import Path
from types import FrameType

from broker.server import NatsServer
from broker.streams import provision

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def run_foreground(*, store_dir: Path, port: int | None) -> int:
    """Start the server, provision the streams, print the URL, and stop on SIGINT/SIGTERM."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in _STOP_SIGNALS}
    try:
        with NatsServer(store_dir=store_dir, port=port) as server:
            asyncio.run(provision(server.url))
            print(f"NATS bus ready at {server.url} (store {store_dir})", flush=True)
            while not stop.wait(timeout=1.0):
                if not server.running:
                    print(f"nats-server exited unexpectedly; see {server.log_path}", flush=True)
                    return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
