"""The instance lease (agents/presence.py, PROTOCOL.md §5.2) against a real nats-server:
one holder per agency, duplicates refused and reported, crashed holders time out."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import nats
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.kv import KeyValue
from structlog.testing import capture_logs

from agents import Agent
from agents.presence import DUPLICATE, HELD, Presence, instance_id, new_id
from agents.transport import hand_back
from broker import NatsServer
from broker.streams import provision_presence_bucket
from keys.limits import Limits
from keys.subjects import PRESENCE_BUCKET
from nrm import admin
from runtime.keydir import load_key_dir

from . import samples
from .support import TEST_LIMITS, Mechanism, copy_agency_folder, eventually
from .test_agent import delivered

REFERRAL = samples.referral()

#: A short lease so that expiry tests wait seconds, not the production 15.
LEASE_SECONDS = 2
AGENCY = "shelter"


@dataclass
class Lease:
    """One Presence running its loop on its own connection, as an agent process would."""

    presence: Presence
    nc: Client
    running: bool = True
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    async def crash(self) -> None:
        """Stop abruptly, like kill -9: nothing is released."""
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.nc.close()

    async def stop(self) -> None:
        """Stop cleanly: the lease is given up."""
        assert self.task is not None
        self.presence.releasing = True
        self.running = False
        self.presence.wake()
        await self.task
        await self.nc.close()


Start = Callable[[str | None], Awaitable[Lease]]


@pytest.fixture
async def leases(nats_server: NatsServer) -> AsyncIterator[Start]:
    """Start Presence loops on the server (a short lease TTL); all are stopped afterwards."""
    started: list[Lease] = []
    nc = await nats.connect(nats_server.url)
    await provision_presence_bucket(
        nc.jetstream(), limits=Limits(instance_lease_seconds=LEASE_SECONDS)
    )
    await nc.close()

    async def start(instance: str | None = None) -> Lease:
        conn = await nats.connect(nats_server.url)
        lease = Lease(Presence(agency=AGENCY, instance=instance or new_id()), conn)
        lease.task = asyncio.create_task(
            lease.presence.run(conn.jetstream(), lambda: lease.running)
        )
        started.append(lease)
        return lease

    yield start
    for lease in started:
        if lease.task is not None and not lease.task.done():
            await lease.crash()


async def bucket(server: NatsServer) -> tuple[Client, KeyValue]:
    nc = await nats.connect(server.url)
    return nc, await nc.jetstream().key_value(PRESENCE_BUCKET)


async def test_one_holder_the_other_reports_duplicate(leases: Start) -> None:
    """Of two instances of one agency, the first holds the lease and may consume; the second
    does not and reports duplicate-instance naming the holder."""
    first: Lease = await leases(None)
    await eventually(lambda: _state(first, HELD), what="the first to hold the lease")
    second: Lease = await leases(None)

    async def split() -> bool:
        return (
            first.presence.held
            and not second.presence.held
            and second.presence.state == DUPLICATE
            and second.presence.holder == first.presence.instance
        )

    await eventually(split, what="the second to report the first as holder")
    health = second.presence.health()
    assert health["lease"] == DUPLICATE and health["holder"] == first.presence.instance


async def test_crashed_holder_times_out(leases: Start) -> None:
    """When the holder stops without releasing (kill -9), the other instance takes the lease
    over once the bus has timed it out, and only that one holds it."""
    first: Lease = await leases(None)
    await eventually(lambda: _state(first, HELD), what="the first to hold the lease")
    second: Lease = await leases(None)
    await eventually(lambda: _state(second, DUPLICATE), what="the second to wait")
    await first.crash()

    async def taken_over() -> bool:
        return second.presence.held and second.presence.state == HELD

    await eventually(taken_over, timeout=30, what="the second to take over")


async def test_clean_stop_releases_the_lease(leases: Start, nats_server: NatsServer) -> None:
    """A cleanly stopped holder deletes its lease, so the key no longer names it."""
    first: Lease = await leases(None)
    await eventually(lambda: _state(first, HELD), what="the first to hold the lease")
    await first.stop()
    nc, kv = await bucket(nats_server)
    try:
        with pytest.raises(nats.js.errors.KeyNotFoundError):
            await kv.get(AGENCY)
    finally:
        await nc.close()


async def test_restart_of_the_same_installation_takes_over_at_once(
    leases: Start, nats_server: NatsServer
) -> None:
    """A new run of the same installation (same instance id) takes the lease of its crashed
    earlier run over by compare-and-set, without waiting for the lease to time out; the
    bucket then names the new run."""
    instance = new_id()
    first: Lease = await leases(instance)
    await eventually(lambda: _state(first, HELD), what="the first run to hold the lease")
    await first.crash()
    nc, kv = await bucket(nats_server)
    try:
        before = await kv.get(AGENCY)
        assert before.value == f"{instance}.{first.presence.run_id}".encode()
        with capture_logs() as logs:
            second: Lease = await leases(instance)
            await eventually(lambda: _state(second, HELD), what="the new run to hold the lease")
        after = await kv.get(AGENCY)
        assert after.value == f"{instance}.{second.presence.run_id}".encode()
        # Taken over from the crashed run by compare-and-set, not re-created after a lapse.
        events = [e["event"] for e in logs]
        assert "instance_lease_taken_from_earlier_run" in events, events
    finally:
        await nc.close()


async def test_copy_of_the_whole_folder_is_reported(leases: Start) -> None:
    """Two processes of one installation running at once (a copy of the whole agent folder):
    the later one takes the lease, the one it was taken from stops consuming and reports
    duplicate-instance; they never both hold it."""
    instance = new_id()
    first: Lease = await leases(instance)
    await eventually(lambda: _state(first, HELD), what="the first to hold the lease")
    second: Lease = await leases(instance)

    async def one_holder() -> bool:
        return (
            second.presence.held and first.presence.state == DUPLICATE and not first.presence.held
        )

    await eventually(one_holder, what="the displaced process to report the duplicate")


async def test_overwritten_lease_stops_the_holder(leases: Start, nats_server: NatsServer) -> None:
    """A holder whose compare-and-set fails because someone else wrote the key stops
    consuming and reports duplicate-instance with the writer as holder."""
    first: Lease = await leases(None)
    await eventually(lambda: _state(first, HELD), what="the first to hold the lease")
    other = new_id()
    nc, kv = await bucket(nats_server)
    try:
        await kv.put(AGENCY, f"{other}.{new_id()}".encode())

        async def displaced() -> bool:
            return (
                first.presence.state == DUPLICATE
                and first.presence.holder == other
                and not first.presence.held
            )

        await eventually(displaced, what="the holder to notice it was displaced")
    finally:
        await nc.close()


async def test_what_reaches_the_inbox_without_the_lease_is_handed_back_at_once(
    nats_server: NatsServer,
) -> None:
    """A message delivered to a pull request whose fetch gave up on it (the bus received the
    request late, after an outage) and reaching the agent after its lease lapsed is handed
    back at once: the next fetch has it again, not the ack wait of 30 s later."""
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="INBOX", subjects=["inbox"])
        config = ConsumerConfig(durable_name="c", ack_policy=AckPolicy.EXPLICIT, ack_wait=30)
        sub = await js.pull_subscribe("inbox", durable="c", stream="INBOX", config=config)
        await js.publish("inbox", b"receipt")
        # A pull request no fetch waits for: its answer lands in the subscription.
        await nc.publish("$JS.API.CONSUMER.MSG.NEXT.INBOX.c", b'{"batch": 1}', reply=sub._deliver)

        async def arrived() -> bool:
            return bool(sub.pending_msgs == 1)

        await eventually(arrived, what="the answer to the forgotten pull request")
        assert await hand_back(sub) == 1
        (msg,) = await sub.fetch(1, timeout=5)  # 5 s: well within the ack wait
        assert (msg.data, msg.metadata.num_delivered) == (b"receipt", 2)
        await msg.ack()
    finally:
        await nc.close()


def test_instance_id_is_kept_and_checked(tmp_path: Path) -> None:
    """The instance id is created once and read back unchanged; a damaged file is refused."""
    path = tmp_path / "agent.db.instance"
    first = instance_id(path)
    assert instance_id(path) == first and len(first) == 32
    assert path.stat().st_mode & 0o777 == 0o600
    path.write_text("not an id\n")
    with pytest.raises(ValueError, match="instance id"):
        instance_id(path)


async def _state(lease: Lease, state: str) -> bool:
    return lease.presence.state == state and (state != HELD or lease.presence.held)


# --- agents from copies of one key folder ------------------------------------------------


async def _operator(m: Mechanism) -> Client:
    operator = load_key_dir(
        m.sandbox.admin.path / admin.OPERATOR_DIR, passphrase=m.sandbox.admin_passphrase
    )
    assert operator.nats_seed is not None
    return await nats.connect(m.bus.url, nkeys_seed_str=operator.nats_seed.decode())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _healthz(http: aiohttp.ClientSession, url: str) -> dict[str, Any] | None:
    try:
        async with http.get(f"{url}/healthz") as r:
            body = await r.json(content_type=None)
            return body if isinstance(body, dict) else None
    except (aiohttp.ClientError, ValueError):
        return None


def _inbox_ids(db: Path) -> set[str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return {row[0] for row in conn.execute("SELECT message_id FROM inbox")}


async def test_second_agent_from_a_copied_key_folder_does_not_consume(tmp_path: Path) -> None:
    """Two shelter agents started from copies of one key folder: the second does not consume
    and its /healthz and metrics say duplicate-instance while the first keeps receiving;
    after kill -9 of the first the second takes over once the lease times out, and every
    referral is stored exactly once, in one of the two databases."""
    async with aiohttp.ClientSession() as http:
        m = await Mechanism.create(tmp_path / "m", http)
        process: subprocess.Popen[bytes] | None = None
        copy: Agent | None = None
        try:
            op = await _operator(m)
            await provision_presence_bucket(
                op.jetstream(), limits=Limits(instance_lease_seconds=LEASE_SECONDS)
            )
            await op.close()
            port = _free_port()
            m.sandbox.write_agent_configs(
                limits=TEST_LIMITS, ledger_missing_after=5, api_ports={"shelter": port}
            )
            shelter = m.setups["shelter"]
            log_path = tmp_path / "shelter.log"
            with log_path.open("ab") as log:
                process = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "nrm",
                        "agent",
                        "run",
                        "--config",
                        str(shelter.config_path),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                )
            first_url = f"http://127.0.0.1:{port}"

            async def first_ok() -> bool:
                body = await _healthz(http, first_url)
                return body is not None and body["status"] == "ok"

            await eventually(first_ok, timeout=60, what="the first shelter agent")
            await m.start("police")
            copy = Agent.from_config_file(copy_agency_folder(m, "shelter", "shelter-copy"))
            await copy.start()
            first_instance = instance_id(m.database("shelter").with_name("agent.db.instance"))
            assert copy.presence.instance != first_instance

            async def copy_refused() -> bool:
                assert copy is not None
                body = await _healthz(http, copy.api_url)
                return (
                    body is not None
                    and body["status"] == "degraded"
                    and body["bus"] == "connected"
                    and body["instance"]["lease"] == "duplicate-instance"
                    and body["instance"]["holder"] == first_instance
                )

            await eventually(copy_refused, what="the copy to report duplicate-instance")
            assert m.sandbox.authority is not None
            watch = m.sandbox.authority.connections

            async def seen_on_the_bus() -> bool:
                return watch.duplicates == {"shelter": 2} and await copy_refused()

            await eventually(seen_on_the_bus, what="the bus authority to see shelter twice")
            assert b"nrm_agent_duplicate_instance 1.0" in copy.metrics_text()
            # Nor does the copy accept work whose receipts would reach the other instance.
            token = m.setups["shelter"].token
            async with http.post(
                copy.api_url + "/v1/referrals",
                json={"recipients": ["police"], "referral": REFERRAL},
                headers={"Authorization": f"Bearer {token}"},
            ) as r:
                problem = await r.json(content_type=None)
                assert (r.status, problem.get("reason")) == (503, "duplicate-instance"), problem

            before = [await m.api("police").refer(["shelter"], REFERRAL) for _ in range(5)]
            for rid in before:
                await delivered(m, "police", rid)
            assert len(_inbox_ids(m.database("shelter"))) == 5
            assert _inbox_ids(copy.config.database) == set()
            assert await copy_refused()  # still refusing, first still working
            assert await first_ok()

            process.kill()  # kill -9: the lease is not released
            process.wait()
            after = [await m.api("police").refer(["shelter"], REFERRAL) for _ in range(5)]

            async def taken_over() -> bool:
                assert copy is not None
                body = await _healthz(http, copy.api_url)
                statuses = [await m.api("police").status(r) for r in after]
                return (
                    body is not None
                    and body["status"] == "ok"
                    and body["instance"]["lease"] == "held"
                    and statuses == ["delivered"] * len(after)
                    and watch.duplicates == {}
                )

            await eventually(taken_over, timeout=60, what="the copy to take the inbox over")
            first_ids = _inbox_ids(m.database("shelter"))
            copy_ids = _inbox_ids(copy.config.database)
            assert len(first_ids) == 5 and len(copy_ids) == 5 and not first_ids & copy_ids
            assert b"nrm_agent_duplicate_instance 0.0" in copy.metrics_text()
        finally:
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
            if copy is not None:
                await copy.stop()
            await m.close()
