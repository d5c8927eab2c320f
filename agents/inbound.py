"""Receiver-side checks of every message body (docs/PROTOCOL.md §6.4): pure, no I/O.

The envelope layer (keys/envelope.py, §4.7) proves who sent a message and that it is for this
agency; it says nothing of what the body holds. The sender's own checks (validation,
minimisation, anonymisation) are not to be trusted either: a compromised or careless agency
holds valid keys. So before anything of a message is stored or acted on, the agent hands its
kind and body to `check`, with its own directory roles, and gets back the parsed value or one
`UntrustedInputError` whose `reason` names the failure (keys/errors.py): decoded strictly
(`malformed`, `too-deep`, `out-of-range`), then the shape of the kind (`unknown-member`,
`schema-invalid`, for transitions `unknown-reason-code`), then what this agency's roles may
receive (`not-for-this-role`, `category-not-allowed`, `not-anonymous`), whether the
national policy lets the sender's roles use the referral's legal basis (`unlawful-basis`), and
whether the service a referral names is one its provider offers (`unknown-service`).

Nothing here puts a received value into an error message: bodies are personal data.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final

from keys import Limits
from keys.codec import parse_json
from keys.errors import (
    CategoryNotAllowedError,
    ChildRouteIncompleteError,
    NotAnonymousError,
    NotForThisRoleError,
    SchemaInvalidError,
    UnexpectedMessageError,
    UnknownMemberError,
    UnknownServiceError,
    UnlawfulBasisError,
)
from keys.policy import Policy
from keys.subjects import AGENCY_ID_PATTERN

from . import clocks
from . import lifecycle as L
from . import referral as R
from .attachments import decode_key
from .contributions import STATISTICS_CONTRIBUTION, Contribution
from .contributions import decode_at as decode_contribution
from .decisions import IDENTIFICATION_DECISION, DecisionMessage
from .messages import (
    CONSENT_WITHDRAWAL,
    DELIVERY_RECEIPT,
    ERASURE_CONFIRMATION,
    ESCALATION,
    NOTIFIED_REASONS,
    OVERDUE,
    REFERRAL,
    REFUSAL,
    TRANSITION,
    DeliveryReceipt,
    Refusal,
)
from .protections import PROTECTION_NOTICE, NoticeMessage
from .reconsideration import RECONSIDERATION_REQUEST, ReconsiderationRequest, decode_at
from .resend import RESEND_REQUEST, ResendRequest
from .transfers import (
    CASE_OWNER_CHANGED,
    CASE_TRANSFER,
    TRANSFER_REQUEST,
    TRANSFER_STEP,
    CaseOwnerChanged,
    CaseTransfer,
    TransferRequest,
    TransferStep,
    decode_owner_changed_at,
)

__all__ = [
    "ANONYMOUS",
    "COORDINATOR",
    "KINDS",
    "Checked",
    "CheckedReferral",
    "CheckedTransfer",
    "ConsentWithdrawal",
    "ErasureConfirmation",
    "Escalation",
    "Overdue",
    "ServiceView",
    "check",
]

#: The role that receives escalations, overdue notices and anonymous notifications
#: (PROTOCOL.md §8.2, §8.5).
COORDINATOR: Final = "coordinator"
ANONYMOUS: Final = "anonymous_notification"
#: The members of a referral message (§6.1).
REFERRAL_MESSAGE_MEMBERS: Final = frozenset({"referral", "attachment_key"})

_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_RECEIPT_ID = re.compile(
    r"^([0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$"
)


@dataclass(frozen=True, slots=True)
class CheckedReferral:
    """A received referral that passed every check: its routing and body (`referral`), the
    id its sender assigned, and the key of the attachments it cites (None if none)."""

    referral: R.Referral
    referral_id: str
    attachment_key: bytes | None


@dataclass(frozen=True, slots=True)
class CheckedTransfer:
    """A received `case-transfer` (PROTOCOL §8.10) that passed every check: its decoded
    body (`transfer`) and R judged by every `referral` row of §6.4, as the referral of a
    `referral` message is (`referral`)."""

    transfer: CaseTransfer
    referral: CheckedReferral


@dataclass(frozen=True, slots=True)
class ConsentWithdrawal:
    """`consent-withdrawal` (§8.5): erase what you hold from me under this receipt."""

    receipt_id: str
    referral_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ErasureConfirmation:
    """`erasure-confirmation` (§8.5): these referrals were erased at `erased_at`."""

    receipt_id: str
    referral_ids: tuple[str, ...]
    erased_at: int


@dataclass(frozen=True, slots=True)
class Escalation:
    """`escalation` (§8.5): metadata of an urgent referral nobody acknowledged in time."""

    referral_id: str
    recipient: str
    urgency: str
    submitted_at: int


@dataclass(frozen=True, slots=True)
class Overdue:
    """`overdue` (§8.5): metadata of a clock of the sender's that passed its due time."""

    clock: str
    due_at: int
    recipient: str
    referral_id: str
    started_at: int
    urgency: str


@dataclass(frozen=True, slots=True)
class ServiceView:
    """What a receiver knows to judge a referral's `service` (PROTOCOL §6.4, §8.2 step 5):
    its own agency id, whether a service id is one a catalogue of its own listed within a
    message's life (agents/storage/own_services.py), and which agencies its trusted directory
    lists with a provider role. Its agent judges nothing before it read the services bucket
    once (agents/transport.py), so its own catalogue is never unread here."""

    me: str
    own: Callable[[str], bool]
    is_provider: Callable[[str], bool]


Checked = (
    CheckedReferral
    | CheckedTransfer
    | DeliveryReceipt
    | L.Transition
    | ConsentWithdrawal
    | ErasureConfirmation
    | Escalation
    | Overdue
    | ResendRequest
    | Refusal
    | DecisionMessage
    | NoticeMessage
    | ReconsiderationRequest
    | TransferRequest
    | TransferStep
    | Contribution
    | CaseOwnerChanged
)


def check(
    kind: str,
    body: bytes,
    *,
    roles: Collection[str],
    limits: Limits,
    policy: Policy | None = None,
    sender_roles: Collection[str] = (),
    services: ServiceView | None = None,
) -> Checked:
    """The checked body of a message of `kind` received by an agency holding `roles` (from
    the trusted directory), or raise the `UntrustedInputError` of its first failure.
    `policy` (the trusted directory's, None for spec_version 1) and `sender_roles` decide
    whether a referral's legal basis stands (`unlawful-basis`, PROTOCOL §7.11); `services`
    whether the service it names stands (`unknown-service`; None: no service does)."""
    if isinstance(roles, str) or isinstance(sender_roles, str):
        raise TypeError("roles must be a collection of role names")
    checker = _CHECKERS.get(kind)
    if checker is None:
        raise UnexpectedMessageError("a message of a kind this agent does not know")
    checked = checker(body, frozenset(roles), limits)
    if isinstance(checked, Escalation):
        escalating = _ESCALATING if policy is None else L.acknowledge_limits({}, policy)
        if checked.urgency not in escalating:
            raise SchemaInvalidError("an escalation of an urgency that has no acknowledge clock")
    if isinstance(checked, Overdue):
        if checked.urgency not in clocks.limits(checked.clock, policy=policy):
            raise SchemaInvalidError(
                "an overdue notice of a clock the national policy does not run"
            )
        due = clocks.due_at(checked.clock, checked.urgency, checked.started_at, policy=policy)
        if due != checked.due_at:
            raise SchemaInvalidError(
                "an overdue notice whose due_at is not the national policy's for its tier"
            )
    # R of a case transfer is judged as any received referral (PROTOCOL §8.10)
    referral = checked.referral if isinstance(checked, CheckedTransfer) else checked
    if isinstance(referral, CheckedReferral):
        _judge(referral, roles=roles, policy=policy, sender_roles=sender_roles, services=services)
    return checked


def _judge(
    checked: CheckedReferral,
    *,
    roles: Collection[str],
    policy: Policy | None,
    sender_roles: Collection[str],
    services: ServiceView | None,
) -> None:
    """§6.4's referral rows that need the directory: the legal basis, the child route, the
    categories a child's referral may carry, the service it names."""
    problem = R.basis_problem(
        checked.referral, policy=policy, sender_roles=sender_roles, received=True
    )
    if problem is not None:  # codes only: the basis and the sender's roles
        raise UnlawfulBasisError(problem)
    problem = R.child_route_problem(checked.referral, policy=policy)
    if problem is not None:  # codes only: the basis and the policy's list
        raise ChildRouteIncompleteError(problem)
    known = sorted(r for r in roles if r in R.ROLE_CATEGORIES)
    allowed = R.categories_for(known, child=checked.referral.is_child, policy=policy)
    if set(R.categories_present(checked.referral.body)) - allowed:
        raise CategoryNotAllowedError(
            "a child's identity reaches only the roles of the national policy's "
            "child_identity_roles"
        )
    if checked.referral.service is not None:
        _check_service(checked.referral.service, services)


def _check_service(service: tuple[str, str], view: ServiceView | None) -> None:
    """A referral's `service` (PROTOCOL §6.4, §8.2 step 5): naming the receiver, a service one
    of its own catalogues listed within a message's life (expired, signed by a key since
    rotated, or left out since: the sender checked the catalogue it saw); naming another
    agency, one its directory lists as a provider (a receiver sees its own copy only: whether
    that agency is a recipient too, and what its catalogue lists, are the sender's checks).
    Ids only in the refusal."""
    agency, service_id = service
    if view is None:
        raise UnknownServiceError("a referral naming a service, with no services known")
    if agency == view.me:
        if not view.own(service_id):
            raise UnknownServiceError(
                f"service {service_id} is in no catalogue of this agency's within a message's life"
            )
    elif not view.is_provider(agency):
        raise UnknownServiceError(f"service of {agency}, which holds no provider role")


# --- JSON kinds ---------------------------------------------------------------------------------


def _json(body: bytes, limits: Limits, what: str) -> Any:
    return parse_json(
        body,
        max_bytes=limits.max_body_bytes,
        max_depth=limits.max_body_depth,
        max_integer=limits.max_json_integer,
        what=what,
    )


def _members(doc: Mapping[str, Any], allowed: Collection[str], what: str) -> None:
    """Refuse a member `allowed` does not name (its name is not repeated: it may be data)."""
    extra = sum(1 for name in doc if name not in allowed)
    if extra:
        raise UnknownMemberError(f"{what} has {extra} member(s) its format does not define")


def _object(
    body: bytes, limits: Limits, what: str, fields: Mapping[str, Callable[[Any], bool]]
) -> dict[str, Any]:
    """A JSON object with exactly `fields`, each value passing its predicate."""
    doc = _json(body, limits, what)
    if not isinstance(doc, dict):
        raise SchemaInvalidError(f"{what} must be a JSON object")
    _members(doc, fields, what)
    for name, ok in fields.items():
        if name not in doc:
            raise SchemaInvalidError(f"{what}: {name} is required")
        if not ok(doc[name]):
            raise SchemaInvalidError(f"{what}: {name} is not as §6.4 requires")
    return doc


def _uint(value: Any) -> bool:
    return type(value) is int and value >= 0


def _hex32(value: Any) -> bool:
    return isinstance(value, str) and _HEX32.fullmatch(value) is not None


def _ids(value: Any) -> bool:
    """Referral ids: distinct, each 32 lowercase hex."""
    return isinstance(value, list) and all(map(_hex32, value)) and len(set(value)) == len(value)


def _receipt_id(value: Any) -> bool:
    return isinstance(value, str) and _RECEIPT_ID.fullmatch(value) is not None


def _urgency(value: Any) -> bool:
    return isinstance(value, str) and value in L.URGENCIES


def _agency(value: Any) -> bool:
    return isinstance(value, str) and AGENCY_ID_PATTERN.fullmatch(value) is not None


def _withdrawal(body: bytes, roles: frozenset[str], limits: Limits) -> ConsentWithdrawal:
    doc = _object(
        body, limits, "consent withdrawal", {"receipt_id": _receipt_id, "referral_ids": _ids}
    )
    return ConsentWithdrawal(doc["receipt_id"], tuple(doc["referral_ids"]))


def _erasure(body: bytes, roles: frozenset[str], limits: Limits) -> ErasureConfirmation:
    doc = _object(
        body,
        limits,
        "erasure confirmation",
        {"receipt_id": _receipt_id, "referral_ids": _ids, "erased_at": _uint},
    )
    return ErasureConfirmation(doc["receipt_id"], tuple(doc["referral_ids"]), doc["erased_at"])


#: Urgencies that escalate without a national policy (lifecycle.DEFAULT_ESCALATION_SECONDS):
#: routine never does.
_ESCALATING: Final = frozenset(L.DEFAULT_ESCALATION_SECONDS)


def _escalation(body: bytes, roles: frozenset[str], limits: Limits) -> Escalation:
    if COORDINATOR not in roles:
        raise NotForThisRoleError("escalations go to coordinators only")
    doc = _object(
        body,
        limits,
        "escalation",
        {
            "referral_id": _hex32,
            "recipient": _agency,
            "urgency": _urgency,
            "submitted_at": _uint,
        },
    )
    return Escalation(doc["referral_id"], doc["recipient"], doc["urgency"], doc["submitted_at"])


def _overdue(body: bytes, roles: frozenset[str], limits: Limits) -> Overdue:
    if COORDINATOR not in roles:
        raise NotForThisRoleError("overdue notices go to coordinators only")
    doc = _object(
        body,
        limits,
        "overdue notice",
        {
            "clock": lambda v: isinstance(v, str) and v in clocks.OVERDUE_CLOCKS,
            "due_at": _uint,
            "recipient": _agency,
            "referral_id": _hex32,
            "started_at": _uint,
            "urgency": _urgency,
        },
    )
    if doc["due_at"] <= doc["started_at"]:
        raise SchemaInvalidError("an overdue notice: due_at must come after started_at")
    return Overdue(**doc)


def _allowed_categories(roles: frozenset[str]) -> frozenset[str]:
    """What an agency of `roles` may receive; a role this agent does not know grants nothing
    (fail closed: a newer directory may name roles an older agent has no table for)."""
    return R.categories_for_roles(sorted(r for r in roles if r in R.ROLE_CATEGORIES))


def _anonymous(body: Mapping[str, Any]) -> None:
    """Refuse anything outside the coded allow-list of an anonymous notification."""
    extra = sum(1 for name in body if name not in R.ANONYMOUS_FIELDS)
    locations = body.get("locations")
    if isinstance(locations, list):
        extra += sum(
            1
            for loc in locations
            if isinstance(loc, dict)
            for name in loc
            if name not in R.ANONYMOUS_LOCATION_FIELDS
        )
    if extra:
        raise NotAnonymousError(
            f"an anonymous notification with {extra} field(s) outside the coded allow-list"
        )


def _referral(body: bytes, roles: frozenset[str], limits: Limits) -> CheckedReferral:
    return _referral_of(_json(body, limits, "referral message"), roles)


def _case_transfer(body: bytes, roles: frozenset[str], limits: Limits) -> CheckedTransfer:
    """§8.10's decoder, then R and `attachment_key` as the referral message they are."""
    transfer = CaseTransfer.decode(body, limits=limits)
    doc: dict[str, Any] = {"referral": dict(transfer.referral)}
    if transfer.attachment_key is not None:
        doc["attachment_key"] = transfer.attachment_key
    return CheckedTransfer(transfer, _referral_of(doc, roles))


def _referral_of(doc: Any, roles: frozenset[str]) -> CheckedReferral:
    """§6.4's rows of a referral message parsed as JSON (`doc`), but those needing the
    directory (`_judge`)."""
    if not isinstance(doc, dict):
        raise SchemaInvalidError("a referral message must be a JSON object")
    _members(doc, REFERRAL_MESSAGE_MEMBERS, "the referral message")
    referral = doc.get("referral")
    if not isinstance(referral, dict):
        raise SchemaInvalidError("a referral message must hold a referral object")
    _members(referral, {*R.ROUTING_FIELDS, "body"}, "the referral")
    content = referral.get("body")
    allowed = _allowed_categories(roles)
    if isinstance(content, dict):
        _members(content, R.FIELD_CATEGORY, "the referral body")
        if referral.get("referral_type") == ANONYMOUS:
            if COORDINATOR not in roles:
                raise NotForThisRoleError("anonymous notifications go to coordinators only")
            _anonymous(content)
        refused = set(R.categories_present(content)) - allowed
        if refused:
            raise CategoryNotAllowedError(
                "the referral carries categories this agency's roles never receive: "
                + ", ".join(sorted(refused))
            )
    try:
        checked = R.validate_received(referral, allowed_categories=allowed)
    except R.ReferralInvalid as e:  # its problems never quote a value (agents/referral.py)
        shown = "; ".join(e.problems[:3])
        raise SchemaInvalidError(f"the referral fails its schema: {shown}") from e
    if checked.referral_id is None:
        raise SchemaInvalidError("a received referral must carry the id its sender assigned")
    key = None
    if "attachments" in checked.body:
        key = decode_key(doc.get("attachment_key"))
        if key is None:
            raise SchemaInvalidError("cited attachments need the attachment key (32 bytes)")
    elif "attachment_key" in doc:
        raise SchemaInvalidError("an attachment key without cited attachments")
    return CheckedReferral(checked, checked.referral_id, key)


# --- msgpack kinds ------------------------------------------------------------------------------


def _receipt(body: bytes, roles: frozenset[str], limits: Limits) -> DeliveryReceipt:
    receipt = DeliveryReceipt.decode(body)
    if not (
        _HEX32.fullmatch(receipt.message_id)
        and _HEX64.fullmatch(receipt.envelope_hash)
        and receipt.received_at >= 0
    ):
        raise SchemaInvalidError("a delivery receipt names a message id, a hash and a time")
    return receipt


def _refusal(body: bytes, roles: frozenset[str], limits: Limits) -> Refusal:
    refusal = Refusal.decode(body)
    if not (
        _HEX32.fullmatch(refusal.message_id)
        and _HEX64.fullmatch(refusal.envelope_hash)
        and refusal.reason in NOTIFIED_REASONS
        and refusal.refused_at >= 0
    ):
        raise SchemaInvalidError("a refusal names a message id, a hash, a reason and a time")
    return refusal


def _transition(body: bytes, roles: frozenset[str], limits: Limits) -> L.Transition:
    return L.Transition.decode(body)  # malformed, unknown-reason/outcome-code, or unexpected


def _resend(body: bytes, roles: frozenset[str], limits: Limits) -> ResendRequest:
    return ResendRequest.decode(body)


def _decision(body: bytes, roles: frozenset[str], limits: Limits) -> DecisionMessage:
    return DecisionMessage.decode(body)  # the rest needs the receiver's state (decisions.py)


def _notice(body: bytes, roles: frozenset[str], limits: Limits) -> NoticeMessage:
    return NoticeMessage.decode(body)  # the rest needs the receiver's state (protections.py)


def _reconsideration(body: bytes, roles: frozenset[str], limits: Limits) -> ReconsiderationRequest:
    return decode_at(body, roles)  # the rest needs the authority's state (reconsideration.py)


def _transfer_request(body: bytes, roles: frozenset[str], limits: Limits) -> TransferRequest:
    return TransferRequest.decode(body)  # the rest needs the owner's pairs (transfer_requests.py)


def _transfer_step(body: bytes, roles: frozenset[str], limits: Limits) -> TransferStep:
    return TransferStep.decode(body)  # the rest needs the state held (transfer_requests.py)


def _contribution(body: bytes, roles: frozenset[str], limits: Limits) -> Contribution:
    return decode_contribution(body, roles, limits=limits)  # the sender's checks: statistics.py


_CHECKERS: Final[Mapping[str, Callable[[bytes, frozenset[str], Limits], Checked]]] = {
    REFERRAL: _referral,
    DELIVERY_RECEIPT: _receipt,
    TRANSITION: _transition,
    CONSENT_WITHDRAWAL: _withdrawal,
    ERASURE_CONFIRMATION: _erasure,
    ESCALATION: _escalation,
    OVERDUE: _overdue,
    RESEND_REQUEST: _resend,
    REFUSAL: _refusal,
    IDENTIFICATION_DECISION: _decision,
    PROTECTION_NOTICE: _notice,
    RECONSIDERATION_REQUEST: _reconsideration,
    TRANSFER_REQUEST: _transfer_request,
    TRANSFER_STEP: _transfer_step,
    STATISTICS_CONTRIBUTION: _contribution,
    CASE_TRANSFER: _case_transfer,
    CASE_OWNER_CHANGED: lambda body, roles, limits: decode_owner_changed_at(body, roles),
}
#: Every message kind an agent receives.
KINDS: Final = frozenset(_CHECKERS)
