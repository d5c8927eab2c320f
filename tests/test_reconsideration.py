"""Reconsideration requests between real agents (PROTOCOL §8.7 "Reconsideration requests"):
police, the referrer, asks the competent authority to reconsider a negative first stage it
holds; its own API refuses what the authority would (an unknown ground, a decision it does
not hold as the pair's party, a positive one, one past the window) and sends nothing. The
authority stores the request and moves the case to `reconsidering_first`, shown in its
case and told to its system; a second request while one is pending, and one from the
co-ordinator (which oversees, and is no party of the pair), are refused on the record."""

from __future__ import annotations

import dataclasses
import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from nacl.signing import SigningKey

from agents.identification import _in_order, _supersedable
from agents.store import StoredDecision
from keys import codec
from keys import decision as D
from nrm import admin
from runtime import clock

from .support import Mechanism, agency_keys, eventually, sealed, webhook_receiver
from .test_identification import (
    AUTHORITY,
    COORDINATOR_OPENS,
    POLICY,
    authority_mechanism,
    call,
    decide,
    events,
    held,
    opened_case,
    police_accepts,
    referred_on,
)
from .test_sender_scope import publish, rejected, rejections

DAY = 86_400
#: As test_identification's, with no time to ask for reconsideration in.
SHUT = dataclasses.replace(POLICY, reconsideration_window_days=0)
#: The co-ordinator opens the case (test_identification's), and the second stage may follow
#: the first at once.
AT_ONCE = dataclasses.replace(COORDINATOR_OPENS, second_stage_min_days=0)


#: The events the authority's agent sent its case system (webhooks), in order of arrival.
AUTHORITY_EVENTS: list[dict[str, Any]] = []


async def _collect(request: web.Request) -> web.Response:
    AUTHORITY_EVENTS.append(json.loads(await request.read()))
    return web.Response(status=200)


@pytest.fixture
async def authority(tmp_path: Path) -> AsyncIterator[Mechanism]:
    AUTHORITY_EVENTS.clear()
    async with (
        webhook_receiver(_collect) as url,
        authority_mechanism(tmp_path, POLICY, webhooks={AUTHORITY: url}) as m,
    ):
        yield m


async def refused_first(m: Mechanism) -> tuple[str, str, str]:
    """A case whose negative first stage police and the co-ordinator hold: (rid, case,
    decision id)."""
    rid, case_id = await opened_case(m)
    status, decided = await decide(
        m, case_id, {"stage": "first", "outcome": "negative", "reason": "no-indicators"}
    )
    assert status == 202, decided
    for agency in ("police", "coordinator"):
        await held(m, agency, rid, 1)
    return rid, case_id, decided["decision_id"]


async def case_in(m: Mechanism, case_id: str, state: str) -> None:
    """Wait until the authority's case is in `state`."""

    async def there() -> bool:
        status, case = await call(m, AUTHORITY, "GET", f"/v1/cases/{case_id}")
        return status == 200 and case["state"] == state

    await eventually(there, what=f"the authority's case to be {state}")


async def provider_holds(m: Mechanism, onward: str, count: int) -> list[dict[str, Any]]:
    """The decisions police holds under the authority's referral `onward`, once `count`."""
    found: list[dict[str, Any]] = []

    async def arrived() -> bool:
        nonlocal found
        status, d = await call(
            m, "police", "GET", f"/v1/referrals/{onward}/decisions?sender={AUTHORITY}"
        )
        found = d["items"] if status == 200 else []
        return len(found) == count

    await eventually(arrived, what=f"police to hold {count} decision(s) as a provider")
    return found


async def ask(
    m: Mechanism, agency: str, rid: str, doc: dict[str, Any], sender: str = "police"
) -> tuple[int, Any]:
    return await call(
        m, agency, "POST", f"/v1/referrals/{rid}/reconsiderations?sender={sender}", json=doc
    )


async def test_the_referrer_asks_and_its_api_refuses_what_the_authority_would(
    authority: Mechanism,
) -> None:
    """Police's API: 400 naming the grounds for an unknown one, 404 for a decision it does
    not hold, 404 at the co-ordinator (a copy held to oversee, not as the pair's party),
    409 `not-negative` for a positive decision; then a request goes to the authority, on the
    record with the decision's stage and the ground as its reason; a refused one sent
    nothing. The authority stores it and moves the case to `reconsidering_first`, shown
    with the pending request in its case, audited and told to its system; a second request
    while it is pending is refused `unexpected`."""
    m = authority
    rid, case_id, decision_id = await refused_first(m)
    status, problem = await ask(m, "police", rid, {"decision_id": decision_id, "ground": "no"})
    assert status == 400 and "new-information, procedural-error" in problem["detail"], problem
    status, problem = await ask(m, "police", rid, {"decision_id": "0" * 32, "ground": "age-route"})
    assert status == 404, problem
    status, problem = await ask(
        m, "coordinator", rid, {"decision_id": decision_id, "ground": "age-route"}
    )
    assert status == 404, problem

    other, other_case = await opened_case(m)
    status, positive = await decide(m, other_case, {"stage": "first", "outcome": "positive"})
    assert status == 202, positive
    await held(m, "police", other, 1)
    status, problem = await ask(
        m, "police", other, {"decision_id": positive["decision_id"], "ground": "age-route"}
    )
    assert (status, problem.get("reason")) == (409, "not-negative"), problem
    assert events(m, "police", "reconsideration.") == []

    status, sent = await ask(
        m, "police", rid, {"decision_id": decision_id, "ground": "new-information"}
    )
    assert status == 202, sent
    assert (sent["decision_id"], sent["stage"], sent["ground"]) == (
        decision_id,
        "first",
        "new-information",
    )
    assert (sent["authority"], sent["owner"], sent["referral_id"]) == (AUTHORITY, "police", rid)
    [event] = events(m, "police", "reconsideration.")
    assert (event.kind, event.referral_id, event.counterpart, event.reason) == (
        "reconsideration.requested",
        rid,
        AUTHORITY,
        "new-information",
    )
    assert dict(event.labels) == {"stage": "first"}

    await case_in(m, case_id, "reconsidering_first")
    _, case = await call(m, AUTHORITY, "GET", f"/v1/cases/{case_id}")
    [pending] = case["reconsiderations"]
    assert pending == {
        "request_id": sent["request_id"],
        "requester": "police",
        "case_id": case_id,
        "decision_id": decision_id,
        "stage": "first",
        "ground": "new-information",
        "at": sent["at"],
        "received_at": pending["received_at"],
        "owner": "police",
        "referral_id": rid,
        "pending": True,
        "answered_by": None,
        "ended_by": None,
    }
    [received] = events(m, AUTHORITY, "reconsideration.")
    assert (received.kind, received.referral_id, received.counterpart, received.reason) == (
        "reconsideration.received",
        rid,
        "police",
        "new-information",
    )
    assert dict(received.labels) == {"stage": "first"}

    async def told() -> bool:
        return any(e["type"] == "reconsideration.received" for e in AUTHORITY_EVENTS)

    await eventually(told, what="the authority's system to be told")
    # one event, however often delivered (webhooks are at least once)
    [hook] = {
        e["id"]: e for e in AUTHORITY_EVENTS if e["type"] == "reconsideration.received"
    }.values()
    assert hook["data"] == pending

    # a second request while the first is pending: police's API cannot know, the authority
    # refuses it `unexpected`, and the case keeps the one request
    status, again = await ask(
        m, "police", rid, {"decision_id": decision_id, "ground": "procedural-error"}
    )
    assert status == 202, again

    async def refused() -> bool:
        return any(r == "unexpected" for r, _ in rejections(m.database(AUTHORITY)))

    await eventually(refused, what="the authority to refuse the second request")
    _, case = await call(m, AUTHORITY, "GET", f"/v1/cases/{case_id}")
    assert case["state"] == "reconsidering_first" and len(case["reconsiderations"]) == 1


async def test_a_coordinator_may_not_ask(authority: Mechanism) -> None:
    """The co-ordinator holds the negative decision under police's pair, to oversee: its
    request, sealed past its own agent, is refused `not-shared`, and the case stays
    `first_negative` with no request. Once the directory no longer lists the authority as
    one, police's API refuses to ask it (409 `not-for-this-role`) and sends nothing."""
    m = authority
    rid, case_id, decision_id = await refused_first(m)
    body = codec.pack(
        [1, secrets.token_hex(16), decision_id, "police", rid, "new-information", clock.now()]
    )
    data = sealed(m, agency_keys(m, "coordinator"), AUTHORITY, "reconsideration-request", body)
    await publish(m, "coordinator", AUTHORITY, data)
    await rejected(m, AUTHORITY, data, "not-shared")
    status, case = await call(m, AUTHORITY, "GET", f"/v1/cases/{case_id}")
    assert status == 200 and case["state"] == "first_negative", case
    assert case["reconsiderations"] == []

    identity = admin.PublicIdentity.from_json(m.setups[AUTHORITY].identity_path.read_bytes())
    admin.add_agency(m.sandbox.admin, identity, roles=["ngo"])
    m.sandbox.sign_draft()
    await m.sandbox.publish()

    async def no_longer() -> bool:
        d = m.agents["police"].trust.directory
        return d is not None and d.agency(AUTHORITY).roles == ("ngo",)

    await eventually(no_longer, what="police to know the authority is one no more")
    doc = {"decision_id": decision_id, "ground": "new-information"}
    status, problem = await ask(m, "police", rid, doc)
    assert (status, problem.get("reason")) == (409, "not-for-this-role"), problem
    assert events(m, "police", "reconsideration.") == []


async def test_a_request_past_the_window_is_refused_by_the_sender(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A day after the decision (the clock moved), past a policy's window of 0 days,
    police's API refuses 409 `out-of-time` and sends nothing."""
    offset = tmp_path / "clock-offset"
    clock.set_offset(offset, 0)
    monkeypatch.setenv(clock.ENV, str(offset))
    async with authority_mechanism(tmp_path, SHUT) as m:
        rid, _, decision_id = await refused_first(m)
        clock.set_offset(offset, DAY)
        status, problem = await ask(
            m, "police", rid, {"decision_id": decision_id, "ground": "procedural-error"}
        )
        assert (status, problem.get("reason")) == (409, "out-of-time"), problem
        assert events(m, "police", "reconsideration.") == []


async def test_the_authority_answers_with_a_superseding_decision(authority: Mechanism) -> None:
    """While the request is pending, the authority's new first stage supersedes the negative
    one: police and the co-ordinator accept it beside the one it replaces, the case is
    `first_positive` and the request answered by it; deciding the stage again, superseding
    nothing, is 409 `already-decided` as before."""
    m = authority
    rid, case_id, decision_id = await refused_first(m)
    status, sent = await ask(
        m, "police", rid, {"decision_id": decision_id, "ground": "new-information"}
    )
    assert status == 202, sent

    await case_in(m, case_id, "reconsidering_first")
    status, answer = await decide(m, case_id, {"stage": "first", "outcome": "positive"})
    assert (status, answer["state"]) == (202, "first_positive"), answer
    for agency in ("police", "coordinator"):
        both = await held(m, agency, rid, 2)
        listed = {(d["decision_id"], d["outcome"], d["supersedes"]) for d in both}
        assert listed == {
            (decision_id, "negative", None),
            (answer["decision_id"], "positive", decision_id),
        }
    _, case = await call(m, AUTHORITY, "GET", f"/v1/cases/{case_id}")
    [request] = case["reconsiderations"]
    assert (request["pending"], request["answered_by"]) == (False, answer["decision_id"])
    assert sorted(d["supersedes"] or "" for d in case["decisions"]) == ["", decision_id]
    # a positive first stage, reached by reconsideration, starts the protections
    assert {p: v["state"] for p, v in case["protections"].items()} == {
        "no-removal": "on",
        "reflection": "running",
    }
    status, problem = await decide(
        m, case_id, {"stage": "first", "outcome": "negative", "reason": "duplicate"}
    )
    assert status == 409, problem
    assert not rejections(m.database("police")) and not rejections(m.database("coordinator"))


async def test_a_provider_linked_later_gets_the_decision_after_the_one_it_replaces(
    tmp_path: Path,
) -> None:
    """The co-ordinator's referral opens a case (the co-ordinator is its referrer, so it may
    ask); its negative first stage is reconsidered and superseded by a positive one; police,
    referred to and linked only then, gets both as late copies, the superseded one first,
    and refuses neither; its API refuses to ask about the superseded one (409
    `superseded`). A negative second stage then reaches police as a provider, which asks
    under its own pair with the authority: the case is `reconsidering_second`."""
    async with authority_mechanism(tmp_path, AT_ONCE) as m:
        rid, case_id = await opened_case(m, "coordinator")
        status, refused = await decide(
            m, case_id, {"stage": "first", "outcome": "negative", "reason": "no-indicators"}
        )
        assert status == 202, refused

        async def holds_it() -> bool:
            status, d = await call(m, "coordinator", "GET", f"/v1/referrals/{rid}/decisions")
            return status == 200 and len(d["items"]) == 1

        await eventually(holds_it, what="the co-ordinator to hold its decision")
        status, sent = await ask(
            m,
            "coordinator",
            rid,
            {"decision_id": refused["decision_id"], "ground": "procedural-error"},
            sender="coordinator",
        )
        assert status == 202, sent

        await case_in(m, case_id, "reconsidering_first")
        status, answer = await decide(m, case_id, {"stage": "first", "outcome": "positive"})
        assert status == 202, answer

        onward = await referred_on(m)
        await police_accepts(m, onward)
        status, body = await call(m, AUTHORITY, "PUT", f"/v1/cases/{case_id}/referrals/{onward}")
        assert status == 200, body

        items = await provider_holds(m, onward, 2)
        assert {(x["decision_id"], x["supersedes"], x["reason"]) for x in items} == {
            (refused["decision_id"], None, None),
            (answer["decision_id"], refused["decision_id"], None),
        }
        assert not rejections(m.database("police"))
        doc = {"decision_id": refused["decision_id"], "ground": "new-information"}
        status, problem = await ask(m, "police", onward, doc, sender=AUTHORITY)
        assert (status, problem.get("reason")) == (409, "superseded"), problem

        status, second = await decide(
            m, case_id, {"stage": "second", "outcome": "negative", "reason": "duplicate"}
        )
        assert status == 202, second

        await provider_holds(m, onward, 3)
        doc = {"decision_id": second["decision_id"], "ground": "not-reasoned"}
        status, sent = await ask(m, "police", onward, doc, sender=AUTHORITY)
        assert status == 202, sent
        assert (sent["owner"], sent["referral_id"], sent["stage"]) == (AUTHORITY, onward, "second")

        await case_in(m, case_id, "reconsidering_second")
        _, case = await call(m, AUTHORITY, "GET", f"/v1/cases/{case_id}")
        assert [(r["requester"], r["stage"], r["pending"]) for r in case["reconsiderations"]] == [
            ("coordinator", "first", False),
            ("police", "second", True),
        ]


def _stored(
    stage: str, outcome: str, *, supersedes: str | None = None, decision_id: str | None = None
) -> StoredDecision:
    """A decision of one case as a receiver stores it (signed, so its `supersedes` reads)."""
    decision = D.Decision(
        decision_id=decision_id or secrets.token_hex(16),
        authority="ca",
        case_id="c" * 32,
        stage=stage,
        outcome=outcome,
        reason_digest=None if outcome == D.POSITIVE else bytes(32),
        supersedes=supersedes,
        decided_at=1_700_000_000,
        age_route="adult",
    )
    signed = D.sign_decision(decision, SigningKey(bytes(32)))
    return StoredDecision(
        "ca", decision.decision_id, "c" * 32, stage, outcome, "police", "r" * 32, signed,
        None, None, 1,
    )  # fmt: skip


def test_what_a_reconsideration_may_replace() -> None:
    """Only a negative decision no other replaces, of the stage asked, and of the first
    stage only while no second stage stands on it (PROTOCOL §8.7)."""
    first_no = _stored(D.FIRST, D.NEGATIVE)
    assert _supersedable([first_no], D.FIRST) == {first_no.decision_id}
    assert _supersedable([first_no], D.SECOND) == set()
    first_yes = _stored(D.FIRST, D.POSITIVE)
    assert _supersedable([first_yes], D.FIRST) == set()  # a positive one is never replaced
    again = _stored(D.FIRST, D.NEGATIVE, supersedes=first_no.decision_id)
    assert _supersedable([first_no, again], D.FIRST) == {again.decision_id}
    second_no = _stored(D.SECOND, D.NEGATIVE)
    assert _supersedable([first_yes, second_no], D.SECOND) == {second_no.decision_id}
    assert _supersedable([first_no, second_no], D.FIRST) == set()  # a second stands on it


def test_late_copies_go_each_after_the_one_it_replaces() -> None:
    """Whatever the stored order and the ids, the first stage goes first and each decision
    after the one it supersedes (ids chosen so that the replacing one sorts first)."""
    old = _stored(D.FIRST, D.NEGATIVE, decision_id="f" * 32)
    new = _stored(D.FIRST, D.POSITIVE, supersedes=old.decision_id, decision_id="0" * 32)
    second = _stored(D.SECOND, D.POSITIVE, decision_id="1" * 32)
    for stored in ([new, old, second], [second, new, old], [old, second, new]):
        assert [d.decision_id for d in _in_order(stored)] == [
            old.decision_id,
            new.decision_id,
            second.decision_id,
        ]
