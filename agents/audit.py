"""The agent's side of the audit ledger: one signed, metadata-only event per action.

Events are written into the same SQLite transaction as the action they describe, so an
action is never recorded without its event nor an event without its action; the transport
publishes them to `nrm.v1.audit.<agency>` like any outbox row.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from keys import AgencyKeys
from keys.audit import AuditEvent, new_event_id, sign_event
from runtime import clock

from .store import Store


class AuditTrail:
    def __init__(self, *, agency: str, keys: Callable[[], AgencyKeys], store: Store) -> None:
        self.agency = agency
        self._keys = keys
        self.store = store

    def record(
        self,
        db: sqlite3.Connection,
        kind: str,
        *,
        referral_id: str | None = None,
        counterpart: str | None = None,
        envelope_hash: str | None = None,
        key_ids: tuple[str, ...] = (),
        reason: str | None = None,
        labels: tuple[tuple[str, str], ...] = (),
        at: int | None = None,
    ) -> str:
        """Sign an event and queue it in the caller's transaction; returns its id. `at` is
        its `time` when the action it records is dated already (a decision's `decided_at`,
        read from the same clock a moment before): else now."""
        now = clock.now()
        event = AuditEvent(
            event_id=new_event_id(),
            agency=self.agency,
            kind=kind,
            time=now if at is None else at,
            referral_id=referral_id,
            counterpart=counterpart,
            envelope_hash=envelope_hash,
            key_ids=key_ids,
            reason=reason,
            labels=labels,
        )
        self.store.record_audit(
            db, event.event_id, sign_event(event, self._keys().signing_key), now
        )
        return event.event_id

    def record_alone(self, kind: str, **fields: object) -> str:
        """Record an event that belongs to no other write (a refusal, say)."""
        with self.store.transaction() as tx:
            return self.record(tx, kind, **fields)  # type: ignore[arg-type]
