"""Transfer requests between agents (docs/PROTOCOL.md §8.10 "`transfer-request`" and "The
steps of a transfer or a request"): the requester asks the owner of a pair it received for
the case; the owner holds the request, tells its system and may refuse it; either side's
step travels as a `transfer-step` checked against the table "Transfer request"
(agents/transfers.py). Coded fields and ids only, in messages, rows, logs and the ledger.

    requester                              owner
    POST /v1/transfer-requests  -- transfer-request -->  checks, stores `delivered`,
      stored `requested`        <-- delivery-receipt --  webhook transfer_request.received
      `delivered` (system)
    POST .../{id}/revoke        -- transfer-step ----->  `revoked`
      `revoked`                 <-- transfer-step -----  POST .../{id}/refuse
      `refused`

`granted` comes with the case transfer that answers a request (agents/case_transfers.py
calls `grant` at both sides): a `transfer-step` to `granted` is never sent on its own, so
the owner's API offers only `refuse`, and one received is `unexpected` (`SENT_STEPS`). A
request the owner's agent refuses outright (a refusal notice) stays `requested`, its copy's
`failure` shown.
"""

from __future__ import annotations

import secrets
import sqlite3
from dataclasses import dataclass
from typing import Any

import structlog

from keys import NotSharedError, Opened, UnexpectedMessageError
from runtime import clock

from . import errors as E
from . import transfers as T
from . import webhooks as W
from .audit import AuditTrail
from .desk import Sender
from .store import Store, StoredTransferRequest

log = structlog.get_logger("nrm.transfer_requests")

#: The webhook event the owner's system gets for each request it accepted.
RECEIVED_EVENT = "transfer_request.received"
#: The webhook event either party's system gets for each step the other took.
STEP_EVENT = "transfer_step.received"
#: The states a `transfer-step` of a request moves to as this release sends them: the
#: owner's `refused`, the requester's `revoked`. `granted` comes with the case transfer that
#: answers the request (slice 8), so a step to it on its own is `unexpected`: taken, it would
#: hold the request in a state nothing here moves it out of.
SENT_STEPS = frozenset({T.REFUSED, T.REVOKED})


def view(r: StoredTransferRequest, me: str) -> dict[str, Any]:
    """A request as the API and the webhook show it (PROTOCOL names, `side` this agency's
    party: `requester` or `owner`; `failure` the reason the requester's `transfer-request`
    failed for good, its state then staying `requested`, else None)."""
    return {
        "request_id": r.request_id,
        "requester": r.requester,
        "owner": r.owner,
        "referral_id": r.referral_id,
        "case_id": r.case_id,
        "reason": r.reason,
        "at": r.at,
        "side": T.REQUESTER if r.requester == me else T.OWNER,
        "state": r.state,
        "step_reason": r.step_reason,
        "failure": r.failure,
        "updated": r.updated,
    }


@dataclass
class TransferRequestDesk:
    """Both parties' side of transfer requests, for one agency."""

    agency: str
    store: Store
    audit: AuditTrail
    send: Sender

    def __post_init__(self) -> None:
        self.log = log.bind(agency=self.agency)

    # --- the requester ------------------------------------------------------------------------

    def request(
        self,
        db: sqlite3.Connection,
        *,
        owner: str,
        referral_id: str,
        case_id: str | None,
        reason: str,
    ) -> dict[str, Any]:
        """Ask `owner` for the case this agency knows under the pair (`owner`,
        `referral_id`), which `owner` sent it: 404 for a pair it did not receive from
        `owner`, 409 for one erased since (consent withdrawn: the person is no longer known
        here under it), 422 for a `case_id` it holds no decision or notice of under that
        pair.
        Stored `requested` and sealed to the owner (audit `transfer-request.sent`), in
        `db`'s transaction."""
        if owner == self.agency or not self.store.holds_received(db, owner, referral_id):
            raise E.NotFound("no referral with this id received from this owner")
        if self.store.erased_received(db, owner, referral_id):
            raise E.Conflict("the referral received under that pair was erased", reason="erased")
        if case_id is not None and not self._holds_case(owner, referral_id, case_id):
            raise E.Unprocessable(
                "case_id names no case whose decisions or notices this agency holds"
                " under that referral"
            )
        now = clock.now()
        message = T.TransferRequest(
            request_id=secrets.token_hex(16),
            case_id=case_id,
            owner=owner,
            referral_id=referral_id,
            reason=reason,
            at=now,
        )
        message_id = self.send(
            T.TRANSFER_REQUEST, message.encode(), [owner], db, referral_id=referral_id
        )
        stored = StoredTransferRequest(
            requester=self.agency,
            request_id=message.request_id,
            owner=owner,
            referral_id=referral_id,
            case_id=case_id,
            reason=reason,
            at=now,
            state=T.INITIAL[T.REQUEST][T.REQUESTER],
            step_reason=None,
            message_id=message_id,
            created=now,
            updated=now,
        )
        self.store.insert_transfer_request(db, stored)  # a fresh random id: never taken
        self.log.info("transfer_request_sent", request_id=message.request_id, owner=owner)
        return view(stored, self.agency)

    def _holds_case(self, owner: str, referral_id: str, case_id: str) -> bool:
        decisions = self.store.decisions_of_pair(owner, referral_id)
        notices = self.store.notices_of_pair(owner, referral_id)
        return any(d.case_id == case_id for d in decisions) or any(
            n.case_id == case_id for n in notices
        )

    def on_delivered(self, db: sqlite3.Connection, message_id: str, owner: str) -> None:
        """The owner's delivery receipt of a request: `requested` -> `delivered` (the
        `system` step, this side's alone)."""
        r = self.store.transfer_request_of_message(db, message_id, owner)
        if r is not None and r.requester == self.agency and r.state == T.REQUESTED:
            self._apply(db, r, T.REQUESTED, T.DELIVERED, None)

    def grant(self, db: sqlite3.Connection, r: StoredTransferRequest) -> bool:
        """The case transfer answering `r` sent (this agency the owner) or received (the
        requester): `r` is `granted` (PROTOCOL §8.10: the owner's step travels as that
        `case-transfer`, never on its own). False, nothing written, if it moved meanwhile."""
        return self._moved(db, r, r.state, T.GRANTED, None, clock.now())

    def transfer_ended(
        self, db: sqlite3.Connection, requester: str, request_id: str, then: str
    ) -> None:
        """The transfer answering the request (`requester`, `request_id`) ended: a granted
        request moves on to `then` (`fulfilled` or `lapsed`, this side's `system` step)."""
        r = self.store.transfer_request(db, requester, request_id)
        if r is not None and r.state == T.GRANTED:
            self._apply(db, r, T.GRANTED, then, None)

    def ungrant(self, db: sqlite3.Connection, requester: str, request_id: str) -> None:
        """At the owner: the `case-transfer` answering the request failed for good, so its
        grant never travelled: a `granted` request is `delivered` again, as the requester
        holds it (PROTOCOL §8.10; no step of the table, none is sent)."""
        r = self.store.transfer_request(db, requester, request_id)
        if r is not None and r.owner == self.agency and r.state == T.GRANTED:
            self._moved(db, r, T.GRANTED, T.DELIVERED, None, clock.now())

    # --- either party's step --------------------------------------------------------------------

    def step(
        self,
        db: sqlite3.Connection,
        request_id: str,
        requester: str | None,
        *,
        party: str,
        to_state: str,
        reason: str | None,
    ) -> dict[str, Any]:
        """This agency's step as `party` on a request it holds as that party (`revoke` as
        its requester, `refuse` as the owner asked): 404 for none, 409 naming `allowed` for
        a step the table refuses from its state. One `transfer-step` to the other party
        (audit `transfer-step.sent`, the reason as its reason)."""
        r = self.held(db, request_id, requester, side=party)
        now = clock.now()
        send_step(
            self.send,
            db,
            kind=T.REQUEST,
            ident=r.request_id,
            recipient=r.owner,
            state=r.state,
            to_state=to_state,
            party=party,
            reason=reason,
            to=r.owner if party == T.REQUESTER else r.requester,
            referral_id=r.referral_id,
        )
        if not self._moved(db, r, r.state, to_state, reason, now):
            raise E.Conflict("the request moved meanwhile; try again")
        self.log.info("transfer_step_sent", request_id=r.request_id, to_state=to_state)
        found = self.store.transfer_request(db, r.requester, r.request_id)
        assert found is not None
        return view(found, self.agency)

    def held(
        self,
        db: sqlite3.Connection,
        request_id: str,
        requester: str | None,
        *,
        side: str | None = None,
    ) -> StoredTransferRequest:
        """The request `request_id` held here (of `requester`, when named; one where this
        agency is the party `side`, when named): 404 for none, 409 naming the requesters
        when the id alone names several (each requester chooses its ids). As its requester
        this agency's own id names its own request alone, whatever another agency sent it
        under the same id; as the owner its own requests are not looked at."""
        if side == T.REQUESTER:
            if requester not in (None, self.agency):
                raise E.NotFound("no transfer request with this id from this requester")
            requester = self.agency
        elif side == T.OWNER and requester == self.agency:
            raise E.NotFound("this agency is not the owner asked in its own requests")
        if requester is not None:
            found = self.store.transfer_request(db, requester, request_id)
            if found is None:
                raise E.NotFound("no transfer request with this id from this requester")
            return found
        named = [
            r
            for r in self.store.transfer_requests_named(request_id)
            if side is None or r.requester != self.agency
        ]
        if not named:
            raise E.NotFound("no transfer request with this id at this agency")
        if len(named) > 1:
            raise E.Conflict(
                "transfer requests of several requesters have this id: name the requester"
                " (?requester=)",
                requesters=sorted(r.requester for r in named),
            )
        return named[0]

    def listing(self, *, after: int, limit: int) -> tuple[list[dict[str, Any]], str | None]:
        """A page of the requests held here, oldest first, and the cursor of the next (a
        decimal string; None on the last page)."""
        page = self.store.transfer_requests_page(after=after, limit=limit)
        return paged([(seq, view(r, self.agency)) for seq, r in page], limit)

    # --- receiving ------------------------------------------------------------------------------

    def on_request(
        self, db: sqlite3.Connection, opened: Opened, message: T.TransferRequest
    ) -> None:
        """A `transfer-request` received: PROTOCOL §8.10's receiver checks in order (this
        agency is the `owner` named and sent the pair to the message's sender, and neither
        withdrew it nor had the consent it cites withdrawn, else `not-shared`; a
        `request_id` held from that sender already is `unexpected`); stored
        `delivered`, audited, told to the system, and the delivery receipt sent."""
        sender = opened.header.sender
        pair = self.store.pair(db, self.agency, message.referral_id, sender)
        if message.owner != self.agency or pair is None or pair[0] != "sender":
            raise NotSharedError("the request names no pair this agency sent its sender")
        if self.store.referral_withdrawn(message.referral_id, sender):
            raise NotSharedError("the request names a pair withdrawn or its consent withdrawn")
        now = clock.now()
        stored = StoredTransferRequest(
            requester=sender,
            request_id=message.request_id,
            owner=self.agency,
            referral_id=message.referral_id,
            case_id=message.case_id,
            reason=message.reason,
            at=message.at,
            state=T.INITIAL[T.REQUEST][T.OWNER],
            step_reason=None,
            message_id=opened.header.message_id,
            created=now,
            updated=now,
        )
        if not self.store.insert_transfer_request(db, stored):
            raise UnexpectedMessageError("a transfer request this agency holds already")
        received(
            db,
            self.audit,
            opened,
            self.agency,
            kind="transfer-request.received",
            referral_id=message.referral_id,
            event=RECEIVED_EVENT,
            data=view(stored, self.agency),
        )
        self.log.info("transfer_request_received", request_id=message.request_id, sender=sender)

    def on_step(self, db: sqlite3.Connection, opened: Opened, step: T.TransferStep) -> None:
        """A `transfer-step` received: PROTOCOL §8.10's receiver checks. A step by the party
        that sent the request is about one the message's sender sent this agency, a step by
        the owner about one this agency sent the sender: holding none is `not-shared`; a
        `system` step, a step to a state this release does not send (`SENT_STEPS`), or a
        `from_state` that is not the state held, is `unexpected`. One
        lag is no conflict: the requester's copy is `requested` until the owner's receipt
        comes back, the owner's `delivered` from the start, so each side takes the other's
        `requested`/`delivered` as its own (the receipt's `system` step is only the
        requester's, PROTOCOL §8.10 "Initial states")."""
        sender = opened.header.sender
        if step.kind != T.REQUEST:
            raise TypeError("a step of a transfer is agents/case_transfers.py's")
        if step.party == T.SYSTEM:
            raise UnexpectedMessageError("a system step is each side's own, never sent")
        if step.to_state not in SENT_STEPS:
            raise UnexpectedMessageError("a step this release never sends on its own")
        if step.party == T.REQUESTER:
            r = self.store.transfer_request(db, sender, step.id)
            held = r is not None and r.owner == self.agency == step.recipient
        else:
            r = self.store.transfer_request(db, self.agency, step.id)
            held = r is not None and r.owner == sender == step.recipient
        if r is None or not held:
            raise NotSharedError("a step of a transfer request its sender does not share")
        lagging = {step.from_state, r.state} == {T.REQUESTED, T.DELIVERED}
        if step.from_state != r.state and not lagging:
            raise UnexpectedMessageError("the step starts from a state the request is not in")
        try:  # the decoder checked the step against the table; this is its party's, here
            T.check(T.REQUEST, step.from_state, step.to_state, step.party, reason=step.reason)
        except (T.TransferStepRefused, ValueError) as e:
            raise UnexpectedMessageError("the table refuses the step") from e
        self._apply(db, r, r.state, step.to_state, step.reason)
        found = self.store.transfer_request(db, r.requester, r.request_id)
        assert found is not None
        stepped(
            db,
            self.audit,
            opened,
            referral_id=r.referral_id,
            step=step,
            data={"kind": T.REQUEST, **view(found, self.agency)},
        )
        self.log.info("transfer_step_received", request_id=r.request_id, to_state=step.to_state)

    def _apply(
        self,
        db: sqlite3.Connection,
        r: StoredTransferRequest,
        from_state: str,
        to_state: str,
        reason: str | None,
    ) -> None:
        """A received step (or the receipt's) applied, or refused if the request moved."""
        if not self._moved(db, r, from_state, to_state, reason, clock.now()):
            raise UnexpectedMessageError("the request moved meanwhile")

    def _moved(
        self,
        db: sqlite3.Connection,
        r: StoredTransferRequest,
        from_state: str,
        to_state: str,
        reason: str | None,
        now: int,
    ) -> bool:
        """Move `r` from `from_state` to `to_state` in `db` at `now`; False if it is in
        `from_state` no more."""
        return self.store.step_transfer_request(
            db,
            r.requester,
            r.request_id,
            from_state=from_state,
            to_state=to_state,
            reason=reason,
            now=now,
        )


def received(
    db: sqlite3.Connection,
    audit: AuditTrail,
    opened: Opened,
    me: str,
    *,
    kind: str,
    referral_id: str,
    event: str,
    data: dict[str, Any],
) -> None:
    """A request or a transfer this agency (`me`) accepted from `opened`'s sender: audited
    as `kind` under `referral_id` and told to the system as `event` with `data`, in `db`."""
    h = opened.header
    audit.record(
        db,
        kind,
        referral_id=referral_id,
        counterpart=h.sender,
        envelope_hash=opened.envelope_hash,
        key_ids=(h.sender_kid, h.recipient_kids[h.recipients.index(me)]),
    )
    W.enqueue(db, W.WebhookEvent(id=W.new_event_id(), type=event, created=clock.now(), data=data))


def paged(
    rows: list[tuple[int, dict[str, Any]]], limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    """The items of a page of (seq, item) and the cursor of the next (a decimal string;
    None on the last page)."""
    return [item for _, item in rows], (str(rows[-1][0]) if len(rows) == limit else None)


def send_step(
    send: Sender,
    db: sqlite3.Connection,
    *,
    kind: str,
    ident: str,
    recipient: str,
    state: str,
    to_state: str,
    party: str,
    reason: str | None,
    to: str,
    referral_id: str,
) -> None:
    """This agency's step as `party` of the request or transfer `ident` (of `kind`, sent
    to `recipient`) from `state`: checked against the kind's table (409 naming `allowed`)
    and sealed to `to` as one `transfer-step` (audit `transfer-step.sent` under
    `referral_id`, the reason as its reason), in `db`. The caller moves what it holds."""
    try:
        message = T.TransferStep(
            kind=kind,
            id=ident,
            recipient=recipient,
            from_state=state,
            to_state=to_state,
            party=party,
            reason=reason,
            at=clock.now(),
        )
    except T.TransferStepRefused as e:
        raise E.TransitionNotAllowed(str(e), allowed=e.allowed) from e
    except ValueError as e:  # the API checks reasons first; a bug if it comes here
        raise E.BadRequest(str(e)) from e
    send(
        T.TRANSFER_STEP,
        message.encode(),
        [to],
        db,
        referral_id=referral_id,
        labels=labels(kind, to_state),
        reason=reason,
    )


def labels(kind: str, to_state: str) -> tuple[tuple[str, str], ...]:
    """The audit labels of a `transfer-step.*` event (PROTOCOL §9.0)."""
    return (("to_state", to_state), ("transfer_kind", kind))


def stepped(
    db: sqlite3.Connection,
    audit: AuditTrail,
    opened: Opened,
    *,
    referral_id: str,
    step: T.TransferStep,
    data: dict[str, Any],
) -> None:
    """A step of a request or a transfer applied from `opened`: audited as
    `transfer-step.received` under `referral_id` and told to the system as
    `transfer_step.received` with `data`, in `db`."""
    audit.record(
        db,
        "transfer-step.received",
        referral_id=referral_id,
        counterpart=opened.header.sender,
        envelope_hash=opened.envelope_hash,
        key_ids=(opened.header.sender_kid,),
        reason=step.reason,
        labels=labels(step.kind, step.to_state),
    )
    W.enqueue(
        db, W.WebhookEvent(id=W.new_event_id(), type=STEP_EVENT, created=clock.now(), data=data)
    )


__all__ = [
    "RECEIVED_EVENT",
    "SENT_STEPS",
    "STEP_EVENT",
    "TransferRequestDesk",
    "labels",
    "paged",
    "received",
    "send_step",
    "stepped",
    "view",
]
