"""The agent end to end: real nats-server, real SQLite, real HTTP, agents talking over the bus."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import pytest
from structlog.testing import capture_logs

from agents.transport import erase_failure
from keys.subjects import (
    MOVED_FROM_HEADER,
    inbox_consumer,
    inbox_stream,
    inbox_subject,
    reply_prefix,
)
from nrm import admin
from runtime.keydir import load_key_dir
from runtime.version import VERSION

from . import samples
from .support import Mechanism, eventually, query

REFERRAL = samples.referral()


def rows(db: Path, table: str) -> int:
    with sqlite3.connect(db) as conn:
        (n,) = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608
    return int(n)


async def delivered(m: Mechanism, sender: str, referral_id: str) -> None:
    async def check() -> bool:
        return await m.api(sender).status(referral_id) == "delivered"

    await eventually(check, what=f"delivery of {referral_id}")


async def police_to_shelter(m: Mechanism, n: int, sent: list[str]) -> None:
    """Traffic: `n` referrals from the police to the shelter, 20 ms apart, each id appended
    to `sent` once accepted."""
    for _ in range(n):
        sent.append(await m.api("police").refer(["shelter"], REFERRAL))
        await asyncio.sleep(0.02)


def sent_envelope(m: Mechanism, agency: str, message_id: str) -> bytes:
    """The exact envelope bytes `agency` published, from its outbox."""
    with sqlite3.connect(m.database(agency)) as db:
        (envelope,) = db.execute(
            "SELECT envelope FROM outbox WHERE kind = 'referral' AND referral_id = ?",
            (message_id,),
        ).fetchone()
    return bytes(envelope)


@asynccontextmanager
async def connect_as(m: Mechanism, agency: str) -> AsyncIterator[nats.aio.client.Client]:
    """A bus connection with `agency`'s own credentials (a valid but hostile participant)."""
    keys = load_key_dir(m.setups[agency].key_dir, passphrase=m.setups[agency].passphrase())
    assert keys.nats_seed is not None
    nc = await nats.connect(
        m.bus.url, nkeys_seed_str=keys.nats_seed.decode(), inbox_prefix=reply_prefix(agency)
    )
    try:
        yield nc
    finally:
        await nc.close()


async def operator_js(m: Mechanism) -> tuple[nats.aio.client.Client, Any]:
    keys = load_key_dir(m.sandbox.admin.path / "operator", passphrase=m.sandbox.admin_passphrase)
    assert keys.nats_seed is not None
    nc = await nats.connect(m.bus.url, nkeys_seed_str=keys.nats_seed.decode())
    return nc, nc.jetstream()


async def test_referral_round_trip(mechanism: Mechanism) -> None:
    """A referral goes police -> shelter, is stored once, minimised for a shelter, and is
    delivered."""
    m = mechanism
    rid = await m.api("police").refer(["shelter"], REFERRAL)
    await delivered(m, "police", rid)
    [item] = await m.api("shelter").inbox()
    assert (item["id"], item["sender"]) == (rid, "police")
    body = item["referral"]["body"]
    assert body["names"] == samples.BODY["names"]
    assert body["requested_services"] == samples.BODY["requested_services"]
    assert "narrative" not in body and "perpetrator_information" not in body
    assert await m.api("coordinator").inbox() == []
    _, detail, _ = await m.api("police").call("GET", f"/v1/referrals/{rid}")
    assert [(r["agency"], r["status"], r["state"]) for r in detail["recipients"]] == [
        ("shelter", "delivered", "delivered")
    ]


async def test_multi_recipient_referral_reaches_each(mechanism: Mechanism) -> None:
    """One referral to two agencies is delivered to both, and each confirms it."""
    m = mechanism
    rid = await m.api("police").refer(["shelter", "coordinator"], REFERRAL)
    await delivered(m, "police", rid)
    for agency in ("shelter", "coordinator"):
        assert [i["id"] for i in await m.api(agency).inbox()] == [rid]


async def test_bus_carries_no_plaintext(mechanism: Mechanism) -> None:
    """Neither the envelope on the bus nor the JetStream store files hold personal data."""
    m = mechanism
    canary = "Canary-7f3a9c Person"
    body = {**samples.BODY, "names": {"given_names": canary, "family_name": "Person"}}
    rid = await m.api("police").refer(["shelter"], samples.referral(body))
    await delivered(m, "police", rid)
    assert b"Canary" not in sent_envelope(m, "police", rid)
    for path in (m.root / "bus").rglob("*"):
        if path.is_file():
            assert b"Canary" not in path.read_bytes(), path
    [item] = await m.api("shelter").inbox()
    assert item["referral"]["body"]["names"]["given_names"] == canary


async def test_replayed_envelope_is_rejected(mechanism: Mechanism) -> None:
    """An agency republishing a delivered envelope under a new Nats-Msg-Id: replayed."""
    m = mechanism
    rid = await m.api("police").refer(["shelter"], REFERRAL)
    await delivered(m, "police", rid)
    data = sent_envelope(m, "police", rid)
    with capture_logs() as logs:
        async with connect_as(m, "coordinator") as nc:
            js = nc.jetstream()
            await js.publish(inbox_subject("shelter"), data, headers={"Nats-Msg-Id": "replay-1"})
        await eventually(
            lambda: _logged(logs, "message_rejected"), what="the replay to be rejected"
        )
    assert [e["reason"] for e in logs if e["event"] == "message_rejected"] == ["replayed"]
    assert rows(m.database("shelter"), "inbox") == 1


def _as_if_received_from_the_shared_stream(m: Mechanism, agency: str, seq: int) -> None:
    """Make `agency`'s one inbox row say what a database from before per-agency inbox
    streams says of a message committed from `NRM_MSG` at `seq`."""
    with sqlite3.connect(m.database(agency)) as db:
        db.execute("UPDATE inbox SET stream = 'NRM_MSG', stream_seq = ?", (seq,))


async def test_a_message_committed_before_the_move_is_known_again_in_the_new_stream(
    mechanism: Mechanism,
) -> None:
    """A message committed from the shared `NRM_MSG` but not acked before the upgrade comes
    back moved into the agency's inbox stream at a sequence of its own: it is a redelivery
    (acked, nothing stored twice, the sender not told `replayed`), known by where it was."""
    m = mechanism
    rid = await m.api("police").refer(["shelter"], REFERRAL)
    await delivered(m, "police", rid)
    data = sent_envelope(m, "police", rid)
    _as_if_received_from_the_shared_stream(m, "shelter", 7)
    nc, js = await operator_js(m)
    try:
        with capture_logs() as logs:
            headers = {"Nats-Msg-Id": "moved-1", MOVED_FROM_HEADER: "NRM_MSG 7"}
            await js.publish(inbox_subject("shelter"), data, headers=headers)
            await eventually(
                lambda: _logged(logs, "redelivery_ignored"), what="the move to be recognised"
            )
    finally:
        await nc.close()
    assert not [e for e in logs if e["event"] == "message_rejected"]
    assert rows(m.database("shelter"), "inbox") == 1


async def test_a_replay_at_the_sequence_a_message_had_in_the_shared_stream_is_refused(
    mechanism: Mechanism,
) -> None:
    """Sequences are per stream: an old envelope (committed from `NRM_MSG` at n) replayed
    into the agency's inbox stream where it lands at n too is `replayed`, not a redelivery."""
    m = mechanism
    rid = await m.api("police").refer(["shelter"], REFERRAL)
    await delivered(m, "police", rid)
    data = sent_envelope(m, "police", rid)
    nc, js = await operator_js(m)
    try:
        next_seq = int((await js.stream_info(inbox_stream("shelter"))).state.last_seq) + 1
    finally:
        await nc.close()
    _as_if_received_from_the_shared_stream(m, "shelter", next_seq)
    with capture_logs() as logs:
        async with connect_as(m, "coordinator") as hostile:
            ack = await hostile.jetstream().publish(
                inbox_subject("shelter"), data, headers={"Nats-Msg-Id": "replay-2"}
            )
            assert ack.seq == next_seq
        await eventually(
            lambda: _logged(logs, "message_rejected"), what="the replay to be rejected"
        )
    assert [e["reason"] for e in logs if e["event"] == "message_rejected"] == ["replayed"]
    assert not [e for e in logs if e["event"] == "redelivery_ignored"]
    assert rows(m.database("shelter"), "inbox") == 1


async def test_a_replay_naming_where_it_was_received_is_refused(mechanism: Mechanism) -> None:
    """`Nrm-Moved-From` vouches only for a move out of the shared `NRM_MSG` stream of an
    earlier release: a replay naming the very inbox position the shelter received it at is
    `replayed`, not a silent redelivery."""
    m = mechanism
    rid = await m.api("police").refer(["shelter"], REFERRAL)
    await delivered(m, "police", rid)
    data = sent_envelope(m, "police", rid)
    [(stream, seq)] = query(m.database("shelter"), "SELECT stream, stream_seq FROM inbox")
    with capture_logs() as logs:
        async with connect_as(m, "police") as sender:
            await sender.jetstream().publish(
                inbox_subject("shelter"),
                data,
                headers={"Nats-Msg-Id": "replay-3", MOVED_FROM_HEADER: f"{stream} {seq}"},
            )
        await eventually(
            lambda: _logged(logs, "message_rejected"), what="the replay to be rejected"
        )
    assert [e["reason"] for e in logs if e["event"] == "message_rejected"] == ["replayed"]
    assert not [e for e in logs if e["event"] == "redelivery_ignored"]
    assert rows(m.database("shelter"), "inbox") == 1


async def test_message_whose_erasure_is_refused_is_still_acked_and_counted(
    mechanism: Mechanism,
) -> None:
    """If the bus refuses to erase a consumed message (here the operator set `deny_delete` on
    the shelter's inbox stream), the shelter keeps it once, acks it all the same (the stream
    empties) and counts and logs the failure with the sequence only."""
    m = mechanism
    nc, js = await operator_js(m)
    try:
        stream = inbox_stream("shelter")
        config = (await js.stream_info(stream)).config
        await js.update_stream(config.evolve(deny_delete=True))
        with capture_logs() as logs:
            rid = await m.api("police").refer(["shelter"], REFERRAL)
            await delivered(m, "police", rid)

            async def acked() -> bool:
                return int((await js.stream_info(stream)).state.messages) == 0

            await eventually(acked, what="the shelter to ack the message it could not erase")
    finally:
        await nc.close()
    assert rows(m.database("shelter"), "inbox") == 1
    [failed] = [e for e in logs if e["event"] == "inbox_erase_failed"]
    assert (failed["reason"], failed["error"]) == ("refused", "ServerError")
    assert set(failed) == {"event", "log_level", "agency", "stream_seq", "reason", "error"}
    registry = m.agents["shelter"].metrics.registry
    sample = registry.get_sample_value("nrm_inbox_erase_failed_total", {"reason": "refused"})
    assert sample == 1


def _api_error(code: int, err_code: int, description: str) -> BaseException:
    """The exception nats-py raises for a JetStream API answer with this error."""
    try:
        nats.js.errors.APIError.from_error(
            {"code": code, "err_code": err_code, "description": description}
        )
    except nats.js.errors.APIError as e:
        return e
    raise AssertionError("from_error always raises")


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (_api_error(503, 10039, "jetstream not enabled for account"), "unavailable"),
        (nats.js.errors.APIError(code=503, description="leader election"), "unavailable"),
        (nats.errors.TimeoutError(), "unavailable"),
        (TimeoutError(), "unavailable"),
        (nats.errors.ConnectionClosedError(), "unavailable"),
        (_api_error(500, 10057, "message delete not permitted"), "refused"),
        (_api_error(400, 10000, "bad request"), "refused"),
        (_api_error(404, 10059, "stream not found"), "refused"),
    ],
)
def test_an_erase_is_retried_unless_the_bus_answered_definitively(
    error: BaseException, reason: str
) -> None:
    """A 503 (JetStream not available right now, say during a leader election) or no answer
    is tried again; any other answer of the bus is a refusal, acked unerased at once."""
    assert erase_failure(error) == reason


async def test_tampered_and_misaddressed_envelopes_are_rejected(mechanism: Mechanism) -> None:
    """A tampered envelope and one sealed for another agency are refused and never stored."""
    m = mechanism
    rid = await m.api("police").refer(["coordinator"], REFERRAL)
    await delivered(m, "police", rid)
    data = sent_envelope(m, "police", rid)
    tampered = bytearray(data)
    tampered[len(tampered) // 2] ^= 0x01
    with capture_logs() as logs:
        async with connect_as(m, "police") as nc:
            js = nc.jetstream()
            await js.publish(inbox_subject("shelter"), data, headers={"Nats-Msg-Id": "misaddr"})
            await js.publish(
                inbox_subject("shelter"), bytes(tampered), headers={"Nats-Msg-Id": "t"}
            )
        await eventually(lambda: _logged(logs, "message_rejected", 2), what="both to be rejected")
    reasons = [e["reason"] for e in logs if e["event"] == "message_rejected"]
    assert reasons[0] == "not-addressed-to-me"
    assert reasons[1] in {"bad-signature", "malformed"}
    assert rows(m.database("shelter"), "inbox") == 0


async def test_referral_accepted_while_bus_down_is_delivered_once(mechanism: Mechanism) -> None:
    """A referral accepted while nats-server is down is delivered after it returns, once."""
    m = mechanism
    m.bus.kill()
    rid = await m.api("police").refer(["shelter"], REFERRAL)
    assert await m.api("police").status(rid) == "queued"
    status, health, _ = await m.api("police").call("GET", "/healthz")
    assert (status, health["bus"]) == (503, "disconnected")
    await asyncio.sleep(1.0)  # let the publisher fail and back off at least once
    m.bus.restart()
    await delivered(m, "police", rid)
    assert [i["id"] for i in await m.api("shelter").inbox()] == [rid]
    assert rows(m.database("shelter"), "inbox") == 1


async def test_an_agent_stops_while_its_bus_is_down(mechanism: Mechanism) -> None:
    """An agent stopped while nats-server is down, a referral waiting to be published,
    stops: its loops end and its connection is closed."""
    m = mechanism
    police = m.agents["police"]
    m.bus.kill()
    await m.api("police").refer(["shelter"], REFERRAL)

    async def down() -> bool:
        return not police.transport.link.connected

    await eventually(down, what="police to see the bus gone")
    async with asyncio.timeout(60):  # a hang guard, not a measure
        await m.stop("police")
    assert (police.supervisor.running(), police.transport.connected) == ((), False)
    m.bus.restart()


async def test_an_agent_stops_while_the_bus_refuses_it(mechanism: Mechanism) -> None:
    """An agency removed from the directory is refused by the bus; stopping its agent while
    it tries to reconnect ends its loops and its connection."""
    m = mechanism
    shelter = m.agents["shelter"]
    admin.remove_agency(m.sandbox.admin, "shelter")
    m.sandbox.sign_draft()
    await m.sandbox.publish()

    async def refused() -> bool:
        return shelter.transport.link.state == "refused"

    await eventually(refused, what="the bus to refuse the shelter")
    async with asyncio.timeout(60):  # a hang guard, not a measure
        await m.stop("shelter")
    assert (shelter.supervisor.running(), shelter.transport.connected) == ((), False)


def agent_process(config: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`nrm agent run --config config` in a process of its own, its errors written to `log`."""
    return subprocess.Popen(
        [sys.executable, "-m", "nrm", "agent", "run", "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )


async def test_agent_killed_between_commit_and_ack_keeps_one_copy(mechanism: Mechanism) -> None:
    """A receiving agent that dies after committing but before acking stores the redelivery once."""
    m = mechanism
    await m.stop("shelter")
    config = m.setups["shelter"].config_path
    env = {**os.environ, "NRM_FAILPOINT": "inbox-after-commit"}
    crashing = agent_process(config, env, m.root / "crashing.log")
    try:
        rid = await m.api("police").refer(["shelter"], REFERRAL)
        assert await asyncio.to_thread(crashing.wait, 30) == 70
    finally:
        if crashing.poll() is None:
            crashing.kill()
    assert rows(m.database("shelter"), "inbox") == 1

    env.pop("NRM_FAILPOINT")
    restarted = agent_process(config, env, m.root / "restarted.log")
    try:
        await delivered(m, "police", rid)
        nc, js = await operator_js(m)

        async def drained() -> bool:
            info = await js.consumer_info(inbox_stream("shelter"), inbox_consumer("shelter"))
            return info.num_pending == 0 and info.num_ack_pending == 0

        await eventually(drained, what="the redelivery to be acked")
        await nc.close()
    finally:
        restarted.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(restarted.wait, 15) == 0
    assert rows(m.database("shelter"), "inbox") == 1


def _logged(logs: list[dict[str, object]], event: str, n: int = 1) -> asyncio.Future[bool]:
    future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    future.set_result(sum(1 for e in logs if e["event"] == event) >= n)
    return future


@pytest.mark.parametrize("agency", ["police", "shelter"])
async def test_health_reports_connected_bus(mechanism: Mechanism, agency: str) -> None:
    """/healthz answers without a token, names this release and says the bus is connected
    once it is."""

    async def healthy() -> bool:
        status, body, _ = await mechanism.api(agency).call("GET", "/healthz", token="")
        assert body["bus"] == ("connected" if status == 200 else "disconnected")
        assert body["version"] == VERSION
        return status == 200

    await eventually(healthy, what="the agent to connect")
