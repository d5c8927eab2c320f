"""Case transfers and transfer requests (docs/PROTOCOL.md §8.10): the three new bodies, the
steps of both lifecycles as messages of their own kind `transfer-step`, and the two tables.
Pure, like agents/lifecycle.py and agents/cases.py: what is here fixes their bytes. Agents
send and accept `transfer-request` and `transfer-step` (agents/transfer_requests.py) and
`case-transfer` and `case-owner-changed` (agents/case_transfers.py).

    case-transfer       canonical JSON {"attachment_key"?, "referral": R,
                          "transfer": {"case_id", "reason", "request_id", "transfer_id"}}
    transfer-request    canonical msgpack [1, request_id, case_id, owner, referral_id, reason, at]
    case-owner-changed  canonical msgpack [1, case_id, new_owner, transfer_id, at]
    transfer-step       canonical msgpack [1, kind, id, recipient, from_state, to_state, party,
                                           reason, at]

Coded fields and ids only, but for R, a schema-v2 referral minimised for the transferee.

Normative tables (PROTOCOL §8.10). A step not listed MUST be refused (an agent will answer
409 naming `allowed(kind, state, party)`); `system` steps are each side's own and never sent.

    Case transfer, per transfer_id:
    | from                | to        | party      | requires                              |
    |---------------------|-----------|------------|---------------------------------------|
    | proposed            | delivered | system     | the delivery receipt                  |
    | delivered           | accepted  | transferee |                                       |
    | delivered           | rejected  | transferee | a rejection reason                    |
    | proposed, delivered | revoked   | owner      | a revocation reason (§8.4's codes)    |
    | proposed, delivered | expired   | system     | the due time passed                   |
    | accepted            | completed | owner      | the old pairs cancelled, authority told|

    Transfer request, per request_id:
    | from                | to        | party      | requires                              |
    |---------------------|-----------|------------|---------------------------------------|
    | requested           | delivered | system     | the delivery receipt                  |
    | delivered           | granted   | owner      | (a case-transfer naming the request)  |
    | delivered           | refused   | owner      | a refusal reason                      |
    | requested, delivered| revoked   | requester  |                                       |
    | granted             | fulfilled | system     | the transfer completed                |
    | granted             | lapsed    | system     | the transfer rejected/revoked/expired |
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from keys import codec
from keys.errors import (
    MalformedError,
    NotForThisRoleError,
    SchemaInvalidError,
    UnexpectedMessageError,
    UnknownMemberError,
    UnknownReasonCodeError,
)
from keys.limits import Limits
from keys.roles import COMPETENT_AUTHORITY
from keys.subjects import AGENCY_ID_PATTERN

from .decisions import check_pair
from .lifecycle import REASON_CODES

CASE_TRANSFER: Final = "case-transfer"
TRANSFER_REQUEST: Final = "transfer-request"
CASE_OWNER_CHANGED: Final = "case-owner-changed"
#: Not `transition`: whatever reads a transition takes it for a referral pair's step.
TRANSFER_STEP: Final = "transfer-step"

#: Size limits of the msgpack bodies (PROTOCOL §1.2).
MAX_REQUEST_BYTES: Final = 256
MAX_OWNER_CHANGED_BYTES: Final = 256
MAX_STEP_BYTES: Final = 512
STEP_VERSION: Final = 1

#: Why a case is transferred or asked for: HTCDS `cas_ReasonForOutgoingReferral`, as HTCDS
#: spells it (PROTOCOL §8.10 "Reason codes").
TRANSFER_REASONS: Final[tuple[str, ...]] = (
    "additional_services_required",
    "migration_or_change_of_location",
    "other",
)
#: Why a transferee rejects a transfer (codes of §8.4).
REJECT_REASONS: Final[tuple[str, ...]] = (
    "no-capacity",
    "out-of-area",
    "not-eligible",
    "duplicate",
    "other",
)
#: Why an owner revokes a transfer: any code of §8.4.
REVOKE_REASONS: Final[tuple[str, ...]] = REASON_CODES
#: Why an owner refuses a transfer request.
REFUSE_REASONS: Final[tuple[str, ...]] = (
    "not-owner",
    "in-progress-here",
    "person-declined",
    "other",
)

# --- the lifecycle tables ------------------------------------------------------------------

TRANSFER: Final = "transfer"
REQUEST: Final = "transfer-request"
#: The two kinds a transfer step names.
KINDS: Final[tuple[str, ...]] = (TRANSFER, REQUEST)

PROPOSED: Final = "proposed"
DELIVERED: Final = "delivered"
ACCEPTED: Final = "accepted"
REJECTED: Final = "rejected"
REVOKED: Final = "revoked"
EXPIRED: Final = "expired"
COMPLETED: Final = "completed"
REQUESTED: Final = "requested"
GRANTED: Final = "granted"
REFUSED: Final = "refused"
FULFILLED: Final = "fulfilled"
LAPSED: Final = "lapsed"

OWNER: Final = "owner"
TRANSFEREE: Final = "transferee"
REQUESTER: Final = "requester"
#: Each side's own agent: delivery receipts, timers, the linked transfer's end.
SYSTEM: Final = "system"

#: Every state of each kind, in lifecycle order.
STATES: Final[Mapping[str, tuple[str, ...]]] = {
    TRANSFER: (PROPOSED, DELIVERED, ACCEPTED, REJECTED, REVOKED, EXPIRED, COMPLETED),
    REQUEST: (REQUESTED, DELIVERED, GRANTED, REFUSED, REVOKED, FULFILLED, LAPSED),
}
#: The parties of each kind.
PARTIES: Final[Mapping[str, tuple[str, ...]]] = {
    TRANSFER: (OWNER, TRANSFEREE, SYSTEM),
    REQUEST: (REQUESTER, OWNER, SYSTEM),
}
FINAL_STATES: Final[Mapping[str, frozenset[str]]] = {
    TRANSFER: frozenset({REJECTED, REVOKED, EXPIRED, COMPLETED}),
    REQUEST: frozenset({REFUSED, REVOKED, FULFILLED, LAPSED}),
}
#: The transfer states a timer expires (PROTOCOL §8.10 "Expiry"): no step is taken in them
#: past the due time.
EXPIRABLE: Final = frozenset({PROPOSED, DELIVERED})
#: The state a transfer or a request starts in at each side (PROTOCOL §8.10 "Initial
#: states"): kind -> party -> state. The sender's `system` step to delivered is its own.
INITIAL: Final[Mapping[str, Mapping[str, str]]] = {
    TRANSFER: {OWNER: PROPOSED, TRANSFEREE: DELIVERED},
    REQUEST: {REQUESTER: REQUESTED, OWNER: DELIVERED},
}

#: (kind, from, party) -> {to: the reasons the step takes (empty: none)}.
_TABLE: Final[Mapping[tuple[str, str, str], Mapping[str, tuple[str, ...]]]] = {
    (TRANSFER, PROPOSED, SYSTEM): {DELIVERED: (), EXPIRED: ()},
    (TRANSFER, PROPOSED, OWNER): {REVOKED: REVOKE_REASONS},
    (TRANSFER, DELIVERED, TRANSFEREE): {ACCEPTED: (), REJECTED: REJECT_REASONS},
    (TRANSFER, DELIVERED, OWNER): {REVOKED: REVOKE_REASONS},
    (TRANSFER, DELIVERED, SYSTEM): {EXPIRED: ()},
    (TRANSFER, ACCEPTED, OWNER): {COMPLETED: ()},
    (REQUEST, REQUESTED, SYSTEM): {DELIVERED: ()},
    (REQUEST, REQUESTED, REQUESTER): {REVOKED: ()},
    (REQUEST, DELIVERED, OWNER): {GRANTED: (), REFUSED: REFUSE_REASONS},
    (REQUEST, DELIVERED, REQUESTER): {REVOKED: ()},
    (REQUEST, GRANTED, SYSTEM): {FULFILLED: (), LAPSED: ()},
}

#: What the end of the transfer answering a granted request does to the request.
REQUEST_AFTER_TRANSFER: Final[Mapping[str, str]] = {
    COMPLETED: FULFILLED,
    REJECTED: LAPSED,
    REVOKED: LAPSED,
    EXPIRED: LAPSED,
}


class TransferStepRefused(Exception):
    """A step this party may not take from this state (HTTP 409, naming `allowed`)."""

    def __init__(self, kind: str, state: str, target: str, party: str) -> None:
        self.kind = kind
        self.state = state
        self.target = target
        self.party = party
        self.allowed = allowed(kind, state, party)
        names = ", ".join(self.allowed) if self.allowed else "none"
        super().__init__(
            f"{party} may not move a {kind} from {state} to {target}; allowed: {names}"
        )


class TransferReasonUnknown(ValueError):
    """A reason outside the list its step takes (HTTP 400; on receipt `unknown-reason-code`)."""


def _check_name(value: object, names: Collection[str], what: str) -> None:
    if not (isinstance(value, str) and value in names):
        raise ValueError(f"unknown {what}")  # never the value: it may come from a peer


def allowed(kind: str, state: str, party: str) -> list[str]:
    """The states `party` may move a `kind` (transfer or request) in `state` to (a new list
    each call)."""
    _check_name(kind, KINDS, "transfer kind")
    _check_name(state, STATES[kind], f"{kind} state")
    _check_name(party, PARTIES[kind], f"{kind} party")
    return list(_TABLE.get((kind, state, party), {}))


def check(kind: str, state: str, target: str, party: str, *, reason: str | None) -> None:
    """Return if `party` may move a `kind` from `state` to `target` with `reason`.

    Raises TransferStepRefused (with `.allowed`) for a step not in the table; ValueError for
    unknown names, a reason missing where the step takes one or present where it takes
    none; its subclass TransferReasonUnknown for a reason outside the step's list."""
    _check_name(kind, KINDS, "transfer kind")
    _check_name(target, STATES[kind], f"target {kind} state")
    permitted = allowed(kind, state, party)
    if target not in permitted:
        raise TransferStepRefused(kind, state, target, party)
    reasons = _TABLE[(kind, state, party)][target]
    if reason is not None and not isinstance(reason, str):
        raise ValueError("reason must be a string")
    if reasons:
        if reason is None:
            raise ValueError(f"a {kind} step to {target} needs one of: " + ", ".join(reasons))
        if reason not in reasons:
            raise TransferReasonUnknown(
                f"a {kind} step to {target} takes one of: " + ", ".join(reasons)
            )
    elif reason is not None:
        raise ValueError(f"a {kind} step to {target} has no reason")


# --- the bodies --------------------------------------------------------------------------------


def _hex32(value: object, what: str) -> None:
    if not (isinstance(value, str) and codec.HEX32.fullmatch(value)):
        raise ValueError(f"{what} must be 32 lowercase hex digits")


def _hex32_or_none(value: object, what: str) -> None:
    if value is not None:
        _hex32(value, what)


def _agency(value: object, what: str) -> None:
    if not (isinstance(value, str) and AGENCY_ID_PATTERN.fullmatch(value)):
        raise ValueError(f"{what} must be an agency id")


def _time(value: object) -> None:
    if not (type(value) is int and 0 <= value < 2**63):
        raise ValueError("at must be Unix seconds, 0 <= at < 2^63")


@dataclass(frozen=True, slots=True)
class TransferRequest(codec.Encoded):
    """A `transfer-request` body: the requester asks the owner of the pair (`owner`,
    `referral_id`) it knows the person under for the case."""

    WIRE: ClassVar[codec.Record] = codec.Record(
        "transfer request",
        1,
        ("request_id", "case_id", "owner", "referral_id", "reason", "at"),
    )

    request_id: str
    case_id: str | None
    owner: str
    referral_id: str
    reason: str
    at: int

    def __post_init__(self) -> None:
        _hex32(self.request_id, "request_id")
        _hex32_or_none(self.case_id, "case_id")
        check_pair(self.owner, self.referral_id)
        if not isinstance(self.reason, str):
            raise ValueError("reason must be a string")
        _time(self.at)
        if self.reason not in TRANSFER_REASONS:
            raise TransferReasonUnknown("reason must be one of: " + ", ".join(TRANSFER_REASONS))

    @classmethod
    def decode(cls, body: bytes) -> TransferRequest:
        """The body strictly decoded (PROTOCOL §8.10), or MalformedError for its shape and
        rules, UnknownReasonCodeError for a reason outside the transfer reasons."""
        fields = cls.WIRE.unpack(body, max_bytes=MAX_REQUEST_BYTES)
        try:
            return cls(**fields)
        except TransferReasonUnknown as e:
            raise UnknownReasonCodeError(str(e)) from e
        except (ValueError, TypeError) as e:
            raise MalformedError(f"transfer request is invalid: {e}") from e


@dataclass(frozen=True, slots=True)
class CaseOwnerChanged(codec.Encoded):
    """A `case-owner-changed` body: the old owner tells the case's competent authority that
    `new_owner` accepted the transfer `transfer_id` of case `case_id`."""

    WIRE: ClassVar[codec.Record] = codec.Record(
        "case owner changed", 1, ("case_id", "new_owner", "transfer_id", "at")
    )

    case_id: str
    new_owner: str
    transfer_id: str
    at: int

    def __post_init__(self) -> None:
        _hex32(self.case_id, "case_id")
        _agency(self.new_owner, "new_owner")
        _hex32(self.transfer_id, "transfer_id")
        _time(self.at)

    @classmethod
    def decode(cls, body: bytes) -> CaseOwnerChanged:
        """The body strictly decoded (PROTOCOL §8.10), or MalformedError."""
        return cls.decoded(body, max_bytes=MAX_OWNER_CHANGED_BYTES)


def decode_owner_changed_at(body: bytes, roles: Collection[str]) -> CaseOwnerChanged:
    """§8.10 for this kind: only a competent authority receives it (`not-for-this-role`),
    then the body decodes strictly (`malformed`)."""
    if isinstance(roles, str):
        raise TypeError("roles must be a collection of role names")
    if COMPETENT_AUTHORITY not in roles:
        raise NotForThisRoleError("case-owner-changed goes to competent authorities only")
    return CaseOwnerChanged.decode(body)


#: The members of a case-transfer body and of its `transfer` object.
CASE_TRANSFER_MEMBERS: Final = frozenset({"attachment_key", "referral", "transfer"})
TRANSFER_MEMBERS: Final = frozenset({"case_id", "reason", "request_id", "transfer_id"})


@dataclass(frozen=True, slots=True)
class CaseTransfer:
    """A `case-transfer` body, decoded. `referral` is R as sent: only its schema version is
    checked here; the messaging judges it (and `attachment_key`) by every `referral` row of
    PROTOCOL §6.4 before anything of it is kept."""

    transfer_id: str
    case_id: str | None
    reason: str
    request_id: str | None
    referral: Mapping[str, Any]
    attachment_key: str | None

    @classmethod
    def decode(cls, body: bytes, *, limits: Limits) -> CaseTransfer:
        """The body decoded by PROTOCOL §8.10 in order, or the error of its first failure:
        §6.4's JSON steps (MalformedError, TooDeepError, OutOfRangeError); a member too
        many (UnknownMemberError); a member missing or of the wrong form
        (SchemaInvalidError); a reason outside the transfer reasons
        (UnknownReasonCodeError); R not of schema version 2 (SchemaInvalidError)."""
        doc = codec.parse_json(
            body,
            max_bytes=limits.max_body_bytes,
            max_depth=limits.max_body_depth,
            max_integer=limits.max_json_integer,
            what="case transfer",
        )
        if not isinstance(doc, dict):
            raise SchemaInvalidError("a case transfer must be a JSON object")
        _only(doc, CASE_TRANSFER_MEMBERS, "the case transfer")
        transfer = doc.get("transfer")
        if not isinstance(transfer, dict):
            raise SchemaInvalidError("a case transfer must hold a transfer object")
        _only(transfer, TRANSFER_MEMBERS, "the transfer")
        if set(transfer) != TRANSFER_MEMBERS:
            raise SchemaInvalidError(
                "the transfer must have exactly " + ", ".join(sorted(TRANSFER_MEMBERS))
            )
        try:
            _hex32(transfer["transfer_id"], "transfer_id")
            _hex32_or_none(transfer["case_id"], "case_id")
            _hex32_or_none(transfer["request_id"], "request_id")
            if not isinstance(transfer["reason"], str):
                raise ValueError("reason must be a string")
        except ValueError as e:
            raise SchemaInvalidError(f"the transfer is invalid: {e}") from e
        if transfer["reason"] not in TRANSFER_REASONS:
            raise UnknownReasonCodeError("reason must be one of: " + ", ".join(TRANSFER_REASONS))
        referral = doc.get("referral")
        if not isinstance(referral, dict) or referral.get("schema_version") != "2":
            raise SchemaInvalidError("a case transfer carries a referral of schema version 2")
        key = doc.get("attachment_key")
        if "attachment_key" in doc and not isinstance(key, str):  # null too: leave it out
            raise SchemaInvalidError("attachment_key must be base64 text")
        return cls(
            transfer_id=transfer["transfer_id"],
            case_id=transfer["case_id"],
            reason=transfer["reason"],
            request_id=transfer["request_id"],
            referral=referral,
            attachment_key=key,
        )

    def encode(self) -> bytes:
        """The canonical JSON of this body (PROTOCOL §1.3)."""
        doc: dict[str, Any] = {
            "referral": dict(self.referral),
            "transfer": {
                "case_id": self.case_id,
                "reason": self.reason,
                "request_id": self.request_id,
                "transfer_id": self.transfer_id,
            },
        }
        if self.attachment_key is not None:
            doc["attachment_key"] = self.attachment_key
        return codec.canonical_json(doc)


def _only(doc: Mapping[str, Any], names: Collection[str], what: str) -> None:
    """Refuse a member `names` does not list (its name is not repeated: it may be data)."""
    extra = sum(1 for name in doc if name not in names)
    if extra:
        raise UnknownMemberError(f"{what} has {extra} member(s) its format does not define")


@dataclass(frozen=True, slots=True)
class TransferStep(codec.Encoded):
    """One step of a transfer or a request: a `transfer-step` body. The
    constructor refuses anything `check()` refuses, so every value is a step of its kind's
    table; a receiver still compares `from_state` with the state it stored."""

    WIRE: ClassVar[codec.Record] = codec.Record(
        "transfer step",
        STEP_VERSION,
        ("kind", "id", "recipient", "from_state", "to_state", "party", "reason", "at"),
    )

    kind: str
    id: str
    recipient: str
    from_state: str
    to_state: str
    party: str
    reason: str | None
    at: int

    def __post_init__(self) -> None:
        _check_name(self.kind, KINDS, "transfer kind")
        _hex32(self.id, "id")
        _agency(self.recipient, "recipient")
        _check_name(self.from_state, STATES[self.kind], f"{self.kind} state")
        _check_name(self.to_state, STATES[self.kind], f"{self.kind} state")
        _check_name(self.party, PARTIES[self.kind], f"{self.kind} party")
        if self.reason is not None and not isinstance(self.reason, str):
            raise ValueError("reason must be a string or nil")  # before the table: malformed
        _time(self.at)
        check(self.kind, self.from_state, self.to_state, self.party, reason=self.reason)

    @classmethod
    def decode(cls, body: bytes) -> TransferStep:
        """Strictly decode a transfer-step body (PROTOCOL §8.10), or raise:
        MalformedError for its shape, UnexpectedMessageError for a step the kind's table
        does not list, UnknownReasonCodeError for a reason outside the step's list."""
        fields = cls.WIRE.unpack(body, max_bytes=MAX_STEP_BYTES, max_items=16)
        try:
            return cls(**fields)
        except TransferStepRefused as e:
            raise UnexpectedMessageError(f"transfer step is not in its table: {e}") from e
        except TransferReasonUnknown as e:
            raise UnknownReasonCodeError(f"transfer step reason: {e}") from e
        except ValueError as e:
            raise MalformedError(f"transfer step is invalid: {e}") from e


__all__: Sequence[str] = [
    "CASE_OWNER_CHANGED",
    "CASE_TRANSFER",
    "EXPIRABLE",
    "KINDS",
    "REFUSE_REASONS",
    "REJECT_REASONS",
    "REQUEST_AFTER_TRANSFER",
    "REVOKE_REASONS",
    "TRANSFER_REASONS",
    "TRANSFER_REQUEST",
    "TRANSFER_STEP",
    "CaseOwnerChanged",
    "CaseTransfer",
    "TransferReasonUnknown",
    "TransferRequest",
    "TransferStep",
    "TransferStepRefused",
    "allowed",
    "check",
    "decode_owner_changed_at",
]
