"""Referrals end to end (issue 4): consent, minimisation, anonymity, withdrawal and erasure,
the lifecycle, escalation, webhooks, the Kantara export, idempotency and scopes.

Real nats-server, real ledger, real SQLite, real HTTP: three agents talking over the bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import secrets
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats.errors
import pytest
from aiohttp import web
from multidict import CIMultiDictProxy

from agents import lifecycle as L
from agents import referral as R
from agents import webhooks as W
from agents.messages import ESCALATION
from keys import PublicIdentity
from keys.audit import decode_signed_event
from keys.policy import Policy, Tier
from nrm import admin

from . import samples
from .support import (
    ESCALATING_LIMITS,
    Mechanism,
    eventually,
    publish_policy,
    query,
    running_mechanism,
    webhook_receiver,
)
from .test_agent import delivered, rows
from .test_consent import KANTARA_CR_1_1, _kantara_errors

#: What the example consent lets each recipient receive, by purpose.
ASSISTANCE = {"demographic", "identity", "contact", "language", "health", "needs"}
IDENTIFICATION = {"demographic", "identity", "exploitation", "case"}
EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "schemas" / "examples" / "valid"
COUNTED = ("outbox", "deliveries", "referrals", "consent_uses")


# --- helpers -----------------------------------------------------------------------------------


async def post(
    m: Mechanism,
    agency: str,
    path: str,
    doc: dict[str, Any],
    *,
    key: str | None = None,
    token: str | None = None,
) -> tuple[int, Any, CIMultiDictProxy[str]]:
    """POST JSON to `agency`'s API; the status, the decoded body and the headers."""
    headers = {"Authorization": f"Bearer {m.setups[agency].token if token is None else token}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    async with m.http.post(m.agents[agency].api_url + path, json=doc, headers=headers) as r:
        return r.status, await r.json(content_type=None), r.headers


async def get(m: Mechanism, agency: str, path: str) -> Any:
    status, body, _ = await m.api(agency).call("GET", path)
    assert status == 200, body
    return body


async def record_consent(m: Mechanism, **overrides: Any) -> str:
    receipt_id = str(uuid.uuid4())
    status, body, _ = await post(
        m, "police", "/v1/consents", samples.consent(receipt_id, **overrides)
    )
    assert status == 201, body
    return receipt_id


def consented(
    receipt_id: str, body: dict[str, Any] | None = None, **routing: Any
) -> dict[str, Any]:
    return samples.referral(body, legal_basis="consent", consent_receipt_id=receipt_id, **routing)


async def refer(m: Mechanism, recipients: list[str], referral: dict[str, Any]) -> tuple[int, Any]:
    status, body, _ = await post(
        m, "police", "/v1/referrals", {"recipients": recipients, "referral": referral}
    )
    return status, body


async def received_body(m: Mechanism, agency: str, referral_id: str) -> dict[str, Any]:
    """The decrypted body `agency` holds for `referral_id`, from its inbox over the API."""
    [item] = [i for i in await m.api(agency).inbox() if i["id"] == referral_id]
    assert item["erased"] is False
    body: dict[str, Any] = item["referral"]["body"]
    return body


def counts(m: Mechanism, agency: str) -> dict[str, int]:
    return {table: rows(m.database(agency), table) for table in COUNTED}


def keys_in(doc: Any) -> Iterator[str]:
    """Every object key anywhere in a JSON document."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield k
            yield from keys_in(v)
    elif isinstance(doc, list):
        for v in doc:
            yield from keys_in(v)


async def recipient_state(m: Mechanism, referral_id: str, state: str) -> None:
    async def check() -> bool:
        body = await get(m, "police", f"/v1/referrals/{referral_id}")
        return bool(body["recipients"][0]["state"] == state)

    await eventually(check, timeout=10, what=f"police to see {state}")


async def act(m: Mechanism, agency: str, referral_id: str, **doc: Any) -> tuple[int, Any, str]:
    return await m.api(agency).call("POST", f"/v1/referrals/{referral_id}/transitions", json=doc)


# --- consent and minimisation ------------------------------------------------------------------


async def test_each_recipient_gets_only_what_its_role_and_the_consent_allow(
    mechanism: Mechanism,
) -> None:
    """Each recipient's decrypted body holds exactly the categories its role and the consent
    allow; the shelter never gets the narrative or perpetrator information."""
    m = mechanism
    rid = await record_consent(m)
    status, to_shelter = await refer(m, ["shelter"], consented(rid))
    assert status == 202, to_shelter
    status, to_coordinator = await refer(
        m, ["coordinator"], consented(rid, samples.ID_BODY, purpose="identification")
    )
    assert status == 202, to_coordinator
    await delivered(m, "police", to_shelter["id"])
    await delivered(m, "police", to_coordinator["id"])

    shelter = await received_body(m, "shelter", to_shelter["id"])
    sent = set(R.categories_present(samples.BODY))
    assert set(R.categories_present(shelter)) == sent & R.ROLE_CATEGORIES["ngo"] & ASSISTANCE
    assert set(R.categories_present(shelter)) == ASSISTANCE
    assert "narrative" not in shelter and "perpetrator_information" not in shelter
    assert {f: samples.BODY[f] for f in shelter} == shelter

    coordinator = await received_body(m, "coordinator", to_coordinator["id"])
    assert set(R.categories_present(coordinator)) == IDENTIFICATION
    assert coordinator == samples.ID_BODY


async def test_a_referral_exceeding_its_consent_is_refused_and_nothing_is_written(
    mechanism: Mechanism,
) -> None:
    """A referral beyond its consent (categories, recipient), citing an unknown or a withdrawn
    receipt is refused with the reason named, and nothing is written."""
    m = mechanism
    rid = await record_consent(m)
    shelter_only = await record_consent(m, purposes=samples.consent("x")["purposes"][:1])
    withdrawn = await record_consent(m)
    status, body, _ = await post(m, "police", f"/v1/consents/{withdrawn}/withdraw", {})
    assert status == 202, body
    before = counts(m, "police")

    status, body, ctype = await m.api("police").call(
        "POST",
        "/v1/referrals",
        json={"recipients": ["coordinator"], "referral": consented(rid, purpose="identification")},
    )
    assert (status, ctype) == (422, "application/problem+json"), body
    problems = " ".join(body["problems"])
    assert "coordinator" in problems
    for category in sent_beyond(samples.BODY, IDENTIFICATION):
        assert category in problems

    status, body = await refer(m, ["coordinator"], consented(shelter_only, samples.ID_BODY))
    assert status == 422, body
    assert any("recipient coordinator" in p and "not named" in p for p in body["problems"])

    status, body = await refer(m, ["shelter"], consented(str(uuid.uuid4())))
    assert status == 422, body

    status, body = await refer(m, ["shelter"], consented(withdrawn))
    assert status == 422, body
    assert "withdrawn" in body["detail"]

    assert counts(m, "police") == before
    assert await m.api("shelter").inbox() == []


def sent_beyond(body: dict[str, Any], covered: set[str]) -> set[str]:
    return set(R.categories_present(body)) - covered


async def test_citing_an_unknown_receipt_is_422(mechanism: Mechanism) -> None:
    """A referral citing a consent receipt this agency never recorded is 422, not 404."""
    status, body = await refer(mechanism, ["shelter"], consented(str(uuid.uuid4())))
    assert status == 422, body


# --- anonymous notification --------------------------------------------------------------------


async def test_anonymous_notification_carries_no_identifying_field(mechanism: Mechanism) -> None:
    """An anonymous notification reaches the co-ordinator with no identifying field; one to the
    shelter, or one carrying identifying fields, is refused."""
    m = mechanism
    notice = json.loads((EXAMPLES / "anonymous-notification.json").read_text())
    del notice["$comment"]
    notice["created"] = samples.iso(time.time())
    before = counts(m, "police")

    status, body = await refer(m, ["shelter"], notice)
    assert status == 422, body
    assert any("co-ordinator" in p for p in body["problems"])
    status, body = await refer(m, ["coordinator"], {**notice, "body": samples.BODY})
    assert status == 422, body
    assert counts(m, "police") == before

    status, body = await refer(m, ["coordinator"], notice)
    assert status == 202, body
    await delivered(m, "police", body["id"])
    got = await received_body(m, "coordinator", body["id"])
    assert got and set(got) <= R.ANONYMOUS_FIELDS
    assert not set(got) & R.IDENTIFYING
    for location in got.get("locations", []):
        assert set(location) <= R.ANONYMOUS_LOCATION_FIELDS


# --- withdrawal and erasure --------------------------------------------------------------------


async def test_withdrawal_erases_at_every_recipient(mechanism: Mechanism) -> None:
    """Withdrawing a consent reaches every recipient, each confirms erasure, and the erased
    body and its data key are gone from the recipient's database files."""
    m = mechanism
    rid = await record_consent(m)
    canary = f"Canary{secrets.token_hex(8)}"
    names = {"given_names": canary, "family_name": "Example"}
    body = {**copy.deepcopy(samples.BODY), "names": names}
    _, to_shelter = await refer(m, ["shelter"], consented(rid, body))
    _, to_coordinator = await refer(
        m,
        ["coordinator"],
        consented(rid, {**samples.ID_BODY, "names": names}, purpose="identification"),
    )
    sent = {"shelter": to_shelter["id"], "coordinator": to_coordinator["id"]}
    for referral_id in sent.values():
        await delivered(m, "police", referral_id)
    sealed: dict[str, list[bytes]] = {}
    for agency, referral_id in sent.items():
        got = await get(m, agency, f"/v1/referrals/{referral_id}")
        assert got["referral"]["body"]["names"]["given_names"] == canary
        [(key,)] = query(
            m.database(agency),
            "SELECT sealed_key FROM data_keys WHERE referral_id = ?",
            referral_id,
        )
        [(ciphertext,)] = query(
            m.database(agency), "SELECT body FROM inbox WHERE referral_id = ?", referral_id
        )
        sealed[agency] = [bytes(key), bytes(ciphertext)]

    status, answer, _ = await post(m, "police", f"/v1/consents/{rid}/withdraw", {})
    assert status == 202, answer
    assert answer["withdrawn_at"] is not None

    async def confirmed() -> bool:
        s = await get(m, "police", f"/v1/consents/{rid}")
        return s["pending"] == [] and all(r["erasure_confirmed_at"] for r in s["recipients"])

    await eventually(confirmed, timeout=15, what="every erasure confirmation")
    status_doc = await get(m, "police", f"/v1/consents/{rid}")
    assert {(r["agency"], r["referral_id"]) for r in status_doc["recipients"]} == set(sent.items())

    for agency, referral_id in sent.items():
        got = await get(m, agency, f"/v1/referrals/{referral_id}")
        assert (got["erased"], got["referral"]) == (True, None)
        db = m.database(agency)
        assert query(db, "SELECT 1 FROM data_keys WHERE referral_id = ?", referral_id) == []
        assert query(db, "SELECT body FROM inbox WHERE referral_id = ?", referral_id) == [(None,)]
        # The agent truncated its WAL before confirming (tests/test_erasure.py proves more).
        files = [p for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")) if p.exists()]
        for path in files:
            data = path.read_bytes()
            assert canary.encode() not in data, path.name
            for secret in sealed[agency]:
                assert secret not in data, f"erased bytes still in {path.name}"

    status, refused = await refer(m, ["shelter"], consented(rid))
    assert status == 422, refused


# --- lifecycle ---------------------------------------------------------------------------------


async def test_lifecycle_over_the_api(mechanism: Mechanism) -> None:
    """The shelter acknowledges, accepts, works and closes a referral; the police sees each
    state, both histories list them in order, and forbidden transitions are refused."""
    m = mechanism
    referral_id = await m.api("police").refer(["shelter"], samples.referral())
    await delivered(m, "police", referral_id)
    await recipient_state(m, referral_id, "delivered")

    async def refused(agency: str, state: str, party: str, **doc: Any) -> None:
        status, body, ctype = await act(m, agency, referral_id, **doc)
        assert (status, ctype) == (409, "application/problem+json"), body
        assert body["allowed"] == L.allowed(state, party)

    await refused("police", "delivered", "sender", to="accepted")
    await refused("shelter", "delivered", "recipient", to="closed", outcome="completed")

    steps: list[dict[str, Any]] = [
        {"to": "acknowledged"},
        {"to": "accepted"},
        {"to": "in_progress"},
        {"to": "closed", "outcome": "completed"},
    ]
    for step in steps:
        if step["to"] == "accepted":
            status, body, _ = await act(m, "shelter", referral_id, to="declined")
            assert status == 422, body  # a decline needs a reason
        if step["to"] == "in_progress":
            await refused("police", "accepted", "sender", to="withdrawn")
        if step["to"] == "closed":
            status, body, _ = await act(m, "shelter", referral_id, to="closed")
            assert status == 422, body  # closing needs an outcome
        status, body, _ = await act(m, "shelter", referral_id, **step)
        assert status == 202, body
        await recipient_state(m, referral_id, step["to"])
    await refused("shelter", "closed", "recipient", to="in_progress")

    states = [s["to"] for s in steps]
    police = await get(m, "police", f"/v1/referrals/{referral_id}/history")
    shelter = await get(m, "shelter", f"/v1/referrals/{referral_id}/history")
    assert [i["to"] for i in police["items"]] == ["submitted", "delivered", *states]
    assert [i["to"] for i in shelter["items"]] == ["delivered", *states]
    for side in (police, shelter):
        assert side["items"][-1]["outcome"] == "completed"
        assert {i["party"] for i in side["items"][-4:]} == {"recipient"}
    assert (await get(m, "shelter", f"/v1/referrals/{referral_id}"))["state"] == "closed"


# --- escalation --------------------------------------------------------------------------------


@pytest.fixture
async def escalating(tmp_path: Path) -> AsyncIterator[Mechanism]:
    """The three agencies, with urgent referrals escalating after 2 s."""
    async with running_mechanism(tmp_path, limits=ESCALATING_LIMITS) as m:
        yield m


async def test_unacknowledged_urgent_referral_escalates_with_metadata_only(
    escalating: Mechanism,
) -> None:
    """An urgent referral nobody acknowledges escalates to the co-ordinator within seconds,
    with a notice that names no body field; a routine one does not escalate."""
    m = escalating
    urgent = await m.api("police").refer(["shelter"], samples.referral(urgency="urgent"))
    routine = await m.api("police").refer(["shelter"], samples.referral())

    async def escalated() -> bool:
        body = await get(m, "police", f"/v1/referrals/{urgent}")
        return body["recipients"][0]["escalated_at"] is not None

    await eventually(escalated, timeout=30, what="the escalation")
    routine_view = await get(m, "police", f"/v1/referrals/{routine}")
    assert routine_view["recipients"][0]["escalated_at"] is None

    coordinator = m.database("coordinator")

    async def arrived() -> bool:
        return bool(query(coordinator, "SELECT 1 FROM inbox WHERE kind = ?", ESCALATION))

    await eventually(arrived, timeout=10, what="the escalation at the co-ordinator")
    [(raw,)] = query(coordinator, "SELECT body FROM inbox WHERE kind = ?", ESCALATION)
    notice = json.loads(raw)
    assert notice["referral_id"] == urgent and notice["urgency"] == "urgent"
    assert set(notice) == {"referral_id", "recipient", "urgency", "submitted_at"}
    [(event,)] = query(
        coordinator, "SELECT body FROM webhook_outbox WHERE type = 'escalation.received'"
    )
    for doc in (notice, json.loads(event)):
        assert not set(keys_in(doc)) & set(R.FIELD_CATEGORY)
        assert samples.BODY["names"]["given_names"] not in json.dumps(doc)


async def publish_tiers(m: Mechanism, tiers: dict[str, Tier]) -> None:
    """Publish a directory whose national policy has these priority tiers, and wait until
    every agent trusts it."""
    policy = Policy(country="LT", priority=tiers, without_consent={"police": ("public_task",)})
    await publish_policy(m, policy)


async def test_under_a_national_policy_its_tiers_decide_what_escalates(
    escalating: Mechanism,
) -> None:
    """Once the directory carries a policy whose routine tier has an acknowledge clock, an
    unacknowledged routine referral escalates, and the co-ordinator takes the notice (no
    longer refused as an urgency that never escalates)."""
    m = escalating
    tiers = {
        "emergency": Tier(acknowledge_seconds=1, due_seconds=60),
        "urgent": Tier(acknowledge_seconds=2, due_seconds=120),
        "routine": Tier(acknowledge_seconds=2, due_seconds=240),
    }
    policy = Policy(country="LT", priority=tiers, without_consent={"police": ("public_task",)})
    await publish_policy(m, policy)
    routine = await m.api("police").refer(["shelter"], samples.referral())
    coordinator = m.database("coordinator")

    async def arrived() -> bool:
        rows = query(coordinator, "SELECT body FROM inbox WHERE kind = ?", ESCALATION)
        return any(json.loads(raw)["referral_id"] == routine for (raw,) in rows)

    await eventually(arrived, timeout=30, what="the routine escalation at the co-ordinator")
    body = await get(m, "police", f"/v1/referrals/{routine}")
    assert body["recipients"][0]["escalated_at"] is not None


async def test_an_unanswered_referral_goes_overdue_once_an_accepted_one_does_not(
    escalating: Mechanism,
) -> None:
    """Under a policy that gives routine a due time and no acknowledge clock, a routine
    referral nobody accepts sends one `overdue` notice (metadata only) to the co-ordinator,
    which hands it to its systems, and police signs `clock.overdue`; one accepted before
    never does, though its due time has long passed. Sender and recipient show the same
    `due_at`; without a policy there is none."""
    m = escalating
    answered = await m.api("police").refer(["shelter"], samples.referral())
    await delivered(m, "police", answered)
    await recipient_state(m, answered, "delivered")
    assert (await get(m, "police", f"/v1/referrals/{answered}"))["recipients"][0]["due_at"] is None
    for step in ("acknowledged", "accepted"):
        status, body, _ = await act(m, "shelter", answered, to=step)
        assert status == 202, body
        await recipient_state(m, answered, step)
    tiers = {
        "emergency": Tier(acknowledge_seconds=None, due_seconds=2),
        "urgent": Tier(acknowledge_seconds=None, due_seconds=2),
        "routine": Tier(acknowledge_seconds=None, due_seconds=2),
    }
    await publish_tiers(m, tiers)
    late = await m.api("police").refer(["shelter"], samples.referral())
    coordinator, police = m.database("coordinator"), m.database("police")

    async def arrived() -> bool:
        return bool(query(coordinator, "SELECT 1 FROM inbox WHERE kind = 'overdue'"))

    await eventually(arrived, timeout=30, what="the overdue notice at the co-ordinator")
    [(raw,)] = query(coordinator, "SELECT body FROM inbox WHERE kind = 'overdue'")
    notice = json.loads(raw)
    [(created,)] = query(
        police,
        "SELECT o.created FROM outbox o JOIN referrals r"
        " ON r.message_id = o.message_id WHERE r.referral_id = ?",
        late,
    )
    assert notice == {
        "clock": "respond",
        "due_at": created + 2,
        "recipient": "shelter",
        "referral_id": late,
        "started_at": created,
        "urgency": "routine",
    }
    sender_view = await get(m, "police", f"/v1/referrals/{late}")
    receiver_view = await get(m, "shelter", f"/v1/referrals/{late}")
    assert sender_view["recipients"][0]["due_at"] == receiver_view["due_at"] == created + 2
    assert query(police, "SELECT count(*) FROM outbox WHERE kind = 'overdue'") == [(1,)]
    overdue_at = dict(query(police, "SELECT referral_id, overdue_at FROM referrals"))
    assert overdue_at[late] is not None and overdue_at[answered] is None
    events = [
        decode_signed_event(bytes(r[0]))[0]
        for r in query(police, "SELECT event FROM audit_outbox ORDER BY seq")
    ]
    [event] = [e for e in events if e.kind == "clock.overdue"]
    assert (event.referral_id, event.counterpart) == (late, "coordinator")
    assert event.labels == (("clock", "respond"), ("urgency", "routine"))

    async def handed_on() -> bool:
        return bool(
            query(coordinator, "SELECT 1 FROM webhook_outbox WHERE type = 'overdue.received'")
        )

    await eventually(handed_on, what="the overdue.received webhook event")
    [(hooked,)] = query(
        coordinator, "SELECT body FROM webhook_outbox WHERE type = 'overdue.received'"
    )
    assert json.loads(hooked)["data"] == {**notice, "sender": "police"}


async def test_an_unreachable_co_ordinator_does_not_stop_the_timers(
    escalating: Mechanism,
) -> None:
    """With every key of the co-ordinator revoked, an overdue urgent referral is still marked
    escalated (there is nobody to seal the notice to), and the timers keep running: a second
    one escalates too, and the agent stops cleanly."""
    m = escalating
    coordinator = PublicIdentity.from_json(m.setups["coordinator"].identity_path.read_bytes())
    for kid in (coordinator.signing_kid, coordinator.encryption_kid):
        admin.revoke_key(m.sandbox.admin, "coordinator", kid, reason="lost")
    m.sandbox.sign_draft()
    version = admin.verified_draft(m.sandbox.admin).version
    await m.sandbox.publish()

    async def seen() -> bool:
        return m.agents["police"].health()["trust"]["directory_version"] == version

    await eventually(seen, what="police to accept the revocation")

    async def escalated(referral_id: str) -> bool:
        body = await get(m, "police", f"/v1/referrals/{referral_id}")
        return body["recipients"][0]["escalated_at"] is not None

    for _ in range(2):
        urgent = await m.api("police").refer(["shelter"], samples.referral(urgency="urgent"))
        await eventually(lambda rid=urgent: escalated(rid), timeout=30, what="the escalation")
    supervisor = m.agents["police"].supervisor
    assert "timers-police" in supervisor.running() and supervisor.deaths == ()
    assert query(m.database("police"), "SELECT 1 FROM outbox WHERE kind = ?", ESCALATION) == []


# --- webhooks ----------------------------------------------------------------------------------


class Receiver:
    """An agency system that answers 500 twice, then 200, for each event id."""

    def __init__(self) -> None:
        self.calls: dict[str, list[tuple[str, str, bytes]]] = defaultdict(list)

    async def handle(self, request: web.Request) -> web.Response:
        event_id = request.headers.get("X-NRM-Event-Id", "")
        self.calls[event_id].append(
            (
                request.headers.get("X-NRM-Timestamp", ""),
                request.headers.get("X-NRM-Signature", ""),
                await request.read(),
            )
        )
        return web.Response(status=500 if len(self.calls[event_id]) <= 2 else 200)

    def of_type(self, kind: str) -> dict[str, list[tuple[str, str, bytes]]]:
        return {
            i: c for i, c in self.calls.items() if c and json.loads(c[0][2]).get("type") == kind
        }


@pytest.fixture
async def hooked(tmp_path: Path) -> AsyncIterator[tuple[Mechanism, Receiver]]:
    """The three agencies, the shelter's webhooks going to a flaky local receiver."""
    receiver = Receiver()
    async with (
        webhook_receiver(receiver.handle) as url,
        running_mechanism(tmp_path, webhooks={"shelter": url}) as m,
    ):
        yield m, receiver


async def test_webhook_retried_until_accepted_with_a_stable_id(
    hooked: tuple[Mechanism, Receiver],
) -> None:
    """A receiver failing twice gets referral.received three times with one id, a valid
    signature, and ids only in the payload."""
    m, receiver = hooked
    assert m.agents["shelter"].webhooks is not None, "the shelter's webhook was not configured"
    canary = f"Canary{secrets.token_hex(8)}"
    body = {**copy.deepcopy(samples.BODY), "names": {"given_names": canary}}
    referral_id = await m.api("police").refer(["shelter"], samples.referral(body))

    async def three() -> bool:
        return any(len(c) >= 3 for c in receiver.of_type("referral.received").values())

    await eventually(three, timeout=10, what="three webhook attempts")
    await asyncio.sleep(1.0)  # room for a fourth, wrong, attempt
    [(event_id, calls)] = receiver.of_type("referral.received").items()
    assert len(calls) == 3
    assert len({raw for _, _, raw in calls}) == 1
    secret = (m.setups["shelter"].home / "webhook.secret").read_bytes()
    for timestamp, signature, raw in calls:
        W.verify_signature(secret, timestamp, raw, signature)
    event = json.loads(calls[0][2])
    assert event["id"] == event_id and event["type"] == "referral.received"
    assert event["data"] == {"referral_id": referral_id, "sender": "police"}
    assert canary not in calls[0][2].decode()
    assert not set(keys_in(event)) & set(R.FIELD_CATEGORY)


async def test_transition_webhook_names_the_referral_by_owner_and_id(
    hooked: tuple[Mechanism, Receiver],
) -> None:
    """transition.received names the referral by its owner (the agency that sent it) and
    its id: ids are unique per sender only (PROTOCOL §6.1), so the id alone is ambiguous."""
    m, receiver = hooked
    referral_id = await m.api("police").refer(["shelter"], samples.referral())
    await delivered(m, "police", referral_id)
    status, body, _ = await act(m, "police", referral_id, to="withdrawn")
    assert status == 202, body

    async def sent() -> bool:
        # The receiver answers 500 twice, then 200.
        return any(len(c) >= 3 for c in receiver.of_type("transition.received").values())

    await eventually(sent, timeout=20, what="the transition webhook to be accepted")
    [(_, calls)] = receiver.of_type("transition.received").items()
    data = json.loads(calls[-1][2])["data"]
    assert (data["owner"], data["referral_id"], data["counterpart"]) == (
        "police",
        referral_id,
        "police",
    )
    assert data["to"] == "withdrawn"


# --- Kantara -----------------------------------------------------------------------------------


async def test_kantara_export_over_the_api(mechanism: Mechanism) -> None:
    """GET /v1/consents/{id}?format=kantara carries every field Kantara CR 1.1 requires, with
    its type."""
    m = mechanism
    rid = await record_consent(m)
    out = await get(m, "police", f"/v1/consents/{rid}?format=kantara")
    assert _kantara_errors(out) == []
    assert set(KANTARA_CR_1_1["required"]) <= set(out)  # type: ignore[arg-type]
    assert out["consentReceiptID"] == rid
    status, body, ctype = await m.api("police").call("GET", f"/v1/consents/{rid}?format=xml")
    assert (status, ctype) == (400, "application/problem+json"), body


# --- idempotency and scopes --------------------------------------------------------------------


async def test_idempotency_key_and_scopes(mechanism: Mechanism) -> None:
    """A repeated POST with one Idempotency-Key creates one referral; reusing the key for
    another body is 422; a foreign token is 401 and a read-only client is 403."""
    m = mechanism
    doc = {"recipients": ["shelter"], "referral": samples.referral()}
    before = rows(m.database("police"), "referrals")
    status, first, headers = await post(m, "police", "/v1/referrals", doc, key="k-1")
    assert status == 202, first
    assert "Idempotent-Replayed" not in headers
    status, again, headers = await post(m, "police", "/v1/referrals", doc, key="k-1")
    assert (status, again["id"]) == (202, first["id"])
    assert headers["Idempotent-Replayed"] == "true"
    other = {**doc, "referral": samples.referral(urgency="urgent")}
    status, body, _ = await post(m, "police", "/v1/referrals", other, key="k-1")
    assert status == 422, body
    assert rows(m.database("police"), "referrals") == before + 1
    await delivered(m, "police", first["id"])
    assert [i["id"] for i in await m.api("shelter").inbox()] == [first["id"]]

    status, body, _ = await post(m, "police", "/v1/referrals", doc, token=m.setups["shelter"].token)
    assert status == 401, body

    await m.stop("police")
    config = m.setups["police"].config_path
    text = config.read_text()
    assert 'scopes = ["submit", "read", "act"]' in text
    config.write_text(text.replace('scopes = ["submit", "read", "act"]', 'scopes = ["read"]'))
    await m.start("police")
    status, body, _ = await post(m, "police", "/v1/referrals", doc, key="k-2")
    assert status == 403, body
    status, body, _ = await post(m, "police", "/v1/consents", samples.consent(str(uuid.uuid4())))
    assert status == 403, body
    status, body, _ = await act(m, "police", first["id"], to="withdrawn")
    assert status == 403, body
    assert (await get(m, "police", f"/v1/referrals/{first['id']}"))["id"] == first["id"]
    assert rows(m.database("police"), "referrals") == before + 1


# --- attachments ----------------------------------------------------------------------------


async def upload(m: Mechanism, agency: str, content: bytes, media_type: str) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {m.setups[agency].token}", "Content-Type": media_type}
    async with m.http.post(
        m.agents[agency].api_url + "/v1/attachments", data=content, headers=headers
    ) as r:
        return r.status, await r.json(content_type=None)


async def fetch_attachment(m: Mechanism, agency: str, rid: str, aid: str) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {m.setups[agency].token}"}
    url = f"{m.agents[agency].api_url}/v1/referrals/{rid}/attachments/{aid}"
    async with m.http.get(url, headers=headers) as r:
        return r.status, await r.read()


def with_attachment(item: dict[str, Any]) -> dict[str, Any]:
    cited = {k: item[k] for k in ("attachment_id", "media_type", "size", "sha256")}
    return samples.referral({**samples.BODY, "attachments": [cited]})


async def test_attachment_round_trips_encrypted(mechanism: Mechanism) -> None:
    """A 3 MB attachment cited by a referral reaches the shelter byte for byte, and its
    plaintext is nowhere in the bus's store."""
    m = mechanism
    content = secrets.token_bytes(3 * 1024 * 1024)
    status, item = await upload(m, "police", content, "application/pdf")
    assert status == 201, item
    rid = (await refer(m, ["shelter"], with_attachment(item)))[1]["id"]
    await delivered(m, "police", rid)

    async def fetched() -> bool:
        code, _ = await fetch_attachment(m, "shelter", rid, item["attachment_id"])
        return code == 200

    await eventually(fetched, what="the shelter to fetch and verify the attachment")
    _, got = await fetch_attachment(m, "shelter", rid, item["attachment_id"])
    assert got == content
    probe = content[1000:1064]
    for path in (m.root / "bus").rglob("*"):
        if path.is_file():
            assert probe not in path.read_bytes(), path


async def test_corrupted_attachment_is_refused(mechanism: Mechanism) -> None:
    """An attachment whose stored object was replaced is refused by the recipient (422)."""
    m = mechanism
    await m.stop("shelter")
    status, item = await upload(
        m, "police", b"%PDF-1.7 " + secrets.token_bytes(4096), "application/pdf"
    )
    assert status == 201
    rid = (await refer(m, ["shelter"], with_attachment(item)))[1]["id"]
    police_db = m.database("police")

    async def uploaded() -> bool:
        return (
            query(police_db, "SELECT count(*) FROM attachment_uploads WHERE state = 'sent'")[0][0]
            == 1
        )

    await eventually(uploaded, what="the police agent to upload the attachment")
    from keys.subjects import attachment_bucket, attachment_object

    from .test_agent import connect_as

    async with connect_as(m, "police") as nc:  # the sender overwriting its own object
        store = await nc.jetstream().object_store(attachment_bucket("police"))
        # The new chunks and meta are written; purging the old chunks is not permitted to
        # agencies, so nats-py's put times out at that last step.
        with contextlib.suppress(TimeoutError, nats.errors.Error):
            await store.put(attachment_object(rid, item["attachment_id"]), b"forged" * 100)
    await m.start("shelter")

    async def refused() -> bool:
        code, _ = await fetch_attachment(m, "shelter", rid, item["attachment_id"])
        return code == 422

    await eventually(refused, what="the shelter to refuse the forged attachment")


async def test_bad_uploads_are_refused(mechanism: Mechanism) -> None:
    """An oversized or wrongly typed upload, or a referral citing an unknown attachment, is
    refused and nothing is stored."""
    m = mechanism
    limit = m.agents["police"].limits.max_attachment_bytes
    status, body = await upload(m, "police", b"x" * (limit + 1), "application/pdf")
    assert status == 413, body
    status, body = await upload(m, "police", b"{}", "application/json")
    assert status == 415, body
    fake = {"attachment_id": "0" * 32, "media_type": "image/png", "size": 10, "sha256": "0" * 64}
    status, body = await refer(m, ["shelter"], with_attachment(fake))
    assert status == 422 and any("attachments" in p for p in body["problems"]), body
    assert query(m.database("police"), "SELECT count(*) FROM attachments")[0][0] == 0


async def test_withdrawal_goes_ahead_when_a_recipient_was_removed(mechanism: Mechanism) -> None:
    """A consent used with two agencies, one of them removed from the directory since: the
    withdrawal is accepted (never a 500), the sender drops its envelopes, and the agency
    still listed erases and confirms; the removed one's use stays unconfirmed."""
    m = mechanism
    rid = await record_consent(m)
    _, to_shelter = await refer(m, ["shelter"], consented(rid, copy.deepcopy(samples.BODY)))
    _, to_coordinator = await refer(
        m, ["coordinator"], consented(rid, copy.deepcopy(samples.ID_BODY), purpose="identification")
    )
    for referral_id in (to_shelter["id"], to_coordinator["id"]):
        await delivered(m, "police", referral_id)
    admin.remove_agency(m.sandbox.admin, "shelter")
    m.sandbox.sign_draft()
    await m.sandbox.publish()
    police = m.agents["police"]

    async def shelter_gone() -> bool:
        directory = police.trust.directory
        return directory is not None and "shelter" not in {a.agency for a in directory.agencies}

    await eventually(shelter_gone, what="police to trust the directory without the shelter")
    status, answer, _ = await post(m, "police", f"/v1/consents/{rid}/withdraw", {})
    assert status == 202, answer

    async def coordinator_confirmed() -> bool:
        s = await get(m, "police", f"/v1/consents/{rid}")
        return any(
            r["agency"] == "coordinator" and r["erasure_confirmed_at"] for r in s["recipients"]
        )

    await eventually(coordinator_confirmed, what="the coordinator's erasure confirmation")
    s = await get(m, "police", f"/v1/consents/{rid}")
    assert [r["erasure_confirmed_at"] for r in s["recipients"] if r["agency"] == "shelter"] == [
        None
    ]
    envelopes = query(
        m.database("police"),
        "SELECT length(envelope) FROM outbox WHERE kind = 'referral' AND referral_id IN (?, ?)",
        to_shelter["id"],
        to_coordinator["id"],
    )
    assert envelopes == [(0,), (0,)]
