"""`nrm demo`: a bus and three agencies on this machine, and one referral between them.

Everything is real: the nats-server from the wheel, fresh keys, agents started from their
configuration files, the referral submitted over the police agent's HTTP API. The timeline is
built from the agents' own structured log events.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import click
from structlog.typing import EventDict, WrappedLogger

from agents import Agent
from keys import PublicIdentity
from keys.checkpoint import Checkpoint, verify_checkpoint

from . import admin, logs
from .sandbox import LEDGER_NAME, AgencySetup, Sandbox, prepare_mechanism

AGENCIES = [
    ("police", "Metropolitan Police anti-trafficking unit", "police"),
    ("shelter", "Safe House NGO shelter", "ngo"),
    ("coordinator", "National Referral Mechanism co-ordinator", "coordinator"),
]

#: A fictional person: the demo never handles real data.
SAMPLE_REFERRAL: dict[str, Any] = {
    "referral_type": "nrm_full",
    "urgency": "urgent",
    "person": {"names": ["Ana Example"], "age_category": "adult", "languages": ["ro"]},
    "requested_services": ["shelter", "medical", "interpretation"],
}

DELIVERY_TIMEOUT_SECONDS = 30.0


@dataclass
class Timeline:
    """Collects the agents' log events worth showing; implements a structlog processor."""

    start: float = field(default_factory=time.monotonic)
    lines: list[str] = field(default_factory=list)

    def __call__(self, _: WrappedLogger, __: str, event: EventDict) -> EventDict:
        line = self.describe(event)
        if line is not None:
            self.lines.append(f"  +{time.monotonic() - self.start:6.3f}s  {line}")
        return event

    @staticmethod
    def describe(e: EventDict) -> str | None:
        who = e.get("agency", "?")
        match e.get("event"):
            case "referral_accepted":
                to = ", ".join(e["recipients"])
                return (
                    f"{who}: referral {e['message_id'][:12]} for {to} sealed, signed and "
                    "committed to the outbox (HTTP 202)"
                )
            case "published":
                return (
                    f"{who}: bus acknowledged {e['message_id'][:12]} for {e['recipient']}"
                    f" (stream seq {e['stream_seq']})"
                )
            case "referral_received":
                return (
                    f"{who}: referral {e['message_id'][:12]} from {e['sender']}: signatures "
                    f"checked (key {e['sender_kid'][:12]}), decrypted, stored; "
                    f"receipt {e['receipt_id'][:12]} signed"
                )
            case "delivery_confirmed":
                return (
                    f"{who}: delivery receipt from {e['recipient']} verified: "
                    f"{e['message_id'][:12]} delivered"
                )
            case "directory_accepted":
                return f"{who}: trust directory version {e['directory_version']} verified"
            case "message_rejected":
                return f"{who}: REJECTED a message: {e['reason']}"
        return None


@contextmanager
def _workdir(path: Path | None, keep: bool) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=False)
        yield path
        return
    tmp = Path(tempfile.mkdtemp(prefix="nrm-demo-"))
    try:
        yield tmp
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def run(*, keep: bool, workdir: Path | None) -> int:
    with _workdir(workdir, keep) as root:
        timeline = Timeline()
        log_path = root / "logs.jsonl"
        with log_path.open("a", encoding="utf-8") as log_stream:
            logs.configure(stream=log_stream, tap=timeline)
            return asyncio.run(_run(root, timeline, keep=keep, log_path=log_path))


async def _run(root: Path, timeline: Timeline, *, keep: bool, log_path: Path) -> int:
    click.echo(f"NRM Exchange demo in {root}")
    sandbox = prepare_mechanism(root, AGENCIES)
    directory = admin.verified_draft(sandbox.admin)
    trusted_root = sandbox.admin.trusted_root(now=int(time.time()))
    click.echo(
        f"  trust: root v{trusted_root.version} ({trusted_root.threshold}-of-"
        f"{len(trusted_root.keys)} administrators), directory v{directory.version} with "
        f"{len(directory.agencies)} agencies, signed"
    )
    bus = await sandbox.start_bus()
    click.echo(
        f"  bus: nats-server {bus.url} (JetStream; NKey authentication, per-agency "
        "permissions generated from the directory)"
    )
    ledger = await sandbox.start_ledger()
    click.echo(f"  ledger: {ledger.url} (auditor UI at {ledger.url}/)")
    sandbox.write_agent_configs()
    setups = sandbox.agencies
    agents = {a: Agent.from_config_file(s.config_path) for a, s in setups.items()}
    started: list[Agent] = []
    try:
        for agent in agents.values():
            await agent.start()
            started.append(agent)
        for a, agent in agents.items():
            click.echo(f"  agent {a:<12} {agent.api_url}  key {agent.keys.public.signing_kid}")
        if not await _all_ready(list(agents.values())):
            click.echo(f"FAILED: agents did not get a trusted directory; see {log_path}", err=True)
            return 1
        delivered = await _send_and_wait(
            agents["police"], setups["police"], agents["shelter"], setups["shelter"]
        )
        click.echo("\nTimeline")
        for line in timeline.lines:
            click.echo(line)
        if not delivered:
            click.echo(
                f"\nFAILED: no delivery receipt within {DELIVERY_TIMEOUT_SECONDS}s; see {log_path}",
                err=True,
            )
            return 1
        click.echo("\nReferral delivered: police -> shelter, end-to-end encrypted and signed.")
        if not await _ledger_confirms(list(agents.values())):
            click.echo(
                f"\nFAILED: the agents could not confirm their audit events; see {log_path}",
                err=True,
            )
            return 1
        assert sandbox.ledger is not None
        checkpoint = await _verified_checkpoint(sandbox)
        click.echo(
            f"\nAudit ledger: checkpoint of {checkpoint.size} events, root "
            f"{checkpoint.root.hex()[:16]}…, signature verified; every agent proved its events "
            f"are included.\n  auditor UI: {sandbox.ledger.url}/  "
            "(token printed with --keep)"
        )
        if keep:
            await _keep_running(agents, sandbox, log_path)
        return 0
    finally:
        for agent in reversed(started):
            await agent.stop()
        await sandbox.stop_all()


async def _ledger_confirms(agents: list[Agent]) -> bool:
    """Wait until every agent has proved each of its audit events is in the ledger."""
    deadline = time.monotonic() + DELIVERY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if all(
            a.store.unconfirmed_audit(1) == [] and a.store.pending_audit(1) == [] for a in agents
        ):
            return all(a.health()["status"] == "ok" for a in agents)
        await asyncio.sleep(0.1)
    return False


async def _verified_checkpoint(sandbox: Sandbox) -> Checkpoint:
    """Fetch the ledger's latest checkpoint over HTTP and verify it, as an auditor would."""
    assert sandbox.ledger is not None
    sandbox.ledger.checkpoint()
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{sandbox.ledger.url}/v1/checkpoint",
            headers={"Authorization": f"Bearer {sandbox.auditor_token}"},
        ) as response,
    ):
        note = (await response.json())["note"]
    identity = PublicIdentity.from_json(
        (sandbox.ledger_home / "keys" / "identity.json").read_bytes()
    )
    return verify_checkpoint(
        note, key_name=LEDGER_NAME, key=identity.signing_key, origin=sandbox.ledger.config.origin
    )


async def _all_ready(agents: list[Agent]) -> bool:
    """Wait until every agent is connected and holds the verified directory."""
    deadline = time.monotonic() + DELIVERY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if all(agent.health()["status"] == "ok" for agent in agents):
            return True
        await asyncio.sleep(0.05)
    return False


async def _send_and_wait(
    police: Agent, police_setup: AgencySetup, shelter: Agent, shelter_setup: AgencySetup
) -> bool:
    auth = {"Authorization": f"Bearer {police_setup.token}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{police.api_url}/v1/referrals",
            json={"recipients": ["shelter"], "referral": SAMPLE_REFERRAL},
            headers=auth,
        ) as response:
            if response.status != 202:
                click.echo(f"submit failed: HTTP {response.status}", err=True)
                return False
            referral_id = (await response.json())["id"]
        deadline = time.monotonic() + DELIVERY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            async with http.get(
                f"{police.api_url}/v1/referrals/{referral_id}", headers=auth
            ) as response:
                if (await response.json())["status"] == "delivered":
                    break
            await asyncio.sleep(0.05)
        else:
            return False
        async with http.get(
            f"{shelter.api_url}/v1/inbox",
            headers={"Authorization": f"Bearer {shelter_setup.token}"},
        ) as response:
            items = (await response.json())["items"]
        return any(item["id"] == referral_id for item in items)


async def _keep_running(agents: dict[str, Agent], sandbox: Sandbox, log_path: Path) -> None:
    click.echo("\nStill running (--keep). Ctrl-C stops everything.")
    for a, agent in agents.items():
        click.echo(f"  {a:<12} {agent.api_url}  token {sandbox.agencies[a].token}")
    if sandbox.ledger is not None:
        click.echo(f"  {'ledger':<12} {sandbox.ledger.url}/  auditor token {sandbox.auditor_token}")
    click.echo(f"  logs: {log_path}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
