"""Break-glass holds (docs/PROTOCOL.md §8.2 step 2, agents/break_glass.py).

`break_glass`: one row per break-glass referral this agency's clients submitted, from the
request until a second client confirmed or refused it or it lapsed, and kept after as the
record of who asked and who decided (client names, never a person's). While it waits it
holds the submitted document sealed under its own data key, that key under the agent's
storage key; a decision drops both (crypto-shredding). Only this agency's own referrals, so
the referral id (chosen here) names a row.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from .db import Database


@dataclass(frozen=True, slots=True)
class Hold:
    """A break-glass referral as held (its document not included)."""

    referral_id: str
    state: str
    reason: str
    requested_by: str
    requested_at: int
    confirm_by: int
    decided_by: str | None
    decided_at: int | None
    refusal: str | None
    recipients: tuple[str, ...]
    client_reference: str | None


_SELECT = (
    "SELECT referral_id, state, reason, requested_by, requested_at, confirm_by, decided_by,"
    " decided_at, refusal, recipients, client_reference FROM break_glass"
)


def _hold(row: tuple[object, ...]) -> Hold:
    values = list(row)
    values[9] = tuple(str(values[9]).split(","))
    return Hold(*values)  # type: ignore[arg-type]


class BreakGlassHolds(Database):
    """`break_glass`."""

    @staticmethod
    def hold_break_glass(
        db: sqlite3.Connection, hold: Hold, *, sealed_key: bytes, document: bytes
    ) -> None:
        db.execute(
            "INSERT INTO break_glass (referral_id, state, reason, requested_by, requested_at,"
            " confirm_by, recipients, client_reference, sealed_key, document)"
            " VALUES (?, 'awaiting_confirmation', ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                hold.referral_id,
                hold.reason,
                hold.requested_by,
                hold.requested_at,
                hold.confirm_by,
                ",".join(hold.recipients),
                hold.client_reference,
                sealed_key,
                document,
            ),
        )

    def break_glass_hold(self, referral_id: str) -> Hold | None:
        row = self._db.execute(_SELECT + " WHERE referral_id = ?", (referral_id,)).fetchone()
        return None if row is None else _hold(row)

    def break_glass_document(self, referral_id: str) -> tuple[bytes, bytes] | None:
        """(sealed data key, sealed document) of a hold still waiting, else None."""
        row = self._db.execute(
            "SELECT sealed_key, document FROM break_glass WHERE referral_id = ?"
            " AND state = 'awaiting_confirmation'",
            (referral_id,),
        ).fetchone()
        return None if row is None else (bytes(row[0]), bytes(row[1]))

    @staticmethod
    def decide_break_glass(
        db: sqlite3.Connection,
        referral_id: str,
        state: str,
        *,
        by: str | None,
        at: int,
        refusal: str | None = None,
    ) -> bool:
        """Move a waiting hold to `state`, dropping its document; False if none waits."""
        cursor = db.execute(
            "UPDATE break_glass SET state = ?, decided_by = ?, decided_at = ?, refusal = ?,"
            " sealed_key = NULL, document = NULL"
            " WHERE referral_id = ? AND state = 'awaiting_confirmation'",
            (state, by, at, refusal, referral_id),
        )
        return cursor.rowcount == 1

    def lapsing_break_glass(self, now: int) -> list[Hold]:
        """The holds still waiting whose confirmation time has passed at `now`."""
        rows = self._db.execute(
            _SELECT + " WHERE state = 'awaiting_confirmation' AND confirm_by <= ?"
            " ORDER BY confirm_by",
            (now,),
        ).fetchall()
        return [_hold(r) for r in rows]

    def break_glass_reference_used(self, client_reference: str) -> str | None:
        """The id of a waiting hold under `client_reference`, if any."""
        row = self._db.execute(
            "SELECT referral_id FROM break_glass WHERE client_reference = ?"
            " AND state = 'awaiting_confirmation' LIMIT 1",
            (client_reference,),
        ).fetchone()
        return None if row is None else str(row[0])
