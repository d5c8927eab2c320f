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

from keys import (
    AgencyKeys,
    MalformedError,
    Opened,
    UnexpectedMessageError,
    UnknownKeyError,
    UntrustedInputError,
)
from keys.codec import canonical_json
from keys.directory import Directory
from keys.identity import signing_kid
from keys.key_history import signing_key_at
from runtime import clock

from . import consent as C
from . import lifecycle as L
from . import referral as R
from . import webhooks as W
from .attachments import Attachments, decode_key, encode_key
from .audit import AuditTrail
from .messages import (
    CONSENT_WITHDRAWAL,
    ESCALATION,
    REFERRAL,
    TRANSITION,
    parse_json_body,
)
from .problems import ProblemError
from .storage import erasure
from .store import Store

log = structlog.get_logger("nrm.desk")

UNPROCESSABLE = "Unprocessable Content"
ESCALATION_ROLE = "coordinator"


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
    ) -> str: ...


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

    def __post_init__(self) -> None:
        self.log = log.bind(agency=self.agency)
        R.compile_validators()  # at start-up: see its docstring
        C.compile_validators()
        with self.store.transaction() as db:
            W.create_tables(db)

    # --- at-rest protection ------------------------------------------------------------------

    def _storage(self) -> SecretBox:
        key = self.keys().storage_key
        if key is None:
            raise RuntimeError("the key file has no storage key; re-create it with nrm keys init")
        return SecretBox(key)

    def _seal_body(self, db: sqlite3.Connection, referral_id: str, body: bytes) -> bytes:
        """Encrypt a received body under a fresh per-referral data key (crypto-shredding)."""
        data_key = secrets.token_bytes(SecretBox.KEY_SIZE)
        db.execute(
            "INSERT OR REPLACE INTO data_keys (referral_id, sealed_key) VALUES (?, ?)",
            (referral_id, bytes(self._storage().encrypt(data_key))),
        )
        return bytes(SecretBox(data_key).encrypt(body))

    def open_body(self, referral_id: str, sealed: bytes | None) -> dict[str, Any] | None:
        """The decrypted referral, or None once erased."""
        if sealed is None:
            return None
        row = self.store._db.execute(
            "SELECT sealed_key FROM data_keys WHERE referral_id = ?", (referral_id,)
        ).fetchone()
        if row is None or row[0] is None:
            return None
        try:
            data_key = self._storage().decrypt(bytes(row[0]))
            doc = json.loads(SecretBox(data_key).decrypt(sealed))
        except nacl.exceptions.CryptoError:
            return None
        return doc if isinstance(doc, dict) else None

    # --- submitting --------------------------------------------------------------------------

    def submit(self, *, recipients: Sequence[str], document: dict[str, Any]) -> dict[str, Any]:
        """Validate, check consent, minimise per recipient, seal and commit (before 202)."""
        try:
            referral = R.validate_referral(document)
        except R.ReferralInvalid as e:
            raise ProblemError(
                422, UNPROCESSABLE, "the referral is not valid", problems=e.problems
            ) from e
        directory = self.directory()
        roles = {r: directory.agency(r).roles for r in recipients}
        now = clock.now()
        receipt = self._receipt_for(referral, now) if referral.legal_basis == "consent" else None
        bodies: dict[str, dict[str, Any]] = {}
        cited = list(referral.body.get("attachments", []))
        problems: list[str] = self.attachments.check_cited(cited)
        for recipient in recipients:
            body = dict(referral.body)
            if referral.referral_type == "anonymous_notification":
                if ESCALATION_ROLE not in roles[recipient]:
                    problems.append(f"{recipient}: anonymous notifications go to the co-ordinator")
                    continue
                try:
                    body = R.anonymise(R.strip_identifying(body))
                except R.ReferralInvalid as e:
                    problems += e.problems
                    continue
            body = R.minimise(body, R.categories_for_roles(roles[recipient]))
            if receipt is not None:
                present = set(R.categories_present(body))
                for role in roles[recipient]:
                    missing = C.uncovered(
                        receipt,
                        recipient=recipient,
                        role=role,
                        purpose=referral.purpose,
                        categories=present,
                        now=now,
                    )
                    if not missing:
                        break
                else:
                    problems += missing
            bodies[recipient] = body
        if problems:
            raise ProblemError(
                422, UNPROCESSABLE, "the referral cannot be sent as it is", problems=problems
            )
        referral_id = referral.referral_id or secrets.token_hex(16)
        routing = {**referral.routing(), "referral_id": referral_id}
        labels = (("referral_type", referral.referral_type), ("urgency", referral.urgency))
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
                db.execute(
                    "INSERT INTO referrals (referral_id, counterpart, side, state, referral_type,"
                    " urgency, legal_basis, consent_receipt_id, message_id, created, updated,"
                    " expires) VALUES (?, ?, 'sender', 'submitted', ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        referral_id,
                        recipient,
                        referral.referral_type,
                        referral.urgency,
                        referral.legal_basis,
                        referral.consent_receipt_id,
                        message_id,
                        now,
                        now,
                        expires,
                    ),
                )
                self._history(
                    db, referral_id, recipient, None, "submitted", "sender", None, None, now
                )
                if receipt is not None:
                    db.execute(
                        "INSERT OR IGNORE INTO consent_uses (receipt_id, agency, referral_id)"
                        " VALUES (?, ?, ?)",
                        (receipt.receipt_id, recipient, referral_id),
                    )
        self.log.info("referral_submitted", referral_id=referral_id, recipients=list(bodies))
        return {"id": referral_id, "state": "submitted", "recipients": list(bodies)}

    def _receipt_for(self, referral: R.Referral, now: int) -> C.ConsentReceipt:
        if referral.consent_receipt_id is None:
            raise ProblemError(422, UNPROCESSABLE, "legal basis consent needs consent_receipt_id")
        try:
            verified = self.verified_consent(referral.consent_receipt_id)
        except ProblemError as e:
            if e.status != 404:
                raise
            raise ProblemError(
                422,
                UNPROCESSABLE,
                "no consent receipt with this id was recorded at this agency; nothing was sent",
            ) from e
        receipt = verified.receipt
        if not C.is_live(receipt, now=now, withdrawn=verified.withdrawn_at is not None):
            raise ProblemError(
                422, UNPROCESSABLE, "the consent receipt is withdrawn or expired; nothing was sent"
            )
        return receipt

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
        now = clock.now()
        sealed = self._seal_body(db, referral_id, opened.body)
        body = routing.get("body")
        cited = body.get("attachments") if isinstance(body, dict) else None
        if cited is not None:
            key = decode_key(doc.get("attachment_key"))
            if not isinstance(cited, list) or not cited or key is None:
                raise MalformedError("cited attachments need a list and the attachment key")
            self.attachments.expect(db, h.sender, referral_id, key, cited)
        db.execute(
            "UPDATE inbox SET body = ?, referral_id = ? WHERE message_id = ?",
            (sealed, referral_id, h.message_id),
        )
        db.execute(
            "INSERT OR REPLACE INTO referrals (referral_id, counterpart, side, state,"
            " referral_type, urgency, legal_basis, consent_receipt_id, message_id, created,"
            " updated) VALUES (?, ?, 'recipient', 'delivered', ?, ?, ?, ?, ?, ?, ?)",
            (
                referral_id,
                h.sender,
                str(routing.get("referral_type")),
                str(routing.get("urgency")),
                str(routing.get("legal_basis")),
                routing.get("consent_receipt_id"),
                h.message_id,
                now,
                now,
            ),
        )
        self._history(db, referral_id, h.sender, None, "delivered", "system", None, None, now)
        W.enqueue(
            db,
            W.WebhookEvent(
                id=W.new_event_id(),
                type="referral.received",
                created=now,
                data={"referral_id": referral_id, "sender": h.sender},
            ),
        )
        return {k: str(v) for k, v in routing.items() if k in ("referral_type", "urgency")}

    def on_delivered(self, db: sqlite3.Connection, message_id: str, recipient: str) -> None:
        """A delivery receipt moves the sender's pair from submitted to delivered."""
        row = db.execute(
            "SELECT referral_id, state FROM referrals WHERE message_id = ? AND counterpart = ?"
            " AND side = 'sender'",
            (message_id, recipient),
        ).fetchone()
        if row is not None and row[1] == "submitted":
            self._set_state(db, row[0], recipient, "submitted", "delivered", "system", None, None)

    # --- lifecycle ---------------------------------------------------------------------------

    def transition(
        self,
        referral_id: str,
        *,
        to: str,
        counterpart: str | None,
        reason: str | None,
        outcome: str | None,
    ) -> dict[str, Any]:
        rows = self.store._db.execute(
            "SELECT counterpart, side, state FROM referrals WHERE referral_id = ?",
            (referral_id,),
        ).fetchall()
        if not rows:
            raise ProblemError(404, "Not Found", "no referral with this id at this agency")
        if counterpart is None and len(rows) > 1:
            raise ProblemError(
                422, UNPROCESSABLE, "this referral has several recipients: name the counterpart"
            )
        row = (
            rows[0] if counterpart is None else next((r for r in rows if r[0] == counterpart), None)
        )
        if row is None:
            raise ProblemError(404, "Not Found", "no such counterpart for this referral")
        other, side, state = row
        try:
            L.check(state, to, side, reason=reason, outcome=outcome)
        except L.TransitionRefused as e:
            raise ProblemError(
                409,
                "Conflict",
                f"{side} cannot move a referral from {state} to {to}",
                allowed=e.allowed,
            ) from e
        except ValueError as e:
            raise ProblemError(422, UNPROCESSABLE, str(e)) from e
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
            self._set_state(db, referral_id, other, state, to, side, reason, outcome)
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
        return {"id": referral_id, "counterpart": other, "state": to}

    def on_transition(self, db: sqlite3.Connection, opened: Opened) -> None:
        step = L.Transition.decode(opened.body)
        sender = opened.header.sender
        row = db.execute(
            "SELECT side, state FROM referrals WHERE referral_id = ? AND counterpart = ?",
            (step.referral_id, sender),
        ).fetchone()
        if row is None:
            raise UnexpectedMessageError("a transition for a referral not shared with its sender")
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
        W.enqueue(
            db,
            W.WebhookEvent(
                id=W.new_event_id(),
                type="transition.received",
                created=clock.now(),
                data={
                    "referral_id": step.referral_id,
                    "counterpart": sender,
                    "from": state,
                    "to": step.to_state,
                    "reason": step.reason,
                    "outcome": step.outcome,
                },
            ),
        )

    def _set_state(
        self,
        db: sqlite3.Connection,
        referral_id: str,
        counterpart: str,
        from_state: str,
        to_state: str,
        party: str,
        reason: str | None,
        outcome: str | None,
    ) -> None:
        now = clock.now()
        db.execute(
            "UPDATE referrals SET state = ?, updated = ? WHERE referral_id = ? AND counterpart = ?",
            (to_state, now, referral_id, counterpart),
        )
        self._history(
            db, referral_id, counterpart, from_state, to_state, party, reason, outcome, now
        )

    @staticmethod
    def _history(
        db: sqlite3.Connection,
        referral_id: str,
        counterpart: str,
        from_state: str | None,
        to_state: str,
        party: str,
        reason: str | None,
        outcome: str | None,
        at: int,
    ) -> None:
        db.execute(
            "INSERT INTO history (referral_id, counterpart, from_state, to_state, party, reason,"
            " outcome, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (referral_id, counterpart, from_state, to_state, party, reason, outcome, at),
        )

    # --- timers: escalation and expiry ---------------------------------------------------------

    def tick(self, now: int | None = None) -> None:
        """Escalate overdue urgent referrals to the co-ordinator; expire stale ones."""
        now = clock.now() if now is None else now
        rows = self.store._db.execute(
            "SELECT referral_id, counterpart, state, urgency, created FROM referrals"
            " WHERE side = 'sender' AND escalated_at IS NULL AND state IN ('submitted',"
            " 'delivered') AND urgency IN ('urgent', 'emergency')"
        ).fetchall()
        for referral_id, recipient, _state, urgency, created in rows:
            if not L.escalation_due(
                urgency, created, acknowledged=False, limits=self.escalation_limits, now=now
            ):
                continue
            coordinators = self._escalation_recipients(now)
            notice = canonical_json(
                {
                    "referral_id": referral_id,
                    "recipient": recipient,
                    "urgency": urgency,
                    "submitted_at": created,
                }
            )
            with self.store.transaction() as db:
                db.execute(
                    "UPDATE referrals SET escalated_at = ? WHERE referral_id = ? AND "
                    "counterpart = ?",
                    (now, referral_id, recipient),
                )
                if coordinators:
                    self.send(
                        ESCALATION,
                        notice,
                        coordinators,
                        db,
                        referral_id=referral_id,
                        labels=(("urgency", urgency),),
                    )
            self.log.warning("referral_escalated", referral_id=referral_id, recipient=recipient)
        expired = self.store._db.execute(
            "SELECT referral_id, counterpart, state FROM referrals WHERE expires IS NOT NULL"
            " AND expires <= ? AND state IN ('submitted', 'delivered', 'acknowledged',"
            " 'more_info_requested')",
            (now,),
        ).fetchall()
        for referral_id, counterpart, state in expired:
            with self.store.transaction() as db:
                self._set_state(
                    db, referral_id, counterpart, state, "expired", "system", None, None
                )

    def _escalation_recipients(self, now: int) -> list[str]:
        """The co-ordinators an escalation can be sealed to now (one whose keys were all
        revoked is left out rather than stopping every escalation)."""
        directory = self.directory()
        out = []
        for a in directory.agencies:
            if ESCALATION_ROLE not in a.roles or a.agency == self.agency:
                continue
            try:
                directory.recipient(a.agency, at=now)
            except UnknownKeyError:
                self.log.warning("escalation_recipient_unusable", recipient=a.agency)
                continue
            out.append(a.agency)
        return out

    def on_escalation(self, db: sqlite3.Connection, opened: Opened) -> None:
        notice = parse_json_body(
            opened.body,
            what="escalation",
            required={"referral_id": str, "recipient": str, "urgency": str, "submitted_at": int},
        )
        W.enqueue(
            db,
            W.WebhookEvent(
                id=W.new_event_id(),
                type="escalation.received",
                created=clock.now(),
                data={**notice, "sender": opened.header.sender},
            ),
        )

    # --- consent -----------------------------------------------------------------------------

    def record_consent(self, document: dict[str, Any]) -> dict[str, Any]:
        try:
            receipt = C.parse_receipt(document)
        except C.ConsentInvalid as e:
            raise ProblemError(
                422, UNPROCESSABLE, "the consent receipt is not valid", problems=list(e.problems)
            ) from e
        if self.agency not in receipt.controller_agencies:
            raise ProblemError(
                422, UNPROCESSABLE, "this agency must be one of the receipt's controllers"
            )
        now = clock.now()
        signing_key = self.keys().signing_key
        kid = signing_kid(signing_key.verify_key)
        try:  # sign only what will verify later: with a key the directory lists as valid now
            signing_key_at(self.store.key_history(self.agency), agency=self.agency, kid=kid, at=now)
        except UntrustedInputError as e:
            raise ProblemError(
                503,
                "Service Unavailable",
                "this agency's signing key is not valid in the trust directory; nothing was "
                "recorded",
                reason=e.reason,
            ) from e
        signed = C.sign_receipt(receipt, signing_key, agency=self.agency)
        with self.store.transaction() as db:
            if not self.store.insert_consent(db, receipt.receipt_id, C.encode_stored(signed), now):
                raise ProblemError(409, "Conflict", "a consent receipt with this id exists")
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
            raise ProblemError(404, "Not Found", "no consent receipt with this id at this agency")
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
            raise ProblemError(
                409,
                "Conflict",
                f"the stored consent receipt does not verify ({e.reason}): it may have been "
                "altered or signed by a key not valid when it was recorded; nothing was done",
                reason=e.reason,
            ) from e
        public = next(w.public for w in history if w.kid == kid)
        return VerifiedConsent(receipt, stored.withdrawn_at, stored.recorded, kid, public)

    def consent_status(self, receipt_id: str) -> dict[str, Any]:
        verified = self.verified_consent(receipt_id)
        withdrawn_at = verified.withdrawn_at
        uses = self.store._db.execute(
            "SELECT agency, referral_id, confirmed_at FROM consent_uses WHERE receipt_id = ?"
            " ORDER BY agency, referral_id",
            (receipt_id,),
        ).fetchall()
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
        return C.to_kantara(verified.receipt, controller_public_key=verified.public)

    def withdraw(self, receipt_id: str) -> dict[str, Any]:
        """Withdraw a consent: refuse its later use and ask each recipient to erase."""
        # 404 if unknown, 409 if it does not verify: a forged or altered row must not send
        # erasure requests to other agencies.
        self.verified_consent(receipt_id)
        now = clock.now()
        with self.store.transaction() as db:
            if (
                db.execute(
                    "SELECT withdrawn_at FROM consents WHERE receipt_id = ?", (receipt_id,)
                ).fetchone()[0]
                is not None
            ):
                raise ProblemError(409, "Conflict", "this consent is already withdrawn")
            db.execute(
                "UPDATE consents SET withdrawn_at = ? WHERE receipt_id = ?", (now, receipt_id)
            )
            uses: dict[str, list[str]] = {}
            for agency, referral_id in db.execute(
                "SELECT agency, referral_id FROM consent_uses WHERE receipt_id = ?", (receipt_id,)
            ):
                uses.setdefault(agency, []).append(referral_id)
            for agency, referral_ids in sorted(uses.items()):
                body = canonical_json(
                    {"receipt_id": receipt_id, "referral_ids": sorted(referral_ids)}
                )
                self.send(CONSENT_WITHDRAWAL, body, [agency], db)
            # Erasure at the sender (issue 11): the envelopes sealed to the recipients and
            # the attachment objects go now; the WAL is truncated after the commit.
            erasure.drop_sent(db, sorted({r for ids in uses.values() for r in ids}), now=now)
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
            owned = db.execute(
                "SELECT 1 FROM referrals WHERE referral_id = ? AND counterpart = ? AND"
                " side = 'recipient'",
                (referral_id, sender),
            ).fetchone()
            if owned is None:
                continue  # only what that agency itself sent here
            # Erasure (issue 11): rows deleted, WAL truncated before the confirmation goes.
            erasure.erase_received(db, referral_id, sender)
            erased.append(referral_id)
            self.audit.record(db, "erasure.confirmed", referral_id=referral_id, counterpart=sender)
        now = clock.now()
        erasure.queue_confirmation(
            db,
            erasure.PendingConfirmation(notice["receipt_id"], sender, tuple(erased), now),
        )
        self.erased()  # agents/erasure.py sends it once the WAL no longer holds the bytes
        self.log.info(
            "erasure_done",
            receipt_id=notice["receipt_id"],
            referrals=len(erased),
            counterpart=sender,
        )
        W.enqueue(
            db,
            W.WebhookEvent(
                id=W.new_event_id(),
                type="consent.withdrawn",
                created=now,
                data={
                    "receipt_id": notice["receipt_id"],
                    "referral_ids": sorted(erased),
                    "sender": sender,
                },
            ),
        )

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
        db.execute(
            "UPDATE consent_uses SET confirmed_at = ? WHERE receipt_id = ? AND agency = ?"
            " AND confirmed_at IS NULL",
            (notice["erased_at"], notice["receipt_id"], opened.header.sender),
        )
