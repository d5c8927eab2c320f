"""The agent database: one SQLite connection in WAL mode, short transactions, group commit.

Commits are made durable by group commit (runtime.durability): callers await `durable()` before
anything they committed is announced outside the process. The aggregates (messages.py,
referrals.py, ...) are mixins over this class; agents/storage/__init__.py composes them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from runtime.durability import BACKSTOP_PAGES, CHECKPOINT_BYTES, GroupCommit

from .schema import SCHEMA, migrate


class Database:
    """Owns the SQLite connection. All methods are short transactions."""

    def __init__(
        self, path: Path, *, agency: str | None = None, checkpoint_bytes: int = CHECKPOINT_BYTES
    ) -> None:
        """Open (creating or migrating) the database at `path`. `agency`, the agency it
        belongs to, is needed only to migrate a database made before owner keys."""
        self.path = path
        self.agency = agency
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # plus durable(): group commit
        self._db.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=5000")
        # Erased rows are overwritten, not just unlinked (crypto-shredding, issue 4).
        self._db.execute("PRAGMA secure_delete=ON")
        try:
            migrate(self._db, agency=agency, what=str(path))
            self._db.executescript(SCHEMA)
        except BaseException:  # a newer release's database, say: refused, nothing left open
            self._db.close()
            raise
        self._savepoints = 0
        path.chmod(0o600)
        self._group = GroupCommit(path, checkpoint_bytes=checkpoint_bytes)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception. Inside another
        transaction it is a savepoint, so callers compose into one atomic commit."""
        if self._db.in_transaction:
            self._savepoints += 1
            name = f"nested_{self._savepoints}"
            self._db.execute(f"SAVEPOINT {name}")
            try:
                yield self._db
            except BaseException:
                self._db.execute(f"ROLLBACK TO {name}")
                self._db.execute(f"RELEASE {name}")
                raise
            self._db.execute(f"RELEASE {name}")
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:  # also when COMMIT itself failed (disk full, I/O)
                self._db.execute("ROLLBACK")
            raise
        self._group.committed()

    def _blob(self, sql: str, params: Sequence[object]) -> bytes | None:
        """The one blob `sql` selects, None if it selects no row or a NULL (erased)."""
        row = self._db.execute(sql, params).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

    def _execute_each(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        """`sql` once with each row of parameters, all in one transaction; nothing for none."""
        if not rows:
            return
        with self.transaction() as tx:
            tx.executemany(sql, rows)

    async def durable(self) -> None:
        """Return once every transaction committed before this call is on disk."""
        await self._group.durable()

    async def truncate_wal(self) -> None:
        """After an erasure: make every commit durable, then checkpoint the WAL into the
        database and truncate it (runtime.durability.GroupCommit.truncate), so that no WAL
        frame keeps the erased bytes (secure_delete zeroes them in the database file)."""
        await self._group.truncate()

    def checkpoint_wal(self) -> None:
        """Move every commit from the WAL into the database file (before it is copied)."""
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    @staticmethod
    def is_agent_database(path: Path) -> bool:
        """Whether `path` is a SQLite file holding an agent's tables (read only)."""
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        except sqlite3.Error:
            return False
        try:
            names = {
                str(r[0]) for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
        except sqlite3.Error:  # not a database at all
            return False
        finally:
            db.close()
        return {"outbox", "deliveries", "inbox", "audit_outbox", "referrals"} <= names
