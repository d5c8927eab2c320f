"""Group commit (runtime/durability.py) on a real SQLite database in WAL mode."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

from agents.store import Store


def _insert(store: Store, n: int, size: int = 16) -> None:
    with store.transaction() as db:
        db.execute(
            "INSERT INTO consents (receipt_id, signed, recorded) VALUES (?, ?, 0)",
            (f"r{n}", os.urandom(size)),
        )


async def test_concurrent_commits_share_fsyncs(tmp_path: Path) -> None:
    """A hundred writers each commit and await durable(): every one returns, and they
    share far fewer fsyncs than there were commits."""
    store = Store(tmp_path / "agent.db")

    async def writer(n: int) -> None:
        _insert(store, n)
        await store.durable()

    await asyncio.gather(*(writer(n) for n in range(100)))
    flushes = store._group.flushes
    assert 1 <= flushes < 50, flushes
    await store.durable()  # nothing new: no further fsync
    assert store._group.flushes == flushes
    _insert(store, 100)
    await store.durable()
    assert store._group.flushes == flushes + 1
    store.close()
    with sqlite3.connect(tmp_path / "agent.db") as db:
        assert db.execute("SELECT count(*) FROM consents").fetchone() == (101,)


async def test_a_cancelled_waiter_does_not_cancel_the_fsync(tmp_path: Path) -> None:
    store = Store(tmp_path / "agent.db")
    _insert(store, 1)
    waiter = asyncio.create_task(store.durable())
    await asyncio.sleep(0)
    waiter.cancel()
    await store.durable()  # the shared fsync went on and covers the commit
    assert store._group.flushes == 1
    store.close()


async def test_the_wal_is_checkpointed_off_the_loop(tmp_path: Path) -> None:
    """Once the WAL passes the checkpoint size, durable()'s worker thread copies it into the
    database file (SQLite's own automatic checkpoint is set far higher)."""
    path = tmp_path / "agent.db"
    threshold = 1 << 20
    store = Store(path, checkpoint_bytes=threshold)
    before = path.stat().st_size
    for n in range(threshold // 60_000 + 5):
        _insert(store, n, size=64_000)
    assert path.stat().st_size == before  # everything still in the WAL
    await store.durable()
    assert path.stat().st_size > threshold
    store.close()
