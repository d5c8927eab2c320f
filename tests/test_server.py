"""The embedded nats-server and stream provisioning, against real processes."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import nats
import nats.js.errors
import pytest
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import APIError

from broker import NatsServer, provision
from broker.server import conf_string
from broker.streams import (
    HEADER_ROOM_BYTES,
    LEGACY_MESSAGE_STREAM,
    LEGACY_MESSAGE_SUBJECTS,
    SERVICES_MAX_BYTES,
    migrate_leftovers,
    provision_stores_for,
)
from keys.catalogue import MAX_CATALOGUE_BYTES
from keys.limits import DEFAULT_LIMITS
from keys.subjects import (
    MOVED_FROM_HEADER,
    SERVICES_STREAM,
    attachment_bucket,
    attachment_stream,
    inbox_stream,
    inbox_subject,
)

SUBJECT = inbox_subject("police-a")
STREAM = inbox_stream("police-a")


@pytest.fixture
async def nats_server(nats_server: NatsServer) -> NatsServer:
    """The provisioned bus (tests/conftest.py) with police-a's inbox stream and bucket, as
    an operator provisions an agency of the directory."""
    await provision(nats_server.url, agencies=["police-a"])
    return nats_server


@asynccontextmanager
async def jetstream(server: NatsServer) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(server.url, allow_reconnect=False)
    try:
        yield nc.jetstream()
    finally:
        await nc.drain()


async def stored_count(js: JetStreamContext) -> int:
    info = await js.stream_info(STREAM)
    count: int = info.state.messages
    return count


async def test_server_starts_and_jetstream_answers(nats_server: NatsServer) -> None:
    """A started server runs, listens on its URL and answers JetStream requests."""
    assert nats_server.running
    assert nats_server.pid is not None
    assert nats_server.url == f"nats://127.0.0.1:{nats_server.port}"
    async with jetstream(nats_server) as js:
        info = await js.account_info()
    # audit events, directory bucket, leases, services bucket, police-a's inbox, its bucket
    assert info.streams == 6


async def test_stream_has_the_configured_limits(nats_server: NatsServer) -> None:
    """An agency's inbox stream takes its inbox subject only, is file-backed, de-duplicates
    and bounds size, age and the agency's whole inbox as Limits says, refusing (not
    dropping old mail) once full."""
    async with jetstream(nats_server) as js:
        config = (await js.stream_info(STREAM)).config
    assert config.subjects == [SUBJECT]
    assert config.storage == StorageType.FILE
    assert config.duplicate_window == DEFAULT_LIMITS.duplicate_window_seconds
    assert config.max_age == DEFAULT_LIMITS.stream_max_age_seconds
    assert config.max_msg_size == DEFAULT_LIMITS.max_envelope_bytes + HEADER_ROOM_BYTES
    assert config.max_bytes == DEFAULT_LIMITS.inbox_max_bytes
    assert config.max_msgs == DEFAULT_LIMITS.inbox_max_msgs
    assert config.discard == DiscardPolicy.NEW


async def test_provisioning_is_idempotent(nats_server: NatsServer) -> None:
    """Provisioning again keeps one stream with the same configuration and its messages."""
    async with jetstream(nats_server) as js:
        await js.publish(SUBJECT, b"kept", headers={"Nats-Msg-Id": "m1"})
        before = (await js.stream_info(STREAM)).config
        await provision(nats_server.url, agencies=["police-a"])
        await provision(nats_server.url, agencies=["police-a", "shelter-b"])
        after = (await js.stream_info(STREAM)).config
        assert after == before
        assert (await js.account_info()).streams == 8  # an inbox and a bucket each
        assert await stored_count(js) == 1


async def test_the_services_bucket_is_bounded(nats_server: NatsServer) -> None:
    """One revision per key, no value larger than a signed catalogue (with header room),
    bounded in all; provisioning again keeps it so."""
    async with jetstream(nats_server) as js:
        await provision(nats_server.url, agencies=["police-a"])
        config = (await js.stream_info(SERVICES_STREAM)).config
    assert config.max_msgs_per_subject == 1
    assert config.max_msg_size == MAX_CATALOGUE_BYTES + HEADER_ROOM_BYTES
    assert config.max_bytes == SERVICES_MAX_BYTES


async def test_the_authority_creates_missing_stores_and_changes_no_existing_one(
    nats_server: NatsServer,
) -> None:
    """What an authority provisions for the agencies a directory admits (its `replicas`
    setting, say, may differ from the bus's): a missing inbox stream is made, an existing
    one is left as `nrm bus provision` made it."""
    other = dataclasses.replace(DEFAULT_LIMITS, inbox_max_msgs=DEFAULT_LIMITS.inbox_max_msgs + 1)
    await provision_stores_for(nats_server.url, ["police-a", "shelter-b"], limits=other)
    async with jetstream(nats_server) as js:
        kept = (await js.stream_info(STREAM)).config
        made = (await js.stream_info(inbox_stream("shelter-b"))).config
    assert kept.max_msgs == DEFAULT_LIMITS.inbox_max_msgs
    assert made.max_msgs == other.inbox_max_msgs


async def test_each_agency_gets_its_own_attachment_bucket(nats_server: NatsServer) -> None:
    """Provisioning creates `nrm-att-<agency>` per agency: file-backed, expiring with the
    message stream's age, and an object put into one is not in the other; again is a no-op
    that keeps the objects."""
    await provision(nats_server.url, agencies=["police-a", "shelter-b"])
    async with jetstream(nats_server) as js:
        police = await js.object_store(attachment_bucket("police-a"))
        shelter = await js.object_store(attachment_bucket("shelter-b"))
        await police.put("r.a", b"ciphertext")
        await provision(nats_server.url, agencies=["police-a", "shelter-b"])
        config = (await js.stream_info(attachment_stream("police-a"))).config
        assert config.storage == StorageType.FILE
        assert config.max_age == DEFAULT_LIMITS.stream_max_age_seconds
        assert (await police.get("r.a")).data == b"ciphertext"
        with pytest.raises(nats.js.errors.ObjectNotFoundError):
            await shelter.get("r.a")


async def test_same_msg_id_is_stored_once(nats_server: NatsServer) -> None:
    """Publishing twice with the same Nats-Msg-Id stores one message."""
    async with jetstream(nats_server) as js:
        first = await js.publish(SUBJECT, b"once", headers={"Nats-Msg-Id": "dup"})
        second = await js.publish(SUBJECT, b"once", headers={"Nats-Msg-Id": "dup"})
        assert not first.duplicate
        assert second.duplicate
        assert second.seq == first.seq
        assert await stored_count(js) == 1


async def test_data_survives_kill_and_restart(nats_server: NatsServer) -> None:
    """A stored message survives SIGKILL and a restart on the same port."""
    port = nats_server.port
    async with jetstream(nats_server) as js:
        ack = await js.publish(SUBJECT, b"durable", headers={"Nats-Msg-Id": "d1"})
    old_pid = nats_server.pid
    nats_server.kill()
    assert not nats_server.running
    nats_server.restart()
    assert nats_server.port == port
    assert nats_server.pid != old_pid
    async with jetstream(nats_server) as js:
        assert await stored_count(js) == 1
        msg = await js.get_msg(STREAM, ack.seq)
    assert msg.data == b"durable"


async def test_oversized_message_is_refused(nats_server: NatsServer) -> None:
    """A message larger than Limits.max_envelope_bytes is refused by the server, not stored."""
    async with jetstream(nats_server) as js:
        with pytest.raises(APIError):
            too_big = DEFAULT_LIMITS.max_envelope_bytes + HEADER_ROOM_BYTES + 1
            await js.publish(SUBJECT, os.urandom(too_big))
        assert await stored_count(js) == 0


async def test_acked_message_is_removed(nats_server: NatsServer) -> None:
    """The stream has work-queue retention: a message is removed once its consumer acks it."""
    async with jetstream(nats_server) as js:
        config = (await js.stream_info(STREAM)).config
        assert config.retention == RetentionPolicy.WORK_QUEUE
        await js.publish(SUBJECT, b"work", headers={"Nats-Msg-Id": "w1"})
        sub = await js.pull_subscribe(SUBJECT, durable="inbox-police-a")
        [msg] = await sub.fetch(1, timeout=5)
        assert msg.data == b"work"
        await msg.ack_sync()
        assert await stored_count(js) == 0


def test_config_paths_are_quoted(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A store path with spaces, quotes, `$` and backslashes is written so the server accepts it."""
    store = tmp_path_factory.mktemp("odd") / 'a dir "with" $HOME \\ back'
    assert conf_string('a "b" \\c') == '"a \\"b\\" \\\\c"'
    with NatsServer(store_dir=store) as server:
        assert server.running
    assert (store / "jetstream").is_dir()
    assert not server.running


def shared_inbox_stream() -> StreamConfig:
    """The one inbox stream of every agency, as a bus of the previous release had it."""
    return StreamConfig(
        name=LEGACY_MESSAGE_STREAM,
        subjects=[LEGACY_MESSAGE_SUBJECTS],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        duplicate_window=DEFAULT_LIMITS.duplicate_window_seconds,
    )


async def test_provisioning_moves_a_shared_inbox_stream_into_the_agencies_own(
    tmp_path: Path,
) -> None:
    """A bus of the previous release has one `NRM_MSG` stream for every inbox. Provisioning
    moves its subjects aside, makes each agency's inbox stream, re-publishes what is still
    queued to its original subject under its original Nats-Msg-Id, and deletes the old
    stream once empty; mail for an agency it was not told about stays until a run names it.
    Running again changes nothing; a sender's retry of a moved message is a duplicate."""
    with NatsServer(store_dir=tmp_path / "nats") as server:
        async with jetstream(server) as js:
            await js.add_stream(shared_inbox_stream())
            queued = {
                ("police-a", "m1"): b"to police 1",
                ("shelter-b", "m2"): b"to shelter",
                ("police-a", "m3"): b"to police 2",
                ("ngo-c", "m4"): b"to the ngo",
            }
            await js.publish(SUBJECT, b"acked", headers={"Nats-Msg-Id": "m0"})
            sub = await js.pull_subscribe(
                SUBJECT, durable="inbox-police-a", stream=LEGACY_MESSAGE_STREAM
            )
            [msg] = await sub.fetch(1, timeout=5)
            await msg.ack_sync()
            await sub.unsubscribe()
            for (agency, msg_id), data in queued.items():
                await js.publish(inbox_subject(agency), data, headers={"Nats-Msg-Id": msg_id})

            async def held(agency: str) -> list[tuple[bytes, str]]:
                stream = inbox_stream(agency)
                state = (await js.stream_info(stream)).state
                out = []
                for seq in range(state.first_seq, state.last_seq + 1):
                    m = await js.get_msg(stream, seq)
                    assert m.data is not None and m.headers is not None
                    out.append((m.data, m.headers["Nats-Msg-Id"]))
                return out

            await provision(server.url, agencies=["police-a", "shelter-b"])
            old = (await js.stream_info(LEGACY_MESSAGE_STREAM)).config
            assert old.subjects != [LEGACY_MESSAGE_SUBJECTS]  # mail for ngo-c is still there
            assert await held("police-a") == [(b"to police 1", "m1"), (b"to police 2", "m3")]
            assert await held("shelter-b") == [(b"to shelter", "m2")]
            retry = await js.publish(SUBJECT, b"to police 1", headers={"Nats-Msg-Id": "m1"})
            assert retry.duplicate

            await provision(server.url, agencies=["police-a", "shelter-b", "ngo-c"])
            await provision(server.url, agencies=["police-a", "shelter-b", "ngo-c"])
            with pytest.raises(nats.js.errors.NotFoundError):
                await js.stream_info(LEGACY_MESSAGE_STREAM)
            assert await held("police-a") == [(b"to police 1", "m1"), (b"to police 2", "m3")]
            assert await held("shelter-b") == [(b"to shelter", "m2")]
            assert await held("ngo-c") == [(b"to the ngo", "m4")]


async def test_a_full_inbox_leaves_the_rest_of_its_shared_mail_for_a_later_run(
    tmp_path: Path,
) -> None:
    """An agency with more mail queued in `NRM_MSG` than its new inbox stream takes: the
    provisioning that starts the bus moves what fits (and the other agencies' mail) and
    returns, the rest left in the old stream; once the agency consumed its inbox, the
    authority's later run (`migrate_leftovers`) moves the rest and deletes the old stream.
    Provisioning no agency at all (an open bus without `--agency`) leaves the old stream."""
    limits = dataclasses.replace(DEFAULT_LIMITS, inbox_max_msgs=2)
    with NatsServer(store_dir=tmp_path / "nats") as server:
        async with jetstream(server) as js:
            await js.add_stream(shared_inbox_stream())
            for n in range(3):
                await js.publish(SUBJECT, b"to police %d" % n, headers={"Nats-Msg-Id": f"p{n}"})
            await js.publish(inbox_subject("shelter-b"), b"s", headers={"Nats-Msg-Id": "s0"})

            # An open bus given no agency keeps the shared stream as it is: the mail stays.
            await provision(server.url, limits=limits)
            old = await js.stream_info(LEGACY_MESSAGE_STREAM)
            assert (old.config.subjects, old.state.messages) == ([LEGACY_MESSAGE_SUBJECTS], 4)
            assert await migrate_leftovers(server.url, [])

            await provision(server.url, limits=limits, agencies=["police-a", "shelter-b"])
            assert await stored_count(js) == 2
            assert (await js.stream_info(inbox_stream("shelter-b"))).state.messages == 1
            assert (await js.stream_info(LEGACY_MESSAGE_STREAM)).state.messages == 1
            # While the inbox is still full, a later run moves nothing and says so.
            assert await migrate_leftovers(server.url, ["police-a", "shelter-b"])
            assert (await js.stream_info(LEGACY_MESSAGE_STREAM)).state.messages == 1

            sub = await js.pull_subscribe(SUBJECT, durable="inbox-police-a", stream=STREAM)
            for msg in await sub.fetch(2, timeout=5):
                await msg.ack_sync()
            assert await stored_count(js) == 0
            assert not await migrate_leftovers(server.url, ["police-a", "shelter-b"])
            with pytest.raises(nats.js.errors.NotFoundError):
                await js.stream_info(LEGACY_MESSAGE_STREAM)
            [msg] = await sub.fetch(1, timeout=5)
            assert (msg.data, msg.headers) == (
                b"to police 2",
                {"Nats-Msg-Id": "p2", MOVED_FROM_HEADER: f"{LEGACY_MESSAGE_STREAM} 3"},
            )
            assert not await migrate_leftovers(server.url, ["police-a"])  # nothing to do
