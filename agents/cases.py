"""The identification case at a competent authority: a pure state machine, one per case.

No I/O here, like agents/lifecycle.py: the authority's agent loads the case's state, asks
`check()`, and on success records the step (a decision it signs, keys/decision.py, or one of
the other steps below). Recipients of decisions keep a copy derived from the decisions they
hold. The case is beside the referral's own lifecycle, never a state of it: the pair that
opened the case stays `in_progress` while the case runs (docs/proposals/nrm-process.md §4.4).

Normative table (docs/PROTOCOL.md §8.7 will carry it with the message kinds). A step not
listed MUST be refused (the agent answers 409 naming `allowed(state, party)`).

    | from                            | to                   | party     | requires             |
    |---------------------------------|----------------------|-----------|----------------------|
    | (opening: `open_state()`)       | awaiting_first       | system    | an accepted referral |
    | awaiting_first                  | first_positive       | authority | a decision           |
    | awaiting_first                  | first_negative       | authority | a decision, reason   |
    | first_negative                  | reconsidering_first  | authority | a request in time    |
    | reconsidering_first             | first_positive       | authority | a superseding one    |
    | reconsidering_first             | first_negative       | authority | superseding, reason  |
    | first_positive                  | second_positive      | authority | a decision           |
    | first_positive                  | second_negative      | authority | a decision, reason   |
    | second_negative                 | reconsidering_second | authority | a request in time    |
    | reconsidering_second            | second_positive      | authority | a superseding one    |
    | reconsidering_second            | second_negative      | authority | superseding, reason  |
    | any state but the final ones    | left_process         | authority | a leaving reason     |
    | first_negative, second_negative | closed               | system    | the window ran out   |

- A decision's reason is one of keys/decision.py `REASON_CODES` for its stage; leaving the
  process needs one of `LEAVE_REASONS`; no other step carries a reason.
- A decision out of a `reconsidering_*` state MUST supersede the stage's last decision; no
  other decision supersedes anything.
- A refused reconsideration request leaves the state as it is: it is an answer, not a step.
- Final states: second_positive, left_process, closed. In `ENDED_STATES` (left_process,
  closed) the authority takes no protection step of the case. The clock that runs in each state
  is `RUNNING_CLOCK` (docs/proposals/nrm-process.md §5.4).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from keys.decision import FIRST, NEGATIVE, POSITIVE, REASON_CODES, SECOND

AWAITING_FIRST: Final = "awaiting_first"
FIRST_POSITIVE: Final = "first_positive"
FIRST_NEGATIVE: Final = "first_negative"
RECONSIDERING_FIRST: Final = "reconsidering_first"
SECOND_POSITIVE: Final = "second_positive"
SECOND_NEGATIVE: Final = "second_negative"
RECONSIDERING_SECOND: Final = "reconsidering_second"
LEFT_PROCESS: Final = "left_process"
CLOSED: Final = "closed"

#: Every state, in process order.
STATES: Final[tuple[str, ...]] = (
    AWAITING_FIRST,
    FIRST_POSITIVE,
    FIRST_NEGATIVE,
    RECONSIDERING_FIRST,
    SECOND_POSITIVE,
    SECOND_NEGATIVE,
    RECONSIDERING_SECOND,
    LEFT_PROCESS,
    CLOSED,
)
FINAL_STATES: Final = frozenset({SECOND_POSITIVE, LEFT_PROCESS, CLOSED})
#: The final states in which the case's process ended without identification: the
#: authority takes no protection step of the case any more (PROTOCOL §8.9). Not
#: `second_positive`: a reflection period the second stage did not end runs on after it.
ENDED_STATES: Final = frozenset({LEFT_PROCESS, CLOSED})
_STATE_SET: Final = frozenset(STATES)

AUTHORITY: Final = "authority"
#: The authority's agent itself: opening a case, closing it when a window runs out.
SYSTEM: Final = "system"
PARTIES: Final[tuple[str, ...]] = (AUTHORITY, SYSTEM)

#: Why a person left the process (closed codes: never free text).
LEAVE_REASONS: Final[tuple[str, ...]] = (
    "person-withdrew",
    "lost-contact",
    "moved-abroad",
    "deceased",
)

#: The state a decision of (stage, outcome) leads to.
DECIDED: Final[Mapping[tuple[str, str], str]] = {
    (FIRST, POSITIVE): FIRST_POSITIVE,
    (FIRST, NEGATIVE): FIRST_NEGATIVE,
    (SECOND, POSITIVE): SECOND_POSITIVE,
    (SECOND, NEGATIVE): SECOND_NEGATIVE,
}
_STAGE_OF: Final = {state: stage for (stage, _), state in DECIDED.items()}
RECONSIDERING: Final = frozenset({RECONSIDERING_FIRST, RECONSIDERING_SECOND})

#: The clock (docs/proposals/nrm-process.md §5.4) that runs while a case is in a state.
RUNNING_CLOCK: Final[Mapping[str, str]] = {
    AWAITING_FIRST: "first-stage",
    FIRST_POSITIVE: "second-stage",
    RECONSIDERING_FIRST: "reconsideration",
    RECONSIDERING_SECOND: "reconsideration",
}


def _build_table() -> dict[tuple[str, str], tuple[str, ...]]:
    table: dict[tuple[str, str], list[str]] = {(s, p): [] for s in STATES for p in PARTIES}
    for state, targets in (
        (AWAITING_FIRST, (FIRST_POSITIVE, FIRST_NEGATIVE)),
        (FIRST_NEGATIVE, (RECONSIDERING_FIRST,)),
        (RECONSIDERING_FIRST, (FIRST_POSITIVE, FIRST_NEGATIVE)),
        (FIRST_POSITIVE, (SECOND_POSITIVE, SECOND_NEGATIVE)),
        (SECOND_NEGATIVE, (RECONSIDERING_SECOND,)),
        (RECONSIDERING_SECOND, (SECOND_POSITIVE, SECOND_NEGATIVE)),
    ):
        table[(state, AUTHORITY)].extend(targets)
    for state in STATES:
        if state not in FINAL_STATES:
            table[(state, AUTHORITY)].append(LEFT_PROCESS)
    for state in (FIRST_NEGATIVE, SECOND_NEGATIVE):
        table[(state, SYSTEM)].append(CLOSED)
    return {key: tuple(targets) for key, targets in table.items()}


_TABLE: Final = _build_table()


class CaseStepRefused(Exception):
    """A step this party may not take from this state (HTTP 409, naming `allowed`)."""

    def __init__(self, state: str, target: str, party: str, allowed: list[str]) -> None:
        self.state = state
        self.target = target
        self.party = party
        self.allowed = allowed
        names = ", ".join(allowed) if allowed else "none"
        super().__init__(f"{party} may not move a case from {state} to {target}; allowed: {names}")


def open_state() -> str:
    """The state of a case the authority opens on accepting a referral."""
    return AWAITING_FIRST


def _check_name(value: str, names: frozenset[str] | tuple[str, ...], what: str) -> None:
    if value not in names:
        raise ValueError(f"unknown {what}")  # never the value: it may come from a peer


def allowed(state: str, party: str) -> list[str]:
    """The states `party` may move a case in `state` to (a new list each call)."""
    _check_name(state, _STATE_SET, "case state")
    _check_name(party, PARTIES, "party")
    return list(_TABLE[(state, party)])


def check(state: str, target: str, party: str, *, reason: str | None, supersedes: bool) -> None:
    """Return if `party` may move a case from `state` to `target` with this reason, by a
    decision that does (`supersedes`) or does not replace an earlier one.

    Raises CaseStepRefused (with `.allowed`) for a step not in the table, and ValueError for
    unknown names, a missing, unknown or misplaced reason, or a wrong `supersedes`."""
    _check_name(target, _STATE_SET, "target case state")
    permitted = allowed(state, party)
    if target not in permitted:
        raise CaseStepRefused(state, target, party, permitted)
    stage = _STAGE_OF.get(target)
    if stage is not None:
        if target in (FIRST_NEGATIVE, SECOND_NEGATIVE):
            if reason not in REASON_CODES[stage]:
                raise ValueError(f"a negative {stage}-stage decision needs one of its reasons")
        elif reason is not None:
            raise ValueError("a positive decision has no reason")
        if supersedes != (state in RECONSIDERING):
            raise ValueError(
                "a decision after reconsideration supersedes the last one"
                if state in RECONSIDERING
                else "only a decision after reconsideration supersedes another"
            )
        return
    if supersedes:
        raise ValueError("only a decision supersedes another")
    if target == LEFT_PROCESS:
        if reason not in LEAVE_REASONS:
            raise ValueError("leaving the process needs one of: " + ", ".join(LEAVE_REASONS))
    elif reason is not None:
        raise ValueError(f"a step to {target} has no reason")
