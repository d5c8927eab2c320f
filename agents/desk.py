"""The referral desk: what an agency does with referrals and consent (issue 4).

Submitting (validation, consent coverage, per-recipient minimisation, anonymisation),
receiving (crypto-shredded storage, webhook), lifecycle transitions on both sides,
consent withdrawal and erasure confirmations, and escalation of unacknowledged urgent
referrals. Each action is one SQLite transaction holding its state change, its outbox
rows, its audit events and its webhook events. docs/PROTOCOL.md §8 gives the messages.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import nacl.exceptions
import structlog
from nacl.secret import SecretBox
from nacl.signing import SigningKey

from keys import (
    AgencyKeys,
    MalformedError,
    NotSharedError,
    Opened,
    ReusedReferralIdError,
    UnexpectedMessageError,
    UnknownKeyError,
    UntrustedInputError,
)
from keys.codec import canonical_json
from keys.directory import Directory
from keys.identity import signing_kid
from keys.key_history import signing_key_at
from keys.policy import Policy
from runtime import clock

from . import access, clocks
from . import consent as C
from . import errors as E
from . import lifecycle as L
from . import planning as P
from . import referral as R
from . import webhooks as W
from .attachments import Attachments, decode_key, encode_key
from .audit import AuditTrail
from .messages import (
    CONSENT_WITHDRAWAL,
    ESCALATION,
    OVERDUE,
    REFERRAL,
    TRANSITION,
    parse_json_body,
)
from .store import NewReferral, PendingConfirmation, Step, Store, StoredTransfer

log = structlog.get_logger("nrm.desk")

ESCALATION_ROLE = P.COORDINATOR


class Sender(Protocol):
    """How the desk seals and queues a message (Agent._send)."""

    def __call__(
        self,
        kind: str,
        body: bytes,
        recipients: list[str],
        db: sqlite3.Connection | None = None,
        *,
        referral_id: str | None = None,
        labels: tuple[tuple[str, str], ...] = (),
        reason: str | None = None,
    ) -> str: ...


def valid_signing_key(
    store: Store, keys: AgencyKeys, agency: str, *, at: int
) -> tuple[SigningKey, str]:
    """This agency's signing key and its kid, if the key history lists it as valid `at`:
    sign only what will verify later (PROTOCOL §8.3). 503 (Unavailable) otherwise, before
    anything is signed or written."""
    kid = signing_kid(keys.signing_key.verify_key)
    try:
        signing_key_at(store.key_history(agency), agency=agency, kid=kid, at=at)
    except UntrustedInputError as e:
        raise E.Unavailable(
            "this agency's signing key is not valid in the trust directory; nothing was done",
            reason=e.reason,
        ) from e
    return keys.signing_key, kid


@dataclass(frozen=True, slots=True)
class VerifiedConsent:
    """A stored receipt that verified, with the key that signed it."""

    receipt: C.ConsentReceipt
    withdrawn_at: int | None
    recorded: int
    kid: str
    public: bytes


@dataclass
class Desk:
    agency: str
    store: Store
    audit: AuditTrail
    send: Sender
    keys: Callable[[], AgencyKeys]
    directory: Callable[[], Directory]
    escalation_limits: dict[str, int]
    attachments: Attachments
    #: Called after an erasure or a withdrawal is committed (agents/erasure.py).
    erased: Callable[[], None] = lambda: None
    #: Called in the transaction of this agency accepting a received referral, with the
    #: referral's owner and id (a competent authority opens its case, agents/identification.py).
    accepted: Callable[[sqlite3.Connection, str, str], None] = lambda db, owner, rid: None
    #: Whether an agency's current verified catalogue lists a service (agents/services.py
    #: `Services.offers`): a referral's `service` is checked against it (PROTOCOL §8.2 step 5).
    offers: Callable[[str, str], bool] = lambda agency, service_id: False

    def __post_init__(self) -> None:
        self.log = log.bind(agency=self.agency)
        R.compile_validators()  # at start-up: see its docstring
        C.compile_validators()

    # --- at-rest protection ------------------------------------------------------------------

    def _storage(self) -> SecretBox:
        key = self.keys().storage_key
        if key is None:
            raise RuntimeError("the key file has no storage key; re-create it with nrm keys init")
        return SecretBox(key)

    def seal_body(self, db: sqlite3.Connection, owner: str, referral_id: str, body: bytes) -> bytes:
        """Encrypt a received body under a fresh per-referral data key (crypto-shredding)."""
        data_key = secrets.token_bytes(SecretBox.KEY_SIZE)
        self.store.put_data_key(db, owner, referral_id, bytes(self._storage().encrypt(data_key)))
        return bytes(SecretBox(data_key).encrypt(body))

    def open_body(
        self, owner: str, referral_id: str, sealed: bytes | None
    ) -> dict[str, Any] | None:
        """The decrypted referral (owner, referral id), or None once erased."""
        if sealed is None:
            return None
        sealed_key = self.store.data_key(owner, referral_id)
        if sealed_key is None:
            return None
        try:
            data_key = self._storage().decrypt(sealed_key)
            doc = json.loads(SecretBox(data_key).decrypt(sealed))
        except nacl.exceptions.CryptoError:
            return None
        return doc if isinstance(doc, dict) else None

    # --- submitting --------------------------------------------------------------------------

    def submit(
        self,
        *,
        recipients: Sequence[str],
        document: dict[str, Any],
        client_reference: str | None = None,
    ) -> dict[str, Any]:
        """Validate, check consent, minimise per recipient, seal and commit (before 202).

        The referral id is this agent's to choose (PROTOCOL §6.1): a new random one for every
        referral. `client_reference`, the case system's own, is kept here and never sent."""
        _, plan = self.prepare(
            recipients=recipients, document=document, client_reference=client_reference
        )
        if plan.referral.break_glass_reason is not None:  # never sent before confirmed
            raise E.Unprocessable(
                "a break-glass referral is held for a second client (agents/break_glass.py)"
            )
        return self.send_planned(
            plan, referral_id=secrets.token_hex(16), client_reference=client_reference
        )

    def prepare(
        self,
        *,
        recipients: Sequence[str],
        document: dict[str, Any],
        client_reference: str | None = None,
    ) -> tuple[R.Referral, P.Plan]:
        """The validated referral and what each recipient gets (agents/planning.py), or the
        domain error that refuses it; nothing is written."""
        if client_reference is not None:
            used = self.store.client_reference_used(
                client_reference
            ) or self.store.break_glass_reference_used(client_reference)
            if used is not None:
                raise E.AlreadyExists(
                    "a referral was already submitted under this client_reference",
                    referral_id=used,
                )
        referral = P.validate(document)
        directory = self.directory()
        cited = list(referral.body.get("attachments", []))
        plan = P.plan(
            referral,
            recipients=recipients,
            roles={r: directory.agency(r).roles for r in recipients},
            consent=self._consent_for(referral),
            now=clock.now(),
            attachment_problems=self.attachments.check_cited(cited),
            policy=directory.policy,
            sender_roles=directory.agency(self.agency).roles if self.agency in directory else (),
            offered=self.offers,
        )
        return referral, plan

    def send_planned(
        self, plan: P.Plan, *, referral_id: str, client_reference: str | None = None
    ) -> dict[str, Any]:
        """Seal and commit what `plan` says under `referral_id`, in one transaction (nested
        in the caller's, if any): one referral message and pair per recipient."""
        referral = plan.referral
        bodies = plan.bodies
        receipt = plan.receipt
        now = clock.now()
        cited = list(referral.body.get("attachments", []))
        routing = {**referral.routing(), "referral_id": referral_id}
        labels: tuple[tuple[str, str], ...] = (
            ("referral_type", referral.referral_type),
            ("urgency", referral.urgency),
        )
        if referral.break_glass_confirmed:
            labels = (("break_glass", "yes"), *labels)
        expires = int(referral.expires_at.timestamp()) if referral.expires_at else None
        with self.store.transaction() as db:
            key = None
            if any("attachments" in body for body in bodies.values()):
                key = self.attachments.queue_upload(db, referral_id, cited)
            for recipient, body in bodies.items():
                envelope: dict[str, Any] = {"referral": {**routing, "body": body}}
                if key is not None and "attachments" in body:
                    envelope["attachment_key"] = encode_key(key)
                message = canonical_json(envelope)
                message_id = self.send(
                    REFERRAL, message, [recipient], db, referral_id=referral_id, labels=labels
                )
                self.store.insert_referral(
                    db,
                    NewReferral(
                        owner=self.agency,
                        referral_id=referral_id,
                        counterpart=recipient,
                        side="sender",
                        state="submitted",
                        referral_type=referral.referral_type,
                        urgency=referral.urgency,
                        legal_basis=referral.legal_basis,
                        consent_receipt_id=referral.consent_receipt_id,
                        message_id=message_id,
                        created=now,
                        expires=expires,
                        client_reference=client_reference,
                        categories=frozenset(R.categories_present(body)),
                    ),
                )
                self._history(
                    db,
                    self.agency,
                    referral_id,
                    recipient,
                    Step(None, "submitted", "sender", None, None, now),
                )
                if receipt is not None:
                    self.store.record_consent_use(db, receipt.receipt_id, recipient, referral_id)
        self.log.info("referral_submitted", referral_id=referral_id, recipients=list(bodies))
        result = {"id": referral_id, "state": "submitted", "recipients": list(bodies)}
        if client_reference is not None:
            result["client_reference"] = client_reference
        return result

    def _consent_for(self, referral: R.Referral) -> P.Consent | None:
        """The verified receipt the referral cites, or None (not under consent, citing
        none, or none by its id recorded here); a stored one that does not verify raises."""
        if referral.legal_basis != "consent" or referral.consent_receipt_id is None:
            return None
        try:
            verified = self.verified_consent(referral.consent_receipt_id)
        except E.NotFound:
            return None
        return P.Consent(verified.receipt, withdrawn=verified.withdrawn_at is not None)

    # --- receiving ---------------------------------------------------------------------------

    def on_referral(self, db: sqlite3.Connection, opened: Opened) -> dict[str, str]:
        """Store a received referral encrypted under its own data key; queue a webhook."""
        h = opened.header
        try:
            doc = json.loads(opened.body)
        except (ValueError, UnicodeDecodeError) as e:  # a signed but broken body: refuse it
            raise MalformedError("a referral body must be canonical JSON") from e
        if not isinstance(doc, dict) or canonical_json(doc) != opened.body:
            raise MalformedError("a referral body must be a canonical JSON object")
        routing = doc.get("referral")
        if not isinstance(routing, dict) or not isinstance(routing.get("referral_id"), str):
            raise UnexpectedMessageError("a referral message must hold a referral with an id")
        referral_id: str = routing["referral_id"]
        owner = h.sender  # the sender chose the id: it names a referral only with the sender
        if self.store.pairs(owner, referral_id):
            raise ReusedReferralIdError("the sender already sent a referral with this id")
        if self.store.held_under(db, owner, referral_id):
            # A coordinator holds an authority's decisions under the referrer's pair without
            # its referral (§8.7): a referral arriving under that id now is a reuse, which
            # would let its sender erase them by withdrawing it (PROTOCOL §6.1).
            raise ReusedReferralIdError("decisions are held under this sender's referral id")
        if self.store.transfer_referral_from(db, owner, referral_id):
            # R of a case transfer from the sender: its attachments are held under this
            # sender's id (PROTOCOL §8.10), which a referral must not share.
            raise ReusedReferralIdError("the sender already sent a case transfer with this id")
        now = clock.now()
        sealed = self.seal_body(db, owner, referral_id, opened.body)
        body = routing.get("body")
        cited = body.get("attachments") if isinstance(body, dict) else None
        if cited is not None:
            key = decode_key(doc.get("attachment_key"))
            if not isinstance(cited, list) or not cited or key is None:
                raise MalformedError("cited attachments need a list and the attachment key")
            self.attachments.expect(db, owner, referral_id, key, cited)
        self.store.link_received_referral(db, h.message_id, referral_id, sealed)
        consent_receipt_id = routing.get("consent_receipt_id")
        self.store.insert_referral(
            db,
            NewReferral(
                owner=owner,
                referral_id=referral_id,
                counterpart=h.sender,
                side="recipient",
                state="delivered",
                referral_type=str(routing.get("referral_type")),
                urgency=str(routing.get("urgency")),
                legal_basis=str(routing.get("legal_basis")),
                consent_receipt_id=(
                    consent_receipt_id if isinstance(consent_receipt_id, str) else None
                ),
                message_id=h.message_id,
                created=now,
            ),
        )
        self._history(
            db, owner, referral_id, owner, Step(None, "delivered", "system", None, None, now)
        )
        event: dict[str, Any] = {"referral_id": referral_id, "sender": h.sender}
        glass = routing.get("break_glass")
        if isinstance(glass, dict):  # checked before (inbound.check): reason, confirmed
            event["break_glass"] = {"reason": glass.get("reason"), "confirmed": True}
        service = routing.get("service")
        if isinstance(service, dict):  # checked before (inbound.check): agency, service_id
            event["service"] = {"agency": service["agency"], "service_id": service["service_id"]}
        self._webhook(db, "referral.received", event, at=now)
        labels = {k: str(v) for k, v in routing.items() if k in ("referral_type", "urgency")}
        if isinstance(glass, dict):  # the receiver's side of §8.2 step 2's audit trail
            labels["break_glass"] = "yes"
        return labels

    def on_delivered(self, db: sqlite3.Connection, message_id: str, recipient: str) -> None:
        """A delivery receipt moves the sender's pair from submitted to delivered."""
        row = self.store.sent_pair_of_message(db, message_id, recipient)
        if row is not None and row[2] == "submitted":
            self._set_state(
                db, row[0], row[1], recipient, "submitted", "delivered", "system", None, None
            )

    # --- lifecycle ---------------------------------------------------------------------------

    def owner_of(self, referral_id: str, sender: str | None) -> str:
        """The owner of the referral the API names by its id and, when given, its `sender`
        (the agency that sent it: this agency for its own). 404 if none; 409 if the id alone
        names referrals of several senders (ids are chosen by each sender, PROTOCOL §6.1)."""
        owners = self.store.owners_of(referral_id)
        if sender is not None:
            if sender not in owners:
                raise E.NotFound("no referral with this id from this sender")
            return sender
        if not owners:
            raise E.NotFound("no referral with this id at this agency")
        if len(owners) > 1:
            raise E.AmbiguousReferralId(
                "referrals from several senders have this id: name the sender (?sender=)",
                senders=owners,
            )
        return owners[0]

    def transition(
        self,
        referral_id: str,
        *,
        sender: str | None = None,
        to: str,
        counterpart: str | None,
        reason: str | None,
        outcome: str | None,
    ) -> dict[str, Any]:
        owner = self.owner_of(referral_id, sender)
        rows = self.store.pairs(owner, referral_id)
        if counterpart is None and len(rows) > 1:
            raise E.Unprocessable("this referral has several recipients: name the counterpart")
        row = (
            rows[0] if counterpart is None else next((r for r in rows if r[0] == counterpart), None)
        )
        if row is None:
            raise E.NotFound("no such counterpart for this referral")
        other, side, state = row
        try:
            L.check(state, to, side, reason=reason, outcome=outcome)
        except L.TransitionRefused as e:
            raise E.TransitionNotAllowed(
                f"{side} cannot move a referral from {state} to {to}",
                allowed=e.allowed,
            ) from e
        except ValueError as e:
            raise E.Unprocessable(str(e)) from e
        recipient = self.agency if side == "recipient" else other
        now = clock.now()
        step = L.Transition(
            referral_id=referral_id,
            recipient=recipient,
            from_state=state,
            to_state=to,
            party=side,
            reason=reason,
            outcome=outcome,
            at=now,
        )
        with self.store.transaction() as db:
            self._set_state(db, owner, referral_id, other, state, to, side, reason, outcome)
            if side == "recipient" and to == "accepted":
                self.accepted(db, owner, referral_id)
            self.send(
                TRANSITION,
                step.encode(),
                [other],
                db,
                referral_id=referral_id,
                labels=(("state", to),),
            )
        self.log.info(
            "transition_sent",
            referral_id=referral_id,
            counterpart=other,
            from_state=state,
            to_state=to,
        )
        return {"id": referral_id, "sender": owner, "counterpart": other, "state": to}

    def on_transition(self, db: sqlite3.Connection, opened: Opened) -> L.Transition:
        """A counterpart's step of a pair, checked and applied; the step (for the caller's
        follow-up in the same transaction)."""
        step = L.Transition.decode(opened.body)
        sender = opened.header.sender
        # A recipient's step is about a referral this agency sent; a sender's step about one
        # the sender sent here. Either way only a pair between the two of them can move.
        owner = self.agency if step.party == "recipient" else sender
        row = self.store.pair(db, owner, step.referral_id, sender)
        if row is None:
            raise NotSharedError("a transition for a referral not shared with its sender")
        side, state = row
        expected_party = "recipient" if side == "sender" else "sender"
        expected_recipient = sender if side == "sender" else self.agency
        if step.party != expected_party or step.recipient != expected_recipient:
            raise UnexpectedMessageError("a transition by the wrong party")
        try:
            L.check(state, step.to_state, step.party, reason=step.reason, outcome=step.outcome)
        except (L.TransitionRefused, ValueError) as e:
            raise UnexpectedMessageError(f"transition {state} -> {step.to_state} refused") from e
        self._set_state(
            db,
            owner,
            step.referral_id,
            sender,
            state,
            step.to_state,
            step.party,
            step.reason,
            step.outcome,
        )
        self.log.info(
            "transition_received",
            referral_id=step.referral_id,
            counterpart=sender,
            from_state=state,
            to_state=step.to_state,
        )
        self.audit.record(
            db,
            "transition.received",
            referral_id=step.referral_id,
            counterpart=sender,
            labels=(("state", step.to_state),),
        )
        self._webhook(
            db,
            "transition.received",
            {
                "owner": owner,
                "referral_id": step.referral_id,
                "counterpart": sender,
                "from": state,
                "to": step.to_state,
                "reason": step.reason,
                "outcome": step.outcome,
            },
        )
        return step

    def _set_state(
        self,
        db: sqlite3.Connection,
        owner: str,
        referral_id: str,
        counterpart: str,
        from_state: str,
        to_state: str,
        party: str,
        reason: str | None,
        outcome: str | None,
    ) -> None:
        step = Step(from_state, to_state, party, reason, outcome, clock.now())
        self.store.set_state(db, owner, referral_id, counterpart, step)

    def _webhook(
        self, db: sqlite3.Connection, kind: str, data: dict[str, Any], *, at: int | None = None
    ) -> None:
        """Queue a webhook event of type `kind` (at `at`, else now) in the caller's transaction."""
        W.enqueue(
            db,
            W.WebhookEvent(
                id=W.new_event_id(),
                type=kind,
                created=clock.now() if at is None else at,
                data=data,
            ),
        )

    def _history(
        self, db: sqlite3.Connection, owner: str, referral_id: str, counterpart: str, step: Step
    ) -> None:
        self.store.add_history(db, owner, referral_id, counterpart, step)

    # --- timers: escalation and expiry ---------------------------------------------------------

    def tick(self, now: int | None = None) -> None:
        """Run the clocks (agents/clocks.py): escalate unacknowledged referrals and report
        unanswered ones to the co-ordinators, once each; expire stale ones."""
        now = clock.now() if now is None else now
        policy = self.directory().policy
        limits = clocks.limits(clocks.ACKNOWLEDGE, policy=policy, local=self.escalation_limits)
        rows = self.store.escalation_candidates(limits)
        for owner, referral_id, recipient, state, urgency, created in rows:
            if not clocks.overdue(
                clocks.ACKNOWLEDGE,
                urgency,
                state,
                created,
                now=now,
                policy=policy,
                local=self.escalation_limits,
            ):
                continue
            notice = {
                "referral_id": referral_id,
                "recipient": recipient,
                "urgency": urgency,
                "submitted_at": created,
            }
            key = (owner, referral_id, recipient)
            self._notify_coordinators(ESCALATION, notice, key, self.store.mark_escalated, now)
            self.log.warning("referral_escalated", referral_id=referral_id, recipient=recipient)
        self._respond_overdue(policy, now)
        expired = self.store.expired_pairs(now)
        for owner, referral_id, counterpart, state in expired:
            with self.store.transaction() as db:
                self._set_state(
                    db, owner, referral_id, counterpart, state, "expired", "system", None, None
                )

    def _respond_overdue(self, policy: Policy | None, now: int) -> None:
        """Send one `overdue` notice for each pair whose `respond` clock passed its due time
        (none without a national policy: agents/clocks.py)."""
        rows = self.store.overdue_candidates(clocks.limits(clocks.RESPOND, policy=policy))
        for owner, referral_id, recipient, state, urgency, started in rows:
            due = clocks.due_at(clocks.RESPOND, urgency, started, policy=policy)
            if due is None or not clocks.overdue(
                clocks.RESPOND, urgency, state, started, now=now, policy=policy
            ):
                continue
            notice = {
                "clock": clocks.RESPOND,
                "due_at": due,
                "recipient": recipient,
                "referral_id": referral_id,
                "started_at": started,
                "urgency": urgency,
            }
            key = (owner, referral_id, recipient)
            self._notify_coordinators(OVERDUE, notice, key, self.store.mark_overdue, now)
            self.log.warning("referral_overdue", referral_id=referral_id, recipient=recipient)

    def _notify_coordinators(
        self,
        kind: str,
        notice: dict[str, Any],
        pair: tuple[str, str, str],
        mark: Callable[[sqlite3.Connection, str, str, str, int], None],
        now: int,
    ) -> None:
        """Mark the pair (owner, referral id, recipient) notified and seal `notice` to every
        coordinator, in one transaction and one envelope (PROTOCOL §8.5), its audit events
        labelled with the notice's `clock` and `urgency` (§9.0); the pair is marked even with
        no coordinator to seal to, so the timers do not try it again and again."""
        coordinators = self.coordinators(now)
        owner, referral_id, recipient = pair
        labels = tuple(sorted((k, notice[k]) for k in ("clock", "urgency") if k in notice))
        with self.store.transaction() as db:
            mark(db, owner, referral_id, recipient, now)
            if coordinators:
                self.send(
                    kind,
                    canonical_json(notice),
                    coordinators,
                    db,
                    referral_id=referral_id,
                    labels=labels,
                )

    def respond_due(self, urgency: str, started_at: int | None) -> int | None:
        """When a pair's `respond` clock, started at its envelope's `created`, is due under
        the trusted directory's national policy; None without one, or while the agent trusts
        no directory (a read must not fail for it; PROTOCOL §8.5 "Clocks")."""
        if started_at is None:
            return None
        try:
            policy = self.directory().policy
        except E.Unavailable:
            return None
        return clocks.due_at(clocks.RESPOND, urgency, started_at, policy=policy)

    def coordinators(self, now: int) -> list[str]:
        """The other co-ordinators a notice (an escalation, an overdue clock, a decision) can
        be sealed to now (one whose keys were all revoked is left out rather than stopping
        every notice)."""

        def unusable(agency: str) -> None:  # the event name alerts key on
            self.log.warning("escalation_recipient_unusable", recipient=agency)

        return sealable_with_role(
            self.directory(), ESCALATION_ROLE, me=self.agency, now=now, unusable=unusable
        )

    def on_escalation(self, db: sqlite3.Connection, opened: Opened) -> None:
        notice = parse_json_body(
            opened.body,
            what="escalation",
            required={"referral_id": str, "recipient": str, "urgency": str, "submitted_at": int},
        )
        self._webhook(db, "escalation.received", {**notice, "sender": opened.header.sender})

    def on_overdue(self, db: sqlite3.Connection, opened: Opened, notice: dict[str, Any]) -> None:
        """A sender's clock passed its due time: tell this coordinator's systems (`notice`,
        the checked body: metadata only)."""
        self._webhook(db, "overdue.received", {**notice, "sender": opened.header.sender})

    # --- consent -----------------------------------------------------------------------------

    def record_consent(self, document: dict[str, Any]) -> dict[str, Any]:
        try:
            receipt = C.parse_receipt(document)
        except C.ConsentInvalid as e:
            raise E.ConsentInvalid(
                "the consent receipt is not valid", problems=list(e.problems)
            ) from e
        if self.agency not in receipt.controller_agencies:
            raise E.ConsentInvalid("this agency must be one of the receipt's controllers")
        now = clock.now()
        signing_key, kid = valid_signing_key(self.store, self.keys(), self.agency, at=now)
        signed = C.sign_receipt(receipt, signing_key, agency=self.agency)
        with self.store.transaction() as db:
            if not self.store.insert_consent(db, receipt.receipt_id, C.encode_stored(signed), now):
                raise E.AlreadyExists("a consent receipt with this id exists")
            self.audit.record(db, "consent.recorded", key_ids=(kid,))
        self.log.info("consent_recorded", receipt_id=receipt.receipt_id, kid=kid)
        return {"id": receipt.receipt_id}

    def verified_consent(self, receipt_id: str, *, audit: bool = False) -> VerifiedConsent:
        """Load a stored receipt and verify it under the key that signed it, as the key
        history describes that key when it was recorded (PROTOCOL §8.3). 404 if unknown; 409
        naming the reason if it does not verify, also audited with `audit` (only outside a
        transaction: a refused request's transaction rolls back, and the event with it)."""
        stored = self.store.consent(receipt_id)
        if stored is None:
            raise E.NotFound("no consent receipt with this id at this agency")
        kid: str | None = None
        try:
            signed = C.decode_stored(stored.signed)
            kid = signed.kid
            history = self.store.key_history(signed.agency)
            receipt, kid = C.verify_stored_receipt(
                signed, signed_at=stored.recorded, history=history
            )
        except UntrustedInputError as e:
            self.log.warning(
                "stored_consent_unverifiable", receipt_id=receipt_id, reason=e.reason, kid=kid
            )
            if audit:
                self.audit.record_alone(
                    "consent.unverifiable", reason=e.reason, key_ids=() if kid is None else (kid,)
                )
            raise E.ConsentUnverifiable(
                f"the stored consent receipt does not verify ({e.reason}): it may have been "
                "altered or signed by a key not valid when it was recorded; nothing was done",
                reason=e.reason,
            ) from e
        public = next(w.public for w in history if w.kid == kid)
        return VerifiedConsent(receipt, stored.withdrawn_at, stored.recorded, kid, public)

    def consent_status(self, receipt_id: str) -> dict[str, Any]:
        verified = self.verified_consent(receipt_id)
        withdrawn_at = verified.withdrawn_at
        uses = self.store.consent_uses(receipt_id)
        return {
            "id": receipt_id,
            "receipt": C.to_doc(verified.receipt),
            "signing_kid": verified.kid,
            "recorded_at": verified.recorded,
            "withdrawn_at": withdrawn_at,
            "recipients": [
                {"agency": a, "referral_id": r, "erasure_confirmed_at": c} for a, r, c in uses
            ],
            "pending": sorted({a for a, _, c in uses if withdrawn_at and c is None}),
        }

    def kantara(self, receipt_id: str) -> dict[str, Any]:
        verified = self.verified_consent(receipt_id)
        try:
            names = {a.agency: a.name for a in self.directory().agencies}
        except E.Unavailable:  # no trusted directory now: the export names agencies by id
            names = {}
        return C.to_kantara(
            verified.receipt, controller_public_key=verified.public, agency_names=names
        )

    def withdraw(self, receipt_id: str) -> dict[str, Any]:
        """Withdraw a consent: refuse its later use and ask each recipient to erase."""
        # 404 if unknown, 409 if it does not verify: a forged or altered row must not send
        # erasure requests to other agencies.
        self.verified_consent(receipt_id)
        now = clock.now()
        with self.store.transaction() as db:
            try:
                uses = self.store.withdraw_consent(db, receipt_id, now)
            except LookupError as e:
                raise E.AlreadyWithdrawn("this consent is already withdrawn") from e
            for agency, referral_ids in sorted(uses.items()):
                body = canonical_json(
                    {"receipt_id": receipt_id, "referral_ids": sorted(referral_ids)}
                )
                try:
                    self.send(CONSENT_WITHDRAWAL, body, [agency], db)
                except UntrustedInputError as e:
                    # Removed, or no key left to seal to: the withdrawal stands here and goes
                    # to everyone else; that agency's consent use stays unconfirmed.
                    self.log.warning(
                        "withdrawal_unsendable",
                        receipt_id=receipt_id,
                        counterpart=agency,
                        reason=e.reason,
                    )
            # Erasure at the sender (issue 11): the envelopes sealed to the recipients and
            # the attachment objects go now; the WAL is truncated after the commit.
            self.store.drop_sent(db, sorted({r for ids in uses.values() for r in ids}), now=now)
            self.audit.record(db, "consent.withdrawn")
        self.erased()
        self.log.info("consent_withdrawn", receipt_id=receipt_id, recipients=sorted(uses))
        return self.consent_status(receipt_id)

    def on_withdrawal(self, db: sqlite3.Connection, opened: Opened) -> None:
        """Erase every referral the sender shared under the receipt, then confirm."""
        notice = parse_json_body(
            opened.body,
            what="consent withdrawal",
            required={"receipt_id": str, "referral_ids": list},
        )
        sender = opened.header.sender
        erased = []
        for referral_id in notice["referral_ids"]:
            transferred = self.store.received_transfer_of(db, sender, referral_id)
            if transferred is not None:
                self._erase_transferred(db, transferred, notice["receipt_id"])
                erased.append(referral_id)
                continue
            if not self.store.holds_received(db, sender, referral_id):
                if self.store.owners_of(referral_id) or self.store.transfer_referral_held(
                    db, referral_id
                ):
                    # Held here only as another agency's referral (or one this agency sent):
                    # the sender cannot withdraw what it did not send (PROTOCOL §8.5).
                    raise NotSharedError("a withdrawal names a referral its sender did not send")
                continue  # never arrived here: nothing to erase
            if self.store.received_receipt(db, sender, referral_id) != notice["receipt_id"]:
                # Only the referrals sent under that receipt (PROTOCOL §8.5): one sent under
                # another receipt, or none, is not the person's withdrawal to act on.
                raise NotSharedError("a withdrawal names a referral not sent under its receipt")
            # The reads counted so far are signed first: no access record after the erasure.
            for window in self.store.take_accesses_of(db, owner=sender, referral_id=referral_id):
                access.sign(self.audit, db, window)
            # Erasure (issue 11): rows deleted, WAL truncated before the confirmation goes.
            self.store.erase_received(db, sender, referral_id)
            erased.append(referral_id)
            self.audit.record(db, "erasure.confirmed", referral_id=referral_id, counterpart=sender)
        now = clock.now()
        self.store.queue_confirmation(
            db,
            PendingConfirmation(notice["receipt_id"], sender, tuple(erased), now),
        )
        self.erased()  # agents/erasure.py sends it once the WAL no longer holds the bytes
        self.log.info(
            "erasure_done",
            receipt_id=notice["receipt_id"],
            referrals=len(erased),
            counterpart=sender,
        )
        self._webhook(
            db,
            "consent.withdrawn",
            {
                "receipt_id": notice["receipt_id"],
                "referral_ids": sorted(erased),
                "sender": sender,
            },
            at=now,
        )

    def _erase_transferred(
        self, db: sqlite3.Connection, t: StoredTransfer, receipt_id: str
    ) -> None:
        """A withdrawal by `t`'s owner naming R, the referral of its transfer to this agency
        (PROTOCOL §8.10 "R is the transferee's own", §8.5): R sent under another receipt,
        or none (a legal basis), is not the person's withdrawal to act on (`not-shared`);
        else R is erased (`erase_transferred`, audited `erasure.confirmed`), its reads
        counted so far signed first. One erased already is confirmed again."""
        sealed = self.store.transfer_body(db, t.owner, t.transfer_id)
        if sealed is None:
            return
        doc = self.open_body(self.agency, t.referral_id, sealed) or {}
        referral = doc.get("referral")
        cited = referral.get("consent_receipt_id") if isinstance(referral, dict) else None
        if cited != receipt_id:
            raise NotSharedError("a withdrawal names a transferred R not sent under its receipt")
        for window in self.store.take_accesses_of(db, owner=t.owner, referral_id=t.referral_id):
            access.sign(self.audit, db, window)
        self.store.erase_transferred(db, t.owner, t.referral_id)
        self.audit.record(db, "erasure.confirmed", referral_id=t.referral_id, counterpart=t.owner)

    def on_erasure_confirmation(self, db: sqlite3.Connection, opened: Opened) -> None:
        notice = parse_json_body(
            opened.body,
            what="erasure confirmation",
            required={"receipt_id": str, "referral_ids": list, "erased_at": int},
        )
        self.log.info(
            "erasure_confirmed", receipt_id=notice["receipt_id"], counterpart=opened.header.sender
        )
        # The agency erased everything it held from us under the receipt.
        self.store.confirm_erasure(
            db, notice["receipt_id"], opened.header.sender, notice["erased_at"]
        )


def sealable_with_role(
    directory: Directory, role: str, *, me: str, now: int, unusable: Callable[[str], None]
) -> list[str]:
    """The other agencies holding `role` that a message can be sealed to now, in directory
    order: one whose keys were all revoked is left out (and given to `unusable`, the
    caller's to log) rather than stopping the message to every other."""
    out = []
    for a in directory.agencies:
        if role not in a.roles or a.agency == me:
            continue
        try:
            directory.recipient(a.agency, at=now)
        except UnknownKeyError:
            unusable(a.agency)
            continue
        out.append(a.agency)
    return out
