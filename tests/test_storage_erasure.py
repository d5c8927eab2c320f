"""Erasure and retention in the storage layer, on a real SQLite database: what they delete
never breaks a loop that still holds the deleted row's id."""

from __future__ import annotations

import json
import secrets
import sqlite3
from pathlib import Path

import pytest

from agents.storage import (
    NewReferral,
    PendingConfirmation,
    Store,
    StoredDecision,
    StoredNotice,
)

URL = "https://case-system.example/hook"


def _event(store: Store, event_id: str, referral_id: str, sender: str) -> None:
    body = json.dumps({"data": {"referral_id": referral_id, "sender": sender}}).encode()
    with store.transaction() as db:
        store.insert_webhook_event(db, event_id, "referral.received", 1, body)


def test_webhook_delivery_of_an_erased_event_records_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "agent.db", agency="shelter")
    try:
        _event(store, "e1", "r1", "police")
        _event(store, "e2", "r1", "coordinator")
        assert [e for e, _, _ in store.webhook_pending(URL, 10)] == ["e1", "e2"]
        # The delivery loop read e1, then an erasure of police's r1 deleted it.
        with store.transaction() as db:
            store.erase_received(db, "police", "r1")
        store.webhook_attempt("e1", URL, 503)
        store.webhook_delivered("e1", URL, 200, [URL])
        # The coordinator's referral of the same id keeps its event; police's is gone.
        assert [e for e, _, _ in store.webhook_pending(URL, 10)] == ["e2"]
        store.webhook_delivered("e2", URL, 200, [URL])
        assert store.webhook_pending(URL, 10) == []
    finally:
        store.close()


def test_a_second_withdrawal_before_the_confirmation_merges_the_ids(tmp_path: Path) -> None:
    store = Store(tmp_path / "agent.db", agency="shelter")
    try:
        with store.transaction() as db:
            store.queue_confirmation(db, PendingConfirmation("c1", "police", ("r1", "r2"), 5))
            store.queue_confirmation(db, PendingConfirmation("c1", "police", ("r3",), 7))
            store.queue_confirmation(db, PendingConfirmation("c1", "labour", ("r9",), 8))
        pending = {(c.receipt_id, c.sender): c for c in store.pending_confirmations(10)}
        assert pending[("c1", "police")].referral_ids == ("r1", "r2", "r3")
        assert pending[("c1", "police")].erased_at == 7
        assert pending[("c1", "labour")].referral_ids == ("r9",)
    finally:
        store.close()


def _pair(
    store: Store,
    db: sqlite3.Connection,
    owner: str,
    referral_id: str,
    counterpart: str,
    state: str,
) -> None:
    """A referral pair in `state` since time 1: received from `owner` (the counterpart) or,
    at its owner, sent to `counterpart`."""
    store.insert_referral(
        db,
        NewReferral(
            owner=owner,
            referral_id=referral_id,
            counterpart=counterpart,
            side="recipient" if counterpart == owner else "sender",
            state=state,
            referral_type="nrm_full",
            urgency="routine",
            legal_basis="consent",
            consent_receipt_id=None,
            message_id=f"m-{owner}-{referral_id}-{counterpart}",
            created=1,
        ),
    )


def _received(
    store: Store, db: sqlite3.Connection, owner: str, referral_id: str, state: str
) -> None:
    """A referral `owner` sent here, in `state` since time 1, with its data key."""
    _pair(store, db, owner, referral_id, owner, state)
    store.put_data_key(db, owner, referral_id, b"sealed key")


def _held(store: Store, db: sqlite3.Connection, authority: str, owner: str, rid: str) -> str:
    """A decision and a notice of `authority` held under the pair (owner, rid); the case id."""
    case_id = secrets.token_hex(16)
    store.insert_decision(
        db,
        StoredDecision(
            authority,
            secrets.token_hex(16),
            case_id,
            "first",
            "positive",
            owner,
            rid,
            b"d",
            None,
            None,
            1,
        ),
    )
    store.insert_notice(
        db,
        StoredNotice(
            authority,
            secrets.token_hex(16),
            case_id,
            "reflection",
            "started",
            owner,
            rid,
            b"n",
            1,
        ),
    )
    return case_id


def _cases_held(store: Store) -> list[tuple[str, str]]:
    decisions = store._db.execute("SELECT authority, case_id FROM decisions ORDER BY 1, 2")
    notices = store._db.execute(
        "SELECT authority, case_id FROM protection_notices ORDER BY 1, 2"
    ).fetchall()
    held = [(str(a), str(c)) for a, c in decisions.fetchall()]
    assert held == [(str(a), str(c)) for a, c in notices]
    return held


@pytest.mark.parametrize("path", ["withdrawal", "retention"])
def test_an_erased_pair_takes_what_other_authorities_sent_under_it(
    tmp_path: Path, path: str
) -> None:
    """At an agency that is itself a competent authority ("shelter"), erasing police's
    referral r1 (a withdrawal, or retention purging the closed pair) deletes the decisions
    and notices another authority sent under (police, r1), keeps its own under that pair
    (its record) and those under another pair of the same id; the pair then counts as
    erased (retention: it is gone, and then it is no pair at all)."""
    store = Store(tmp_path / "agent.db", agency="shelter")
    try:
        with store.transaction() as db:
            _received(store, db, "police", "r1", "closed")
            _received(store, db, "coordinator", "r1", "accepted")
            own = _held(store, db, "shelter", "police", "r1")
            _held(store, db, "ca2", "police", "r1")
            other_pair = _held(store, db, "ca2", "coordinator", "r1")
        assert not store.is_erased("police", "r1")
        with store.transaction() as db:
            if path == "withdrawal":
                store.erase_received(db, "police", "r1")
            else:
                assert store.purge_closed(db, cutoff=2, batch=10) == 1
        assert sorted(_cases_held(store)) == sorted([("shelter", own), ("ca2", other_pair)])
        assert store.is_erased("police", "r1") is (path == "withdrawal")
        assert not store.is_erased("coordinator", "r1")
    finally:
        store.close()


def test_retention_takes_what_a_sender_was_told_with_its_last_pair(tmp_path: Path) -> None:
    """At the referrer, the decisions and notices an authority sent under its own referral
    go when retention purges the referral's last pair, not before: while one recipient's
    pair is open they are still the referral's; its own stay."""
    store = Store(tmp_path / "agent.db", agency="shelter")
    try:
        with store.transaction() as db:
            _pair(store, db, "shelter", "r1", "ca", "closed")
            _pair(store, db, "shelter", "r1", "ngo2", "accepted")
            told = _held(store, db, "ca", "shelter", "r1")
            own = _held(store, db, "shelter", "shelter", "r1")
        with store.transaction() as db:
            assert store.purge_closed(db, cutoff=2, batch=10) == 1  # the pair with ca
        assert sorted(_cases_held(store)) == sorted([("ca", told), ("shelter", own)])
        with store.transaction() as db:
            store._db.execute("UPDATE referrals SET state = 'closed' WHERE counterpart = 'ngo2'")
            assert store.purge_closed(db, cutoff=2, batch=10) == 1  # the last pair
        assert _cases_held(store) == [("shelter", own)]
    finally:
        store.close()
