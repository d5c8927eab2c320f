"""Two years and two months of a mechanism in a few minutes (issue 10, item 7).

Four agencies run in this process beside a real nats-server and the ledger; every process
clock (runtime.clock) is moved forward with NRM_UNSAFE_CLOCK_FILE while nats-server keeps real
time. Across 800 simulated days the administrators renew the directory monthly, rotate the
root yearly and every agency's keys quarterly (signing, encryption and NATS), revoke one key,
remove one agency and admit it again, and restore the ledger from a backup — while consents,
referrals, transitions and withdrawals flow. At the end every consent ever recorded can be
shown and withdrawn, every withdrawal has been confirmed by every recipient, every referral
not withdrawn is readable by its recipients, `nrm audit verify` with only the first root
passes, nothing was lost or stored twice, and no agent ever trusted an expired directory or
sat degraded without a reason it was told.

Each simulated step first lets all traffic settle (every wait re-checks all its conditions
until a deadline), then moves the clock: a jump never lands in the middle of a delivery.
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agents import Agent
from broker.ledger import Ledger, LedgerConfig
from broker.ledger_restore import restore_ledger
from keys import PublicIdentity
from keys.keyfile import INTERACTIVE
from nrm import admin
from nrm.sandbox import AgencySetup, Sandbox, prepare_mechanism
from runtime import clock
from runtime.durability import backup
from runtime.keydir import load_key_dir, rotate_key_dir
from tests import samples, support
from tests.faults.harness import free_port

pytestmark = [pytest.mark.timetravel, pytest.mark.timeout(900)]

DAY = 86_400
DAYS = 800
STEP_DAYS = 10
#: The test mechanism's agencies and a labour inspectorate. The police records consents and
#: refers; the labour inspectorate is the one removed and admitted again.
AGENCIES = [*support.AGENCIES, ("labour", "Labour inspectorate", "labour-inspection")]
#: Short redelivery, and reconnection back-off capped at 2 s (default 60 s): a connection
#: refused in the moment between a NATS-key rotation's publication and the bus's reload must
#: not wait out a minute of back-off, longer than the settle bound, on a loaded machine.
LIMITS = {
    **support.SHORT_REDELIVERY,
    "reconnect_initial_seconds": 0.2,
    "reconnect_max_seconds": 2.0,
}
SETTLE_SECONDS = 120.0


# --- the mechanism and its clock ----------------------------------------------------------


@dataclass
class Sent:
    """A referral the test made, with whom it went to and under which consent."""

    id: str
    sender: str
    recipient: str
    consent: str | None


@dataclass
class World:
    sandbox: Sandbox
    http: aiohttp.ClientSession
    offset_file: Path
    ledger_config: Path
    day: int = 0
    agents: dict[str, Agent] = field(default_factory=dict)
    consents: list[str] = field(default_factory=list)
    withdrawn: set[str] = field(default_factory=set)
    sent: list[Sent] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    health_log: list[tuple[int, str, str, list[str]]] = field(default_factory=list)
    removed: set[str] = field(default_factory=set)
    #: Agencies that were removed or had keys revoked: they may raise revoked-signer alerts.
    may_alert: set[str] = field(default_factory=set)
    #: The day the administrators last published a directory.
    published_on: int = 0
    #: The version of that directory (the sandbox publishes version 1 as it starts).
    published_version: int = 1
    #: What the last check found still outstanding, for the failure message.
    waiting: str = ""

    @property
    def ledger_backup(self) -> Path:
        return self.sandbox.root / "ledger-backup.db"

    # -- time

    def travel_to(self, day: int) -> None:
        self.day = day
        clock.set_offset(self.offset_file, day * DAY)

    # -- agents

    def setup(self, agency: str) -> AgencySetup:
        return self.sandbox.agencies[agency]

    async def start(self, agency: str) -> None:
        agent = Agent.from_config_file(self.setup(agency).config_path)
        await agent.start()
        self.agents[agency] = agent

    async def stop(self, agency: str) -> None:
        await self.agents.pop(agency).stop()

    async def call(self, agency: str, method: str, path: str, doc: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.setup(agency).token}"}
        url = self.agents[agency].api_url + path
        async with self.http.request(method, url, json=doc, headers=headers) as r:
            return r.status, await r.json(content_type=None)

    # -- administrators

    def current_admin_keys(self) -> list[Path]:
        """The key files of the newest root's administrators, as many as its threshold."""
        root = self.sandbox.admin.trusted_root(now=clock.now())
        suffix = "" if root.version == 1 else f".r{root.version}"
        keys = sorted(self.sandbox.admin.path.glob(f"admin-*{suffix}.key"))
        if root.version == 1:
            keys = [k for k in keys if ".r" not in k.name]
        return keys[: root.threshold]

    async def sign_and_publish(self, what: str) -> None:
        for key in self.current_admin_keys():
            admin.sign_draft(self.sandbox.admin, key, passphrase=self.sandbox.admin_passphrase)
        self.published_version = await self.sandbox.publish()
        self.published_on = self.day
        self.events.append(f"day {self.day}: {what}")

    async def renew(self) -> None:
        admin.renew_directory(self.sandbox.admin)
        await self.sign_and_publish("directory renewed")

    async def rotate_keys(self, agency: str) -> None:
        setup = self.setup(agency)
        rotate_key_dir(setup.key_dir, passphrase=setup.passphrase(), cost=INTERACTIVE)
        identity = PublicIdentity.from_json(setup.identity_path.read_bytes())
        admin.add_agency(self.sandbox.admin, identity, roles=list(setup.roles))
        await self.sign_and_publish(f"{agency} keys rotated")

    async def rotate_root(self) -> None:
        admin.rotate_root(
            self.sandbox.admin,
            old_keys=self.current_admin_keys(),
            admins=3,
            threshold=2,
            passphrase=self.sandbox.admin_passphrase,
            cost=INTERACTIVE,
        )
        await self.sign_and_publish("root rotated")

    async def revoke_and_rotate(self, agency: str) -> None:
        """The agency's machine was stolen: it rotates on a safe machine, and one directory
        change revokes every earlier key and admits the new ones (RUNBOOK "Revoke a key")."""
        setup = self.setup(agency)
        rotate_key_dir(setup.key_dir, passphrase=setup.passphrase(), cost=INTERACTIVE)
        identity = PublicIdentity.from_json(setup.identity_path.read_bytes())
        admin.replace_keys(self.sandbox.admin, identity, reason="machine stolen")
        self.may_alert.add(agency)
        await self.sign_and_publish(f"{agency} old keys revoked, new keys admitted")

    async def acknowledge_expected(self, agency: str, health: dict[str, Any]) -> bool:
        """An agency removed or whose keys were revoked signed audit events the ledger then
        refused (`revoked-signer`): its administrator acknowledges them, as RUNBOOK says, once
        the agency is back. Any other alert, or one at another agency, stays and fails."""
        ledger = health.get("ledger", {})
        if agency not in self.may_alert or ledger.get("last_alert") != "revoked-signer":
            return False
        if health.get("standing", {}).get("state") != "ok":
            return False  # not back yet: it cannot sign the acknowledgement (the alert waits)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "nrm", "agent", "ack-alert",
            "--config", str(self.setup(agency).config_path),
            "--reason", "revoked-signer",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await asyncio.wait_for(process.communicate(), timeout=120)
        assert process.returncode == 0, output.decode()
        self.events.append(f"day {self.day}: {agency} acknowledged its revoked-signer alerts")
        return False  # look again: the acknowledgement must show in its health

    # -- the ledger

    async def start_ledger(self) -> None:
        self.sandbox.ledger = Ledger.from_config_file(self.ledger_config)
        await self.sandbox.ledger.start()

    async def backup_ledger(self) -> None:
        backup(self.sandbox.ledger_home / "ledger.db", self.ledger_backup)
        self.events.append(f"day {self.day}: ledger backed up")

    async def restore_ledger(self) -> None:
        """Stop the ledger, put the backup back with a signed declaration, start it again
        (RUNBOOK "Restore the ledger")."""
        await self.sandbox.stop_ledger()
        config = LedgerConfig.load(self.ledger_config)
        signer = load_key_dir(config.key_dir, passphrase=self.sandbox.ledger_passphrase)
        restore_ledger(config, self.ledger_backup, signer=signer, replaced_lost=False)
        await self.start_ledger()
        self.events.append(f"day {self.day}: ledger restored from the backup")

    async def remove(self, agency: str) -> None:
        admin.remove_agency(self.sandbox.admin, agency)
        self.removed.add(agency)
        self.may_alert.add(agency)
        await self.sign_and_publish(f"{agency} removed")

    async def readmit(self, agency: str) -> None:
        setup = self.setup(agency)
        rotate_key_dir(setup.key_dir, passphrase=setup.passphrase(), cost=INTERACTIVE)
        identity = PublicIdentity.from_json(setup.identity_path.read_bytes())
        admin.add_agency(self.sandbox.admin, identity, roles=list(setup.roles))
        self.removed.discard(agency)
        await self.sign_and_publish(f"{agency} admitted again")


async def until(
    w: World, check: Callable[[], Awaitable[bool]], *, what: str, timeout: float = SETTLE_SECONDS
) -> None:
    """Re-evaluate `check` (every condition it names, each time) until it holds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}: {w.waiting}")
        await asyncio.sleep(0.1)


@pytest.fixture
async def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[World]:
    offset_file = tmp_path / "clock-offset"
    clock.set_offset(offset_file, 0)
    monkeypatch.setenv(clock.ENV, str(offset_file))
    # Renewed monthly, each directory lives 45 days: never within the 7-day warning window.
    settings = admin.AdminSettings(directory_lifetime_seconds=45 * DAY)
    sandbox = prepare_mechanism(tmp_path / "m", AGENCIES, settings=settings)
    await sandbox.start_bus()
    # A fixed port: the agents find the ledger at the same URL after its restore.
    ledger_config = sandbox.write_ledger_config(
        checkpoint_interval=0.5, bind=f"127.0.0.1:{free_port()}"
    )
    async with aiohttp.ClientSession() as http:
        w = World(sandbox, http, offset_file, ledger_config)
        await w.start_ledger()
        sandbox.write_agent_configs(limits=LIMITS, ledger_missing_after=30)
        try:
            for agency, _, _ in AGENCIES:
                await w.start(agency)
            yield w
        finally:
            for agency in list(w.agents):
                await w.stop(agency)
            await sandbox.stop_all()


# --- traffic ------------------------------------------------------------------------------


async def record_consent(w: World) -> str:
    rid = str(uuid.uuid4())
    doc = samples.consent(rid, expires=samples.iso(clock.time() + 3 * 365 * DAY))
    status, body = await w.call("police", "POST", "/v1/consents", doc)
    assert status == 201, (w.day, body)
    w.consents.append(rid)
    return rid


async def refer(w: World, sender: str, recipient: str, referral: dict[str, Any]) -> None:
    status, body = await w.call(
        sender, "POST", "/v1/referrals", {"recipients": [recipient], "referral": referral}
    )
    assert status == 202, (w.day, sender, body)
    w.sent.append(Sent(body["id"], sender, recipient, referral.get("consent_receipt_id")))


async def traffic(w: World) -> None:
    """One step's work: a consent and two referrals under it from the police, a referral from
    the labour inspectorate while it is admitted, and a withdrawal every third step."""
    rid = await record_consent(w)
    consented: dict[str, Any] = {"legal_basis": "consent", "consent_receipt_id": rid}
    await refer(w, "police", "shelter", samples.referral(**consented))
    await refer(
        w,
        "police",
        "coordinator",
        samples.referral(samples.ID_BODY, purpose="identification", **consented),
    )
    if "labour" not in w.removed:
        await refer(w, "labour", "shelter", samples.referral())
    if len(w.consents) % 3 == 0:
        await withdraw(w, w.consents[-3])


async def withdraw(w: World, rid: str) -> None:
    status, body = await w.call("police", "POST", f"/v1/consents/{rid}/withdraw", {})
    assert status == 202, (w.day, rid, body)
    w.withdrawn.add(rid)


async def settled(w: World) -> bool:
    """Every referral delivered and every withdrawal confirmed by every recipient."""
    for s in w.sent:
        if s.sender in w.removed:
            continue
        status, body = await w.call(s.sender, "GET", f"/v1/referrals/{s.id}")
        states = {r["agency"]: r["status"] for r in body.get("recipients", [])}
        if status != 200 or states.get(s.recipient) != "delivered":
            w.waiting = f"referral {s} at its sender: {status} {body}"
            return False
    for rid in w.withdrawn:
        status, body = await w.call("police", "GET", f"/v1/consents/{rid}")
        if status != 200 or body["pending"]:
            w.waiting = f"withdrawal of consent {rid}: {status} {body}"
            return False
    for agency in w.agents:
        if agency in w.removed:
            continue
        waiting = audit_unconfirmed(w.setup(agency).home / "agent.db")
        if waiting:
            w.waiting = f"{waiting} audit events of {agency} not yet proven in the ledger"
            return False
    w.waiting = ""
    return True


async def observe_health(w: World) -> None:
    """Each agent and the ledger: never trusting an expired directory, never degraded."""
    assert w.sandbox.ledger is not None
    async with w.http.get(w.sandbox.ledger.url + "/healthz") as r:
        ledger = await r.json()
    assert ledger["status"] in ("ok", "warning"), (w.day, ledger)
    w.health_log.append((w.day, "ledger", ledger["status"], sorted(ledger.get("reasons", []))))
    for agency, agent in w.agents.items():
        h = agent.health()
        w.health_log.append((w.day, agency, h["status"], told_why(h)))
        trust = h["trust"]
        if trust["directory_trusted"]:
            assert trust["directory_expires"] > clock.now(), (w.day, agency, trust)


def told_why(h: dict[str, Any]) -> list[str]:
    """Every reason an agent's /healthz gives for not being plainly ok."""
    why = list(h.get("reasons", []))
    if h["standing"]["state"] != "ok":
        why.append(f"standing {h['standing']['state']}")
    if h["bus"] != "connected":
        why.append(f"bus {h['bus']}")
    if h["instance"]["lease"] != "held":
        why.append(f"lease {h['instance']['lease']}")
    if h.get("ledger", {}).get("status", "ok") != "ok":
        why.append(f"ledger {h['ledger']['last_alert']}")
    if "refused" in h["trust"]:
        why.append(f"directory refused: {h['trust']['refused']['reason']}")
    return sorted(why)


# --- the schedule -------------------------------------------------------------------------


#: day -> what the administrators do on it (beside the monthly renewal).
def schedule() -> dict[int, list[tuple[str, str]]]:
    plan: dict[int, list[tuple[str, str]]] = {}

    def on(day: int, action: str, arg: str = "") -> None:
        plan.setdefault(day, []).append((action, arg))

    for quarter in range(1, DAYS // 90 + 1):
        for n, (agency, _, _) in enumerate(AGENCIES):
            on(quarter * 90 + 5 * n, "rotate", agency)
    on(350, "root")
    on(700, "root")
    on(200, "revoke", "police")
    on(300, "remove", "labour")
    on(330, "readmit", "labour")
    on(480, "backup-ledger")
    on(500, "restore-ledger")
    return plan


async def administer(w: World, action: str, arg: str) -> None:
    if action == "rotate":
        if arg in w.removed:
            return
        await w.rotate_keys(arg)
    elif action == "root":
        await w.rotate_root()
    elif action == "revoke":
        await w.revoke_and_rotate(arg)
    elif action == "remove":
        await w.remove(arg)
    elif action == "readmit":
        await w.readmit(arg)
    elif action == "backup-ledger":
        await w.backup_ledger()
    elif action == "restore-ledger":
        await w.restore_ledger()
    else:
        raise AssertionError(action)


async def test_eight_hundred_days(world: World) -> None:
    """Renewals, rotations, a revocation, a removal and re-admission, and a ledger restore over
    800 simulated days lose nothing, store nothing twice, and leave every consent showable and
    withdrawable and the whole ledger verifiable from the first root."""
    w = world
    plan = schedule()
    started = time.monotonic()
    for day in range(0, DAYS + 1, STEP_DAYS):
        w.travel_to(day)
        for d in range(day - STEP_DAYS + 1, day + 1):
            for action, arg in plan.get(d, []):
                await administer(w, action, arg)
        if day - w.published_on >= 30:  # monthly, unless another change renewed it
            await w.renew()
        await until(w, lambda: all_ready(w), what=f"every agent ready on day {day}")
        await traffic(w)
        await until(w, lambda: settled(w), what=f"traffic of day {day} to settle")
        await observe_health(w)
    elapsed = time.monotonic() - started

    # Every referral not withdrawn is readable by its recipient.
    for s in w.sent:
        status, body = await w.call(s.recipient, "GET", f"/v1/referrals/{s.id}")
        assert status == 200, (s, body)
        if s.consent not in w.withdrawn:
            assert body["erased"] is False and body["referral"] is not None, s
    # Every consent ever recorded can be shown and withdrawn; every recipient confirms.
    for rid in w.consents:
        status, body = await w.call("police", "GET", f"/v1/consents/{rid}")
        assert status == 200, (rid, body)
        if rid not in w.withdrawn:
            await withdraw(w, rid)
    await until(w, lambda: settled(w), what="every final withdrawal to be confirmed")
    for rid in w.consents:
        status, body = await w.call("police", "GET", f"/v1/consents/{rid}")
        assert all(r["erasure_confirmed_at"] for r in body["recipients"]), (rid, body)
    # Nothing lost, nothing stored twice.
    for agency in ("shelter", "coordinator"):
        stored = inbox_counts(w.setup(agency).home / "agent.db")
        expected = {s.id for s in w.sent if s.recipient == agency}
        assert expected <= set(stored), expected - set(stored)
        assert max(stored.values()) == 1
    # The whole ledger verifies from the first root alone.
    assert w.sandbox.ledger is not None
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nrm",
        "audit",
        "verify",
        "--ledger",
        w.sandbox.ledger.url,
        "--root",
        str(w.sandbox.admin.root_path(1)),
        "--ledger-identity",
        str(w.sandbox.ledger_home / "keys" / "identity.json"),
        env={**os.environ, "NRM_AUDITOR_TOKEN": w.sandbox.auditor_token},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=300)
    text = output.decode()
    assert process.returncode == 0, text
    verified = re.search(r"^OK: (\d+) events verified", text, flags=re.M)
    assert verified is not None, text
    assert int(verified.group(1)) >= 2 * len(w.sent), text  # sent and received, at least
    assert "restore 1" in text, text  # the declared restore is shown
    # No agent sat degraded without being told why, and only where the schedule made it so.
    silent = [h for h in w.health_log if h[2] == "degraded" and not h[3]]
    assert not silent, silent[:5]
    degraded = {(h[1], tuple(h[3])) for h in w.health_log if h[2] != "ok"}
    # A removal reaches the bus (which then refuses the agency) and the agency's own directory
    # view in either order: for a moment it may know only that the bus refuses it.
    removal = {("bus refused", "standing removed"), ("bus refused",)}
    expected = {("labour", reasons) for reasons in removal} | {
        (agency, ("ledger revoked-signer",)) for agency in w.may_alert
    }
    # What it signed before it learnt of its removal the ledger refuses at once (it reads
    # the directory before judging): the alert may come while the agency is still removed.
    expected |= {
        ("labour", tuple(sorted({*reasons, "ledger revoked-signer"}))) for reasons in removal
    }
    assert degraded <= expected, degraded
    print(
        f"\ntime travel: {DAYS} days in {elapsed:.0f}s; {len(w.consents)} consents, "
        f"{len(w.withdrawn)} withdrawn, {len(w.sent)} referrals, {verified.group(1)} audit "
        f"events verified from root.1; {len(w.events)} administrator actions: "
        + "; ".join(w.events)
    )


async def all_ready(w: World) -> bool:
    for agency, agent in w.agents.items():
        if agency in w.removed:
            continue
        h = agent.health()
        if h["status"] not in ("ok", "warning") and not await w.acknowledge_expected(agency, h):
            w.waiting = f"{agency} is {h['status']}: {h}"
            return False
        own = agent.trust.directory
        # The directory of the day, not an older one: an agency that was off the bus (removed,
        # say) still trusts the last it saw, in which its old key is active.
        if own is None or own.version != w.published_version or agency not in own:
            w.waiting = f"{agency} has not applied directory version {w.published_version} yet"
            return False
        signing = {k.kid for k in own.agency(agency).signing_keys if k.status == "active"}
        if agent.keys.public.signing_kid not in signing:
            w.waiting = f"{agency} does not sign with its active key yet"
            return False
    return True


def inbox_counts(db: Path) -> Counter[str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT referral_id FROM inbox WHERE kind = 'referral'").fetchall()
    finally:
        conn.close()
    return Counter(r[0] for r in rows)


def audit_unconfirmed(db: Path) -> int:
    """Audit events the agent has not yet seen proven in the ledger, less those it raised an
    alert about (the suite acknowledges those it expects, and fails on any other)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        (n,) = conn.execute(
            "SELECT count(*) FROM audit_outbox WHERE state != 'included' AND event_id NOT IN"
            " (SELECT event_id FROM ledger_alerts WHERE event_id IS NOT NULL)"
        ).fetchone()
    finally:
        conn.close()
    return int(n)
