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
import json
import secrets
import sqlite3
import uuid
from typing import Any

from nacl.secret import SecretBox

from keys.audit import decode_signed_event
from keys.subjects import PREFIX, inbox_stream, inbox_subject
from runtime.durability import backup

from . import samples
from .support import Mechanism, eventually, query
from .test_agent import delivered, operator_js


def _probes(data: bytes) -> list[bytes]:
    """The whole of `data` and, if long, two 48-byte slices of it (a store may split or
    frame it)."""
    assert len(data) >= 48
    if len(data) < 144:
        return [data]
    middle = len(data) // 2
    return [data, data[middle : middle + 48], data[-48:]]


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
            for probe in probes:
                assert probe not in data, f"{what} is still in {p.relative_to(m.root)}"
