"""The one wall clock of every NRM Exchange process.

Production reads `time.time()` and nothing else. The time-travel tests move a whole mechanism
through months in minutes: they point `NRM_UNSAFE_CLOCK_FILE` at a file holding an offset in
whole seconds, and every process started with it reads wall time plus that offset, noticing
at once when the file is replaced (by inode, size and mtime). nats-server is never faked, so
a time the bus stamped (a JetStream message's stored time, a KV entry's) goes through
`from_bus` to land on the same clock as everything else.

Durations measured inside one process (timeouts, back-off, sleeps) use `time.monotonic()`
and are not shifted.
"""

from __future__ import annotations

import os
import time as _time
from pathlib import Path
from typing import Final

import structlog

from .files import replace_file

#: Test-only: a file holding an integer offset in seconds. Never set in production.
ENV: Final = "NRM_UNSAFE_CLOCK_FILE"

log = structlog.get_logger("nrm.clock")

_cache: dict[str, tuple[tuple[int, int, int], int]] = {}


def _offset() -> int:
    path = os.environ.get(ENV)
    if not path:
        return 0
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return 0
    stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
    cached = _cache.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    with open(path, encoding="ascii") as f:
        offset = int(f.read().strip() or "0")
    if cached is None:
        log.warning("unsafe_clock_offset", env=ENV, offset_seconds=offset)
    _cache[path] = (stamp, offset)
    return offset


def time() -> float:
    """Seconds since the epoch, as a float."""
    return _time.time() + _offset()


def now() -> int:
    """Whole seconds since the epoch: the unit of every timestamp in the protocol."""
    return int(time())


def from_bus(timestamp: float) -> float:
    """A time stamped by nats-server (which keeps real time), on this process's clock."""
    return timestamp + _offset()


def set_offset(path: os.PathLike[str] | str, seconds: int) -> None:
    """Test helper: atomically replace the offset file (a new inode, so readers notice)."""
    replace_file(Path(path), f"{int(seconds)}\n".encode("ascii"), mode=0o644)
