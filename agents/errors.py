"""The agent's domain errors: one class per failure kind, raised by the desk, the agent and
the planning, knowing nothing of HTTP. agents/api.py alone maps them to problem+json
(`PROBLEMS` there: status and title per class; `detail` and `extra` become the body).

`detail` and every `extra` member end up in a problem body: never personal data.
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """A refusal the caller can act on: `detail` says what, `extra` adds named members."""

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


# --- the request names something that is not here -------------------------------------------


class NotFound(DomainError):
    """No referral, counterpart, consent receipt or attachment by this name here."""


class Forbidden(DomainError):
    """The client may not do this (beyond its token's scopes: a break-glass referral is
    confirmed by a client other than the one that asked)."""


# --- the request is well formed but conflicts with what is here -----------------------------


class Conflict(DomainError):
    """The request conflicts with the state held here."""


class AlreadyWithdrawn(Conflict):
    """The consent was withdrawn before."""


class AlreadyExists(Conflict):
    """A record with this id (consent receipt) or client_reference (referral) exists."""


class AmbiguousReferralId(Conflict):
    """The id alone names referrals of several senders: `senders` lists them."""

    def __init__(self, detail: str, *, senders: list[str]) -> None:
        super().__init__(detail, senders=senders)


class TransitionNotAllowed(Conflict):
    """The lifecycle does not allow this step from the current state: `allowed` lists what it
    does allow."""


class ConsentUnverifiable(Conflict):
    """A stored consent receipt does not verify (`reason`)."""


class NotYetAvailable(Conflict):
    """The thing exists but is not here yet (an attachment not fetched)."""


# --- the request cannot be acted on as it is ---------------------------------------------------


class BadRequest(DomainError):
    """The request itself is wrong (a field the caller must not set)."""


class Unprocessable(DomainError):
    """The request is understood but cannot be acted on as it is."""


class ReferralInvalid(Unprocessable):
    """The referral does not meet the standard: `problems`, one line each, never a value."""


class ConsentInvalid(Unprocessable):
    """The consent receipt does not meet the standard (`problems`) or names the wrong
    controllers."""


class ConsentUnusable(Unprocessable):
    """The referral's legal basis is consent but its receipt is missing, unknown here,
    withdrawn or expired."""


class BasisNotAllowed(Unprocessable):
    """The referral relies on a legal basis other than consent for an adult, and the
    national policy does not let this agency's roles use that basis without consent
    (PROTOCOL §7.11 `without_consent`)."""


class ChildRouteIncomplete(Unprocessable):
    """A schema v2 referral about a child lacks what the child route needs (PROTOCOL §8.2
    step 4): a child's legal basis, a `legal_basis_ref` of the national policy's list, and
    a guardian, a best-interests assessment or a child-protecting recipient."""


class ServiceNotOffered(Unprocessable):
    """The referral's `service` names an agency that is not among its recipients, or a
    service not in that agency's current verified catalogue (PROTOCOL §8.2 step 5)."""


class ReferralUnsendable(Unprocessable):
    """The referral is valid but cannot go to these recipients as it is (`problems`: consent
    not covering a recipient, an anonymous notification to a non-co-ordinator, attachments
    not matching their uploads)."""


class ConsentDoesNotCover(ReferralUnsendable):
    """Every problem is one of consent coverage."""


class TooLarge(DomainError):
    """A referral or attachment over its limit."""


class Gone(DomainError):
    """The thing was here and is erased (an attachment after consent withdrawal)."""


class Corrupted(Unprocessable):
    """What arrived does not match what the referral promised (an attachment's hash)."""


# --- the agent cannot act now --------------------------------------------------------------------


class Unavailable(DomainError):
    """The agent cannot act now (no trust directory yet, its signing key not valid)."""


class StandingRefusal(Unavailable):
    """The agency cannot send now (`reason`: its standing, or a second agent process)."""

    def __init__(self, detail: str, *, reason: str) -> None:
        super().__init__(detail, reason=reason)


class LedgerUnavailable(Unavailable):
    """No answer from the ledger that verifies (`reason`: no-ledger, no-checkpoint,
    ledger-unreachable, ledger-refused, ledger-unverified): what needs it is not answered
    at all, never in part."""

    def __init__(self, detail: str, *, reason: str) -> None:
        super().__init__(detail, reason=reason)
