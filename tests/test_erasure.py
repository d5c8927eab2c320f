"""Erasure that leaves no recoverable byte (issue 11, deliverable 3).

A referral with a canary in its body and a canary attachment goes from the police to the
shelter under a consent; the shelter fetches both; the consent is withdrawn. Once the police
sees the erasure confirmed, with every agent and the bus STILL RUNNING, no file under any
agency's folder (database, -wal, -shm, key files, a backup made afterwards) nor under the
JetStream store holds the canaries, the sealed body, the data or attachment key (sealed or
plain), the encrypted attachment or the envelope that carried the referral. The shelter
confirms only once its WAL is truncated, which a reader holding an old snapshot delays.

The shelter's inbox stream still holds a message when the store is searched: nats-server
deletes a block file once every message in it is gone, so with an empty stream an
envelope only acked (not erased) would be gone from the disk too and the search would
prove nothing; with one message left in the block, it is found unless it was erased.
"""

from __future__ import annotations

import base64
import copy
import datetime
import json
import secrets
import sqlite3
import uuid
from pathlib import Path
from typing import Any

from nacl.secret import SecretBox

from keys import codec
from keys.audit import decode_signed_event
from keys.subjects import PREFIX, inbox_stream, inbox_subject
from runtime.durability import backup

from . import samples
from .support import Mechanism, agency_keys, eventually, query, sealed
from .test_agent import delivered, operator_js
from .test_identification import (
    AUTHORITY,
    COORDINATOR_OPENS,
    authority_mechanism,
    events,
    seen_accepted,
)
from .test_sender_scope import publish, rejected


def _probes(data: bytes) -> list[bytes]:
    """The whole of `data` and, if long, two 48-byte slices of it (a store may split or
    frame it)."""
    assert len(data) >= 48
    if len(data) < 144:
        return [data]
    middle = len(data) // 2
    return [data, data[middle : middle + 48], data[-48:]]


def held_in_a_file(m: Mechanism, forbidden: dict[str, list[bytes]]) -> str | None:
    """What of `forbidden` a file of any agency's folder (database, `-wal`, `-shm`, key
    files, backups) or of the bus store holds, and where; None for nothing."""
    files = [
        p
        for folder in [*(s.home for s in m.setups.values()), m.root / "bus"]
        for p in folder.rglob("*")
        if p.is_file()
    ]
    assert any(p.name == "agent.db-wal" for p in files)  # the agents are running
    for p in files:
        data = p.read_bytes()
        for what, probes in forbidden.items():
            if any(probe in data for probe in probes):
                return f"{what} is still in {p.relative_to(m.root)}"
    return None


async def _call(m: Mechanism, agency: str, method: str, path: str, **kw: Any) -> Any:
    status, body, _ = await m.api(agency).call(method, path, **kw)
    assert status in (200, 201, 202), (status, body)
    return body


async def test_no_file_of_any_agent_or_the_bus_keeps_an_erased_referral(
    mechanism: Mechanism,
) -> None:
    """After the erasure is confirmed, no byte that reveals or opens the withdrawn referral
    or its attachment is left in any file of any running agent or of the JetStream store."""
    m = mechanism
    # A message in the shelter's inbox stream that its consumer never takes (a subject of
    # no agency, added by the operator for this test), stored before the referral, so the
    # block holding the referral's envelope stays on disk (see the module docstring).
    filler_subject = f"{PREFIX}.msg.filler-{secrets.token_hex(4)}"
    nc, js = await operator_js(m)
    try:
        stream = inbox_stream("shelter")
        config = (await js.stream_info(stream)).config
        await js.update_stream(config.evolve(subjects=[inbox_subject("shelter"), filler_subject]))
        await js.publish(filler_subject, secrets.token_bytes(64), headers={"Nats-Msg-Id": "f"})
    finally:
        await nc.close()
    canary = f"Canary{secrets.token_hex(8)}"
    file_canary = f"FileCanary{secrets.token_hex(8)}".encode()
    receipt_id = str(uuid.uuid4())
    consent = samples.consent(receipt_id)
    consent["purposes"][0]["data_categories"].append("attachments")
    await _call(m, "police", "POST", "/v1/consents", json=consent)
    content = b"%PDF-1.7 " + file_canary + secrets.token_bytes(2048) + file_canary
    headers = {"Content-Type": "application/pdf"}
    item = await _call(m, "police", "POST", "/v1/attachments", data=content, headers=headers)
    cited = {k: item[k] for k in ("attachment_id", "media_type", "size", "sha256")}
    body = {
        **copy.deepcopy(samples.BODY),
        "names": {"given_names": canary, "family_name": "Example"},
        "attachments": [cited],
    }
    referral = samples.referral(body, legal_basis="consent", consent_receipt_id=receipt_id)
    answer = await _call(
        m, "police", "POST", "/v1/referrals", json={"recipients": ["shelter"], "referral": referral}
    )
    rid = answer["id"]
    await delivered(m, "police", rid)
    aid = item["attachment_id"]
    path = f"/v1/referrals/{rid}/attachments/{aid}"

    async def attachment_status() -> int:
        auth = {"Authorization": f"Bearer {m.setups['shelter'].token}"}
        async with m.http.get(m.agents["shelter"].api_url + path, headers=auth) as r:
            return r.status

    async def fetched() -> bool:
        return await attachment_status() == 200

    await eventually(fetched, what="the shelter to fetch and verify the attachment")
    got = await _call(m, "shelter", "GET", f"/v1/referrals/{rid}")
    assert got["referral"]["body"]["names"]["given_names"] == canary

    # Everything that reveals or opens the referral, captured before the withdrawal.
    shelter_db, police_db = m.database("shelter"), m.database("police")
    storage = SecretBox(m.agents["shelter"].keys.storage_key)
    [(sealed_key,)] = query(
        shelter_db, "SELECT sealed_key FROM data_keys WHERE referral_id = ?", rid
    )
    [(sealed_body,)] = query(shelter_db, "SELECT body FROM inbox WHERE referral_id = ?", rid)
    data_key = storage.decrypt(bytes(sealed_key))
    opened = json.loads(SecretBox(data_key).decrypt(bytes(sealed_body)))
    attachment_key = base64.b64decode(opened["attachment_key"])
    [(sealed_attachment_key, encrypted_attachment)] = query(
        shelter_db,
        "SELECT sealed_key, data FROM received_attachments WHERE referral_id = ?",
        rid,
    )
    [(envelope,)] = query(
        police_db, "SELECT envelope FROM outbox WHERE kind = 'referral' AND referral_id = ?", rid
    )
    forbidden: dict[str, list[bytes]] = {
        "the canary": [canary.encode()],
        "the attachment canary": [file_canary],
        "the sealed data key": _probes(bytes(sealed_key)),
        "the data key": [data_key],
        "the sealed body": _probes(bytes(sealed_body)),
        "the attachment key": [attachment_key],
        "the sealed attachment key": _probes(bytes(sealed_attachment_key)),
        "the encrypted attachment": _probes(bytes(encrypted_attachment)),
        "the referral envelope": _probes(bytes(envelope)),
    }

    # A reader holding an old snapshot (a backup being copied, say) holds up the WAL
    # truncation, and with it the confirmation: it is retried, and sent only once it worked.
    reader = sqlite3.connect(shelter_db, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM inbox").fetchall()
    group = m.agents["shelter"].store._group
    await _call(m, "police", "POST", f"/v1/consents/{receipt_id}/withdraw", json={})

    async def held_up() -> bool:
        return group.busy_checkpoints >= 2 and bool(
            query(shelter_db, "SELECT 1 FROM erasure_confirmations")
        )

    try:
        await eventually(held_up, what="the shelter to erase and retry its WAL truncation")
        sent = query(shelter_db, "SELECT 1 FROM outbox WHERE kind = 'erasure-confirmation'")
        assert sent == [], "confirmed before the WAL was truncated"
        status = await _call(m, "police", "GET", f"/v1/consents/{receipt_id}")
        assert status["pending"] == ["shelter"]
    finally:
        reader.execute("COMMIT")
        reader.close()

    async def confirmed() -> bool:
        status = await _call(m, "police", "GET", f"/v1/consents/{receipt_id}")
        return status["pending"] == [] and all(
            r["erasure_confirmed_at"] for r in status["recipients"]
        )

    await eventually(confirmed, what="the shelter's erasure confirmation")
    # The reads counted before the withdrawal (body, attachment) are signed before the
    # erasure is: no access record comes after it.
    events = [
        decode_signed_event(bytes(row[0]))[0]
        for row in query(shelter_db, "SELECT event FROM audit_outbox ORDER BY seq")
    ]
    order = [
        (e.kind, dict(e.labels).get("record"))
        for e in events
        if e.referral_id == rid and e.kind in ("record.accessed", "erasure.confirmed")
    ]
    assert sorted(order[:2]) == [("record.accessed", "attachment"), ("record.accessed", "body")]
    assert order[2:] == [("erasure.confirmed", None)]
    got = await _call(m, "shelter", "GET", f"/v1/referrals/{rid}")
    assert (got["erased"], got["referral"]) == (True, None)
    assert await attachment_status() == 410

    # The rows that held them: gone, or emptied; what the audit trail needs stays.
    assert not query(shelter_db, "SELECT 1 FROM data_keys WHERE referral_id = ?", rid)
    naming = f'%"referral_id":"{rid}"%'
    assert not query(
        shelter_db, "SELECT 1 FROM webhook_outbox WHERE CAST(body AS TEXT) LIKE ?", naming
    )
    [(size, digest)] = query(
        police_db,
        "SELECT length(envelope), envelope_hash FROM outbox"
        " WHERE kind = 'referral' AND referral_id = ?",
        rid,
    )
    assert size == 0 and len(digest) == 64

    async def object_gone() -> bool:
        return not query(police_db, "SELECT 1 FROM attachment_deletions")

    await eventually(object_gone, what="the police agent to delete the attachment object")

    # Not waiting for the inbox stream to empty: it is not (the filler), so its first block
    # is on disk, and every envelope the shelter consumed must have been erased in it.
    nc, js = await operator_js(m)
    try:
        state = (await js.stream_info(stream)).state
        assert state.first_seq == 1 and state.messages >= 1  # the filler, at least
    finally:
        await nc.close()

    # A backup each agent's operator makes now (`nrm agent backup`) holds none of it either.
    for agency in m.agents:
        backup(m.database(agency), m.setups[agency].home / "after-erasure.backup")
    found = held_in_a_file(m, forbidden)
    assert found is None, found


# --- what is held about the person under an erased pair (decisions, notices) -------------------

#: Every category of the sample body, for assistance by `recipient` (the consents below).
_CATEGORIES = [
    "case",
    "contact",
    "criminal",
    "demographic",
    "exploitation",
    "health",
    "identity",
    "language",
    "needs",
]


async def _consent_of(m: Mechanism, agency: str, recipient: str) -> str:
    """A consent `agency` records, as controller, for assistance by `recipient`."""
    receipt_id = str(uuid.uuid4())
    doc = samples.consent(
        receipt_id,
        controllers=[
            {
                "agency": agency,
                "name": agency.title(),
                "contact": {
                    "name": "Data Protection Office",
                    "email": f"dpo@{agency}.example",
                    "phone": "tel:+44-20-7946-0000",
                    "address": {"addressCountry": "GB"},
                },
            }
        ],
        purposes=[
            {
                "purpose": "assistance",
                "lawful_basis": "consent",
                "data_categories": _CATEGORIES,
                "retention": "P2Y",
                "recipients": [recipient],
            }
        ],
        sensitive_categories=["health", "criminal"],
    )
    await _call(m, agency, "POST", "/v1/consents", json=doc)
    return receipt_id


async def _withdrawn(m: Mechanism, agency: str, receipt_id: str) -> None:
    """`agency` withdraws the consent and every recipient confirms the erasure (each after
    its WAL was truncated)."""
    await _call(m, agency, "POST", f"/v1/consents/{receipt_id}/withdraw", json={})

    async def confirmed() -> bool:
        status = await _call(m, agency, "GET", f"/v1/consents/{receipt_id}")
        return status["pending"] == [] and all(
            r["erasure_confirmed_at"] for r in status["recipients"]
        )

    await eventually(confirmed, what="the erasure confirmations")


def _files(db: Path) -> list[Path]:
    return [p for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")) if p.exists()]


async def test_an_erased_pair_takes_the_decisions_and_notices_held_under_it(
    tmp_path: Path,
) -> None:
    """The co-ordinator refers to the competent authority under a consent, which opens a
    case; the authority refers on to police under a consent of its own, links it to the
    case, police accepts and gets the positive first stage and both protection notices.
    The authority withdraws its consent: police erases the pair, and with it the decision
    and notices it held under it — the rows, the webhook events, and every byte of the
    decision id, the case id and the signed documents in its database files; the API lists
    nothing, `erased`. The authority keeps its case, decision and notices, and sends police
    no more (an extension goes to the co-ordinator only); a copy of the decision sealed to
    police past the authority's agent is refused `erased` and re-creates nothing. The
    co-ordinator then withdraws its consent: the authority erases the opening referral and
    keeps its own case, decision and notices (GET answers them, `erased`)."""
    async with authority_mechanism(tmp_path, COORDINATOR_OPENS) as m:
        opening = await _consent_of(m, "coordinator", AUTHORITY)
        rid = await m.api("coordinator").refer(
            [AUTHORITY],
            samples.referral(legal_basis="consent", consent_receipt_id=opening),
        )

        async def at_authority() -> bool:
            return await m.api("coordinator").status(rid) == "delivered"

        await eventually(at_authority, what="the referral at the authority")
        for to in ("acknowledged", "accepted"):
            await _call(m, AUTHORITY, "POST", f"/v1/referrals/{rid}/transitions", json={"to": to})
        [case] = [
            c
            for c in (await _call(m, AUTHORITY, "GET", "/v1/cases"))["items"]
            if c["referral_id"] == rid
        ]
        case_id = case["case_id"]

        onward_consent = await _consent_of(m, AUTHORITY, "police")
        onward = await m.api(AUTHORITY).refer(
            ["police"],
            samples.referral(legal_basis="consent", consent_receipt_id=onward_consent),
        )

        async def at_police() -> bool:
            return await m.api(AUTHORITY).status(onward) == "delivered"

        await eventually(at_police, what="the onward referral at police")
        await _call(m, AUTHORITY, "PUT", f"/v1/cases/{case_id}/referrals/{onward}")
        for to in ("acknowledged", "accepted"):
            await _call(m, "police", "POST", f"/v1/referrals/{onward}/transitions", json={"to": to})

        await seen_accepted(m, onward)
        decided = await _call(
            m,
            AUTHORITY,
            "POST",
            f"/v1/cases/{case_id}/decisions",
            json={"stage": "first", "outcome": "positive"},
        )
        under_pair = f"/v1/referrals/{onward}/%s?sender={AUTHORITY}"

        async def police_holds_it() -> bool:
            d = await _call(m, "police", "GET", under_pair % "decisions")
            p = await _call(m, "police", "GET", under_pair % "protections")
            return len(d["items"]) == 1 and len(p["items"]) == 2

        await eventually(police_holds_it, what="police to hold the decision and both notices")
        police_db = m.database("police")
        [(signed_decision,)] = query(police_db, "SELECT signed FROM decisions")
        signed_notices = [
            bytes(r[0]) for r in query(police_db, "SELECT signed FROM protection_notices")
        ]
        notice_ids = [
            str(r[0]) for r in query(police_db, "SELECT notice_id FROM protection_notices")
        ]
        assert len(signed_notices) == 2
        # The inbox rows of the decision and the notices keep no body: the signed document
        # is in its own table only, so the erasure below leaves no copy behind.
        assert query(
            police_db,
            "SELECT count(*), count(body) FROM inbox"
            " WHERE kind IN ('identification-decision', 'protection-notice')",
        ) == [(3, 0)]
        naming = f'%"decision_id":"{decided["decision_id"]}"%'
        assert query(
            police_db, "SELECT 1 FROM webhook_outbox WHERE CAST(body AS TEXT) LIKE ?", naming
        )

        # The authority withdraws its consent: police erases the onward pair.
        notified = len(events(m, AUTHORITY, "protection.notified"))
        await _withdrawn(m, AUTHORITY, onward_consent)
        assert query(police_db, "SELECT count(*) FROM decisions") == [(0,)]
        assert query(police_db, "SELECT count(*) FROM protection_notices") == [(0,)]
        secrets_held = {
            "the decision id": [decided["decision_id"].encode()],
            "the case id": [case_id.encode()],
            "the notice ids": [n.encode() for n in notice_ids],
            "the signed decision": _probes(bytes(signed_decision)),
            "the signed notices": [p for s in signed_notices for p in _probes(s)],
        }
        for path in _files(police_db):
            data = path.read_bytes()
            for what, probes in secrets_held.items():
                for probe in probes:
                    assert probe not in data, f"{what} still in {path.name}"
        for kind in ("decisions", "protections"):
            listed = await _call(m, "police", "GET", under_pair % kind)
            assert (listed["erased"], listed["items"]) == (True, [])
        got = await _call(m, "police", "GET", f"/v1/referrals/{onward}")
        assert (got["erased"], got["referral"]) == (True, None)

        # The authority keeps its own record, and tells police nothing more of the case.
        held = await _call(m, AUTHORITY, "GET", f"/v1/cases/{case_id}")
        assert [d["decision_id"] for d in held["decisions"]] == [decided["decision_id"]]
        assert len(held["protections"]["reflection"]["notices"]) == 1
        later = datetime.datetime.now(datetime.UTC).date() + datetime.timedelta(days=90)
        later_day = later.isoformat()
        extended = await _call(
            m,
            AUTHORITY,
            "POST",
            f"/v1/cases/{case_id}/protections/reflection",
            json={"event": "extended", "reason": "recovery-needs", "ends_on": later_day},
        )
        told = events(m, AUTHORITY, "protection.notified")[notified:]
        assert [e.counterpart for e in told] == ["coordinator"], extended

        # A late copy of the decision under the erased pair is refused, and stores nothing.
        body = codec.pack([1, bytes(signed_decision), AUTHORITY, onward, None, None])
        data = sealed(m, agency_keys(m, AUTHORITY), "police", "identification-decision", body)
        await publish(m, AUTHORITY, "police", data)
        await rejected(m, "police", data, "erased")
        assert query(police_db, "SELECT count(*) FROM decisions") == [(0,)]

        # The co-ordinator withdraws its consent: the authority erases the opening referral
        # and keeps its own case, decision and notices (an act of official authority).
        await _withdrawn(m, "coordinator", opening)
        got = await _call(m, AUTHORITY, "GET", f"/v1/referrals/{rid}?sender=coordinator")
        assert (got["erased"], got["referral"]) == (True, None)
        own = await _call(m, AUTHORITY, "GET", f"/v1/referrals/{rid}/decisions?sender=coordinator")
        assert own["erased"] is True
        assert [d["decision_id"] for d in own["items"]] == [decided["decision_id"]]
        kept = await _call(m, AUTHORITY, "GET", f"/v1/cases/{case_id}")
        assert (kept["state"], len(kept["decisions"])) == ("first_positive", 1)
        assert len(kept["protections"]["reflection"]["notices"]) == 2
