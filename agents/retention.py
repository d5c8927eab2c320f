"""Retention (issue 11; docs/DESIGN.md "Retention", docs/RUNBOOK.md "Retention and legal
hold"): how long the agent keeps what it no longer needs, and the loop that purges it.

The schedule is the `[retention]` table of the agent's configuration (`RetentionSchedule`,
documented defaults, unknown names and non-positive values refused). A background loop
purges every `purge_interval_seconds`, in batches of `purge_batch` rows, each batch its own
short transaction with a yield to the event loop between them, so it stays off the hot path.
A referral under legal hold (`PUT /v1/referrals/{id}/legal-hold`) is left alone by every
kind. Each round that purged anything records one `retention.purged` audit event with a
count per kind (never ids or content), and has the WAL truncated like an erasure.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import structlog

from keys import UntrustedInputError
from runtime import clock

from .audit import AuditTrail
from .errors import NotFound
from .store import Store

log = structlog.get_logger("nrm.retention")

DAY = 86_400
#: Most batches of one kind in one round (the rest waits for the next round).
MAX_BATCHES = 100


@dataclass(frozen=True, slots=True)
class RetentionSchedule:
    """How long each kind of record is kept (days), and how the purge runs."""

    #: An outbox envelope once every copy was delivered and receipted (resend requests
    #: after a recipient restores a backup older than this find nothing to resend).
    delivered_envelopes_days: int = 30
    #: An `Idempotency-Key` record (a retry after this is new work).
    idempotency_keys_days: int = 7
    #: A webhook event body once every URL took it.
    webhook_bodies_days: int = 30
    #: A lifecycle history entry (the referral's current state stays).
    history_days: int = 2190
    #: A referral closed, declined, withdrawn, cancelled or expired, with all it holds; a
    #: break-glass hold refused or lapsed (a confirmed one goes with its referral); a case
    #: transfer rejected, revoked, expired or completed, at its transferee with R.
    closed_referrals_days: int = 2190
    purge_interval_seconds: int = 3600
    purge_batch: int = 500

    @classmethod
    def from_dict(cls, doc: Any) -> RetentionSchedule:
        """The `[retention]` table: positive integers only, no unknown names."""
        if not isinstance(doc, dict):
            raise ValueError("[retention] must be a table")
        known = {f.name for f in fields(cls)}
        for name, value in doc.items():
            if name not in known:
                raise ValueError(f"unknown retention setting {name!r}")
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"retention setting {name} must be a positive integer")
        return cls(**doc)

    def cutoffs(self, now: int) -> dict[str, int]:
        """Kind -> the time before which its records are purged."""
        return {
            "envelopes": now - self.delivered_envelopes_days * DAY,
            "idempotency_keys": now - self.idempotency_keys_days * DAY,
            "webhook_bodies": now - self.webhook_bodies_days * DAY,
            "history": now - self.history_days * DAY,
            "closed_referrals": now - self.closed_referrals_days * DAY,
        }


#: Each kind the schedule names and the storage method that purges one batch of it:
#: (store, transaction, cutoff, batch) -> how many.
Purge = Callable[[Store, sqlite3.Connection, int, int], int]
PURGES: dict[str, Purge] = {
    # A decided break-glass hold, a finished transfer request whose pair went and a
    # finished case transfer with its R are closed records too (counted with them: the
    # count labels are PROTOCOL §9.0's); a round of all four ends once none filled its batch.
    "closed_referrals": lambda s, db, c, b: (
        s.purge_closed(db, cutoff=c, batch=b)
        + s.purge_break_glass(db, cutoff=c, batch=b)
        + s.purge_transfer_requests(db, cutoff=c, batch=b)
        + s.purge_transfers(db, cutoff=c, batch=b)
    ),
    "envelopes": lambda s, db, c, b: s.purge_envelopes(db, cutoff=c, batch=b),
    "idempotency_keys": lambda s, db, c, b: s.purge_idempotency(db, cutoff=c, batch=b),
    "webhook_bodies": lambda s, db, c, b: s.purge_webhooks(db, cutoff=c, batch=b),
    "history": lambda s, db, c, b: s.purge_history(db, cutoff=c, batch=b),
}


class Retention:
    """Owns the legal-hold table and the purge loop."""

    def __init__(
        self,
        *,
        store: Store,
        audit: AuditTrail,
        schedule: RetentionSchedule,
        agency: str,
        purged: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self.audit = audit
        self.schedule = schedule
        self.purged = purged
        self.log = log.bind(agency=agency)

    async def purge(self, now: int | None = None) -> dict[str, int]:
        """One round: purge every kind past its period, batch by batch; the counts."""
        now = clock.now() if now is None else now
        batch = self.schedule.purge_batch
        counts = dict.fromkeys(PURGES, 0)
        for kind, cutoff in self.schedule.cutoffs(now).items():
            for _ in range(MAX_BATCHES):
                with self.store.transaction() as db:
                    n = PURGES[kind](self.store, db, cutoff, batch)
                counts[kind] += n
                await asyncio.sleep(0)  # let the hot path in between batches
                if n < batch:
                    break
        if any(counts.values()):
            self.audit.record_alone(
                "retention.purged", labels=tuple((k, str(v)) for k, v in sorted(counts.items()))
            )
            self.log.info("retention_purged", **counts)
            self.purged()
        return counts

    async def run(self, running: Callable[[], bool]) -> None:
        """Purge every `purge_interval_seconds` until `running()` is false; a failed round
        is logged and tried again next time."""
        while running():
            try:
                await self.purge()
            except (sqlite3.Error, OSError, UntrustedInputError, ValueError) as e:
                self.log.error("retention_purge_failed", error=type(e).__name__)
            await asyncio.sleep(self.schedule.purge_interval_seconds)

    # --- legal holds --------------------------------------------------------------------

    def hold(self, owner: str, referral_id: str, *, by: str) -> dict[str, Any]:
        """Put the referral (owner, referral id) under legal hold (idempotent); NotFound if
        there is none here."""
        with self.store.transaction() as db:
            if not self.store.pairs(owner, referral_id):
                raise NotFound("no referral with this id at this agency")
            self.store.place_hold(db, owner, referral_id, at=clock.now(), by=by)
        return self.status(owner, referral_id)

    def lift(self, owner: str, referral_id: str) -> dict[str, Any]:
        """Lift a legal hold (idempotent); NotFound if there is no such referral here."""
        with self.store.transaction() as db:
            if not self.store.pairs(owner, referral_id):
                raise NotFound("no referral with this id at this agency")
            self.store.lift_hold(db, owner, referral_id)
        return self.status(owner, referral_id)

    def status(self, owner: str, referral_id: str) -> dict[str, Any]:
        held = self.store.hold_of(owner, referral_id)
        return {
            "id": referral_id,
            "sender": owner,
            "legal_hold": held is not None,
            "placed_at": None if held is None else held[0],
        }
