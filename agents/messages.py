"""Bodies of the message kinds the agent exchanges (docs/PROTOCOL.md section 6)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from keys import MalformedError, codec
from keys.codec import canonical_json

REFERRAL = "referral"
DELIVERY_RECEIPT = "delivery-receipt"


def unpack_record(
    body: bytes,
    types: tuple[type, ...],
    *,
    what: str,
    shape: str,
    max_bytes: int = 512,
    max_items: int | None = None,
) -> list[Any]:
    """The members of a msgpack body `[1, ...]` after its version, one of each of `types`
    (an `int` is never a bool, nor is the version), decoded strictly (keys.codec.unpack):
    the one decoder of the msgpack message kinds. MalformedError says `what must be shape`."""
    raw = codec.unpack(
        body,
        max_bytes=max_bytes,
        max_items=len(types) + 1 if max_items is None else max_items,
        what=what,
    )
    if not (
        isinstance(raw, list)
        and len(raw) == len(types) + 1
        and type(raw[0]) is int
        and raw[0] == 1
        and all(_is(value, kind) for value, kind in zip(raw[1:], types, strict=True))
    ):
        raise MalformedError(f"{what} must be {shape}")
    return raw[1:]


def _is(value: Any, kind: type) -> bool:
    return type(value) is int if kind is int else isinstance(value, kind)


@dataclass(frozen=True, slots=True)
class DeliveryReceipt:
    """Sent by a recipient to the sender once a message is committed to its inbox (6.2)."""

    message_id: str
    envelope_hash: str
    received_at: int

    def encode(self) -> bytes:
        return codec.pack([1, self.message_id, self.envelope_hash, self.received_at])

    @classmethod
    def decode(cls, body: bytes) -> DeliveryReceipt:
        message_id, envelope_hash, received_at = unpack_record(
            body, (str, str, int), what="delivery receipt", shape="[1, message id, hash, time]"
        )
        return cls(message_id, envelope_hash, received_at)


TRANSITION = "transition"
CONSENT_WITHDRAWAL = "consent-withdrawal"
ERASURE_CONFIRMATION = "erasure-confirmation"
ESCALATION = "escalation"


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


REFUSAL = "refusal"
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
        "unexpected",
        "unprocessable",
        "not-shared",
        "reused-referral-id",
    }
)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Sent by a recipient to the authenticated sender of a message whose body it refused
    (6.5): which envelope, why, when."""

    message_id: str
    envelope_hash: str
    reason: str
    refused_at: int

    def encode(self) -> bytes:
        return codec.pack([1, self.message_id, self.envelope_hash, self.reason, self.refused_at])

    @classmethod
    def decode(cls, body: bytes) -> Refusal:
        message_id, envelope_hash, reason, refused_at = unpack_record(
            body,
            (str, str, str, int),
            what="refusal",
            shape="[1, message id, hash, reason, time]",
        )
        return cls(message_id, envelope_hash, reason, refused_at)
