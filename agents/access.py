"""Access records (PROTOCOL.md §9.0 `record.accessed`, docs/proposals/nrm-process.md §11.1).

Every API answer that returns personal data of a referral this agency received counts one
read of (API client, referral, record), `record` being the body or an attachment. Reads of
the same triple inside `Limits.access_coalesce_seconds` of the first are one window; the
window is signed as one `record.accessed` event with its count when it closes: at the next
read of the triple after it (in that read's transaction) or at the timers loop's next step
after it ended (agents/agent.py). The count commits with the read it counts, so no read is
answered before it is on disk (the API's `_durable`), and a window open at a stop is signed
after the next start. The event names the reading client, the record and the categories it
returned, and never anything of the body.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from keys.audit import CATEGORIES
from runtime import clock

from . import referral as R
from .audit import AuditTrail
from .store import AccessWindow, Store

KIND = "record.accessed"

if frozenset(CATEGORIES) != frozenset(R.CATEGORIES):  # pragma: no cover (a bug: fix the list)
    raise RuntimeError("keys.audit.CATEGORIES is not the schema's list of data categories")


def body_categories(referral: Mapping[str, Any] | None) -> frozenset[str]:
    """The data categories a received referral document's body holds (§8.1)."""
    body = referral.get("body") if isinstance(referral, Mapping) else None
    if not isinstance(body, Mapping):
        return frozenset()
    return frozenset(R.FIELD_CATEGORY[f] for f in body if f in R.FIELD_CATEGORY)


class AccessRecorder:
    def __init__(
        self,
        *,
        audit: AuditTrail,
        store: Store,
        window_seconds: int,
        may_sign: Callable[[], bool] = lambda: True,
    ) -> None:
        self.audit = audit
        self.store = store
        self.window = window_seconds
        #: Whether the agency may sign now (its standing is ok, PROTOCOL §7.10): if not, a
        #: read keeps counting into its window, which `flush` signs once it may.
        self.may_sign = may_sign

    def read(
        self,
        db: sqlite3.Connection,
        *,
        client: str,
        owner: str,
        referral_id: str,
        record: str,
        categories: Iterable[str],
    ) -> None:
        """Count one read in the caller's transaction (signing the window it closes)."""
        wanted = frozenset(categories)
        if not wanted:
            return  # nothing of a person was returned
        closed = self.store.note_access(
            db,
            client=client,
            owner=owner,
            referral_id=referral_id,
            record=record,
            categories=wanted,
            now=clock.now(),
            window=self.window,
            may_close=self.may_sign(),
        )
        if closed is not None:
            sign(self.audit, db, closed)

    def flush(self) -> int:
        """Sign every window that has ended; how many."""
        with self.store.transaction() as tx:
            closed = self.store.take_closed_accesses(tx, opened_before=clock.now() - self.window)
            for window in closed:
                sign(self.audit, tx, window)
        return len(closed)


def sign(audit: AuditTrail, db: sqlite3.Connection, w: AccessWindow) -> None:
    """Sign window `w` as one `record.accessed` event in the caller's transaction."""
    audit.record(
        db,
        KIND,
        referral_id=w.referral_id,
        counterpart=w.owner,
        labels=(
            ("categories", ",".join(sorted(w.categories))),
            ("client", w.client),
            ("reads", str(w.reads)),
            ("record", w.record),
        ),
    )
