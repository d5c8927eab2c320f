"""Who receives an identification decision (PROTOCOL §8.7 "Who receives it",
agents/decisions.py `recipients`), and the authority's store of the referrals it sent for a
case (agents/storage/cases.py, real SQLite)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agents.decisions import Copy, recipients
from agents.store import Case, NewReferral, Step, Store

OPENING = ("police", "a" * 32)
ONWARD = "b" * 32


@pytest.mark.parametrize(
    ("coordinators", "providers", "expected"),
    [
        ((), (), [Copy("police", "police", "a" * 32, True)]),
        (
            ("coordinator",),
            ((ONWARD, "shelter"),),
            [
                Copy("police", "police", "a" * 32, True),
                Copy("coordinator", "police", "a" * 32, True),
                Copy("shelter", "authority", ONWARD, False),
            ],
        ),
        # a provider that is also a coordinator gets one copy, with the reason
        (
            ("coordinator",),
            ((ONWARD, "coordinator"),),
            [
                Copy("police", "police", "a" * 32, True),
                Copy("coordinator", "police", "a" * 32, True),
            ],
        ),
        # the referrer holding an onward pair too: one copy, under its own referral
        ((), ((ONWARD, "police"),), [Copy("police", "police", "a" * 32, True)]),
        # the authority never seals to itself, even when it is listed as a coordinator
        (("authority",), (), [Copy("police", "police", "a" * 32, True)]),
    ],
    ids=["referrer-only", "all-three", "provider-coordinator", "provider-referrer", "self"],
)
def test_recipients(
    coordinators: tuple[str, ...],
    providers: tuple[tuple[str, str], ...],
    expected: list[Copy],
) -> None:
    """The referrer and coordinators get the reason under the opening pair, providers get
    the decision without it under their own pair, each agency once."""
    got = recipients(
        opening=OPENING, coordinators=coordinators, providers=providers, authority="authority"
    )
    assert got == expected


def _sent(store: Store, referral_id: str, recipient: str, state: str) -> None:
    with store.transaction() as db:
        store.insert_referral(
            db,
            NewReferral(
                owner="authority",
                referral_id=referral_id,
                counterpart=recipient,
                side="sender",
                state="submitted",
                referral_type="service_request",
                urgency="routine",
                legal_basis="public_task",
                consent_receipt_id=None,
                message_id=referral_id,
                created=1,
            ),
        )
        if state != "submitted":
            store.set_state(
                db,
                "authority",
                referral_id,
                recipient,
                Step("submitted", state, "recipient", None, None, 2),
            )


def test_a_case_s_providers_are_its_linked_referrals_accepted_or_in_progress(
    tmp_path: Path,
) -> None:
    """Only the recipients of the case's linked referrals whose pair is accepted or in
    progress count; a link is idempotent; another case's referral is not this one's, and
    cannot be linked to it (UNIQUE referral_id)."""
    store = Store(tmp_path / "agent.db", agency="authority")
    try:
        case = Case("c" * 32, "police", "a" * 32, "awaiting_first", "adult", 1, 1)
        other = Case("d" * 32, "police", "e" * 32, "awaiting_first", "adult", 1, 1)
        _sent(store, ONWARD, "shelter", "accepted")
        _sent(store, ONWARD, "clinic", "declined")
        _sent(store, "f" * 32, "house", "in_progress")
        _sent(store, "9" * 32, "ngo", "accepted")
        with store.transaction() as db:
            store.open_case(db, case)
            store.open_case(db, other)
            for rid in (ONWARD, "f" * 32, ONWARD):
                store.link_case_referral(db, case.case_id, rid)
            store.link_case_referral(db, other.case_id, "9" * 32)
        with store.transaction() as db:
            assert store.case_provider_pairs(db, case.case_id, "authority") == [
                (ONWARD, "shelter"),
                ("f" * 32, "house"),
            ]
            assert store.case_provider_pairs(db, other.case_id, "authority") == [("9" * 32, "ngo")]
        with pytest.raises(sqlite3.IntegrityError), store.transaction() as db:
            store.link_case_referral(db, other.case_id, ONWARD)  # one case per referral
        with store.transaction() as db:
            assert store.case_of_referral(db, ONWARD) == case.case_id
    finally:
        store.close()
