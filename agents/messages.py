"""Bodies of the message kinds the agent exchanges (docs/PROTOCOL.md section 6)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from keys import MalformedError, codec
from keys.codec import canonical_json

#: The message kinds (the envelope header's `kind`).
REFERRAL = "referral"
DELIVERY_RECEIPT = "delivery-receipt"
TRANSITION = "transition"
CONSENT_WITHDRAWAL = "consent-withdrawal"
ERASURE_CONFIRMATION = "erasure-confirmation"
ESCALATION = "escalation"
OVERDUE = "overdue"
REFUSAL = "refusal"


class _RecordBody(codec.Encoded):
    """A msgpack body that is its wire record `WIRE` and nothing more: the record's types
    are all there is to check (the bodies of 6.2 and 6.5)."""

    __slots__ = ()

    @classmethod
    def decode(cls, body: bytes) -> Self:
        return cls(**cls.WIRE.unpack(body, max_bytes=512))


@dataclass(frozen=True, slots=True)
class DeliveryReceipt(_RecordBody):
    """Sent by a recipient to the sender once a message is committed to its inbox (6.2)."""

    WIRE: ClassVar[codec.Record] = codec.Record(
        "delivery receipt", 1, ("message_id", "envelope_hash", "received_at"), (str, str, int)
    )

    message_id: str
    envelope_hash: str
    received_at: int


def parse_json_body(body: bytes, *, what: str, required: dict[str, type]) -> dict[str, Any]:
    """Strictly parse a JSON message body that must hold exactly `required` fields."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise MalformedError(f"{what} is not JSON") from e
    if not isinstance(doc, dict) or set(doc) != set(required):
        raise MalformedError(f"{what} must have exactly the fields {sorted(required)}")
    for name, kind in required.items():
        if not isinstance(doc[name], kind) or isinstance(doc[name], bool) != (kind is bool):
            raise MalformedError(f"{what}: {name} has the wrong type")
    if canonical_json(doc) != body:
        raise MalformedError(f"{what} is not canonical JSON")
    return doc


#: Reasons a refusal notice may carry (docs/PROTOCOL.md §6.5): the refusals of a body by an
#: agent that opened its envelope, never those of the envelope itself.
NOTIFIED_REASONS = frozenset(
    {
        "malformed",
        "too-deep",
        "out-of-range",
        "unknown-member",
        "schema-invalid",
        "category-not-allowed",
        "not-anonymous",
        "not-for-this-role",
        "unknown-reason-code",
        "unknown-outcome-code",
        "unexpected",
        "unprocessable",
        "not-shared",
        "reused-referral-id",
        "unlawful-basis",
        "child-route-incomplete",
        "unknown-service",
        "bad-decision",
        "too-early",
        "misdated",
        "other-case",
        "already-decided",
        "erased",
        "out-of-time",
        "not-an-authority",
    }
)


@dataclass(frozen=True, slots=True)
class Refusal(_RecordBody):
    """Sent by a recipient to the authenticated sender of a message whose body it refused
    (6.5): which envelope, why, when."""

    WIRE: ClassVar[codec.Record] = codec.Record(
        "refusal", 1, ("message_id", "envelope_hash", "reason", "refused_at"), (str, str, str, int)
    )

    message_id: str
    envelope_hash: str
    reason: str
    refused_at: int
