"""Erasure and retention in the storage layer, on a real SQLite database: what they delete
never breaks a loop that still holds the deleted row's id."""

from __future__ import annotations

import json
from pathlib import Path

from agents.storage import PendingConfirmation, Store

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
