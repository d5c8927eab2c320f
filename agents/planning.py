"""Referral planning: what a submitted referral becomes for each recipient (issue 11).

Pure: no I/O, no SQL, no clock (the caller passes `now`). `validate` turns the client's
document into a `Referral` or raises `ReferralInvalid`; `plan` checks the consent (if the
legal basis is consent), routes anonymous notifications to the co-ordinator only, and
minimises the body per recipient to what its roles may receive, returning a `Plan` or raising
one domain error carrying every problem found. The desk (agents/desk.py) looks up what the
plan needs (roles in the directory, the verified consent, the uploaded attachments), then
seals, stores and sends what the plan says.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from keys.policy import Policy

from . import consent as C
from . import referral as R
from .errors import (
    BadRequest,
    BasisNotAllowed,
    ChildRouteIncomplete,
    ConsentDoesNotCover,
    ConsentUnusable,
    ReferralInvalid,
    ReferralUnsendable,
    ServiceNotOffered,
)

#: The role anonymous notifications (and escalations) go to.
COORDINATOR = "coordinator"


@dataclass(frozen=True, slots=True)
class Consent:
    """The verified consent receipt a referral cites, and whether it was withdrawn."""

    receipt: C.ConsentReceipt
    withdrawn: bool


@dataclass(frozen=True, slots=True)
class Delivery:
    """What one recipient gets: the minimised body, and the names of the body fields
    withheld from it (never their values)."""

    recipient: str
    body: dict[str, Any]
    withheld: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Plan:
    referral: R.Referral
    deliveries: tuple[Delivery, ...]
    #: The receipt the referral is sent under (legal basis consent), else None.
    receipt: C.ConsentReceipt | None

    @property
    def bodies(self) -> dict[str, dict[str, Any]]:
        return {d.recipient: d.body for d in self.deliveries}


def validate(document: Mapping[str, Any]) -> R.Referral:
    """The client's document as a `Referral`; `BadRequest` if it sets the referral id (the
    sending agent assigns it), `ReferralInvalid` naming each problem if it is not valid."""
    if document.get("referral_id") is not None:
        raise BadRequest("referral_id is assigned by the sending agent")
    try:
        return R.validate_referral(dict(document))
    except R.ReferralInvalid as e:
        raise ReferralInvalid("the referral is not valid", problems=e.problems) from e


def plan(
    referral: R.Referral,
    *,
    recipients: Sequence[str],
    roles: Mapping[str, Iterable[str]],
    consent: Consent | None,
    now: int,
    attachment_problems: Sequence[str] = (),
    policy: Policy | None = None,
    sender_roles: Iterable[str] = (),
    offered: Callable[[str, str], bool] = lambda agency, service_id: False,
) -> Plan:
    """Per recipient (in order) the body it may receive, or a domain error with every problem.

    `roles` gives each recipient's roles in the directory; `consent` is the verified receipt
    the referral cites (None if it cites none, or none by its id is recorded);
    `attachment_problems` are what the caller found wrong with the cited uploads; `policy`
    is the trusted directory's national policy (None: spec_version 1) and `sender_roles`
    this agency's roles, which together decide whether a basis other than consent stands
    (`BasisNotAllowed`, PROTOCOL §7.11), and whether a child's referral has what the child
    route needs (`ChildRouteIncomplete`, §8.2 step 4); `offered(agency, service_id)` says
    whether a service is in that agency's current verified catalogue (`ServiceNotOffered`,
    §8.2 step 5: by default none is)."""
    problem = service_problem(referral, recipients=recipients, offered=offered)
    if problem is not None:
        raise ServiceNotOffered(problem, member="service")
    problem = R.basis_problem(referral, policy=policy, sender_roles=sender_roles)
    if problem is not None:
        raise BasisNotAllowed(problem)
    problem = R.child_route_problem(
        referral, policy=policy, recipient_roles=[roles[r] for r in recipients]
    )
    if problem is not None:
        raise ChildRouteIncomplete(problem)
    receipt = usable_receipt(referral, consent, now=now)
    problems = list(attachment_problems)
    only_coverage = not problems
    deliveries = []
    for recipient in recipients:
        its_roles = tuple(roles[recipient])
        body = dict(referral.body)
        if referral.referral_type == "anonymous_notification":
            if COORDINATOR not in its_roles:
                problems.append(f"{recipient}: anonymous notifications go to the co-ordinator")
                only_coverage = False
                continue
            try:
                body = R.anonymise(R.strip_identifying(body))
            except R.ReferralInvalid as e:
                problems += e.problems
                only_coverage = False
                continue
        allowed = R.categories_for(its_roles, child=referral.is_child, policy=policy)
        body = R.minimise(body, allowed)
        if receipt is not None:
            problems += _uncovered(receipt, referral, recipient, its_roles, body, now)
        withheld = tuple(sorted(set(referral.body) - set(body)))
        deliveries.append(Delivery(recipient, body, withheld))
    if problems:
        kind = ConsentDoesNotCover if only_coverage else ReferralUnsendable
        raise kind("the referral cannot be sent as it is", problems=problems)
    return Plan(referral, tuple(deliveries), receipt)


def service_problem(
    referral: R.Referral, *, recipients: Sequence[str], offered: Callable[[str, str], bool]
) -> str | None:
    """Why the referral's `service` cannot be asked for, or None (PROTOCOL §8.2 step 5): its
    agency is not a recipient, or that agency's current verified catalogue (§8.8) does not
    list the service. Ids only: both are codes, never personal data."""
    if referral.service is None:
        return None
    agency, service_id = referral.service
    if agency not in recipients:
        return f"service: agency {agency} is not among the recipients"
    if not offered(agency, service_id):
        return (
            f"service: {agency} offers no service {service_id} in its current catalogue "
            "(GET /v1/services)"
        )
    return None


def usable_receipt(
    referral: R.Referral, consent: Consent | None, *, now: int
) -> C.ConsentReceipt | None:
    """The receipt a referral under legal basis consent is sent under (None for another
    basis); `ConsentUnusable` if it names none, none by its id is recorded, or it is not in
    force at `now`."""
    if referral.legal_basis != "consent":
        return None
    if referral.consent_receipt_id is None:
        raise ConsentUnusable("legal basis consent needs consent_receipt_id")
    if consent is None:
        raise ConsentUnusable(
            "no consent receipt with this id was recorded at this agency; nothing was sent"
        )
    if not C.is_live(consent.receipt, now=now, withdrawn=consent.withdrawn):
        raise ConsentUnusable("the consent receipt is withdrawn or expired; nothing was sent")
    return consent.receipt


def _uncovered(
    receipt: C.ConsentReceipt,
    referral: R.Referral,
    recipient: str,
    roles: Sequence[str],
    body: Mapping[str, Any],
    now: int,
) -> list[str]:
    """What the receipt does not cover of `body` to `recipient`: empty if one of its roles
    is covered, else the problems for the last role tried."""
    present = set(R.categories_present(body))
    missing: list[str] = []
    for role in roles:
        missing = C.uncovered(
            receipt,
            recipient=recipient,
            role=role,
            purpose=referral.purpose,
            categories=present,
            now=now,
        )
        if not missing:
            return []
    return missing
