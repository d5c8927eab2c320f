"""Resend requests: after its database was restored from a backup, an agent asks every other
agency to send again what it sent since (docs/PROTOCOL.md §6.3).

Recipient side (`tick`): once after `nrm agent restore`, when the directory is trusted, one
`resend-request` to each agency of the directory, naming the newest time it still holds
mail from that agency (less an overlap) and the message ids it holds from then on.

Sender side (`on_request`): each envelope in its outbox addressed to the requester, created
at or after `since` and not in `have`, is queued again for publishing (under a fresh
`Nats-Msg-Id`, so the stream's de-duplication window does not drop it) unless it cannot be
opened any more or must not travel: expired, sealed to a recipient key no longer usable, its
referral withdrawn or its consent withdrawn. What is skipped is counted by reason in the log
and the sender's audit trail; nothing is ever re-sealed (the sender keeps only the sealed
envelopes). The recipient de-duplicates by message id as for any message.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import structlog

from keys import (
    Limits,
    MalformedError,
    UnexpectedMessageError,
    UnknownKeyError,
    UntrustedInputError,
    codec,
)
from keys.directory import Directory
from keys.envelope import Opened, verify_outer
from runtime import clock

from .audit import AuditTrail
from .desk import Sender
from .store import ResendCandidate, Store

log = structlog.get_logger("nrm.resend")

RESEND_REQUEST = "resend-request"
#: Most message ids a request names as already held (PROTOCOL.md §6.3).
MAX_HAVE = 512
#: Largest request body, checked before decoding.
MAX_REQUEST_BYTES = 32 + MAX_HAVE * 34


@dataclass(frozen=True, slots=True)
class ResendRequest(codec.Encoded):
    """ "Send me again what you sent me at or after `since`, except `have`" (§6.3)."""

    #: `[1, since, [message ids]]`; `since` and the ids are checked by the constructor.
    WIRE: ClassVar[codec.Record] = codec.Record(
        "resend request", 1, ("since", "have"), (object, list)
    )

    since: int
    have: tuple[str, ...]

    def __post_init__(self) -> None:
        if not (isinstance(self.since, int) and not isinstance(self.since, bool)):
            raise ValueError("since must be Unix seconds")
        if not 0 <= self.since < 1 << 63:
            raise ValueError("since must be Unix seconds")
        if len(self.have) > MAX_HAVE:
            raise ValueError(f"at most {MAX_HAVE} held message ids")
        if not all(isinstance(m, str) and codec.HEX32.fullmatch(m) for m in self.have):
            raise ValueError("held message ids are 32 lowercase hex digits")
        if list(self.have) != sorted(set(self.have)):
            raise ValueError("held message ids are distinct and sorted")

    @classmethod
    def decode(cls, body: bytes) -> ResendRequest:
        fields = cls.WIRE.unpack(body, max_bytes=MAX_REQUEST_BYTES, max_items=MAX_HAVE)
        try:
            return cls(since=fields["since"], have=tuple(fields["have"]))
        except (ValueError, TypeError) as e:
            raise MalformedError(f"resend request: {e}") from e


class Resender:
    """Both sides of resend requests for one agency. `tick` and `on_request` are the hooks
    the agent calls (its timer, and its handler table for kind `resend-request`)."""

    def __init__(
        self,
        *,
        agency: str,
        store: Store,
        audit: AuditTrail,
        send: Sender,
        directory: Callable[[], Directory | None],
        limits: Limits,
    ) -> None:
        self.agency = agency
        self.store = store
        self.audit = audit
        self._send = send
        self._directory = directory
        self.limits = limits
        self.log = log.bind(agency=agency)

    # --- the restored agent asks -----------------------------------------------------------

    def tick(self) -> None:
        """Send the resend requests a restore left pending, once the directory is trusted."""
        restore = self.store.pending_resend_requests()
        directory = self._directory()
        if restore is None or directory is None:
            return
        # Auditors send no mail; every other agency may have sent some.
        others = [
            a.agency
            for a in directory.agencies
            if a.agency != self.agency and set(a.roles) != {"auditor"}
        ]
        asked = 0
        with self.store.transaction() as tx:
            for sender in others:
                since, have = self.store.resend_basis(
                    sender, overlap=self.limits.resend_overlap_seconds, max_have=MAX_HAVE
                )
                request = ResendRequest(since=since, have=tuple(have))
                try:
                    self._send(RESEND_REQUEST, request.encode(), [sender], tx)
                except UnknownKeyError:  # no key to seal to (all revoked): it cannot answer
                    self.log.warning("resend_request_unsendable", sender=sender)
                    continue
                asked += 1
            self.store.mark_resend_requests_sent(tx, restore)
        self.log.warning("resend_requested", restore=restore, agencies=asked)

    # --- a sender honours ------------------------------------------------------------------

    def on_request(self, db: sqlite3.Connection, opened: Opened) -> None:
        """Queue again what the requester lost (in the caller's transaction)."""
        request = ResendRequest.decode(opened.body)
        requester = opened.header.sender
        now = clock.now()
        last = self.store.last_resend_honoured(requester)
        if last is not None and now - last < self.limits.resend_min_interval_seconds:
            self.log.warning("resend_request_ignored", requester=requester, reason="too-soon")
            return
        directory = self._directory()
        if directory is None or requester not in directory:
            raise UnexpectedMessageError("resend request from an agency not in the directory")
        usable = _usable_kids(directory, requester, now, self.limits)
        have = set(request.have)
        again: list[str] = []
        skipped: Counter[str] = Counter()
        candidates = self.store.resend_candidates(
            requester, since=request.since, limit=self.limits.resend_max_messages + 1
        )
        for c in candidates:
            if c.message_id in have:
                continue
            reason = self._why_not(c, requester, directory, usable, now)
            if reason is None and len(again) >= self.limits.resend_max_messages:
                reason = "too-many"
            if reason is None:
                again.append(c.message_id)
            else:
                skipped[reason] += 1
        self.store.requeue_for_resend(db, requester, again, request_id=opened.header.message_id)
        self.audit.record(db, "resend.honoured", counterpart=requester)
        self.log.warning(
            "resend_honoured", requester=requester, resent=len(again), skipped=dict(skipped)
        )

    def _why_not(
        self,
        c: ResendCandidate,
        requester: str,
        directory: Directory,
        usable: set[str],
        now: int,
    ) -> str | None:
        """Why an envelope cannot or must not go again; None if it can."""
        if c.created + self.limits.message_ttl_seconds <= now:
            return "expired"
        if c.referral_id is not None and self.store.referral_withdrawn(c.referral_id, requester):
            return "withdrawn"
        try:
            header = verify_outer(c.envelope, signers=directory, limits=self.limits)
        except UntrustedInputError:
            return "unverifiable"  # e.g. signed by a key of ours revoked since
        if header.expires <= now:
            return "expired"
        slot = header.recipients.index(requester) if requester in header.recipients else -1
        if slot < 0 or header.recipient_kids[slot] not in usable:
            return "key-retired"  # sealed to a key the requester may no longer open
        return None


def _usable_kids(directory: Directory, agency: str, now: int, limits: Limits) -> set[str]:
    """The requester's encryption keys worth resending mail sealed to: neither past their
    window nor revoked. Stricter than what its agent opens (a revoked key within its window,
    PROTOCOL.md §4.7 step 6): mail sealed to a key that may be in other hands is not handed
    out again (§6.3)."""
    return {
        k.kid
        for k in directory.agency(agency).encryption_keys
        if k.status != "revoked"
        and (k.valid_until is None or now <= k.valid_until + limits.clock_skew_seconds)
    }


__all__: Sequence[str] = ["RESEND_REQUEST", "ResendRequest", "Resender"]
