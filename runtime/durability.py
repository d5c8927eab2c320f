"""Group commit for a SQLite database in WAL mode (the agents' store and the ledger's).

With `PRAGMA synchronous=NORMAL`, SQLite's COMMIT writes the WAL without waiting for the disk
and still keeps the database consistent (it syncs the WAL before every checkpoint); a power
cut may undo the last commits. So whoever is about to let a commit's effect leave the process
(an HTTP answer, a JetStream ack or publish, a webhook) first awaits `durable()`, which fsyncs
the WAL once, in a worker thread, for every commit made so far. Commits waiting at the same
moment share one fsync, and the event loop never blocks on the disk.

Checkpoints (copying the WAL back into the database file, two more fsyncs) run in the same
worker thread on a connection of its own once the WAL passes `CHECKPOINT_BYTES`; the owner
sets `PRAGMA wal_autocheckpoint` to `BACKSTOP_PAGES` so that SQLite checkpoints on the loop
only if these stop happening.

`truncate()` (erasure, docs/DESIGN.md "Erasure") checkpoints the whole WAL and truncates it
to zero bytes, retrying until no reader or writer holds it up, so that no WAL frame keeps a
page as it was before the commits made durable first.

`backup()` copies such a database consistently while it is in use (`nrm agent backup`,
`nrm ledger backup`); `install()` puts a staged copy in a database's place, keeping the
replaced one aside (`nrm agent restore`, `nrm ledger restore`).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

from .files import fsync as _fsync
from .files import fsync_dir

#: A database in WAL mode is these files.
SUFFIXES = ("", "-wal", "-shm")

#: WAL size past which the worker thread checkpoints it.
CHECKPOINT_BYTES = 64 << 20
#: `PRAGMA wal_autocheckpoint` for the owner's connection (pages of 4 KiB: 256 MiB).
BACKSTOP_PAGES = 65536
#: How long one TRUNCATE checkpoint waits for readers and writers before it is retried.
TRUNCATE_WAIT_SECONDS = 0.1


class GroupCommit:
    """Counts commits and makes them durable in batches."""

    def __init__(self, database: Path, *, checkpoint_bytes: int = CHECKPOINT_BYTES) -> None:
        self._database = database
        self._checkpoint_bytes = checkpoint_bytes
        self._wal = database.with_name(database.name + "-wal")
        self._committed = 0
        self._synced = 0
        self._flushing: asyncio.Task[None] | None = None
        #: fsyncs made so far (each covers every commit made before it began).
        self.flushes = 0
        #: TRUNCATE checkpoints that a reader or writer held up (`truncate` retried them).
        self.busy_checkpoints = 0
        fsync_dir(database.parent)  # the WAL file's directory entry, once

    def committed(self) -> None:
        """Call after every COMMIT."""
        self._committed += 1

    async def durable(self) -> None:
        """Return once every transaction committed before this call is on disk. A caller's
        cancellation does not cancel the fsync that others wait for."""
        target = self._committed
        while self._synced < target:
            if self._flushing is None:
                self._flushing = asyncio.create_task(self._flush(), name="sqlite-fsync")
            await asyncio.shield(self._flushing)

    async def _flush(self) -> None:
        upto = self._committed
        try:
            await asyncio.to_thread(self._sync)
            self._synced = max(self._synced, upto)
            self.flushes += 1
        finally:
            self._flushing = None

    async def truncate(
        self, *, retry_seconds: float = 0.05, max_retry_seconds: float = 1.0
    ) -> None:
        """Make every commit so far durable, then checkpoint the WAL in full and truncate it,
        in the worker thread; a checkpoint held up by a reader (a backup, say) or a writer
        is tried again, with bounded back-off, until it succeeds."""
        await self.durable()
        delay = retry_seconds
        while not await asyncio.to_thread(self._truncate):
            self.busy_checkpoints += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_retry_seconds)

    def _truncate(self) -> bool:
        """In the worker thread: one TRUNCATE checkpoint; whether it finished (not busy).
        It holds the write lock while it waits for readers, so it waits only briefly: the
        owner's writers (on the event loop) wait at most that long."""
        db = sqlite3.connect(self._database, isolation_level=None, timeout=TRUNCATE_WAIT_SECONDS)
        try:
            busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            db.close()
        return int(busy) == 0

    def _sync(self) -> None:
        """In the worker thread: fsync the WAL; checkpoint it if it has grown large."""
        if _fsync(self._wal) > self._checkpoint_bytes:
            db = sqlite3.connect(self._database, isolation_level=None)
            try:
                db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            finally:
                db.close()


def backup(source: Path, target: Path) -> int:
    """Copy a SQLite database in WAL mode, consistently and while it is in use (SQLite's
    online backup: the committed state at one moment, WAL included), into `target`, a new
    file created 0600 and never overwritten (FileExistsError). Returns its size in bytes."""
    os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        try:
            dst = sqlite3.connect(target)
            try:
                src.backup(dst)
            finally:
                dst.close()
        finally:
            src.close()
        _fsync(target)
        fsync_dir(target.parent)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return target.stat().st_size


def install(staged: Path, database: Path, *, kept: Path, extra: tuple[str, ...] = ()) -> bool:
    """Put the checkpointed database `staged` in the place of `database`, 0600. A database
    already there (with its WAL and shared memory) is moved to `kept` first; the staged
    copy's own side files (and those named by `extra` suffixes) are removed. Returns whether
    there was a database to keep."""
    present = database.exists()
    if present:
        for suffix in SUFFIXES:
            if Path(f"{database}{suffix}").exists():
                os.replace(f"{database}{suffix}", f"{kept}{suffix}")
    for suffix in ("-wal", "-shm", *extra):
        Path(f"{staged}{suffix}").unlink(missing_ok=True)
    os.replace(staged, database)
    database.chmod(0o600)
    fsync_dir(database.parent)
    return present
