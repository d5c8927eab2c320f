"""Clocks: the table, checked against an independent one over every state and clock, and
the due times each tier gives under a national policy and without one."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from agents import clocks
from agents.clocks import ACKNOWLEDGE, CLOCKS, RESPOND, due_at, limits, overdue, running
from agents.lifecycle import DEFAULT_ESCALATION_SECONDS, STATES, escalation_due
from agents.storage.referrals import RESPOND_RUNS, RESPOND_RUNS_SQL
from agents.storage.schema import SCHEMA
from keys import audit
from keys.policy import Policy, Tier

#: The specification, written out independently of the module's table: clock -> the states
#: in which it runs (every other state stops it, or it never started).
RUNS: dict[str, set[str]] = {
    "acknowledge": {"submitted", "delivered"},
    "respond": {"submitted", "delivered", "acknowledged", "more_info_requested"},
}

POLICY = Policy(
    country="LT",
    priority={
        "emergency": Tier(acknowledge_seconds=60, due_seconds=600),
        "urgent": Tier(acknowledge_seconds=None, due_seconds=3600),
        "routine": Tier(acknowledge_seconds=120, due_seconds=86_400),
    },
)


def test_the_table_names_the_clocks_of_this_slice() -> None:
    """Two clocks, both held by the sender and started at submission; only respond's notice
    is the `overdue` kind (acknowledge keeps `escalation`)."""
    assert set(CLOCKS) == set(RUNS)
    for clock in clocks.TABLE.values():
        assert (clock.holder, clock.starts) == ("sender", "submitted")
    assert clocks.TABLE[ACKNOWLEDGE].notice == "escalation"
    assert clocks.OVERDUE_CLOCKS == (RESPOND,)
    assert set(clocks.OVERDUE_CLOCKS) == audit.OVERDUE_CLOCKS  # the clock.overdue label values


@pytest.mark.parametrize(("name", "state"), list(itertools.product(CLOCKS, STATES)))
def test_every_state_and_clock(name: str, state: str) -> None:
    """running() matches the independent table for every state and clock, and a stopped
    clock is never overdue however late it is."""
    assert running(name, state) == (state in RUNS[name])
    late = overdue(name, "emergency", state, 0, now=10**9, policy=POLICY)
    assert late == (state in RUNS[name])


def test_the_storage_looks_where_respond_runs() -> None:
    """The states the overdue candidates' SQL and its partial index look in are those
    respond runs in (the query is built from RESPOND_RUNS; the index is schema text)."""
    assert set(RESPOND_RUNS) == RUNS["respond"] == clocks.TABLE[RESPOND].runs
    index = SCHEMA[SCHEMA.index("CREATE INDEX IF NOT EXISTS referrals_overdue") :]
    assert f"state IN ({RESPOND_RUNS_SQL});" in " ".join(index.split())


def test_respond_is_due_after_the_tiers_due_seconds() -> None:
    """Under a policy, every tier has a respond clock due `due_seconds` after the start;
    it is overdue from that second on, not before."""
    for urgency, seconds in (("emergency", 600), ("urgent", 3600), ("routine", 86_400)):
        assert due_at(RESPOND, urgency, 1000, policy=POLICY) == 1000 + seconds
        assert not overdue(RESPOND, urgency, "acknowledged", 1000, now=999 + seconds, policy=POLICY)
        assert overdue(RESPOND, urgency, "acknowledged", 1000, now=1000 + seconds, policy=POLICY)


def test_without_a_policy_there_is_no_respond_clock() -> None:
    """A directory without a national policy gives no respond clock, so no due time and
    nothing is ever overdue: deployments without a policy behave as before."""
    assert limits(RESPOND, policy=None) == {}
    for urgency in ("routine", "urgent", "emergency"):
        assert due_at(RESPOND, urgency, 0, policy=None) is None
        assert not overdue(RESPOND, urgency, "submitted", 0, now=10**9, policy=None)


def test_acknowledge_is_todays_escalation() -> None:
    """The acknowledge clock decides exactly as lifecycle.escalation_due does, with the
    agent's limits and under a policy (whose null acknowledge_seconds means no clock)."""
    local = {"urgent": 7, "emergency": 3}
    assert limits(ACKNOWLEDGE, policy=None) == dict(DEFAULT_ESCALATION_SECONDS)
    assert limits(ACKNOWLEDGE, policy=POLICY, local=local) == {"emergency": 60, "routine": 120}
    for policy, urgency, elapsed in itertools.product(
        (None, POLICY), ("routine", "urgent", "emergency"), (0, 2, 3, 7, 60, 119, 120, 10**6)
    ):
        expected = escalation_due(
            urgency,
            100,
            acknowledged=False,
            limits=limits(ACKNOWLEDGE, policy=policy, local=local),
            now=100 + elapsed,
        )
        got = overdue(
            ACKNOWLEDGE, urgency, "delivered", 100, now=100 + elapsed, policy=policy, local=local
        )
        assert got == expected, (policy is None, urgency, elapsed)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: running("sometime", "submitted"), "unknown clock"),
        (lambda: running(RESPOND, "lost"), "unknown state"),
        (lambda: due_at(RESPOND, "whenever", 0, policy=POLICY), "unknown urgency"),
        (lambda: limits("sometime", policy=None), "unknown clock"),
        (
            lambda: due_at(ACKNOWLEDGE, "urgent", 0, policy=None, local={"urgent": 0}),
            "positive integer",
        ),
    ],
    ids=["unknown clock", "unknown state", "unknown urgency", "limits of no clock", "zero limit"],
)
def test_misuse_is_refused(call: Callable[[], object], message: str) -> None:
    """Unknown names and a limit that is not positive raise ValueError naming the problem."""
    with pytest.raises(ValueError, match=message):
        call()
