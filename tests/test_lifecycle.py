"""The referral lifecycle: the transition table, exhaustively, and the transition body."""

from __future__ import annotations

import itertools

import msgpack
import pytest

from agents import lifecycle
from agents.lifecycle import (
    DEFAULT_ESCALATION_SECONDS,
    PARTIES,
    STATES,
    OutcomeUnknown,
    ReasonCodeUnknown,
    Transition,
    TransitionRefused,
    allowed,
    check,
    escalation_due,
)
from keys import codec
from keys.errors import (
    MalformedError,
    UnexpectedMessageError,
    UnknownOutcomeCodeError,
    UnknownReasonCodeError,
)

REFERRAL = "0123456789abcdef0123456789abcdef"

#: The specification, written out independently of the module's table: (from, party) -> to.
EXPECTED: dict[tuple[str, str], set[str]] = {
    ("submitted", "system"): {"delivered", "expired"},
    ("submitted", "sender"): {"withdrawn", "cancelled"},
    ("submitted", "recipient"): {"cancelled"},
    ("delivered", "system"): {"expired"},
    ("delivered", "sender"): {"withdrawn", "cancelled"},
    ("delivered", "recipient"): {"acknowledged", "cancelled"},
    ("acknowledged", "system"): {"expired"},
    ("acknowledged", "sender"): {"withdrawn", "cancelled"},
    ("acknowledged", "recipient"): {"accepted", "declined", "more_info_requested", "cancelled"},
    ("more_info_requested", "system"): {"expired"},
    ("more_info_requested", "sender"): {"submitted", "withdrawn", "cancelled"},
    ("more_info_requested", "recipient"): {"cancelled"},
    ("accepted", "sender"): {"cancelled"},
    ("accepted", "recipient"): {"in_progress", "cancelled"},
    ("in_progress", "sender"): {"cancelled"},
    ("in_progress", "recipient"): {"closed", "cancelled"},
}


def _extras(target: str) -> tuple[str | None, str | None]:
    """A valid (reason, outcome) for a transition to `target`."""
    if target in ("declined", "cancelled"):
        return "no-capacity", None
    if target == "closed":
        return None, "completed"
    return None, None


def test_allowed_matches_the_specification() -> None:
    """allowed() lists exactly the specified targets for every state and party."""
    for state, party in itertools.product(STATES, PARTIES):
        assert set(allowed(state, party)) == EXPECTED.get((state, party), set()), (state, party)


def test_final_states_have_no_way_out() -> None:
    """Declined, closed, withdrawn, cancelled and expired allow nothing to anyone."""
    for state in lifecycle.FINAL_STATES:
        for party in PARTIES:
            assert allowed(state, party) == []


@pytest.mark.parametrize(
    ("state", "target", "party"), list(itertools.product(STATES, STATES, PARTIES))
)
def test_every_combination(state: str, target: str, party: str) -> None:
    """An allowed transition passes; any other is refused naming exactly the allowed ones,
    and a body carrying it is refused as `unexpected` (PROTOCOL.md §8.4)."""
    reason, outcome = _extras(target)
    if target in EXPECTED.get((state, party), set()):
        check(state, target, party, reason=reason, outcome=outcome)
        t = Transition(REFERRAL, "shelter", state, target, party, reason, outcome, 1_700_000_000)
        assert Transition.decode(t.encode()) == t
    else:
        with pytest.raises(TransitionRefused) as refused:
            check(state, target, party, reason=reason, outcome=outcome)
        assert refused.value.allowed == allowed(state, party)
        with pytest.raises(UnexpectedMessageError) as decoded:
            Transition.decode(
                codec.pack([1, REFERRAL, "shelter", state, target, party, reason, outcome, 1])
            )
        assert decoded.value.reason == "unexpected"


@pytest.mark.parametrize(
    ("state", "target", "party", "reason", "outcome"),
    [
        ("acknowledged", "declined", "recipient", None, None),
        ("accepted", "cancelled", "sender", None, None),
        ("in_progress", "cancelled", "recipient", None, None),
        ("in_progress", "closed", "recipient", None, None),
        ("in_progress", "closed", "recipient", None, "vanished"),
        ("acknowledged", "accepted", "recipient", None, "completed"),
        ("acknowledged", "declined", "recipient", "Free text, with a name", None),
        ("acknowledged", "declined", "recipient", "x" * 41, None),
        ("acknowledged", "declined", "recipient", "no-capacity1", None),
    ],
)
def test_missing_or_bad_reason_and_outcome_refused(
    state: str, target: str, party: str, reason: str | None, outcome: str | None
) -> None:
    """A required reason or outcome that is missing, malformed or misplaced is a ValueError."""
    with pytest.raises(ValueError):
        check(state, target, party, reason=reason, outcome=outcome)
    with pytest.raises(ValueError):
        Transition(REFERRAL, "shelter", state, target, party, reason, outcome, 1)


def test_unknown_names_are_misuse() -> None:
    """Unknown states and parties raise ValueError, not TransitionRefused."""
    with pytest.raises(ValueError, match="unknown"):
        allowed("lost", "sender")
    with pytest.raises(ValueError, match="unknown party"):
        allowed("submitted", "coordinator")
    with pytest.raises(ValueError, match="unknown target"):
        check("submitted", "lost", "system", reason=None, outcome=None)


def test_refusal_message_names_allowed() -> None:
    """The refusal's message names the allowed targets, as the 409 answer will."""
    with pytest.raises(TransitionRefused, match="acknowledged, cancelled"):
        check("delivered", "accepted", "recipient", reason=None, outcome=None)


def test_encoding_is_the_documented_array() -> None:
    """The body is canonical msgpack [1, referral, recipient, from, to, party, reason,
    outcome, at]."""
    t = Transition(REFERRAL, "shelter", "in_progress", "closed", "recipient", None, "completed", 5)
    assert msgpack.unpackb(t.encode()) == [
        1,
        REFERRAL,
        "shelter",
        "in_progress",
        "closed",
        "recipient",
        None,
        "completed",
        5,
    ]


GOOD = [1, REFERRAL, "shelter", "acknowledged", "declined", "recipient", "no-capacity", None, 9]


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("wrong version", [2, *GOOD[1:]]),
        ("too few fields", GOOD[:-1]),
        ("unknown extra field", [*GOOD, 0]),
        ("not an array", "transition"),
        ("short referral id", [1, "abc", *GOOD[2:]]),
        ("upper-case referral id", [1, REFERRAL.upper(), *GOOD[2:]]),
        ("bad agency id", [1, REFERRAL, "Shelter!", *GOOD[3:]]),
        ("unknown state", [1, REFERRAL, "shelter", "lost", *GOOD[4:]]),
        ("unknown party", [*GOOD[:5], "auditor", *GOOD[6:]]),
        ("reason as bytes", [*GOOD[:6], b"no-capacity", *GOOD[7:]]),
        ("missing reason", [*GOOD[:6], None, *GOOD[7:]]),
        ("negative time", [*GOOD[:8], -1]),
        ("boolean time", [*GOOD[:8], True]),
        ("time at 2^63", [*GOOD[:8], 2**63]),
        ("time at 2^64 - 1", [*GOOD[:8], 2**64 - 1]),
        (
            "reason as int on a step the table does not list (types before the table)",
            [1, REFERRAL, "shelter", "acknowledged", "accepted", "sender", 7, None, 9],
        ),
        (
            "outcome as int on a step the table does not list",
            [1, REFERRAL, "shelter", "acknowledged", "accepted", "sender", None, 7, 9],
        ),
        ("version as bool", [True, *GOOD[1:]]),
    ],
)
def test_strict_decoding_refuses(name: str, raw: object) -> None:
    """Every malformed body is refused with MalformedError."""
    with pytest.raises(MalformedError):
        Transition.decode(codec.pack(raw))


def test_the_last_second_below_2_to_the_63_decodes() -> None:
    assert Transition.decode(codec.pack([*GOOD[:8], 2**63 - 1])).at == 2**63 - 1


@pytest.mark.parametrize(
    "reason", ["She said no", "no_capacity", "anna-petrova", "x" * 41, "No-capacity", ""]
)
def test_reason_outside_the_vocabulary_is_refused_with_its_own_reason(reason: str) -> None:
    """A reason that is not a code of the closed vocabulary (free text, a lookalike, a name
    spelt as a code) is refused on decoding as unknown-reason-code, and by check() as a
    ValueError the API answers 400."""
    with pytest.raises(UnknownReasonCodeError) as refused:
        Transition.decode(codec.pack([*GOOD[:6], reason, *GOOD[7:]]))
    assert refused.value.reason == "unknown-reason-code"
    assert reason not in str(refused.value) or reason == ""
    with pytest.raises(ReasonCodeUnknown):
        check("acknowledged", "declined", "recipient", reason=reason, outcome=None)


def test_every_code_of_the_vocabulary_is_accepted() -> None:
    """Each documented reason code passes on a decline and round-trips through the body."""
    for code in lifecycle.REASON_CODES:
        t = Transition(REFERRAL, "shelter", "acknowledged", "declined", "recipient", code, None, 9)
        assert Transition.decode(t.encode()).reason == code


#: The outcome vocabulary of PROTOCOL.md §8.4, written out apart from the module's: the three
#: an agent of 0.3.0 knows, then the provider's feedback of this release.
EXPECTED_OUTCOMES = (
    "completed",
    "referred_on",
    "lost_contact",
    "service_provided",
    "service_partly_provided",
    "person_declined",
    "person_left",
    "transferred",
)


def test_the_outcome_vocabulary_is_the_documented_one() -> None:
    """The module's outcomes are exactly the documented codes, the three old ones first."""
    assert lifecycle.OUTCOMES == EXPECTED_OUTCOMES


@pytest.mark.parametrize("outcome", EXPECTED_OUTCOMES)
def test_every_outcome_closes_and_round_trips(outcome: str) -> None:
    """Each outcome closes an in-progress pair and decodes back to itself, version 1."""
    t = Transition(REFERRAL, "shelter", "in_progress", "closed", "recipient", None, outcome, 9)
    body = t.encode()
    assert codec.unpack(body, max_bytes=512, max_items=16)[0] == 1
    assert Transition.decode(body).outcome == outcome


@pytest.mark.parametrize(
    "outcome", ["rehoused", "service-provided", "Service_provided", "completed ", "", "x" * 41]
)
def test_outcome_outside_the_vocabulary_is_refused_with_its_own_reason(outcome: str) -> None:
    """An unknown outcome (a lookalike, another spelling) on a closed step is refused on
    decoding as unknown-outcome-code without repeating it, and by check() as OutcomeUnknown
    naming the codes (the API's 400); off closed it is misplaced first (malformed)."""
    closed = [1, REFERRAL, "shelter", "in_progress", "closed", "recipient", None, outcome, 9]
    with pytest.raises(UnknownOutcomeCodeError) as refused:
        Transition.decode(codec.pack(closed))
    assert refused.value.reason == "unknown-outcome-code"
    assert outcome not in str(refused.value) or outcome in ("", "completed ")
    with pytest.raises(OutcomeUnknown, match="service_partly_provided, person_declined"):
        check("in_progress", "closed", "recipient", reason=None, outcome=outcome)
    with pytest.raises(MalformedError) as misplaced:
        Transition.decode(codec.pack([*GOOD[:7], outcome, *GOOD[8:]]))
    assert type(misplaced.value) is MalformedError


def test_strict_decoding_refuses_non_canonical_and_oversized() -> None:
    """A non-canonical encoding, a map and an oversized body are refused."""
    good = codec.pack(GOOD)
    assert Transition.decode(good).reason == "no-capacity"
    non_canonical = b"\xdc\x00\x09" + good[1:]  # array16 header for a 9-item array
    with pytest.raises(MalformedError):
        Transition.decode(non_canonical)
    with pytest.raises(MalformedError):
        Transition.decode(msgpack.packb({"version": 1}))
    with pytest.raises(MalformedError):
        Transition.decode(good + b"\x00" * 600)


@pytest.mark.parametrize(
    ("urgency", "elapsed", "acknowledged", "due"),
    [
        ("routine", 10 * 86400, False, False),
        ("urgent", 4 * 3600 - 1, False, False),
        ("urgent", 4 * 3600, False, True),
        ("urgent", 4 * 3600, True, False),
        ("emergency", 30 * 60 - 1, False, False),
        ("emergency", 30 * 60, False, True),
        ("emergency", 86400, True, False),
    ],
)
def test_escalation_due_with_defaults(
    urgency: str, elapsed: int, acknowledged: bool, due: bool
) -> None:
    """Unacknowledged urgent (4 h) and emergency (30 min) referrals escalate; routine never."""
    submitted = 1_700_000_000
    assert (
        escalation_due(urgency, submitted, acknowledged=acknowledged, now=submitted + elapsed)
        is due
    )


def test_under_a_national_policy_its_tiers_decide_when_to_escalate() -> None:
    """Without a policy the agent's own limits; with one, the policy's acknowledge clocks
    (a tier whose clock is null never escalates), whatever the agent's limits say."""
    from agents.lifecycle import acknowledge_limits
    from keys.policy import Policy, Tier

    local = {"urgent": 60, "emergency": 10}
    assert acknowledge_limits(local, None) == local
    assert acknowledge_limits(local, Policy(country="LT")) == {"emergency": 1800, "urgent": 14400}
    tiers = {
        "emergency": Tier(acknowledge_seconds=None, due_seconds=3600),
        "urgent": Tier(acknowledge_seconds=600, due_seconds=7200),
        "routine": Tier(acknowledge_seconds=86400, due_seconds=864000),
    }
    assert acknowledge_limits(local, Policy(country="LT", priority=tiers)) == {
        "urgent": 600,
        "routine": 86400,
    }


def test_escalation_limits_are_configurable() -> None:
    """Configured limits replace the defaults, including for routine referrals."""
    limits = {"urgent": 60, "emergency": 10, "routine": 3600}
    assert escalation_due("urgent", 0, acknowledged=False, limits=limits, now=60)
    assert not escalation_due("emergency", 0, acknowledged=False, limits=limits, now=9)
    assert escalation_due("routine", 0, acknowledged=False, limits=limits, now=3600)
    assert DEFAULT_ESCALATION_SECONDS == {"urgent": 14400, "emergency": 1800}
    with pytest.raises(ValueError):
        escalation_due("whenever", 0, acknowledged=False, now=1)
    with pytest.raises(ValueError):
        escalation_due("urgent", 0, acknowledged=False, limits={"urgent": 0}, now=1)
