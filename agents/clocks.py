"""Clocks: what a referral pair is waiting for, and by when (issue 15 §5.4). Pure, no I/O.

The agent's timers ask `overdue()` of each pair a clock runs for, and send the clock's
notice once to every coordinator; the API shows `due_at()`. A clock is held by one party of
a (referral, recipient) pair, starts when the pair enters its start state, is due a number
of seconds later that depends on the referral's urgency, and stops as soon as the pair is in
any state outside `runs` (there is no way back into a clock once it stopped: a resubmission
after more_info_requested keeps counting from the first submission).

Normative table (copied to docs/PROTOCOL.md §8.5, "Clocks"):

    | clock         | held by | starts    | runs in                 | due after    | notice       |
    |---------------|---------|-----------|-------------------------|--------------|--------------|
    | `acknowledge` | sender  | submitted | submitted, delivered    | tier's ack.  | `escalation` |
    | `respond`     | sender  | submitted | any before accepted (*) | tier's due   | `overdue`    |

- Every state not listed under "runs in" stops the clock: `acknowledge` stops at
  acknowledged; `respond` at accepted or declined, and at every final state.
- (*) "Before accepted" is submitted, delivered, acknowledged, more_info_requested.
- "Tier's ack.": under a national policy (PROTOCOL §7.11) its
  `acknowledge_seconds` (null: that tier has no acknowledge clock); without one agent.toml
  `[limits] escalation_*_seconds` (defaults: urgent 4 h, emergency 30 min; routine none).
- "Tier's due": the national policy's `due_seconds` of the tier: without a policy there is no
  respond clock, and no `due_at`.
- `respond` starts at the `created` of the referral's envelope (PROTOCOL §4.2), which both
  parties know, so the sender's and the recipient's `due_at` agree without being sent;
  `acknowledge` (only the sender's) at the time the sender recorded the submission.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from keys.policy import Policy

from . import lifecycle as L
from .messages import ESCALATION, OVERDUE

ACKNOWLEDGE: Final = "acknowledge"
RESPOND: Final = "respond"


@dataclass(frozen=True, slots=True)
class Clock:
    """One row of the table: who holds it, from which state, in which states it runs, and
    the message kind its overdue notice is."""

    name: str
    holder: str
    starts: str
    runs: frozenset[str]
    notice: str


#: The table, by name (the module docstring).
TABLE: Final[Mapping[str, Clock]] = {
    ACKNOWLEDGE: Clock(
        ACKNOWLEDGE,
        holder=L.SENDER,
        starts=L.SUBMITTED,
        runs=frozenset({L.SUBMITTED, L.DELIVERED}),
        notice=ESCALATION,
    ),
    RESPOND: Clock(
        RESPOND,
        holder=L.SENDER,
        starts=L.SUBMITTED,
        runs=L.BEFORE_ACCEPTED,
        notice=OVERDUE,
    ),
}
#: Every clock, in table order.
CLOCKS: Final[tuple[str, ...]] = tuple(TABLE)
#: The clocks whose overdue notice is the `overdue` kind (the `clock` member and audit label).
OVERDUE_CLOCKS: Final[tuple[str, ...]] = tuple(n for n, c in TABLE.items() if c.notice == OVERDUE)


def _clock(name: str) -> Clock:
    clock = TABLE.get(name)
    if clock is None:
        raise ValueError(f"unknown clock; expected one of {', '.join(CLOCKS)}")
    return clock


def running(name: str, state: str) -> bool:
    """Whether clock `name` runs for a pair in `state` (False: never started, or stopped)."""
    if state not in L.STATES:
        raise ValueError("unknown state")  # never the value: it may come from a peer
    return state in _clock(name).runs


def limits(
    name: str,
    *,
    policy: Policy | None,
    local: Mapping[str, int] = L.DEFAULT_ESCALATION_SECONDS,
) -> dict[str, int]:
    """Seconds from start to due, by urgency, of the urgencies clock `name` runs for:
    `acknowledge` as `lifecycle.acknowledge_limits(local, policy)`; `respond` the policy's
    `due_seconds` of every tier, none without a policy."""
    _clock(name)
    if name == ACKNOWLEDGE:
        return L.acknowledge_limits(local, policy)
    if policy is None:
        return {}
    return {urgency: tier.due_seconds for urgency, tier in policy.priority.items()}


def due_at(
    name: str,
    urgency: str,
    started_at: int,
    *,
    policy: Policy | None,
    local: Mapping[str, int] = L.DEFAULT_ESCALATION_SECONDS,
) -> int | None:
    """When clock `name`, started at `started_at`, is due for a referral of `urgency`; None
    if that urgency has no such clock."""
    if urgency not in L.URGENCIES:
        raise ValueError("unknown urgency")
    seconds = limits(name, policy=policy, local=local).get(urgency)
    if seconds is None:
        return None
    if type(seconds) is not int or seconds <= 0:
        raise ValueError(f"the {name} limit for {urgency} must be a positive integer")
    return started_at + seconds


def overdue(
    name: str,
    urgency: str,
    state: str,
    started_at: int,
    *,
    now: int,
    policy: Policy | None,
    local: Mapping[str, int] = L.DEFAULT_ESCALATION_SECONDS,
) -> bool:
    """Whether clock `name` of a pair in `state` is running and its due time has come."""
    due = due_at(name, urgency, started_at, policy=policy, local=local)
    return running(name, state) and due is not None and now >= due
