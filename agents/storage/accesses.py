"""Open access windows: reads of received referrals not yet signed as `record.accessed`
(agents/access.py, PROTOCOL.md §9.0)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from .db import Database


@dataclass(frozen=True, slots=True)
class AccessWindow:
    """The reads of one record of one referral by one API client since `opened_at`."""

    client: str
    owner: str
    referral_id: str
    record: str
    categories: frozenset[str]
    opened_at: int
    reads: int


_COLUMNS = "client, owner, referral_id, record, categories, opened_at, reads"
#: The most reads one window counts (the `reads` label has at most nine digits): the next
#: read closes it as if its time were over.
MAX_READS = 999_999_999


def _window(row: tuple[object, ...]) -> AccessWindow:
    client, owner, referral_id, record, categories, opened_at, reads = row
    return AccessWindow(
        client=str(client),
        owner=str(owner),
        referral_id=str(referral_id),
        record=str(record),
        categories=frozenset(str(categories).split(",")) if categories else frozenset(),
        opened_at=int(opened_at),  # type: ignore[call-overload]
        reads=int(reads),  # type: ignore[call-overload]
    )


class AccessWindows(Database):
    """One row per (client, owner, referral id, record) read inside its open window."""

    @staticmethod
    def note_access(
        db: sqlite3.Connection,
        *,
        client: str,
        owner: str,
        referral_id: str,
        record: str,
        categories: frozenset[str],
        now: int,
        window: int,
        may_close: bool = True,
    ) -> AccessWindow | None:
        """Count one read in the caller's transaction: into its open window, or into a new
        one. Returns the window this read closed (opened `window` or more seconds ago), to
        be signed in the same transaction, or None. With `may_close` False (nothing may be
        signed now) an ended window keeps counting, to be closed later."""
        key = (client, owner, referral_id, record)
        row = db.execute(
            f"SELECT {_COLUMNS} FROM access_windows"  # noqa: S608 (constant columns)
            " WHERE client = ? AND owner = ? AND referral_id = ? AND record = ?",
            key,
        ).fetchone()
        found = None if row is None else _window(row)
        if found is not None and not may_close and found.reads >= MAX_READS:
            return None  # saturated until it can be signed
        open_now = found is not None and (not may_close or now < found.opened_at + window)
        if found is not None and open_now and found.reads < MAX_READS:
            merged = ",".join(sorted(found.categories | categories))
            db.execute(
                "UPDATE access_windows SET reads = reads + 1, categories = ?"
                " WHERE client = ? AND owner = ? AND referral_id = ? AND record = ?",
                (merged, *key),
            )
            return None
        db.execute(
            "INSERT OR REPLACE INTO access_windows"
            " (client, owner, referral_id, record, categories, opened_at, reads)"
            " VALUES (?, ?, ?, ?, ?, ?, 1)",
            (*key, ",".join(sorted(categories)), now),
        )
        return found

    @staticmethod
    def take_closed_accesses(db: sqlite3.Connection, *, opened_before: int) -> list[AccessWindow]:
        """Remove and return, in the caller's transaction, every window opened before
        `opened_before` (its reads are then signed in the same transaction)."""
        rows = db.execute(
            f"SELECT {_COLUMNS} FROM access_windows WHERE opened_at < ?",  # noqa: S608
            (opened_before,),
        ).fetchall()
        db.execute("DELETE FROM access_windows WHERE opened_at < ?", (opened_before,))
        return sorted((_window(r) for r in rows), key=lambda w: w.opened_at)

    @staticmethod
    def take_accesses_of(
        db: sqlite3.Connection, *, owner: str, referral_id: str
    ) -> list[AccessWindow]:
        """Remove and return, in the caller's transaction, every open window of one
        referral (signed then, before the referral is erased)."""
        key = (owner, referral_id)
        rows = db.execute(
            f"SELECT {_COLUMNS} FROM access_windows"  # noqa: S608 (constant columns)
            " WHERE owner = ? AND referral_id = ?",
            key,
        ).fetchall()
        db.execute("DELETE FROM access_windows WHERE owner = ? AND referral_id = ?", key)
        return sorted((_window(r) for r in rows), key=lambda w: w.opened_at)

    def open_access_count(self) -> int:
        """How many windows hold reads not yet signed."""
        return int(self._db.execute("SELECT count(*) FROM access_windows").fetchone()[0])
