"""An agency's standing in the directory (keys/standing.py) and what the agent does about it
(agents/standing.py), against a real SQLite store, real keys and real envelopes."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.audit import AuditTrail
from agents.standing import StandingGuard
from agents.store import OutgoingMessage, Store
from keys import AgencyEntry, AgencyKeys, Directory, KeyEntry, Recipient, seal
from keys.audit import decode_signed_event
from keys.limits import DEFAULT_LIMITS
from keys.standing import next_revocation, standing_of
from runtime import clock

DAY = 86400


def entry_of(keys: AgencyKeys, *, valid_from: int) -> AgencyEntry:
    ident = keys.public
    return AgencyEntry(
        agency=keys.agency,
        name=keys.name,
        roles=("police",),
        signing_keys=(
            KeyEntry(ident.signing_kid, bytes(ident.signing_key), valid_from, None, "active"),
        ),
        encryption_keys=(
            KeyEntry(ident.encryption_kid, bytes(ident.encryption_key), valid_from, None, "active"),
        ),
        nats_key=ident.nats_key or "",
    )


def directory_of(*entries: AgencyEntry, now: int) -> Directory:
    return Directory(version=1, expires=now + 30 * DAY, agencies=entries)


def held(keys: AgencyKeys) -> dict[str, set[str]]:
    return {
        "signing_kids": {keys.public.signing_kid},
        "encryption_kids": set(keys.decryption_keys),
    }


NOW = 1_800_000_000
POLICE = AgencyKeys.generate(agency="police", name="Police")
SHELTER = AgencyKeys.generate(agency="shelter", name="Shelter")
ROTATED = POLICE.rotated()


def _base(now: int = NOW) -> Directory:
    return directory_of(
        entry_of(POLICE, valid_from=now - DAY), entry_of(SHELTER, valid_from=now - DAY), now=now
    )


def _rotated_and_revoked(at: int, now: int = NOW) -> Directory:
    d = _base(now).rotate(
        "police",
        signing=(ROTATED.public.signing_kid, bytes(ROTATED.public.signing_key)),
        encryption=(ROTATED.public.encryption_kid, bytes(ROTATED.public.encryption_key)),
        now=now,
        overlap_seconds=0,
    )
    d = d.revoke("police", POLICE.public.signing_kid, at=at, reason="laptop stolen")
    return d.revoke("police", POLICE.public.encryption_kid, at=at, reason="laptop stolen")


STANDINGS = {
    "listed with the keys it holds: ok": (_base(), POLICE, NOW, "ok"),
    "not in the directory: removed": (_base().without_agency("police"), POLICE, NOW, "removed"),
    "signing key revoked, no replacement: key-revoked": (
        _base().revoke("police", POLICE.public.signing_kid, at=NOW - 10, reason="lost"),
        POLICE,
        NOW,
        "key-revoked",
    ),
    "encryption key revoked, no replacement: key-revoked": (
        _base().revoke("police", POLICE.public.encryption_kid, at=NOW - 10, reason="lost"),
        POLICE,
        NOW,
        "key-revoked",
    ),
    "old keys revoked, the key file holds the new ones: ok": (
        _rotated_and_revoked(NOW),
        ROTATED,
        NOW,
        "ok",
    ),
    "rotated but not yet published (the directory lists the old keys only): key-unlisted": (
        _base(),
        ROTATED,
        NOW,
        "key-unlisted",
    ),
    "old keys revoked, the key file was not rotated: key-revoked": (
        _rotated_and_revoked(NOW),
        POLICE,
        NOW,
        "key-revoked",
    ),
    "signing key revoked from a later time: still ok before it": (
        _base().revoke("police", POLICE.public.signing_kid, at=NOW + 100, reason="leaving"),
        POLICE,
        NOW,
        "ok",
    ),
    "signing key revoked from a later time: key-revoked from then": (
        _base().revoke("police", POLICE.public.signing_kid, at=NOW + 100, reason="leaving"),
        POLICE,
        NOW + 100,
        "key-revoked",
    ),
    "keys whose window starts a moment later (the administrators' clock is ahead): ok": (
        directory_of(entry_of(POLICE, valid_from=NOW + 5), now=NOW),
        POLICE,
        NOW,
        "ok",
    ),
    "every key past its window: key-retired": (
        _base().rotate(
            "police",
            signing=(SHELTER.public.signing_kid, bytes(SHELTER.public.signing_key)),
            encryption=(SHELTER.public.encryption_kid, bytes(SHELTER.public.encryption_key)),
            now=NOW,
            overlap_seconds=60,
        ),
        POLICE,
        NOW + 61,
        "key-retired",
    ),
}


@pytest.mark.parametrize("case", STANDINGS)
def test_standing(case: str) -> None:
    """Each directory gives the agency the standing the scenario names."""
    directory, keys, at, expected = STANDINGS[case]
    standing = standing_of(directory, "police", **held(keys), at=at, skew=0)
    assert standing.state == expected, standing.detail
    assert (standing.signing_kid is not None) == (expected == "ok")


def test_next_revocation_is_the_earliest_later_one() -> None:
    """The agent knows when to look again: the first of the agency's revocations after now."""
    d = _base().revoke("police", POLICE.public.signing_kid, at=NOW + 100, reason="x")
    d = d.revoke("police", POLICE.public.encryption_kid, at=NOW + 50, reason="x")
    assert next_revocation(d, "police", after=NOW) == NOW + 50
    assert next_revocation(d, "police", after=NOW + 50) == NOW + 100
    assert next_revocation(d, "police", after=NOW + 100) is None


# --- the agent's guard ----------------------------------------------------------------------


def _guard(store: Store, keys: AgencyKeys, failed: list[tuple[str, int]]) -> StandingGuard:
    return StandingGuard(
        agency="police",
        store=store,
        audit=AuditTrail(agency="police", keys=lambda: keys, store=store),
        limits=DEFAULT_LIMITS,
        on_failed=lambda reason, n: failed.append((reason, n)),
    )


def _queue(store: Store, keys: AgencyKeys, referral_id: str) -> str:
    now = clock.now()
    sealed = seal(
        sender=keys,
        recipients=[Recipient("shelter", SHELTER.encryption_key.public_key)],
        kind="referral",
        body=b"{}",
        created=now,
        expires=now + DAY,
    )
    store.enqueue(
        OutgoingMessage(
            message_id=sealed.header.message_id,
            kind="referral",
            created=now,
            envelope_hash=sealed.hash,
            envelope=sealed.data,
            recipients=["shelter"],
            referral_id=referral_id,
        )
    )
    return sealed.header.message_id


def _states(store: Store) -> dict[str, tuple[str, str | None]]:
    out = {}
    for mid in [r[0] for r in store._db.execute("SELECT message_id FROM outbox")]:
        status = store.outgoing(mid)
        assert status is not None
        (copy,) = status.deliveries
        out[mid] = (copy.state, copy.failure)
    return out


def _kinds(store: Store, table: str) -> list[str]:
    if table == "audit":
        return [
            decode_signed_event(bytes(r[0]))[0].kind
            for r in store._db.execute("SELECT event FROM audit_outbox ORDER BY seq")
        ]
    return [r[0] for r in store._db.execute("SELECT type FROM webhook_outbox ORDER BY seq")]


def _offset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seconds: int) -> None:
    path = tmp_path / "clock"
    monkeypatch.setenv(clock.ENV, str(path))
    clock.set_offset(path, seconds)


def test_revoked_key_fails_what_it_signed_after_the_revocation_only(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After `revoke+rotate` the agent keeps its standing (it holds the new keys), and of what
    the old key signed, exactly the copies that reach or reached the bus after the revocation
    time are failed, each with an audit event, a webhook event and the metric; a copy that
    reached it before, and one delivered, are left alone."""
    _offset(tmp_path, monkeypatch, 0)
    t0 = clock.now()
    before = _queue(store, POLICE, "a" * 32)
    delivered = _queue(store, POLICE, "b" * 32)
    store.mark_sent_many([(before, "shelter", 1), (delivered, "shelter", 2)])
    with store.transaction() as tx:
        envelope_hash = store.outgoing(delivered).envelope_hash  # type: ignore[union-attr]
        store.mark_delivered(
            tx, message_id=delivered, recipient="shelter", envelope_hash=envelope_hash
        )
    _offset(tmp_path, monkeypatch, 1000)
    after = _queue(store, POLICE, "c" * 32)
    store.mark_sent_many([(after, "shelter", 3)])
    queued = _queue(store, POLICE, "d" * 32)
    fresh = _queue(store, ROTATED, "e" * 32)  # signed by the new key: unaffected
    failed: list[tuple[str, int]] = []
    guard = _guard(store, ROTATED, failed)
    directory = _rotated_and_revoked(t0 + 500, now=t0)
    assert guard.evaluate(directory, ROTATED)
    assert guard.standing.ok and guard.refusal() is None
    assert _states(store) == {
        before: ("sent", None),
        delivered: ("delivered", None),
        after: ("failed", "key-revoked"),
        queued: ("failed", "key-revoked"),
        fresh: ("queued", None),
    }
    assert failed == [("key-revoked", 2)]
    assert _kinds(store, "audit").count("delivery.failed") == 2
    assert _kinds(store, "webhook") == ["delivery.failed", "delivery.failed"]
    assert not guard.evaluate(directory, ROTATED)  # nothing more to fail: no repeat


def test_removed_agency_fails_what_is_queued_and_refuses_until_readmitted(store: Store) -> None:
    """Removed from the directory, the agent fails its queued copies with reason `removed`
    (one already on the bus is left to its recipient), refuses submissions, and recovers
    once it is listed again."""
    sent = _queue(store, POLICE, "a" * 32)
    store.mark_sent_many([(sent, "shelter", 1)])
    queued = _queue(store, POLICE, "b" * 32)
    failed: list[tuple[str, int]] = []
    guard = _guard(store, POLICE, failed)
    now = clock.now()
    listed = directory_of(
        entry_of(POLICE, valid_from=now - DAY), entry_of(SHELTER, valid_from=now - DAY), now=now
    )
    assert not guard.evaluate(listed, POLICE)
    removed = listed.without_agency("police")
    assert guard.evaluate(removed, POLICE)
    assert guard.refusal() is not None and guard.refusal()[0] == "removed"  # type: ignore[index]
    assert _states(store) == {sent: ("sent", None), queued: ("failed", "removed")}
    assert failed == [("removed", 1)]
    assert not guard.evaluate(listed, POLICE)
    assert guard.standing.ok and guard.refusal() is None
    assert _kinds(store, "audit").count("standing.changed") == 2


def test_copy_signed_by_a_key_the_directory_refuses_is_held_then_failed(store: Store) -> None:
    """Right before publishing, a copy signed by a key the trusted directory revokes (by now)
    or lists no more is held back, never published — its recipient would refuse it without a
    word — and the guard's next look fails it, even one sealed after the guard looked at that
    directory (in the moment a rotated key file takes to load); a copy of the new key, or of a
    key revoked only later, goes out. Nothing is judged before there is a directory."""
    now = clock.now()
    failed: list[tuple[str, int]] = []
    guard = _guard(store, ROTATED, failed)
    readmitted = (
        _base(now).without_agency("police").with_agency(entry_of(ROTATED, valid_from=now - DAY))
    )
    assert not guard.evaluate(readmitted, ROTATED)
    old = _queue(store, POLICE, "a" * 32)  # sealed with the keys held a moment before
    new = _queue(store, ROTATED, "b" * 32)
    envelopes = {p.message_id: p.envelope for p in store.pending(10)}
    assert not guard.evaluate(readmitted, ROTATED)  # nothing changed that it would look for
    revoked = _rotated_and_revoked(now - 10, now=now)
    later = _rotated_and_revoked(now + 100, now=now)
    assert guard.hold_reason(revoked, envelopes[old], now=now) == "signing-key-revoked"
    assert guard.hold_reason(later, envelopes[old], now=now) is None
    assert guard.hold_reason(None, envelopes[old], now=now) is None
    assert guard.hold_reason(readmitted, envelopes[new], now=now) is None
    assert guard.hold_reason(readmitted, envelopes[old], now=now) == "signing-key-unlisted"
    assert guard.evaluate(readmitted, ROTATED)  # told to look again: fails the held copy
    assert _states(store) == {old: ("failed", "key-revoked"), new: ("queued", None)}
    assert failed == [("key-revoked", 1)]


def test_failed_copy_that_is_delivered_after_all_becomes_delivered(store: Store) -> None:
    """A receipt for a copy marked failed (it reached the bus just before the revocation
    took effect after all) records it delivered: the failure was a guess on the safe side."""
    mid = _queue(store, POLICE, "a" * 32)
    with store.transaction() as tx:
        assert store.fail_deliveries(tx, [(mid, "shelter", "key-revoked")]) == 1
    envelope_hash = store.outgoing(mid).envelope_hash  # type: ignore[union-attr]
    with store.transaction() as tx:
        assert store.mark_delivered(
            tx, message_id=mid, recipient="shelter", envelope_hash=envelope_hash
        )
    assert _states(store) == {mid: ("delivered", "key-revoked")}


def test_database_from_before_failed_copies_is_migrated(tmp_path: Path) -> None:
    """An agent database made before copies could fail keeps every delivery, and its copies
    can now be marked failed with a reason."""
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript(
            """
            CREATE TABLE outbox (message_id TEXT PRIMARY KEY, referral_id TEXT,
                kind TEXT NOT NULL, created INTEGER NOT NULL, envelope_hash TEXT NOT NULL,
                envelope BLOB NOT NULL) STRICT;
            CREATE TABLE deliveries (
                message_id TEXT NOT NULL REFERENCES outbox(message_id),
                recipient TEXT NOT NULL,
                state TEXT NOT NULL CHECK (state IN ('queued', 'sent', 'delivered')),
                attempts INTEGER NOT NULL DEFAULT 0, stream_seq INTEGER, sent_at INTEGER,
                delivered_at INTEGER, PRIMARY KEY (message_id, recipient)) STRICT;
            INSERT INTO outbox VALUES ('m1', NULL, 'referral', 1, 'h', x'00');
            INSERT INTO deliveries VALUES ('m1', 'shelter', 'sent', 2, 7, 3, NULL);
            INSERT INTO deliveries VALUES ('m1', 'coordinator', 'queued', 0, NULL, NULL, NULL);
            """
        )
    store = Store(path)
    try:
        status = store.outgoing("m1")
        assert status is not None
        assert [(d.recipient, d.state, d.sent_at) for d in status.deliveries] == [
            ("coordinator", "queued", None),
            ("shelter", "sent", 3),
        ]
        with store.transaction() as tx:
            assert store.fail_deliveries(tx, [("m1", "coordinator", "removed")]) == 1
        assert store.outgoing("m1").status == "failed"  # type: ignore[union-attr]
        assert store.failed_count() == 1
    finally:
        store.close()
