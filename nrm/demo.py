"""`nrm demo`: a bus and five agencies on this machine, and one person's way through the
National Referral Mechanism between them, told in the terms of CETS 197 and the UK NRM.

Police refers a presumed victim to the competent authority; its reasonable-grounds (first
stage) decision starts the recovery and reflection period, of which police and the
co-ordinator are notified; the authority refers her on to a shelter it sees has a free
place, and the shelter gets the case so far; the conclusive-grounds (second stage) decision
reaches all three. She then moves to another region: police refers her, with her consent,
to social services there, which asks police, the case's owner, for the case (a transfer
request, PROTOCOL §8.10); police grants it by handing the case over (a case transfer),
social services accepts, the authority is told who owns the case now, and police completes
the transfer. Last, she withdraws the consents she gave for identification and the shelter,
and every copy made under them is erased.

Everything is real: the nats-server from the wheel, fresh keys, agents started from their
configuration files, every step an HTTP call to an agent's API, each waited for until the
agents' own APIs show it happened. The timeline is built from the agents' structured log
events and from what the story saw in those APIs.
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
from keys.policy import Policy
from keys.roles import COMPETENT_AUTHORITY
from runtime import clock
from runtime.poll import poll

from . import admin, examples, logs
from .sandbox import AgencySetup, Sandbox, prepare_mechanism

AGENCIES = [
    ("police", "Metropolitan Police anti-trafficking unit", "police"),
    ("shelter", "Safe House NGO shelter", "ngo"),
    ("coordinator", "National Referral Mechanism co-ordinator", "coordinator"),
    ("authority", "Single Competent Authority", COMPETENT_AUTHORITY),
    ("social-mcr", "Manchester social services (North West region)", "social-services"),
]
#: The national policy: the defaults (a recovery and reflection period of at least 30 days,
#: CETS 197 Art 13), but no interval between the two stages, so that the demo need not wait
#: the 30 days a country would set before a conclusive-grounds decision.
POLICY = Policy(country="GB", second_stage_min_days=0)

#: The consent police takes (identification by the competent authority and the co-ordinator)
#: and the one the authority takes when it offers the shelter (assistance by the shelter).
CONSENT_ID = "5f0c8a2e-6b1d-4c3e-9a7f-1e2d3c4b5a69"
SHELTER_CONSENT_ID = "0d3b7c1e-2a4f-4e6b-8c9d-7a6b5c4d3e2f"
#: The consent police takes when she moves region: assistance by social services there.
MOVE_CONSENT_ID = "8a6e4c2b-1f3d-4b5a-9c7e-2d4f6a8b0c1e"
DELIVERY_TIMEOUT_SECONDS = 30.0
#: What each stage is called in the UK NRM, the example docs/proposals/nrm-process.md §1 takes.
STAGE_WORDS = {"first": "reasonable grounds", "second": "conclusive grounds"}
PROTECTION_WORDS = {
    "reflection": "recovery and reflection period",
    "no-removal": "protection from removal",
}


@dataclass
class Timeline:
    """Collects the agents' log events worth showing; implements a structlog processor."""

    start: float = field(default_factory=time.monotonic)
    lines: list[str] = field(default_factory=list)

    def __call__(self, _: WrappedLogger, __: str, event: EventDict) -> EventDict:
        try:
            line = self.describe(event)
        except (KeyError, TypeError):  # a field it does not know: an agent's log call must
            line = None  # never fail for the demo's timeline, which then shows no line
        if line is not None:
            self.note(line)
        return event

    def note(self, line: str) -> None:
        """Add `line` at the time now: a log event's, or what the story saw in an API."""
        self.lines.append(f"  +{time.monotonic() - self.start:6.3f}s  {line}")

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
            case "case_opened":
                return (
                    f"{who}: case {e['case_id'][:8]} opened for referral {e['referral_id'][:12]}; "
                    "awaiting the reasonable-grounds decision"
                )
            case "case_decided":
                return (
                    f"{who}: {STAGE_WORDS[e['stage']]} decision ({e['stage']} stage) "
                    f"{e['outcome']} for case {e['case_id'][:8]}, signed and sealed to each "
                    "recipient"
                )
            case "protection_notified":
                return (
                    f"{who}: {PROTECTION_WORDS[e['protection']]} {e['step']} for case "
                    f"{e['case_id'][:8]}; notice signed and sealed to each recipient"
                )
            case "case_copies_sent":
                return (
                    f"{who}: referral {e['referral_id'][:12]} linked to case "
                    f"{e['case_id'][:8]}; its decisions and notices so far sent on"
                )
            case "transfer_request_sent":
                return (
                    f"{who}: transfer request {e['request_id'][:8]} to {e['owner']}, the case's "
                    "owner: ids and a reason code only, signed and sent"
                )
            case "transfer_request_received":
                return f"{who}: transfer request {e['request_id'][:8]} from {e['sender']} held"
            case "transfer_sent":
                return (
                    f"{who}: case transfer {e['transfer_id'][:8]} to {e['transferee']}: R "
                    "minimised for it, sealed, signed; the request granted"
                )
            case "transfer_received":
                return (
                    f"{who}: case transfer {e['transfer_id'][:8]} from {e['sender']}: R judged "
                    "as a referral is, kept as its own record"
                )
            case "transfer_step_sent" | "transfer_step_received" if "transfer_id" in e:
                verb = "sent" if e["event"] == "transfer_step_sent" else "received"
                return f"{who}: transfer {e['transfer_id'][:8]} {e['to_state']} ({verb})"
            case "case_owner_changed":
                return (
                    f"{who}: case {e['case_id'][:8]} is owned by {e['owner']} now "
                    "(case-owner-changed from its owner)"
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
    sandbox = prepare_mechanism(root, AGENCIES, policy=POLICY)
    directory = admin.verified_draft(sandbox.admin)
    trusted_root = sandbox.admin.trusted_root(now=clock.now())
    click.echo(
        f"  trust: root v{trusted_root.version} ({trusted_root.threshold}-of-"
        f"{len(trusted_root.keys)} administrators), directory v{directory.version} with "
        f"{len(directory.agencies)} agencies, signed"
    )
    policy = directory.policy
    assert policy is not None
    click.echo(
        f"  national policy ({policy.country}), signed in the directory: a reflection and "
        f"recovery period of at least {policy.reflection_min_days} days; reasonable grounds "
        f"due within {policy.first_stage_due_days} days; conclusive grounds no sooner than "
        f"{policy.second_stage_min_days} days after (0 so that the demo need not wait)"
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
            seen = await _story(agents, setups, timeline)
        except Step as e:
            click.echo("\nTimeline")
            for line in timeline.lines:
                click.echo(line)
            click.echo(f"\nFAILED: {e}; see {log_path}", err=True)
            return 1
        click.echo("\nTimeline")
        for line in timeline.lines:
            click.echo(line)
        click.echo(
            "\nThe person's way through the referral mechanism, every message end-to-end "
            "encrypted and signed:"
        )
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

    async def confirmed() -> bool:  # every condition asked again each round
        return all(
            a.store.unconfirmed_audit(1) == []
            and a.store.pending_audit(1) == []
            and a.health()["status"] == "ok"
            for a in agents
        )

    return await poll(confirmed, timeout=DELIVERY_TIMEOUT_SECONDS, interval=0.1)


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


async def _story(
    agents: dict[str, Agent], setups: dict[str, AgencySetup], timeline: Timeline
) -> list[str]:
    """The person's way through the mechanism, each step an API call whose effect is waited
    for where it shows (the agents' own APIs), never for a time.

    Returns what the story saw, for printing."""
    async with aiohttp.ClientSession() as http:

        async def attempt(
            agency: str, method: str, path: str, body: Any = None, *, may: tuple[int, ...] = ()
        ) -> tuple[int, Any]:
            """The HTTP status and answer; a Step for an error status not in `may`."""
            headers = {"Authorization": f"Bearer {setups[agency].token}"}
            async with http.request(
                method, agents[agency].api_url + path, json=body, headers=headers
            ) as r:
                doc = await r.json()
                if r.status >= 400 and r.status not in may:
                    raise Step(f"{method} {path} at {agency}: HTTP {r.status} {doc.get('detail')}")
                return r.status, doc

        async def call(agency: str, method: str, path: str, body: Any = None) -> Any:
            return (await attempt(agency, method, path, body))[1]

        async def until(check: Any, what: str) -> None:
            if not await poll(check, timeout=DELIVERY_TIMEOUT_SECONDS):
                raise Step(f"timed out waiting for {what}")

        async def sees(sender: str, rid: str, state: str) -> bool:
            doc = await call(sender, "GET", f"/v1/referrals/{rid}")
            return bool(doc["recipients"][0]["state"] == state)

        async def refer(sender: str, to: str, referral: dict[str, Any]) -> str:
            """`sender` refers to `to`, which acknowledges and accepts once it holds it."""
            body = {"recipients": [to], "referral": referral}
            rid = str((await call(sender, "POST", "/v1/referrals", body))["id"])
            await until(lambda: sees(sender, rid, "delivered"), f"{to}'s delivery receipt")
            for step in ("acknowledged", "accepted"):
                await call(to, "POST", f"/v1/referrals/{rid}/transitions", {"to": step})
                await until(lambda step=step: sees(sender, rid, step), f"{sender} to see {step}")
            return rid

        held: dict[tuple[str, str], list[dict[str, Any]]] = {}

        async def holds(agency: str, rid: str, sender: str, decisions: int, notices: int) -> None:
            """Wait until `agency` holds, under `sender`'s referral `rid`, this many decisions
            and protection notices (each verified on the read)."""

            async def arrived() -> bool:
                pair = f"/v1/referrals/{rid}/%s?sender={sender}"
                d = (await call(agency, "GET", pair % "decisions"))["items"]
                n = (await call(agency, "GET", pair % "protections"))["items"]
                held[agency, "decisions"], held[agency, "notices"] = d, n
                return len(d) == decisions and len(n) == notices

            await until(arrived, f"{agency} to hold {decisions} decision(s), {notices} notice(s)")
            latest = held[agency, "notices"][-1]
            timeline.note(
                f"{agency}: holds {decisions} decision(s) and {notices} protection notice(s) "
                f"of the case, signatures verified; latest: "
                f"{PROTECTION_WORDS[latest['protection']]} {latest['event']}"
            )

        # The shelter publishes what it offers and how many places are free.
        await call("shelter", "PUT", "/v1/catalogue", {"services": [SHELTER_SERVICE]})
        capacity = {"free": 3, "total": 8}
        service_id = SHELTER_SERVICE["service_id"]
        await call("shelter", "PUT", f"/v1/services/{service_id}/capacity", capacity)
        timeline.note(
            f"shelter: catalogue and capacity ({capacity['free']} of {capacity['total']} "
            "places free) signed and published"
        )

        # Police, the first responder, refers the presumed victim for identification.
        await call("police", "POST", "/v1/consents", _police_consent())
        to_authority = examples.referral(
            {k: v for k, v in examples.BODY.items() if k != "health_needs"},
            urgency="urgent",
            purpose="identification",
            legal_basis="consent",
            consent_receipt_id=CONSENT_ID,
        )
        rid = await refer("police", "authority", to_authority)
        cases = (await call("authority", "GET", "/v1/cases"))["items"]
        opened = [c["case_id"] for c in cases if c["referral_id"] == rid]
        if len(opened) != 1:
            raise Step(f"the authority opened {len(opened)} cases for police's referral, not 1")
        [case_id] = opened

        # Reasonable grounds: the recovery and reflection period and no-removal start.
        first = {"stage": "first", "outcome": "positive"}
        await call("authority", "POST", f"/v1/cases/{case_id}/decisions", first)
        for agency in ("police", "coordinator"):
            await holds(agency, rid, "police", 1, 2)
        reflection = next(n for n in held["police", "notices"] if n["protection"] == "reflection")

        # The authority offers support: a shelter with a free place, with her consent.
        offers: list[dict[str, Any]] = []

        async def a_free_place() -> bool:
            found = await call("authority", "GET", "/v1/services?type=shelter&available=true")
            offers[:] = [i for i in found["items"] if i["agency"] == "shelter"]
            return bool(offers)

        await until(a_free_place, "the shelter's free places at the authority")
        [offer] = offers
        timeline.note(
            f"authority: GET /v1/services lists the shelter's service {offer['service_id'][:8]} "
            f"with {offer['capacity']['free']} of {offer['capacity']['total']} places free"
        )
        await call("authority", "POST", "/v1/consents", _shelter_consent())
        to_shelter = examples.referral(
            urgency="urgent",
            legal_basis="consent",
            consent_receipt_id=SHELTER_CONSENT_ID,
            service={"agency": "shelter", "service_id": offer["service_id"]},  # the one it saw
        )
        onward = await refer("authority", "shelter", to_shelter)
        await call("authority", "PUT", f"/v1/cases/{case_id}/referrals/{onward}")
        await holds("shelter", onward, "authority", 1, 2)
        seen = await call("shelter", "GET", f"/v1/referrals/{onward}")
        if seen.get("service") != to_shelter["service"]:
            raise Step("the shelter's copy does not name the service the authority asked for")
        fields = sorted(seen["referral"]["body"])
        withheld = sorted(set(to_shelter["body"]) - set(fields))

        # Conclusive grounds: no-removal ends with it; the reflection period runs its course.
        second = {"stage": "second", "outcome": "positive"}
        await call("authority", "POST", f"/v1/cases/{case_id}/decisions", second)
        for agency, pair, sender in (
            ("police", rid, "police"),
            ("coordinator", rid, "police"),
            ("shelter", onward, "authority"),
        ):
            await holds(agency, pair, sender, 2, 3)
        case = await call("authority", "GET", f"/v1/cases/{case_id}")

        # She moves to another region. Police refers her, with her consent, to social
        # services there, which asks police, the case's owner, for the case.
        await call("police", "POST", "/v1/consents", _move_consent())
        to_region = examples.referral(
            {k: v for k, v in examples.BODY.items() if k != "narrative"},
            legal_basis="consent",
            consent_receipt_id=MOVE_CONSENT_ID,
        )
        moved = await refer("police", REGION, to_region)
        asked = {
            "owner": "police",
            "referral_id": moved,
            "case_id": None,  # it holds no decision of the case: only police and the rest do
            "reason": TRANSFER_REASON,
        }
        request = await call(REGION, "POST", "/v1/transfer-requests", asked)
        request_id = request["request_id"]

        async def request_in(agency: str, state: str) -> bool:
            path = f"/v1/transfer-requests/{request_id}"
            status, doc = await attempt(agency, "GET", path, may=(404,))  # 404: not there yet
            return bool(status == 200 and doc["state"] == state)

        await until(lambda: request_in("police", "delivered"), "police to hold the request")

        # Police grants it by handing the case over: R, a schema-v2 referral minimised for
        # social services as a referral to it would be, under the same consent.
        proposal = {
            "transferee": REGION,
            "referral": {**to_region, "schema_version": "2"},
            "reason": TRANSFER_REASON,
            "request_id": request_id,
            "case_id": case_id,
        }
        transfer = await call("police", "POST", "/v1/transfers", proposal)
        transfer_path = f"/v1/transfers/{transfer['transfer_id']}"

        async def transfer_in(agency: str, state: str) -> bool:
            status, doc = await attempt(agency, "GET", transfer_path, may=(404,))
            return bool(status == 200 and doc["state"] == state)

        await until(lambda: transfer_in(REGION, "delivered"), f"{REGION} to hold the transfer")
        await call(REGION, "POST", transfer_path + "/accept")
        await until(lambda: transfer_in("police", "accepted"), "police to see it accepted")

        # Police told the authority (case-owner-changed) when the acceptance came; it
        # completes once the authority's receipt is in (409 before, the API's own check).
        async def completed() -> bool:
            path = transfer_path + "/complete"
            return (await attempt("police", "POST", path, may=(409,)))[0] == 202

        await until(completed, "the authority's receipt of case-owner-changed")
        await until(lambda: transfer_in(REGION, "completed"), f"{REGION} to see it completed")
        for agency in ("police", REGION):
            await until(
                lambda agency=agency: request_in(agency, "fulfilled"),
                f"{agency} to hold the request fulfilled",
            )
        held_r = await call(REGION, "GET", transfer_path)
        r_fields = sorted(held_r["referral"]["body"])
        opening = await call("police", "GET", f"/v1/referrals/{rid}")
        [opening_pair] = opening["recipients"]
        if opening_pair["state"] != "cancelled":
            raise Step(f"police's referral to the authority is {opening_pair['state']}")

        # She withdraws the consents for identification and the shelter, at police and at
        # the authority, each of which took one (the one for the move stands).
        for agency, receipt_id in (("police", CONSENT_ID), ("authority", SHELTER_CONSENT_ID)):
            await call(agency, "POST", f"/v1/consents/{receipt_id}/withdraw")

            async def confirmed(agency: str = agency, receipt_id: str = receipt_id) -> bool:
                doc = await call(agency, "GET", f"/v1/consents/{receipt_id}")
                return bool(
                    doc["pending"] == []
                    and doc["recipients"]
                    and all(r["erasure_confirmed_at"] for r in doc["recipients"])
                )

            await until(confirmed, f"the erasure confirmations of {agency}'s recipients")
        for agency, pair, sender in (
            ("authority", rid, "police"),
            ("shelter", onward, "authority"),
        ):
            erased = await call(agency, "GET", f"/v1/referrals/{pair}?sender={sender}")
            if not erased["erased"]:
                raise Step(f"{agency} still holds the referral after withdrawal")
        case_after = await call("authority", "GET", f"/v1/cases/{case_id}")
        return [
            f"police referred her to the competent authority (nrm_full): case {case_id[:8]} opened",
            "reasonable grounds (first stage): positive; the recovery and reflection period "
            f"runs {reflection['starts_on']} to {reflection['ends_on']} and protection from "
            "removal from the decision on; police and the co-ordinator were notified",
            f"shelter with capacity: the authority saw {offer['capacity']['free']} free places "
            "and referred her on with her consent, naming that service; the shelter got the "
            "decision and both "
            "notices (a provider is never told a negative decision's reason)",
            f"the shelter received: {', '.join(fields)}",
            f"withheld from the shelter (its role or the consent does not allow): "
            f"{', '.join(withheld)}",
            f"conclusive grounds (second stage): positive; case {case['state']}; protections "
            + ", ".join(f"{p} {v['state']}" for p, v in sorted(case["protections"].items()))
            + "; police, the co-ordinator and the shelter were notified",
            f"she moved to another region: police referred her to {REGION} (social services "
            f"there) with her consent; {REGION} asked police, the case's owner, for the case "
            f"(transfer request, {TRANSFER_REASON}); police granted it with case transfer "
            f"{transfer['transfer_id'][:8]}, {REGION} accepted, the authority was told the "
            "case's new owner, and police completed it, cancelling its own referrals of the "
            "case first (referred-elsewhere); the request is fulfilled",
            f"{REGION} keeps R as its own record: {', '.join(r_fields)}",
            "consent withdrawn: the authority's copy of police's referral and the shelter's "
            "copy of the authority's are erased (their data keys destroyed), each confirmed; "
            f"the authority keeps its own case ({case_after['state']}) and decisions, a record "
            "it must keep (GDPR Art 17(3)(b)); the consent for the move stands, so social "
            "services, now the case's owner, keeps what it holds",
        ]


#: The agency of the region she moves to, and why it asks for her case (an HTCDS code).
REGION = "social-mcr"
TRANSFER_REASON = "migration_or_change_of_location"

#: What the shelter offers (PROTOCOL §8.8): a coarse region, never an address.
SHELTER_SERVICE: dict[str, Any] = {
    "service_id": "5e1f0a2b3c4d5e6f",
    "type": "shelter",
    "languages": ["en", "ro"],
    "suitable_for": ["women"],
    "accessibility": ["step_free"],
    "regions": ["GB-LND"],
    "capacity_unit": "places",
}


def _police_consent() -> dict[str, Any]:
    """Her consent to police: identification by the competent authority and the co-ordinator
    (everything of the referral but her health)."""
    identification = dict(
        examples.IDENTIFICATION,
        data_categories=[
            "case",
            "contact",
            "criminal",
            "demographic",
            "exploitation",
            "identity",
            "language",
            "needs",
        ],
        recipients=["authority"],  # the receipt's roles are directory spec_version 1's
    )
    return examples.consent(
        CONSENT_ID, purposes=[identification], sensitive_categories=["criminal"]
    )


def _shelter_consent() -> dict[str, Any]:
    """Her consent to the authority, as controller: assistance by the shelter."""
    police = examples.consent(SHELTER_CONSENT_ID)
    [controller] = police["controllers"]
    authority = {
        **controller,
        "agency": "authority",
        "name": "Single Competent Authority",
        "contact": {**controller["contact"], "email": "dpo@authority.example"},
    }
    assistance = dict(
        examples.ASSISTANCE,
        data_categories=["contact", "demographic", "health", "identity", "language", "needs"],
    )
    return {**police, "controllers": [authority], "purposes": [assistance]}


def _move_consent() -> dict[str, Any]:
    """Her consent to police when she moves: assistance by social services in the new
    region (everything of the referral but the narrative, which stays with police and the
    authority, and what a social-services role never receives)."""
    assistance = dict(
        examples.ASSISTANCE,
        data_categories=[
            "contact",
            "demographic",
            "exploitation",
            "health",
            "identity",
            "language",
            "needs",
        ],
        recipients=[REGION],
    )
    return examples.consent(MOVE_CONSENT_ID, purposes=[assistance])


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
