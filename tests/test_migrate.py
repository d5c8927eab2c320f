"""runtime.migrate: forward migrations by user_version, each in one transaction, and a
database of a newer release refused by the migrator, the agent store and the ledger store."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agents.storage import Store
from agents.storage.schema import VERSION as AGENT_VERSION
from broker.ledger_store import VERSION as LEDGER_VERSION
from broker.ledger_store import LedgerStore
from runtime.migrate import DatabaseTooNewError, Migration, migrate, schema_version
from runtime.version import VERSION


def _connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def _steps(fail_at: int | None = None) -> list[Migration]:
    def step(version: int) -> Migration:
        def apply(db: sqlite3.Connection) -> None:
            db.execute(f"CREATE TABLE t{version} (x INTEGER)")
            if version == fail_at:
                raise sqlite3.OperationalError("disk I/O error")

        return Migration(version, f"table t{version}", apply)

    return [step(v) for v in (1, 2, 3)]


def _tables(db: sqlite3.Connection) -> set[str]:
    return {str(r[0]) for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def test_migrations_run_in_order_from_the_version_the_database_has(tmp_path: Path) -> None:
    """A database at version 1 gets steps 2 and 3 only, ends at 3; running again is a no-op."""
    db = _connect(tmp_path / "x.db")
    db.execute("CREATE TABLE t1 (x INTEGER)")
    db.execute("PRAGMA user_version = 1")
    assert migrate(db, _steps(), what="x.db") == 1
    assert schema_version(db) == 3 and _tables(db) == {"t1", "t2", "t3"}
    assert migrate(db, _steps(), what="x.db") == 3


def test_a_failing_step_leaves_the_database_at_the_last_step_applied(tmp_path: Path) -> None:
    """Step 2 fails: step 1 stays committed, nothing of step 2 is left, and a later run
    (the fault gone) carries on from version 1."""
    db = _connect(tmp_path / "x.db")
    with pytest.raises(sqlite3.OperationalError):
        migrate(db, _steps(fail_at=2), what="x.db")
    assert schema_version(db) == 1 and _tables(db) == {"t1"} and not db.in_transaction
    assert migrate(db, _steps(), what="x.db") == 1
    assert schema_version(db) == 3


def test_a_database_of_a_newer_release_is_refused_naming_both_versions(tmp_path: Path) -> None:
    """user_version 4 against code that knows 3: refused, the message names 4, 3, this
    release and the database; nothing runs."""
    db = _connect(tmp_path / "x.db")
    db.execute("PRAGMA user_version = 4")
    with pytest.raises(DatabaseTooNewError) as refused:
        migrate(db, _steps(), what="x.db")
    message = str(refused.value)
    assert "x.db has schema version 4" in message and "up to 3" in message
    assert VERSION in message
    assert schema_version(db) == 4 and _tables(db) == set()


@pytest.mark.parametrize("versions", [(2, 3), (1, 3), (1, 1)], ids=["not from 1", "a gap", "twice"])
def test_migration_versions_must_count_from_one(versions: tuple[int, ...]) -> None:
    """A store's list of migrations is 1, 2, 3, ...: anything else is a programming error."""
    steps = [Migration(v, "", lambda db: None) for v in versions]
    with pytest.raises(ValueError):
        migrate(sqlite3.connect(":memory:", isolation_level=None), steps, what="x")


def _newer(path: Path, version: int) -> None:
    db = _connect(path)
    db.execute(f"PRAGMA user_version = {version + 1}")
    db.close()


def test_the_agent_store_refuses_a_database_of_a_newer_release(tmp_path: Path) -> None:
    """An agent database a newer release migrated is refused with the path in the message,
    and left as it was."""
    path = tmp_path / "agent.db"
    Store(path, agency="police").close()
    _newer(path, AGENT_VERSION)
    with pytest.raises(DatabaseTooNewError, match=str(path)):
        Store(path, agency="police")
    assert schema_version(_connect(path)) == AGENT_VERSION + 1


def test_the_ledger_store_refuses_a_database_of_a_newer_release(tmp_path: Path) -> None:
    """For writing and read only alike; the lock is released, so a fixed release can open it."""
    path = tmp_path / "ledger.db"
    LedgerStore(path).close()
    assert schema_version(_connect(path)) == LEDGER_VERSION
    _newer(path, LEDGER_VERSION)
    for readonly in (False, True):
        with pytest.raises(DatabaseTooNewError, match="this release"):
            LedgerStore(path, readonly=readonly)
    _connect(path).execute(f"PRAGMA user_version = {LEDGER_VERSION}")
    LedgerStore(path).close()
