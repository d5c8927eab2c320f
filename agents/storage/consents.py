"""Consent receipts, where they were used, and the signing key history that verifies them."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from keys.directory import Directory
from keys.key_history import KeyWindow, merge

from .db import Database


class Consents(Database):
    """`consents`, `consent_uses` and `signing_key_history`."""

    def remember_keys(self, directory: Directory, *, seen_at: int) -> int:
        """Fold an accepted directory into the signing key history; the windows changed."""
        with self.transaction() as tx:
            changed = merge(_key_windows(tx, None), directory, seen_at=seen_at)
            tx.executemany(
                "INSERT INTO signing_key_history (agency, kid, valid_from, public, valid_until,"
                " revoked_at, listed_version, delisted_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (agency, kid, valid_from) DO UPDATE SET"
                " valid_until = excluded.valid_until, revoked_at = excluded.revoked_at,"
                " listed_version = excluded.listed_version, delisted_at = excluded.delisted_at",
                [
                    (
                        w.agency,
                        w.kid,
                        w.valid_from,
                        w.public,
                        w.valid_until,
                        w.revoked_at,
                        w.listed_version,
                        w.delisted_at,
                    )
                    for w in changed
                ],
            )
        return len(changed)

    def key_history(self, agency: str) -> list[KeyWindow]:
        """Every signing key window of `agency` the history holds."""
        return _key_windows(self._db, agency)

    @staticmethod
    def insert_consent(
        db: sqlite3.Connection, receipt_id: str, signed: bytes, recorded: int
    ) -> bool:
        """Store a signed receipt; False (nothing written) if the id is taken."""
        cursor = db.execute(
            "INSERT INTO consents (receipt_id, signed, recorded) VALUES (?, ?, ?)"
            " ON CONFLICT (receipt_id) DO NOTHING",
            (receipt_id, signed, recorded),
        )
        return cursor.rowcount == 1

    def consent(self, receipt_id: str) -> StoredConsent | None:
        return _consent(self._db, receipt_id)

    def consent_uses(self, receipt_id: str) -> list[tuple[str, str, int | None]]:
        """(agency, referral id, erasure confirmed at) of each use of a receipt."""
        rows = self._db.execute(
            "SELECT agency, referral_id, confirmed_at FROM consent_uses WHERE receipt_id = ?"
            " ORDER BY agency, referral_id",
            (receipt_id,),
        ).fetchall()
        return [(str(a), str(r), c) for a, r, c in rows]

    @staticmethod
    def record_consent_use(
        db: sqlite3.Connection, receipt_id: str, agency: str, referral_id: str
    ) -> None:
        db.execute(
            "INSERT OR IGNORE INTO consent_uses (receipt_id, agency, referral_id) VALUES (?, ?, ?)",
            (receipt_id, agency, referral_id),
        )

    @staticmethod
    def withdraw_consent(db: sqlite3.Connection, receipt_id: str, at: int) -> dict[str, list[str]]:
        """Mark a receipt withdrawn in the caller's transaction; agency -> referral ids it
        was used for. LookupError if it was already withdrawn."""
        (withdrawn_at,) = db.execute(
            "SELECT withdrawn_at FROM consents WHERE receipt_id = ?", (receipt_id,)
        ).fetchone()
        if withdrawn_at is not None:
            raise LookupError(receipt_id)
        db.execute("UPDATE consents SET withdrawn_at = ? WHERE receipt_id = ?", (at, receipt_id))
        uses: dict[str, list[str]] = {}
        for agency, referral_id in db.execute(
            "SELECT agency, referral_id FROM consent_uses WHERE receipt_id = ?", (receipt_id,)
        ):
            uses.setdefault(agency, []).append(referral_id)
        return uses

    @staticmethod
    def confirm_erasure(db: sqlite3.Connection, receipt_id: str, agency: str, at: int) -> None:
        """`agency` erased everything it held from us under the receipt."""
        db.execute(
            "UPDATE consent_uses SET confirmed_at = ? WHERE receipt_id = ? AND agency = ?"
            " AND confirmed_at IS NULL",
            (at, receipt_id, agency),
        )


@dataclass(frozen=True, slots=True)
class StoredConsent:
    """A consent row: the stored signed receipt (JSON), when it was signed, its withdrawal."""

    signed: bytes
    recorded: int
    withdrawn_at: int | None


def _consent(db: sqlite3.Connection, receipt_id: str) -> StoredConsent | None:
    row = db.execute(
        "SELECT signed, recorded, withdrawn_at FROM consents WHERE receipt_id = ?",
        (receipt_id,),
    ).fetchone()
    return None if row is None else StoredConsent(bytes(row[0]), int(row[1]), row[2])


def _key_windows(db: sqlite3.Connection, agency: str | None) -> list[KeyWindow]:
    columns = (
        "SELECT agency, kid, public, valid_from, valid_until, revoked_at, listed_version,"
        " delisted_at FROM signing_key_history"
    )
    rows = (
        db.execute(columns + " ORDER BY agency, kid, valid_from").fetchall()
        if agency is None
        else db.execute(
            columns + " WHERE agency = ? ORDER BY kid, valid_from", (agency,)
        ).fetchall()
    )
    return [
        KeyWindow(
            agency=r[0],
            kid=r[1],
            public=bytes(r[2]),
            valid_from=r[3],
            valid_until=r[4],
            revoked_at=r[5],
            listed_version=r[6],
            delisted_at=r[7],
        )
        for r in rows
    ]


def read_consent(
    path: Path, receipt_id: str, *, agency: str
) -> tuple[StoredConsent, list[KeyWindow]] | None:
    """For `nrm consent show`: the consent row and `agency`'s signing key history, read from
    the agent database at `path` opened read-only (the agent may be running)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        stored = _consent(db, receipt_id)
        if stored is None:
            return None
        has_history = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'signing_key_history'"
        ).fetchone()
        return stored, [] if has_history is None else _key_windows(db, agency)
    finally:
        db.close()
