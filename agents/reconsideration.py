"""The message `reconsideration-request` (docs/PROTOCOL.md §8.7 "Reconsideration requests"):
its body, and what the competent authority that receives it checks, in order. Pure: the
authority's agent looks up what is asked (its own decision the request names, whether the
sender received it under the pair the request names, the case's state) and passes it in.

    body = canonical msgpack [1, request_id, decision_id, pair owner, pair referral_id,
                              ground, at]

The pair is the (owner, referral_id) under which the sender holds the decision (as in the
decision's own message, agents/decisions.py), so that the authority can check the sender
received it. Coded fields and ids only: never a word about the person.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Final

from keys import codec
from keys.decision import NEGATIVE, Decision
from keys.errors import (
    MisdatedError,
    NotForThisRoleError,
    NotSharedError,
    OutOfTimeError,
    UnexpectedMessageError,
    UnknownReasonCodeError,
)
from keys.roles import COMPETENT_AUTHORITY

from .cases import DECIDED
from .decisions import check_pair

RECONSIDERATION_REQUEST: Final = "reconsideration-request"
#: A body's size limit (PROTOCOL §8.7 "Reconsideration requests").
MAX_BODY_BYTES: Final = 256
_DAY: Final = 86_400

#: Why a decision should be reconsidered (closed codes, docs/proposals/nrm-process.md §4.3).
GROUNDS: Final[tuple[str, ...]] = (
    "new-information",
    "procedural-error",
    "age-route",  # the person should have been treated as a child
    "not-reasoned",
)


@dataclass(frozen=True, slots=True)
class ReconsiderationRequest(codec.Encoded):
    """A `reconsideration-request` body, decoded; its ground is not checked yet (a receiver
    refuses an unknown one `unknown-reason-code`, not `malformed`: the list may grow)."""

    WIRE: ClassVar[codec.Record] = codec.Record(
        "reconsideration request",
        1,
        ("request_id", "decision_id", "owner", "referral_id", "ground", "at"),
        (str, str, str, str, str, int),
    )

    request_id: str
    decision_id: str
    owner: str
    referral_id: str
    ground: str
    at: int

    def __post_init__(self) -> None:
        for name in ("request_id", "decision_id"):
            value = getattr(self, name)
            if not (isinstance(value, str) and codec.HEX32.fullmatch(value)):
                raise ValueError(f"{name} must be 32 lowercase hex digits")
        check_pair(self.owner, self.referral_id)
        if not isinstance(self.ground, str):
            raise ValueError("ground must be a string")
        if not (type(self.at) is int and 0 <= self.at < 2**63):
            raise ValueError("at must be Unix seconds, 0 <= at < 2^63")

    @classmethod
    def decode(cls, body: bytes) -> ReconsiderationRequest:
        """The body strictly decoded (PROTOCOL §1.2), or MalformedError."""
        return cls.decoded(body, max_bytes=MAX_BODY_BYTES)


def decode_at(body: bytes, roles: frozenset[str]) -> ReconsiderationRequest:
    """§6.4 for this kind: only a competent authority receives a request
    (`not-for-this-role`), and the body decodes strictly (`malformed`)."""
    if COMPETENT_AUTHORITY not in roles:
        raise NotForThisRoleError("reconsideration requests go to competent authorities only")
    return ReconsiderationRequest.decode(body)


def window_ends(decision: Decision, *, window_days: int) -> int:
    """The last second (Unix) at which reconsideration of `decision` may be asked for."""
    return decision.decided_at + window_days * _DAY


def last_taken(decided_at: int, *, window_days: int, ttl: int, skew: int) -> int:
    """The last second (Unix) at which the authority still takes a request about a decision
    of `decided_at`: the window's end, then the longest a message travels (`ttl`) and the
    clock skew. It refuses later ones `out-of-time` and closes the case after it (§8.7)."""
    return decided_at + window_days * _DAY + ttl + skew


def check_open(
    decision: Decision, *, superseded: bool, state: str, at: int, window_days: int
) -> None:
    """The checks on the decision itself that the authority makes on receiving, in order:
    negative, not superseded, the case still at that negative stage, i.e. no request
    pending (UnexpectedMessageError); `at` within the window after `decided_at`
    (OutOfTimeError). A sender makes the same ones it can (not the case's state) with
    API reasons of their own (Identification.request_reconsideration)."""
    if decision.outcome != NEGATIVE:
        raise UnexpectedMessageError("only a negative decision is reconsidered")
    if superseded:
        raise UnexpectedMessageError("the decision is superseded by a later one")
    if state != DECIDED[(decision.stage, NEGATIVE)]:
        raise UnexpectedMessageError(
            "the case is not at that negative decision (a request is pending, or it moved on)"
        )
    if at > window_ends(decision, window_days=window_days):
        raise OutOfTimeError(
            f"reconsideration is asked for within {window_days} days of the decision"
        )


def check_received(
    message: ReconsiderationRequest,
    *,
    created: int,
    skew: int,
    decision: Decision | None,
    shared: bool,
    superseded: bool,
    state: str | None,
    window_days: int,
    received_at: int,
    ttl: int,
) -> Decision:
    """The decision `message` asks to reconsider, or the error of its first failure in
    PROTOCOL §8.7 "Reconsideration requests" order (the receiver's role was checked when the
    body was decoded, agents/inbound.py).

    `created`: the envelope's; `skew`: the clock skew tolerated (Limits.clock_skew_seconds);
    `decision`: this authority's own decision of that `decision_id` (None if it made none);
    `shared`: whether the sender received it under the message's pair as that pair's party
    (the opening referral's owner, or the provider of the authority's referral), not only
    as a coordinator; `superseded`: whether a later decision of the authority replaces it;
    `state`: its case's state; `window_days`: the policy's `reconsideration_window_days`;
    `received_at`: when this authority took it; `ttl`: the longest a message may travel
    (Limits.message_ttl_seconds). A sender dates its envelope itself, so `at` alone could be
    back-dated into the window for ever: received later than the window's end plus `ttl`
    and the skew, the request is `out-of-time` whatever it says."""
    if message.ground not in GROUNDS:
        raise UnknownReasonCodeError("ground must be one of: " + ", ".join(GROUNDS))
    if decision is None or state is None:
        raise UnexpectedMessageError("the request names no decision of this authority")
    if not shared:
        raise NotSharedError(
            "the sender did not receive that decision under that pair as the pair's party"
        )
    if message.at > created + skew or message.at < created - skew:
        raise MisdatedError(f"a request's at is within {skew} s of its envelope's created")
    if message.at < decision.decided_at:
        raise MisdatedError("a request is not dated before the decision it names")
    check_open(decision, superseded=superseded, state=state, at=message.at, window_days=window_days)
    if received_at > last_taken(decision.decided_at, window_days=window_days, ttl=ttl, skew=skew):
        raise OutOfTimeError(
            "a request received after its window and the longest a message travels"
        )
    return decision


__all__: Sequence[str] = [
    "GROUNDS",
    "RECONSIDERATION_REQUEST",
    "ReconsiderationRequest",
    "check_open",
    "check_received",
    "decode_at",
    "last_taken",
    "window_ends",
]
