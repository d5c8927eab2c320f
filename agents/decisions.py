"""The message `identification-decision` (docs/PROTOCOL.md §8.7): its body, and what its
receiver checks, in order. Pure: the agent looks up what is asked (the directory's entry for
the sender, its key history, the pair, the first-stage decision it holds) and passes it in.

    body = canonical msgpack [1, signed decision (bin), pair owner, pair referral_id,
                              reason or nil, salt or nil]

The pair is the (owner, referral_id) under which this receiver knows the person; the
reason and salt come only to a recipient that may learn the reason (§8.7 "Who receives").
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import ClassVar, Final

from keys import codec
from keys.decision import (
    FIRST,
    MAX_SIGNED_DECISION_BYTES,
    SECOND,
    Decider,
    Decision,
    check_authority,
    check_reason,
    check_second_stage,
    claimed,
    verify_decision,
)
from keys.errors import (
    AlreadyDecidedError,
    BadDecisionError,
    ErasedPairError,
    MisdatedError,
    NotForThisRoleError,
    NotSharedError,
    OtherCaseError,
    UnexpectedMessageError,
)
from keys.key_history import KeyWindow, signing_key_at
from keys.signed import decode_frame
from keys.subjects import AGENCY_ID_PATTERN

IDENTIFICATION_DECISION: Final = "identification-decision"
#: A body's size limit: the signed decision (640) and the rest (PROTOCOL §8.7).
MAX_BODY_BYTES: Final = 768


@dataclass(frozen=True, slots=True)
class DecisionMessage(codec.Encoded):
    """An `identification-decision` body, decoded; the decision inside is not verified yet."""

    WIRE: ClassVar[codec.Record] = codec.Record(
        "identification decision message",
        1,
        ("signed", "owner", "referral_id", "reason", "salt"),
    )

    signed: bytes
    owner: str
    referral_id: str
    reason: str | None
    salt: bytes | None

    def __post_init__(self) -> None:
        if not (isinstance(self.signed, bytes) and len(self.signed) <= MAX_SIGNED_DECISION_BYTES):
            raise ValueError(
                f"signed must be a signed decision of at most {MAX_SIGNED_DECISION_BYTES} bytes"
            )
        check_pair(self.owner, self.referral_id)
        if self.reason is not None and not isinstance(self.reason, str):
            raise ValueError("reason must be a string or nil")
        if self.salt is not None and not isinstance(self.salt, bytes):
            raise ValueError("salt must be bytes or nil")

    @classmethod
    def decode(cls, body: bytes) -> DecisionMessage:
        """The body strictly decoded (PROTOCOL §1.2), or MalformedError."""
        return cls.decoded(body, max_bytes=MAX_BODY_BYTES)


def check_pair(owner: object, referral_id: object) -> None:
    """Return if (owner, referral_id) is a pair's shape (§6.1); ValueError naming it
    otherwise (a message body's pair: a decision's, a protection notice's)."""
    if not (isinstance(owner, str) and AGENCY_ID_PATTERN.fullmatch(owner)):
        raise ValueError("owner must be an agency id")
    if not (isinstance(referral_id, str) and codec.HEX32.fullmatch(referral_id)):
        raise ValueError("referral_id must be 32 lowercase hex digits")


@dataclass(frozen=True, slots=True)
class Copy:
    """One recipient's copy of a decision: the pair it names and whether the reason goes."""

    recipient: str
    owner: str
    referral_id: str
    with_reason: bool


def recipients(
    *,
    opening: tuple[str, str],
    coordinators: Sequence[str],
    providers: Sequence[tuple[str, str]],
    authority: str,
) -> list[Copy]:
    """Who receives a decision (PROTOCOL §8.7 "Who receives it"): the owner of the opening
    referral (`opening`: owner, referral id) and every coordinator with the reason under that
    pair, then each provider (`providers`: referral id, provider) holding an accepted or
    in-progress pair the authority sent for the case, without it, under that pair. One copy
    per agency: the first rule that names it decides; the authority never sends to itself."""
    owner, referral_id = opening
    copies: dict[str, Copy] = {}
    for agency in (owner, *coordinators):
        copies.setdefault(agency, Copy(agency, owner, referral_id, True))
    for onward, provider in providers:
        copies.setdefault(provider, Copy(provider, authority, onward, False))
    copies.pop(authority, None)
    return list(copies.values())


def check_late_copy(
    signed: bytes, agency: str, at: int, /, *, created: int, skew: int, history: Sequence[KeyWindow]
) -> None:
    """A late copy (PROTOCOL §8.7 "Late copies"): a signed decision or notice dated more than
    `skew` before its envelope's `created` is accepted only if the key that signed it (valid
    at `at`, checked already) is valid at `created` too, so that dating back never selects a
    key since retired or revoked (UnknownKeyError, RetiredKeyError, RevokedKeyError)."""
    if at >= created - skew:
        return
    _, kid, _ = decode_frame(
        signed, max_bytes=len(signed), max_items=11, what="signed document", body_name="document"
    )
    signing_key_at(history, agency=agency, kid=kid, at=created)


@dataclass(frozen=True, slots=True)
class UnderPair:
    """What the receiver holds under the pair a decision or notice names (§8.7, §8.9).

    `shared`: it holds the pair with the message's sender as counterpart or owner (or is a
    coordinator); `erased`: it erased the referral it received under the pair (§8.5);
    `bound`: the case_id of the decisions (else notices) of the document's authority it
    holds under the pair, the case the pair is bound to for that authority (None if none)."""

    shared: bool
    erased: bool
    bound: str | None


def check_sent_under(
    what: str, authority: str, case_id: str, *, sender: str, pair: UnderPair
) -> None:
    """The checks on the sender and the pair that a decision and a notice share (§8.7,
    §8.9), in order: from its own authority (`unexpected`), under a pair held with the sender
    (`not-shared`), not under a pair whose received referral was erased (`erased`, §8.5), of
    the case the pair is bound to for that authority (`other-case`)."""
    if authority != sender:
        raise UnexpectedMessageError(f"a {what} comes from its own authority only")
    if not pair.shared:
        raise NotSharedError(f"a {what} names a pair this agency does not hold with its sender")
    if pair.erased:
        raise ErasedPairError(f"a {what} names a pair whose referral this agency erased")
    if pair.bound is not None and pair.bound != case_id:
        raise OtherCaseError(
            "this agency holds decisions of another case of the authority under this pair"
        )


def check_received(
    message: DecisionMessage,
    *,
    sender: str,
    created: int,
    skew: int,
    authority: Decider | None,
    history: Sequence[KeyWindow],
    pair: UnderPair,
    held_stages: Collection[str],
    supersedable: Collection[str],
    first: Callable[[], Decision | None],
    min_days: int,
) -> Decision:
    """The verified decision of `message`, received from `sender` in an envelope `created`
    then, or the error of its first failure in PROTOCOL §8.7's order.

    `skew`: the clock skew tolerated (Limits.clock_skew_seconds); `authority`: the trusted
    directory's entry for the decision's authority (None if it lists none); `history`: the
    signing key history; `pair`: what the receiver holds under the message's pair;
    `held_stages`: the stages of the decision's case it holds decisions of; `supersedable`:
    the ids of the decisions of that case and stage it holds that no decision it holds
    supersedes (what a reconsideration's answer may replace); `first`: the positive first
    stage of that case it holds (None if none), verified again, called only when a second
    stage is judged, after every check on the sender; `min_days`: the national policy's
    `second_stage_min_days`."""
    decision = claimed(message.signed)  # malformed
    if decision.decided_at > created + skew:  # before decided_at picks a key
        raise MisdatedError(
            f"a decision is not dated ahead: decided_at at most {skew} s after the envelope's"
            " created"
        )
    if authority is None:
        raise NotForThisRoleError("the decision's authority is not in the directory")
    check_authority(decision, authority)  # not-for-this-role
    decision = verify_decision(message.signed, history=history)  # the key, bad-signature
    late = (message.signed, decision.authority, decision.decided_at)
    check_late_copy(*late, created=created, skew=skew, history=history)
    check_sent_under("decision", decision.authority, decision.case_id, sender=sender, pair=pair)
    check_reason(decision, reason=message.reason, salt=message.salt)
    if decision.supersedes is not None:
        if decision.supersedes not in supersedable:
            raise UnexpectedMessageError(
                "a superseding decision replaces the last decision of its case and stage that"
                " this agency holds"
            )
    elif decision.stage in held_stages:
        raise AlreadyDecidedError(
            f"this agency holds a {decision.stage}-stage decision of the case already"
        )
    if decision.stage == SECOND:
        held_first = first()
        if held_first is None or held_first.stage != FIRST:
            raise BadDecisionError("a second stage needs the case's positive first stage")
        check_second_stage(held_first, decision, min_days=min_days)  # too-early
    return decision


__all__: Sequence[str] = [
    "IDENTIFICATION_DECISION",
    "Copy",
    "DecisionMessage",
    "UnderPair",
    "check_late_copy",
    "check_pair",
    "check_received",
    "check_sent_under",
    "recipients",
]
