"""Statistics contributions (docs/PROTOCOL.md §8.11).

`contributions_sent`: at a competent authority, one row per month and rapporteur it sealed
that month's contribution to, written in the transaction that queued the envelope, so that
a restart never sends a month twice; the row names the envelope's message id, so that a
copy that failed for good (its `deliveries` row `failed`: refused, expired, its recipient's
keys revoked) is found and the month sent again, `attempts` counting the sends.
`contributions`: at a rapporteur, every contribution it
accepted, keyed by authority and period, the body as received (exact counts of coded
values, no person's record) sealed under the storage key by agents/statistics.py, with the
envelope's hash, the envelope itself (sealed to the rapporteur, so that what it holds can
be shown to be what the ledger's hash names) and when it arrived.
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
    #: The envelope as received (sealed to the rapporteur): `envelope_hash` is over it.
    envelope: bytes


@dataclass(frozen=True, slots=True)
class ContributionCopy:
    """A month's copy sealed to one rapporteur: its envelope, how many times it was sent,
    whether that copy failed for good."""

    message_id: str
    attempts: int
    failed: bool


_SELECT = "SELECT authority, period, body, envelope_hash, received_at, envelope FROM contributions"


class Contributions(Database):
    """`contributions_sent` and `contributions`."""

    @staticmethod
    def copies_sent(db: sqlite3.Connection, period: str) -> dict[str, ContributionCopy]:
        """The copies of `period`'s contribution this authority sealed, by rapporteur."""
        rows = db.execute(
            "SELECT c.rapporteur, c.message_id, c.attempts, d.state = 'failed'"
            " FROM contributions_sent c LEFT JOIN deliveries d"
            " ON d.message_id = c.message_id AND d.recipient = c.rapporteur"
            " WHERE c.period = ?",
            (period,),
        ).fetchall()
        return {r[0]: ContributionCopy(r[1], int(r[2]), bool(r[3])) for r in rows}

    @staticmethod
    def mark_contributed(
        db: sqlite3.Connection, period: str, rapporteur: str, message_id: str, at: int
    ) -> None:
        """Record `period` sealed to `rapporteur` (a rapporteur of the trusted directory, not
        a name a sender chose) in `message_id`; a send again replaces the failed copy's."""
        db.execute(
            "INSERT INTO contributions_sent (period, rapporteur, message_id, sent_at, attempts)"
            " VALUES (?, ?, ?, ?, 1) ON CONFLICT (period, rapporteur) DO UPDATE SET"
            " message_id = excluded.message_id, sent_at = excluded.sent_at,"
            " attempts = contributions_sent.attempts + 1",
            (period, rapporteur, message_id, at),
        )

    @staticmethod
    def give_up_contribution(db: sqlite3.Connection, period: str, rapporteur: str) -> None:
        """Count one attempt more on a failed copy that is not sent again (logged once)."""
        db.execute(
            "UPDATE contributions_sent SET attempts = attempts + 1"
            " WHERE period = ? AND rapporteur = ?",
            (period, rapporteur),
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
            "INSERT INTO contributions"
            " (authority, period, body, envelope_hash, received_at, envelope)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (c.authority, c.period, c.sealed_body, c.envelope_hash, c.received_at, c.envelope),
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
