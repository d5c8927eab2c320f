"""The referral lifecycle: a pure state machine, kept per (referral, recipient agency) pair.

No I/O here: the agent loads the pair's current state, asks `check()`, and on success signs
a `transition` message whose body is `Transition.encode()`.

Normative table (copied to docs/PROTOCOL.md, "Referral lifecycle"). A transition not listed
MUST be refused (the agent answers 409 naming `allowed(state, party)`). "Before accepted" is
submitted, delivered, acknowledged, more_info_requested; "non-final" adds accepted and
in_progress. Final states (declined, closed, withdrawn, cancelled, expired) have no way out.

    | from                     | to                  | party              | requires        |
    |--------------------------|---------------------|--------------------|-----------------|
    | submitted                | delivered           | system (receipt)   |                 |
    | delivered                | acknowledged        | recipient          |                 |
    | acknowledged             | accepted            | recipient          |                 |
    | acknowledged             | declined            | recipient          | reason          |
    | acknowledged             | more_info_requested | recipient          |                 |
    | more_info_requested      | submitted           | sender (resubmits) |                 |
    | accepted                 | in_progress         | recipient          |                 |
    | in_progress              | closed              | recipient          | outcome         |
    | any state before accepted| withdrawn           | sender             |                 |
    | any non-final state      | cancelled           | sender, recipient  | reason          |
    | any state before accepted| expired             | system (timer)     |                 |

- `reason` is one code of the closed vocabulary `REASON_CODES` (never free text, which could
  name a person); it MAY accompany any transition and MUST accompany declined and cancelled.
- `outcome` is one code of the closed vocabulary `OUTCOMES` (how the referral ended for the
  person: the provider's feedback to the referrer); it MUST accompany closed and MUST NOT
  accompany any other transition.
- Transition body (the plaintext of the signed `transition` message kind), canonical msgpack:

      [1, referral_id, recipient, from_state, to_state, party, reason, outcome, at]

  referral_id is 32 lowercase hex; recipient an agency id; reason and outcome nil when
  absent; at Unix seconds, 0 <= at < 2^63. Decoders MUST reject any other shape,
  unknown values and non-canonical encodings. The body stays version 1 as the outcome
  vocabulary grows: an agent that does not know an outcome refuses the step (0.3.0 as
  `malformed`, this release as `unknown-outcome-code`), it never reads it as another.
- Escalation: an urgent (default 4 h) or emergency (default 30 min) referral not acknowledged
  within its limit after submission escalates to the co-ordinator with a metadata-only notice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Final

from keys import codec
from keys.errors import (
    MalformedError,
    UnexpectedMessageError,
    UnknownOutcomeCodeError,
    UnknownReasonCodeError,
)
from keys.policy import Policy
from keys.subjects import AGENCY_ID_PATTERN
from runtime import clock

SUBMITTED: Final = "submitted"
DELIVERED: Final = "delivered"
ACKNOWLEDGED: Final = "acknowledged"
ACCEPTED: Final = "accepted"
DECLINED: Final = "declined"
MORE_INFO_REQUESTED: Final = "more_info_requested"
IN_PROGRESS: Final = "in_progress"
CLOSED: Final = "closed"
WITHDRAWN: Final = "withdrawn"
CANCELLED: Final = "cancelled"
EXPIRED: Final = "expired"

#: Every state, in lifecycle order.
STATES: Final[tuple[str, ...]] = (
    SUBMITTED,
    DELIVERED,
    ACKNOWLEDGED,
    ACCEPTED,
    DECLINED,
    MORE_INFO_REQUESTED,
    IN_PROGRESS,
    CLOSED,
    WITHDRAWN,
    CANCELLED,
    EXPIRED,
)
FINAL_STATES: Final = frozenset({DECLINED, CLOSED, WITHDRAWN, CANCELLED, EXPIRED})
BEFORE_ACCEPTED: Final = frozenset({SUBMITTED, DELIVERED, ACKNOWLEDGED, MORE_INFO_REQUESTED})
NON_FINAL: Final = frozenset(STATES) - FINAL_STATES
_STATE_SET: Final = frozenset(STATES)

SENDER: Final = "sender"
RECIPIENT: Final = "recipient"
#: The agent itself: delivery receipts and timers.
SYSTEM: Final = "system"
PARTIES: Final[tuple[str, ...]] = (SENDER, RECIPIENT, SYSTEM)

#: The closed vocabulary of outcomes of a closed step (docs/PROTOCOL.md §8.4): what happened
#: with the service, told to the referrer. The first three are all an agent of 0.3.0 knows
#: (it refuses the others as `malformed`); `transferred` anticipates case transfers
#: (docs/proposals/nrm-process.md §7) and may be given before they exist on the wire.
OUTCOMES: Final[tuple[str, ...]] = (
    "completed",  # the work the referral asked for is done
    "referred_on",  # the recipient referred the person on to another agency
    "lost_contact",  # nobody can reach the person any more
    "service_provided",  # the requested services were provided
    "service_partly_provided",  # some of them were provided, not all
    "person_declined",  # the person declined the service once offered
    "person_left",  # the person left the service before it ended
    "transferred",  # the case went to another agency by a case transfer
)
_OUTCOME_SET: Final = frozenset(OUTCOMES)
#: Targets that MUST carry a reason code.
REASON_REQUIRED: Final = frozenset({DECLINED, CANCELLED})

#: The closed vocabulary of transition reason codes (docs/PROTOCOL.md §8.4). A code says why
#: in a word an auditor can count; anything a case worker wants to tell goes through their own
#: case systems, never this field.
REASON_CODES: Final[tuple[str, ...]] = (
    "no-capacity",  # no place, no staff
    "out-of-area",  # outside the recipient's area of responsibility
    "not-eligible",  # outside the recipient's mandate or criteria
    "duplicate",  # already referred, or sent twice
    "person-declined",  # the person does not want the service
    "consent-withdrawn",  # the person withdrew consent
    "lost-contact",  # nobody can reach the person any more
    "referred-elsewhere",  # another agency took the case
    "safety-concern",  # going on would put the person or staff at risk
    "sent-in-error",  # the referral should never have been sent
    "other",  # none of these
)
_REASON_SET: Final = frozenset(REASON_CODES)

VERSION: Final = 1
MAX_TRANSITION_BYTES: Final = 512

#: Default escalation limits in seconds, by urgency; routine referrals never escalate.
DEFAULT_ESCALATION_SECONDS: Final[Mapping[str, int]] = {"urgent": 4 * 3600, "emergency": 30 * 60}
URGENCIES: Final[tuple[str, ...]] = ("routine", "urgent", "emergency")


def _build_table() -> dict[tuple[str, str], tuple[str, ...]]:
    table: dict[tuple[str, str], list[str]] = {(s, p): [] for s in STATES for p in PARTIES}

    def add(state: str, party: str, target: str) -> None:
        table[(state, party)].append(target)

    add(SUBMITTED, SYSTEM, DELIVERED)
    add(DELIVERED, RECIPIENT, ACKNOWLEDGED)
    for target in (ACCEPTED, DECLINED, MORE_INFO_REQUESTED):
        add(ACKNOWLEDGED, RECIPIENT, target)
    add(MORE_INFO_REQUESTED, SENDER, SUBMITTED)
    add(ACCEPTED, RECIPIENT, IN_PROGRESS)
    add(IN_PROGRESS, RECIPIENT, CLOSED)
    for state in STATES:  # in lifecycle order, so allowed() lists are stable
        if state in BEFORE_ACCEPTED:
            add(state, SENDER, WITHDRAWN)
        if state in NON_FINAL:
            add(state, SENDER, CANCELLED)
            add(state, RECIPIENT, CANCELLED)
        if state in BEFORE_ACCEPTED:
            add(state, SYSTEM, EXPIRED)
    return {key: tuple(targets) for key, targets in table.items()}


_TABLE: Final = _build_table()


class ReasonCodeUnknown(ValueError):
    """A reason that is not a code of `REASON_CODES` (HTTP 400; on receipt
    `unknown-reason-code`)."""

    def __init__(self) -> None:
        super().__init__("reason must be one of: " + ", ".join(REASON_CODES))


class OutcomeUnknown(ValueError):
    """An outcome of a closed step that is not a code of `OUTCOMES` (HTTP 400; on receipt
    `unknown-outcome-code`)."""

    def __init__(self) -> None:
        super().__init__("outcome must be one of: " + ", ".join(OUTCOMES))


class TransitionRefused(Exception):
    """A transition that this party may not make from this state (HTTP 409).

    `allowed` lists the target states the party may choose instead (possibly none).
    """

    def __init__(self, state: str, target: str, party: str, allowed: list[str]) -> None:
        self.state = state
        self.target = target
        self.party = party
        self.allowed = allowed
        names = ", ".join(allowed) if allowed else "none"
        super().__init__(
            f"{party} may not move a referral from {state} to {target}; allowed: {names}"
        )


def _check_state(state: str, what: str) -> None:
    if state not in _STATE_SET:
        raise ValueError(f"unknown {what} state")  # never the value: it may come from a peer


def _check_party(party: str) -> None:
    if party not in PARTIES:
        raise ValueError(f"unknown party; expected one of {', '.join(PARTIES)}")


def allowed(state: str, party: str) -> list[str]:
    """The target states `party` may move a pair in `state` to (a new list each call)."""
    _check_state(state, "current")
    _check_party(party)
    return list(_TABLE[(state, party)])


def check(state: str, target: str, party: str, *, reason: str | None, outcome: str | None) -> None:
    """Return if `party` may move a pair from `state` to `target` with this reason/outcome.

    Raises TransitionRefused (with `.allowed`) for a transition not in the table, and
    ValueError for unknown names, a missing or malformed reason, or a missing or misplaced
    outcome; its subclasses ReasonCodeUnknown and OutcomeUnknown for a code outside its
    vocabulary.
    """
    _check_state(state, "current")
    _check_state(target, "target")
    _check_party(party)
    permitted = _TABLE[(state, party)]
    if target not in permitted:
        raise TransitionRefused(state, target, party, list(permitted))
    if reason is not None and not isinstance(reason, str):
        raise ValueError("reason must be a string")
    if reason is not None and reason not in _REASON_SET:
        raise ReasonCodeUnknown
    if target in REASON_REQUIRED and reason is None:
        raise ValueError(f"a transition to {target} requires a reason code")
    if outcome is not None and not isinstance(outcome, str):
        raise ValueError("outcome must be a string")
    if target == CLOSED:
        if outcome is None:
            raise ValueError(f"a transition to closed requires an outcome: {', '.join(OUTCOMES)}")
        if outcome not in _OUTCOME_SET:
            raise OutcomeUnknown
    elif outcome is not None:
        raise ValueError("only a transition to closed carries an outcome")


@dataclass(frozen=True, slots=True)
class Transition(codec.Encoded):
    """One step of one (referral, recipient) pair: the body of a signed `transition` message.

    The constructor refuses anything `check()` refuses, so every Transition value is a step of
    the table; the agent still compares `from_state` with the state it has stored for the pair.
    """

    #: A transition body's wire form (see the module docstring).
    WIRE: ClassVar[codec.Record] = codec.Record(
        "transition",
        VERSION,
        (
            "referral_id",
            "recipient",
            "from_state",
            "to_state",
            "party",
            "reason",
            "outcome",
            "at",
        ),
    )

    referral_id: str
    recipient: str
    from_state: str
    to_state: str
    party: str
    reason: str | None
    outcome: str | None
    at: int

    def __post_init__(self) -> None:
        if not (isinstance(self.referral_id, str) and codec.HEX32.fullmatch(self.referral_id)):
            raise ValueError("referral_id must be 32 lowercase hex characters")
        if not (isinstance(self.recipient, str) and AGENCY_ID_PATTERN.fullmatch(self.recipient)):
            raise ValueError("recipient must be an agency id")
        if not isinstance(self.from_state, str) or not isinstance(self.to_state, str):
            raise ValueError("states must be strings")
        if not isinstance(self.party, str):
            raise ValueError("party must be a string")
        if type(self.at) is not int or not 0 <= self.at < 2**63:
            raise ValueError("at must be Unix seconds, 0 <= at < 2^63")
        # Types before the table (PROTOCOL §8.4): a wrong-typed code is malformed, never
        # `unexpected` because its step is not in the table.
        if self.reason is not None and not isinstance(self.reason, str):
            raise ValueError("reason must be a string")
        if self.outcome is not None and not isinstance(self.outcome, str):
            raise ValueError("outcome must be a string")
        # The table itself, the reason pattern and the outcome rules.
        check(self.from_state, self.to_state, self.party, reason=self.reason, outcome=self.outcome)

    @classmethod
    def decode(cls, data: bytes) -> Transition:
        """Strictly decode a transition body, or raise: MalformedError for its shape,
        UnknownReasonCodeError for a reason outside the vocabulary, UnknownOutcomeCodeError
        for a closed step's outcome outside its vocabulary, UnexpectedMessageError
        for a well-formed step the lifecycle table does not allow (PROTOCOL.md §8.4)."""
        fields = cls.WIRE.unpack(data, max_bytes=MAX_TRANSITION_BYTES, max_items=16)
        try:
            return cls(**fields)
        except TransitionRefused as e:
            raise UnexpectedMessageError(f"transition is not in the lifecycle table: {e}") from e
        except ReasonCodeUnknown as e:
            raise UnknownReasonCodeError("transition reason is not a code of the vocabulary") from e
        except OutcomeUnknown as e:
            raise UnknownOutcomeCodeError("transition outcome is not a code of §8.4") from e
        except ValueError as e:
            raise MalformedError(f"transition is invalid: {e}") from e


def acknowledge_limits(local: Mapping[str, int], policy: Policy | None) -> dict[str, int]:
    """Seconds an unacknowledged referral of each urgency waits before it escalates: the
    national policy's tiers (`acknowledge_seconds`; null: that tier never escalates) when
    the directory has one (PROTOCOL §7.11), else `local` (agent.toml `[limits]
    escalation_*_seconds`, defaults DEFAULT_ESCALATION_SECONDS)."""
    if policy is None:
        return dict(local)
    return {
        urgency: tier.acknowledge_seconds
        for urgency, tier in policy.priority.items()
        if tier.acknowledge_seconds is not None
    }


def escalation_due(
    urgency: str,
    submitted_at: int,
    *,
    acknowledged: bool,
    limits: Mapping[str, int] = DEFAULT_ESCALATION_SECONDS,
    now: int | None = None,
) -> bool:
    """Whether an unacknowledged referral of this urgency is overdue for escalation.

    `limits` maps urgency to seconds (an urgency not in it never escalates); `now` defaults
    to the current time.
    """
    if urgency not in URGENCIES:
        raise ValueError("unknown urgency")
    if acknowledged:
        return False
    limit = limits.get(urgency)
    if limit is None:
        return False
    if type(limit) is not int or limit <= 0:
        raise ValueError(f"escalation limit for {urgency} must be a positive integer")
    current = clock.now() if now is None else now
    return current - submitted_at >= limit
