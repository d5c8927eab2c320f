"""The ledger's SQLite database: entries, Merkle nodes, checkpoints, directory history.

entries      one row per leaf, in index order, with the event's fields for queries
nodes        the hash of every perfect subtree (keys.merkle.NodeStore)
checkpoints  every signed checkpoint published
directories  every directory version the ledger verified events against
roots        every root of the chain the ledger verified, from its pinned root on
refused      events kept out, counted by reason
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keys.audit import AuditEvent
from keys.durability import BACKSTOP_PAGES, GroupCommit

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    idx               INTEGER PRIMARY KEY,
    event_id          TEXT NOT NULL UNIQUE,
    leaf              BLOB NOT NULL,
    agency            TEXT NOT NULL,
    kind              TEXT NOT NULL,
    referral_id       TEXT,
    counterpart       TEXT,
    reason            TEXT,
    labels            TEXT NOT NULL,
    time              INTEGER NOT NULL,
    directory_version INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS entries_referral ON entries(referral_id);
CREATE TABLE IF NOT EXISTS nodes (
    level INTEGER NOT NULL,
    idx   INTEGER NOT NULL,
    hash  BLOB NOT NULL,
    PRIMARY KEY (level, idx)
) STRICT, WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    size      INTEGER PRIMARY KEY,
    root      BLOB NOT NULL,
    timestamp INTEGER NOT NULL,
    note      TEXT NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS directories (
    version     INTEGER PRIMARY KEY,
    data        BLOB NOT NULL,
    accepted_at INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS roots (
    version     INTEGER PRIMARY KEY,
    data        BLOB NOT NULL,
    accepted_at INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS refused (
    reason TEXT PRIMARY KEY,
    count  INTEGER NOT NULL
) STRICT;
"""


@dataclass(frozen=True, slots=True)
class EntryRow:
    index: int
    event_id: str
    leaf: bytes
    agency: str
    kind: str
    referral_id: str | None
    counterpart: str | None
    reason: str | None
    labels: dict[str, str]
    time: int
    directory_version: int

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "event_id": self.event_id,
            "time": self.time,
            "agency": self.agency,
            "kind": self.kind,
            "referral_id": self.referral_id,
            "counterpart": self.counterpart,
            "reason": self.reason,
            "labels": self.labels,
            "directory_version": self.directory_version,
        }


_COLUMNS = (
    "idx, event_id, leaf, agency, kind, referral_id, counterpart, reason, labels, time,"
    " directory_version"
)


def _row(r: tuple[Any, ...]) -> EntryRow:
    return EntryRow(
        r[0], r[1], bytes(r[2]), r[3], r[4], r[5], r[6], r[7], json.loads(r[8]), r[9], r[10]
    )


#: Tree nodes kept in memory (about 100 bytes each).
NODE_CACHE = 1 << 16


class LedgerStore:
    """Owns the connection. The Merkle tree writes its nodes through `get`/`put`."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        if readonly:
            self._db = sqlite3.connect(
                f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
            )
        else:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # plus durable(): group commit
            self._db.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")
            self._db.executescript(SCHEMA)
            path.chmod(0o600)
        self._group = GroupCommit(path)
        self._nodes: dict[tuple[int, int], bytes] = {}

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:  # also when COMMIT itself failed (disk full, I/O)
                self._db.execute("ROLLBACK")
            self._nodes.clear()  # it may hold nodes the rollback undid
            raise
        self._group.committed()

    async def durable(self) -> None:
        """Return once every transaction committed before this call is on disk."""
        await self._group.durable()

    # --- keys.merkle.NodeStore -------------------------------------------------------------

    def get(self, level: int, index: int) -> bytes:
        cached = self._nodes.get((level, index))
        if cached is not None:
            return cached
        row = self._db.execute(
            "SELECT hash FROM nodes WHERE level = ? AND idx = ?", (level, index)
        ).fetchone()
        if row is None:
            raise KeyError((level, index))
        return self._remember(level, index, bytes(row[0]))

    def put(self, level: int, index: int, digest: bytes) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO nodes (level, idx, hash) VALUES (?, ?, ?)",
            (level, index, digest),
        )
        self._remember(level, index, digest)

    def _remember(self, level: int, index: int, digest: bytes) -> bytes:
        """Keep recent nodes in memory (a node never changes once written): the proofs an
        agent asks for share most of their nodes. Bounded by NODE_CACHE entries."""
        if len(self._nodes) >= NODE_CACHE:
            self._nodes.clear()
        self._nodes[(level, index)] = digest
        return digest

    # --- entries ----------------------------------------------------------------------------

    def size(self) -> int:
        (n,) = self._db.execute("SELECT count(*) FROM entries").fetchone()
        return int(n)

    def has_event(self, event_id: str) -> bool:
        row = self._db.execute("SELECT 1 FROM entries WHERE event_id = ?", (event_id,))
        return row.fetchone() is not None

    def insert_entry(
        self, index: int, leaf: bytes, event: AuditEvent, directory_version: int
    ) -> None:
        self._db.execute(
            f"INSERT INTO entries ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                index,
                event.event_id,
                leaf,
                event.agency,
                event.kind,
                event.referral_id,
                event.counterpart,
                event.reason,
                json.dumps(dict(event.labels), sort_keys=True),
                event.time,
                directory_version,
            ),
        )

    def entries(self, start: int, end: int) -> list[EntryRow]:
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM entries WHERE idx >= ? AND idx < ? ORDER BY idx",
            (start, end),
        )
        return [_row(r) for r in rows]

    def iter_rows(self) -> Iterator[EntryRow]:
        """Every row in index order, as stored (for offline verification)."""
        cursor = self._db.execute(f"SELECT {_COLUMNS} FROM entries ORDER BY idx")
        for r in cursor:
            yield _row(r)

    def entry_by_event(self, event_id: str) -> EntryRow | None:
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM entries WHERE event_id = ?",
            (event_id,),
        ).fetchone()
        return None if row is None else _row(row)

    def entries_by_events(self, event_ids: list[str]) -> list[EntryRow]:
        if not event_ids:
            return []
        marks = ",".join("?" * len(event_ids))
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM entries WHERE event_id IN ({marks}) ORDER BY idx",
            event_ids,
        ).fetchall()
        return [_row(row) for row in rows]

    def search(self, *, q: str, after: int, limit: int) -> list[EntryRow]:
        """Entries whose agency, kind, referral id, counterpart or reason contain `q`."""
        like = f"%{q}%"
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM entries WHERE idx > ? AND (? = '' OR agency LIKE ? OR "
            "kind LIKE ? OR referral_id LIKE ? OR counterpart LIKE ? OR reason LIKE ?) "
            "ORDER BY idx LIMIT ?",
            (after, q, like, like, like, like, like, limit),
        )
        return [_row(r) for r in rows]

    def referral_events(self, referral_id: str) -> list[EntryRow]:
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM entries WHERE referral_id = ? ORDER BY time, idx",
            (referral_id,),
        )
        return [_row(r) for r in rows]

    def all_rows_for_stats(self) -> list[EntryRow]:
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM entries WHERE kind IN ('referral.sent', "
            "'transition.sent', 'message.rejected', 'consent.withdrawn') ORDER BY idx"
        )
        return [_row(r) for r in rows]

    # --- checkpoints, directories, refusals -------------------------------------------------

    def add_checkpoint(self, size: int, root: bytes, timestamp: int, note: str) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO checkpoints (size, root, timestamp, note) VALUES (?, ?, ?, ?)",
            (size, root, timestamp, note),
        )

    def latest_checkpoint(self) -> tuple[int, bytes, int, str] | None:
        row = self._db.execute(
            "SELECT size, root, timestamp, note FROM checkpoints ORDER BY size DESC LIMIT 1"
        ).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]), int(row[2]), str(row[3]))

    def checkpoints(self) -> list[tuple[int, str]]:
        rows = self._db.execute("SELECT size, note FROM checkpoints ORDER BY size")
        return [(int(r[0]), str(r[1])) for r in rows]

    def add_directory(self, version: int, data: bytes, accepted_at: int) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO directories (version, data, accepted_at) VALUES (?, ?, ?)",
            (version, data, accepted_at),
        )

    def directories(self) -> list[tuple[int, bytes, int]]:
        """(version, signed bytes, accepted at) for every directory version, oldest first."""
        rows = self._db.execute(
            "SELECT version, data, accepted_at FROM directories ORDER BY version"
        )
        return [(int(r[0]), bytes(r[1]), int(r[2])) for r in rows]

    def add_root(self, version: int, data: bytes, accepted_at: int) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO roots (version, data, accepted_at) VALUES (?, ?, ?)",
            (version, data, accepted_at),
        )

    def roots(self) -> list[tuple[int, bytes, int]]:
        """(version, signed bytes, accepted at) for every root of the chain, oldest first.
        An older database (before the roots table) answers an empty list."""
        try:
            rows = self._db.execute("SELECT version, data, accepted_at FROM roots ORDER BY version")
        except sqlite3.OperationalError:  # a read-only copy made before the table existed
            return []
        return [(int(r[0]), bytes(r[1]), int(r[2])) for r in rows]

    def count_refused(self, reason: str) -> None:
        self._db.execute(
            "INSERT INTO refused (reason, count) VALUES (?, 1) "
            "ON CONFLICT (reason) DO UPDATE SET count = count + 1",
            (reason,),
        )

    def refused(self) -> dict[str, int]:
        return {str(r[0]): int(r[1]) for r in self._db.execute("SELECT reason, count FROM refused")}
