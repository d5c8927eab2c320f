"""Case transfers between agents (docs/PROTOCOL.md §8.10 "`case-transfer`"): the owner of a
case hands it to a transferee with R, a schema-v2 referral minimised for the transferee
exactly as a referral is (the referral desk's checks: consent or legal basis, categories,
child route, service); the transferee judges R by every `referral` row of §6.4 (the same
`inbound.check` a referral meets) and §8.10's receiver checks, and keeps R as its own
record. A transfer request it answers is `granted` at both sides.

    owner                                   transferee
    POST /v1/transfers   -- case-transfer ---->  checks, stores `delivered` and R,
      stored `proposed`  <-- delivery-receipt --  webhook transfer.received
      `delivered` (system)

    POST .../{id}/accept|reject  <-- transfer-step --  (the transferee's steps)
    POST .../{id}/revoke|complete -- transfer-step -->  (the owner's steps)

Each step is a `transfer-step` of kind `transfer`, checked by its receiver against the
table "Case transfer" and the state it holds; the two sides' `proposed` and `delivered` are
taken as one until the receipt arrives, as a request's `requested` and `delivered`. A
transfer's end moves the request it answered on (`REQUEST_AFTER_TRANSFER`: `fulfilled` or
`lapsed`, each side's own `system` step). For a transfer naming a case, the owner tells
the case's competent authority when the transferee accepts (`case-owner-changed`, which
the authority takes only from the case's current owner) and completes only once the
authority's delivery receipt came. Completing first cancels the owner's open pairs of the
case (`referred-elsewhere`). Each side expires a transfer left
`proposed` or `delivered` on its own timer (`tick`), from the envelope's `created` by the
policy's `due_seconds` of R's urgency. R sent under a consent is recorded as a use of it,
so that the person's withdrawal reaches the transferee (agents/desk.py `on_withdrawal`).
Ids and codes only in rows (but R, sealed), logs and the ledger.
"""

from __future__ import annotations

import secrets
import sqlite3
from dataclasses import dataclass
from typing import Any

import structlog

from keys import (
    MalformedError,
    NotSharedError,
    Opened,
    ReusedReferralIdError,
    UnexpectedMessageError,
    UntrustedInputError,
)
from keys.codec import canonical_json
from keys.policy import Policy
from runtime import clock

from . import clocks
from . import errors as E
from . import lifecycle as L
from . import referral as R
from . import transfers as T
from .attachments import encode_key
from .audit import AuditTrail
from .desk import Desk, Sender
from .inbound import CheckedTransfer
from .store import Store, StoredTransfer, StoredTransferRequest
from .transfer_requests import TransferRequestDesk, paged, received, send_step, stepped

log = structlog.get_logger("nrm.case_transfers")

#: The webhook event the transferee's system gets for each transfer it accepted.
RECEIVED_EVENT = "transfer.received"
#: The request states in which a transfer answering it is taken (PROTOCOL §8.10: the
#: receipt of the request may come after the transfer); `granted` only while no other
#: transfer from its owner answers it (one request, one transfer).
ANSWERABLE = frozenset({T.REQUESTED, T.DELIVERED, T.GRANTED})


def view(t: StoredTransfer, me: str) -> dict[str, Any]:
    """A transfer as the API and the webhook show it (PROTOCOL names; `side` this agency's
    party, `owner` or `transferee`; `failure` the reason the owner's `case-transfer` failed
    for good, its state then `expired` (`TransferDesk.on_failed`), else None;
    `authority_failure` the reason its `case-owner-changed` could not be sealed or failed
    for good, else None)."""
    return {
        "transfer_id": t.transfer_id,
        "owner": t.owner,
        "transferee": t.transferee,
        "referral_id": t.referral_id,
        "case_id": t.case_id,
        "reason": t.reason,
        "request_id": t.request_id,
        "urgency": t.urgency,
        "side": T.OWNER if t.owner == me else T.TRANSFEREE,
        "state": t.state,
        "step_reason": t.step_reason,
        "failure": t.failure,
        "authority_failure": t.authority_failure,
        "updated": t.updated,
    }


@dataclass
class TransferDesk:
    """Both parties' side of case transfers, for one agency."""

    agency: str
    store: Store
    audit: AuditTrail
    send: Sender
    desk: Desk
    requests: TransferRequestDesk
    max_body_bytes: int

    def __post_init__(self) -> None:
        self.log = log.bind(agency=self.agency)

    # --- the owner --------------------------------------------------------------------------

    def propose(
        self,
        *,
        transferee: str,
        document: dict[str, Any],
        reason: str,
        case_id: str | None,
        request_id: str | None,
    ) -> dict[str, Any]:
        """Hand the case to `transferee` with R (`document`, a schema-v2 referral): planned
        by the referral desk for that one recipient, so refused (422, nothing sent) as a
        referral to it would be; 422 as well for a v1 document, a break-glass one, itself
        as transferee or a `case_id` this agency holds no decision or notice of; 404 for a
        `request_id` naming no request of `transferee` to this agency, 409 for one not
        `delivered`; 409 naming `authorities` for a `case_id` held of several authorities'
        cases. Stored `proposed` with the case's authority, sealed as one `case-transfer` (audit
        `transfer.sent`); the request it answers moves to `granted`, in one transaction."""
        if transferee == self.agency or transferee not in self.desk.directory():
            raise E.Unprocessable(
                "the transferee must be another agency of the trusted directory",
                member="transferee",
            )
        if len(canonical_json(document)) > self.max_body_bytes:
            raise E.TooLarge(f"the referral is over {self.max_body_bytes} bytes")
        referral, plan = self.desk.prepare(recipients=[transferee], document=document)
        if referral.schema_version != "2":
            raise E.Unprocessable(
                "R of a case transfer is a referral of schema version 2", member="schema_version"
            )
        if referral.break_glass_reason is not None:
            raise E.Unprocessable("a case transfer is never a break-glass referral")
        body = plan.bodies[transferee]
        now = clock.now()
        referral_id = secrets.token_hex(16)  # fresh: never one of this agency's pairs' ids
        transfer_id = secrets.token_hex(16)
        with self.store.transaction() as db:
            authority = None if case_id is None else self._authority_of(db, case_id)
            answered = self._answered(db, transferee, request_id)
            key = None
            if "attachments" in body:
                key = self.desk.attachments.queue_upload(
                    db, referral_id, list(referral.body.get("attachments", []))
                )
            message = T.CaseTransfer(
                transfer_id=transfer_id,
                case_id=case_id,
                reason=reason,
                request_id=request_id,
                referral={**referral.routing(), "referral_id": referral_id, "body": body},
                attachment_key=None if key is None else encode_key(key),
            )
            message_id = self.send(
                T.CASE_TRANSFER, message.encode(), [transferee], db, referral_id=referral_id
            )
            stored = StoredTransfer(
                owner=self.agency,
                transfer_id=transfer_id,
                transferee=transferee,
                referral_id=referral_id,
                case_id=case_id,
                authority=authority,
                reason=reason,
                request_id=request_id,
                urgency=referral.urgency,
                state=T.INITIAL[T.TRANSFER][T.OWNER],
                step_reason=None,
                message_id=message_id,
                sent_at=self.store.envelope_created(db, message_id),
                created=now,
                updated=now,
            )
            self.store.insert_transfer(db, stored, None)  # a fresh random id: never taken
            self.store.record_sent_r(
                db,
                transfer_id,
                owner=self.agency,
                categories=frozenset(R.categories_present(body)),
                referral_type=referral.referral_type,
                legal_basis=referral.legal_basis,
                consent_receipt_id=referral.consent_receipt_id,
            )
            if plan.receipt is not None:  # R goes under the person's consent: so may erasure
                self.store.record_consent_use(db, plan.receipt.receipt_id, transferee, referral_id)
            if answered is not None and not self.requests.grant(db, answered):
                raise E.Conflict("the transfer request moved meanwhile; try again")
        self.log.info("transfer_sent", transfer_id=transfer_id, transferee=transferee)
        return view(stored, self.agency)

    def _authority_of(self, db: sqlite3.Connection, case_id: str) -> str:
        """The competent authority of the case `case_id` this agency owns (PROTOCOL §8.10
        "Who owns the case": as built, it holds the case's decisions or notices under a pair
        of its own, the opening referral's, and completed no transfer of it since): 422 for
        none; 409 naming them when several authorities' cases have that id (a case is named
        by (authority, case_id); a hostile authority may reuse another's id, and the
        transfer must not tell it of another authority's case), 409 while another transfer
        of the case is open. Only the owner is heard by the authority: another's transfer
        could never complete."""
        authorities = self.store.case_authorities(db, case_id)
        if not authorities:
            raise E.Unprocessable(
                "case_id names no case whose decisions or notices this agency holds",
                member="case_id",
            )
        if len(authorities) > 1:
            raise E.Conflict(
                "cases of several authorities have this case_id", authorities=authorities
            )
        [authority] = authorities
        held = self.store.case_transfer_held(db, authority, case_id)
        if held == T.COMPLETED:
            raise E.Unprocessable(
                "this agency owns the case no more: it completed a transfer of it",
                member="case_id",
            )
        if held is not None:
            raise E.Conflict("a transfer of this case is under way", state=held)
        return authority

    def _answered(
        self, db: sqlite3.Connection, transferee: str, request_id: str | None
    ) -> StoredTransferRequest | None:
        """The request of `transferee` to this agency the transfer answers (404 for none,
        409 for one this agency may not grant from its state), or None."""
        if request_id is None:
            return None
        r = self.store.transfer_request(db, transferee, request_id)
        if r is None or r.owner != self.agency:
            raise E.NotFound("no transfer request with this id from this transferee")
        try:
            T.check(T.REQUEST, r.state, T.GRANTED, T.OWNER, reason=None)
        except T.TransferStepRefused as e:
            raise E.TransitionNotAllowed(str(e), allowed=e.allowed) from e
        return r

    def on_delivered(self, db: sqlite3.Connection, message_id: str, transferee: str) -> None:
        """The transferee's delivery receipt: `proposed` -> `delivered` (the owner's
        `system` step)."""
        t = self.store.transfer_of_message(db, message_id, transferee)
        if t is None or t.owner != self.agency or t.state != T.PROPOSED:
            return
        if not self._moved(db, t, T.PROPOSED, T.DELIVERED, None):
            raise UnexpectedMessageError("the transfer moved meanwhile")

    def on_failed(self, db: sqlite3.Connection, message_id: str, transferee: str) -> None:
        """The `case-transfer` copy to `transferee` failed for good (its agent refused it,
        or it could not be delivered) while `proposed`: the owner's `system` step to
        `expired` (the only final state the table gives that party from there), and the
        grant of the request it answered undone, `granted` -> `delivered` (PROTOCOL §8.10:
        the grant travels as the transfer, which never arrived; the requester holds the
        request `requested` or `delivered` still), so that it may be answered again."""
        t = self.store.transfer_of_message(db, message_id, transferee)
        if t is None or t.owner != self.agency or t.state != T.PROPOSED:
            return
        if not self.store.step_transfer(
            db,
            t.owner,
            t.transfer_id,
            from_state=T.PROPOSED,
            to_state=T.EXPIRED,
            reason=None,
            now=clock.now(),
        ):
            return
        if t.request_id is not None:
            self.requests.ungrant(db, t.transferee, t.request_id)
        self.log.warning("transfer_failed", transfer_id=t.transfer_id)

    # --- either party's step ------------------------------------------------------------------

    def step(
        self,
        db: sqlite3.Connection,
        transfer_id: str,
        owner: str | None,
        *,
        party: str,
        to_state: str,
        reason: str | None,
    ) -> dict[str, Any]:
        """This agency's step as `party` on a transfer it holds as that party (`revoke` and
        `complete` as its owner, `accept` and `reject` as its transferee): 404 for none, 409
        naming `allowed` for a step the table refuses from its state, 409 for `complete` of a
        transfer naming a case before the authority's receipt of its `case-owner-changed`
        (taken once that copy failed for good: the authority keeps the old owner, PROTOCOL
        §8.10 "Order at the authority"). One `transfer-step` to the
        other party (audit `transfer-step.sent`, the reason as its reason)."""
        t = self.held(db, transfer_id, owner, side=party)
        if t.state in T.EXPIRABLE and self._past_due(t, clock.now(), self._policy()):
            raise E.TransitionNotAllowed("the transfer's due time passed: it expires", allowed=[])
        if (
            to_state == T.COMPLETED
            and t.state == T.ACCEPTED
            and t.case_id is not None
            and t.authority_failure is None
            and not self.store.authority_told(db, t.owner, t.transfer_id)
        ):
            raise E.Conflict(
                "a transfer naming a case completes once the authority's receipt of the"
                " case-owner-changed has come; try again later"
            )
        if to_state == T.COMPLETED and t.state == T.ACCEPTED:
            try:
                self._cancel_pairs(db, t)
            except UntrustedInputError as e:  # a counterpart with no usable key: nothing sent
                raise E.Unavailable(
                    "a pair of the case cannot be cancelled now: its counterpart has no usable"
                    " key; try again later",
                    reason=e.reason,
                ) from e
        send_step(
            self.send,
            db,
            kind=T.TRANSFER,
            ident=t.transfer_id,
            recipient=t.transferee,
            state=t.state,
            to_state=to_state,
            party=party,
            reason=reason,
            to=t.transferee if party == T.OWNER else t.owner,
            referral_id=t.referral_id,
        )
        if not self._moved(db, t, t.state, to_state, reason):
            raise E.Conflict("the transfer moved meanwhile; try again")
        self.log.info("transfer_step_sent", transfer_id=t.transfer_id, to_state=to_state)
        found = self.store.transfer(db, t.owner, t.transfer_id)
        assert found is not None
        return view(found, self.agency)

    def on_step(self, db: sqlite3.Connection, opened: Opened, step: T.TransferStep) -> None:
        """A `transfer-step` of kind `transfer` received: PROTOCOL §8.10's receiver checks.
        A step by the owner is about a transfer the message's sender sent this agency, a
        step by the transferee about one this agency sent the sender, naming it as
        `recipient` either way: holding none is `not-shared`; a `system` step, or a
        `from_state` that is not the state held (but for the `proposed`/`delivered` lag
        before the receipt), is `unexpected`."""
        sender = opened.header.sender
        if step.party == T.SYSTEM:
            raise UnexpectedMessageError("a system step is each side's own, never sent")
        if step.party == T.OWNER:
            t = self.store.transfer(db, sender, step.id)
            held = t is not None and t.transferee == self.agency == step.recipient
        else:
            t = self.store.transfer(db, self.agency, step.id)
            held = t is not None and t.transferee == sender == step.recipient
        if t is None or not held:
            raise NotSharedError("a step of a transfer its sender does not share")
        made = max(step.at, opened.header.created)
        if t.state in T.EXPIRABLE and self._past_due(t, made, self._policy()):
            raise UnexpectedMessageError("a step made past the transfer's due time")
        lagging = {step.from_state, t.state} == {T.PROPOSED, T.DELIVERED}
        if step.from_state != t.state and not lagging:
            raise UnexpectedMessageError("the step starts from a state the transfer is not in")
        if not self._moved(db, t, t.state, step.to_state, step.reason):
            raise UnexpectedMessageError("the transfer moved meanwhile")
        if step.to_state == T.ACCEPTED and t.owner == self.agency and t.case_id is not None:
            # `at` as this agency recorded the acceptance (PROTOCOL §8.10), not as claimed
            self._tell_authority(db, t, t.case_id, clock.now())
        found = self.store.transfer(db, t.owner, t.transfer_id)
        assert found is not None
        stepped(
            db,
            self.audit,
            opened,
            referral_id=t.referral_id,
            step=step,
            data={"kind": T.TRANSFER, **view(found, self.agency)},
        )
        self.log.info("transfer_step_received", transfer_id=t.transfer_id, to_state=step.to_state)

    def _cancel_pairs(self, db: sqlite3.Connection, t: StoredTransfer) -> None:
        """Before `completed`, end this agency's open pairs of the case (PROTOCOL §8.10:
        `cancelled`, reason `referred-elsewhere`, one `transition` each): as built, the
        pair the answered request was asked under, and the pairs under which this agency
        holds the case's decisions or notices."""
        referral_ids = set()
        if t.case_id is not None and t.authority is not None:
            referral_ids.update(self.store.case_pairs(db, t.authority, t.case_id))
        if t.request_id is not None:
            r = self.store.transfer_request(db, t.transferee, t.request_id)
            if r is not None and r.owner == self.agency:
                referral_ids.add(r.referral_id)
        for referral_id in sorted(referral_ids):
            for counterpart, side, state in self.store.pairs(self.agency, referral_id):
                if side != "sender" or state in L.FINAL_STATES:
                    continue
                self.desk.transition(
                    referral_id,
                    sender=self.agency,
                    to=L.CANCELLED,
                    counterpart=counterpart,
                    reason="referred-elsewhere",
                    outcome=None,
                )

    def _tell_authority(
        self, db: sqlite3.Connection, t: StoredTransfer, case_id: str, at: int
    ) -> None:
        """The transferee accepted a transfer naming a case: one `case-owner-changed` to
        the case's competent authority (PROTOCOL §8.10 "Order at the authority"), whose
        delivery receipt lets the owner complete the transfer. One that cannot be sealed (no
        usable key of the authority's) is recorded as the transfer's `authority_failure`,
        the step taken all the same: the authority's keys are not the transferee's doing."""
        if t.authority is None:
            raise RuntimeError("a transfer naming a case is stored with its authority")
        body = T.CaseOwnerChanged(case_id, t.transferee, t.transfer_id, at).encode()
        try:
            message_id = self.send(
                T.CASE_OWNER_CHANGED, body, [t.authority], db, referral_id=t.referral_id
            )
        except UntrustedInputError as e:  # the authority's keys: not the step's fault
            self.store.set_told_failure(db, t.owner, t.transfer_id, e.reason)
            self.log.warning(
                "authority_untold", transfer_id=t.transfer_id, authority=t.authority, why=e.reason
            )
            return
        self.store.set_told(db, t.owner, t.transfer_id, message_id)

    def on_owner_changed(
        self, db: sqlite3.Connection, opened: Opened, changed: T.CaseOwnerChanged
    ) -> None:
        """A `case-owner-changed` at this competent authority (the role checked by the
        decoder): PROTOCOL §8.10's receiver checks (`case_id` a case of this agency, else
        `unexpected`; its current owner the message's sender, else `not-shared`;
        `new_owner` another agency, else `malformed`); the case's owner is `new_owner`
        from now on."""
        sender = opened.header.sender
        current = self.store.case_owner(db, changed.case_id)
        if current is None:
            raise UnexpectedMessageError("case-owner-changed names no case of this agency")
        if current != sender:
            raise NotSharedError("case-owner-changed from an agency that does not own the case")
        if changed.new_owner == sender:
            raise MalformedError("case-owner-changed naming its sender as the new owner")
        self.store.change_case_owner(
            db,
            changed.case_id,
            owner=changed.new_owner,
            transfer_id=changed.transfer_id,
            changed_by=sender,
            at=changed.at,
            now=clock.now(),
        )
        self.log.info("case_owner_changed", case_id=changed.case_id, owner=changed.new_owner)

    def _moved(
        self,
        db: sqlite3.Connection,
        t: StoredTransfer,
        from_state: str,
        to_state: str,
        reason: str | None,
    ) -> bool:
        """Move `t` from `from_state` to `to_state`, and at its end the request it answered
        on (its `system` step: `fulfilled` or `lapsed`); False if `t` moved meanwhile."""
        if not self.store.step_transfer(
            db,
            t.owner,
            t.transfer_id,
            from_state=from_state,
            to_state=to_state,
            reason=reason,
            now=clock.now(),
        ):
            return False
        then = T.REQUEST_AFTER_TRANSFER.get(to_state)
        if then is not None and t.request_id is not None:
            self.requests.transfer_ended(db, t.transferee, t.request_id, then)
        return True

    def tick(self, policy: Policy | None, now: int | None = None) -> int:
        """Expire every transfer held `proposed` or `delivered` whose due time passed: the
        envelope's `created` plus the policy's `due_seconds` of R's urgency (PROTOCOL §8.10
        "Expiry"), each side's own `system` step, the request it answered `lapsed`; none
        without a policy. How many, each in its own transaction."""
        now = clock.now() if now is None else now
        expired = 0
        for t in self.store.open_transfers():
            if not self._past_due(t, now, policy):
                continue
            with self.store.transaction() as db:
                if self._moved(db, t, t.state, T.EXPIRED, None):
                    expired += 1
                    self.log.info("transfer_expired", transfer_id=t.transfer_id)
        return expired

    def _policy(self) -> Policy | None:
        """The trusted directory's national policy (None: transfers do not expire)."""
        return self.desk.directory().policy

    @staticmethod
    def _past_due(t: StoredTransfer, at: int, policy: Policy | None) -> bool:
        """Whether `at` is past `t`'s due time (PROTOCOL §8.10 "Expiry") under the national
        `policy`; never without one."""
        seconds = clocks.limits(clocks.RESPOND, policy=policy).get(t.urgency)
        return seconds is not None and at >= t.sent_at + seconds

    # --- reading ------------------------------------------------------------------------------

    def held(
        self,
        db: sqlite3.Connection,
        transfer_id: str,
        owner: str | None,
        *,
        side: str | None = None,
    ) -> StoredTransfer:
        """The transfer `transfer_id` held here (of `owner`, when named; one where this
        agency is the party `side`, when named): 404 for none, 409 naming the owners when
        the id alone names several (each owner chooses its ids). As its owner this agency's
        own id names its own transfer alone; as the transferee its own are not looked at."""
        if side == T.OWNER:
            if owner not in (None, self.agency):
                raise E.NotFound("no transfer with this id from this owner")
            owner = self.agency
        elif side == T.TRANSFEREE and owner == self.agency:
            raise E.NotFound("this agency is not the transferee of its own transfers")
        if owner is not None:
            found = self.store.transfer(db, owner, transfer_id)
            if found is None:
                raise E.NotFound("no transfer with this id from this owner")
            return found
        named = [
            t
            for t in self.store.transfers_named(transfer_id)
            if side is None or t.owner != self.agency
        ]
        if not named:
            raise E.NotFound("no transfer with this id at this agency")
        if len(named) > 1:
            raise E.Conflict(
                "transfers of several owners have this id: name the owner (?owner=)",
                owners=sorted(t.owner for t in named),
            )
        return named[0]

    def referral(self, db: sqlite3.Connection, t: StoredTransfer) -> dict[str, Any] | None:
        """R as the transferee holds it (its own record), or None (at the owner; erased)."""
        doc = self.desk.open_body(
            self.agency, t.referral_id, self.store.transfer_body(db, t.owner, t.transfer_id)
        )
        referral = None if doc is None else doc.get("referral")
        return referral if isinstance(referral, dict) else None

    def listing(self, *, after: int, limit: int) -> tuple[list[dict[str, Any]], str | None]:
        """A page of the transfers held here, oldest first, and the cursor of the next."""
        page = self.store.transfers_page(after=after, limit=limit)
        return paged([(seq, view(t, self.agency)) for seq, t in page], limit)

    # --- the transferee -----------------------------------------------------------------------

    def on_transfer(self, db: sqlite3.Connection, opened: Opened, checked: CheckedTransfer) -> None:
        """A `case-transfer` received, R judged already (`inbound.check`): §8.10's receiver
        checks (a `transfer_id` held from that sender already, or an R whose id names a
        record held here or a referral of the sender's, or decisions or notices under it,
        `unexpected` / `reused-referral-id`; a `request_id` naming no request this agency
        sent the sender `not-shared`, one in a final state, or `granted` with another
        transfer from the sender answering it, `unexpected`); stored `delivered` with R
        sealed as this agency's own record, the request it answers `granted`, audited and
        told to the system."""
        sender = opened.header.sender
        transfer = checked.transfer
        referral_id = checked.referral.referral_id
        if self.store.transfer(db, sender, transfer.transfer_id) is not None:
            raise UnexpectedMessageError("a transfer this agency holds already")
        answered = None
        if transfer.request_id is not None:
            answered = self.store.transfer_request(db, self.agency, transfer.request_id)
            if answered is None or answered.owner != sender:
                raise NotSharedError("the transfer answers no request sent to its sender")
            if answered.state not in ANSWERABLE:
                raise UnexpectedMessageError("the transfer answers a request that ended")
            if answered.state == T.GRANTED and self.store.request_answered(
                db, sender, transfer.request_id
            ):
                raise UnexpectedMessageError("another transfer answers the request already")
        if self.store.pairs(self.agency, referral_id) or self.store.transfer_referral_held(
            db, referral_id
        ):
            raise ReusedReferralIdError("R's id names a record this agency holds already")
        if self.store.pairs(sender, referral_id) or self.store.held_under(db, sender, referral_id):
            # R's attachments are held under (sender, id): never a pair of the sender's too,
            # whose withdrawal would erase them (PROTOCOL §8.10).
            raise ReusedReferralIdError("R's id names a referral of its sender held here")
        now = clock.now()
        sealed = self.desk.seal_body(db, self.agency, referral_id, opened.body)
        body = checked.referral.referral.body
        if checked.referral.attachment_key is not None:
            self.desk.attachments.expect(
                db, sender, referral_id, checked.referral.attachment_key, body["attachments"]
            )
        stored = StoredTransfer(
            owner=sender,
            transfer_id=transfer.transfer_id,
            transferee=self.agency,
            referral_id=referral_id,
            case_id=transfer.case_id,
            authority=None,  # the owner's to know: the message names the case alone
            reason=transfer.reason,
            request_id=transfer.request_id,
            urgency=checked.referral.referral.urgency,
            state=T.INITIAL[T.TRANSFER][T.TRANSFEREE],
            step_reason=None,
            message_id=opened.header.message_id,
            sent_at=opened.header.created,
            created=now,
            updated=now,
        )
        if not self.store.insert_transfer(db, stored, sealed):
            raise UnexpectedMessageError("a transfer this agency holds already")
        if (
            answered is not None
            and answered.state != T.GRANTED
            and not self.requests.grant(db, answered)
        ):
            raise UnexpectedMessageError("the transfer request moved meanwhile")
        received(
            db,
            self.audit,
            opened,
            self.agency,
            kind="transfer.received",
            referral_id=referral_id,
            event=RECEIVED_EVENT,
            data=view(stored, self.agency),
        )
        self.log.info("transfer_received", transfer_id=transfer.transfer_id, sender=sender)


__all__ = ["ANSWERABLE", "RECEIVED_EVENT", "TransferDesk", "view"]
