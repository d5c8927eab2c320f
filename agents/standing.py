"""What the agent does when the directory says it can no longer take part (PROTOCOL.md §7.10).

On every directory it accepts, and on every timer tick, the agent computes its standing
(keys.standing): `ok`, `removed`, `key-revoked`, `key-unlisted` or `key-retired`. While not ok
it refuses new submissions (503 problem+json naming the reason), stops consuming its inbox
(what is sent to it waits on the bus until it has a working key again) and, unless the only
trouble is that its own new keys are not published yet (`key-unlisted`: what it queued was
signed with keys the directory still lists), marks every queued copy in its outbox `failed`.
Independently of its standing, a copy signed by a key the directory revoked before the copy
could reach the bus can never be accepted by anyone — not even after the agency gets new keys,
since its signature cannot change — so it is marked `failed` too, with reason `key-revoked`:
the agency system learns it must submit again, instead of waiting for ever.

Right before each publish the transport asks `hold_reason` of each copy: one the directory
refuses by that same rule (its key revoked by now, or no longer listed) is held back, not
published — its recipient would refuse it without telling the sender — and failed as above by
the next evaluation (typically the one the directory's arrival is about to make: the agent may
still be loading its rotated key file).

Each failed copy: a `delivery.failed` audit event, one `delivery.failed` webhook event per
message, `nrm_outbox_failed_total{reason}`; GET /v1/referrals/{id} shows it per recipient.
Once the agency is back in the directory with a usable key, the agent recovers by itself.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from keys import AgencyKeys, Limits, MalformedError
from keys.directory import Directory
from keys.envelope import read_header
from keys.standing import KEEPS_QUEUE, Standing, next_revocation, revoked_since, standing_of
from runtime import clock

from . import webhooks as W
from .audit import AuditTrail
from .store import Store, Undelivered

log = structlog.get_logger("nrm.standing")

#: Before the first trusted directory nothing is known; the agent is not refused for that.
UNKNOWN = Standing("ok", "")


@dataclass
class StandingGuard:
    agency: str
    store: Store
    audit: AuditTrail
    limits: Limits
    #: Called with (reason, count) when copies are marked failed (for the metric).
    on_failed: Callable[[str, int], None] = lambda reason, count: None
    #: Called in the transaction with each copy marked failed (what it was about may end).
    on_copy_failed: Callable[[sqlite3.Connection, Undelivered], None] = lambda tx, copy: None
    standing: Standing = UNKNOWN
    since: int = field(default_factory=clock.now)
    _entry_seen: Any = None
    _recheck_at: int | None = None

    def __post_init__(self) -> None:
        self.log = log.bind(agency=self.agency)

    def evaluate(self, directory: Directory | None, keys: AgencyKeys) -> bool:
        """Look at the agency's standing in `directory` now; act on a change. True if any
        copy was marked failed (the caller wakes the webhook sender)."""
        if directory is None:
            return False
        now = clock.now()
        standing = standing_of(
            directory,
            self.agency,
            signing_kids={keys.public.signing_kid},
            encryption_kids=set(keys.decryption_keys),
            at=now,
            skew=self.limits.clock_skew_seconds,
        )
        entry = directory.agency(self.agency) if self.agency in directory else None
        changed = standing.state != self.standing.state
        rescan = (
            changed
            or entry != self._entry_seen
            or (self._recheck_at is not None and now >= self._recheck_at)
        )
        self._entry_seen = entry
        self._recheck_at = next_revocation(directory, self.agency, after=now)
        if changed:
            self._record_change(standing, now)
        self.standing = standing  # the same state may come with a newer detail
        doomed: dict[tuple[str, str], tuple[Undelivered, str]] = {}
        if rescan:
            doomed = {(c.message_id, c.recipient): (c, r) for c, r in self._doomed(directory, now)}
        if not standing.ok and standing.state not in KEEPS_QUEUE:
            # nothing queued can go out: the standing is the reason
            for c in self.store.undelivered(states=("queued",)):
                doomed[(c.message_id, c.recipient)] = (c, standing.state)
        return self._fail(list(doomed.values())) > 0

    def _record_change(self, standing: Standing, now: int) -> None:
        previous, self.standing, self.since = self.standing, standing, now
        if standing.ok:
            self.log.info("standing_changed", state=standing.state, previous=previous.state)
        else:
            self.log.error("standing_changed", state=standing.state, previous=previous.state)
        self.audit.record_alone("standing.changed", reason=standing.state)

    def hold_reason(self, directory: Directory | None, envelope: bytes, *, now: int) -> str | None:
        """Why the queued copy `envelope` must not be published at `now`, or None: the
        directory refuses the key that signed it — `signing-key-revoked` (revoked by now) or
        `signing-key-unlisted` (neither the key nor perhaps the agency listed any more).
        The next `evaluate` fails such a copy (`_doomed`, the same rule); this makes sure it
        looks."""
        if directory is None:
            return None  # nothing to judge by: as before the first directory
        try:
            kid = read_header(envelope, limits=self.limits).sender_kid
        except MalformedError:
            return None  # our own envelope; cannot happen
        cut = revoked_since(directory, self.agency, kid)
        if cut is None or now < cut:
            return None
        self._recheck_at = now
        return "signing-key-unlisted" if cut == 0 else "signing-key-revoked"

    def _doomed(self, directory: Directory, now: int) -> list[tuple[Undelivered, str]]:
        """Copies signed by a key that the directory refuses at the time they reach (or
        reached) the bus: revoked before then, or no longer listed (only for queued ones:
        a copy already on the bus may have been taken before the key was dropped)."""
        doomed = []
        for copy in self.store.undelivered():
            try:
                kid = read_header(copy.envelope, limits=self.limits).sender_kid
            except MalformedError:
                continue  # our own envelope; cannot happen
            cut = revoked_since(directory, self.agency, kid)
            if cut is None:
                continue
            stored = now if copy.state == "queued" else copy.sent_at
            listed = cut != 0
            if stored is not None and stored >= cut and (listed or copy.state == "queued"):
                doomed.append((copy, "key-revoked"))
        return doomed

    def _fail(self, doomed: list[tuple[Undelivered, str]]) -> int:
        if not doomed:
            return 0
        now = clock.now()
        by_message: dict[str, list[tuple[Undelivered, str]]] = {}
        for copy, reason in doomed:
            by_message.setdefault(copy.message_id, []).append((copy, reason))
        counts: dict[str, int] = {}
        with self.store.transaction() as tx:
            for message_id, copies in by_message.items():
                self._fail_message(tx, message_id, copies, now, counts)
        for reason, count in counts.items():
            self.on_failed(reason, count)
            self.log.error("outbox_failed", reason=reason, copies=count)
        return sum(counts.values())

    def _fail_message(
        self,
        tx: sqlite3.Connection,
        message_id: str,
        copies: list[tuple[Undelivered, str]],
        now: int,
        counts: dict[str, int],
    ) -> None:
        failed = []
        for copy, reason in copies:
            if self.store.fail_deliveries(tx, [(message_id, copy.recipient, reason)]):
                failed.append((copy, reason))
                counts[reason] = counts.get(reason, 0) + 1
                self.on_copy_failed(tx, copy)
                self.audit.record(
                    tx,
                    "delivery.failed",
                    referral_id=copy.referral_id,
                    counterpart=copy.recipient,
                    reason=reason,
                )
        if not failed:
            return
        first = failed[0][0]
        W.enqueue(
            tx,
            W.WebhookEvent(
                id=W.new_event_id(),
                type="delivery.failed",
                created=now,
                data={
                    "message_id": message_id,
                    "kind": first.kind,
                    "referral_id": first.referral_id,
                    "recipients": sorted(c.recipient for c, _ in failed),
                    "reason": failed[0][1],
                },
            ),
        )

    def refusal(self) -> tuple[str, str] | None:
        """(reason, detail) while the agent must refuse new submissions, else None."""
        if self.standing.ok:
            return None
        return self.standing.state, self.standing.detail

    def health(self) -> dict[str, Any]:
        return {"state": self.standing.state, "detail": self.standing.detail, "since": self.since}
