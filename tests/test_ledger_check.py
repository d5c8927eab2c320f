"""Ledger alerts kept in the agent's database (agents/ledger_check.py, agents/store.py): they
survive restarts, are acknowledged once their cause is understood, and new ones still raise.
The end-to-end path (a real ledger refusing revoked-key events) is in test_revocation.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from agents.ledger_check import LedgerSettings, LedgerWatch
from agents.store import Store
from keys import AgencyKeys
from keys.audit import AuditEvent, new_event_id, sign_event
from keys.directory import AgencyEntry, Directory, KeyEntry
from runtime import clock

POLICE = AgencyKeys.generate(agency="police", name="Police")


def watch(store: Store, directory: Directory | None = None) -> LedgerWatch:
    settings = LedgerSettings(
        url="http://127.0.0.1:9", token="t", name="national", identity=POLICE.public
    )
    return LedgerWatch(settings=settings, store=store, agency="police", directory=lambda: directory)


def test_alerts_survive_a_restart_and_clear_once_acknowledged(tmp_path: Path) -> None:
    """An open alert is still open after the database is reopened; acknowledging it makes
    the watch healthy for good, and the same event does not raise again."""
    store = Store(tmp_path / "agent.db")
    event_id = new_event_id()
    watch(store)._alert_once("missing-event", event_id)
    watch(store)._alert_once("missing-event", event_id)  # once per event
    store.close()
    store = Store(tmp_path / "agent.db")
    w = watch(store)
    assert (w.health()["status"], w.alerts, w.last_alert) == ("alert", 1, "missing-event")
    with store.transaction() as tx:
        assert store.acknowledge_alerts(tx, reason="missing-event", event_ids=[event_id]) == 1
    w._alert_once("missing-event", event_id)
    assert (w.health()["status"], w.alerts) == ("ok", 0)
    store.close()


def test_new_alerts_still_raise_after_an_acknowledgement(tmp_path: Path) -> None:
    """A repeated round-level alert counts occurrences in one open alert; after it is
    acknowledged the next occurrence opens a new one."""
    store = Store(tmp_path / "agent.db")
    w = watch(store)
    for _ in range(3):
        w._alert("bad-ledger-answer")
    [row] = store.alerts()
    assert (row[1], row[5], row[6]) == ("bad-ledger-answer", 3, None)
    with store.transaction() as tx:
        assert store.acknowledge_alerts(tx, reason="bad-ledger-answer") == 1
        assert store.acknowledge_alerts(tx, reason="bad-ledger-answer") == 0
    assert w.health()["status"] == "ok"
    w._alert("bad-ledger-answer")
    assert (w.health()["status"], w.alerts, len(store.alerts())) == ("alert", 1, 2)
    store.close()


def test_a_missing_event_the_directory_refuses_is_a_revoked_signer(tmp_path: Path) -> None:
    """An event signed after its key's revocation is recognised as such, and so is one
    signed before it (the ledger refuses it if the bus stored it after the revocation, and
    the agent does not know when it did); one of a key not revoked is a plain missing event
    (the ledger should hold it), even past the key's retirement."""
    now = clock.now()
    ident = POLICE.public
    entry = AgencyEntry(
        agency="police",
        name="Police",
        roles=("police",),
        signing_keys=(
            KeyEntry(ident.signing_kid, bytes(ident.signing_key), now - 1000, None, "active"),
        ),
        encryption_keys=(
            KeyEntry(ident.encryption_kid, bytes(ident.encryption_key), now - 1000, None, "active"),
        ),
        nats_key=ident.nats_key or "",
    )
    unrevoked = Directory(version=2, expires=now + 1000, agencies=(entry,))
    directory = unrevoked.revoke("police", ident.signing_kid, at=now - 100, reason="stolen")
    store = Store(tmp_path / "agent.db")
    w = watch(store, directory)

    def event(at: int) -> bytes:
        e = AuditEvent(event_id=new_event_id(), agency="police", kind="key.rotated", time=at)
        return sign_event(e, POLICE.signing_key)

    assert w._missing_reason(event(now - 10)) == "revoked-signer"
    assert w._missing_reason(event(now - 500)) == "revoked-signer"
    assert watch(store, unrevoked)._missing_reason(event(now - 500)) == "missing-event"
    retired = unrevoked.with_agency(
        dataclasses.replace(
            entry,
            signing_keys=(dataclasses.replace(entry.signing_keys[0], valid_until=now - 200),),
        )
    )
    assert watch(store, retired)._missing_reason(event(now - 500)) == "missing-event"
    assert (
        watch(store, directory.without_agency("police"))._missing_reason(event(now - 500))
        == "revoked-signer"
    )
    store.close()


def test_the_ledger_name_gives_the_checkpoint_origin() -> None:
    """[ledger] name must be DNS-like; the origin (and key name) checked is <name>/nrm-ledger."""
    settings = LedgerSettings(url="u", token="t", name="nrm.example", identity=POLICE.public)
    assert settings.origin == "nrm.example/nrm-ledger"
    for bad in ("National", "a b", ""):
        with pytest.raises(ValueError, match="DNS-like"):
            LedgerSettings(url="u", token="t", name=bad, identity=POLICE.public)
