"""The embedded nats-server and stream provisioning, against real processes."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import nats
import nats.js.errors
import pytest
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType
from nats.js.errors import APIError

from broker import NatsServer, provision
from broker.server import conf_string
from broker.streams import HEADER_ROOM_BYTES
from keys.limits import DEFAULT_LIMITS
from keys.subjects import MESSAGE_STREAM, attachment_bucket, attachment_stream, inbox_subject

SUBJECT = inbox_subject("police-a")


@asynccontextmanager
async def jetstream(server: NatsServer) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(server.url, allow_reconnect=False)
    try:
        yield nc.jetstream()
    finally:
        await nc.drain()


async def stored_count(js: JetStreamContext) -> int:
    info = await js.stream_info(MESSAGE_STREAM)
    count: int = info.state.messages
    return count


async def test_server_starts_and_jetstream_answers(nats_server: NatsServer) -> None:
    """A started server runs, listens on its URL and answers JetStream requests."""
    assert nats_server.running
    assert nats_server.pid is not None
    assert nats_server.url == f"nats://127.0.0.1:{nats_server.port}"
    async with jetstream(nats_server) as js:
        info = await js.account_info()
    assert info.streams == 4  # messages, audit events, directory bucket, leases


async def test_stream_has_the_configured_limits(nats_server: NatsServer) -> None:
    """The message stream is file-backed, de-duplicates and bounds size and age as Limits says."""
    async with jetstream(nats_server) as js:
        config = (await js.stream_info(MESSAGE_STREAM)).config
    assert config.storage == StorageType.FILE
    assert config.duplicate_window == DEFAULT_LIMITS.duplicate_window_seconds
    assert config.max_age == DEFAULT_LIMITS.stream_max_age_seconds
    assert config.max_msg_size == DEFAULT_LIMITS.max_envelope_bytes + HEADER_ROOM_BYTES


async def test_provisioning_is_idempotent(nats_server: NatsServer) -> None:
    """Provisioning again keeps one stream with the same configuration and its messages."""
    async with jetstream(nats_server) as js:
        await js.publish(SUBJECT, b"kept", headers={"Nats-Msg-Id": "m1"})
        before = (await js.stream_info(MESSAGE_STREAM)).config
        await provision(nats_server.url, agencies=["police-a"])
        await provision(nats_server.url, agencies=["police-a", "shelter-b"])
        after = (await js.stream_info(MESSAGE_STREAM)).config
        assert after == before
        assert (await js.account_info()).streams == 6  # and one attachment bucket each
        assert await stored_count(js) == 1


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
        msg = await js.get_msg(MESSAGE_STREAM, ack.seq)
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
        config = (await js.stream_info(MESSAGE_STREAM)).config
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
