"""A hostile agency against another agency's attachments (issue 11, item 5; PROTOCOL.md §5.1).

Each agency writes and erases only in its own object store bucket `nrm-att-<agency>`; it may
read the others'. Here the co-ordinator, connected with its own valid credentials, tries
every way nats-py and the JetStream API offer to change or destroy an attachment police
sent the shelter: each is refused by nats-server as a permissions violation, police's
stream is message for message what it was, and the shelter, started only afterwards,
still fetches and verifies the attachment byte for byte. Reading police's object is
allowed and yields only ciphertext. A citation arriving from the co-ordinator is fetched
from the co-ordinator's bucket only, never from police's that holds an object of that name.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy, ObjectStoreConfig, StorageType

from agents.attachments import read_object
from keys.subjects import (
    attachment_bucket,
    attachment_object,
    attachment_stream,
    reply_prefix,
)
from runtime.keydir import load_key_dir

from .support import Mechanism, eventually
from .test_agent import delivered, operator_js
from .test_authz import Conn
from .test_referrals import fetch_attachment, post, query, upload, with_attachment

#: How long one refused request waits for the answer that never comes.
SHORT = 0.5
#: What nats-py raises when the server drops a forbidden request.
REFUSED = (nats.errors.Error, TimeoutError)
VICTIM, ATTACKER, RECIPIENT = "police", "coordinator", "shelter"


@asynccontextmanager
async def hostile(m: Mechanism, agency: str) -> AsyncIterator[Conn]:
    """A bus connection with `agency`'s own credentials, recording the server's errors."""
    keys = load_key_dir(m.setups[agency].key_dir, passphrase=m.setups[agency].passphrase())
    assert keys.nats_seed is not None
    errors: list[Exception] = []

    async def on_error(e: Exception) -> None:
        errors.append(e)

    nc = await nats.connect(
        m.bus.url,
        nkeys_seed_str=keys.nats_seed.decode(),
        inbox_prefix=reply_prefix(agency),
        allow_reconnect=False,
        error_cb=on_error,
    )
    try:
        yield Conn(nc, errors)
    finally:
        await nc.close()


async def stream_snapshot(m: Mechanism, agency: str) -> list[tuple[int, str, str]]:
    """(sequence, subject, SHA-256 of the data) of every message in `agency`'s attachment
    stream, read by the operator, plus the stream's configuration as a last row."""
    nc, js = await operator_js(m)
    try:
        info = await js.stream_info(attachment_stream(agency))
        out: list[tuple[int, str, str]] = []
        seq = info.state.first_seq
        while seq <= info.state.last_seq:
            try:
                msg = await js.get_msg(attachment_stream(agency), seq=seq)
            except nats.js.errors.NotFoundError:
                seq += 1
                continue
            out.append((msg.seq, msg.subject, hashlib.sha256(msg.data or b"").hexdigest()))
            seq = msg.seq + 1
        out.append((-1, "config", json.dumps(info.config.as_dict(), sort_keys=True)))
        return out
    finally:
        await nc.close()


async def sent_attachment(m: Mechanism, content: bytes) -> tuple[str, str]:
    """Police refers to the (stopped) shelter citing `content`; (referral id, attachment id)
    once police has put the object in its bucket."""
    status, item = await upload(m, VICTIM, content, "application/pdf")
    assert status == 201, item
    _, body, _ = await post(
        m, VICTIM, "/v1/referrals", {"recipients": [RECIPIENT], "referral": with_attachment(item)}
    )
    rid, aid = str(body["id"]), str(item["attachment_id"])

    async def uploaded() -> bool:
        sent = "SELECT count(*) FROM attachment_uploads WHERE state = 'sent'"
        return bool(query(m.database(VICTIM), sent)[0][0] == 1)

    await eventually(uploaded, what="police to put the attachment in its bucket")
    return rid, aid


async def test_hostile_agency_cannot_change_another_agencys_attachment(
    mechanism: Mechanism,
) -> None:
    """Putting, overwriting meta, deleting a chunk, purging, sealing or deleting police's
    bucket, creating a bucket, and redirecting a consumer's deliveries into police's
    subjects are each refused or change nothing; police's stream is unchanged and the
    shelter then fetches and verifies the attachment byte for byte."""
    m = mechanism
    await m.stop(RECIPIENT)  # it fetches only after every attack
    content = b"%PDF-1.7 " + secrets.token_bytes(200 * 1024)  # two chunks
    rid, aid = await sent_attachment(m, content)
    name = attachment_object(rid, aid)
    bucket, stream = attachment_bucket(VICTIM), attachment_stream(VICTIM)
    meta = f"$O.{bucket}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"
    before = await stream_snapshot(m, VICTIM)
    chunk_seq = before[0][0]

    async with hostile(m, ATTACKER) as c:
        js = c.nc.jetstream(timeout=SHORT)
        obs = await js.object_store(bucket)  # reading is allowed: the stream info

        async def refused(call: Callable[[], Awaitable[Any]], subject: str) -> None:
            with pytest.raises(REFUSED):
                await call()
            await c.violation(subject)

        forged_meta = json.dumps({"name": name, "bucket": bucket, "nuid": "x", "size": 1})
        await refused(lambda: obs.put("forged.object", b"junk"), f"$O.{bucket}.C.")
        await refused(lambda: obs.put(name, b"junk"), f"$O.{bucket}.C.")
        await refused(
            lambda: js.publish(meta, forged_meta.encode(), headers={"Nats-Rollup": "sub"}), meta
        )
        await refused(lambda: obs.delete(name), meta)
        await refused(
            lambda: js.delete_msg(stream, chunk_seq), f"$JS.API.STREAM.MSG.DELETE.{stream}"
        )
        await refused(lambda: js.purge_stream(stream), f"$JS.API.STREAM.PURGE.{stream}")
        await refused(
            lambda: js.purge_stream(stream, subject=meta), f"$JS.API.STREAM.PURGE.{stream}"
        )
        await refused(lambda: obs.seal(), f"$JS.API.STREAM.UPDATE.{stream}")
        await refused(lambda: js.delete_object_store(bucket), f"$JS.API.STREAM.DELETE.{stream}")
        for new in (attachment_bucket("newcomer"), attachment_bucket(ATTACKER) + "-2"):
            await refused(
                lambda new=new: js.create_object_store(  # type: ignore[misc]
                    new, config=ObjectStoreConfig(bucket=new, storage=StorageType.FILE)
                ),
                f"$JS.API.STREAM.CREATE.OBJ_{new}",
            )
        # A consumer on its own bucket delivering into police's meta subject: no agency may
        # create a consumer on any attachment stream (§5.1), its own included.
        own_meta = f"$O.{attachment_bucket(ATTACKER)}.M." + meta.rsplit(".", 1)[1]
        await refused(
            lambda: js.add_consumer(
                attachment_stream(ATTACKER),
                config=ConsumerConfig(
                    deliver_subject=meta,
                    filter_subject=own_meta,
                    deliver_policy=DeliverPolicy.ALL,
                    inactive_threshold=0.5,
                ),
            ),
            f"$JS.API.CONSUMER.CREATE.{attachment_stream(ATTACKER)}",
        )

    assert await stream_snapshot(m, VICTIM) == before
    await m.start(RECIPIENT)

    async def fetched() -> bool:
        code, _ = await fetch_attachment(m, RECIPIENT, rid, aid)
        return code == 200

    await eventually(fetched, what="the shelter to fetch and verify police's attachment")
    assert (await fetch_attachment(m, RECIPIENT, rid, aid))[1] == content
    assert await stream_snapshot(m, VICTIM) == before


async def test_reading_another_agencys_attachment_yields_only_ciphertext(
    mechanism: Mechanism,
) -> None:
    """The co-ordinator may read police's object as agents do (reading is allowed, with no
    violation):
    it gets the ciphertext, the plaintext's length plus nonce and tag, and no byte run of
    the plaintext."""
    m = mechanism
    await m.stop(RECIPIENT)
    content = b"%PDF-1.7 " + secrets.token_bytes(64 * 1024)
    rid, aid = await sent_attachment(m, content)
    async with hostile(m, ATTACKER) as c:
        obs = await c.nc.jetstream(timeout=5 * SHORT).object_store(attachment_bucket(VICTIM))
        data = await read_object(c.js, obs, VICTIM, attachment_object(rid, aid))
        assert c.errors == []
    assert len(data) == len(content) + 24 + 16  # XSalsa20-Poly1305: nonce and tag
    assert content[:64] not in data and content[-64:] not in data


async def test_a_citation_is_fetched_from_its_senders_bucket_only(mechanism: Mechanism) -> None:
    """A referral from the co-ordinator citing the name of police's object (with the right
    key) is fetched from the co-ordinator's bucket: the forged object there is refused as
    corrupted, and police's object is never taken for it."""
    m = mechanism
    rid, aid = await sent_attachment(m, b"%PDF-1.7 " + secrets.token_bytes(4096))
    await delivered(m, VICTIM, rid)
    shelter_db = m.database(RECIPIENT)

    async def state(owner: str) -> str | None:
        found = query(
            shelter_db,
            "SELECT state FROM received_attachments WHERE owner = ? AND referral_id = ?",
            owner,
            rid,
        )
        return str(found[0][0]) if found else None

    async def police_ok() -> bool:
        return await state(VICTIM) == "ok"

    await eventually(police_ok, what="the shelter to verify police's attachment")
    # What the shelter's agent records for a referral the co-ordinator signed citing the
    # same referral id, attachment id, hash and key (agents/desk.py on_referral).
    agent = m.agents[RECIPIENT]
    [(sha256, size, sealed_key)] = query(
        shelter_db,
        "SELECT sha256, size, sealed_key FROM received_attachments WHERE owner = ?",
        VICTIM,
    )
    key = agent.attachments.storage().decrypt(bytes(sealed_key))
    cited = [
        {"attachment_id": aid, "sha256": sha256, "size": size, "media_type": "application/pdf"}
    ]
    with agent.store.transaction() as db:
        agent.attachments.expect(db, ATTACKER, rid, key, cited)
    async with hostile(m, ATTACKER) as c:
        own = await c.nc.jetstream(timeout=5 * SHORT).object_store(attachment_bucket(ATTACKER))
        await own.put(attachment_object(rid, aid), b"not what police sent")

    async def decided() -> bool:
        return await state(ATTACKER) != "pending"

    await eventually(decided, what="the shelter to fetch the co-ordinator's citation")
    assert await state(ATTACKER) == "corrupted"
    assert await state(VICTIM) == "ok"
