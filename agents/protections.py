"""Protection notices between agents (docs/PROTOCOL.md §8.9): the message
`protection-notice`, what its receiver checks, in order, and the authority's protection
state per case. Pure: the agent looks up what is asked (the directory's entry for the
authority, its key history, the pair, the last notice it holds of the chain) and passes it
in; keys/protection.py signs and verifies the notice itself.

    body = canonical msgpack [1, signed notice (bin), pair owner, pair referral_id]

Who receives a notice is who receives the case's decisions (agents/decisions.py
`recipients`): the referrer and every coordinator under the opening pair, each provider
linked to the case under its own pair; nobody gets a reason the others do not (a notice has
no salted reason), so every copy differs only in the pair it names.

The protection state at the authority (docs/proposals/nrm-process.md §5.1), one per
protection of a case, derived from the last notice of its chain (`state_of`). A step not
listed MUST be refused (the agent answers 409 naming `allowed(protection, state, party)`):

    | protection | from    | event       | to          | party     | reasons                     |
    |------------|---------|-------------|-------------|-----------|-----------------------------|
    | no-removal | off     | started     | on          | system    | (a first-stage positive)    |
    | no-removal | on      | ended       | off         | system    | second-stage-decided,       |
    |            |         |             |             |           | left-process, window-closed |
    | no-removal | on      | ended       | off         | authority | residence-permit-granted    |
    | reflection | none    | started     | running     | system    | (a first-stage positive)    |
    | reflection | none    | not-granted | not_granted | authority | public-order, improper-claim|
    | reflection | running | extended    | running     | authority | recovery-needs, child,      |
    |            |         |             |             |           | proceedings, other          |
    | reflection | running | ending-soon | running     | system    | —                           |
    | reflection | running | ended       | ended       | system    | elapsed, second-stage-decided|
    | reflection | running | ended       | ended       | authority | public-order, improper-claim,|
    |            |         |             |             |           | person-left                 |

Final: reflection `not_granted` and `ended`. No-removal comes on only through a first-stage
positive decision, one reached by reconsideration too (PROTOCOL §8.7).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Final

from keys import codec
from keys import protection as P
from keys.decision import FIRST, Decider
from keys.errors import (
    MisdatedError,
    NotForThisRoleError,
)
from keys.key_history import KeyWindow
from keys.signed import decode_frame

from .decisions import UnderPair, check_late_copy, check_pair, check_sent_under

PROTECTION_NOTICE: Final = "protection-notice"
#: A body's size limit: the signed notice (640) and the pair.
MAX_BODY_BYTES: Final = 768

OFF: Final = "off"
ON: Final = "on"
NONE: Final = "none"
RUNNING: Final = "running"
NOT_GRANTED: Final = "not_granted"
ENDED: Final = "ended"
#: Every state of each protection, in order.
STATES: Final[Mapping[str, tuple[str, ...]]] = {
    P.NO_REMOVAL: (OFF, ON),
    P.REFLECTION: (NONE, RUNNING, NOT_GRANTED, ENDED),
}
#: The state a protection is in before any notice of its chain.
INITIAL: Final[Mapping[str, str]] = {P.NO_REMOVAL: OFF, P.REFLECTION: NONE}

AUTHORITY: Final = "authority"
#: The authority's agent itself (a decision it signs, a clock).
SYSTEM: Final = "system"
PARTIES: Final[tuple[str, ...]] = (AUTHORITY, SYSTEM)

#: (protection, from, party) -> {event: (to, the reasons it takes; empty: none)}.
_TABLE: Final[Mapping[tuple[str, str, str], Mapping[str, tuple[str, tuple[str, ...]]]]] = {
    (P.NO_REMOVAL, OFF, SYSTEM): {P.STARTED: (ON, ())},
    (P.NO_REMOVAL, ON, SYSTEM): {
        P.ENDED: (OFF, ("second-stage-decided", "left-process", "window-closed"))
    },
    (P.NO_REMOVAL, ON, AUTHORITY): {P.ENDED: (OFF, ("residence-permit-granted",))},
    (P.REFLECTION, NONE, SYSTEM): {P.STARTED: (RUNNING, ())},
    (P.REFLECTION, NONE, AUTHORITY): {
        P.NOT_GRANTED: (NOT_GRANTED, ("public-order", "improper-claim"))
    },
    (P.REFLECTION, RUNNING, AUTHORITY): {
        P.EXTENDED: (RUNNING, ("recovery-needs", "child", "proceedings", "other")),
        P.ENDED: (ENDED, ("public-order", "improper-claim", "person-left")),
    },
    (P.REFLECTION, RUNNING, SYSTEM): {
        P.ENDING_SOON: (RUNNING, ()),
        P.ENDED: (ENDED, ("elapsed", "second-stage-decided")),
    },
}


def authority_steps() -> dict[str, dict[str, tuple[str, ...]]]:
    """What the authority's own case system may ask of each protection, whatever its state
    now (the API's vocabulary; `allowed` says which the state allows): protection -> event
    -> the reason codes it takes."""
    steps: dict[str, dict[str, tuple[str, ...]]] = {}
    for (protection, _, party), events in _TABLE.items():
        if party == AUTHORITY:
            for event, (_, reasons) in events.items():
                held = steps.setdefault(protection, {}).get(event, ())
                steps[protection][event] = (*held, *(r for r in reasons if r not in held))
    return steps


#: The state the last notice of a chain leaves its protection in.
_AFTER: Final[Mapping[tuple[str, str], str]] = {
    (P.NO_REMOVAL, P.STARTED): ON,
    (P.NO_REMOVAL, P.ENDED): OFF,
    (P.REFLECTION, P.STARTED): RUNNING,
    (P.REFLECTION, P.EXTENDED): RUNNING,
    (P.REFLECTION, P.ENDING_SOON): RUNNING,
    (P.REFLECTION, P.ENDED): ENDED,
    (P.REFLECTION, P.NOT_GRANTED): NOT_GRANTED,
}


class ProtectionStepRefused(Exception):
    """An event this party may not send from this state (HTTP 409, naming `allowed`)."""

    def __init__(self, protection: str, state: str, event: str, party: str) -> None:
        self.allowed = allowed(protection, state, party)
        names = ", ".join(self.allowed) if self.allowed else "none"
        super().__init__(
            f"{party} may not send {protection} {event} while it is {state}; allowed: {names}"
        )


def _check_name(value: str, names: Sequence[str] | Mapping[str, object], what: str) -> None:
    if value not in names:
        raise ValueError(f"unknown {what}")  # never the value: it may come from a client


def state_of(protection: str, last_event: str | None) -> str:
    """The state of `protection` whose chain's last notice is of `last_event` (None: none)."""
    _check_name(protection, STATES, "protection")
    if last_event is None:
        return INITIAL[protection]
    return _AFTER[(protection, last_event)]


def allowed(protection: str, state: str, party: str) -> list[str]:
    """The events `party` may send for `protection` in `state` (a new list each call)."""
    _check_name(protection, STATES, "protection")
    _check_name(state, STATES[protection], "protection state")
    _check_name(party, PARTIES, "party")
    return list(_TABLE.get((protection, state, party), {}))


def check(protection: str, state: str, event: str, party: str, *, reason: str | None) -> str:
    """The state `party` moves `protection` from `state` to by `event` with `reason`.

    Raises ProtectionStepRefused (with `.allowed`) for a step not in the table, and
    ValueError for unknown names or a missing, unknown or misplaced reason."""
    _check_name(event, P.EVENTS, "protection event")
    steps = _TABLE.get((protection, state, party), {}) if protection in STATES else {}
    if event not in allowed(protection, state, party):
        raise ProtectionStepRefused(protection, state, event, party)
    target, reasons = steps[event]
    if reasons and reason not in reasons:
        raise ValueError(f"{party} {protection} {event} needs one of: " + ", ".join(reasons))
    if not reasons and reason is not None:
        raise ValueError(f"{protection} {event} has no reason")
    return target


@dataclass(frozen=True, slots=True)
class NoticeMessage(codec.Encoded):
    """A `protection-notice` body, decoded; the notice inside is not verified yet."""

    WIRE: ClassVar[codec.Record] = codec.Record(
        "protection notice message", 1, ("signed", "owner", "referral_id")
    )

    signed: bytes
    owner: str
    referral_id: str

    def __post_init__(self) -> None:
        if not (isinstance(self.signed, bytes) and len(self.signed) <= P.MAX_SIGNED_NOTICE_BYTES):
            raise ValueError(
                f"signed must be a signed notice of at most {P.MAX_SIGNED_NOTICE_BYTES} bytes"
            )
        check_pair(self.owner, self.referral_id)

    @classmethod
    def decode(cls, body: bytes) -> NoticeMessage:
        """The body strictly decoded (PROTOCOL §1.2), or MalformedError."""
        return cls.decoded(body, max_bytes=MAX_BODY_BYTES)


def claimed(data: bytes) -> P.Notice:
    """The notice inside a signed notice, strictly decoded but NOT verified (MalformedError):
    what it claims, to look up who must have signed it."""
    body, _, _ = decode_frame(
        data,
        max_bytes=P.MAX_SIGNED_NOTICE_BYTES,
        max_items=11,
        what="protection notice",
        body_name="notice",
    )
    return P.decode(body)


def check_received(
    message: NoticeMessage,
    *,
    sender: str,
    created: int,
    skew: int,
    authority: Decider | None,
    history: Sequence[KeyWindow],
    pair: UnderPair,
    held: Callable[[], P.Notice | None],
    reflection_min_days: int,
) -> P.Notice:
    """The verified notice of `message`, received from `sender` in an envelope `created`
    then, or the error of its first failure in PROTOCOL §8.9 "The message"'s order.

    `skew`: Limits.clock_skew_seconds; `authority`: the trusted directory's entry for the
    notice's authority (None if it lists none); `history`: its signing key history;
    `pair`: what the receiver holds under the message's pair; `held`: the last notice it
    holds of the same protection of the same case, verified again (None if none), called
    only after every check on the sender; `reflection_min_days`: the national policy's."""
    notice = claimed(message.signed)  # malformed
    if notice.at > created + skew:  # before `at` picks a key
        raise MisdatedError(
            f"a notice is not dated ahead: at at most {skew} s after the envelope's created"
        )
    if authority is None or not authority.decides_stage(FIRST):
        raise NotForThisRoleError("the notice's authority is not a deciding competent authority")
    notice = P.verify_notice(message.signed, history=history)  # the key, bad-signature
    check_late_copy(
        message.signed, notice.authority, notice.at, created=created, skew=skew, history=history
    )
    check_sent_under("notice", notice.authority, notice.case_id, sender=sender, pair=pair)
    P.check_follows(held(), notice, reflection_min_days=reflection_min_days)  # unexpected
    return notice


__all__: Sequence[str] = [
    "PROTECTION_NOTICE",
    "NoticeMessage",
    "ProtectionStepRefused",
    "allowed",
    "check",
    "check_received",
    "claimed",
    "state_of",
]
