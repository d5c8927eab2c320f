"""Break-glass referrals (PROTOCOL §8.2 step 2, agents/break_glass.py): an adult's referral
under vital_interests with a reason of the national policy is held unsent until a second API
client of the sending agency (another name, scope confirm) confirms it; refused, or lapsed
after the policy's confirm_seconds, it is never sent. The receiver accepts it only marked
confirmed with a reason of its policy (else `unlawful-basis`) and shows the flag."""

from __future__ import annotations

import itertools
import json
import secrets
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from nacl.secret import SecretBox

from agents import break_glass as G
from agents import errors as E
from agents import referral as R
from agents.config import token_digest
from agents.inbound import check
from keys import DEFAULT_LIMITS
from keys.audit import AuditEvent
from keys.codec import canonical_json
from keys.errors import UnlawfulBasisError
from keys.policy import BreakGlass, Policy
from nrm import admin
from runtime import clock

from . import samples, support
from .support import Mechanism, eventually, query, running_mechanism, webhook_receiver
from .test_agent_restore import cli
from .test_identification import events
from .test_sender_scope import publish, rejected
from .test_services import SERVICE

REASONS = ("imminent-danger", "unable-to-consent")
CHILD = {**samples.BODY, "age_category": "child", "guardian": {"guardian_type": "local_authority"}}
#: confirm_seconds is long: a lapse is brought about by the agent's own timer step, run
#: with the time it would be run at, never by waiting.
POLICY = Policy(country="LT", break_glass=BreakGlass(600, 7, REASONS))

# --- the lifecycle table, checked against one written apart --------------------------------

#: What may happen to a hold, as docs/proposals/nrm-process.md §10 states it.
EXPECTED = {
    ("awaiting_confirmation", "submitted", "second-client"),
    ("awaiting_confirmation", "refused", "second-client"),
    ("awaiting_confirmation", "lapsed", "system"),
}
PARTIES = ("second-client", "system", "requester")


def test_the_lifecycle_table_is_the_proposal_s() -> None:
    for state, target, party in itertools.product(G.STATES, G.STATES, PARTIES):
        assert G.may_move(state, target, party) == ((state, target, party) in EXPECTED)
    with pytest.raises(ValueError, match="unknown"):
        G.may_move("awaiting_confirmation", "sent", "system")
    assert not G.lapsed(1000, 999) and G.lapsed(1000, 1000)


def glass(reason: str = "imminent-danger", **routing: Any) -> dict[str, Any]:
    """A break-glass referral document as a client submits it."""
    fields: dict[str, Any] = {"legal_basis": "vital_interests", "break_glass": {"reason": reason}}
    return samples.referral(**{**fields, **routing})


@pytest.mark.parametrize(
    ("doc", "policy", "received", "named"),
    [
        (glass(), POLICY, False, None),
        (glass(), None, False, "national policy"),
        (glass(legal_basis="public_task"), POLICY, False, "vital_interests"),
        (glass("medical-emergency"), POLICY, False, "break_glass.reasons"),
        (
            glass(body=CHILD),
            POLICY,
            False,
            "adult",
        ),
        (glass(), POLICY, True, "confirmed"),  # a recipient needs it marked confirmed
    ],
    ids=["ok", "no-policy", "other-basis", "unknown-reason", "child", "unconfirmed"],
)  # fmt: skip
def test_what_a_break_glass_referral_needs(
    doc: dict[str, Any], policy: Policy | None, received: bool, named: str | None
) -> None:
    referral = R.validate_referral(doc)
    problem = R.basis_problem(referral, policy=policy, sender_roles=("police",), received=received)
    if named is None:
        assert problem is None
    else:
        assert problem is not None and named in problem
        assert "Mira" not in problem and "medical-emergency" not in problem  # never echoed


def test_the_audit_kinds_and_label() -> None:
    common = {"event_id": "ab" * 16, "agency": "police", "time": 1, "referral_id": "cd" * 16}
    AuditEvent(
        kind="break-glass.requested",
        reason="imminent-danger",
        labels=(("client", "case-management"),),
        **common,
    )
    with pytest.raises(ValueError, match="exactly its own labels"):
        AuditEvent(kind="break-glass.confirmed", reason="imminent-danger", **common)
    with pytest.raises(ValueError, match="break-glass reason"):
        AuditEvent(kind="break-glass.lapsed", labels=(("client", "x"),), **common)
    AuditEvent(kind="referral.sent", labels=(("break_glass", "yes"),), **common)
    AuditEvent(kind="referral.received", labels=(("break_glass", "yes"),), **common)
    with pytest.raises(ValueError, match=r"only referral\.sent and referral\.received"):
        AuditEvent(kind="transition.sent", labels=(("break_glass", "yes"),), **common)


def _message(doc: dict[str, Any], **glass_member: Any) -> bytes:
    referral = R.validate_referral(doc)
    routing = {**referral.routing(), "referral_id": secrets.token_hex(16)}
    routing["break_glass"] = glass_member
    body = R.minimise(dict(referral.body), R.categories_for_roles(("ngo",)))
    return canonical_json({"referral": {**routing, "body": body}})


def test_the_receiver_s_rule() -> None:
    common = {"roles": ("ngo",), "limits": DEFAULT_LIMITS, "sender_roles": ("police",)}
    check(
        "referral",
        _message(glass(), reason="imminent-danger", confirmed=True),
        policy=POLICY,
        **common,
    )
    for member in (
        {"reason": "imminent-danger"},
        {"reason": "medical-emergency", "confirmed": True},
    ):
        with pytest.raises(UnlawfulBasisError):
            check("referral", _message(glass(), **member), policy=POLICY, **common)
    with pytest.raises(UnlawfulBasisError, match="national policy"):
        check(
            "referral",
            _message(glass(), reason="imminent-danger", confirmed=True),
            policy=None,
            **common,
        )


# --- against real servers ------------------------------------------------------------------

#: Police's API clients besides case-management (submit, read, act): name -> scopes.
CLIENTS = {"duty-officer": ["confirm", "read"], "night-desk": ["submit", "read"]}
#: Webhook events as their agents sent them: agency -> events.
EVENTS: dict[str, list[dict[str, Any]]] = {"police": [], "shelter": []}


def _collector(agency: str) -> Any:
    async def collect(request: web.Request) -> web.Response:
        EVENTS[agency].append(json.loads(await request.read()))
        return web.Response(status=200)

    return collect


@pytest.fixture
async def under_policy(
    tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Mechanism, dict[str, str]]]:
    """The mechanism under POLICY (or the test's parameter); police's agent with two more
    API clients (CLIENTS, their tokens returned); police's and the shelter's webhooks
    collected in EVENTS."""
    policy: Policy = getattr(request, "param", POLICY)
    for collected in EVENTS.values():
        collected.clear()
    async with (
        webhook_receiver(_collector("police")) as police_url,
        webhook_receiver(_collector("shelter")) as shelter_url,
        running_mechanism(tmp_path, webhooks={"police": police_url, "shelter": shelter_url}) as m,
    ):
        await m.stop("police")
        tokens = {name: secrets.token_urlsafe(32) for name in CLIENTS}
        config = m.setups["police"].config_path
        extra = "".join(
            f'\n[[api.clients]]\nname = "{name}"\ntoken_sha256 = "{token_digest(tokens[name])}"\n'
            f"scopes = {json.dumps(scopes)}\n"
            for name, scopes in CLIENTS.items()
        )
        config.write_text(config.read_text() + extra)
        admin.set_policy(m.sandbox.admin, policy)
        m.sandbox.sign_draft()
        await m.sandbox.publish()
        await m.start("police")

        async def everyone_has_it() -> bool:
            return all(
                (d := a.trust.directory) is not None and d.policy == policy
                for a in m.agents.values()
            )

        await eventually(everyone_has_it, what="every agent to take the directory with a policy")
        yield m, tokens


async def call(
    m: Mechanism, method: str, path: str, token: str | None = None, **kw: Any
) -> tuple[int, Any]:
    status, body, _ = await m.api("police").call(method, path, token=token, **kw)
    return status, body


async def submit(m: Mechanism, doc: dict[str, Any], token: str | None = None) -> tuple[int, Any]:
    return await call(
        m, "POST", "/v1/referrals", token, json={"recipients": ["shelter"], "referral": doc}
    )


async def test_a_break_glass_referral_waits_for_a_second_client(
    under_policy: tuple[Mechanism, dict[str, str]],
) -> None:
    """Submitted by case-management, held unsent; case-management lacks the confirm scope
    (403), the submitting client confirming is refused; the duty officer confirms it: sent, and
    the shelter shows the flag in its API and webhook. Audit: requested and confirmed with
    their clients, referral.sent labelled break_glass."""
    m, tokens = under_policy
    status, held = await submit(m, glass(), token=None)
    assert status == 202, held
    rid = held["id"]
    assert (held["state"], held["recipients"]) == ("awaiting_confirmation", ["shelter"])
    assert held["break_glass"]["requested_by"] == "case-management"
    status, shown = await call(m, "GET", f"/v1/referrals/{rid}")
    assert (status, shown["state"]) == (200, "awaiting_confirmation"), shown
    assert "referral" not in shown  # the submitting client: status only
    assert m.agents["police"].store.referral_rows("police", rid) == []  # nothing sealed
    # The confirmer (confirm, read) sees what it would confirm, as it was submitted.
    status, shown = await call(m, "GET", f"/v1/referrals/{rid}", tokens["duty-officer"])
    assert status == 200 and shown["referral"] == glass(), shown

    async def told() -> bool:
        return any(e["type"] == "break_glass.requested" for e in EVENTS["police"])

    await eventually(told, what="police's break_glass.requested webhook")
    [requested] = [e for e in EVENTS["police"] if e["type"] == "break_glass.requested"]
    assert requested["data"]["referral_id"] == rid
    assert requested["data"]["confirm_by"] == held["break_glass"]["confirm_by"]

    status, problem = await call(m, "POST", f"/v1/referrals/{rid}/break-glass/confirm")
    assert status == 403 and "confirm scope" in problem["detail"], problem

    status, own = await submit(m, glass("unable-to-consent"), token=tokens["night-desk"])
    assert status == 202, own
    # No client has both submit and confirm (refused at config load): the agent still
    # refuses a confirmation by the client that submitted.
    with pytest.raises(E.Forbidden, match="another API client"):
        m.agents["police"].break_glass.confirm(own["id"], client="night-desk")

    status, sent = await call(
        m, "POST", f"/v1/referrals/{rid}/break-glass/confirm", tokens["duty-officer"]
    )
    assert status == 202, sent
    assert sent["break_glass"]["decided_by"] == "duty-officer"

    async def at_shelter() -> bool:
        return any(i["id"] == rid for i in await m.api("shelter").inbox())

    await eventually(at_shelter, what="the confirmed referral at the shelter")
    status, received, _ = await m.api("shelter").call("GET", f"/v1/referrals/{rid}?sender=police")
    assert status == 200, received
    flag = {"reason": "imminent-danger", "confirmed": True}
    assert received["break_glass"] == flag and received["referral"]["break_glass"] == flag

    async def webhook() -> bool:
        return any(
            e["type"] == "referral.received" and e["data"]["referral_id"] == rid
            for e in EVENTS["shelter"]
        )

    await eventually(webhook, what="the shelter's referral.received webhook")
    [hook] = [e for e in EVENTS["shelter"] if e["type"] == "referral.received"]
    assert hook["data"]["break_glass"] == flag

    status, mine = await call(m, "GET", f"/v1/referrals/{rid}")
    assert status == 200 and mine["break_glass"]["state"] == "submitted", mine
    audited = [
        (e.kind, e.reason, dict(e.labels).get("client")) for e in events(m, "police", "break-glass")
    ]
    assert audited == [
        ("break-glass.requested", "imminent-danger", "case-management"),
        ("break-glass.requested", "unable-to-consent", "night-desk"),
        ("break-glass.confirmed", "imminent-danger", "duty-officer"),
    ]  # fmt: skip
    [sent_event] = [e for e in events(m, "police", "referral.sent") if e.referral_id == rid]
    assert ("break_glass", "yes") in sent_event.labels
    # The receiver's record names it break-glass too: an auditor pairs it with the sender's
    # requested and confirmed, by two different clients (`confirmed` is only its claim).
    [got] = [e for e in events(m, "shelter", "referral.received") if e.referral_id == rid]
    assert ("break_glass", "yes") in got.labels and got.counterpart == "police"
    clients = {dict(e.labels)["client"] for e in events(m, "police", "break-glass")
               if e.referral_id == rid}  # fmt: skip
    assert clients == {"case-management", "duty-officer"}


async def test_every_state_answers_as_the_table_says(
    under_policy: tuple[Mechanism, dict[str, str]],
) -> None:
    """Holds in each state; the duty officer confirming or refusing: only a waiting one
    moves (202 / 200), every other answers 409 and stays as it was. Refused and lapsed ones
    were never sent and keep no document."""
    m, tokens = under_policy
    officer = tokens["duty-officer"]
    agent = m.agents["police"]

    async def held() -> str:
        status, body = await submit(m, glass())
        assert status == 202, body
        return str(body["id"])

    states: dict[str, str] = {}
    # First the one to lapse: the timer's step lapses every hold whose time has come.
    lapsing = await held()
    hold = agent.store.break_glass_hold(lapsing)
    assert hold is not None
    agent.break_glass.tick(now=hold.confirm_by - 1)  # not yet
    again = agent.store.break_glass_hold(lapsing)
    assert again is not None and again.state == "awaiting_confirmation"
    agent.break_glass.tick(now=hold.confirm_by)  # the timer's step when its time has come
    states["lapsed"] = lapsing
    confirmed = await held()
    status, body = await call(m, "POST", f"/v1/referrals/{confirmed}/break-glass/confirm", officer)
    assert status == 202, body
    states["submitted"] = confirmed
    refused = await held()
    status, body = await call(
        m,
        "POST",
        f"/v1/referrals/{refused}/break-glass/refuse",
        officer,
        json={"reason": "consent-obtainable"},
    )
    assert status == 200, body
    assert (body["state"], body["break_glass"]["refusal"]) == ("refused", "consent-obtainable")
    states["refused"] = refused
    states["awaiting_confirmation"] = await held()

    for state, rid in states.items():
        status, shown = await call(m, "GET", f"/v1/referrals/{rid}", officer)
        assert status == 200, shown
        assert shown["break_glass"]["state"] == state
        if state != "submitted":  # a decided one shows no document, even to the confirmer
            assert ("referral" in shown) == (state == "awaiting_confirmation"), shown
        if state != "submitted":  # never sealed; only a waiting one keeps its document
            assert agent.store.referral_rows("police", rid) == []
            kept = agent.store.break_glass_document(rid) is not None
            assert kept == (state == "awaiting_confirmation")
    for (state, rid), step in itertools.product(list(states.items()), ("confirm", "refuse")):
        if state == "awaiting_confirmation":
            continue
        status, problem = await call(
            m, "POST", f"/v1/referrals/{rid}/break-glass/{step}", officer,
            json={"reason": "not-urgent"} if step == "refuse" else {},
        )  # fmt: skip
        assert status == 409, (state, step, problem)
        assert agent.store.break_glass_hold(rid).state == state  # type: ignore[union-attr]
    waiting = states["awaiting_confirmation"]
    status, problem = await call(
        m, "POST", f"/v1/referrals/{waiting}/break-glass/refuse", officer, json={"reason": "Mira"}
    )
    assert status == 400 and "Mira" not in str(problem), problem
    status, _ = await call(m, "POST", f"/v1/referrals/{'ab' * 16}/break-glass/confirm", officer)
    assert status == 404
    kinds = [e.kind for e in events(m, "police", "break-glass")]
    assert kinds.count("break-glass.refused") == kinds.count("break-glass.lapsed") == 1

    # Retention: a refused or lapsed hold goes once closed_referrals_days have passed since
    # its decision; a confirmed one stays while its referral does, a waiting one stays.
    days = agent.config.retention.closed_referrals_days
    counts = await agent.retention.purge(now=clock.now() + (days + 1) * 86_400)
    assert counts["closed_referrals"] >= 2, counts
    kept = {state for state, rid in states.items() if agent.store.break_glass_hold(rid)}
    assert kept == {"submitted", "awaiting_confirmation"}


async def test_a_break_glass_referral_the_policy_does_not_allow_is_refused(
    under_policy: tuple[Mechanism, dict[str, str]],
) -> None:
    """422 naming what is wrong, nothing held: another basis, a reason outside the policy,
    `confirmed` from the client; the receiver refuses an unconfirmed one and one with an
    unknown reason sealed past police's agent as `unlawful-basis`."""
    m, _ = under_policy
    for doc, named in [
        (glass(legal_basis="public_task"), "vital_interests"),
        (glass("medical-emergency"), "break_glass.reasons"),
        (glass(break_glass={"reason": "imminent-danger", "confirmed": True}), "confirmed"),
    ]:  # fmt: skip
        status, problem = await submit(m, doc)
        assert status == 422 and named in problem["detail"], problem
        assert "medical-emergency" not in problem["detail"]
    with pytest.raises(E.Unprocessable, match="second client"):  # no way around the hold
        m.agents["police"].desk.submit(recipients=["shelter"], document=glass())
    assert m.agents["police"].store.referrals_page(after=0, since=0, state=None, limit=10) == []
    conn = sqlite3.connect(m.database("police"))
    try:
        assert conn.execute("SELECT count(*) FROM break_glass").fetchone() == (0,)
    finally:
        conn.close()

    police = support.agency_keys(m, "police")
    for member in (
        {"reason": "imminent-danger"},
        {"reason": "medical-emergency", "confirmed": True},
    ):
        data = support.sealed(m, police, "shelter", "referral", _message(glass(), **member))
        await publish(m, "police", "shelter", data)
        await rejected(m, "shelter", data, "unlawful-basis")


async def test_a_hold_whose_service_went_cannot_be_confirmed(
    under_policy: tuple[Mechanism, dict[str, str]],
) -> None:
    """A held break-glass referral names the shelter's service; the shelter publishes its
    catalogue again without it. Planned again at its confirmation, the referral is refused
    422 (member `service`), the detail saying the hold cannot be sent as it is; it keeps
    waiting, unsent, and may still be refused."""
    m, tokens = under_policy
    officer = tokens["duty-officer"]
    service = {"agency": "shelter", "service_id": SERVICE["service_id"]}

    async def catalogue(*services: dict[str, Any], offered: bool) -> None:
        status, body, _ = await m.api("shelter").call(
            "PUT", "/v1/catalogue", json={"services": list(services)}
        )
        assert status == 200, body

        async def seen() -> bool:
            return m.agents["police"].services.offers("shelter", service["service_id"]) is offered

        await eventually(seen, what="police to see the shelter's catalogue")

    await catalogue(SERVICE, offered=True)
    status, held = await submit(m, glass(service=service))
    assert (status, held["state"]) == (202, "awaiting_confirmation"), held
    rid = held["id"]
    await catalogue({**SERVICE, "service_id": "0123456789abcdef"}, offered=False)

    status, problem = await call(m, "POST", f"/v1/referrals/{rid}/break-glass/confirm", officer)
    assert (status, problem.get("member")) == (422, "service"), problem
    assert "cannot be sent as it is" in problem["detail"], problem
    assert m.agents["police"].break_glass.status(rid)["state"] == "awaiting_confirmation"
    status, refused = await call(
        m,
        "POST",
        f"/v1/referrals/{rid}/break-glass/refuse",
        officer,
        json={"reason": "consent-obtainable"},
    )
    assert (status, refused["state"]) == (200, "refused"), refused


#: A second to confirm: the agent's own timers lapse the hold.
SHORT = Policy(country="LT", break_glass=BreakGlass(1, 7, REASONS))


@pytest.mark.parametrize("under_policy", [SHORT], indirect=True)
async def test_the_agent_s_timers_lapse_an_unconfirmed_one(
    under_policy: tuple[Mechanism, dict[str, str]],
) -> None:
    """Nobody confirms within confirm_seconds: the running agent's timers lapse it (audited
    with the asking client), the duty officer's confirmation is then 409 and nothing reaches
    the shelter."""
    m, tokens = under_policy
    status, held = await submit(m, glass())
    assert status == 202, held
    rid = held["id"]

    async def lapsed() -> bool:
        status, shown = await call(m, "GET", f"/v1/referrals/{rid}")
        return bool(status == 200 and shown["state"] == "lapsed")

    await eventually(lapsed, what="the agent's timers to lapse the hold")
    status, problem = await call(
        m, "POST", f"/v1/referrals/{rid}/break-glass/confirm", tokens["duty-officer"]
    )
    assert (status, problem["state"]) == (409, "lapsed"), problem
    [event] = events(m, "police", "break-glass.lapsed")
    assert (event.referral_id, dict(event.labels)) == (rid, {"client": "case-management"})
    assert m.agents["police"].store.referral_rows("police", rid) == []
    assert all(i["id"] != rid for i in await m.api("shelter").inbox())


async def refuse(m: Mechanism, rid: str, token: str, reason: str) -> None:
    """The client of `token` refuses the hold `rid` with `reason`: 200."""
    path = f"/v1/referrals/{rid}/break-glass/refuse"
    status, body = await call(m, "POST", path, token, json={"reason": reason})
    assert status == 200, body


def _probes(data: bytes) -> list[bytes]:
    """The whole of `data` and two 48-byte slices of it (a page may split it)."""
    middle = len(data) // 2
    return [data, data[middle : middle + 48], data[-48:]]


def _found(m: Mechanism, agency: str, forbidden: dict[str, list[bytes]]) -> list[str]:
    """What of `forbidden` some file of the agency's folder (database, -wal, -shm) holds."""
    files = [p for p in m.setups[agency].home.rglob("*") if p.is_file()]
    assert any(p.name.endswith("-wal") for p in files)  # the agent is running
    return sorted(
        f"{what} in {p.name}"
        for p in files
        for what, probes in forbidden.items()
        if any(probe in p.read_bytes() for probe in probes)
    )


async def test_a_refused_or_lapsed_hold_leaves_nothing_to_recover(
    under_policy: tuple[Mechanism, dict[str, str]],
) -> None:
    """A hold with a canary in its body is refused, another lapses: once each is decided,
    with the agent running, no file of police's folder (database, -wal, -shm) holds the
    canary, the sealed document, its sealed data key or the data key: the decision has the
    WAL truncated like an erasure, not only the row emptied."""
    m, tokens = under_policy
    agent = m.agents["police"]
    assert agent.keys.storage_key is not None
    storage = SecretBox(agent.keys.storage_key)
    for outcome in ("refused", "lapsed"):
        canary = f"Canary{secrets.token_hex(8)}"
        body = {**samples.BODY, "names": {"given_names": canary, "family_name": "Example"}}
        status, held = await submit(m, glass(body=body))
        assert status == 202, held
        rid = held["id"]
        [(sealed_key, document)] = query(
            m.database("police"),
            "SELECT sealed_key, document FROM break_glass WHERE referral_id = ?",
            rid,
        )
        data_key = storage.decrypt(bytes(sealed_key))
        assert canary in SecretBox(data_key).decrypt(bytes(document)).decode()  # it opens
        forbidden = {
            "the canary": [canary.encode()],
            "the sealed data key": _probes(bytes(sealed_key)),
            "the data key": [data_key],
            "the sealed document": _probes(bytes(document)),
        }
        # The search can find them: before the decision they are on disk.
        assert "the sealed document" in " ".join(_found(m, "police", forbidden))
        if outcome == "refused":
            await refuse(m, rid, tokens["duty-officer"], "not-justified")
        else:
            hold = agent.store.break_glass_hold(rid)
            assert hold is not None
            agent.break_glass.tick(now=hold.confirm_by)
        assert agent.store.break_glass_hold(rid).state == outcome  # type: ignore[union-attr]

        async def gone(forbidden: dict[str, list[bytes]] = forbidden) -> bool:
            return _found(m, "police", forbidden) == []

        await eventually(gone, what=f"nothing of the {outcome} hold left in police's files")


async def test_a_hold_past_its_time_shows_its_document_to_nobody(
    under_policy: tuple[Mechanism, dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Once confirm_by has come the held document is no longer shown to a confirming
    client, even before the timers have lapsed and erased it (asked in the same step as the
    clock moves, so no timer runs in between)."""
    m, _ = under_policy
    offset = tmp_path / "clock-offset"
    monkeypatch.setenv(clock.ENV, str(offset))
    police = m.agents["police"]
    status, held = await submit(m, glass())
    assert status == 202, held
    rid = held["id"]
    assert police.break_glass.status(rid, document=True)["referral"] == glass()
    clock.set_offset(offset, POLICY.break_glass.confirm_seconds + 1)  # type: ignore[union-attr]
    shown = police.break_glass.status(rid, document=True)
    assert shown["state"] == "awaiting_confirmation" and "referral" not in shown, shown


async def test_a_hold_lapses_whatever_the_agency_s_standing(
    under_policy: tuple[Mechanism, dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Police's signing key is revoked while a hold waits (standing `key-revoked`: it may
    not sign for the exchange); past confirm_by the agent's timers still lapse the hold and
    drop its document; the lapse's audit event waits in the outbox like any other."""
    m, _ = under_policy
    offset = tmp_path / "clock-offset"
    monkeypatch.setenv(clock.ENV, str(offset))
    police = m.agents["police"]
    status, held = await submit(m, glass())
    assert status == 202, held
    rid = held["id"]
    kid = police.keys.public.signing_kid
    admin.revoke_key(m.sandbox.admin, "police", kid, reason="laptop stolen", at=clock.now())
    m.sandbox.sign_draft()
    await m.sandbox.publish()

    async def revoked() -> bool:
        return police.standing.standing.state == "key-revoked"

    await eventually(revoked, what="police to learn its signing key was revoked")
    clock.set_offset(offset, POLICY.break_glass.confirm_seconds + 1)  # type: ignore[union-attr]

    async def lapsed() -> bool:
        hold = police.store.break_glass_hold(rid)
        return hold is not None and hold.state == "lapsed"

    await eventually(lapsed, what="the timers to lapse the hold under a revoked key")
    assert police.standing.standing.state == "key-revoked"
    assert police.store.break_glass_document(rid) is None
    [event] = events(m, "police", "break-glass.lapsed")
    assert event.referral_id == rid


async def test_a_hold_restored_past_its_time_lapses(
    under_policy: tuple[Mechanism, dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """A backup taken while a hold waited is restored after the hold was refused and past
    its confirm_by: the restored hold is back, waiting; the restarted agent's timers lapse
    it and drop its document."""
    m, tokens = under_policy
    offset = tmp_path / "clock-offset"
    monkeypatch.setenv(clock.ENV, str(offset))
    status, held = await submit(m, glass())
    assert status == 202, held
    rid = held["id"]
    config = str(m.setups["police"].config_path)
    saved = tmp_path / "police-backup.db"
    code, out = cli("agent", "backup", "--config", config, "--to", str(saved))
    assert code == 0, out
    await refuse(m, rid, tokens["duty-officer"], "not-urgent")
    await m.stop("police")
    code, out = cli("agent", "restore", "--config", config, "--from", str(saved))
    assert code == 0, out
    [(state,)] = query(
        m.database("police"), "SELECT state FROM break_glass WHERE referral_id = ?", rid
    )
    assert state == "awaiting_confirmation"  # the backup's, with its document
    clock.set_offset(offset, POLICY.break_glass.confirm_seconds + 1)  # type: ignore[union-attr]
    police = await m.start("police")

    async def lapsed() -> bool:
        hold = police.store.break_glass_hold(rid)
        return hold is not None and hold.state == "lapsed"

    await eventually(lapsed, what="the restarted agent to lapse the restored hold")
    assert police.store.break_glass_document(rid) is None
