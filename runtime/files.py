"""Writing files so that a crash leaves the old or the new content, never half of either.

The one implementation for every part: trust caches, key files, the instance id, the
nats-server configuration, restored databases and the time-travel offset file. Each write
goes to a temporary file beside the target, is flushed to disk, then takes the target's
place by `os.replace` (or `os.link`, which refuses an existing target); `fsync_dir` makes
the new directory entry itself durable.
"""

from __future__ import annotations

import os
from pathlib import Path


def replace_file(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Write `data` to `path` atomically (a reader sees the old or the new file, never half)."""
    tmp = _write_temp(path, data, mode)
    try:
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_new_file(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Write `data` to a new file at `path` atomically; FileExistsError if `path` exists."""
    tmp = _write_temp(path, data, mode)
    try:
        os.link(tmp, path)  # atomic, and refuses an existing target
    except FileExistsError as e:
        raise FileExistsError(f"{path} already exists; refusing to overwrite") from e
    finally:
        tmp.unlink(missing_ok=True)


def fsync(path: Path, *, directory: bool = False) -> int:
    """fsync a file (or directory) and return its size; 0 if it does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    except FileNotFoundError:
        return 0
    try:
        os.fsync(fd)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make the entries of directory `path` (a file created, renamed or removed) durable."""
    fsync(path, directory=True)


def _write_temp(path: Path, data: bytes, mode: int) -> Path:
    """`data`, flushed to disk in a new temporary file beside `path`, with `mode`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp
