"""Break-glass referrals at their sender (docs/PROTOCOL.md §8.2 step 2; issue 15 §10).

An adult's referral under `vital_interests` without the consent otherwise required, with a
reason of the national policy's `break_glass.reasons`, is not sent when it is submitted: it
is held (`awaiting_confirmation`) until a second API client of this agency, one with another
client name and the `confirm` scope, confirms it within the policy's `confirm_seconds`. Only
then is it minimised, sealed and sent, its routing part carrying `break_glass`
`{"reason", "confirmed": true}`. The second client may refuse it instead; left alone, it
lapses. Each step is one transaction with its audit event (`break-glass.requested`,
`.confirmed`, `.refused`, `.lapsed`, label `client`, reason the break-glass reason).

The lifecycle of a hold, normative (copied to PROTOCOL §8.2):

    | from                    | to        | party         | requires                          |
    |-------------------------|-----------|---------------|-----------------------------------|
    | `awaiting_confirmation` | submitted | second client | another client name, scope        |
    |                         |           |               | confirm, before `confirm_by`      |
    | `awaiting_confirmation` | refused   | second client | the same, and a refusal reason    |
    | `awaiting_confirmation` | lapsed    | system        | `confirm_by` has come             |

`confirm_by` is the request's time plus the policy's `confirm_seconds` at that time. Every
decision drops the held document and its key and has the WAL truncated (agents/erasure.py),
so nothing of a refused or lapsed one is left to recover. The follow-up (a consent linked
afterwards) is not built yet.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import nacl.exceptions
import structlog
from nacl.secret import SecretBox

from keys.codec import canonical_json
from keys.directory import Directory
from runtime import clock

from . import errors as E
from . import webhooks as W
from .audit import AuditTrail
from .desk import Desk
from .store import Hold, Store

log = structlog.get_logger("nrm.break_glass")

AWAITING: Final = "awaiting_confirmation"
SUBMITTED: Final = "submitted"
REFUSED: Final = "refused"
LAPSED: Final = "lapsed"
#: Every state of a hold, the waiting one first.
STATES: Final = (AWAITING, SUBMITTED, REFUSED, LAPSED)
SECOND_CLIENT: Final = "second-client"
SYSTEM: Final = "system"
#: (from, to) -> the party that may make the step (the module docstring's table).
TABLE: Final[Mapping[tuple[str, str], str]] = {
    (AWAITING, SUBMITTED): SECOND_CLIENT,
    (AWAITING, REFUSED): SECOND_CLIENT,
    (AWAITING, LAPSED): SYSTEM,
}
#: Why a second client refuses a break-glass referral (codes only: never free text).
REFUSAL_REASONS: Final = ("consent-obtainable", "not-justified", "not-urgent", "wrong-recipients")
#: The webhook event that tells this agency's systems a hold waits for its second client.
REQUESTED_EVENT: Final = "break_glass.requested"


def may_move(from_state: str, to_state: str, party: str) -> bool:
    """Whether `party` may move a hold from `from_state` to `to_state`."""
    if from_state not in STATES or to_state not in STATES:
        raise ValueError("unknown break-glass state")
    return TABLE.get((from_state, to_state)) == party


def lapsed(confirm_by: int, now: int) -> bool:
    """Whether a hold whose confirmation is due at `confirm_by` can no longer be confirmed."""
    return now >= confirm_by


def view(hold: Hold) -> dict[str, Any]:
    """A hold as the API shows it: codes, client names and times only."""
    return {
        "reason": hold.reason,
        "state": hold.state,
        "requested_by": hold.requested_by,
        "requested_at": hold.requested_at,
        "confirm_by": hold.confirm_by,
        "decided_by": hold.decided_by,
        "decided_at": hold.decided_at,
        "refusal": hold.refusal,
    }


@dataclass
class BreakGlass:
    """The holds of this agency's break-glass referrals."""

    agency: str
    store: Store
    audit: AuditTrail
    desk: Desk
    directory: Callable[[], Directory]
    storage: Callable[[], SecretBox]
    #: Called with the number of copies a confirmation queued (the agent's metrics).
    on_sent: Callable[[int], None] = lambda copies: None
    #: Called after a commit that dropped a held document (the eraser then truncates the
    #: WAL, which still holds the pages with the sealed document and its sealed key).
    erased: Callable[[], None] = lambda: None

    def request(
        self,
        *,
        recipients: Sequence[str],
        document: dict[str, Any],
        client: str,
        client_reference: str | None = None,
    ) -> dict[str, Any]:
        """Check the referral as if it were sent now (every refusal answers now), then hold
        it unsent until a second client confirms it; nothing is sealed to anyone."""
        glass = document.get("break_glass")
        if isinstance(glass, dict) and "confirmed" in glass:
            raise E.Unprocessable(
                "break_glass.confirmed is set by the sending agent once a second API client "
                "confirmed the referral: leave it out",
                problems=["/referral/break_glass/confirmed: not accepted from the client"],
            )
        referral, plan = self.desk.prepare(
            recipients=recipients, document=document, client_reference=client_reference
        )
        policy = self.directory().policy
        if referral.break_glass_reason is None or policy is None:  # prepare refuses both
            raise E.Unprocessable("not a break-glass referral under a national policy")
        now = clock.now()
        referral_id = secrets.token_hex(16)
        data_key = secrets.token_bytes(SecretBox.KEY_SIZE)
        hold = Hold(
            referral_id=referral_id,
            state=AWAITING,
            reason=referral.break_glass_reason,
            requested_by=client,
            requested_at=now,
            confirm_by=now + policy.break_glass.confirm_seconds,
            decided_by=None,
            decided_at=None,
            refusal=None,
            recipients=tuple(plan.bodies),
            client_reference=client_reference,
        )
        with self.store.transaction() as db:
            self.store.hold_break_glass(
                db,
                hold,
                sealed_key=bytes(self.storage().encrypt(data_key)),
                document=bytes(SecretBox(data_key).encrypt(canonical_json(document))),
            )
            self._audit(db, "break-glass.requested", hold, client)
            W.enqueue(
                db,
                W.WebhookEvent(
                    id=W.new_event_id(),
                    type=REQUESTED_EVENT,
                    created=now,
                    data={
                        "referral_id": referral_id,
                        "reason": hold.reason,
                        "requested_by": client,
                        "confirm_by": hold.confirm_by,
                    },
                ),
            )
        log.info("break_glass_requested", referral_id=referral_id, client=client)
        result: dict[str, Any] = {
            "id": referral_id,
            "state": AWAITING,
            "recipients": list(hold.recipients),
            "break_glass": view(hold),
        }
        if client_reference is not None:
            result["client_reference"] = client_reference
        return result

    def confirm(self, referral_id: str, *, client: str) -> dict[str, Any]:
        """The second client confirms: the referral is planned again (the directory may have
        changed), sealed and sent, marked confirmed, in one transaction with the hold's
        step (nested in the caller's)."""
        hold = self._waiting(referral_id, client, SUBMITTED)
        document = self._document(referral_id)
        if document is None:
            raise E.Conflict("the break-glass referral no longer waits", state=hold.state)
        document["break_glass"] = {**document["break_glass"], "confirmed": True}
        try:
            _, plan = self.desk.prepare(recipients=hold.recipients, document=document)
        except E.ServiceNotOffered as e:
            # Judged again now (PROTOCOL §8.2 step 5): the provider's catalogue may have
            # changed while the hold waited. The held document cannot be changed: it stays
            # unsendable until it is refused or lapses.
            raise E.ServiceNotOffered(
                f"{e.detail}; the held break-glass referral cannot be sent as it is: refuse it"
                f" (POST /v1/referrals/{referral_id}/break-glass/refuse) or let it lapse, and"
                " submit it"
                " again",
                member="service",
            ) from e
        now = clock.now()
        with self.store.transaction() as db:
            if not self.store.decide_break_glass(db, referral_id, SUBMITTED, by=client, at=now):
                raise E.Conflict("the break-glass referral no longer waits")
            self._audit(db, "break-glass.confirmed", hold, client)
            result = self.desk.send_planned(
                plan, referral_id=referral_id, client_reference=hold.client_reference
            )
        self.erased()
        self.on_sent(len(result["recipients"]))
        log.info("break_glass_confirmed", referral_id=referral_id, client=client)
        decided = self.store.break_glass_hold(referral_id)
        return {**result, "break_glass": None if decided is None else view(decided)}

    def refuse(self, referral_id: str, *, client: str, reason: str) -> dict[str, Any]:
        """The second client refuses: nothing is sent, the held document is dropped."""
        if reason not in REFUSAL_REASONS:
            raise E.BadRequest("reason must be one of: " + ", ".join(REFUSAL_REASONS))
        hold = self._waiting(referral_id, client, REFUSED)
        with self.store.transaction() as db:
            if not self.store.decide_break_glass(
                db, referral_id, REFUSED, by=client, at=clock.now(), refusal=reason
            ):
                raise E.Conflict("the break-glass referral no longer waits")
            self._audit(db, "break-glass.refused", hold, client)
        self.erased()
        log.info("break_glass_refused", referral_id=referral_id, client=client)
        return self.status(referral_id)

    def tick(self, now: int | None = None) -> None:
        """Lapse every hold whose `confirm_by` has come (the agent's timers, whatever the
        agency's standing or directory: a held document is never kept past its time)."""
        now = clock.now() if now is None else now
        dropped = False
        for hold in self.store.lapsing_break_glass(now):
            if not may_move(hold.state, LAPSED, SYSTEM) or not lapsed(hold.confirm_by, now):
                continue
            with self.store.transaction() as db:
                if self.store.decide_break_glass(db, hold.referral_id, LAPSED, by=None, at=now):
                    self._audit(db, "break-glass.lapsed", hold, hold.requested_by)
                    dropped = True
            log.warning("break_glass_lapsed", referral_id=hold.referral_id)
        if dropped:
            self.erased()

    def status(self, referral_id: str, *, document: bool = False) -> dict[str, Any]:
        """A hold as the API shows it: 404 if this agency holds none by this id. With
        `document` (a client that may confirm), a waiting one's referral document as it was
        submitted, so that the second client decides on what it would send."""
        hold = self.store.break_glass_hold(referral_id)
        if hold is None:
            raise E.NotFound("no break-glass referral with this id at this agency")
        result: dict[str, Any] = {
            "id": referral_id,
            "side": "sender",
            "sender": self.agency,
            "state": hold.state,
            "recipients": list(hold.recipients),
            "client_reference": hold.client_reference,
            "break_glass": view(hold),
        }
        # Shown only while it may still be confirmed: once `confirm_by` has come the timers
        # erase it, and nobody reads it in the meantime.
        waiting = hold.state == AWAITING and not lapsed(hold.confirm_by, clock.now())
        held = self._document(referral_id) if document and waiting else None
        if held is not None:
            result["referral"] = held
        return result

    def _document(self, referral_id: str) -> dict[str, Any] | None:
        """The held referral document of a waiting hold, opened; None if none waits."""
        sealed = self.store.break_glass_document(referral_id)
        if sealed is None:
            return None
        try:
            data_key = self.storage().decrypt(sealed[0])
            document: dict[str, Any] = json.loads(SecretBox(data_key).decrypt(sealed[1]))
        except (nacl.exceptions.CryptoError, ValueError) as e:
            raise E.Unavailable("the held referral cannot be opened with this storage key") from e
        return document

    def held(self, referral_id: str) -> Hold | None:
        return self.store.break_glass_hold(referral_id)

    def _waiting(self, referral_id: str, client: str, to_state: str) -> Hold:
        """The waiting hold `client` may move to `to_state` now, or the refusal: 404 none,
        409 no longer waiting or lapsed, 403 the client that asked."""
        hold = self.store.break_glass_hold(referral_id)
        if hold is None:
            raise E.NotFound("no break-glass referral with this id at this agency")
        if hold.state != AWAITING:
            raise E.Conflict(f"the break-glass referral is {hold.state}", state=hold.state)
        if lapsed(hold.confirm_by, clock.now()):
            raise E.Conflict("the break-glass referral lapsed unconfirmed", state=LAPSED)
        if client == hold.requested_by:
            raise E.Forbidden(
                "a break-glass referral is confirmed or refused by another API client than "
                "the one that submitted it"
            )
        if not may_move(hold.state, to_state, SECOND_CLIENT):  # the table, not a shortcut
            raise E.Conflict("this step is not in the break-glass table")
        return hold

    def _audit(self, db: Any, kind: str, hold: Hold, client: str) -> None:
        self.audit.record(
            db,
            kind,
            referral_id=hold.referral_id,
            reason=hold.reason,
            labels=(("client", client),),
        )
