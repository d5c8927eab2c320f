"""The protection state of a case at a competent authority (agents/protections.py): the
table, over every protection, state, event and party, against the specification written
out independently (docs/proposals/nrm-process.md §5.1, PROTOCOL §8.9)."""

from __future__ import annotations

import itertools

import pytest

from agents import protections as PR
from agents.protections import PARTIES, STATES, ProtectionStepRefused, allowed, check
from keys.protection import EVENTS, REASONS

#: §5.1 by hand: (protection, from, party) -> {event: (to, reasons)}.
EXPECTED: dict[tuple[str, str, str], dict[str, tuple[str, set[str]]]] = {
    ("no-removal", "off", "system"): {"started": ("on", set())},
    ("no-removal", "on", "system"): {
        "ended": ("off", {"second-stage-decided", "left-process", "window-closed"})
    },
    ("no-removal", "on", "authority"): {"ended": ("off", {"residence-permit-granted"})},
    ("reflection", "none", "system"): {"started": ("running", set())},
    ("reflection", "none", "authority"): {
        "not-granted": ("not_granted", {"public-order", "improper-claim"})
    },
    ("reflection", "running", "authority"): {
        "extended": ("running", {"recovery-needs", "child", "proceedings", "other"}),
        "ended": ("ended", {"public-order", "improper-claim", "person-left"}),
    },
    ("reflection", "running", "system"): {
        "ending-soon": ("running", set()),
        "ended": ("ended", {"elapsed", "second-stage-decided"}),
    },
}
ALL = [
    (p, s, e, party)
    for p, states in STATES.items()
    for s, e, party in itertools.product(states, EVENTS, PARTIES)
]


def test_the_states_and_where_they_start() -> None:
    assert {p: set(s) for p, s in STATES.items()} == {
        "no-removal": {"off", "on"},
        "reflection": {"none", "running", "not_granted", "ended"},
    }
    assert PR.state_of("no-removal", None) == "off"
    assert PR.state_of("reflection", None) == "none"


def test_allowed_matches_the_specification() -> None:
    for protection, states in STATES.items():
        for state, party in itertools.product(states, PARTIES):
            expected = set(EXPECTED.get((protection, state, party), {}))
            assert set(allowed(protection, state, party)) == expected, (protection, state)


def test_final_states_have_no_way_out() -> None:
    for state, party in itertools.product(("not_granted", "ended"), PARTIES):
        assert allowed("reflection", state, party) == []


def test_the_reasons_are_the_notice_formats() -> None:
    """Over both parties, each (protection, event) takes exactly keys/protection.py's
    reasons for it, and the format has no pair the table never sends."""
    union: dict[tuple[str, str], set[str]] = {}
    for (protection, _, _), steps in EXPECTED.items():
        for event, (_, reasons) in steps.items():
            union.setdefault((protection, event), set()).update(reasons)
    assert union == {pair: set(codes) for pair, codes in REASONS.items()}


@pytest.mark.parametrize(("protection", "state", "event", "party"), ALL)
def test_every_combination(protection: str, state: str, event: str, party: str) -> None:
    """An allowed step gives its target with each of its reasons and is refused without one
    (or with one when it takes none); any other step is refused naming exactly the allowed
    events; the target's state is what the chain's last event reads back as."""
    step = EXPECTED.get((protection, state, party), {}).get(event)
    if step is None:
        with pytest.raises(ProtectionStepRefused) as refused:
            check(protection, state, event, party, reason=None)
        assert set(refused.value.allowed) == set(EXPECTED.get((protection, state, party), {}))
        return
    target, reasons = step
    for reason in reasons or {None}:
        assert check(protection, state, event, party, reason=reason) == target
    assert PR.state_of(protection, event) == target
    for wrong in ("not-a-reason", None) if reasons else ("elapsed",):
        with pytest.raises(ValueError):
            check(protection, state, event, party, reason=wrong)


def test_unknown_names_are_refused_without_echoing_them() -> None:
    for args in (
        ("exile", "off", "started", "system"),
        ("no-removal", "gone", "started", "system"),
        ("no-removal", "off", "paused", "system"),
        ("no-removal", "off", "started", "judge"),
    ):
        with pytest.raises(ValueError) as e:
            check(*args, reason=None)
        assert not any(a in str(e.value) for a in ("exile", "gone", "paused", "judge"))
