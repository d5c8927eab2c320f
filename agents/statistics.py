"""Statistics contributions between agents (docs/PROTOCOL.md §8.11).

At a competent authority, the agent's timers (`tick`) seal each month's contribution
(agents/contributions.py, computed from its own cases and the opening referrals it holds)
to every rapporteur of its directory once `contribution_grace_days` passed since the month
ended, and record the month sent to each in the same transaction (`contributions_sent`),
so that a restart never sends one twice; a copy that failed for good is sealed again
(MAX_ATTEMPTS), and a rapporteur that cannot be sealed to now gets the month once it can.
At a rapporteur, `on_contribution` runs the sender checks and keeps the body, sealed under
the storage key, with the envelope; `listing` serves them, and `verify_held` shows one is
what the ledger's `statistics.contributed` names (PROTOCOL §8.11). The person data stays
inside the sealed body: the ledger gets `statistics.contributed` / `.received` with the
envelope's hash and the label `period`, the logs ids and months only.

    authority                                   rapporteur
    tick: month due, not sent  -- statistics-contribution -->  checks, stores (sealed),
      contributions_sent (per rapporteur)                        statistics.received
      statistics.contributed (per copy)
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from nacl.secret import SecretBox

from keys import Limits, Opened, UnexpectedMessageError, UntrustedInputError
from keys import decision as D
from keys.directory import Directory
from keys.policy import Statistics
from keys.roles import COMPETENT_AUTHORITY, RAPPORTEUR
from runtime import clock

from . import contributions as S
from . import webhooks as W
from .audit import AuditTrail
from .desk import Sender, sealable_with_role
from .store import ContributionCopy, Store, StoredContribution

log = structlog.get_logger("nrm.statistics")

#: How many times a month is sealed to one rapporteur whose copies fail for good (refused,
#: expired): past them the month is given up for that rapporteur, logged once.
MAX_ATTEMPTS = 5
#: The webhook event a rapporteur's system gets for each contribution accepted.
RECEIVED_EVENT = "statistics.received"
#: How the agent reads the opening referral (owner, referral_id) it holds: the referral
#: document, or None once erased.
ReferralReader = Callable[[str, str], Mapping[str, Any] | None]


@dataclass
class StatisticsDesk:
    agency: str
    store: Store
    audit: AuditTrail
    send: Sender
    directory: Callable[[], Directory]
    referral: ReferralReader
    #: The agent's limits: its own body is decoded by them before it is sent, and
    #: `clock_skew_seconds` is how early a contribution's envelope may be dated (§8.11).
    limits: Limits
    #: The storage key's box: a held contribution's body is kept sealed under it, as the
    #: desk keeps a received referral's (docs/DESIGN.md "At rest").
    storage: Callable[[], SecretBox]
    #: The agent's open_envelope at a past time: a held envelope (verified and decrypted
    #: with this agency's keys as they stood when it arrived) to its body.
    reopen: Callable[[bytes, int], bytes]

    def __post_init__(self) -> None:
        self.log = log.bind(agency=self.agency)
        #: (period, rapporteur) pairs logged `statistics_recipient_unusable` by this process.
        self._told: set[tuple[str, str]] = set()

    def _roles(self, agency: str) -> frozenset[str]:
        directory = self.directory()
        return frozenset(directory.agency(agency).roles) if agency in directory else frozenset()

    # --- the authority ------------------------------------------------------------------------

    def tick(self) -> None:
        """Seal every month's contribution that is due to a rapporteur and not sent to it
        yet, or whose copy to it failed for good (refused, expired, its keys revoked; at
        most MAX_ATTEMPTS sends), oldest first, one envelope to those rapporteurs in one
        transaction (the envelope queued, the month marked sent to each, the audit events).
        A rapporteur that cannot be sealed to now is left out and gets the month once it
        can. The cases are read once per tick, and only when a month is to be sent."""
        if COMPETENT_AUTHORITY not in self._roles(self.agency):
            return
        directory = self.directory()
        now = clock.now()
        unusable: list[str] = []
        rapporteurs = sealable_with_role(
            directory, RAPPORTEUR, me=self.agency, now=now, unusable=unusable.append
        )
        if not rapporteurs and not unusable:
            return  # the months wait until a rapporteur is listed
        policy = directory.policy
        grace = (policy.statistics if policy else Statistics()).contribution_grace_days
        with self.store.transaction() as db:
            first = self.store.first_case_opened(db)
        if first is None:
            return
        facts: list[S.CaseFacts] | None = None
        for period in S.periods_due(first, now, grace):
            with self.store.transaction() as db:
                copies = self.store.copies_sent(db, period)
                for rapporteur, copy in copies.items():
                    if copy.failed and copy.attempts == MAX_ATTEMPTS:  # logged once
                        self.store.give_up_contribution(db, period, rapporteur)
                        self.log.error("statistics_contribution_given_up", period=period,
                                       rapporteur=rapporteur, attempts=copy.attempts)  # fmt: skip
                for rapporteur in unusable:
                    if _due(copies.get(rapporteur)) and (period, rapporteur) not in self._told:
                        self._told.add((period, rapporteur))  # once a month, not every tick
                        self.log.warning("statistics_recipient_unusable", period=period,
                                         rapporteur=rapporteur)  # fmt: skip
                due = [r for r in rapporteurs if _due(copies.get(r))]
                if not due:
                    continue
                try:
                    facts = self._facts(db) if facts is None else facts
                    contribution = S.compute(period, self.agency, facts)
                    body = contribution.encode()
                    S.Contribution.decode(body, limits=self.limits)  # never what must be refused
                except (UntrustedInputError, ValueError) as e:  # a damaged row: send no count
                    self.log.error("statistics_contribution_failed", period=period,
                                   error=type(e).__name__)  # fmt: skip
                    return  # tried again next time, the months in order
                message_id = self.send(
                    S.STATISTICS_CONTRIBUTION, body, due, db, labels=(("period", period),)
                )
                for rapporteur in due:
                    self.store.mark_contributed(db, period, rapporteur, message_id, now)
            self.log.info(
                "statistics_contributed", period=period, message_id=message_id, rapporteurs=due
            )

    def _facts(self, db: sqlite3.Connection) -> list[S.CaseFacts]:
        out = []
        for case in self.store.all_cases(db):
            decisions = tuple(
                S.DecisionFact(d.stage, d.outcome, _decided_at(d.signed))
                for d in self.store.decisions_of_case(db, self.agency, case.case_id)
            )
            referral = self.referral(case.owner, case.referral_id)
            person = S.person_of(referral, age_route=case.age_route)
            out.append(S.CaseFacts(person, case.opened_at, decisions))
        return out

    # --- the rapporteur -----------------------------------------------------------------------

    def on_contribution(
        self, db: sqlite3.Connection, opened: Opened, contribution: S.Contribution
    ) -> None:
        """§8.11's receiver checks after decoding (inbound.py checked the role and the body),
        then the contribution stored with `statistics.received`; the same bytes again change
        nothing, other bytes for a month held are `unexpected`."""
        h = opened.header
        S.check_sender(
            contribution,
            sender=h.sender,
            sender_roles=self._roles(h.sender),
            created=h.created,
            skew=self.limits.clock_skew_seconds,
        )
        held = self.store.held_contribution(db, contribution.authority, contribution.period)
        if held is not None:
            if self._body(held) == opened.body:
                return
            raise UnexpectedMessageError("a second, different contribution of a month held")
        stored = StoredContribution(
            authority=contribution.authority,
            period=contribution.period,
            sealed_body=bytes(self.storage().encrypt(opened.body)),
            envelope_hash=opened.envelope_hash,
            received_at=clock.now(),
            envelope=opened.envelope,
        )
        self.store.insert_contribution(db, stored)
        self.audit.record(
            db,
            "statistics.received",
            counterpart=h.sender,
            envelope_hash=opened.envelope_hash,
            key_ids=(h.sender_kid,),
            labels=(("period", contribution.period),),
        )
        W.enqueue(
            db,
            W.WebhookEvent(
                id=W.new_event_id(),
                type=RECEIVED_EVENT,
                created=stored.received_at,
                data={  # ids and the month only: the counts are read over the API
                    "authority": stored.authority,
                    "period": stored.period,
                    "envelope_hash": stored.envelope_hash,
                    "received_at": stored.received_at,
                },
            ),
        )
        self.log.info("statistics_received", authority=h.sender, period=contribution.period)

    def policy(self) -> dict[str, int] | None:
        """The trusted directory's `statistics` (PROTOCOL §7.11), None without a policy: what
        the rapporteur's report applies."""
        policy = self.directory().policy
        if policy is None:
            return None
        st = policy.statistics
        return {
            "k": st.k,
            "round_to": st.round_to,
            "contribution_grace_days": st.contribution_grace_days,
        }

    def listing(self, period: str) -> list[dict[str, Any]]:
        """The contributions held for `period` (the API's `GET /v1/contributions`)."""
        out = []
        for held in self.store.contributions_of(period):
            doc = json.loads(self._body(held))
            out.append(
                {
                    "authority": held.authority,
                    "period": held.period,
                    "envelope_hash": held.envelope_hash,
                    "received_at": held.received_at,
                    "cells": doc["cells"],
                    "durations": doc["durations"],
                }
            )
        return out

    def verify_held(
        self, authority: str, period: str, entries: Iterable[Mapping[str, Any]]
    ) -> S.Contribution:
        """The contribution held of `authority` for `period`, shown against the ledger's
        `entries` (with their `leaf`) to be what the authority sealed (S.verify_held); a
        KeyError when none is held."""
        with self.store.transaction() as db:
            held = self.store.held_contribution(db, authority, period)
        if held is None:
            raise KeyError("no contribution of this authority and period is held")
        return S.verify_held(
            authority=authority,
            period=period,
            body=self._body(held),
            envelope=held.envelope,
            held_hash=held.envelope_hash,
            rapporteur=self.agency,
            entries=entries,
            reopen=lambda envelope: self.reopen(envelope, held.received_at),
            limits=self.limits,
        )

    def _body(self, held: StoredContribution) -> bytes:
        """The body of a held contribution, opened with the storage key; a row that does not
        open (damaged, or sealed under another key) raises CryptoError."""
        return bytes(self.storage().decrypt(held.sealed_body))


def _due(copy: ContributionCopy | None) -> bool:
    """Whether a month is to be sealed to a rapporteur: never sent to it, or its copy failed
    for good and fewer than MAX_ATTEMPTS were sent."""
    return copy is None or (copy.failed and copy.attempts < MAX_ATTEMPTS)


def _decided_at(signed: bytes) -> int:
    """The `decided_at` of this authority's own decision as it signed it."""
    return D.claimed(signed).decided_at
