"""Identification decisions between real agents (PROTOCOL §8.7): a competent authority
opens a case when it accepts police's nrm_full referral, decides, and its agent seals the
decision to the referrer and the co-ordinator, with the reason only where the table says;
a decision signed by an agency that is not an authority is refused on the record; a second
stage before the policy's interval is 409 too-early."""

from __future__ import annotations

import contextlib
import json
import secrets
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from keys import codec
from keys.audit import AuditEvent, decode_signed_event
from keys.decision import Decision, sign_decision
from keys.policy import Policy
from keys.roles import COMPETENT_AUTHORITY
from nrm import admin
from runtime import clock

from . import samples
from .support import (
    Mechanism,
    agency_keys,
    eventually,
    query,
    running_mechanism,
    sealed,
    webhook_receiver,
)
from .test_sender_scope import publish, rejected, rejections

#: Police (and the authority, referring on to a provider) may refer an adult without consent
#: under public_task (the sample's basis).
POLICY = Policy(
    country="LT",
    without_consent={"police": ("public_task",), COMPETENT_AUTHORITY: ("public_task",)},
)
AUTHORITY = "shelter"  # made the competent authority below


#: The events police's agent sent its system (webhooks), in order of arrival.
POLICE_EVENTS: list[dict[str, Any]] = []


async def _collect(request: web.Request) -> web.Response:
    POLICE_EVENTS.append(json.loads(await request.read()))
    return web.Response(status=200)


@pytest.fixture
async def with_authority(tmp_path: Path) -> AsyncIterator[Mechanism]:
    """The mechanism under POLICY with the shelter turned into a competent authority whose
    case system holds the decide scope; police's webhooks go to POLICE_EVENTS."""
    async with authority_mechanism(tmp_path, POLICY) as m:
        yield m


@contextlib.asynccontextmanager
async def authority_mechanism(
    tmp_path: Path, policy: Policy, webhooks: dict[str, str] | None = None
) -> AsyncIterator[Mechanism]:
    """The mechanism under `policy` with the shelter turned into a competent authority whose
    case system holds the decide scope; police's webhooks go to POLICE_EVENTS, other
    agencies' to the URLs `webhooks` names."""
    POLICE_EVENTS.clear()
    async with (
        webhook_receiver(_collect) as url,
        running_mechanism(tmp_path, webhooks={**(webhooks or {}), "police": url}) as m,
    ):
        await m.stop(AUTHORITY)
        setup = m.setups[AUTHORITY]
        config = setup.config_path.read_text()
        assert config.count('"act"]') == 1
        setup.config_path.write_text(config.replace('"act"]', '"act", "decide"]'))
        identity = admin.PublicIdentity.from_json(setup.identity_path.read_bytes())
        admin.set_policy(m.sandbox.admin, policy)  # the role needs a policy's directory
        admin.add_agency(m.sandbox.admin, identity, roles=[COMPETENT_AUTHORITY])
        m.sandbox.sign_draft()
        await m.sandbox.publish()
        await m.start(AUTHORITY)

        async def everyone_has_it() -> bool:
            for agent in m.agents.values():
                d = agent.trust.directory
                if d is None or d.policy != policy:
                    return False
                if d.agency(AUTHORITY).roles != (COMPETENT_AUTHORITY,):
                    return False
            return True

        await eventually(everyone_has_it, what="every agent to know the competent authority")
        yield m


async def call(m: Mechanism, agency: str, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    status, body, _ = await m.api(agency).call(method, path, **kw)
    return status, body


async def opened_case(
    m: Mechanism, referrer: str = "police", body: dict[str, Any] | None = None
) -> tuple[str, str]:
    """`referrer` refers to the authority (the sample's body, or `body`), which acknowledges
    and accepts: (referral id, case)."""
    rid = await m.api(referrer).refer([AUTHORITY], samples.referral(body))

    async def delivered() -> bool:
        return await m.api(referrer).status(rid) == "delivered"

    await eventually(delivered, what="the referral at the authority")
    for to in ("acknowledged", "accepted"):
        status, body = await call(
            m, AUTHORITY, "POST", f"/v1/referrals/{rid}/transitions", json={"to": to}
        )
        assert status == 202, body
    status, cases = await call(m, AUTHORITY, "GET", "/v1/cases")
    assert status == 200, cases
    [case] = [c for c in cases["items"] if c["referral_id"] == rid]
    assert (case["owner"], case["state"], case["age_route"]) == (
        referrer,
        "awaiting_first",
        "adult",
    )
    return rid, case["case_id"]


def events(m: Mechanism, agency: str, prefix: str) -> list[AuditEvent]:
    """The audit events of `agency` whose kind starts with `prefix`, in order."""
    conn = sqlite3.connect(m.database(agency))
    try:
        rows = [bytes(r[0]) for r in conn.execute("SELECT event FROM audit_outbox ORDER BY seq")]
    finally:
        conn.close()
    decoded = [decode_signed_event(row)[0] for row in rows]
    return [e for e in decoded if e.kind.startswith(prefix)]


async def decide(m: Mechanism, case_id: str, doc: dict[str, str]) -> tuple[int, Any]:
    return await call(m, AUTHORITY, "POST", f"/v1/cases/{case_id}/decisions", json=doc)


async def held(m: Mechanism, agency: str, rid: str, count: int) -> list[dict[str, Any]]:
    """The decisions `agency` holds under police's referral `rid`, once it holds `count`."""
    found: list[dict[str, Any]] = []

    async def arrived() -> bool:
        nonlocal found
        status, body = await call(m, agency, "GET", f"/v1/referrals/{rid}/decisions?sender=police")
        found = body["items"] if status == 200 else []
        return len(found) == count

    await eventually(arrived, what=f"{agency} to hold {count} decision(s)")
    return found


async def test_a_decision_reaches_the_referrer_and_the_coordinator(
    with_authority: Mechanism,
) -> None:
    """A positive first stage reaches police and the co-ordinator; a second stage at once is
    409 too-early and sends nothing; a negative first stage of another case carries its
    reason to both; the authority's case says what it decided."""
    m = with_authority
    rid, case_id = await opened_case(m)
    status, decided = await decide(m, case_id, {"stage": "first", "outcome": "positive"})
    assert (status, decided["state"]) == (202, "first_positive"), decided
    for agency in ("police", "coordinator"):
        [decision] = await held(m, agency, rid, 1)
        assert decision["decision_id"] == decided["decision_id"]
        assert (decision["case_id"], decision["authority"]) == (case_id, AUTHORITY)
        assert (decision["stage"], decision["outcome"], decision["reason"]) == (
            "first",
            "positive",
            None,
        )

    status, problem = await decide(m, case_id, {"stage": "second", "outcome": "positive"})
    assert (status, problem["reason"]) == (409, "too-early"), problem
    status, problem = await decide(
        m, case_id, {"stage": "first", "outcome": "negative", "reason": "no-indicators"}
    )
    assert (status, problem["allowed"]) == (
        409,
        ["second_positive", "second_negative", "left_process"],
    )

    other, other_case = await opened_case(m)
    status, decided = await decide(
        m, other_case, {"stage": "first", "outcome": "negative", "reason": "no-indicators"}
    )
    assert status == 202, decided
    for agency in ("police", "coordinator"):
        [decision] = await held(m, agency, other, 1)
        assert (decision["outcome"], decision["reason"]) == ("negative", "no-indicators")
    status, case = await call(m, AUTHORITY, "GET", f"/v1/cases/{case_id}")
    assert status == 200 and case["state"] == "first_positive", case
    assert [d["stage"] for d in case["decisions"]] == ["first"]
    assert len(await held(m, "police", rid, 1)) == 1  # the refused second stage sent nothing

    expected = [*await held(m, "police", rid, 1), *await held(m, "police", other, 1)]

    async def told() -> bool:
        return [e["data"] for e in POLICE_EVENTS if e["type"] == "decision.received"] == expected

    await eventually(told, what="police's system to be told of both decisions")

    status, _ = await call(m, "police", "GET", "/v1/cases")  # police's system: no decide
    assert status == 403
    status, _ = await decide(m, "ab" * 16, {"stage": "first", "outcome": "positive"})
    assert status == 404
    status, _ = await decide(m, other_case, {"stage": "first", "outcome": "maybe"})
    assert status == 422
    status, _ = await call(m, AUTHORITY, "PUT", f"/v1/cases/{case_id}/referrals/{rid}")
    assert status == 404  # police's referral: not one the authority sent to a provider

    first, second = (("first", "positive"), ("first", "negative"))
    decided = [
        (e.kind, e.referral_id, e.counterpart, e.reason, dict(e.labels))
        for e in events(m, AUTHORITY, "identification.decided")
    ]
    assert decided == [
        (
            "identification.decided",
            r,
            "police",
            reason,
            {"stage": stage, "outcome": outcome, "age_route": "adult"},
        )
        for r, reason, (stage, outcome) in ((rid, None, first), (other, "no-indicators", second))
    ]
    sent = {(e.referral_id, e.counterpart) for e in events(m, AUTHORITY, "identification.sent")}
    assert sent == {(r, a) for r in (rid, other) for a in ("police", "coordinator")}
    for agency in ("police", "coordinator"):
        received = [
            (e.referral_id, e.counterpart, dict(e.labels))
            for e in events(m, agency, "identification.received")
        ]
        assert received == [
            (r, AUTHORITY, {"stage": stage, "outcome": outcome})
            for r, (stage, outcome) in ((rid, first), (other, second))
        ]


async def test_a_decision_by_an_agency_that_is_not_an_authority_is_refused(
    with_authority: Mechanism,
) -> None:
    """Police's keys sign a decision and seal it to the co-ordinator past police's agent:
    the co-ordinator refuses it `not-for-this-role` and holds nothing."""
    m = with_authority
    rid = await m.api("police").refer([AUTHORITY], samples.referral())
    signed = signed_by(m, "police", secrets.token_hex(16))
    await sent_past_the_agent(m, "police", "coordinator", signed, rid, reason="not-for-this-role")
    status, _ = await call(m, "coordinator", "GET", f"/v1/referrals/{rid}/decisions?sender=police")
    assert status == 404


def signed_by(
    m: Mechanism,
    authority: str,
    case_id: str,
    *,
    stage: str = "first",
    decided_at: int | None = None,
) -> bytes:
    """A positive decision of `stage` in `case_id` that `authority`'s own keys sign, past
    its agent (a hostile or broken authority's), decided now unless given."""
    decision = Decision(
        decision_id=secrets.token_hex(16),
        authority=authority,
        case_id=case_id,
        stage=stage,
        outcome="positive",
        reason_digest=None,
        supersedes=None,
        decided_at=clock.now() if decided_at is None else decided_at,
        age_route="adult",
    )
    return sign_decision(decision, agency_keys(m, authority).signing_key)


async def sent_past_the_agent(
    m: Mechanism, sender: str, to: str, signed: bytes, rid: str, *, reason: str
) -> None:
    """`sender` seals `signed` under police's pair `rid` to `to`, which refuses it as
    `reason`."""
    body = codec.pack([1, signed, "police", rid, None, None])
    data = sealed(m, agency_keys(m, sender), to, "identification-decision", body)
    await publish(m, sender, to, data)
    await rejected(m, to, data, reason)


async def test_a_stage_the_directory_does_not_let_it_decide_is_refused(
    with_authority: Mechanism,
) -> None:
    """An authority whose directory entry decides the second stage only (§7.3) is refused
    the first stage with 409 `not-for-this-role` naming its `decides`, and nothing is
    stored: the ledger and every receiver would refuse that decision, leaving the case's
    state and the rapporteur's counts apart from the ledger for good."""
    m = with_authority
    identity = admin.PublicIdentity.from_json(m.setups[AUTHORITY].identity_path.read_bytes())
    admin.add_agency(m.sandbox.admin, identity, roles=[COMPETENT_AUTHORITY], decides="second")
    m.sandbox.sign_draft()
    await m.sandbox.publish()

    async def second_only() -> bool:
        d = m.agents[AUTHORITY].trust.directory
        return d is not None and d.agency(AUTHORITY).decides == ("second",)

    await eventually(second_only, what="the authority to know it decides the second stage")
    _, case_id = await opened_case(m)
    status, problem = await decide(m, case_id, {"stage": "first", "outcome": "positive"})
    assert (status, problem["reason"], problem["decides"]) == (
        409,
        "not-for-this-role",
        ["second"],
    ), problem
    status, case = await call(m, AUTHORITY, "GET", f"/v1/cases/{case_id}")
    assert (status, case["state"], case["decisions"]) == (200, "awaiting_first", []), case


async def also_authority(m: Mechanism, agency: str, role: str, *, seen_by: str) -> None:
    """`agency` (of `role`) is made a competent authority too, once `seen_by` knows it."""
    identity = admin.PublicIdentity.from_json(m.setups[agency].identity_path.read_bytes())
    admin.add_agency(m.sandbox.admin, identity, roles=[role, COMPETENT_AUTHORITY])
    m.sandbox.sign_draft()
    await m.sandbox.publish()

    async def decides() -> bool:
        d = m.agents[seen_by].trust.directory
        return d is not None and COMPETENT_AUTHORITY in d.agency(agency).roles

    await eventually(decides, what=f"{seen_by} to know {agency} as an authority")


async def decided_first(m: Mechanism) -> tuple[str, str]:
    """A case whose positive first stage police and the co-ordinator hold: (rid, case)."""
    rid, case_id = await opened_case(m)
    status, decided = await decide(m, case_id, {"stage": "first", "outcome": "positive"})
    assert status == 202, decided
    for agency in ("police", "coordinator"):
        await held(m, agency, rid, 1)
    return rid, case_id


async def test_a_pair_belongs_to_the_first_case_each_authority_decided_under_it(
    with_authority: Mechanism,
) -> None:
    """Once the co-ordinator holds the authority's decision under police's pair, a decision
    under that pair of another case of the same authority is refused `other-case`, and the
    pair's listing stays as it was; another competent authority (police made one) is not
    bound by the first one's case: it deciding first must not keep the genuine authority's
    decisions out, so its own is listed beside, under its own name."""
    m = with_authority
    rid, case_id = await decided_first(m)
    before = await held(m, "coordinator", rid, 1)
    await sent_past_the_agent(
        m,
        AUTHORITY,
        "coordinator",
        signed_by(m, AUTHORITY, secrets.token_hex(16)),
        rid,
        reason="other-case",
    )

    await also_authority(m, "police", "police", seen_by="coordinator")
    assert await held(m, "coordinator", rid, 1) == before
    body = codec.pack([1, signed_by(m, "police", case_id), "police", rid, None, None])
    data = sealed(m, agency_keys(m, "police"), "coordinator", "identification-decision", body)
    await publish(m, "police", "coordinator", data)
    listed = await held(m, "coordinator", rid, 2)
    assert sorted(d["authority"] for d in listed) == sorted([AUTHORITY, "police"])


async def test_a_decision_is_dated_when_its_envelope_is_created(
    with_authority: Mechanism,
) -> None:
    """A second stage signed 40 days ahead but sent now (past the too-early interval) is
    refused `misdated`; a first stage dated an hour back, before the authority's key was
    valid, is a late copy (§8.7 "Late copies") refused for that key (`retired-key`): dating
    back picks no key that does not hold at `decided_at` and at the envelope's creation."""
    m = with_authority
    rid, case_id = await decided_first(m)
    ahead = clock.now() + 40 * 86_400
    await sent_past_the_agent(
        m,
        AUTHORITY,
        "coordinator",
        signed_by(m, AUTHORITY, case_id, stage="second", decided_at=ahead),
        rid,
        reason="misdated",
    )
    back = clock.now() - 3600
    await sent_past_the_agent(
        m,
        AUTHORITY,
        "coordinator",
        signed_by(m, AUTHORITY, case_id, decided_at=back),
        rid,
        reason="retired-key",
    )
    assert len(await held(m, "coordinator", rid, 1)) == 1


async def test_the_sender_is_checked_before_the_held_first_stage(
    with_authority: Mechanism,
) -> None:
    """The co-ordinator's held first stage no longer verifies (its signature damaged in the
    database); a second stage of the case signed by the authority but sent by police is
    refused `unexpected` (the sender check, §8.7's order), not for the held first stage."""
    m = with_authority
    rid, case_id = await decided_first(m)
    conn = sqlite3.connect(m.database("coordinator"))
    try:
        with conn:
            [(signed,)] = conn.execute("SELECT signed FROM decisions WHERE case_id = ?", (case_id,))
            damaged = bytes(signed[:-1]) + bytes([signed[-1] ^ 1])
            conn.execute("UPDATE decisions SET signed = ? WHERE case_id = ?", (damaged, case_id))
    finally:
        conn.close()
    await sent_past_the_agent(
        m,
        "police",
        "coordinator",
        signed_by(m, AUTHORITY, case_id, stage="second"),
        rid,
        reason="unexpected",
    )
    assert {r for r, _ in rejections(m.database("coordinator"))} == {"unexpected"}


async def test_a_stage_is_decided_once(with_authority: Mechanism) -> None:
    """A second first stage of a case, superseding nothing, is refused `already-decided` by
    the co-ordinator, which holds the first one only; the authority's API refuses it 409
    `already-decided` even when the case's state says it awaits the first stage (a state
    written back wrongly), and sends nothing."""
    m = with_authority
    rid, case_id = await decided_first(m)
    await sent_past_the_agent(
        m,
        AUTHORITY,
        "coordinator",
        signed_by(m, AUTHORITY, case_id),
        rid,
        reason="already-decided",
    )
    assert len(await held(m, "coordinator", rid, 1)) == 1

    conn = sqlite3.connect(m.database(AUTHORITY))
    try:
        with conn:
            conn.execute("UPDATE cases SET state = 'awaiting_first' WHERE case_id = ?", (case_id,))
    finally:
        conn.close()
    status, problem = await decide(
        m, case_id, {"stage": "first", "outcome": "negative", "reason": "duplicate"}
    )
    assert (status, problem["reason"]) == (409, "already-decided"), problem
    status, case = await call(m, AUTHORITY, "GET", f"/v1/cases/{case_id}")
    assert status == 200 and [d["stage"] for d in case["decisions"]] == ["first"], case
    assert len(events(m, AUTHORITY, "identification.sent")) == 2  # police and the co-ordinator


async def test_a_referral_belongs_to_one_case(with_authority: Mechanism) -> None:
    """The authority refers on to police and links that referral to a case: linking it again
    to the same case is the same answer; linking it to another case is 409 naming the case
    that holds it, and the first link stands."""
    m = with_authority
    _, case_id = await opened_case(m)
    _, other_case = await opened_case(m)
    onward = await m.api(AUTHORITY).refer(["police"], samples.referral())
    path = f"/v1/cases/{case_id}/referrals/{onward}"
    for _ in range(2):
        status, body = await call(m, AUTHORITY, "PUT", path)
        assert (status, body) == (200, {"case_id": case_id, "referral_id": onward}), body
    status, problem = await call(m, AUTHORITY, "PUT", f"/v1/cases/{other_case}/referrals/{onward}")
    assert (status, problem["case_id"]) == (409, case_id), problem
    rows = query(
        m.database(AUTHORITY), "SELECT case_id FROM case_referrals WHERE referral_id = ?", onward
    )
    assert rows == [(case_id,)]


#: As POLICY, and the co-ordinator may refer too: a case it opens leaves police free to be a
#: provider the authority refers on to (the mechanism has no fourth agency).
COORDINATOR_OPENS = Policy(
    country="LT",
    without_consent={
        "police": ("public_task",),
        "coordinator": ("public_task",),
        COMPETENT_AUTHORITY: ("public_task",),
    },
)


async def referred_on(m: Mechanism) -> str:
    """The authority refers on to police (a provider): the referral's id, once delivered."""
    onward = await m.api(AUTHORITY).refer(["police"], samples.referral())

    async def at_police() -> bool:
        return await m.api(AUTHORITY).status(onward) == "delivered"

    await eventually(at_police, what="the onward referral at police")
    return onward


async def police_accepts(m: Mechanism, onward: str) -> None:
    """Police acknowledges and accepts the authority's referral `onward`, and the authority
    sees it accepted."""
    for to in ("acknowledged", "accepted"):
        status, body = await call(
            m, "police", "POST", f"/v1/referrals/{onward}/transitions", json={"to": to}
        )
        assert status == 202, body
    await seen_accepted(m, onward)


async def seen_accepted(m: Mechanism, onward: str) -> None:
    """Wait until the authority holds its referral `onward` to police as accepted."""

    async def accepted() -> bool:
        rows = query(
            m.database(AUTHORITY),
            "SELECT state FROM referrals WHERE referral_id = ? AND side = 'sender'",
            onward,
        )
        return rows == [("accepted",)]

    await eventually(accepted, what="the authority to see police accept")


@pytest.mark.parametrize("link_first", [False, True], ids=["accept-then-link", "link-then-accept"])
async def test_a_provider_linked_late_gets_the_case_so_far(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, link_first: bool
) -> None:
    """The co-ordinator's referral opens a case; its first stage is decided (which starts
    both protections); only then does the authority refer on to police, which accepts, and,
    a day later (the clock moved), link that referral: police gets, under its pair, the
    decision (without reason) and both notices as late copies, each on the record
    (`identification.sent`, `protection.notified`) and accepted though dated a day before
    its envelope (§8.7 "Late copies": the key is valid still); linking again sends nothing
    again. Linked before police accepts, the same copies go when it accepts."""
    offset = tmp_path / "clock-offset"
    clock.set_offset(offset, 0)
    monkeypatch.setenv(clock.ENV, str(offset))
    async with authority_mechanism(tmp_path, COORDINATOR_OPENS) as m:
        _, case_id = await opened_case(m, "coordinator")
        status, decided = await decide(m, case_id, {"stage": "first", "outcome": "positive"})
        assert status == 202, decided

        onward = await referred_on(m)
        path = f"/v1/cases/{case_id}/referrals/{onward}"
        before = len(events(m, AUTHORITY, "identification.sent"))
        notified = len(events(m, AUTHORITY, "protection.notified"))
        if link_first:
            clock.set_offset(offset, 86_400)  # a day on: the copies' envelopes are late
            for _ in range(2):
                status, body = await call(m, AUTHORITY, "PUT", path)
                assert status == 200, body
            assert len(events(m, AUTHORITY, "identification.sent")) == before  # not accepted
        await police_accepts(m, onward)
        assert before  # to the co-ordinator only
        clock.set_offset(offset, 86_400)  # a day on: the copies' envelopes are late
        for _ in range(2):
            status, body = await call(m, AUTHORITY, "PUT", path)
            assert status == 200, body

        async def holds_all() -> bool:
            status, d = await call(
                m, "police", "GET", f"/v1/referrals/{onward}/decisions?sender={AUTHORITY}"
            )
            status2, p = await call(
                m, "police", "GET", f"/v1/referrals/{onward}/protections?sender={AUTHORITY}"
            )
            return status == status2 == 200 and len(d["items"]) == 1 and len(p["items"]) == 2

        await eventually(holds_all, what="police to hold the case so far")
        _, d = await call(
            m, "police", "GET", f"/v1/referrals/{onward}/decisions?sender={AUTHORITY}"
        )
        [decision] = d["items"]
        assert (decision["decision_id"], decision["reason"]) == (decided["decision_id"], None)
        sent = events(m, AUTHORITY, "identification.sent")[before:]
        assert [(e.referral_id, e.counterpart) for e in sent] == [(onward, "police")]
        told = events(m, AUTHORITY, "protection.notified")[notified:]
        assert sorted(dict(e.labels)["protection"] for e in told) == ["no-removal", "reflection"]
        assert {(e.referral_id, e.counterpart) for e in told} == {(onward, "police")}
        received = events(m, "police", "protection.received")
        assert len(received) == 2 and not rejections(m.database("police"))
