"""Bus authorization (broker/authz.py) against a real nats-server running the generated block."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import nkeys
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, StreamConfig

from agents.attachments import read_object
from broker import NatsServer
from broker.authz import (
    LEDGER_CONSUMER,
    agency_permissions,
    auditor_permissions,
    auditor_reply_prefix,
    authority_permissions,
    authorization_block,
    ledger_permissions,
    operator_permissions,
    service_reply_prefix,
)
from broker.ledger import ledger_consumer_config
from broker.server import ReloadFailed
from broker.streams import RETIRED_SUBJECT, provision
from keys import DEFAULT_LIMITS
from keys.subjects import (
    AUDIT_STREAM,
    AUDIT_SUBJECTS,
    DIRECTORY_BUCKET,
    DIRECTORY_KEY,
    PRESENCE_BUCKET,
    PRESENCE_STREAM,
    SERVICES_BUCKET,
    SERVICES_STREAM,
    attachment_bucket,
    attachment_stream,
    audit_subject,
    capacity_key,
    catalogue_key,
    inbox_consumer,
    inbox_stream,
    inbox_subject,
    presence_key,
    publish_id,
    reply_prefix,
)
from runtime.jetstream import inbox_consumer_config, read_directory_bucket
from tests.support import eventually
from tests.test_protocol_doc import consumer_parameters

A = "agency-a"
B = "agency-b"
C = "agency-c"
#: How long a test waits for something that should happen (or for proof it did not).
SHORT = 1.0
#: How long an operation that must succeed may take on a busy machine: it returns as soon as
#: it succeeds, so only a failure waits this long.
PATIENT = 30.0
#: Everything nats-py may raise when the server drops a forbidden request or refuses a login.
REFUSED = (nats.errors.Error, TimeoutError, OSError)


@dataclass(frozen=True)
class User:
    seed: bytes

    @property
    def public(self) -> str:
        key: str = nkeys.from_seed(bytearray(self.seed)).public_key.decode()
        return key

    @staticmethod
    def new() -> User:
        return User(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))


@dataclass
class Conn:
    """A connection and the asynchronous errors (permission violations) the server sent it."""

    nc: Client
    errors: list[Exception] = field(default_factory=list)

    @property
    def js(self) -> JetStreamContext:
        """JetStream for what must succeed."""
        return self.nc.jetstream(timeout=PATIENT)

    @property
    def refused_js(self) -> JetStreamContext:
        """JetStream for what the server must refuse: a refused request ends by timing out."""
        return self.nc.jetstream(timeout=SHORT)

    async def violation(self, subject: str) -> None:
        """Wait until the server has reported a permissions violation on `subject`."""
        deadline = asyncio.get_running_loop().time() + PATIENT
        while asyncio.get_running_loop().time() < deadline:
            for e in self.errors:
                text = str(e).lower()
                if "permissions violation" in text and subject.lower() in text:
                    return
            await asyncio.sleep(0.02)
        raise AssertionError(f"no permissions violation for {subject}; got {self.errors}")


@dataclass
class Bus:
    server: NatsServer
    agencies: dict[str, User]
    auditor: User
    operator: User
    spare: User  # an agency key the server does not know (yet)
    ledger: User
    authority: User
    conns: list[Conn] = field(default_factory=list)

    def block(self, agencies: dict[str, User]) -> str:
        return authorization_block(
            agencies=[(agency, user.public) for agency, user in agencies.items()],
            auditors=[self.auditor.public],
            operators=[self.operator.public],
            ledgers=[self.ledger.public],
            authorities=[self.authority.public],
        )

    async def connect(self, user: User | None, inbox_prefix: str = "_INBOX") -> Conn:
        errors: list[Exception] = []

        async def on_error(e: Exception) -> None:
            errors.append(e)

        nc = await nats.connect(
            self.server.url,
            nkeys_seed_str=None if user is None else user.seed.decode(),
            inbox_prefix=inbox_prefix,
            allow_reconnect=False,
            connect_timeout=2,
            error_cb=on_error,
        )
        conn = Conn(nc, errors)
        self.conns.append(conn)
        return conn

    async def agency(self, agency: str) -> Conn:
        return await self.connect(self.agencies[agency], inbox_prefix=reply_prefix(agency))

    async def as_operator(self) -> Conn:
        return await self.connect(self.operator)

    async def as_auditor(self) -> Conn:
        return await self.connect(
            self.auditor, inbox_prefix=auditor_reply_prefix(self.auditor.public)
        )

    async def as_service(self, kind: str) -> Conn:
        """The ledger ("ledger") or a bus authority ("authority"), as each connects."""
        user = self.ledger if kind == "ledger" else self.authority
        return await self.connect(user, inbox_prefix=service_reply_prefix(kind, user.public))


@pytest.fixture
async def bus(tmp_path: Path) -> AsyncIterator[Bus]:
    """A nats-server with agencies A and B, an auditor and an operator; the operator provisions."""
    agencies = {A: User.new(), B: User.new()}
    users = dict(auditor=User.new(), operator=User.new(), ledger=User.new(), authority=User.new())
    block = Bus(NatsServer(store_dir=tmp_path), agencies, spare=User.new(), **users).block(agencies)
    b = Bus(
        server=NatsServer(store_dir=tmp_path / "nats", extra_config=block),
        agencies=agencies,
        spare=User.new(),
        **users,
    )
    b.server.start()
    try:
        await provision(b.server.url, nkeys_seed=b.operator.seed, agencies=list(agencies))
        op = await b.as_operator()
        kv = await op.js.key_value(DIRECTORY_BUCKET)
        await kv.put(DIRECTORY_KEY, b"directory v1")
        yield b
    finally:
        for conn in b.conns:
            if not conn.nc.is_closed:
                await conn.nc.close()
        b.server.stop()


def agent_consumer_config(agency: str) -> ConsumerConfig:
    """The consumer configuration agents/transport.py asks for."""
    return inbox_consumer_config(agency, DEFAULT_LIMITS)


async def consumer_names(op: Conn) -> list[str]:
    """The consumers of every inbox stream, but the one provisioning made for its owner."""
    return [
        info.name
        for x in (A, B)
        for info in await op.js.consumers_info(inbox_stream(x))
        if info.name != inbox_consumer(x)
    ]


async def send(conn: Conn, recipient: str, message_id: str, body: bytes = b"sealed") -> int:
    ack = await conn.js.publish(
        inbox_subject(recipient),
        body,
        headers={"Nats-Msg-Id": publish_id(message_id, recipient)},
    )
    seq: int = ack.seq
    return seq


# --- refused connections -------------------------------------------------------------------


async def test_unauthenticated_client_cannot_connect(bus: Bus) -> None:
    """A client without credentials is refused: there is no anonymous user."""
    with pytest.raises(REFUSED):
        await bus.connect(None)


async def test_unknown_nkey_cannot_connect(bus: Bus) -> None:
    """A client signing with an NKey the server does not list is refused."""
    with pytest.raises(REFUSED):
        await bus.connect(bus.spare)


# --- what agency A may do --------------------------------------------------------------------


async def test_agency_can_publish_to_another_inbox_with_ack(bus: Bus) -> None:
    """A publishes to B's inbox with a Nats-Msg-Id; JetStream acknowledges and de-duplicates."""
    a = await bus.agency(A)
    first = await send(a, B, "m1")
    again = await a.js.publish(
        inbox_subject(B), b"sealed", headers={"Nats-Msg-Id": publish_id("m1", B)}
    )
    assert again.duplicate and again.seq == first
    assert a.errors == []


async def test_agency_consumes_its_own_inbox_like_the_agent(bus: Bus) -> None:
    """A creates its durable consumer as the agent does, fetches, acks, terms and reads its info."""
    a, b = await bus.agency(A), await bus.agency(B)
    await send(b, A, "m1")
    await send(b, A, "m2")
    config = agent_consumer_config(A)
    sub = await a.js.pull_subscribe(
        inbox_subject(A), durable=inbox_consumer(A), stream=inbox_stream(A), config=config
    )
    msgs: list[Msg] = []
    while len(msgs) < 2:  # a fetch returns what is there: perhaps one of the two yet
        msgs += await sub.fetch(2 - len(msgs), timeout=PATIENT)
    assert [m.data for m in msgs] == [b"sealed", b"sealed"]
    # Erased from its own inbox stream before the ack, as the agent does.
    assert await a.js.delete_msg(inbox_stream(A), msgs[0].metadata.sequence.stream)
    await msgs[0].ack()
    await msgs[1].term()
    await a.nc.flush()
    deadline = time.monotonic() + 20  # the server applies acks asynchronously
    info = await sub.consumer_info()
    while (info.num_ack_pending or info.num_pending) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        info = await sub.consumer_info()
    assert info.num_ack_pending == 0 and info.num_pending == 0
    await sub.unsubscribe()
    # Again, now that the consumer exists (the agent's reconnect path): info, then bind.
    sub = await a.js.pull_subscribe(
        inbox_subject(A), durable=inbox_consumer(A), stream=inbox_stream(A), config=config
    )
    await send(b, A, "m3")
    (msg,) = await sub.fetch(1, timeout=PATIENT)
    await msg.ack()
    info = await a.js.consumer_info(inbox_stream(A), inbox_consumer(A))
    assert info.name == inbox_consumer(A)
    assert a.errors == []


async def create_as_documented(conn: Conn, agency: str) -> dict[str, object]:
    """Create `agency`'s consumer as a third party would from PROTOCOL.md §5 alone: the
    documented subject, `"action": "create"`, the documented parameters; the answer."""
    request = {
        "stream_name": inbox_stream(agency),
        "action": "create",
        "config": consumer_parameters(agency),
    }
    subject = f"$JS.API.CONSUMER.CREATE.{inbox_stream(agency)}.{inbox_consumer(agency)}"
    reply = await conn.nc.request(
        f"{subject}.{inbox_subject(agency)}", json.dumps(request).encode(), timeout=PATIENT
    )
    answer: dict[str, object] = json.loads(reply.data)
    return answer


async def test_consumer_created_with_the_documented_parameters(bus: Bus) -> None:
    """§5's parameters create A's consumer on a fresh stream, and meet the one the agent
    created as equal (not error 10148, `consumer already exists`); B's, created by the
    agent's code, is then created again by B from the document, and the server keeps the
    same config."""
    a, b = await bus.agency(A), await bus.agency(B)
    fresh = await create_as_documented(a, A)
    assert "error" not in fresh, fresh
    sub = await b.js.pull_subscribe(
        inbox_subject(B),
        durable=inbox_consumer(B),
        stream=inbox_stream(B),
        config=agent_consumer_config(B),
    )
    before = await b.js.consumer_info(inbox_stream(B), inbox_consumer(B))
    again = await create_as_documented(b, B)
    assert "error" not in again, again
    after = await b.js.consumer_info(inbox_stream(B), inbox_consumer(B))
    assert after.config == before.config and after.created == before.created
    await sub.unsubscribe()
    assert a.errors == [] and b.errors == []


async def test_agency_cannot_make_its_inbox_consumer_push_into_others_replies(bus: Bus) -> None:
    """Provisioning made `inbox-<A>` a pull consumer before A could connect; A's one allowed
    create form, with a `deliver_subject` in its body aimed at B's replies, is refused by
    nats-server (a pull consumer never becomes a push one), and B receives none of A's mail."""
    a, b, op = await bus.agency(A), await bus.agency(B), await bus.as_operator()
    victim = f"{reply_prefix(B)}.victim"
    received = await b.nc.subscribe(victim)
    await b.nc.flush()
    config = {**consumer_parameters(A), "deliver_subject": victim}
    del config["max_waiting"]  # a push consumer has none
    subject = f"$JS.API.CONSUMER.CREATE.{inbox_stream(A)}.{inbox_consumer(A)}"
    request = {"stream_name": inbox_stream(A), "config": config}
    reply = await a.nc.request(
        f"{subject}.{inbox_subject(A)}", json.dumps(request).encode(), timeout=PATIENT
    )
    assert json.loads(reply.data)["error"]["err_code"] == 10012  # pull to push
    await send(b, A, "m1")

    async def held_for_pull() -> bool:
        # the consumer counts a stored message a moment after the stream acknowledges it
        info = await op.js.consumer_info(inbox_stream(A), inbox_consumer(A))
        assert info.config.deliver_subject is None
        return info.num_pending == 1

    await eventually(held_for_pull, what="A's mail to wait, unpushed, in its pull consumer")
    with pytest.raises(nats.errors.TimeoutError):
        await received.next_msg(timeout=SHORT)


async def test_agency_reads_the_directory_as_the_agent_does(bus: Bus) -> None:
    """A reads the directory bucket as the agent does (agents/transport.py: message get,
    next by subject), and by direct get; it sees an update an operator publishes."""
    a, op = await bus.agency(A), await bus.as_operator()
    await a.nc.request("$JS.API.INFO", b"", timeout=PATIENT)
    kv = await a.js.key_value(DIRECTORY_BUCKET)
    assert (await kv.get(DIRECTORY_KEY)).value == b"directory v1"
    stream, keys = f"KV_{DIRECTORY_BUCKET}", f"$KV.{DIRECTORY_BUCKET}.>"
    first = await a.js.get_msg(stream, seq=1, subject=keys, next=True)
    assert first.data == b"directory v1"
    await (await op.js.key_value(DIRECTORY_BUCKET)).put(DIRECTORY_KEY, b"directory v2")
    assert first.seq is not None
    update = await a.js.get_msg(stream, seq=first.seq + 1, subject=keys, next=True)
    assert update.data == b"directory v2"
    assert a.errors == []


@pytest.mark.parametrize("bucket", [DIRECTORY_BUCKET, attachment_bucket(A)])
async def test_agency_cannot_aim_a_push_consumer_at_another_agencys_replies(
    bus: Bus, bucket: str
) -> None:
    """B, subscribed on a reply subject of its own, is what A aims a push consumer at, on
    the directory stream and on an attachment stream A may read: the create is refused as
    a permissions violation, no consumer exists, and B receives nothing. (Before, both
    creates were allowed and the server delivered the stream's messages to B.)"""
    a, b, op = await bus.agency(A), await bus.agency(B), await bus.as_operator()
    stream = f"KV_{bucket}" if bucket == DIRECTORY_BUCKET else attachment_stream(A)
    if bucket != DIRECTORY_BUCKET:
        await (await a.js.object_store(bucket)).put("r.x", b"ciphertext")
    victim = f"{reply_prefix(B)}.victim"
    received = await b.nc.subscribe(victim)
    await b.nc.flush()
    request = {"stream_name": stream, "config": {"deliver_subject": victim, "ack_policy": "none"}}
    for subject in (
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.evil",
        f"$JS.API.CONSUMER.CREATE.{stream}.evil.>",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.evil",
    ):
        await a.nc.publish(subject, json.dumps(request).encode(), reply=f"{reply_prefix(A)}.x")
        await a.violation(subject)
    assert await op.js.consumers_info(stream) == []
    await a.nc.flush()
    with pytest.raises(nats.errors.TimeoutError):
        await received.next_msg(timeout=SHORT)
    # And nats-py's watch, whose ordered consumer is such a push consumer, is refused too.
    if bucket == DIRECTORY_BUCKET:
        with pytest.raises(REFUSED):
            await (await a.refused_js.key_value(bucket)).watchall()
    assert b.errors == []


@pytest.mark.parametrize(
    "subject",
    [
        f"$O.nrm-attachments.{A}",  # the shared bucket of an earlier release
        "$JS.API.STREAM.NAMES",
        "$JS.API.STREAM.LIST",
        f"$JS.API.CONSUMER.DELETE.{attachment_stream(B)}.x",
        f"$JS.API.CONSUMER.INFO.KV_{DIRECTORY_BUCKET}.x",
        f"$JS.FC.KV_{DIRECTORY_BUCKET}.x",
        f"$JS.FC.{attachment_stream(B)}.x",
        f"$JS.API.DIRECT.GET.KV_{DIRECTORY_BUCKET}",  # the batch form: one request, many answers
    ],
)
async def test_agency_is_refused_what_it_no_longer_needs(bus: Bus, subject: str) -> None:
    """Grants that earlier releases gave and nothing of an agent uses are refused."""
    a = await bus.agency(A)
    await a.nc.publish(subject, b"{}", reply=f"{reply_prefix(A)}.x")
    await a.violation(subject)


async def test_agency_publishes_its_own_audit_subject(bus: Bus) -> None:
    """A publishes to its own audit subject and the auditor receives it. Published again
    until it arrives (a fresh-clone run once saw the first one never delivered, with no
    error on either side): a publish the bus refused would never arrive at all."""
    a, auditor = await bus.agency(A), await bus.as_auditor()
    sub = await auditor.nc.subscribe("nrm.v1.audit.>")
    await auditor.nc.flush()
    msg = None
    deadline = asyncio.get_running_loop().time() + PATIENT
    while msg is None and asyncio.get_running_loop().time() < deadline:
        await a.nc.publish(audit_subject(A), b"event")
        await a.nc.flush()
        with contextlib.suppress(nats.errors.TimeoutError):
            msg = await sub.next_msg(timeout=SHORT)
    assert msg is not None, "the auditor never received A's audit event"
    assert msg.subject == audit_subject(A) and msg.data == b"event"
    assert a.errors == [] and auditor.errors == []


# --- what agency B may not do to A -----------------------------------------------------------


async def test_agency_cannot_subscribe_to_another_inbox(bus: Bus) -> None:
    """B's core subscription to A's inbox subject is refused."""
    b = await bus.agency(B)
    await b.nc.subscribe(inbox_subject(A))
    await b.violation(inbox_subject(A))


@pytest.mark.parametrize("name", [inbox_consumer(A), inbox_consumer(B)])
async def test_agency_cannot_create_a_consumer_on_another_inbox(bus: Bus, name: str) -> None:
    """B can create no consumer on A's inbox stream, whether named inbox-A or inbox-B."""
    b, op = await bus.agency(B), await bus.as_operator()
    config = ConsumerConfig(name=name, durable_name=name, filter_subject=inbox_subject(A))
    with pytest.raises(REFUSED):
        await b.refused_js.add_consumer(inbox_stream(A), config=config)
    await b.violation(f"$JS.API.CONSUMER.CREATE.{inbox_stream(A)}.{name}")
    assert name not in await consumer_names(op)


@pytest.mark.parametrize(
    "subject",
    [
        f"$JS.API.CONSUMER.DURABLE.CREATE.{inbox_stream(A)}.{inbox_consumer(B)}",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{inbox_stream(A)}.{inbox_consumer(A)}",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{inbox_stream(B)}.{inbox_consumer(B)}",
        f"$JS.API.CONSUMER.CREATE.{inbox_stream(A)}.{inbox_consumer(B)}",
        f"$JS.API.CONSUMER.CREATE.{inbox_stream(A)}",
        f"$JS.API.CONSUMER.CREATE.{inbox_stream(B)}.{inbox_consumer(B)}",
        f"$JS.API.CONSUMER.CREATE.{inbox_stream(B)}",
    ],
)
async def test_agency_cannot_use_unfiltered_or_legacy_create(bus: Bus, subject: str) -> None:
    """The create forms without a filter subject in the API subject are refused to B, on
    A's inbox stream and on its own."""
    b, op = await bus.agency(B), await bus.as_operator()
    request = {
        "stream_name": inbox_stream(A),
        "config": {
            "name": inbox_consumer(B),
            "durable_name": inbox_consumer(B),
            "filter_subject": inbox_subject(A),
            "ack_policy": "explicit",
        },
    }
    with pytest.raises(REFUSED):
        await b.nc.request(subject, json.dumps(request).encode(), timeout=SHORT)
    await b.violation(subject)
    assert inbox_consumer(B) not in await consumer_names(op)


async def test_agency_cannot_smuggle_another_inbox_in_filter_subjects(bus: Bus) -> None:
    """B's own create subject with A's inbox in `filter_subjects` is rejected by the server."""
    b, op = await bus.agency(B), await bus.as_operator()
    stream = inbox_stream(B)
    subject = f"$JS.API.CONSUMER.CREATE.{stream}.{inbox_consumer(B)}.{inbox_subject(B)}"
    for config in (
        {"filter_subjects": [inbox_subject(A)]},
        {"filter_subjects": [inbox_subject(B), inbox_subject(A)]},
        {"filter_subject": inbox_subject(A)},
    ):
        request = {
            "stream_name": stream,
            "config": {
                "name": inbox_consumer(B),
                "durable_name": inbox_consumer(B),
                "ack_policy": "explicit",
                **config,
            },
        }
        reply = await b.nc.request(subject, json.dumps(request).encode(), timeout=PATIENT)
        assert "error" in json.loads(reply.data), config
    assert await consumer_names(op) == []
    info = await op.js.consumer_info(stream, inbox_consumer(B))
    assert info.config.filter_subject == inbox_subject(B) and not info.config.filter_subjects


async def test_agency_cannot_fetch_from_another_consumer(bus: Bus) -> None:
    """B cannot pull from A's consumer, and A still gets its message afterwards."""
    a, b = await bus.agency(A), await bus.agency(B)
    sub_a = await a.js.pull_subscribe(
        inbox_subject(A),
        durable=inbox_consumer(A),
        stream=inbox_stream(A),
        config=agent_consumer_config(A),
    )
    await send(b, A, "m1")
    sub_b = await b.js.pull_subscribe_bind(durable=inbox_consumer(A), stream=inbox_stream(A))
    with pytest.raises(REFUSED):
        await sub_b.fetch(1, timeout=SHORT)
    await b.violation(f"$JS.API.CONSUMER.MSG.NEXT.{inbox_stream(A)}.{inbox_consumer(A)}")
    with pytest.raises(REFUSED):
        await b.refused_js.consumer_info(inbox_stream(A), inbox_consumer(A))
    (msg,) = await sub_a.fetch(1, timeout=PATIENT)
    assert msg.metadata.num_delivered == 1
    # Nor can B ack (or term) A's messages.
    assert msg.reply is not None
    await b.nc.publish(msg.reply, b"+TERM")
    await b.violation(msg.reply)
    await msg.ack()


@pytest.mark.parametrize(
    "verb",
    ["STREAM.MSG.DELETE", "STREAM.PURGE", "STREAM.MSG.GET", "STREAM.INFO", "STREAM.UPDATE"],
)
async def test_agency_cannot_erase_purge_or_read_another_inbox_stream(bus: Bus, verb: str) -> None:
    """A's erase (the grant it has on its own inbox stream), purge, message get, info or
    update of B's inbox stream is refused by the server, and B's queued message is intact."""
    a, op = await bus.agency(A), await bus.as_operator()
    seq = await send(a, B, "queued", body=b"sealed for B")
    stream = inbox_stream(B)
    subject = f"$JS.API.{verb}.{stream}"
    request = {"seq": seq} if "MSG" in verb else {}
    with pytest.raises(REFUSED):
        await a.nc.request(subject, json.dumps(request).encode(), timeout=SHORT)
    await a.violation(subject)
    assert (await op.js.stream_info(stream)).state.messages == 1
    assert (await op.js.get_msg(stream, seq)).data == b"sealed for B"
    assert "$JS.API.STREAM.MSG.DELETE." + stream not in agency_permissions(A, readable=[A, B])[0]


async def test_agency_cannot_publish_to_another_audit_subject(bus: Bus) -> None:
    """B's publish to A's audit subject is refused and never reaches the auditor."""
    b, auditor = await bus.agency(B), await bus.as_auditor()
    sub = await auditor.nc.subscribe("nrm.v1.audit.>")
    await auditor.nc.flush()
    await b.nc.publish(audit_subject(A), b"forged")
    await b.violation(audit_subject(A))
    with pytest.raises(nats.errors.TimeoutError):
        await sub.next_msg(timeout=SHORT / 2)


async def test_agency_cannot_write_the_directory(bus: Bus) -> None:
    """B can read the directory bucket but its put is refused and the value is unchanged."""
    b, op = await bus.agency(B), await bus.as_operator()
    kv = await b.refused_js.key_value(DIRECTORY_BUCKET)
    with pytest.raises(REFUSED):
        await kv.put(DIRECTORY_KEY, b"forged")
    await b.violation(f"$KV.{DIRECTORY_BUCKET}.{DIRECTORY_KEY}")
    entry = await (await op.js.key_value(DIRECTORY_BUCKET)).get(DIRECTORY_KEY)
    assert entry.value == b"directory v1"


async def test_agency_holds_only_its_own_instance_lease(bus: Bus) -> None:
    """A creates, renews (compare-and-set) and reads its own lease key; writing or reading
    B's lease key is refused and B's lease is unchanged."""
    a, b, op = await bus.agency(A), await bus.agency(B), await bus.as_operator()
    kv_a = await a.js.key_value(PRESENCE_BUCKET)
    revision = await kv_a.create(presence_key(A), b"a-lease")
    revision = await kv_a.update(presence_key(A), b"a-renewed", last=revision)
    assert (await kv_a.get(presence_key(A))).value == b"a-renewed"
    assert a.errors == []
    kv_b = await b.js.key_value(PRESENCE_BUCKET)
    await kv_b.create(presence_key(B), b"b-lease")
    refused_kv_a = await a.refused_js.key_value(PRESENCE_BUCKET)
    with pytest.raises(REFUSED):
        await refused_kv_a.put(presence_key(B), b"forged")
    await a.violation(f"$KV.{PRESENCE_BUCKET}.{presence_key(B)}")
    with pytest.raises(REFUSED):
        await refused_kv_a.get(presence_key(B))
    await a.violation(f"$JS.API.DIRECT.GET.{PRESENCE_STREAM}.$KV.{PRESENCE_BUCKET}.{B}")
    entry = await (await op.js.key_value(PRESENCE_BUCKET)).get(presence_key(B))
    assert entry.value == b"b-lease"


async def test_agency_puts_only_its_own_services_keys_and_reads_all(bus: Bus) -> None:
    """A puts its catalogue and a capacity record; B reads them as the agent follows the
    bucket (message get, next by subject) and by key; B's put under A's keys is refused
    and A's values are unchanged (PROTOCOL §5.1, §8.8)."""
    a, b = await bus.agency(A), await bus.agency(B)
    service = "0123456789abcdef"
    kv_a = await a.js.key_value(SERVICES_BUCKET)
    await kv_a.put(catalogue_key(A), b"a catalogue")
    await kv_a.put(capacity_key(A, service), b"a capacity")
    kv_b = await b.js.key_value(SERVICES_BUCKET)
    assert (await kv_b.get(capacity_key(A, service))).value == b"a capacity"
    first = await b.js.get_msg(
        SERVICES_STREAM, seq=1, subject=f"$KV.{SERVICES_BUCKET}.>", next=True
    )
    assert first.data == b"a catalogue"
    assert a.errors == [] and b.errors == []
    refused = await b.refused_js.key_value(SERVICES_BUCKET)
    for key in (catalogue_key(A), capacity_key(A, service)):
        with pytest.raises(REFUSED):
            await refused.put(key, b"forged")
        await b.violation(f"$KV.{SERVICES_BUCKET}.{key}")
    assert (await kv_a.get(catalogue_key(A))).value == b"a catalogue"
    assert (await kv_a.get(capacity_key(A, service))).value == b"a capacity"


async def test_agency_writes_erases_and_reads_attachments_with_the_granted_subjects(
    bus: Bus,
) -> None:
    """What agents/attachments.py does takes no subject beyond the grant: A puts an object
    in its own bucket (two chunks), reads it back, erases its messages one by one; B reads
    A's object through nats-py's `get` (ordered consumer, flow control). No violation."""
    a, b, op = await bus.agency(A), await bus.agency(B), await bus.as_operator()
    data = os.urandom(300 * 1024)
    own = await a.js.object_store(attachment_bucket(A))
    await own.put("r.x", data)
    assert await read_object(a.js, own, A, "r.x") == data
    theirs = await b.nc.jetstream(timeout=5 * SHORT).object_store(attachment_bucket(A))
    assert await read_object(b.js, theirs, A, "r.x") == data
    with pytest.raises(REFUSED):
        await theirs.get("r.x")
    await b.violation("$JS.API.STREAM.NAMES")  # how it finds the stream to consume
    b.errors.clear()
    stream = attachment_stream(A)
    seq = 1
    while True:  # the erasure's walk: next message by subject, deleted by sequence
        try:
            msg = await a.js.get_msg(
                stream, seq=seq, subject=f"$O.{attachment_bucket(A)}.>", next=True
            )
        except nats.js.errors.NotFoundError:
            break
        await a.js.delete_msg(stream, msg.seq)
        seq = msg.seq + 1
    assert (await op.js.stream_info(stream)).state.messages == 0
    assert a.errors == [] and b.errors == []


def test_agency_grants_no_write_outside_its_own_bucket() -> None:
    """An agency's allow list writes only under its own `$O.` and deletes only in its own
    stream; no agency may create, update, purge or delete any stream."""
    allow, _, _, _ = agency_permissions(A, readable=[A, B, C])
    writes = [s for s in allow if s.startswith("$O.")]
    assert writes == [f"$O.{attachment_bucket(A)}.>"]
    deletes = [s for s in allow if ".MSG.DELETE." in s]
    assert deletes == [
        f"$JS.API.STREAM.MSG.DELETE.{inbox_stream(A)}",
        f"$JS.API.STREAM.MSG.DELETE.{attachment_stream(A)}",
    ]
    for verb in ("CREATE", "UPDATE", "PURGE", "DELETE"):
        assert not [s for s in allow if s.startswith(f"$JS.API.STREAM.{verb}")], verb
    for other in (B, C):  # read-only on the others' attachment streams
        assert sorted(s for s in allow if attachment_stream(other) in s) == sorted(
            [
                f"$JS.API.STREAM.INFO.{attachment_stream(other)}",
                f"$JS.API.STREAM.MSG.GET.{attachment_stream(other)}",
            ]
        )


def _matches(pattern: str, subject: str) -> bool:
    """Whether the NATS subject `pattern` (with `*` and `>` wildcards) matches `subject`."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or token not in ("*", have[i]):
            return False
    return len(want) == len(have)


def test_only_agencies_and_operators_may_publish_to_an_inbox() -> None:
    """Exactly who may publish on an inbox subject (`nrm.v1.msg.<agency>`): every agency
    (mail to anyone) and the operators (moving a shared `NRM_MSG` stream's mail, PROTOCOL.md
    §5.1), never an auditor, a ledger or a bus authority; and no one may publish to the
    retired shared stream's subject."""
    roles = {
        "agency": agency_permissions(A, readable=[A, B]),
        "auditor": auditor_permissions(User.new().public),
        "ledger": ledger_permissions(User.new().public),
        "authority": authority_permissions(User.new().public),
        "operator": operator_permissions(),
    }

    def may_publish(role: str, subject: str) -> bool:
        allow, deny, _, _ = roles[role]
        return any(_matches(p, subject) for p in allow) and not any(
            _matches(p, subject) for p in deny
        )

    for subject in (inbox_subject(A), inbox_subject(B)):
        assert {r for r in roles if may_publish(r, subject)} == {"agency", "operator"}
    assert not {r for r in roles if may_publish(r, RETIRED_SUBJECT)}
    assert not {r for r in roles if may_publish(r, f"{inbox_subject(A)}.x")}


@pytest.mark.parametrize("subject", ["_INBOX.>", f"{reply_prefix(A)}.>", ">"])
async def test_agency_cannot_subscribe_to_other_replies(bus: Bus, subject: str) -> None:
    """B can subscribe neither to `_INBOX.>`, nor to A's reply prefix, nor to everything."""
    b = await bus.agency(B)
    await b.nc.subscribe(subject)
    await b.violation(subject)


# --- auditors ----------------------------------------------------------------------------------


async def test_auditor_subscribes_to_audit_subjects_only(bus: Bus) -> None:
    """The auditor reads audit subjects and the directory; anything else it tries is refused."""
    auditor = await bus.as_auditor()
    await auditor.nc.subscribe("nrm.v1.audit.>")
    await auditor.nc.flush()
    kv = await auditor.js.key_value(DIRECTORY_BUCKET)
    assert (await kv.get(DIRECTORY_KEY)).value == b"directory v1"
    assert auditor.errors == []
    for subject in (inbox_subject(A), "nrm.v1.msg.>", "_INBOX.>"):
        await auditor.nc.subscribe(subject)
        await auditor.violation(subject)
    for subject in (audit_subject(A), inbox_subject(A)):
        await auditor.nc.publish(subject, b"x")
        await auditor.violation(subject)
    with pytest.raises(REFUSED):
        await (await auditor.refused_js.key_value(DIRECTORY_BUCKET)).put(DIRECTORY_KEY, b"forged")
    with pytest.raises(REFUSED):
        await auditor.refused_js.add_consumer(inbox_stream(A), config=agent_consumer_config(A))


# --- the ledger and the bus authorities -------------------------------------------------------


async def test_ledger_consumes_the_audit_stream_as_the_ledger_does(bus: Bus) -> None:
    """With its own NKey the ledger reads the directory as its follower does, creates its
    durable consumer (broker/ledger.py's configuration), fetches an agency's audit event,
    acks it, and deletes the consumer for a replay: no violation."""
    ledger, a = await bus.as_service("ledger"), await bus.agency(A)
    found, _ = await read_directory_bucket(ledger.js, 1, newest_only=True)
    assert found == [(DIRECTORY_KEY, b"directory v1")]
    await a.js.publish(audit_subject(A), b"signed event", headers={"Nats-Msg-Id": "e-1"})
    sub = await ledger.js.pull_subscribe(
        AUDIT_SUBJECTS, durable=LEDGER_CONSUMER, stream=AUDIT_STREAM,
        config=ledger_consumer_config(),
    )  # fmt: skip
    msgs = await sub.fetch(16, timeout=PATIENT)
    assert [m.data for m in msgs] == [b"signed event"]
    await msgs[0].ack_sync(timeout=PATIENT)
    assert (await ledger.js.consumer_info(AUDIT_STREAM, LEDGER_CONSUMER)).num_ack_pending == 0
    await ledger.js.delete_consumer(AUDIT_STREAM, LEDGER_CONSUMER)
    assert ledger.errors == []


async def test_bus_authority_reads_the_directory_and_nothing_else(bus: Bus) -> None:
    """A bus authority's NKey reads the directory bucket as its follower does; its fetch
    from the audit stream (a consumer there) is refused."""
    authority = await bus.as_service("authority")
    found, _ = await read_directory_bucket(authority.js, 1, newest_only=True)
    assert found == [(DIRECTORY_KEY, b"directory v1")]
    assert authority.errors == []
    with pytest.raises(REFUSED):
        await authority.refused_js.add_consumer(AUDIT_STREAM, config=ledger_consumer_config())
    await authority.violation(f"$JS.API.CONSUMER.CREATE.{AUDIT_STREAM}.{LEDGER_CONSUMER}")


@pytest.mark.parametrize("kind", ["ledger", "authority"])
async def test_service_identity_cannot_send_read_mail_write_the_directory_or_make_streams(
    bus: Bus, kind: str
) -> None:
    """The ledger's and a bus authority's NKeys are refused (a permissions violation each,
    nothing changed): a publish to an inbox and to an audit subject, a put to the directory
    bucket, a stream created, a consumer on an inbox stream, a message read from one, a
    subscription to `_INBOX.>` or to the inboxes."""
    conn, op = await bus.as_service(kind), await bus.as_operator()
    await conn.nc.publish(inbox_subject(A), b"forged")
    await conn.violation(inbox_subject(A))
    await conn.nc.publish(audit_subject(A), b"forged")
    await conn.violation(audit_subject(A))
    kv = await conn.refused_js.key_value(DIRECTORY_BUCKET)
    with pytest.raises(REFUSED):
        await kv.put(DIRECTORY_KEY, b"forged")
    await conn.violation(f"$KV.{DIRECTORY_BUCKET}.{DIRECTORY_KEY}")
    with pytest.raises(REFUSED):
        await conn.refused_js.add_stream(StreamConfig(name="CAPTURE", subjects=["capture.>"]))
    await conn.violation("$JS.API.STREAM.CREATE.CAPTURE")
    with pytest.raises(REFUSED):
        await conn.refused_js.add_consumer(inbox_stream(A), config=agent_consumer_config(A))
    await conn.violation(f"$JS.API.CONSUMER.CREATE.{inbox_stream(A)}")
    await send(await bus.agency(B), A, "to-a")
    with pytest.raises(REFUSED):
        await conn.refused_js.get_msg(inbox_stream(A), seq=1)
    await conn.violation(f"$JS.API.STREAM.MSG.GET.{inbox_stream(A)}")
    for subject in ("_INBOX.>", "nrm.v1.msg.>"):
        await conn.nc.subscribe(subject)
        await conn.violation(subject)
    assert (await (await op.js.key_value(DIRECTORY_BUCKET)).get(DIRECTORY_KEY)).value == (
        b"directory v1"
    )
    assert (await op.js.stream_info(inbox_stream(A))).state.messages == 1
    assert "CAPTURE" not in [i.config.name for i in await op.js.streams_info()]


# --- reload ----------------------------------------------------------------------------------


async def test_reload_adds_and_removes_agencies_without_restart(bus: Bus) -> None:
    """After reload a new agency can connect and a removed one cannot; the pid never changes."""
    pid = bus.server.pid
    with pytest.raises(REFUSED):
        await bus.connect(bus.spare, inbox_prefix=reply_prefix(C))
    a = await bus.agency(A)

    bus.agencies[C] = bus.spare
    # As the bus authority does: C's inbox stream and bucket first, then the reload.
    await provision(bus.server.url, nkeys_seed=bus.operator.seed, agencies=[C])
    bus.server.reload(bus.block(bus.agencies))
    assert bus.server.pid == pid and bus.server.running
    c = await bus.agency(C)
    await send(c, A, "from-c")
    assert c.errors == []

    removed = bus.agencies.pop(B)
    b = await bus.connect(removed, inbox_prefix=reply_prefix(B))  # still listed: connects
    bus.server.reload(bus.block(bus.agencies))
    assert bus.server.pid == pid and bus.server.running

    async def dropped() -> bool:  # the server drops the removed agency's open connection
        return not b.nc.is_connected

    await eventually(dropped, what="the removed agency's connection to be dropped")
    with pytest.raises(REFUSED):
        await bus.connect(removed, inbox_prefix=reply_prefix(B))
    # Connections of the agencies that stay are untouched.
    assert a.nc.is_connected
    await send(a, C, "to-c")


async def test_reload_with_a_bad_configuration_keeps_the_old_one(bus: Bus) -> None:
    """A configuration the server rejects raises, and the server keeps running the previous one."""
    pid = bus.server.pid
    with pytest.raises(ReloadFailed, match="reload failed") as refused:
        bus.server.reload("authorization { users = [ {")
    # What may be logged is the reason; the log tail (clients, addresses, subjects) is only
    # in the message, for an operator's terminal.
    assert refused.value.reason.startswith("nats-server reload failed")
    assert "tail of" not in refused.value.reason and "tail of" in str(refused.value)
    assert bus.server.pid == pid and bus.server.running
    a = await bus.agency(A)
    await send(a, B, "still-works")
    with pytest.raises(REFUSED):
        await bus.connect(None)
    bus.server.restart()  # the file was put back: a restart starts with the old users
    a = await bus.agency(A)
    await send(a, B, "after-restart")
