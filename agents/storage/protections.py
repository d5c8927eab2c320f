"""Protection notices (docs/PROTOCOL.md §8.9).

`protection_notices`: every signed notice this agency holds, as signed (verified again
whenever it is read), with the pair it came under (at the authority, the case's opening
referral). The notices of one protection of one case of one authority form a chain; the
receiver stores a notice only as the next link of the one it holds (agents/protections.py),
so the last stored is the chain's end. A new table: `CREATE TABLE IF NOT EXISTS` adds it.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from .db import Database


@dataclass(frozen=True, slots=True)
class StoredNotice:
    """A signed notice as this agency holds it, under the pair (owner, referral_id)."""

    authority: str
    notice_id: str
    case_id: str
    protection: str
    event: str
    owner: str
    referral_id: str
    signed: bytes
    stored_at: int


_SELECT = (
    "SELECT authority, notice_id, case_id, protection, event, owner, referral_id, signed,"
    " stored_at FROM protection_notices"
)


class ProtectionNotices(Database):
    """`protection_notices`."""

    @staticmethod
    def insert_notice(db: sqlite3.Connection, n: StoredNotice) -> bool:
        """Store `n`; False (nothing written) if this agency holds that notice already."""
        cursor = db.execute(
            "INSERT INTO protection_notices (authority, notice_id, case_id, protection, event,"
            " owner, referral_id, signed, stored_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            (
                n.authority,
                n.notice_id,
                n.case_id,
                n.protection,
                n.event,
                n.owner,
                n.referral_id,
                n.signed,
                n.stored_at,
            ),
        )
        return cursor.rowcount == 1

    @staticmethod
    def last_notice(
        db: sqlite3.Connection, authority: str, case_id: str, protection: str
    ) -> StoredNotice | None:
        """The last notice held of the chain of `protection` of `authority`'s case."""
        row = db.execute(
            _SELECT + " WHERE authority = ? AND case_id = ? AND protection = ?"
            " ORDER BY seq DESC LIMIT 1",
            (authority, case_id, protection),
        ).fetchone()
        return None if row is None else StoredNotice(*row)

    @staticmethod
    def notices_of_case(db: sqlite3.Connection, authority: str, case_id: str) -> list[StoredNotice]:
        """The notices of `authority`'s case held here, in the order stored."""
        rows = db.execute(
            _SELECT + " WHERE authority = ? AND case_id = ? ORDER BY seq", (authority, case_id)
        ).fetchall()
        return [StoredNotice(*r) for r in rows]

    @staticmethod
    def running_reflections(db: sqlite3.Connection, authority: str) -> list[str]:
        """The case ids of `authority`'s cases whose reflection chain (as held here) ends in
        a notice of a running period (started, extended, ending-soon), by case id."""
        rows = db.execute(
            "SELECT n.case_id FROM protection_notices n WHERE n.authority = ?"
            " AND n.protection = 'reflection'"
            " AND n.event IN ('started', 'extended', 'ending-soon')"
            " AND n.seq = (SELECT max(m.seq) FROM protection_notices m"
            " WHERE m.authority = n.authority AND m.case_id = n.case_id"
            " AND m.protection = 'reflection') ORDER BY n.case_id",
            (authority,),
        ).fetchall()
        return [str(r[0]) for r in rows]

    @staticmethod
    def notice_case_of_pair(
        db: sqlite3.Connection, owner: str, referral_id: str, authority: str
    ) -> str | None:
        """The case_id of `authority`'s first notice held under the pair, or None."""
        row = db.execute(
            "SELECT case_id FROM protection_notices"
            " WHERE owner = ? AND referral_id = ? AND authority = ? ORDER BY seq LIMIT 1",
            (owner, referral_id, authority),
        ).fetchone()
        return None if row is None else str(row[0])

    def notices_of_pair(self, owner: str, referral_id: str) -> list[StoredNotice]:
        """The notices held under the pair (owner, referral_id), in the order stored."""
        rows = self._db.execute(
            _SELECT + " WHERE owner = ? AND referral_id = ? ORDER BY seq", (owner, referral_id)
        ).fetchall()
        return [StoredNotice(*r) for r in rows]
