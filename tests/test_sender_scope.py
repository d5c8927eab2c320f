"""Sender-scoped referral ids (issue 11, item 1): an agency holding valid credentials and its
own signing key reuses another agency's referral id, reuses its own, and forges transitions
and withdrawals for referrals it does not share. Each is refused or kept apart, audited with
its reason, and changes nothing of anyone else's (asserted row for row).

Real nats-server, real SQLite, real crypto: in-process agents; the hostile envelopes are
sealed with the coordinator's own keys and published with its own bus credentials.
"""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path
from typing import Any

from agents import lifecycle as L
from agents import referral as R
from agents.messages import CONSENT_WITHDRAWAL, REFERRAL, TRANSITION
from keys.audit import decode_signed_event
from keys.codec import canonical_json
from keys.envelope import envelope_hash
from keys.subjects import inbox_subject
from runtime import clock

from . import samples
from .support import Mechanism, agency_keys, eventually, sealed
from .test_agent import connect_as, delivered

#: Everything the shelter holds about one referral, by owner and id.
OWNED = {
    "referrals": "SELECT * FROM referrals WHERE owner = ? AND referral_id = ?",
    "history": "SELECT * FROM history WHERE owner = ? AND referral_id = ? ORDER BY seq",
    "data_keys": "SELECT * FROM data_keys WHERE owner = ? AND referral_id = ?",
    "inbox": "SELECT * FROM inbox WHERE sender = ? AND referral_id = ?",
}


def held(db: Path, owner: str, referral_id: str) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(db)
    try:
        return {t: conn.execute(q, (owner, referral_id)).fetchall() for t, q in OWNED.items()}
    finally:
        conn.close()


def rejections(db: Path) -> list[tuple[str | None, str | None]]:
    """(reason, envelope hash) of every message.rejected event the agent audited."""
    conn = sqlite3.connect(db)
    try:
        events = [bytes(r[0]) for r in conn.execute("SELECT event FROM audit_outbox")]
    finally:
        conn.close()
    decoded = [decode_signed_event(e)[0] for e in events]
    return [(e.reason, e.envelope_hash) for e in decoded if e.kind == "message.rejected"]


def referral_body(m: Mechanism, referral_id: str, *, to: str, **routing: str) -> bytes:
    """A referral message exactly as an honest agent builds it, under `referral_id`, with
    the routing fields `routing`."""
    referral = R.validate_referral(samples.referral(**routing))
    roles = m.agents[to].trust.directory.agency(to).roles  # type: ignore[union-attr]
    body = R.minimise(dict(referral.body), R.categories_for_roles(roles))
    return canonical_json(
        {"referral": {**referral.routing(), "referral_id": referral_id, "body": body}}
    )


async def publish(m: Mechanism, sender: str, to: str, data: bytes) -> None:
    async with connect_as(m, sender) as nc:
        await nc.jetstream().publish(
            inbox_subject(to), data, headers={"Nats-Msg-Id": uuid.uuid4().hex}
        )


async def rejected(m: Mechanism, agency: str, data: bytes, reason: str) -> None:
    """Wait until `agency` audited `data` as message.rejected with `reason`."""
    wanted = (reason, envelope_hash(data))

    async def check() -> bool:
        return wanted in rejections(m.database(agency))

    await eventually(check, timeout=30, what=f"{agency} to reject a message as {reason}")


async def api(m: Mechanism, agency: str, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    status, body, _ = await m.api(agency).call(method, path, **kw)
    return status, body


async def test_another_agencys_referral_id_is_a_referral_of_its_own(mechanism: Mechanism) -> None:
    """Police refers to the shelter as R. The coordinator's case system cannot choose R (400,
    nothing sent); the coordinator's agent signing a referral R to the shelter gets one
    stored apart under (coordinator, R): police's records at the shelter stay as they were,
    row for row; the bare id is 409 until the sender is named; the coordinator sending R
    again is refused as reused-referral-id; a withdrawal of another receipt naming R is
    refused not-shared and erases nothing; its withdrawal of the receipt R cited erases its
    own, not police's."""
    m = mechanism
    coordinator = agency_keys(m, "coordinator")
    shelter_db = m.database("shelter")
    rid = await m.api("police").refer(["shelter"], samples.referral())
    await delivered(m, "police", rid)
    before = held(shelter_db, "police", rid)
    assert before["referrals"] and before["data_keys"] and before["inbox"]

    status, body = await api(
        m,
        "coordinator",
        "POST",
        "/v1/referrals",
        json={"recipients": ["shelter"], "referral": {**samples.referral(), "referral_id": rid}},
    )
    assert status == 400, body
    assert "referral_id" in body["detail"]

    receipt = str(uuid.uuid4())
    under = {"legal_basis": "consent", "consent_receipt_id": receipt}
    collision = sealed(
        m, coordinator, "shelter", REFERRAL, referral_body(m, rid, to="shelter", **under)
    )
    await publish(m, "coordinator", "shelter", collision)

    async def stored_apart() -> bool:
        return bool(held(shelter_db, "coordinator", rid)["referrals"])

    await eventually(stored_apart, what="the coordinator's referral to be stored apart")
    assert held(shelter_db, "police", rid) == before

    status, body = await api(m, "shelter", "GET", f"/v1/referrals/{rid}")
    assert status == 409, body
    assert "sender" in body["detail"]
    status, body = await api(m, "shelter", "GET", f"/v1/referrals/{rid}/history")
    assert status == 409, body
    status, body = await api(m, "shelter", "GET", f"/v1/referrals/{rid}?sender=police")
    assert status == 200, body
    assert (body["sender"], body["state"], body["erased"]) == ("police", "delivered", False)
    assert body["referral"]["body"]["names"]["given_names"] == "Mira"
    inbox = [i for i in await m.api("shelter").inbox() if i["id"] == rid]
    assert sorted((i["sender"], i["erased"]) for i in inbox) == [
        ("coordinator", False),
        ("police", False),
    ]

    again = sealed(m, coordinator, "shelter", REFERRAL, referral_body(m, rid, to="shelter"))
    await publish(m, "coordinator", "shelter", again)
    await rejected(m, "shelter", again, "reused-referral-id")
    [coordinators] = held(shelter_db, "coordinator", rid)["inbox"]
    assert coordinators[5] == envelope_hash(collision)  # the first one only

    # A withdrawal of another receipt erases nothing, not even the coordinator's own.
    other = canonical_json({"receipt_id": str(uuid.uuid4()), "referral_ids": [rid]})
    other_sealed = sealed(m, coordinator, "shelter", CONSENT_WITHDRAWAL, other)
    await publish(m, "coordinator", "shelter", other_sealed)
    await rejected(m, "shelter", other_sealed, "not-shared")
    status, body = await api(m, "shelter", "GET", f"/v1/referrals/{rid}?sender=coordinator")
    assert (status, body["erased"]) == (200, False)

    withdrawal = canonical_json({"receipt_id": receipt, "referral_ids": [rid]})
    await publish(
        m,
        "coordinator",
        "shelter",
        sealed(m, coordinator, "shelter", CONSENT_WITHDRAWAL, withdrawal),
    )

    async def own_erased() -> bool:
        status, body = await api(m, "shelter", "GET", f"/v1/referrals/{rid}?sender=coordinator")
        return status == 200 and body["erased"] is True

    await eventually(own_erased, what="the coordinator's own referral to be erased")
    assert held(shelter_db, "police", rid) == before
    status, body = await api(m, "shelter", "GET", f"/v1/referrals/{rid}?sender=police")
    assert (status, body["erased"]) == (200, False)


async def test_forged_transitions_and_withdrawals_are_refused(mechanism: Mechanism) -> None:
    """The coordinator moves and withdraws police's referral to the shelter: a transition as
    its sender (to the shelter), one as its recipient (to police) and a consent withdrawal
    naming it are each refused as not-shared and audited; neither agency's records change."""
    m = mechanism
    coordinator = agency_keys(m, "coordinator")
    rid = await m.api("police").refer(["shelter"], samples.referral())
    await delivered(m, "police", rid)
    shelter_before = held(m.database("shelter"), "police", rid)
    police_conn = sqlite3.connect(m.database("police"))
    try:
        police_before = police_conn.execute(
            "SELECT * FROM referrals WHERE referral_id = ?", (rid,)
        ).fetchall()
    finally:
        police_conn.close()
    now = clock.now()

    as_sender = L.Transition(rid, "shelter", "delivered", "withdrawn", "sender", None, None, now)
    as_recipient = L.Transition(
        rid, "coordinator", "delivered", "acknowledged", "recipient", None, None, now
    )
    withdrawal = canonical_json({"receipt_id": str(uuid.uuid4()), "referral_ids": [rid]})
    forged = [
        ("shelter", sealed(m, coordinator, "shelter", TRANSITION, as_sender.encode())),
        ("police", sealed(m, coordinator, "police", TRANSITION, as_recipient.encode())),
        ("shelter", sealed(m, coordinator, "shelter", CONSENT_WITHDRAWAL, withdrawal)),
    ]
    for to, data in forged:
        await publish(m, "coordinator", to, data)
    for to, data in forged:
        await rejected(m, to, data, "not-shared")

    assert held(m.database("shelter"), "police", rid) == shelter_before
    police_conn = sqlite3.connect(m.database("police"))
    try:
        assert (
            police_conn.execute("SELECT * FROM referrals WHERE referral_id = ?", (rid,)).fetchall()
            == police_before
        )
    finally:
        police_conn.close()
    status, body = await api(m, "shelter", "GET", f"/v1/referrals/{rid}")
    assert (status, body["state"], body["erased"]) == (200, "delivered", False)


async def test_ids_are_the_agents_and_a_client_reference_is_kept_once(
    mechanism: Mechanism,
) -> None:
    """Two referrals never share an id at their sender (no 500): the agent assigns them. A
    client reference is returned and shown to the sender only; used again it is 409 naming
    the referral it was used for, and nothing more is sent."""
    m = mechanism
    doc = {"recipients": ["shelter"], "referral": samples.referral(), "client_reference": "case/1"}
    status, first = await api(m, "police", "POST", "/v1/referrals", json=doc)
    assert status == 202, first
    assert first["client_reference"] == "case/1"
    status, second = await api(
        m, "police", "POST", "/v1/referrals", json={**doc, "client_reference": "case/2"}
    )
    assert status == 202, second
    assert first["id"] != second["id"]
    status, body = await api(m, "police", "POST", "/v1/referrals", json=doc)
    assert status == 409, body
    assert body["referral_id"] == first["id"]
    status, body = await api(
        m, "police", "POST", "/v1/referrals", json={**doc, "client_reference": "no spaces"}
    )
    assert status == 422, body
    await delivered(m, "police", first["id"])
    status, shown = await api(m, "police", "GET", f"/v1/referrals/{first['id']}")
    assert (status, shown["client_reference"], shown["sender"]) == (200, "case/1", "police")
    status, received = await api(m, "shelter", "GET", f"/v1/referrals/{first['id']}")
    assert status == 200, received
    assert "client_reference" not in received
    assert "case/1" not in str(received)


async def test_a_referral_id_with_decisions_held_under_it_is_not_taken(
    mechanism: Mechanism,
) -> None:
    """A co-ordinator holds an authority's decisions under the referrer's pair (police, R)
    without police's referral (PROTOCOL §8.7). A referral R from police arriving after them
    is refused reused-referral-id and nothing of it is stored: accepted, police could erase
    the authority's decisions by withdrawing it. (The decision row stands for one the
    co-ordinator received; the refusal is what is tested.)"""
    m = mechanism
    rid = uuid.uuid4().hex
    conn = sqlite3.connect(m.database("coordinator"), timeout=30)
    try:
        with conn:
            conn.execute(
                "INSERT INTO decisions (authority, decision_id, case_id, stage, outcome,"
                " owner, referral_id, signed, stored_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                ("ca", "d" * 32, "c" * 32, "first", "positive", "police", rid, b"x", 1),
            )
    finally:
        conn.close()
    data = sealed(
        m,
        agency_keys(m, "police"),
        "coordinator",
        REFERRAL,
        referral_body(m, rid, to="coordinator"),
    )
    await publish(m, "police", "coordinator", data)
    await rejected(m, "coordinator", data, "reused-referral-id")
    stored = held(m.database("coordinator"), "police", rid)
    assert not stored["referrals"] and not stored["data_keys"]
