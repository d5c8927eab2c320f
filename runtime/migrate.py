"""Forward migrations of a SQLite database, counted by `PRAGMA user_version`.

A store lists its migrations in order, each a `Migration(version, summary, apply)`;
`migrate` applies every one the database has not had yet, each in its own transaction that
also sets `user_version` to its version, so a crash leaves the database at the last version
fully applied and the next start carries on from there. There are no backward migrations: a
database whose version is above the last one the code knows was written by a newer release
and is refused (`DatabaseTooNewError`, naming both versions) rather than half understood.
docs/RUNBOOK.md, "Versions and upgrades", says how to upgrade (back up first) and what may
run together.

The agent's database (agents/storage/schema.py) and the ledger's (broker/ledger_store.py)
both use it. A step runs on a database of any earlier version, a new empty one included
(version 0, no tables): the store's `CREATE TABLE IF NOT EXISTS` schema runs after it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from keys.errors import NrmError

from .version import VERSION


@dataclass(frozen=True, slots=True)
class Migration:
    """Brings a database from `version - 1` to `version`. `apply` runs inside the
    migration's transaction and must not commit."""

    version: int
    summary: str
    apply: Callable[[sqlite3.Connection], None]


class MigrationError(NrmError):
    """A database cannot be brought up to date (say, its agency is not known)."""


class DatabaseTooNewError(MigrationError):
    """The database was migrated by a newer release than this one."""


def schema_version(db: sqlite3.Connection) -> int:
    """The database's `PRAGMA user_version`."""
    (found,) = db.execute("PRAGMA user_version").fetchone()
    return int(found)


def latest(migrations: Sequence[Migration]) -> int:
    """The version a database has once every migration is applied. Misuse: the versions
    must be 1, 2, 3, ... in order."""
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise ValueError(f"migration versions must be 1, 2, 3, ... in order, not {versions}")
    return len(versions)


def check_not_newer(db: sqlite3.Connection, migrations: Sequence[Migration], *, what: str) -> int:
    """The database's version; raises `DatabaseTooNewError` if it is above what this code
    knows. `what` names the database in the message (its path, say)."""
    found, known = schema_version(db), latest(migrations)
    if found > known:
        raise DatabaseTooNewError(
            f"{what} has schema version {found}, but this release ({VERSION}) knows versions "
            f"up to {known}: a newer release migrated it. Run that release, or restore the "
            "backup made before the upgrade (docs/RUNBOOK.md, 'Versions and upgrades')"
        )
    return found


def migrate(db: sqlite3.Connection, migrations: Sequence[Migration], *, what: str) -> int:
    """Apply, in order, every migration above the database's version, each in one
    transaction with its new `user_version`; returns the version the database had. `db`
    must be in autocommit mode (`isolation_level=None`) and outside a transaction."""
    if db.isolation_level is not None or db.in_transaction:
        raise RuntimeError("migrate needs an autocommit connection outside a transaction")
    found = check_not_newer(db, migrations, what=what)
    for migration in migrations[found:]:
        db.execute("BEGIN IMMEDIATE")
        try:
            # Read again under the write lock: another process may have just applied it.
            if schema_version(db) < migration.version:
                migration.apply(db)
                db.execute(f"PRAGMA user_version = {int(migration.version)}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
    return found
