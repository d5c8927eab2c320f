"""The identification case at a competent authority (agents/cases.py): the table, over every
state, target and party, against the specification written out independently."""

from __future__ import annotations

import itertools

import pytest

from agents import cases
from agents.cases import PARTIES, STATES, CaseStepRefused, allowed, check

#: docs/proposals/nrm-process.md §4.4, written out by hand: (from, party) -> targets.
EXPECTED: dict[tuple[str, str], set[str]] = {
    ("awaiting_first", "authority"): {"first_positive", "first_negative", "left_process"},
    ("first_negative", "authority"): {"reconsidering_first", "left_process"},
    ("first_negative", "system"): {"closed"},
    ("reconsidering_first", "authority"): {"first_positive", "first_negative", "left_process"},
    ("first_positive", "authority"): {"second_positive", "second_negative", "left_process"},
    ("second_negative", "authority"): {"reconsidering_second", "left_process"},
    ("second_negative", "system"): {"closed"},
    ("reconsidering_second", "authority"): {"second_positive", "second_negative", "left_process"},
}
NEGATIVE_REASON = {"first_negative": "no-indicators", "second_negative": "act-not-established"}


def _valid(state: str, target: str) -> tuple[str | None, bool]:
    """A (reason, supersedes) that fits a step from `state` to `target`."""
    reason = NEGATIVE_REASON.get(target, "lost-contact" if target == "left_process" else None)
    decides = target.startswith(("first_", "second_"))
    return reason, decides and state.startswith("reconsidering_")


def test_the_case_opens_awaiting_the_first_stage() -> None:
    assert cases.open_state() == "awaiting_first"
    assert cases.RUNNING_CLOCK["awaiting_first"] == "first-stage"


def test_allowed_matches_the_specification() -> None:
    for state, party in itertools.product(STATES, PARTIES):
        assert set(allowed(state, party)) == EXPECTED.get((state, party), set()), (state, party)


def test_final_states_have_no_way_out() -> None:
    assert {"second_positive", "left_process", "closed"} == cases.FINAL_STATES
    for state, party in itertools.product(cases.FINAL_STATES, PARTIES):
        assert allowed(state, party) == []


@pytest.mark.parametrize(
    ("state", "target", "party"), list(itertools.product(STATES, STATES, PARTIES))
)
def test_every_combination(state: str, target: str, party: str) -> None:
    """An allowed step passes with fitting extras; any other is refused naming exactly the
    allowed ones."""
    reason, supersedes = _valid(state, target)
    if target in EXPECTED.get((state, party), set()):
        check(state, target, party, reason=reason, supersedes=supersedes)
    else:
        with pytest.raises(CaseStepRefused) as refused:
            check(state, target, party, reason=reason, supersedes=supersedes)
        assert refused.value.allowed == allowed(state, party)


@pytest.mark.parametrize(
    ("name", "state", "target", "reason", "supersedes"),
    [
        ("negative without a reason", "awaiting_first", "first_negative", None, False),
        (
            "a second-stage reason at the first",
            "awaiting_first",
            "first_negative",
            "act-not-established",
            False,
        ),
        ("positive with a reason", "awaiting_first", "first_positive", "no-indicators", False),
        ("a first decision that supersedes", "awaiting_first", "first_positive", None, True),
        (
            "after reconsideration, not superseding",
            "reconsidering_first",
            "first_negative",
            "no-indicators",
            False,
        ),
        (
            "after reconsideration (second), not superseding",
            "reconsidering_second",
            "second_positive",
            None,
            False,
        ),
        ("leaving without a reason", "first_positive", "left_process", None, False),
        (
            "leaving with a decision reason",
            "first_positive",
            "left_process",
            "no-indicators",
            False,
        ),
        (
            "a reconsideration with a reason",
            "first_negative",
            "reconsidering_first",
            "lost-contact",
            False,
        ),
        ("leaving that supersedes", "first_positive", "left_process", "deceased", True),
    ],
)
def test_extras_that_do_not_fit_the_step_are_refused(
    name: str, state: str, target: str, reason: str | None, supersedes: bool
) -> None:
    with pytest.raises(ValueError):
        check(state, target, "authority", reason=reason, supersedes=supersedes)


def test_unknown_names_are_misuse_and_never_echoed() -> None:
    """A name from outside the table is a ValueError that does not repeat it (it may come
    from a peer)."""
    odd = "someone's name"
    for state, target, party in (
        (odd, "closed", "system"),
        ("closed", odd, "system"),
        ("closed", "closed", odd),
    ):
        with pytest.raises(ValueError) as e:
            check(state, target, party, reason=None, supersedes=False)
        assert odd not in str(e.value)


def test_one_person_s_path_through_both_stages() -> None:
    """The demo's story: first stage positive, the second negative, reconsidered, then
    positive: each step is allowed from where the last one left the case."""
    path = [
        ("first_positive", None, False),
        ("second_negative", "purpose-not-established", False),
        ("reconsidering_second", None, False),
        ("second_positive", None, True),
    ]
    state = cases.open_state()
    for target, reason, supersedes in path:
        check(state, target, "authority", reason=reason, supersedes=supersedes)
        state = target
    assert state in cases.FINAL_STATES
