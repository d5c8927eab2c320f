"""The ledger's SQLite database: entries, Merkle nodes, checkpoints, directory history.

entries      one row per leaf, in index order, with the event's fields for queries
nodes        the hash of every perfect subtree (keys.merkle.NodeStore)
checkpoints  every signed checkpoint published
directories  every directory version the ledger verified events against
roots        every root of the chain the ledger verified, from its pinned root on
refused      events kept out, counted by reason
restores     every signed restore declaration (PROTOCOL.md §9.4), and whether the audit
             stream still has to be read again from its start after it
restore_nodes  the Merkle nodes of the tree each restore replaced, kept so that agents can
             check their last checkpoint of it against the restored tree
reports      every signed rapporteur report the ledger verified (PROTOCOL.md §8.12), by its
             id (the SHA-256 of its bytes), with what the listing shows

PRAGMA user_version counts the migrations a database has had (MIGRATIONS, runtime.migrate,
applied when it is opened for writing); a database of a newer release is refused, read only
too.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keys.audit import AuditEvent
from keys.errors import NrmError
from keys.merkle import EMPTY_ROOT, Frontier, MerkleTree, leaf_hash
from runtime.durability import BACKSTOP_PAGES, GroupCommit
from runtime.migrate import Migration, check_not_newer, latest, migrate

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
CREATE INDEX IF NOT EXISTS entries_accesses ON entries(counterpart, idx)
    WHERE kind = 'record.accessed';
CREATE INDEX IF NOT EXISTS entries_accesses_all ON entries(idx)
    WHERE kind = 'record.accessed';
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
CREATE TABLE IF NOT EXISTS restores (
    seq            INTEGER PRIMARY KEY,
    declaration    BLOB NOT NULL,
    restored_size  INTEGER NOT NULL,
    previous_size  INTEGER,
    declared_at    INTEGER NOT NULL,
    replay_pending INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE TABLE IF NOT EXISTS restore_nodes (
    seq   INTEGER NOT NULL,
    level INTEGER NOT NULL,
    idx   INTEGER NOT NULL,
    hash  BLOB NOT NULL,
    PRIMARY KEY (seq, level, idx)
) STRICT, WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reports (
    report_id   TEXT PRIMARY KEY,
    rapporteur  TEXT NOT NULL,
    first       TEXT NOT NULL,
    last        TEXT NOT NULL,
    signed_at   INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    data        BLOB NOT NULL
) STRICT;
"""


def _nothing(db: sqlite3.Connection) -> None:
    """Version 1 has the tables of release 0.1.0, which SCHEMA creates; a database from
    before user_version was kept has them already."""


#: The ledger database's migrations, in order (runtime.migrate). Checkpoints and restore
#: declarations of the former note format are re-signed by broker.ledger_migrate, which
#: needs the ledger's key, when the ledger opens its database.
MIGRATIONS = (Migration(1, "the tables of release 0.1.0", _nothing),)

#: PRAGMA user_version of a database with every migration.
VERSION = latest(MIGRATIONS)


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


@dataclass(frozen=True, slots=True)
class ReportRow:
    """A stored rapporteur report: its signed bytes and what the listing shows of them."""

    report_id: str
    rapporteur: str
    first: str
    last: str
    signed_at: int
    received_at: int
    data: bytes


def _report_row(r: tuple[Any, ...]) -> ReportRow:
    return ReportRow(r[0], r[1], r[2], r[3], int(r[4]), int(r[5]), bytes(r[6]))


_REPORT_COLUMNS = "report_id, rapporteur, first, last, signed_at, received_at, data"

_COLUMNS = (
    "idx, event_id, leaf, agency, kind, referral_id, counterpart, reason, labels, time,"
    " directory_version"
)

#: The statement that stores one entry; its parameters are `entry_values`.
INSERT_ENTRY = f"INSERT INTO entries ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"


def entry_values(
    index: int, leaf: bytes, event: AuditEvent, directory_version: int
) -> tuple[Any, ...]:
    """The column values of entry `index` (with `leaf`, its encoded `LedgerEntry`)."""
    return (
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
    )


def _row(r: tuple[Any, ...]) -> EntryRow:
    return EntryRow(
        r[0], r[1], bytes(r[2]), r[3], r[4], r[5], r[6], r[7], json.loads(r[8]), r[9], r[10]
    )


#: Tree nodes kept in memory (about 100 bytes each).
NODE_CACHE = 1 << 16


class LedgerBusyError(NrmError):
    """Another process has the ledger database open for writing (a running ledger)."""


def lock_database(path: Path) -> int:
    """Take the exclusive lock of the ledger database `path` (`<path>.lock`, flock) and
    return its descriptor; closing it releases the lock. Raises `LedgerBusyError` while
    another process holds it: one writer at a time, and no restore under a running ledger."""
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as e:
        os.close(fd)
        raise LedgerBusyError(f"{path} is in use by a running ledger; stop it first") from e
    return fd


class LedgerStore:
    """Owns the connection. The Merkle tree writes its nodes through `get`/`put`."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        self._lock: int | None = None
        if readonly:
            self._db = sqlite3.connect(
                f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
            )
        else:
            self._lock = lock_database(path)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # plus durable(): group commit
            self._db.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")
        try:
            if readonly:
                check_not_newer(self._db, MIGRATIONS, what=str(path))
            else:
                migrate(self._db, MIGRATIONS, what=str(path))
                self._db.executescript(SCHEMA)
        except BaseException:  # a newer release's database, say: refused, nothing left open
            self.close()
            raise
        if not readonly:
            path.chmod(0o600)
        self._group = GroupCommit(path)
        self._nodes: dict[tuple[int, int], bytes] = {}

    def close(self) -> None:
        self._db.close()
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

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

    # --- rapporteur reports (PROTOCOL.md §8.12) ----------------------------------------------

    def add_report(self, row: ReportRow) -> bool:
        """Store a verified report; False (nothing changed) if its id is held already. The id
        is the hash of the bytes, so a second row under it holds the same bytes."""
        cursor = self._db.execute(
            f"INSERT INTO reports ({_REPORT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (report_id) DO NOTHING",
            (
                row.report_id,
                row.rapporteur,
                row.first,
                row.last,
                row.signed_at,
                row.received_at,
                row.data,
            ),
        )
        return cursor.rowcount == 1

    def reports(self, *, limit: int) -> list[ReportRow]:
        """The newest `limit` reports by `signed_at` (then id), newest first. A read-only copy
        made before the table existed answers an empty list."""
        try:
            rows = self._db.execute(
                f"SELECT {_REPORT_COLUMNS} FROM reports ORDER BY signed_at DESC, report_id LIMIT ?",
                (limit,),
            )
        except sqlite3.OperationalError:
            return []
        return [_report_row(r) for r in rows]

    def report(self, report_id: str) -> ReportRow | None:
        try:
            r = self._db.execute(
                f"SELECT {_REPORT_COLUMNS} FROM reports WHERE report_id = ?", (report_id,)
            ).fetchone()
        except sqlite3.OperationalError:
            return None
        return None if r is None else _report_row(r)

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
        self._db.execute(INSERT_ENTRY, entry_values(index, leaf, event, directory_version))

    def entries(self, start: int, end: int) -> list[EntryRow]:
        return list(self.rows_between(start, end))

    def iter_rows(self) -> Iterator[EntryRow]:
        """Every row in index order, as stored (for offline verification)."""
        cursor = self._db.execute(f"SELECT {_COLUMNS} FROM entries ORDER BY idx")
        for r in cursor:
            yield _row(r)

    def rows_between(self, start: int | None, end: int) -> Iterator[EntryRow]:
        """The rows with `start <= index < end` (no lower bound if None), in index order,
        read as they are yielded (for offline verification by chunks)."""
        low = -(1 << 63) if start is None else start
        cursor = self._db.execute(
            f"SELECT {_COLUMNS} FROM entries WHERE idx >= ? AND idx < ? ORDER BY idx",
            (low, end),
        )
        for r in cursor:
            yield _row(r)

    def first_index_from(self, index: int) -> int | None:
        """The least row index at or after `index`, if any."""
        (found,) = self._db.execute(
            "SELECT min(idx) FROM entries WHERE idx >= ?", (index,)
        ).fetchone()
        return None if found is None else int(found)

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

    def accesses(self, *, owner: str | None, since: int, after: int, limit: int) -> list[EntryRow]:
        """`record.accessed` entries after index `after` signed at `since` or later: those
        of `owner`'s referrals (their counterpart), or every one (owner None), by index."""
        # Two statements, so that each uses its partial index: the owner's entries_accesses,
        # the auditor's entries_accesses_all (else every entry would be read to find them).
        where = "kind = 'record.accessed' AND idx > ? AND time >= ?"
        args: tuple[object, ...]
        if owner is None:
            sql, args = where, (after, since, limit)
        else:
            sql, args = f"counterpart = ? AND {where}", (owner, after, since, limit)
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM entries WHERE {sql} ORDER BY idx LIMIT ?",
            args,
        )
        return [_row(r) for r in rows]

    def referral_events(self, referral_id: str) -> list[EntryRow]:
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM entries WHERE referral_id = ? ORDER BY time, idx",
            (referral_id,),
        )
        return [_row(r) for r in rows]

    def all_rows_for_stats(self, kinds: Sequence[str]) -> list[EntryRow]:
        """Every entry of one of `kinds` (what the statistics read), in index order."""
        marks = ", ".join("?" * len(kinds))
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM entries WHERE kind IN ({marks}) ORDER BY idx", tuple(kinds)
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

    def checkpoint_rows(self, note_prefix: str = "") -> list[tuple[int, bytes, int, str]]:
        """(size, root, timestamp, note) of every checkpoint whose note starts with
        `note_prefix`, oldest first (filtered in SQL: the table grows for ever)."""
        rows = self._db.execute(
            "SELECT size, root, timestamp, note FROM checkpoints "
            "WHERE substr(note, 1, ?) = ? ORDER BY size",
            (len(note_prefix), note_prefix),
        )
        return [(int(r[0]), bytes(r[1]), int(r[2]), str(r[3])) for r in rows]

    def replace_checkpoint_note(self, size: int, note: str) -> None:
        """Only for re-signing a stored checkpoint in the current format (ledger_migrate)."""
        self._db.execute("UPDATE checkpoints SET note = ? WHERE size = ?", (note, size))

    def replace_restore_declaration(self, seq: int, declaration: bytes) -> None:
        """Only for re-signing a stored declaration in the current format (ledger_migrate)."""
        self._db.execute("UPDATE restores SET declaration = ? WHERE seq = ?", (declaration, seq))

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

    # --- restores (PROTOCOL.md §9.4) ----------------------------------------------------------

    def restores(self) -> list[tuple[int, bytes]]:
        """(seq, signed declaration) of every restore, oldest first."""
        rows = self._db.execute("SELECT seq, declaration FROM restores ORDER BY seq")
        return [(int(r[0]), bytes(r[1])) for r in rows]

    def restore_sizes(self, seq: int) -> tuple[int, int | None] | None:
        """(restored size, previous size) of restore `seq`, None if there is none."""
        row = self._db.execute(
            "SELECT restored_size, previous_size FROM restores WHERE seq = ?", (seq,)
        ).fetchone()
        return None if row is None else (int(row[0]), None if row[1] is None else int(row[1]))

    def has_restore_archive(self, seq: int) -> bool:
        row = self._db.execute("SELECT 1 FROM restore_nodes WHERE seq = ? LIMIT 1", (seq,))
        return row.fetchone() is not None

    def restore_node(self, seq: int, level: int, index: int) -> bytes:
        row = self._db.execute(
            "SELECT hash FROM restore_nodes WHERE seq = ? AND level = ? AND idx = ?",
            (seq, level, index),
        ).fetchone()
        if row is None:
            raise KeyError((seq, level, index))
        return bytes(row[0])

    def replay_pending(self) -> bool:
        """Whether a restore still wants the audit stream read again from its start."""
        row = self._db.execute("SELECT 1 FROM restores WHERE replay_pending = 1 LIMIT 1")
        return row.fetchone() is not None

    def replay_started(self) -> None:
        with self.transaction():
            self._db.execute("UPDATE restores SET replay_pending = 0 WHERE replay_pending = 1")


class ArchivedNodes:
    """The `NodeStore` of the tree restore `seq` replaced (read only)."""

    def __init__(self, store: LedgerStore, seq: int) -> None:
        self._store = store
        self._seq = seq

    def get(self, level: int, index: int) -> bytes:
        return self._store.restore_node(self._seq, level, index)

    def put(self, level: int, index: int, digest: bytes) -> None:
        raise RuntimeError("the tree before a restore is read only")


@dataclass(frozen=True, slots=True)
class TreeState:
    """What a ledger database holds: its size, its root recomputed from the leaves, the
    highest restore seq it records."""

    size: int
    root: bytes
    last_restore: int


def recompute(path: Path, *, prefix: int | None = None) -> tuple[TreeState, bytes | None]:
    """Read the ledger database `path` (read only) and recompute its tree from the leaves:
    every row in place, the stored nodes agreeing with the leaves. Returns its state and,
    given `prefix`, the root of its first `prefix` leaves (None if it has fewer).
    Raises `ValueError` naming what is wrong with the database."""
    store = LedgerStore(path, readonly=True)
    try:
        frontier = Frontier()
        at: bytes | None = EMPTY_ROOT if prefix == 0 else None
        for expected, row in enumerate(store.iter_rows()):
            if row.index != expected:
                raise ValueError(f"{path}: entry {expected} is missing")
            frontier.append(leaf_hash(row.leaf))
            if frontier.size == prefix:
                at = frontier.root()
        size, root = frontier.size, frontier.root()
        if size and MerkleTree(store, size=size).root() != root:
            raise ValueError(f"{path}: its stored tree nodes do not match its entries")
        last = 0
        if _has_table(store._db, "restores"):
            (last,) = store._db.execute("SELECT coalesce(max(seq), 0) FROM restores").fetchone()
        return TreeState(size=size, root=root, last_restore=int(last)), at
    except KeyError as e:
        raise ValueError(f"{path}: a tree node is missing") from e
    finally:
        store.close()


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    row = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
    return row.fetchone() is not None


def install_restore(
    target: Path,
    *,
    replaced: Path | None,
    seq: int,
    declaration: bytes,
    restored_size: int,
    previous_size: int | None,
    declared_at: int,
) -> None:
    """In `target`, a fresh copy of the backup: record restore `seq` (its signed
    declaration, the audit stream to be read again), and from `replaced`, the database it
    replaces, every earlier declaration and the Merkle nodes of the replaced tree."""
    store = LedgerStore(target)
    try:
        db = store._db
        if replaced is not None:
            db.execute("ATTACH DATABASE ? AS replaced", (str(replaced),))  # only read
        try:
            with store.transaction():
                if replaced is not None:
                    has_restores = db.execute(
                        "SELECT 1 FROM replaced.sqlite_master WHERE type = 'table' "
                        "AND name = 'restores'"
                    ).fetchone()
                    if has_restores is not None:
                        db.execute(
                            "INSERT OR IGNORE INTO restores (seq, declaration, restored_size,"
                            " previous_size, declared_at, replay_pending) SELECT seq,"
                            " declaration, restored_size, previous_size, declared_at, 0"
                            " FROM replaced.restores"
                        )
                    db.execute(
                        "INSERT INTO restore_nodes (seq, level, idx, hash) "
                        "SELECT ?, level, idx, hash FROM replaced.nodes",
                        (seq,),
                    )
                db.execute(
                    "INSERT INTO restores (seq, declaration, restored_size, previous_size,"
                    " declared_at, replay_pending) VALUES (?, ?, ?, ?, ?, 1)",
                    (seq, declaration, restored_size, previous_size, declared_at),
                )
        finally:
            if replaced is not None:
                db.execute("DETACH DATABASE replaced")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        store.close()
