"""An agency learns at once that its keys were revoked or that it was removed, and recovers
once it has usable keys again: a real sandbox (bus, ledger, agents, webhooks)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from click.testing import CliRunner, Result
from structlog.testing import capture_logs

from keys import PublicIdentity
from keys.keyfile import INTERACTIVE
from nrm import admin
from nrm.cli import main
from nrm.sandbox import Sandbox, prepare_mechanism
from runtime import clock
from runtime.backoff import Backoff
from runtime.keydir import rotate_key_dir

from . import samples
from .support import (
    AGENCIES,
    TEST_LIMITS,
    Mechanism,
    eventually,
    running_mechanism,
    webhook_receiver,
)
from .test_agent import delivered

REFERRAL = samples.referral()
#: Fast reconnection back-off, so a test sees several attempts in a few seconds.
LIMITS = {**TEST_LIMITS, "reconnect_initial_seconds": 0.2, "reconnect_max_seconds": 2.0}


@dataclass
class Hooks:
    """The police system's webhook receiver: every event body it was sent."""

    events: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.events.append(json.loads(await request.read()))
        return web.Response(status=204)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in {e["id"]: e for e in self.events}.values() if e["type"] == kind]


@pytest.fixture
async def hooked(tmp_path: Path) -> AsyncIterator[tuple[Mechanism, Hooks]]:
    """The three agencies with the police's webhooks going to a local receiver."""
    hooks = Hooks()
    async with (
        webhook_receiver(hooks.handle) as url,
        running_mechanism(
            tmp_path, limits=LIMITS, ledger_missing_after=3, webhooks={"police": url}
        ) as m,
    ):
        yield m, hooks


async def publish(m: Mechanism) -> int:
    """Sign the draft and publish it; its directory version."""
    m.sandbox.sign_draft()
    return await m.sandbox.publish()


def rotate(m: Mechanism, agency: str) -> PublicIdentity:
    setup = m.setups[agency]
    rotate_key_dir(setup.key_dir, passphrase=setup.passphrase(), cost=INTERACTIVE)
    return PublicIdentity.from_json(setup.identity_path.read_bytes())


async def cli(*args: str | Path) -> Result:
    """`nrm ARGS` in-process, in a thread of its own (it runs its own event loop)."""
    return await asyncio.to_thread(CliRunner().invoke, main, [str(a) for a in args])


async def copy_state(m: Mechanism, referral_id: str) -> tuple[str, str | None]:
    status, body, _ = await m.api("police").call("GET", f"/v1/referrals/{referral_id}")
    assert status == 200, body
    (recipient,) = body["recipients"]
    return str(recipient["status"]), recipient.get("failure")


async def refused(m: Mechanism, agency: str, path: str, doc: dict[str, Any]) -> dict[str, Any]:
    status, body, ctype = await m.api(agency).call("POST", path, json=doc)
    assert (status, ctype) == (503, "application/problem+json"), body
    assert isinstance(body, dict)
    return body


async def test_revoked_keys_without_replacement(hooked: tuple[Mechanism, Hooks]) -> None:
    """Police's keys revoked with no replacement: its /healthz turns degraded `key-revoked`,
    new submissions get 503 problem+json naming the reason, what it sent after the
    revocation time is failed (API, webhook, metric); with new keys it recovers by itself,
    and the ledger alerts about its refused events are acknowledged and stay so across a
    restart."""
    m, hooks = hooked
    police = m.agents["police"]
    before = await m.api("police").refer(["shelter"], REFERRAL)
    await delivered(m, "police", before)
    await m.stop("shelter")  # what police sends now waits on the bus, undelivered
    revoked_at = clock.now()
    waiting = [await m.api("police").refer(["shelter"], REFERRAL) for _ in range(3)]

    async def all_sent() -> bool:
        return [(await copy_state(m, rid))[0] for rid in waiting] == ["sent"] * 3

    await eventually(all_sent, what="the referrals to reach the bus")
    ident = police.keys.public
    for kid in (ident.signing_kid, ident.encryption_kid):
        admin.revoke_key(m.sandbox.admin, "police", kid, reason="laptop stolen", at=revoked_at)
    await publish(m)

    async def failed_and_told() -> bool:
        health = police.health()
        states = [await copy_state(m, rid) for rid in waiting]
        notified = {e["data"]["referral_id"] for e in hooks.of_type("delivery.failed")}
        return (
            health["status"] == "degraded"
            and health["standing"]["state"] == "key-revoked"
            and states == [("failed", "key-revoked")] * 3
            and notified == set(waiting)
        )

    await eventually(failed_and_told, what="police to fail its waiting referrals and say so")
    assert await copy_state(m, before) == ("delivered", None)
    status, health, _ = await m.api("police").call("GET", "/healthz")
    assert (status, health["standing"]["state"]) == (503, "key-revoked")
    metrics = police.metrics_text().decode()
    assert 'nrm_outbox_failed_total{reason="key-revoked"} 3.0' in metrics
    problem = await refused(
        m, "police", "/v1/referrals", {"recipients": ["shelter"], "referral": REFERRAL}
    )
    assert problem["reason"] == "key-revoked" and "key-revoked" in problem["detail"]
    assert (await refused(m, "police", "/v1/consents", {}))["reason"] == "key-revoked"
    event = hooks.of_type("delivery.failed")[0]
    assert set(event["data"]) == {"message_id", "kind", "referral_id", "recipients", "reason"}

    # New keys: the agency rotates, the administrators admit them; police recovers by itself.
    admin.add_agency(m.sandbox.admin, rotate(m, "police"), roles=[])
    await publish(m)

    async def recovered() -> bool:
        return police.health()["standing"]["state"] == "ok"

    await eventually(recovered, what="police to recover with its new keys")
    # (the shelter stays stopped: restarted, it might take the failed copies with its cached,
    # older directory before it sees the revocation — and record them delivered after all)
    after = await m.api("police").refer(["coordinator"], REFERRAL)
    await delivered(m, "police", after)
    assert [await copy_state(m, rid) for rid in waiting] == [("failed", "key-revoked")] * 3

    # What police signed with the revoked key never reaches the ledger: recognised as such.
    async def alerted() -> bool:
        unconfirmed = police.store.unconfirmed_audit(10_000)
        return police.health()["ledger"]["last_alert"] == "revoked-signer" and all(
            police.store.alerted(event_id) for event_id, _, _ in unconfirmed
        )

    await eventually(alerted, what="the ledger check to recognise the refused events")
    config = m.setups["police"].config_path
    listed = await cli("agent", "alerts", "--config", config)
    assert listed.exit_code == 0 and "revoked-signer" in listed.output, listed.output
    listed = await cli("agent", "alerts", "--config", config, "--json")
    alerts = json.loads(listed.output)["alerts"]
    assert {a["reason"] for a in alerts} == {"revoked-signer"}, listed.output
    assert all(a["acknowledged_at"] is None and a["occurrences"] >= 1 for a in alerts)
    bad = await cli("agent", "ack-alert", "--config", config, "--reason", "nonsense")
    assert bad.exit_code == 2 and "missing-event" in bad.output
    # A key file rotated but not yet published cannot sign the acknowledgement: refused,
    # nothing changed; once the directory admits the new key it can.
    unpublished = rotate(m, "police")
    early = await cli("agent", "ack-alert", "--config", config, "--reason", "revoked-signer")
    assert early.exit_code == 1 and "publish the directory" in early.output, early.output
    assert police.health()["ledger"]["last_alert"] == "revoked-signer"
    admin.add_agency(m.sandbox.admin, unpublished, roles=[])
    await publish(m)

    async def took_it() -> bool:
        return police.keys.public.signing_kid == unpublished.signing_kid

    await eventually(took_it, what="police to take up its published key")
    acked = await cli("agent", "ack-alert", "--config", config, "--reason", "revoked-signer")
    assert acked.exit_code == 0, acked.output
    again = await cli("agent", "ack-alert", "--config", config, "--reason", "revoked-signer")
    assert again.exit_code == 1 and "no open revoked-signer alert" in again.output

    async def healthy() -> bool:
        return m.agents["police"].health()["status"] == "ok"

    await eventually(healthy, what="police healthy once the alerts are acknowledged")
    await m.stop("police")
    police = await m.start("police")  # waits for status ok: the acknowledgement held
    assert police.health()["ledger"]["alerts"] == 0


async def test_removed_agency_is_told_and_backs_off(hooked: tuple[Mechanism, Hooks]) -> None:
    """Police removed from the directory: /healthz degraded `removed`, 503 on submissions,
    the bus refusing it is reported as such, and its reconnection attempts back off with one
    log line per state change, not per attempt; re-admitted with new keys, it recovers."""
    m, _ = hooked
    police = m.agents["police"]
    link = police.transport.link
    with capture_logs() as logs:
        admin.remove_agency(m.sandbox.admin, "police")
        await publish(m)

        async def told() -> bool:
            health = police.health()
            return (
                health["standing"]["state"] == "removed"
                and health["bus"] == "refused"
                and link.attempts >= 6
            )

        await eventually(told, timeout=60, what="police to learn it was removed and retry")
        lines = [
            e
            for e in logs
            if e.get("agency") == "police" and e["event"] in ("bus_state", "bus_error")
        ]
    # connected -> reconnecting -> refused: a line per change of state, not per attempt (a
    # loaded machine may time out an attempt or two: unreachable, then refused again); each
    # wait within the capped, doubling bound.
    assert len(lines) <= 2 + link.attempts // 2, lines
    policy = Backoff(LIMITS["reconnect_initial_seconds"], LIMITS["reconnect_max_seconds"])
    assert all(d <= policy.ceiling(n) for n, d in enumerate(link.delays))
    problem = await refused(
        m, "police", "/v1/referrals", {"recipients": ["shelter"], "referral": REFERRAL}
    )
    assert problem["reason"] == "removed"
    assert 'nrm_bus_connect_failures_total{state="refused"}' in police.metrics_text().decode()

    identity = rotate(m, "police")
    admin.add_agency(m.sandbox.admin, identity, roles=["police"])
    await publish(m)

    async def back() -> bool:
        health = police.health()
        return health["standing"]["state"] == "ok" and health["bus"] == "connected"

    await eventually(back, timeout=60, what="police to be re-admitted and reconnect")
    assert police.keys.public.signing_kid == identity.signing_kid
    rid = await m.api("police").refer(["shelter"], REFERRAL)
    await delivered(m, "police", rid)


async def test_readmitted_agency_reads_the_directory_before_it_publishes(
    hooked: tuple[Mechanism, Hooks],
) -> None:
    """Cut off by the bus before it could read its removal, police still trusts the directory
    in which its old key is active and queues a referral signed with it. Removed, then
    re-admitted with rotated keys, it reconnects: before it publishes anything it reads and
    applies the bus's directory, so that copy is never published (the shelter would hold it
    back as `unknown-key` and refuse it unseen) but failed, its system told; what it sends
    from then on is signed with the new key and accepted at once."""
    m, hooks = hooked
    police = m.agents["police"]
    old_kid = police.keys.public.signing_kid
    # As an agent with no ledger configured: the ledger would hand it the newer directories
    # while the bus refuses it (LedgerWatch), and the stale one is what is under test.
    assert police.ledger_watch is not None
    police.ledger_watch.directory_wanted = lambda: False
    authority = m.sandbox.authority
    assert authority is not None and authority.follower.directory is not None
    # The bus applies the removal before the agent reads it: the same authorization.
    cut = authority.follower.directory.without_agency("police")
    with capture_logs() as logs:
        await asyncio.to_thread(authority.apply, cut)

        async def cut_off() -> bool:
            return police.health()["bus"] == "refused"

        await eventually(cut_off, timeout=60, what="the bus to refuse police")
        stale = await m.api("police").refer(["shelter"], REFERRAL)  # queued, old key
        assert police.trust.directory is not None and police.trust.directory.version == 1
        admin.remove_agency(m.sandbox.admin, "police")
        await publish(m)
        identity = rotate(m, "police")
        admin.add_agency(m.sandbox.admin, identity, roles=["police"])
        version = await publish(m)
        shelter = m.agents["shelter"].trust

        async def back() -> bool:
            health = police.health()
            return (
                health["bus"] == "connected"
                # the shelter too knows the new key: none of it is held back as unknown
                and shelter.directory is not None
                and shelter.directory.version == version
                and police.keys.public.signing_kid == identity.signing_kid
                and await copy_state(m, stale) == ("failed", "key-revoked")
                and stale in {e["data"]["referral_id"] for e in hooks.of_type("delivery.failed")}
            )

        await eventually(back, timeout=60, what="police back, its stale copy failed and told")
        fresh = await m.api("police").refer(["shelter"], REFERRAL)
        await delivered(m, "police", fresh)
    assert identity.signing_kid != old_kid
    mine = [e for e in logs if e.get("agency") == "police"]
    assert any(e["event"] == "outbox_held" and e["reason"] == "directory-unread" for e in mine)
    received = [
        e for e in logs if e.get("agency") == "shelter" and e["event"] == "referral_received"
    ]
    assert [e["sender_kid"] for e in received if e["sender"] == "police"] == [identity.signing_kid]
    assert not [
        e
        for e in logs
        if e.get("agency") == "shelter" and e["event"] in ("message_deferred", "message_rejected")
    ]


async def test_agent_started_after_its_removal_learns_it_from_the_ledger(
    hooked: tuple[Mechanism, Hooks],
) -> None:
    """An agent that was stopped while its agency was removed starts with its cached, older
    directory and a bus that refuses it from the first attempt: it still learns that it was
    removed, from the directory the ledger holds (verified from its pinned root)."""
    m, _ = hooked
    await m.stop("police")
    admin.remove_agency(m.sandbox.admin, "police")
    await publish(m)
    ledger = m.sandbox.ledger
    assert ledger is not None

    authority = m.sandbox.authority
    assert authority is not None

    async def ledger_and_bus_have_it() -> bool:
        # The bus must refuse police before it starts: nats-server runs version 2's users.
        newest = max(v for v, _, _ in ledger.store.directories())
        return newest == 2 and authority.applied_version == 2

    await eventually(ledger_and_bus_have_it, what="the ledger and the bus to take version 2")
    with capture_logs() as logs:
        police = await m.start("police", wait=False)
        assert police.trust.directory is not None and "police" in police.trust.directory

        async def told() -> bool:
            health = police.health()
            return (
                health["bus"] == "refused"
                and health["standing"]["state"] == "removed"
                and health["trust"]["directory_version"] == 2
            )

        await eventually(told, timeout=60, what="police to learn of its removal via the ledger")
    assert any(e["event"] == "ledger_directory_offered" for e in logs)
    assert not [
        e
        for e in logs
        if e["event"] == "bus_state" and e.get("agency") == "police" and e["state"] == "connected"
    ]  # it never got onto the bus
    refusals = [e for e in logs if e["event"] == "bus_state" and e["state"] == "refused"]
    assert refusals and all("Authorization Violation" in e["detail"] for e in refusals)
    problem = await refused(
        m, "police", "/v1/referrals", {"recipients": ["shelter"], "referral": REFERRAL}
    )
    assert problem["reason"] == "removed"


async def test_rotate_then_revoke_in_one_change_loses_nothing(
    hooked: tuple[Mechanism, Hooks],
) -> None:
    """The safe order — the agency rotates, one directory change revokes the old keys and
    admits the new ones, then it is published — leaves no referral silently lost: each one
    is delivered or, if its old signature was refused, failed with a reason and a webhook;
    police keeps working with its new keys throughout."""
    m, hooks = hooked
    police = m.agents["police"]
    early = [await m.api("police").refer(["shelter"], REFERRAL) for _ in range(3)]
    identity = rotate(m, "police")
    result = await cli(
        "directory",
        "add-agency",
        m.setups["police"].identity_path,
        "--revoke-previous",
        "--reason",
        "laptop stolen",
        "--dir",
        m.sandbox.admin.path,
    )
    assert result.exit_code == 0, result.output
    # Signed and sent with the old key while the administrators collect signatures.
    late = [await m.api("police").refer(["shelter"], REFERRAL) for _ in range(3)]
    await publish(m)

    async def switched() -> bool:
        return police.keys.public.signing_kid == identity.signing_kid

    await eventually(switched, what="police to take its new keys")
    after = [await m.api("police").refer(["shelter"], REFERRAL) for _ in range(3)]

    async def settled() -> bool:
        states = {rid: await copy_state(m, rid) for rid in early + late + after}
        failed = {rid for rid, (s, _) in states.items() if s == "failed"}
        notified = {e["data"]["referral_id"] for e in hooks.of_type("delivery.failed")}
        return (
            all(s in ("delivered", "failed") for s, _ in states.values())
            and all(states[rid][0] == "delivered" for rid in early + after)
            and failed <= notified
            and all(states[rid][1] == "key-revoked" for rid in failed)
        )

    await eventually(settled, timeout=60, what="every referral delivered or visibly failed")
    assert police.health()["standing"]["state"] == "ok"
    directory = police.trust.directory
    assert directory is not None
    entry = directory.agency("police")
    assert [k.status for k in entry.signing_keys] == ["revoked", "active"]


# --- the administrators' commands -------------------------------------------------------------


@pytest.fixture
def folder(tmp_path: Path) -> Sandbox:
    """Administrators (1 of 1) and the three agencies admitted to a signed draft; no bus."""
    return prepare_mechanism(tmp_path, AGENCIES, admins=1, threshold=1)


async def test_keys_revoke_warns_when_no_usable_key_is_left(folder: Sandbox) -> None:
    """Revoking an agency's only signing key is done, with a warning that leads to
    `--revoke-previous`; revoking a key that leaves another usable one is silent."""
    draft = folder.admin.draft().agency("police")
    kid = draft.signing_keys[0].kid
    result = await cli(
        "keys",
        "revoke",
        "--agency",
        "police",
        "--kid",
        kid,
        "--reason",
        "lost",
        "--dir",
        folder.admin.path,
    )
    assert result.exit_code == 0, result.output
    assert "no usable key" in result.output and "--revoke-previous" in result.output
    assert folder.admin.draft().agency("police").signing_keys[0].status == "revoked"
    identity = rotate_setup(folder, "shelter")
    admin.add_agency(folder.admin, identity, roles=[])  # shelter now has a second key
    old = folder.admin.draft().agency("shelter").signing_keys[0].kid
    result = await cli(
        "keys",
        "revoke",
        "--agency",
        "shelter",
        "--kid",
        old,
        "--reason",
        "old",
        "--dir",
        folder.admin.path,
    )
    assert result.exit_code == 0 and "warning" not in result.output, result.output


async def test_add_agency_revoke_previous(folder: Sandbox) -> None:
    """`--revoke-previous` revokes every earlier key and admits the new ones (with the new
    NATS key) in one draft; it needs a reason, refuses an identity the directory already
    lists, and --reason/--at alone are usage errors; a refusal changes nothing."""
    path = folder.agencies["police"].identity_path
    before = folder.admin.directory_bytes()
    for args, code, words in [
        (["--revoke-previous"], 2, "needs --reason"),
        (["--reason", "x"], 2, "go with --revoke-previous"),
        (["--revoke-previous", "--reason", "x"], 1, "already lists"),
    ]:
        result = await cli("directory", "add-agency", path, *args, "--dir", folder.admin.path)
        assert (result.exit_code, words in result.output) == (code, True), result.output
        assert folder.admin.directory_bytes() == before
    identity = rotate_setup(folder, "police")
    result = await cli(
        "directory",
        "add-agency",
        path,
        "--revoke-previous",
        "--reason",
        "laptop stolen",
        "--at",
        "2026-01-01T00:00:00Z",
        "--dir",
        folder.admin.path,
    )
    assert result.exit_code == 0, result.output
    entry = folder.admin.draft().agency("police")
    assert [(k.status, k.revoked_at) for k in entry.signing_keys] == [
        ("revoked", 1767225600),
        ("active", None),
    ]
    assert [k.status for k in entry.encryption_keys] == ["revoked", "active"]
    assert entry.signing_keys[1].kid == identity.signing_kid
    assert entry.nats_key == identity.nats_key


def rotate_setup(folder: Sandbox, agency: str) -> PublicIdentity:
    setup = folder.agencies[agency]
    rotate_key_dir(setup.key_dir, passphrase=setup.passphrase(), cost=INTERACTIVE)
    return PublicIdentity.from_json(setup.identity_path.read_bytes())
