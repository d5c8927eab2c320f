"""Protection notices (keys/protection.py, PROTOCOL §8.9): the wire rules, verification under
the key history, and the chain a receiver accepts, as named scenarios. The protection-*
vectors cover one failure each."""

from __future__ import annotations

import dataclasses
import itertools
import os
from typing import Any

import pytest
from nacl.signing import SigningKey

from keys.errors import MalformedError, RevokedKeyError, UnexpectedMessageError
from keys.identity import signing_kid
from keys.key_history import KeyWindow
from keys.protection import (
    EVENTS,
    FOLLOWS,
    PROTECTIONS,
    REASONS,
    Notice,
    check_follows,
    decode,
    sign_notice,
    verify_notice,
)

T0 = 1_767_225_600
KEY = SigningKey.generate()
CASE = "c" * 32


def notice(after: Notice | None = None, **changes: Any) -> Notice:
    """A reflection start, or the link after `after`, with `changes`."""
    fields: dict[str, Any] = {
        "notice_id": os.urandom(16).hex(),
        "authority": "authority",
        "case_id": CASE,
        "protection": "reflection",
        "event": "started",
        "starts_on": "2026-01-01",
        "ends_on": "2026-02-15",
        "reason": None,
        "at": T0 if after is None else after.at + 60,
        "previous": None if after is None else after.notice_id,
    }
    return Notice(**(fields | changes))


def reason_for(protection: str, event: str) -> str | None:
    reasons = REASONS[(protection, event)]
    return reasons[0] if reasons else None


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"protection": "asylum"}, "pairs"),
        ({"protection": "no-removal", "event": "extended", "previous": "a" * 32}, "pairs"),
        ({"event": "extended", "previous": "a" * 32}, "takes one of"),
        ({"reason": "elapsed"}, "has no reason"),
        ({"starts_on": "2026-02-30"}, "starts_on"),
        ({"starts_on": "2026-1-01"}, "starts_on"),
        ({"ends_on": None}, "end date"),
        ({"ends_on": "2025-12-31"}, "before"),
        ({"at": True}, "at must"),
        ({"event": "ended", "reason": "elapsed"}, "first notice"),
        ({"previous": "a" * 32}, "first notice"),
    ],
)
def test_a_notice_outside_the_wire_rules_cannot_be_made(
    changes: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        notice(**changes)


def test_an_open_ended_no_removal_and_its_restart_are_notices() -> None:
    on = notice(protection="no-removal", ends_on=None)
    off = notice(on, protection="no-removal", event="ended", ends_on=None, reason="left-process")
    again = notice(off, protection="no-removal", ends_on=None)
    assert on.days is None and again.previous == off.notice_id


def test_encoding_round_trips_and_verifies_under_the_key_history() -> None:
    n = notice()
    assert decode(n.encode()) == n
    window = KeyWindow(
        "authority", signing_kid(KEY.verify_key), bytes(KEY.verify_key), T0, None, None, 1
    )
    assert verify_notice(sign_notice(n, KEY), history=[window]) == n
    revoked = dataclasses.replace(window, revoked_at=T0)
    with pytest.raises(RevokedKeyError):
        verify_notice(sign_notice(n, KEY), history=[revoked])
    with pytest.raises(MalformedError):
        decode(n.encode()[:-1])


def _chain(*steps: dict[str, Any]) -> list[Notice]:
    out: list[Notice] = []
    for step in steps:
        out.append(notice(out[-1] if out else None, **step))
    return out


START = {}
EXTEND = {"event": "extended", "ends_on": "2026-03-15", "reason": "recovery-needs"}
SOON = {"event": "ending-soon", "ends_on": "2026-03-15"}
END = {"event": "ended", "ends_on": "2026-03-15", "reason": "elapsed"}


@pytest.mark.parametrize(
    ("name", "steps"),
    [
        ("started, extended, ending soon, ended", [START, EXTEND, SOON, END]),
        ("refused at once", [{"event": "not-granted", "reason": "public-order"}]),
        (
            "started then ended by the authority",
            [START, {**END, "ends_on": "2026-02-15", "reason": "person-left"}],
        ),
        (
            "extended twice",
            [START, EXTEND, {**EXTEND, "ends_on": "2026-04-15", "reason": "proceedings"}],
        ),
    ],
)
def test_a_chain_the_receiver_accepts(name: str, steps: list[dict[str, Any]]) -> None:
    held: Notice | None = None
    for n in _chain(*steps):
        check_follows(held, n, reflection_min_days=30)
        held = n


def test_refused_links() -> None:
    """Each a named scenario: a fork, a gap, a shortened period, a move of the start, an
    ending-soon that changes the end, a step after the end, too short a period, time going
    back, another authority."""
    started, extended = _chain(START, EXTEND)
    ended = notice(extended, **END)
    refused = {
        "a fork: a second start": (started, notice()),
        "a gap: previous names no held notice": (
            started,
            notice(started, **EXTEND, previous="e" * 32),
        ),
        "an extension that ends earlier": (
            extended,
            notice(extended, **{**EXTEND, "ends_on": "2026-03-01"}),
        ),
        "an extension that moves the start": (
            started,
            notice(started, **EXTEND, starts_on="2026-01-02"),
        ),
        "ending soon with another end": (
            extended,
            notice(extended, **{**SOON, "ends_on": "2026-03-16"}),
        ),
        "extended after the end": (ended, notice(ended, **EXTEND)),
        "29 days": (None, notice(ends_on="2026-01-30")),
        "time going back": (started, notice(started, **EXTEND, at=T0 - 1)),
        "another authority": (started, notice(started, **EXTEND, authority="other")),
    }
    for name, (held, n) in refused.items():
        with pytest.raises(UnexpectedMessageError):
            check_follows(held, n, reflection_min_days=30)
        assert name


def test_follows_names_only_pairs_that_are_notices() -> None:
    """Every event FOLLOWS allows is a notice of its protection, and every notice pair can
    occur somewhere in a chain."""
    reachable = {(p, e) for (p, _), events in FOLLOWS.items() for e in events}
    assert reachable == set(REASONS)
    for protection, event in itertools.product(PROTECTIONS, EVENTS):
        assert ((protection, event) in REASONS) == ((protection, event) in reachable)
