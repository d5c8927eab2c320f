"""Statistics contributions (docs/PROTOCOL.md §8.11).

`contributions_sent`: at a competent authority, one row per month whose contribution it
sealed to the rapporteurs, written in the transaction that queued the envelope, so that a
restart never sends a month twice. `contributions`: at a rapporteur, every contribution it
accepted, keyed by authority and period, the body as received (exact counts of coded
values, no person's record) sealed under the storage key by agents/statistics.py, with the
envelope's hash and when it arrived.
New tables: `CREATE TABLE IF NOT EXISTS` adds them; no migration.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from .cases import _SELECT_CASE, Case
from .db import Database


@dataclass(frozen=True, slots=True)
class StoredContribution:
    """A contribution as the rapporteur holds it."""

    authority: str
    period: str
    #: The body as received, sealed under the storage key (SecretBox).
    sealed_body: bytes
    envelope_hash: str
    received_at: int


_SELECT = "SELECT authority, period, body, envelope_hash, received_at FROM contributions"


class Contributions(Database):
    """`contributions_sent` and `contributions`."""

    @staticmethod
    def contributed(db: sqlite3.Connection, period: str) -> bool:
        """Whether this authority sent its contribution of `period`."""
        row = db.execute("SELECT 1 FROM contributions_sent WHERE period = ?", (period,)).fetchone()
        return row is not None

    @staticmethod
    def mark_contributed(db: sqlite3.Connection, period: str, message_id: str, at: int) -> None:
        db.execute(
            "INSERT INTO contributions_sent (period, message_id, sent_at) VALUES (?, ?, ?)",
            (period, message_id, at),
        )

    @staticmethod
    def first_case_opened(db: sqlite3.Connection) -> int | None:
        """When this authority's first case opened, or None without a case."""
        row = db.execute("SELECT MIN(opened_at) FROM cases").fetchone()
        return None if row is None or row[0] is None else int(row[0])

    @staticmethod
    def held_contribution(
        db: sqlite3.Connection, authority: str, period: str
    ) -> StoredContribution | None:
        row = db.execute(
            _SELECT + " WHERE authority = ? AND period = ?", (authority, period)
        ).fetchone()
        return None if row is None else StoredContribution(*row)

    @staticmethod
    def insert_contribution(db: sqlite3.Connection, c: StoredContribution) -> None:
        db.execute(
            "INSERT INTO contributions (authority, period, body, envelope_hash, received_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (c.authority, c.period, c.sealed_body, c.envelope_hash, c.received_at),
        )

    def contributions_of(self, period: str) -> list[StoredContribution]:
        """The contributions held for `period`, by authority."""
        rows = self._db.execute(
            _SELECT + " WHERE period = ? ORDER BY authority", (period,)
        ).fetchall()
        return [StoredContribution(*r) for r in rows]

    @staticmethod
    def all_cases(db: sqlite3.Connection) -> list[Case]:
        """Every case this authority opened (the statistics read them all, PROTOCOL §8.11)."""
        rows = db.execute(_SELECT_CASE + " ORDER BY opened_at, case_id").fetchall()
        return [Case(*r) for r in rows]
