"""Audit events: what every agent signs for each action, metadata only (PROTOCOL.md §9.0).

    event        = canonical msgpack [1, event_id, agency, kind, referral_id, counterpart,
                                      envelope_hash, key_ids, reason, labels, time]
    signed event = canonical msgpack [1, event, signer_kid, signature]
    signature    = Ed25519(agency signing key, "nrm/v1/audit-event" || 0x00 || event)

Every field is an id, a code, a hash or a time, each with a strict pattern, so no name and
no free text from a person can be carried: the format itself keeps personal data out of
the ledger. The signed event bytes are the ledger's Merkle leaves.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from nacl.signing import SigningKey

from . import codec
from .envelope import SignerKeys
from .errors import MalformedError
from .signed import check_signature, decode_frame, sign_frame
from .subjects import AGENCY_ID_PATTERN

VERSION = 1
LABEL = b"nrm/v1/audit-event"
MAX_SIGNED_EVENT_BYTES = 2048

#: Every kind of event, and nothing else (§9.0).
KINDS = frozenset(
    {
        "referral.sent",
        "referral.received",
        "message.rejected",
        "receipt.sent",
        "receipt.received",
        "directory.accepted",
        "directory.refused",
        "key.rotated",
        "transition.sent",
        "transition.received",
        "consent.recorded",
        "consent.withdrawn",
        "consent.unverifiable",
        "erasure.confirmed",
        "escalation.sent",
        "resend.requested",
        "resend.honoured",
        "delivery.failed",
        "standing.changed",
        "alert.acknowledged",
        "retention.purged",
        "record.accessed",
        "clock.overdue",
        "identification.decided",
        "identification.sent",
        "identification.received",
        "catalogue.published",
        "break-glass.requested",
        "break-glass.confirmed",
        "break-glass.refused",
        "break-glass.lapsed",
        "protection.notified",
        "protection.received",
        "reconsideration.requested",
        "reconsideration.received",
        "case.left",
        "case.closed",
        "transfer-request.sent",
        "transfer-request.received",
        "transfer-step.sent",
        "transfer-step.received",
        "statistics.contributed",
        "statistics.received",
        "transfer.sent",
        "transfer.received",
        "case-owner-changed.sent",
    }
)
#: The events of a break-glass referral at its sender (§8.2 step 2): each names the API
#: client that asked (`requested`, `lapsed`) or decided (`confirmed`, `refused`).
BREAK_GLASS_KINDS = frozenset(
    {"break-glass.requested", "break-glass.confirmed", "break-glass.refused", "break-glass.lapsed"}
)
#: What a `retention.purged` event counts (§9.0): label name -> a decimal count, nothing else.
COUNT_LABELS = frozenset(
    {"envelopes", "idempotency_keys", "webhook_bodies", "history", "closed_referrals"}
)
_COUNT = re.compile(r"^(0|[1-9][0-9]{0,8})$")
#: The data categories of a referral body (§8.1; agents/referral.py reads the same list from
#: the schema's `x-nrm-category`, and agents/access.py refuses to load if the two differ).
CATEGORIES = (
    "demographic",
    "identity",
    "contact",
    "language",
    "immigration",
    "health",
    "safety",
    "exploitation",
    "needs",
    "case",
    "criminal",
    "guardianship",
    "attachments",
)
#: An agency-local API client name (agent.toml `[[api.clients]] name`): a system, never a person.
CLIENT_NAME = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
#: What a `record.accessed` answer returned (§9.0).
ACCESS_RECORDS = frozenset({"body", "attachment"})
#: The clocks whose overdue notice is a `clock.overdue` event (§8.5 "Clocks"; the reference
#: agent's agents/clocks.py OVERDUE_CLOCKS): the values of its `clock` label.
OVERDUE_CLOCKS = frozenset({"respond"})
#: The labels of an identification decision's events (§8.7; keys/decision.py's values).
DECISION_LABELS: dict[str, frozenset[str]] = {
    "stage": frozenset({"first", "second"}),
    "outcome": frozenset({"positive", "negative"}),
    "age_route": frozenset({"adult", "child"}),
}

#: The labels of a protection notice's events (§8.9; keys/protection.py's values).
PROTECTION_LABELS: dict[str, frozenset[str]] = {
    "protection": frozenset({"no-removal", "reflection"}),
    "event": frozenset({"started", "extended", "ending-soon", "ended", "not-granted"}),
}


def _is_count(value: object) -> bool:
    return isinstance(value, str) and _COUNT.fullmatch(value) is not None


def _is_client(value: object) -> bool:
    return isinstance(value, str) and CLIENT_NAME.fullmatch(value) is not None


def _is_categories(value: object) -> bool:
    """Distinct categories of §8.1, sorted and comma-joined (at least one)."""
    if not isinstance(value, str):
        return False
    names = value.split(",")
    return names == sorted(set(names)) and set(names) <= set(CATEGORIES)


#: The kinds that may carry the `break_glass` label: the sender's copy sent, the
#: receiver's copy taken in (an auditor matches each with the sender's break-glass events).
BREAK_GLASS_LABELLED: Final = frozenset({"referral.sent", "referral.received"})

#: The labels of a transfer step's events (§8.10; agents/transfers.py's kinds and states):
#: which lifecycle, and the state the step moved to.
TRANSFER_STEP_LABELS: dict[str, frozenset[str]] = {
    "transfer_kind": frozenset({"transfer", "transfer-request"}),
    "to_state": frozenset(
        {
            "proposed",
            "delivered",
            "accepted",
            "rejected",
            "revoked",
            "expired",
            "completed",
            "requested",
            "granted",
            "refused",
            "fulfilled",
            "lapsed",
        }
    ),
}

#: Labels an event may carry for the anonymous statistics, with their allowed values.
LABELS: dict[str, frozenset[str]] = {
    "referral_type": frozenset(
        {"nrm_full", "anonymous_notification", "transnational", "service_request"}
    ),
    "urgency": frozenset({"routine", "urgent", "emergency"}),
    #: Only on `referral.sent` and `referral.received`: the referral went out (came in)
    #: under break-glass (§8.2 step 2).
    "break_glass": frozenset({"yes"}),
    "state": frozenset(
        {
            "submitted",
            "delivered",
            "acknowledged",
            "accepted",
            "declined",
            "more_info_requested",
            "in_progress",
            "closed",
            "withdrawn",
            "cancelled",
            "expired",
        }
    ),
}

_PERIOD = re.compile(r"^[0-9]{4}-(?:0[1-9]|1[0-2])$")


def _is_period(value: object) -> bool:
    """A month, `YYYY-MM` (the `period` of a statistics contribution, PROTOCOL §8.11)."""
    return isinstance(value, str) and _PERIOD.fullmatch(value) is not None


#: Kinds with labels of their own: kind -> label name -> the check of its value. Such a kind
#: carries only these labels, and no other kind carries them unless they are statistics
#: `LABELS` (which go on every other kind). The one table both the encoder and every
#: decoder check against.
KIND_LABELS: dict[str, dict[str, Callable[[object], bool]]] = {
    "retention.purged": {name: _is_count for name in sorted(COUNT_LABELS)},
    "record.accessed": {
        "client": _is_client,
        "record": lambda v: isinstance(v, str) and v in ACCESS_RECORDS,
        "categories": _is_categories,
        "reads": lambda v: _is_count(v) and v != "0",
    },
    "clock.overdue": {
        "clock": lambda v: isinstance(v, str) and v in OVERDUE_CLOCKS,
        "urgency": lambda v: isinstance(v, str) and v in LABELS["urgency"],
    },
    "identification.decided": {
        name: DECISION_LABELS[name].__contains__ for name in DECISION_LABELS
    },
    **{
        kind: {name: DECISION_LABELS[name].__contains__ for name in ("stage", "outcome")}
        for kind in ("identification.sent", "identification.received")
    },
    **{kind: {"client": _is_client} for kind in sorted(BREAK_GLASS_KINDS)},
    **{
        kind: {name: PROTECTION_LABELS[name].__contains__ for name in PROTECTION_LABELS}
        for kind in ("protection.notified", "protection.received")
    },
    **{
        kind: {"stage": DECISION_LABELS["stage"].__contains__}
        for kind in ("reconsideration.requested", "reconsideration.received")
    },
    **{
        kind: {name: TRANSFER_STEP_LABELS[name].__contains__ for name in TRANSFER_STEP_LABELS}
        for kind in ("transfer-step.sent", "transfer-step.received")
    },
    **{kind: {"period": _is_period} for kind in ("statistics.contributed", "statistics.received")},
}
#: Kinds that carry every one of their own labels, always.
_EXACT_LABELS = (
    frozenset(
        {
            "record.accessed",
            "identification.decided",
            "identification.sent",
            "identification.received",
            "protection.notified",
            "protection.received",
            "reconsideration.requested",
            "reconsideration.received",
            "transfer-step.sent",
            "transfer-step.received",
            "statistics.contributed",
            "statistics.received",
        }
    )
    | BREAK_GLASS_KINDS
)
#: Labels only their kinds carry (a statistics label a kind also lists, such as `urgency` on
#: `clock.overdue`, stays allowed on every other kind).
_OWN_LABELS = frozenset(
    name for table in KIND_LABELS.values() for name in table if name not in LABELS
)
_REASON = re.compile(r"^[a-z][a-z0-9-]{0,39}$")


@dataclass(frozen=True, slots=True)
class AuditEvent(codec.Encoded):
    #: An event's wire form (PROTOCOL.md).
    WIRE: ClassVar[codec.Record] = codec.Record(
        "event",
        VERSION,
        (
            "event_id",
            "agency",
            "kind",
            "referral_id",
            "counterpart",
            "envelope_hash",
            "key_ids",
            "reason",
            "labels",
            "time",
        ),
    )

    event_id: str
    agency: str
    kind: str
    time: int
    referral_id: str | None = None
    counterpart: str | None = None
    envelope_hash: str | None = None
    key_ids: tuple[str, ...] = ()
    reason: str | None = None
    labels: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise ValueError("invalid audit event: " + "; ".join(problems))


def new_event_id() -> str:
    return secrets.token_hex(16)


def sign_event(event: AuditEvent, key: SigningKey) -> bytes:
    """The signed event bytes (a ledger leaf)."""
    return sign_frame(LABEL, event.encode(), key)


@dataclass(frozen=True, slots=True)
class SignedEvent:
    event: AuditEvent
    signer_kid: str
    data: bytes


def decode_signed_event(data: bytes) -> tuple[AuditEvent, str, bytes, bytes]:
    """(event, signer kid, event bytes, signature), strictly decoded; nothing verified."""
    body, kid, signature = decode_frame(
        data, max_bytes=MAX_SIGNED_EVENT_BYTES, max_items=16, what="event", body_name="event"
    )
    return _decode_event(body), kid, body, signature


def verify_event(data: bytes, *, signers: SignerKeys) -> SignedEvent:
    """Verify a signed event against the directory as it stood at the event's time."""
    event, kid, body, signature = decode_signed_event(data)
    key = signers.signing_key(event.agency, kid, at=event.time)
    failure = f"event {event.event_id} signature does not verify"
    check_signature(LABEL, body, signature, key, failure=failure)
    return SignedEvent(event=event, signer_kid=kid, data=bytes(data))


def _decode_event(body: bytes) -> AuditEvent:
    fields = AuditEvent.WIRE.unpack(body, max_bytes=MAX_SIGNED_EVENT_BYTES, max_items=16)
    key_ids, labels, t = fields["key_ids"], fields["labels"], fields["time"]
    if not (isinstance(key_ids, list) and isinstance(labels, list)):
        raise MalformedError("event key ids and labels must be arrays")
    if not all(isinstance(p, list) and len(p) == 2 for p in labels):
        raise MalformedError("event labels must be [name, value] pairs")
    if not isinstance(t, int) or isinstance(t, bool):
        raise MalformedError("event time must be an integer")
    fields["key_ids"] = tuple(key_ids)
    fields["labels"] = tuple((p[0], p[1]) for p in labels)
    try:
        return AuditEvent(**fields)
    except (ValueError, TypeError) as e:
        raise MalformedError(str(e)) from e


def _problems(e: AuditEvent) -> list[str]:
    p: list[str] = []

    def optional(value: Any, pattern: re.Pattern[str], name: str) -> None:
        if value is not None and not (isinstance(value, str) and pattern.fullmatch(value)):
            p.append(f"{name} has the wrong form")

    if not (isinstance(e.event_id, str) and codec.HEX32.fullmatch(e.event_id)):
        p.append("event_id must be 32 lowercase hex characters")
    if not (isinstance(e.agency, str) and AGENCY_ID_PATTERN.fullmatch(e.agency)):
        p.append("agency must be an agency id")
    if e.kind not in KINDS:
        p.append("kind is not a known event kind")
    if not isinstance(e.time, int) or isinstance(e.time, bool) or not 0 <= e.time < 1 << 40:
        p.append("time must be Unix seconds")
    optional(e.referral_id, codec.HEX32, "referral_id")
    optional(e.counterpart, AGENCY_ID_PATTERN, "counterpart")
    optional(e.envelope_hash, codec.HEX64, "envelope_hash")
    optional(e.reason, _REASON, "reason")
    if not isinstance(e.key_ids, tuple) or len(e.key_ids) > 8:
        p.append("at most 8 key ids")
    elif not all(isinstance(k, str) and codec.HEX32.fullmatch(k) for k in e.key_ids):
        p.append("key ids must be 32 lowercase hex characters")
    names = [pair[0] for pair in e.labels] if isinstance(e.labels, tuple) else []
    if not isinstance(e.labels, tuple) or len(set(names)) != len(names):
        p.append("labels must be distinct")
    else:
        own = KIND_LABELS.get(e.kind)
        for name, value in e.labels:
            if own is not None:  # this kind's own labels, and only on this kind
                if name not in own or not own[name](value):
                    p.append(f"a label is not one of {e.kind}'s labels with its value")
            elif name in _OWN_LABELS or name not in LABELS or value not in LABELS[name]:
                p.append("a label is not an allowed name and value")
            elif name == "break_glass" and e.kind not in BREAK_GLASS_LABELLED:
                p.append("only referral.sent and referral.received carry the break_glass label")
    if e.kind == "clock.overdue" and "clock" not in names:
        p.append("clock.overdue names its clock")
    exact = e.kind in _EXACT_LABELS and isinstance(e.labels, tuple)
    if exact and set(names) != set(KIND_LABELS[e.kind]):
        p.append(f"{e.kind} carries exactly its own labels")
    if e.kind in BREAK_GLASS_KINDS and (e.referral_id is None or e.reason is None):
        p.append(f"{e.kind} names the referral and its break-glass reason")
    if e.kind == "record.accessed":
        # The read record, its owner and every label: the owner finds it by `counterpart`.
        if e.referral_id is None or e.counterpart is None or e.counterpart == e.agency:
            p.append("record.accessed names the referral read and its owner, another agency")
        if e.envelope_hash is not None or e.reason is not None or e.key_ids:
            p.append("record.accessed carries no envelope hash, reason or key ids")
    return p


def labels_of(values: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """The allowed statistics labels found in `values` (others are ignored)."""
    return tuple(
        sorted(
            (name, values[name])
            for name in LABELS
            if isinstance(values.get(name), str) and values[name] in LABELS[name]
        )
    )


__all__: Sequence[str] = [
    "ACCESS_RECORDS",
    "BREAK_GLASS_KINDS",
    "CATEGORIES",
    "CLIENT_NAME",
    "COUNT_LABELS",
    "KINDS",
    "KIND_LABELS",
    "LABELS",
    "OVERDUE_CLOCKS",
    "AuditEvent",
    "SignedEvent",
    "decode_signed_event",
    "labels_of",
    "new_event_id",
    "sign_event",
    "verify_event",
]
