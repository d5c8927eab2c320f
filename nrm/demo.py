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
from runtime import clock
from runtime.poll import poll

from . import admin, examples, logs
from .sandbox import AgencySetup, Sandbox, prepare_mechanism

AGENCIES = [
    ("police", "Metropolitan Police anti-trafficking unit", "police"),
    ("shelter", "Safe House NGO shelter", "ngo"),
    ("coordinator", "National Referral Mechanism co-ordinator", "coordinator"),
]

CONSENT_ID = "5f0c8a2e-6b1d-4c3e-9a7f-1e2d3c4b5a69"
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
            case "consent_recorded":
                return f"{who}: consent receipt {e['receipt_id'][:8]} recorded and signed"
            case "referral_accepted":
                to = ", ".join(e["recipients"])
                return (
                    f"{who}: referral {e['referral_id'][:12]} for {to}: consent checked, "
                    "minimised per recipient, sealed, signed, committed (HTTP 202)"
                )
            case "transition_sent":
                return (
                    f"{who}: {e['from_state']} -> {e['to_state']} for {e['referral_id'][:12]}, "
                    f"signed and sent to {e['counterpart']}"
                )
            case "transition_received":
                return f"{who}: {e['counterpart']} moved {e['referral_id'][:12]} to {e['to_state']}"
            case "consent_withdrawn":
                return f"{who}: consent {e['receipt_id'][:8]} withdrawn; erasure asked of " + (
                    ", ".join(e["recipients"])
                )
            case "erasure_done":
                return (
                    f"{who}: erased {e['referrals']} referral(s) of {e['counterpart']}; "
                    "confirmation signed"
                )
            case "erasure_confirmed":
                return f"{who}: erasure confirmed by {e['counterpart']}"
            case "referral_received":
                return (
                    f"{who}: referral from {e['sender']}: signatures checked (key "
                    f"{e['sender_kid'][:12]}), decrypted, stored under its own data key; "
                    "delivery receipt signed"
                )
            case "delivery_confirmed":
                return f"{who}: delivery receipt from {e['recipient']} verified: delivered"
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
    trusted_root = sandbox.admin.trusted_root(now=clock.now())
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
        try:
            seen = await _story(agents, setups)
        except Step as e:
            click.echo("\nTimeline")
            for line in timeline.lines:
                click.echo(line)
            click.echo(f"\nFAILED: {e}; see {log_path}", err=True)
            return 1
        click.echo("\nTimeline")
        for line in timeline.lines:
            click.echo(line)
        click.echo("\nA consented referral, police -> shelter, end-to-end encrypted and signed:")
        for line in seen:
            click.echo(f"  {line}")
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

    async def confirmed() -> bool:
        return all(
            a.store.unconfirmed_audit(1) == [] and a.store.pending_audit(1) == [] for a in agents
        )

    if not await poll(confirmed, timeout=DELIVERY_TIMEOUT_SECONDS, interval=0.1):
        return False
    return all(a.health()["status"] == "ok" for a in agents)


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
    return verify_checkpoint(note, key=identity.signing_key, origin=sandbox.ledger.config.origin)


async def _all_ready(agents: list[Agent]) -> bool:
    """Wait until every agent is connected and holds the verified directory."""

    async def ready() -> bool:
        return all(agent.health()["status"] == "ok" for agent in agents)

    return await poll(ready, timeout=DELIVERY_TIMEOUT_SECONDS)


class Step(Exception):
    """A demo step that did not happen as it should."""


async def _story(agents: dict[str, Agent], setups: dict[str, AgencySetup]) -> list[str]:
    """Consent, a referral through its lifecycle, minimisation, withdrawal and erasure.

    Returns what the shelter's system saw, for printing."""
    async with aiohttp.ClientSession() as http:

        async def call(agency: str, method: str, path: str, body: Any = None) -> Any:
            headers = {"Authorization": f"Bearer {setups[agency].token}"}
            async with http.request(
                method, agents[agency].api_url + path, json=body, headers=headers
            ) as r:
                doc = await r.json()
                if r.status >= 400:
                    raise Step(f"{method} {path} at {agency}: HTTP {r.status} {doc.get('detail')}")
                return doc

        async def until(check: Any, what: str) -> None:
            if not await poll(check, timeout=DELIVERY_TIMEOUT_SECONDS):
                raise Step(f"timed out waiting for {what}")

        await call("police", "POST", "/v1/consents", examples.consent(CONSENT_ID))
        referral = examples.referral(
            urgency="urgent", legal_basis="consent", consent_receipt_id=CONSENT_ID
        )
        rid = (
            await call(
                "police", "POST", "/v1/referrals", {"recipients": ["shelter"], "referral": referral}
            )
        )["id"]

        async def police_sees(state: str) -> bool:
            doc = await call("police", "GET", f"/v1/referrals/{rid}")
            return bool(doc["recipients"][0]["state"] == state)

        await until(lambda: police_sees("delivered"), "the delivery receipt")
        for to in ("acknowledged", "accepted"):
            await call("shelter", "POST", f"/v1/referrals/{rid}/transitions", {"to": to})
            await until(lambda to=to: police_sees(to), f"police to see {to}")
        seen = await call("shelter", "GET", f"/v1/referrals/{rid}")
        fields = sorted(seen["referral"]["body"])
        withheld = sorted(set(referral["body"]) - set(fields))
        await call("police", "POST", f"/v1/consents/{CONSENT_ID}/withdraw")

        async def confirmed() -> bool:
            doc = await call("police", "GET", f"/v1/consents/{CONSENT_ID}")
            return bool(
                doc["pending"] == [] and all(r["erasure_confirmed_at"] for r in doc["recipients"])
            )

        await until(confirmed, "the shelter's erasure confirmation")
        erased = await call("shelter", "GET", f"/v1/referrals/{rid}")
        if not erased["erased"]:
            raise Step("the shelter still holds the referral after withdrawal")
        return [
            f"the shelter received: {', '.join(fields)}",
            f"withheld from the shelter (its role or the consent does not allow): "
            f"{', '.join(withheld)}",
            "after withdrawal the shelter's copy is erased (its data key destroyed)",
        ]


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
