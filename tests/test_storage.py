"""The agent storage layer (agents/storage/): owner keys and the migration to them."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest

from agents.storage import NewReferral, Step, Store, StoredRequest, schema
from agents.storage.schema import VERSION, MigrationError

#: The referral tables as release 10 made them, keyed by referral id alone.
OLD_SCHEMA = (Path(__file__).parent / "data" / "schema-release10.sql").read_text(encoding="utf-8")

SENT = "a" * 32
RECEIVED = "b" * 32


def old_database(path: Path) -> None:
    """A shelter database from before owner keys: one referral it sent to the coordinator,
    one it received from police, each with its history; police's data key and attachment."""
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    referral = "INSERT INTO referrals VALUES (?, ?, ?, ?, 'standard', 'routine', 'consent', NULL, ?, 10, ?, NULL, NULL)"  # noqa: E501
    db.execute(referral, (SENT, "coordinator", "sender", "delivered", "m1", 11))
    db.execute(referral, (RECEIVED, "police", "recipient", "acknowledged", "m2", 12))
    history = "INSERT INTO history (referral_id, counterpart, from_state, to_state, party, at) VALUES (?, ?, ?, ?, ?, ?)"  # noqa: E501
    db.execute(history, (SENT, "coordinator", None, "submitted", "sender", 10))
    db.execute(history, (RECEIVED, "police", None, "delivered", "system", 10))
    db.execute(history, (RECEIVED, "police", "delivered", "acknowledged", "recipient", 12))
    db.execute("INSERT INTO data_keys VALUES (?, ?)", (RECEIVED, b"sealed-key"))
    db.execute("INSERT INTO data_keys VALUES (?, ?)", ("c" * 32, b"orphan"))
    db.execute(
        "INSERT INTO received_attachments VALUES (?, 'd', 'e', 3, 'image/png', ?, NULL, 'pending')",
        (RECEIVED, b"k"),
    )
    db.execute(
        "INSERT INTO inbox (message_id, referral_id, kind, sender, envelope_hash, stream_seq,"
        " created, received_at, body) VALUES ('m2', ?, 'referral', 'police', 'h', 1, 10, 10, ?)",
        (RECEIVED, b"sealed-body"),
    )
    db.commit()
    db.close()


def test_a_database_from_before_owner_keys_migrates_filling_each_owner(tmp_path: Path) -> None:
    """Sent referrals become this agency's, received ones their sender's; history, data keys
    and attachments follow their referral; a data key of no referral is dropped; the database
    is marked current and opens again unchanged."""
    path = tmp_path / "agent.db"
    old_database(path)
    store = Store(path, agency="shelter")
    try:
        assert store.pairs("shelter", SENT) == [("coordinator", "sender", "delivered")]
        assert store.pairs("police", RECEIVED) == [("police", "recipient", "acknowledged")]
        assert store.pairs("shelter", RECEIVED) == []
        assert [r[2] for r in store.history_rows("police", RECEIVED)] == [
            "delivered",
            "acknowledged",
        ]
        assert [r[2] for r in store.history_rows("shelter", SENT)] == ["submitted"]
        assert store.data_key("police", RECEIVED) == b"sealed-key"
        assert store.received_body("police", RECEIVED) == b"sealed-body"
        assert store.received_position("m2") == ("NRM_MSG", 1)
        assert store.received_attachment("police", RECEIVED, "d") is not None
        (orphans,) = store._db.execute("SELECT count(*) FROM data_keys").fetchone()
        assert orphans == 1
        assert store._db.execute("PRAGMA user_version").fetchone() == (VERSION,)
        tables = {r[0] for r in store._db.execute("SELECT name FROM sqlite_master")}
        assert not {t for t in tables if t.endswith("_v0")}
    finally:
        store.close()
    again = Store(path, agency="shelter")
    try:
        assert again.pairs("police", RECEIVED) == [("police", "recipient", "acknowledged")]
    finally:
        again.close()


def test_migrating_sent_referrals_without_knowing_the_agency_is_refused(tmp_path: Path) -> None:
    """Whose the sent referrals are cannot be guessed: the old database is left as it was."""
    path = tmp_path / "agent.db"
    old_database(path)
    with pytest.raises(MigrationError):
        Store(path)
    db = sqlite3.connect(path)
    columns = {r[1] for r in db.execute("PRAGMA table_info(referrals)")}
    db.close()
    assert "owner" not in columns


def test_a_database_from_before_per_agency_inbox_streams_names_the_shared_stream(
    tmp_path: Path,
) -> None:
    """A database of user_version 1 (inbox rows without their stream): each row is given the
    shared inbox stream `NRM_MSG` it was consumed from; new rows name their own stream."""
    path = tmp_path / "agent.db"
    Store(path, agency="shelter").close()
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE inbox DROP COLUMN stream")
    db.execute(
        "INSERT INTO inbox (message_id, referral_id, kind, sender, envelope_hash, stream_seq,"
        " created, received_at, body) VALUES ('m1', NULL, 'receipt', 'police', 'h', 7, 1, 1,"
        " NULL)"
    )
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    store = Store(path, agency="shelter")
    try:
        assert store._db.execute("PRAGMA user_version").fetchone() == (VERSION,) == (5,)
        assert store.received_position("m1") == ("NRM_MSG", 7)
        assert store.received_position("m2") is None
    finally:
        store.close()


def test_sent_pairs_of_a_version_2_database_have_no_categories(tmp_path: Path) -> None:
    """Migration 3 adds `referrals.categories`: the pairs sent before keep NULL (what they
    carried was not kept), which a subject access report shows as null; running it again
    changes nothing."""
    db = sqlite3.connect(tmp_path / "agent.db")
    db.execute("CREATE TABLE referrals (owner TEXT, referral_id TEXT)")
    db.execute("INSERT INTO referrals VALUES ('police', 'ab')")
    schema._migrate_sent_categories(db)
    schema._migrate_sent_categories(db)
    assert db.execute("SELECT categories FROM referrals").fetchall() == [(None,)]
    db.close()


def older_database(path: Path, agency: str, version: int, *statements: str) -> None:
    """A database at `path` as of user_version `version`: today's schema, then
    `statements` (which undo what later migrations added, and store the rows to keep)."""
    Store(path, agency=agency).close()
    db = sqlite3.connect(path)
    for statement in statements:
        db.execute(statement)
    db.execute(f"PRAGMA user_version = {version}")
    db.commit()
    db.close()


def test_a_database_from_before_the_respond_clock_gets_overdue_at(tmp_path: Path) -> None:
    """A database of user_version 3 (referral pairs without `overdue_at`): each pair kept
    gets the column, none of them overdue yet, and is a candidate for the respond clock."""
    path = tmp_path / "agent.db"
    older_database(
        path,
        "police",
        3,
        "DROP INDEX referrals_overdue",
        "ALTER TABLE referrals DROP COLUMN overdue_at",
        "INSERT INTO outbox (message_id, referral_id, kind, created, envelope_hash, envelope)"
        " VALUES ('m1', 'r1', 'referral', 5, 'h', x'00')",
        "INSERT INTO referrals (owner, referral_id, counterpart, side, state, referral_type,"
        " urgency, legal_basis, message_id, created, updated) VALUES ('police', 'r1',"
        " 'shelter', 'sender', 'acknowledged', 'nrm_full', 'routine', 'consent', 'm1', 5, 5)",
    )
    store = Store(path, agency="police")
    try:
        assert store._db.execute("PRAGMA user_version").fetchone() == (VERSION,) == (5,)
        candidates = store.overdue_candidates(["routine"])
        assert candidates == [("police", "r1", "shelter", "acknowledged", "routine", 5)]
        with store.transaction() as tx:
            store.mark_overdue(tx, "police", "r1", "shelter", 9)
        assert store.overdue_candidates(["routine"]) == []
    finally:
        store.close()


def test_a_database_from_before_case_ends_were_kept_gets_their_columns(tmp_path: Path) -> None:
    """A database of user_version 4 (cases without `left_reason`, requests without
    `ended_by`): the case kept has no leaving reason, the request kept is still pending;
    the case can then leave with its reason and the request be ended unanswered."""
    path = tmp_path / "agent.db"
    older_database(
        path,
        "authority",
        4,
        "ALTER TABLE cases DROP COLUMN left_reason",
        "ALTER TABLE reconsideration_requests DROP COLUMN ended_by",
        "INSERT INTO cases (case_id, owner, referral_id, state, age_route, opened_at, updated)"
        " VALUES ('c1', 'police', 'r1', 'reconsidering_first', 'adult', 5, 6)",
        "INSERT INTO reconsideration_requests (requester, request_id, case_id, decision_id,"
        " stage, ground, owner, referral_id, at, received_at) VALUES ('police', 'q1', 'c1',"
        " 'd1', 'first', 'new-information', 'police', 'r1', 6, 6)",
    )
    store = Store(path, agency="authority")
    try:
        assert store._db.execute("PRAGMA user_version").fetchone() == (VERSION,) == (5,)
        with store.transaction() as tx:
            case = store.case(tx, "c1")
            assert case is not None and case.left_reason is None
            [request] = store.requests_of_case(tx, "c1")
            assert request.pending and request.ended_by is None
            store.leave_case(tx, "c1", "left_process", "lost-contact", 9)
            assert store.end_requests(tx, "c1", "left_process") == 1
            store.answer_requests(tx, "c1", "d2")  # an ended request stays unanswered
        with store.transaction() as tx:
            case = store.case(tx, "c1")
            assert case is not None
            left = (case.state, case.left_reason, case.updated)
            assert left == ("left_process", "lost-contact", 9)
            [request] = store.requests_of_case(tx, "c1")
            assert (request.pending, request.answered_by, request.ended_by) == (
                False,
                None,
                "left_process",
            )
    finally:
        store.close()


def test_one_id_from_two_owners_is_two_referrals(tmp_path: Path) -> None:
    """The same referral id held from police and from the coordinator: two referrals whose
    state, history and data keys change independently; a data key is never replaced."""
    store = Store(tmp_path / "agent.db", agency="shelter")
    try:
        with store.transaction() as db:
            for sender in ("police", "coordinator"):
                store.insert_referral(
                    db,
                    NewReferral(
                        owner=sender,
                        referral_id=RECEIVED,
                        counterpart=sender,
                        side="recipient",
                        state="delivered",
                        referral_type="standard",
                        urgency="routine",
                        legal_basis="consent",
                        consent_receipt_id=None,
                        message_id=f"m-{sender}",
                        created=1,
                    ),
                )
                store.put_data_key(db, sender, RECEIVED, sender.encode())
            store.set_state(
                db,
                "coordinator",
                RECEIVED,
                "coordinator",
                Step("delivered", "closed", "recipient", None, None, 2),
            )
            store.erase_received(db, "coordinator", RECEIVED)
        assert store.owners_of(RECEIVED) == ["coordinator", "police"]
        assert store.pairs("police", RECEIVED) == [("police", "recipient", "delivered")]
        assert store.data_key("police", RECEIVED) == b"police"
        assert store.data_key("coordinator", RECEIVED) is None
        assert store.history_rows("police", RECEIVED) == []
        with pytest.raises(sqlite3.IntegrityError), store.transaction() as db:
            store.put_data_key(db, "police", RECEIVED, b"another")
        assert store.data_key("police", RECEIVED) == b"police"
    finally:
        store.close()


def test_a_failed_copy_is_never_overdue(tmp_path: Path) -> None:
    """A copy whose delivery failed (refused, its recipient removed or revoked) is not a
    candidate for the respond clock: that recipient never had the referral to answer."""
    store = Store(tmp_path / "agent.db", agency="police")
    try:
        with store.transaction() as db:
            db.execute(
                "INSERT INTO outbox (message_id, referral_id, kind, created, envelope_hash,"
                " envelope) VALUES ('m1', 'r1', 'referral', 5, 'h', x'00')"
            )
            for recipient, delivery in (("shelter", "sent"), ("clinic", "failed")):
                db.execute(
                    "INSERT INTO referrals (owner, referral_id, counterpart, side, state,"
                    " referral_type, urgency, legal_basis, message_id, created, updated)"
                    " VALUES ('police', 'r1', ?, 'sender', 'submitted', 'nrm_full', 'routine',"
                    " 'consent', 'm1', 5, 5)",
                    (recipient,),
                )
                db.execute(
                    "INSERT INTO deliveries (message_id, recipient, state) VALUES ('m1', ?, ?)",
                    (recipient, delivery),
                )
        assert [c[2] for c in store.overdue_candidates(["routine"])] == ["shelter"]
    finally:
        store.close()


def test_a_reconsideration_request_is_stored_once_per_requester_and_id(tmp_path: Path) -> None:
    """A request is stored once per (requester, request_id): the same id again from its
    requester writes nothing, from another requester it is another request; the case's
    requests come oldest first, pending, and a stage outside first/second is refused."""
    store = Store(tmp_path / "agent.db", agency="shelter")
    try:
        first = StoredRequest(
            "police", "a" * 32, "c" * 32, "d" * 32, "first", "new-information", "police",
            "e" * 32, 100, 101,
        )  # fmt: skip
        with store.transaction() as db:
            assert store.insert_request(db, first)
            assert not store.insert_request(db, first)
        with store.transaction() as db:
            assert store.insert_request(
                db, dataclasses.replace(first, requester="ngo", ground="age-route")
            )
            listed = store.requests_of_case(db, "c" * 32)
            assert [(r.requester, r.ground, r.answered_by) for r in listed] == [
                ("police", "new-information", None),
                ("ngo", "age-route", None),
            ]
            assert store.requests_of_case(db, "f" * 32) == []
        with pytest.raises(sqlite3.IntegrityError), store.transaction() as db:
            store.insert_request(db, dataclasses.replace(first, request_id="b" * 32, stage="third"))
    finally:
        store.close()
