"""Identification cases and decisions at an agent (docs/PROTOCOL.md §8.7).

At a competent authority: a case opens when it accepts a referral of type `nrm_full`
(`open_case`, in the transition's transaction); `decide` checks the step against the case
table (agents/cases.py) and the second-stage interval, signs the decision with a key valid
now, and seals one `identification-decision` per recipient (the opening referral's owner and
every coordinator, with the reason) in one transaction with the case's new state; `leave`
and the timer's `closed` step end the case (§8.7 "Leaving the process and closing"). At every
receiver: `on_decision` runs the checks of agents/decisions.py against this agency's state
and stores the decision as signed; `decisions` verifies each again when it is read.
"""

from __future__ import annotations

import datetime
import secrets
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from nacl.signing import SigningKey

from keys import AgencyKeys, Opened, UnexpectedMessageError, UntrustedInputError
from keys import decision as D
from keys import protection as P
from keys.directory import Directory
from keys.policy import MIN_REFLECTION_DAYS, RECONSIDERATION_WINDOW_DAYS, SECOND_STAGE_MIN_DAYS
from keys.roles import COMPETENT_AUTHORITY
from runtime import clock

from . import cases
from . import errors as E
from . import protections as PR
from . import webhooks as W
from .audit import AuditTrail
from .decisions import (
    IDENTIFICATION_DECISION,
    Copy,
    DecisionMessage,
    UnderPair,
    check_received,
    recipients,
)
from .desk import ESCALATION_ROLE, Sender, valid_signing_key
from .protections import PROTECTION_NOTICE, NoticeMessage
from .reconsideration import (
    RECONSIDERATION_REQUEST,
    ReconsiderationRequest,
    last_taken,
    window_ends,
)
from .reconsideration import check_received as check_request
from .store import Case, Store, StoredDecision, StoredNotice, StoredRequest

log = structlog.get_logger("nrm.identification")

#: The referral type whose acceptance by a competent authority opens a case (§8.7).
CASE_REFERRAL_TYPE = "nrm_full"
_DAY = 86_400
#: Without a policy, `ending-soon` this many days before a period ends (keys.policy's default).
REFLECTION_WARN_DAYS = 7


@dataclass
class Identification:
    agency: str
    store: Store
    audit: AuditTrail
    send: Sender
    keys: Callable[[], AgencyKeys]
    directory: Callable[[], Directory]
    coordinators: Callable[[int], list[str]]
    #: How far a decision's `decided_at` may be from its envelope's `created`
    #: (Limits.clock_skew_seconds, PROTOCOL §8.7 `misdated`).
    skew: int
    #: The longest a message may travel (Limits.message_ttl_seconds): how late after its
    #: window a reconsideration request may still arrive (§8.7).
    ttl: int = 14 * 24 * 3600

    def __post_init__(self) -> None:
        self.log = log.bind(agency=self.agency)

    def _min_days(self) -> int:
        policy = self.directory().policy
        return SECOND_STAGE_MIN_DAYS if policy is None else policy.second_stage_min_days

    def _reflection_warn_days(self) -> int:
        policy = self.directory().policy
        return REFLECTION_WARN_DAYS if policy is None else policy.reflection_warn_days

    def _window_days(self) -> int:
        policy = self.directory().policy
        return RECONSIDERATION_WINDOW_DAYS if policy is None else policy.reconsideration_window_days

    def _reflection_min_days(self) -> int:
        policy = self.directory().policy
        return MIN_REFLECTION_DAYS if policy is None else policy.reflection_min_days

    # --- the authority ------------------------------------------------------------------------

    def is_authority(self) -> bool:
        directory = self.directory()
        return (
            self.agency in directory and COMPETENT_AUTHORITY in directory.agency(self.agency).roles
        )

    def open_case(
        self, db: sqlite3.Connection, owner: str, referral_id: str, *, child: bool
    ) -> str:
        """Open the case of the referral (owner, referral_id) this authority just accepted."""
        now = clock.now()
        case_id = secrets.token_hex(16)
        route = "child" if child else "adult"
        self.store.open_case(
            db, Case(case_id, owner, referral_id, cases.open_state(), route, now, now)
        )
        self.log.info("case_opened", case_id=case_id, referral_id=referral_id)
        return case_id

    def cases(self, *, after: str, limit: int) -> list[dict[str, Any]]:
        return [_case_doc(c) for c in self.store.cases_page(after=after, limit=limit)]

    def case(self, case_id: str) -> dict[str, Any]:
        with self.store.transaction() as db:
            found = self.store.case(db, case_id)
            if found is None:
                raise E.NotFound("no case with this id at this agency")
            held = self.store.decisions_of_case(db, self.agency, case_id)
            notices = self.store.notices_of_case(db, self.agency, case_id)
            requests = self.store.requests_of_case(db, case_id)
        return {
            **_case_doc(found),
            "decisions": [self._decision_doc(d) for d in held],
            "protections": self._protections_doc(notices),
            "reconsiderations": [_request_doc(r) for r in requests],
        }

    def link(self, case_id: str, referral_id: str) -> dict[str, Any]:
        """Name a referral this authority sent (to a provider) as one of the case's, so that
        its recipient gets the case's decisions while its pair is accepted or in progress.
        404 for an unknown case or a referral this agency did not send; 409 (naming its
        `case_id`) for a referral of another case: one case per referral. Idempotent. On
        newly linking, each provider it makes a recipient gets, in the link's transaction,
        every decision and notice of the case so far (§8.7 "Late copies")."""
        with self.store.transaction() as db:
            case = self.store.case(db, case_id)
            if case is None:
                raise E.NotFound("no case with this id at this agency")
            if not any(
                side == "sender" for _, side, _ in self.store.pairs(self.agency, referral_id)
            ):
                raise E.NotFound("no referral with this id sent by this agency")
            holder = self.store.case_of_referral(db, referral_id)
            if holder is not None and holder != case_id:
                raise E.Conflict("the referral belongs to another case", case_id=holder)
            self.store.link_case_referral(db, case_id, referral_id)
            if holder is None:
                self._late_copies(db, case, referral_id)
        return {"case_id": case_id, "referral_id": referral_id}

    def provider_accepted(self, db: sqlite3.Connection, referral_id: str, provider: str) -> None:
        """`provider` accepted this agency's referral `referral_id` (in the transition's
        transaction): if the referral is linked to a case, it is now a recipient of the
        case and gets the case so far (§8.7 "Late copies"), as on linking."""
        case_id = self.store.case_of_referral(db, referral_id)
        case = None if case_id is None else self.store.case(db, case_id)
        if case is not None:
            self._late_copies(db, case, referral_id, only=provider)

    def _late_copies(
        self, db: sqlite3.Connection, case: Case, referral_id: str, only: str | None = None
    ) -> None:
        """Send the providers that `referral_id` (newly linked, or newly accepted by `only`)
        makes recipients of the case (§8.7 "Who receives it") what the others hold already:
        every decision of the case (first stage first, each after the one it supersedes,
        without the reason), then every
        notice, each chain in order; each as the normal message with its normal audit."""
        copies = [
            c
            for c in self._copies(db, case, clock.now())
            if c.owner == self.agency
            and c.referral_id == referral_id
            and not c.with_reason
            and only in (None, c.recipient)
        ]
        if not copies:
            return
        held = _in_order(self.store.decisions_of_case(db, self.agency, case.case_id))
        notices = self.store.notices_of_case(db, self.agency, case.case_id)
        for copy in copies:
            for d in held:
                shown = DecisionMessage(d.signed, copy.owner, copy.referral_id, None, None)
                self._send_decision(db, copy, shown, (("stage", d.stage), ("outcome", d.outcome)))
            for n in notices:
                notice = PR.claimed(n.signed)
                self._send_notice(
                    db, copy, n.signed, notice.event, notice.protection, notice.reason
                )
        self.log.info("case_copies_sent", case_id=case.case_id, referral_id=referral_id)

    def _send_decision(
        self,
        db: sqlite3.Connection,
        copy: Copy,
        message: DecisionMessage,
        labels: tuple[tuple[str, str], ...],
    ) -> None:
        """Seal one copy of a decision (audit `identification.sent`, the outbox)."""
        self.send(
            IDENTIFICATION_DECISION,
            message.encode(),
            [copy.recipient],
            db,
            referral_id=copy.referral_id,
            labels=labels,
        )

    def _send_notice(
        self,
        db: sqlite3.Connection,
        copy: Copy,
        signed: bytes,
        event: str,
        protection: str,
        reason: str | None,
    ) -> None:
        """Seal one copy of a notice under the copy's pair (audit `protection.notified`)."""
        self.send(
            PROTECTION_NOTICE,
            NoticeMessage(signed, copy.owner, copy.referral_id).encode(),
            [copy.recipient],
            db,
            referral_id=copy.referral_id,
            labels=(("event", event), ("protection", protection)),
            reason=reason,
        )

    def decide(
        self, case_id: str, *, stage: str, outcome: str, reason: str | None
    ) -> dict[str, Any]:
        """Decide `stage` of the case: 404 unknown case, 409 (`allowed`) a step the case
        table refuses, 409 `already-decided` for a stage it holds a decision of (but in a
        `reconsidering_*` state, where the decision supersedes the stage's last one and
        answers the pending requests), 409 `too-early` before the interval, 422 a wrong
        reason; 409 `not-for-this-role` (with `decides`, the stages it does decide) for a
        stage its directory entry's `decides` leaves out (§7.3): every receiver and the
        ledger would refuse the decision, so nothing is stored or sent."""
        if (stage, outcome) not in cases.DECIDED:
            raise E.Unprocessable("stage must be first or second, outcome positive or negative")
        directory = self.directory()
        entry = directory.agency(self.agency) if self.agency in directory else None
        if entry is None or not entry.decides_stage(stage):
            raise E.Conflict(
                f"this agency's directory entry does not decide the {stage} stage (decides)",
                reason="not-for-this-role",
                decides=[s for s in D.STAGES if entry is not None and entry.decides_stage(s)],
            )
        now = clock.now()
        signing_key, kid = valid_signing_key(self.store, self.keys(), self.agency, at=now)
        with self.store.transaction() as db:
            case = self.store.case(db, case_id)
            if case is None:
                raise E.NotFound("no case with this id at this agency")
            target = cases.DECIDED[(stage, outcome)]
            reconsidering = case.state in cases.RECONSIDERING
            _check_step(case.state, target, reason=reason, supersedes=reconsidering)
            if case.age_route == "child" and reason in D.NOT_FOR_CHILDREN:
                raise E.Unprocessable(f"{reason} is not a reason on the child route")
            of_case = self.store.decisions_of_case(db, self.agency, case_id)
            replaceable = _supersedable(of_case, stage)
            if reconsidering:  # the answer to a request: it replaces the stage's last decision
                if len(replaceable) != 1:
                    raise E.Conflict(
                        f"the case's {stage} stage has no one decision to reconsider",
                        reason="unexpected",
                    )
                (supersedes,) = replaceable
            elif any(d.stage == stage for d in of_case):
                # the decisions held, not only the state: every receiver refuses it (§8.7)
                raise E.Conflict(
                    f"the case's {stage} stage is decided; only a reconsideration supersedes it",
                    reason="already-decided",
                )
            else:
                supersedes = None
            if stage == D.SECOND:
                self._check_interval(db, case_id, now)
            salt = None if reason is None else secrets.token_bytes(D.SALT_BYTES)
            decision = D.Decision(
                decision_id=secrets.token_hex(16),
                authority=self.agency,
                case_id=case_id,
                stage=stage,
                outcome=outcome,
                reason_digest=None if salt is None else D.reason_digest(salt, reason or ""),
                supersedes=supersedes,
                decided_at=now,
                age_route=case.age_route,
            )
            signed = D.sign_decision(decision, signing_key)
            body = DecisionMessage(signed, case.owner, case.referral_id, reason, salt)
            self.store.insert_decision(db, _stored(decision, body, now))
            self.store.set_case_state(db, case_id, target, now)
            if reconsidering:
                self.store.answer_requests(db, case_id, decision.decision_id)
            labels = (("stage", stage), ("outcome", outcome))
            self.audit.record(
                db,
                "identification.decided",
                referral_id=case.referral_id,
                counterpart=case.owner,
                key_ids=(kid,),
                reason=reason,
                labels=(("age_route", case.age_route), *labels),
                at=now,  # its decided_at: both sides count it in the same month (§8.11)
            )
            for copy in self._copies(
                db, case, now
            ):  # one envelope each: the pair and the reason differ (§8.7)
                shown = (
                    body
                    if copy.with_reason
                    else DecisionMessage(signed, copy.owner, copy.referral_id, None, None)
                )
                self._send_decision(db, copy, shown, labels)
            self._protections_follow(db, case, decision, signing_key)
        self.log.info("case_decided", case_id=case_id, stage=stage, outcome=outcome)
        return {**_case_doc(case), "state": target, "decision_id": decision.decision_id}

    def leave(self, case_id: str, *, reason: str) -> dict[str, Any]:
        """The person left the process (§8.7 "Leaving the process and closing"): the case
        moves to `left_process` keeping the reason (audit `case.left`, the reason as its
        reason), a reconsideration request pending ends unanswered (`ended_by`
        `left_process`), and, in the same transaction, what protection runs ends by its
        normal notice to the case's recipients (no-removal `left-process`, reflection
        `person-left`). 404 unknown case, 409 (`allowed`) a step the case table refuses,
        422 a reason it refuses (the API checks it first)."""
        now = clock.now()
        key, _ = valid_signing_key(self.store, self.keys(), self.agency, at=now)
        with self.store.transaction() as db:
            case = self.store.case(db, case_id)
            if case is None:
                raise E.NotFound("no case with this id at this agency")
            _check_step(case.state, cases.LEFT_PROCESS, reason=reason, supersedes=False)
            self.store.leave_case(db, case_id, cases.LEFT_PROCESS, reason, now)
            self.store.end_requests(db, case_id, cases.LEFT_PROCESS)
            self._audit_end(db, case, "case.left", reason)
            self._end_running(
                db,
                case,
                (
                    (P.NO_REMOVAL, PR.SYSTEM, "left-process"),
                    (P.REFLECTION, PR.AUTHORITY, "person-left"),
                ),
                key,
                now,
            )
            left = self.store.case(db, case_id)
            notices = self.store.notices_of_case(db, self.agency, case_id)
        assert left is not None
        self.log.info("case_left", case_id=case_id)
        return {**_case_doc(left), "protections": self._protections_doc(notices)}

    def _audit_end(self, db: sqlite3.Connection, case: Case, kind: str, reason: str | None) -> None:
        """Audit the case's end (`case.left`, `case.closed`): ids only, under its opening
        referral and owner, as `identification.decided` (§9.0)."""
        self.audit.record(
            db, kind, referral_id=case.referral_id, counterpart=case.owner, reason=reason
        )

    def _end_running(
        self,
        db: sqlite3.Connection,
        case: Case,
        ends: tuple[tuple[str, str, str], ...],
        key: SigningKey,
        now: int,
    ) -> None:
        """End each (protection, party, reason) of `ends` whose state lets the party end it
        (agents/protections.py), by its notice; a protection that does not run is left."""
        for protection, party, reason in ends:
            if P.ENDED in PR.allowed(protection, self._state(db, case.case_id, protection), party):
                self._notify(db, case, protection, P.ENDED, party, reason, key, now)

    # --- protections (§8.9) at the authority --------------------------------------------------

    def _protections_follow(
        self, db: sqlite3.Connection, case: Case, decision: D.Decision, key: SigningKey
    ) -> None:
        """What a decision does to the case's protections (agents/protections.py, party
        system): a positive first stage starts no-removal (open-ended) and reflection
        (`reflection_min_days` from the decision's date); a second stage ends no-removal,
        and reflection when the policy ties them (`reflection_ends_with_second_stage`)."""
        day = _date(decision.decided_at)
        if (decision.stage, decision.outcome) == (D.FIRST, D.POSITIVE):
            ends = day + datetime.timedelta(days=self._reflection_min_days())
            for protection, ends_on in ((P.NO_REMOVAL, None), (P.REFLECTION, ends.isoformat())):
                if self._state(db, case.case_id, protection) in (PR.OFF, PR.NONE):
                    self._notify(
                        db,
                        case,
                        protection,
                        P.STARTED,
                        PR.SYSTEM,
                        None,
                        key,
                        decision.decided_at,
                        starts_on=day.isoformat(),
                        ends_on=ends_on,
                    )
        elif decision.stage == D.SECOND:
            policy = self.directory().policy
            ties = policy is not None and policy.reflection_ends_with_second_stage
            for protection, running, tied in (
                (P.NO_REMOVAL, PR.ON, True),
                (P.REFLECTION, PR.RUNNING, ties),
            ):
                if tied and self._state(db, case.case_id, protection) == running:
                    self._notify(
                        db,
                        case,
                        protection,
                        P.ENDED,
                        PR.SYSTEM,
                        "second-stage-decided",
                        key,
                        decision.decided_at,
                    )

    def _copies(self, db: sqlite3.Connection, case: Case, now: int) -> list[Copy]:
        """Who receives the case's decisions and notices (§8.7 "Who receives it")."""
        return recipients(
            opening=(case.owner, case.referral_id),
            coordinators=self.coordinators(now),
            providers=self.store.case_provider_pairs(db, case.case_id, self.agency),
            authority=self.agency,
        )

    def tick(self) -> None:
        """The reflection-end clock (docs/proposals/nrm-process.md §5.4), at an authority:
        each running reflection period of its cases gets `ending-soon` once, from
        `reflection_warn_days` before its `ends_on`, and `ended` (`elapsed`, dated its
        `ends_on`) the day after it; one transaction per case, a step that fails logged
        and tried again next time. Then the cases whose reconsideration window ran out
        close (`_close_lapsed`)."""
        if not self.is_authority():
            return
        now = clock.now()
        today = _date(now)
        warn = datetime.timedelta(days=self._reflection_warn_days())
        with self.store.transaction() as db:
            running = self.store.running_reflections(db, self.agency)
        for case_id in running:
            try:
                with self.store.transaction() as db:
                    case = self.store.case(db, case_id)
                    last = self.store.last_notice(db, self.agency, case_id, P.REFLECTION)
                    if case is None or last is None:
                        continue
                    held = PR.claimed(last.signed)
                    assert held.ends_on is not None  # a reflection period is dated
                    ends = datetime.date.fromisoformat(held.ends_on)
                    if today > ends:
                        step: tuple[str, str | None] = (P.ENDED, "elapsed")
                    elif today >= ends - warn and held.event != P.ENDING_SOON:
                        step = (P.ENDING_SOON, None)
                    else:
                        continue
                    key, _ = valid_signing_key(self.store, self.keys(), self.agency, at=now)
                    event, reason = step
                    ends_on = held.ends_on if event == P.ENDED else None
                    self._notify(
                        db, case, P.REFLECTION, event, PR.SYSTEM, reason, key, now, ends_on=ends_on
                    )
            except (E.DomainError, UntrustedInputError, ValueError) as e:  # a damaged row, say
                self.log.error("reflection_clock_failed", case_id=case_id, error=type(e).__name__)
        self._close_lapsed(now)

    def _close_lapsed(self, now: int) -> None:
        """The authority's `closed` step (§8.7 "Leaving the process and closing"): a case at a
        negative decision whose reconsideration window ran out for any request it may still
        take (`reconsideration_window_days` after its `decided_at`, then the longest a message
        travels and the clock skew, as `reconsideration.check_received` judges) moves to
        `closed` (audit `case.closed`), ending no-removal `window-closed` if it runs, and
        its case system is told (webhook `case.closed`); one transaction per case, a step that fails
        logged and tried again next time. A pending request keeps the case out of those
        states, so it is never closed under one. Only cases whose state is older than that
        bound are read (the state changed with the decision it is at, so `updated` is its
        `decided_at`): a timer run does not decode every negative case of the window."""
        negative = {cases.FIRST_NEGATIVE: D.FIRST, cases.SECOND_NEGATIVE: D.SECOND}
        bound = {"window_days": self._window_days(), "ttl": self.ttl, "skew": self.skew}
        lapsed_before = now - last_taken(0, **bound)  # a decision earlier has lapsed
        with self.store.transaction() as db:
            waiting = self.store.cases_in(db, tuple(negative), updated_before=lapsed_before)
        for case_id in waiting:
            try:
                with self.store.transaction() as db:
                    case = self.store.case(db, case_id)
                    if case is None or case.state not in negative:
                        continue
                    held = self.store.decisions_of_case(db, self.agency, case_id)
                    stage = negative[case.state]
                    last = _supersedable(held, stage)
                    answered = [D.claimed(d.signed) for d in held if d.decision_id in last]
                    if len(answered) != 1:
                        raise ValueError("the case's negative stage has no one last decision")
                    (decision,) = answered
                    if now <= last_taken(decision.decided_at, **bound):
                        continue
                    cases.check(
                        case.state, cases.CLOSED, cases.SYSTEM, reason=None, supersedes=False
                    )
                    self.store.set_case_state(db, case_id, cases.CLOSED, now)
                    self._audit_end(db, case, "case.closed", None)
                    if self._state(db, case_id, P.NO_REMOVAL) == PR.ON:
                        key, _ = valid_signing_key(self.store, self.keys(), self.agency, at=now)
                        self._notify(
                            db, case, P.NO_REMOVAL, P.ENDED, PR.SYSTEM, "window-closed", key, now
                        )
                    closed = self.store.case(db, case_id)
                    assert closed is not None
                    W.enqueue(
                        db,
                        W.WebhookEvent(
                            id=W.new_event_id(),
                            type="case.closed",
                            created=now,
                            data=_case_doc(closed),
                        ),
                    )
                self.log.info("case_closed", case_id=case_id)
            except (E.DomainError, UntrustedInputError, ValueError, cases.CaseStepRefused) as e:
                self.log.error("case_closing_failed", case_id=case_id, error=type(e).__name__)

    def _state(self, db: sqlite3.Connection, case_id: str, protection: str) -> str:
        """The protection's state from its last notice as signed: a damaged row is a 409
        naming why (which the timers log and retry), never a KeyError from an event column
        nothing checks, which would stop the timers for every case."""
        last = self.store.last_notice(db, self.agency, case_id, protection)
        if last is None:
            return PR.state_of(protection, None)
        try:
            event = PR.claimed(last.signed).event
        except UntrustedInputError as e:  # nothing is signed after a damaged notice
            raise E.Conflict(
                f"this case's stored {protection} notice does not decode ({e.reason})",
                reason=e.reason,
            ) from e
        return PR.state_of(protection, event)

    def _notify(
        self,
        db: sqlite3.Connection,
        case: Case,
        protection: str,
        event: str,
        party: str,
        reason: str | None,
        key: SigningKey,
        now: int,
        *,
        starts_on: str | None = None,
        ends_on: str | None = None,
    ) -> P.Notice:
        """Sign the next notice of the case's `protection` chain, store it under the opening
        referral and seal it to each recipient of the case's decisions (one envelope each,
        naming its pair); the step is checked against the protection table and the chain
        rule first (409 `allowed`, 422), so nothing is written for a refused one."""
        last = self.store.last_notice(db, self.agency, case.case_id, protection)
        try:
            held = None if last is None else PR.claimed(last.signed)
        except UntrustedInputError as e:  # a damaged row: nothing is signed after it
            raise E.Conflict(
                f"this case's stored {protection} notice does not decode ({e.reason})",
                reason=e.reason,
            ) from e
        try:
            PR.check(
                protection,
                PR.state_of(protection, None if held is None else held.event),
                event,
                party,
                reason=reason,
            )
        except PR.ProtectionStepRefused as e:
            raise E.TransitionNotAllowed(str(e), allowed=e.allowed) from e
        except ValueError as e:
            raise E.Unprocessable(str(e)) from e
        if starts_on is None:  # a later notice keeps the chain's start
            assert held is not None  # only a started chain has steps without dates
            starts_on = held.starts_on
            if ends_on is None:  # ended: the day it ended; ending-soon: the end, unchanged
                ends_on = _date(now).isoformat() if event == P.ENDED else held.ends_on
        try:
            notice = P.Notice(
                notice_id=secrets.token_hex(16),
                authority=self.agency,
                case_id=case.case_id,
                protection=protection,
                event=event,
                starts_on=starts_on,
                ends_on=ends_on,
                reason=reason,
                at=now,
                previous=None if held is None else held.notice_id,
            )
            P.check_follows(held, notice, reflection_min_days=self._reflection_min_days())
        except (ValueError, UnexpectedMessageError) as e:
            raise E.Unprocessable(str(e)) from e  # an extension not later, say
        signed = P.sign_notice(notice, key)
        self.store.insert_notice(
            db, _stored_notice(notice, case.owner, case.referral_id, signed, now)
        )
        for copy in self._copies(db, case, now):  # the pair differs per copy; nothing else does
            self._send_notice(db, copy, signed, event, protection, reason)
        self.log.info(
            "protection_notified", case_id=case.case_id, protection=protection, step=event
        )
        return notice

    def protect(
        self,
        case_id: str,
        protection: str,
        *,
        event: str,
        reason: str | None,
        ends_on: str | None,
    ) -> dict[str, Any]:
        """The authority's own step of a protection of a case (§5.1, party authority): 404
        unknown case, 409 naming `state` for a case that left the process or closed
        (`cases.ENDED_STATES`: nothing is signed, sent or stored), 409 (`allowed`) a step
        the table refuses, 422 a wrong reason or date (an extension must end later; only
        an extension takes `ends_on`)."""
        if ends_on is not None and event != P.EXTENDED:
            raise E.Unprocessable("only an extension takes ends_on")
        if event == P.EXTENDED and ends_on is None:
            raise E.Unprocessable("an extension needs ends_on")
        now = clock.now()
        signing_key, _ = valid_signing_key(self.store, self.keys(), self.agency, at=now)
        with self.store.transaction() as db:
            case = self.store.case(db, case_id)
            if case is None:
                raise E.NotFound("no case with this id at this agency")
            if case.state in cases.ENDED_STATES:
                raise E.Conflict(
                    f"the case is {case.state}: it takes no protection step; nothing was sent",
                    state=case.state,
                )
            starts_on = _date(now).isoformat() if event == P.NOT_GRANTED else None
            # not-granted opens a chain: a day's period, today (ends_on is a full date)
            notice = self._notify(
                db,
                case,
                protection,
                event,
                PR.AUTHORITY,
                reason,
                signing_key,
                now,
                starts_on=starts_on,
                ends_on=ends_on if starts_on is None else starts_on,
            )
            notices = self.store.notices_of_case(db, self.agency, case_id)
        return {
            "case_id": case_id,
            "notice_id": notice.notice_id,
            "protections": self._protections_doc(notices),
        }

    def _protections_doc(self, notices: list[StoredNotice]) -> dict[str, Any]:
        """Each protection's state and its chain, every notice verified again."""
        doc: dict[str, Any] = {}
        for protection in P.PROTECTIONS:
            chain = [self._notice_doc(n) for n in notices if n.protection == protection]
            last = chain[-1] if chain else None
            doc[protection] = {
                "state": PR.state_of(protection, None if last is None else last["event"]),
                "starts_on": None if last is None else last["starts_on"],
                "ends_on": None if last is None else last["ends_on"],
                "notices": chain,
            }
        return doc

    def _check_interval(self, db: sqlite3.Connection, case_id: str, now: int) -> None:
        min_days = self._min_days()
        for held in self.store.decisions_of_case(db, self.agency, case_id):
            if held.stage == D.FIRST and held.outcome == D.POSITIVE:
                first = D.claimed(held.signed)
                if now < first.decided_at + min_days * _DAY:
                    raise E.Conflict(
                        f"a second stage comes at least {min_days} days after the first",
                        reason="too-early",
                        not_before=first.decided_at + min_days * _DAY,
                    )

    # --- every receiver -----------------------------------------------------------------------

    def _pair_case(
        self, db: sqlite3.Connection, owner: str, referral_id: str, authority: str
    ) -> str | None:
        """The case of `authority` the pair is bound to (PROTOCOL §8.7, §8.9 `other-case`):
        that of the first of its decisions held under the pair, else of its notices."""
        return self.store.case_of_pair(
            db, owner, referral_id, authority
        ) or self.store.notice_case_of_pair(db, owner, referral_id, authority)

    def on_decision(self, db: sqlite3.Connection, opened: Opened, message: DecisionMessage) -> None:
        """A decision received: checked in §8.7's order against what this agency holds."""
        sender = opened.header.sender
        claimed = D.claimed(message.signed)
        entry, pair = self._sender_context(db, claimed.authority, message, sender)
        of_case = self.store.decisions_of_case(db, claimed.authority, claimed.case_id)

        def first() -> D.Decision | None:  # verified only once the sender checks passed
            for held in of_case:
                if held.stage == D.FIRST and held.outcome == D.POSITIVE:
                    return D.verify_decision(
                        held.signed, history=self.store.key_history(held.authority)
                    )
            return None

        decision = check_received(
            message,
            sender=sender,
            created=opened.header.created,
            skew=self.skew,
            authority=entry,
            history=self.store.key_history(claimed.authority),
            pair=pair,
            held_stages={held.stage for held in of_case},
            supersedable=_supersedable(of_case, claimed.stage),
            first=first,
            min_days=self._min_days(),
        )
        now = clock.now()
        stored = _stored(decision, message, now)
        if not self.store.insert_decision(db, stored):
            raise UnexpectedMessageError("a decision this agency holds already")
        self._received(
            db,
            ("identification.received", "decision.received"),
            message.referral_id,
            sender,
            labels=(("stage", decision.stage), ("outcome", decision.outcome)),
            reason=None,
            data=self._decision_doc(stored),
        )

    def on_notice(self, db: sqlite3.Connection, opened: Opened, message: NoticeMessage) -> None:
        """A protection notice received: checked in §8.9's order against what this agency
        holds, and stored as the next link of its chain."""
        sender = opened.header.sender
        claimed = PR.claimed(message.signed)
        entry, pair = self._sender_context(db, claimed.authority, message, sender)

        def held() -> P.Notice | None:  # verified again, once the sender checks passed
            last = self.store.last_notice(
                db, claimed.authority, claimed.case_id, claimed.protection
            )
            if last is None:
                return None
            return P.verify_notice(last.signed, history=self.store.key_history(last.authority))

        notice = PR.check_received(
            message,
            sender=sender,
            created=opened.header.created,
            skew=self.skew,
            authority=entry,
            history=self.store.key_history(claimed.authority),
            pair=pair,
            held=held,
            reflection_min_days=self._reflection_min_days(),
        )
        now = clock.now()
        stored = _stored_notice(notice, message.owner, message.referral_id, message.signed, now)
        if not self.store.insert_notice(db, stored):
            raise UnexpectedMessageError("a notice this agency holds already")
        self._received(
            db,
            ("protection.received", "protection.received"),
            message.referral_id,
            sender,
            labels=(("event", notice.event), ("protection", notice.protection)),
            reason=notice.reason,
            data=self._notice_doc(stored),
        )

    def _sender_context(
        self,
        db: sqlite3.Connection,
        authority: str,
        message: DecisionMessage | NoticeMessage,
        sender: str,
    ) -> tuple[D.Decider | None, UnderPair]:
        """The trusted directory's entry for the document's `authority` (None if it lists
        none), and what this agency holds under the message's pair: whether it holds it
        with `sender` as counterpart or owner, or is a coordinator (which holds every pair
        of the referrals it oversees), whether it erased the referral it received under it
        (PROTOCOL §8.5), and the case of `authority` it is bound to."""
        directory = self.directory()
        entry = directory.agency(authority) if authority in directory else None
        own_roles = directory.agency(self.agency).roles if self.agency in directory else ()
        shared = ESCALATION_ROLE in own_roles or (
            self.store.pair(db, message.owner, message.referral_id, sender) is not None
        )
        pair = UnderPair(
            shared=shared,
            erased=self.store.erased_received(db, message.owner, message.referral_id),
            bound=self._pair_case(db, message.owner, message.referral_id, authority),
        )
        return entry, pair

    def _received(
        self,
        db: sqlite3.Connection,
        kinds: tuple[str, str],
        referral_id: str,
        sender: str,
        *,
        labels: tuple[tuple[str, str], ...],
        reason: str | None,
        data: dict[str, Any],
    ) -> None:
        """Audit a stored decision or notice (`kinds`: the audit kind, the webhook type) and
        tell this agency's system, in the message's transaction."""
        audit_kind, webhook_type = kinds
        self.audit.record(
            db,
            audit_kind,
            referral_id=referral_id,
            counterpart=sender,
            reason=reason,
            labels=labels,
        )
        W.enqueue(
            db,
            W.WebhookEvent(id=W.new_event_id(), type=webhook_type, created=clock.now(), data=data),
        )

    # --- a party asking for reconsideration (§8.7 "Reconsideration requests") ---------------

    def request_reconsideration(
        self, referral_id: str, *, sender: str | None, decision_id: str, ground: str
    ) -> dict[str, Any]:
        """Ask the authority to reconsider a decision this agency holds under the referral's
        pair as that pair's party (its own referral, or the authority's referral to it):
        404 for none (a coordinator's copy included: it does not ask), 409 naming `reason`
        for one that does not verify, or is `not-negative`, `superseded`, of an authority the
        directory no longer lists as one (`not-for-this-role`), or `out-of-time`.
        One `reconsideration-request` sealed to the authority (audit
        `reconsideration.requested`, the ground as its reason)."""
        now = clock.now()
        with self.store.transaction() as db:
            held = self._held_as_party(db, referral_id, sender, decision_id)
            decision = self._verified(held, "nothing was sent")
            if decision.outcome != D.NEGATIVE:
                raise E.Conflict("only a negative decision is reconsidered", reason="not-negative")
            if _superseded(
                self.store.decisions_of_case(db, held.authority, held.case_id), decision_id
            ):
                raise E.Conflict("a later decision supersedes this one", reason="superseded")
            directory = self.directory()
            if decision.authority not in directory or COMPETENT_AUTHORITY not in (
                directory.agency(decision.authority).roles
            ):
                raise E.Conflict(
                    "the decision's authority is no competent authority of the directory now;"
                    " nothing was sent",
                    reason="not-for-this-role",
                )
            window = self._window_days()
            if now > window_ends(decision, window_days=window):
                raise E.Conflict(
                    f"reconsideration is asked for within {window} days of the decision",
                    reason="out-of-time",
                )
            request = ReconsiderationRequest(
                request_id=secrets.token_hex(16),
                decision_id=decision_id,
                owner=held.owner,
                referral_id=held.referral_id,
                ground=ground,
                at=now,
            )
            self.send(
                RECONSIDERATION_REQUEST,
                request.encode(),
                [held.authority],
                db,
                referral_id=held.referral_id,
                labels=(("stage", decision.stage),),
                reason=ground,
            )
        self.log.info("reconsideration_requested", case_id=decision.case_id, stage=decision.stage)
        return {
            "request_id": request.request_id,
            "decision_id": decision_id,
            "authority": decision.authority,
            "case_id": decision.case_id,
            "stage": decision.stage,
            "ground": ground,
            "at": now,
            "owner": held.owner,
            "referral_id": held.referral_id,
        }

    def on_reconsideration(
        self, db: sqlite3.Connection, opened: Opened, message: ReconsiderationRequest
    ) -> None:
        """A request received at this authority: checked in §8.7 "Reconsideration requests"
        order against its own decision, case and pairs; stored, and the case moved to
        `reconsidering_*` (the case table's step), in the message's transaction."""
        sender = opened.header.sender
        found = self.store.decision(db, self.agency, message.decision_id)
        found_case = "" if found is None else found.case_id
        case = None if found is None else self.store.case(db, found_case)
        decision = None if found is None or case is None else D.claimed(found.signed)
        of_case = [] if case is None else self.store.decisions_of_case(db, self.agency, found_case)
        decision = check_request(
            message,
            created=opened.header.created,
            skew=self.skew,
            decision=decision,
            shared=case is not None and self._asks_as_party(db, case, sender, message),
            superseded=decision is not None and _superseded(of_case, decision.decision_id),
            state=None if case is None else case.state,
            window_days=self._window_days(),
            received_at=clock.now(),
            ttl=self.ttl,
        )
        assert case is not None  # check_request refuses a request naming no case
        target = {D.FIRST: cases.RECONSIDERING_FIRST, D.SECOND: cases.RECONSIDERING_SECOND}[
            decision.stage
        ]
        try:
            cases.check(case.state, target, cases.AUTHORITY, reason=None, supersedes=False)
        except (cases.CaseStepRefused, ValueError) as e:  # the checks above make it allowed
            raise UnexpectedMessageError("the case table refuses the step") from e
        now = clock.now()
        stored = StoredRequest(
            requester=sender,
            request_id=message.request_id,
            case_id=case.case_id,
            decision_id=decision.decision_id,
            stage=decision.stage,
            ground=message.ground,
            owner=message.owner,
            referral_id=message.referral_id,
            at=message.at,
            received_at=now,
        )
        if not self.store.insert_request(db, stored):
            raise UnexpectedMessageError("a request this authority holds already")
        self.store.set_case_state(db, case.case_id, target, now)
        self._received(
            db,
            ("reconsideration.received", "reconsideration.received"),
            message.referral_id,
            sender,
            labels=(("stage", decision.stage),),
            reason=message.ground,
            data=_request_doc(stored),
        )
        self.log.info("reconsideration_received", case_id=case.case_id, stage=decision.stage)

    def _asks_as_party(
        self, db: sqlite3.Connection, case: Case, sender: str, message: ReconsiderationRequest
    ) -> bool:
        """Whether `sender` received the case's decisions under the request's pair as that
        pair's party: the owner of the opening referral while this authority holds it
        (not erased), or the provider holding this authority's referral linked to the case,
        accepted or in progress, that is no coordinator (a coordinator gets its copy under
        the opening pair, to oversee; §8.7)."""
        pair = (message.owner, message.referral_id)
        if pair == (case.owner, case.referral_id):
            erased = self.store.erased_received(db, case.owner, case.referral_id)
            return sender == case.owner and not erased
        if sender in self.coordinators(clock.now()):
            return False
        return message.owner == self.agency and (
            message.referral_id,
            sender,
        ) in self.store.case_provider_pairs(db, case.case_id, self.agency)

    def _held_as_party(
        self, db: sqlite3.Connection, referral_id: str, sender: str | None, decision_id: str
    ) -> StoredDecision:
        """The decision `decision_id` held under a pair of `referral_id` (of `sender`, when
        named) of which this agency is the party the decision went to: the owner of its own
        referral, or the recipient of the authority's referral; 404 otherwise."""
        owners = self.store.owners_of(referral_id)
        for owner in owners if sender is None else [o for o in owners if o == sender]:
            for held in self.store.decisions_of_pair(owner, referral_id):
                if held.decision_id != decision_id:
                    continue
                if owner == self.agency or (
                    owner == held.authority and self.store.holds_received(db, owner, referral_id)
                ):
                    return held
        raise E.NotFound("no decision with this id held under this referral as its party")

    def protections(self, owner: str, referral_id: str) -> list[dict[str, Any]]:
        """The notices held under the pair, each verified again (409 if one does not)."""
        return [self._notice_doc(n) for n in self.store.notices_of_pair(owner, referral_id)]

    def _notice_doc(self, held: StoredNotice) -> dict[str, Any]:
        try:
            notice = P.verify_notice(held.signed, history=self.store.key_history(held.authority))
        except UntrustedInputError as e:
            raise E.Conflict(
                f"a stored protection notice does not verify ({e.reason}); nothing was returned",
                reason=e.reason,
            ) from e
        fields = {name: getattr(notice, name) for name in P.Notice.WIRE.fields}
        return {**fields, "owner": held.owner, "referral_id": held.referral_id}

    def decisions(self, owner: str, referral_id: str) -> list[dict[str, Any]]:
        """The decisions held under the pair, each verified again (409 if one does not)."""
        return [self._decision_doc(d) for d in self.store.decisions_of_pair(owner, referral_id)]

    def _verified(self, held: StoredDecision, outcome: str) -> D.Decision:
        """A held decision verified again under the key history (§7.9); 409 naming the
        failure's reason, and `outcome` (what was not done), if it does not verify."""
        try:
            return D.verify_decision(held.signed, history=self.store.key_history(held.authority))
        except UntrustedInputError as e:
            raise E.Conflict(
                f"a stored decision does not verify ({e.reason}); {outcome}", reason=e.reason
            ) from e

    def _decision_doc(self, held: StoredDecision) -> dict[str, Any]:
        decision = self._verified(held, "nothing was returned")
        return {
            "decision_id": decision.decision_id,
            "authority": decision.authority,
            "case_id": decision.case_id,
            "stage": decision.stage,
            "outcome": decision.outcome,
            "reason": held.reason,
            "decided_at": decision.decided_at,
            "age_route": decision.age_route,
            "supersedes": decision.supersedes,
            "owner": held.owner,
            "referral_id": held.referral_id,
        }


def _check_step(state: str, target: str, *, reason: str | None, supersedes: bool) -> None:
    """The authority's step of the case table (agents/cases.py): 409 (`allowed`) a step it
    refuses, 422 a wrong reason or `supersedes`."""
    try:
        cases.check(state, target, cases.AUTHORITY, reason=reason, supersedes=supersedes)
    except cases.CaseStepRefused as e:
        raise E.TransitionNotAllowed(str(e), allowed=e.allowed) from e
    except ValueError as e:
        raise E.Unprocessable(str(e)) from e


def _stored(decision: D.Decision, message: DecisionMessage, at: int) -> StoredDecision:
    return StoredDecision(
        authority=decision.authority,
        decision_id=decision.decision_id,
        case_id=decision.case_id,
        stage=decision.stage,
        outcome=decision.outcome,
        owner=message.owner,
        referral_id=message.referral_id,
        signed=message.signed,
        reason=message.reason,
        salt=message.salt,
        stored_at=at,
    )


def _stored_notice(
    notice: P.Notice, owner: str, referral_id: str, signed: bytes, at: int
) -> StoredNotice:
    return StoredNotice(
        authority=notice.authority,
        notice_id=notice.notice_id,
        case_id=notice.case_id,
        protection=notice.protection,
        event=notice.event,
        owner=owner,
        referral_id=referral_id,
        signed=signed,
        stored_at=at,
    )


def _in_order(held: list[StoredDecision]) -> list[StoredDecision]:
    """One case's decisions in the order a receiver accepts them (§8.7): the first stage
    first, and within a stage each after the decision it supersedes (stored in the same
    second, the stored order need not say)."""
    replaces = {d.decision_id: D.claimed(d.signed).supersedes for d in held}

    def depth(decision_id: str) -> int:
        steps, replaced = 0, replaces.get(decision_id)
        while replaced is not None and steps <= len(replaces):  # bounded: a loop is damage
            steps, replaced = steps + 1, replaces.get(replaced)
        return steps

    return sorted(held, key=lambda d: (d.stage != D.FIRST, depth(d.decision_id)))


def _superseded(held: list[StoredDecision], decision_id: str) -> bool:
    """Whether one of `held` (one case's decisions) supersedes `decision_id`."""
    return any(D.claimed(d.signed).supersedes == decision_id for d in held)


def _supersedable(held: list[StoredDecision], stage: str) -> set[str]:
    """The ids of the decisions of `stage` among `held` (one case's) that a decision after
    reconsideration may replace (§8.7): negative ones none of `held` supersedes, and of the
    first stage only while no second-stage decision is held (only a negative decision is
    reconsidered, and a second stage stands on the first)."""
    replaced = {D.claimed(d.signed).supersedes for d in held}
    if stage == D.FIRST and any(d.stage == D.SECOND for d in held):
        return set()
    return {
        d.decision_id
        for d in held
        if d.stage == stage and d.outcome == D.NEGATIVE and d.decision_id not in replaced
    }


def _request_doc(r: StoredRequest) -> dict[str, Any]:
    """A stored request as the authority's API and webhook show it."""
    return {
        "request_id": r.request_id,
        "requester": r.requester,
        "case_id": r.case_id,
        "decision_id": r.decision_id,
        "stage": r.stage,
        "ground": r.ground,
        "at": r.at,
        "received_at": r.received_at,
        "owner": r.owner,
        "referral_id": r.referral_id,
        "pending": r.pending,
        "answered_by": r.answered_by,
        "ended_by": r.ended_by,
    }


def _date(at: int) -> datetime.date:
    """The UTC date of Unix seconds `at`."""
    return datetime.datetime.fromtimestamp(at, datetime.UTC).date()


def _case_doc(c: Case) -> dict[str, Any]:
    return {
        "case_id": c.case_id,
        "owner": c.owner,
        "referral_id": c.referral_id,
        "state": c.state,
        "age_route": c.age_route,
        "opened_at": c.opened_at,
        "updated": c.updated,
        "left_reason": c.left_reason,
    }
