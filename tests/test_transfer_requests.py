"""Transfer requests between real agents (PROTOCOL §8.10 "`transfer-request`"): police
refers to the shelter; the shelter asks police, the pair's owner, for the case. Police's
agent stores it, tells its system once per event id, and refuses it with a refusal reason;
the shelter sees it delivered, then refused. A request revoked reaches the owner; a hostile
agency asking on a pair it does not hold, or stepping a request it does not share, is
refused `not-shared` with nothing stored; the API refuses what it would not send, with
problem+json naming what was wrong."""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from aiohttp import web

from agents import transfers as T
from agents.openapi import OPENAPI
from keys.audit import decode_signed_event
from runtime import clock

from . import samples
from .support import Mechanism, agency_keys, eventually, running_mechanism, sealed, webhook_receiver
from .test_agent import delivered
from .test_erasure import _consent_of, _withdrawn
from .test_sender_scope import publish, rejected

#: The events police's agent sent its system (webhooks), in order of arrival.
POLICE_EVENTS: list[dict[str, Any]] = []


async def _collect(request: web.Request) -> web.Response:
    POLICE_EVENTS.append(json.loads(await request.read()))
    return web.Response(status=200)


@pytest.fixture
async def mechanism(tmp_path: Path) -> AsyncIterator[Mechanism]:
    POLICE_EVENTS.clear()
    async with (
        webhook_receiver(_collect) as url,
        running_mechanism(tmp_path, webhooks={"police": url}) as m,
    ):
        yield m


async def call(m: Mechanism, agency: str, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    status, body, ctype = await m.api(agency).call(method, path, **kw)
    if status >= 400:
        assert ctype == "application/problem+json", (status, body)
    return status, body


def transfer_rows(m: Mechanism, agency: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(m.database(agency))
    try:
        return conn.execute("SELECT * FROM transfer_requests ORDER BY seq").fetchall()
    finally:
        conn.close()


def audit_kinds(m: Mechanism, agency: str, prefix: str) -> list[tuple[str, str | None]]:
    """(kind, reason) of the agency's audit events whose kind starts with `prefix`."""
    conn = sqlite3.connect(m.database(agency))
    try:
        events = [bytes(r[0]) for r in conn.execute("SELECT event FROM audit_outbox")]
    finally:
        conn.close()
    decoded = [decode_signed_event(e)[0] for e in events]
    return [(e.kind, e.reason) for e in decoded if e.kind.startswith(prefix)]


async def referred(m: Mechanism) -> str:
    rid = await m.api("police").refer(["shelter"], samples.referral())
    await delivered(m, "police", rid)
    return rid


async def requested(m: Mechanism) -> tuple[str, str]:
    """(referral id, request id) of a request the shelter sent police on its referral."""
    rid = await referred(m)
    status, sent = await call(m, "shelter", "POST", "/v1/transfer-requests", json=asking(rid))
    assert status == 202, sent
    return rid, sent["request_id"]


async def state_of(m: Mechanism, agency: str, request_id: str, state: str) -> dict[str, Any]:
    async def check() -> bool:
        status, body = await call(m, agency, "GET", f"/v1/transfer-requests/{request_id}")
        return status == 200 and body["state"] == state

    await eventually(check, timeout=30, what=f"{agency} to hold the request {state}")
    return (await call(m, agency, "GET", f"/v1/transfer-requests/{request_id}"))[1]


async def referred_then_withdrawn(m: Mechanism) -> str:
    """A referral police sent the shelter under a consent the person then withdrew: the
    shelter erased it."""
    receipt_id = await _consent_of(m, "police", "shelter")
    rid = await m.api("police").refer(
        ["shelter"], samples.referral(legal_basis="consent", consent_receipt_id=receipt_id)
    )
    await delivered(m, "police", rid)
    await _withdrawn(m, "police", receipt_id)
    return rid


def asking(rid: str, **over: Any) -> dict[str, Any]:
    return {
        "owner": "police",
        "referral_id": rid,
        "case_id": None,
        "reason": "migration_or_change_of_location",
        **over,
    }


async def test_a_request_reaches_the_owner_which_refuses_it(mechanism: Mechanism) -> None:
    """The shelter asks police for the case: police holds it `delivered` and its system
    hears once (deduplicated by event id); the shelter sees it `delivered` on police's
    receipt. Police refuses (`in-progress-here`): the shelter holds it `refused` with the
    reason; revoking it then is 409 naming no allowed step. Both ledgers hold ids and
    codes only."""
    m = mechanism
    rid = await referred(m)
    status, sent = await call(m, "shelter", "POST", "/v1/transfer-requests", json=asking(rid))
    assert status == 202, sent
    request_id = sent["request_id"]
    assert (sent["state"], sent["side"], sent["owner"]) == ("requested", "requester", "police")

    async def told() -> bool:
        return any(e["type"] == "transfer_request.received" for e in POLICE_EVENTS)

    await eventually(told, timeout=30, what="police's system to hear of the request")
    received = {e["id"]: e for e in POLICE_EVENTS if e["type"] == "transfer_request.received"}
    assert len(received) == 1
    data = next(iter(received.values()))["data"]
    assert (data["request_id"], data["requester"], data["referral_id"]) == (
        request_id,
        "shelter",
        rid,
    )
    assert (data["state"], data["side"], data["reason"]) == (
        "delivered",
        "owner",
        "migration_or_change_of_location",
    )
    await state_of(m, "shelter", request_id, "delivered")

    path = f"/v1/transfer-requests/{request_id}"
    assert (await call(m, "police", "POST", path + "/revoke"))[0] == 404  # not its request
    status, problem = await call(m, "police", "POST", path + "/refuse", json={"reason": "nope"})
    assert status == 400 and "not-owner" in problem["detail"]
    status, refused = await call(
        m, "police", "POST", path + "/refuse", json={"reason": "in-progress-here"}
    )
    assert status == 202, refused
    assert (refused["state"], refused["step_reason"]) == ("refused", "in-progress-here")
    seen = await state_of(m, "shelter", request_id, "refused")
    assert seen["step_reason"] == "in-progress-here"
    status, problem = await call(m, "shelter", "POST", path + "/revoke")
    assert (status, problem["allowed"]) == (409, [])

    assert audit_kinds(m, "shelter", "transfer-") == [
        ("transfer-request.sent", None),
        ("transfer-step.received", "in-progress-here"),
    ]
    assert audit_kinds(m, "police", "transfer-") == [
        ("transfer-request.received", None),
        ("transfer-step.sent", "in-progress-here"),
    ]
    status, page = await call(m, "shelter", "GET", "/v1/transfer-requests")
    assert status == 200 and [r["request_id"] for r in page["items"]] == [request_id]


async def test_a_revoked_request_is_revoked_at_the_owner(mechanism: Mechanism) -> None:
    """The shelter revokes its request: police holds it `revoked` and its system hears once;
    refusing it then is 409 naming no allowed step."""
    m = mechanism
    rid = await referred(m)
    status, sent = await call(
        m, "shelter", "POST", "/v1/transfer-requests", json=asking(rid, reason="other")
    )
    assert status == 202, sent
    request_id = sent["request_id"]
    await state_of(m, "police", request_id, "delivered")
    path = f"/v1/transfer-requests/{request_id}"
    status, revoked = await call(m, "shelter", "POST", path + "/revoke")
    assert (status, revoked["state"]) == (202, "revoked"), revoked
    await state_of(m, "police", request_id, "revoked")

    async def told() -> bool:
        return any(e["type"] == "transfer_step.received" for e in POLICE_EVENTS)

    await eventually(told, timeout=30, what="police's system to hear of the revocation")
    steps = {e["id"]: e["data"] for e in POLICE_EVENTS if e["type"] == "transfer_step.received"}
    assert [(d["request_id"], d["state"]) for d in steps.values()] == [(request_id, "revoked")]
    status, problem = await call(m, "police", "POST", path + "/refuse", json={"reason": "other"})
    assert (status, problem["allowed"]) == (409, [])


async def test_a_hostile_agency_asking_on_a_pair_it_does_not_hold_is_refused(
    mechanism: Mechanism,
) -> None:
    """The co-ordinator's agent signs a request naming police's pair with the shelter, and
    a refusal step of a request police never received from it: police refuses both
    `not-shared` and stores nothing; a request naming another owner is `not-shared` too."""
    m = mechanism
    rid = await referred(m)
    coordinator = agency_keys(m, "coordinator")
    now = clock.now()
    on_theirs = T.TransferRequest(secrets.token_hex(16), None, "police", rid, "other", now)
    not_owner = T.TransferRequest(secrets.token_hex(16), None, "shelter", rid, "other", now)
    step = T.TransferStep(
        T.REQUEST, secrets.token_hex(16), "police", "delivered", "revoked", "requester", None, now
    )
    forged = [
        sealed(m, coordinator, "police", T.TRANSFER_REQUEST, on_theirs.encode()),
        sealed(m, coordinator, "police", T.TRANSFER_REQUEST, not_owner.encode()),
        sealed(m, coordinator, "police", T.TRANSFER_STEP, step.encode()),
    ]
    for data in forged:
        await publish(m, "coordinator", "police", data)
    for data in forged:
        await rejected(m, "police", data, "not-shared")
    assert transfer_rows(m, "police") == []
    assert not any(e["type"] == "transfer_request.received" for e in POLICE_EVENTS)


async def test_the_api_refuses_what_it_would_not_send(mechanism: Mechanism) -> None:
    """400 for a bad owner, referral id, case id or reason, 422 for an unknown member, 404
    for a pair not received from that owner (police's own referral, asked of itself, or
    named under another owner), 404 and 400 for unknown and malformed request ids; nothing
    is stored or sent."""
    m = mechanism
    rid = await referred(m)
    bad = [
        ("shelter", asking(rid, owner="Police!"), 400, "owner"),
        ("shelter", asking(rid, referral_id="x"), 400, "referral_id"),
        ("shelter", asking(rid, case_id="y"), 400, "case_id"),
        ("shelter", {k: v for k, v in asking(rid).items() if k != "case_id"}, 400, "case_id"),
        ("shelter", asking(rid, reason="no-capacity"), 400, "reason"),
        ("shelter", {**asking(rid), "name": "x"}, 422, "unknown fields"),
        ("shelter", asking(rid, owner="coordinator"), 404, "no referral"),
        ("police", asking(rid), 404, "no referral"),
        ("shelter", asking(rid, case_id=secrets.token_hex(16)), 422, "case_id"),
    ]
    for agency, doc, want, words in bad:
        status, problem = await call(m, agency, "POST", "/v1/transfer-requests", json=doc)
        assert status == want and words in problem["detail"], (doc, problem)
    missing = f"/v1/transfer-requests/{secrets.token_hex(16)}"
    assert (await call(m, "shelter", "GET", missing))[0] == 404
    assert (await call(m, "shelter", "POST", missing + "/revoke"))[0] == 404
    assert (await call(m, "shelter", "GET", "/v1/transfer-requests/nope"))[0] == 400
    assert transfer_rows(m, "shelter") == [] and transfer_rows(m, "police") == []
    assert audit_kinds(m, "shelter", "transfer-") == []


async def test_a_revocation_before_the_receipt_is_taken_by_the_owner(
    mechanism: Mechanism,
) -> None:
    """Police's agent is down: the shelter's request stays `requested` and it revokes it from
    there. Police, back, holds the request `delivered` as it arrives and takes the
    revocation from `requested` as from its `delivered` (PROTOCOL §8.10): `revoked` on both
    sides, the late receipt changing nothing at the shelter."""
    m = mechanism
    rid = await referred(m)
    await m.stop("police")
    status, sent = await call(m, "shelter", "POST", "/v1/transfer-requests", json=asking(rid))
    assert (status, sent["state"]) == (202, "requested"), sent
    request_id = sent["request_id"]
    status, revoked = await call(m, "shelter", "POST", f"/v1/transfer-requests/{request_id}/revoke")
    assert (status, revoked["state"]) == (202, "revoked"), revoked
    await m.start("police")
    await state_of(m, "police", request_id, "revoked")

    async def receipt_back() -> bool:
        return ("receipt.received", None) in audit_kinds(m, "shelter", "receipt.")

    await eventually(receipt_back, timeout=30, what="police's receipt back at the shelter")
    assert (await call(m, "shelter", "GET", f"/v1/transfer-requests/{request_id}"))[1][
        "state"
    ] == "revoked"


async def test_a_request_again_and_a_step_from_another_state_are_unexpected(
    mechanism: Mechanism,
) -> None:
    """The shelter's agent signs its request's id again in a new envelope, and a revocation
    of the request police already refused: police refuses both `unexpected` and its row is
    as it was."""
    m = mechanism
    rid, request_id = await requested(m)
    await state_of(m, "police", request_id, "delivered")
    path = f"/v1/transfer-requests/{request_id}/refuse"
    assert (await call(m, "police", "POST", path, json={"reason": "other"}))[0] == 202
    await state_of(m, "shelter", request_id, "refused")
    before = transfer_rows(m, "police")
    shelter = agency_keys(m, "shelter")
    now = clock.now()
    again = T.TransferRequest(request_id, None, "police", rid, "other", now)
    revoke = T.TransferStep(
        T.REQUEST, request_id, "police", "delivered", "revoked", "requester", None, now
    )
    forged = [
        sealed(m, shelter, "police", T.TRANSFER_REQUEST, again.encode()),
        sealed(m, shelter, "police", T.TRANSFER_STEP, revoke.encode()),
    ]
    for data in forged:
        await publish(m, "shelter", "police", data)
    for data in forged:
        await rejected(m, "police", data, "unexpected")
    assert transfer_rows(m, "police") == before


async def test_a_pair_erased_at_the_requester_asks_for_nothing(mechanism: Mechanism) -> None:
    """Police refers to the shelter under a consent, then the person withdraws it: the
    shelter erased what it received, and asking police for the case under that pair is
    409 `erased`, nothing stored or sent."""
    m = mechanism
    rid = await referred_then_withdrawn(m)
    status, problem = await call(m, "shelter", "POST", "/v1/transfer-requests", json=asking(rid))
    assert (status, problem["reason"]) == (409, "erased"), problem
    assert transfer_rows(m, "shelter") == [] and audit_kinds(m, "shelter", "transfer-") == []


async def test_an_owners_step_to_granted_on_its_own_is_unexpected(mechanism: Mechanism) -> None:
    """Police's agent signs a step of the shelter's request from `delivered` to `granted`,
    which the table lists but this release never sends without its case transfer: the
    shelter refuses it `unexpected`, its row is as it was, and it can still revoke."""
    m = mechanism
    _, request_id = await requested(m)
    await state_of(m, "shelter", request_id, "delivered")
    before = transfer_rows(m, "shelter")
    grant = T.TransferStep(
        T.REQUEST, request_id, "police", "delivered", "granted", "owner", None, clock.now()
    )
    data = sealed(m, agency_keys(m, "police"), "shelter", T.TRANSFER_STEP, grant.encode())
    await publish(m, "police", "shelter", data)
    await rejected(m, "shelter", data, "unexpected")
    assert transfer_rows(m, "shelter") == before
    assert audit_kinds(m, "shelter", "transfer-step.") == []
    status, revoked = await call(m, "shelter", "POST", f"/v1/transfer-requests/{request_id}/revoke")
    assert (status, revoked["state"]) == (202, "revoked"), revoked


async def test_an_owner_reusing_the_requesters_id_leaves_its_request_its_own(
    mechanism: Mechanism,
) -> None:
    """The shelter asks police for the case; police's agent, which learnt the request id,
    sends the shelter a request of its own under that id, on a referral the shelter sent it.
    The bare id is then 409 for GET, naming both requesters (as the API schema declares),
    but the shelter's revoke names its own request alone, and its refuse the other's alone;
    each side's steps are 404 on the other's request."""
    m = mechanism
    _, request_id = await requested(m)
    await state_of(m, "police", request_id, "delivered")
    theirs = await m.api("shelter").refer(["police"], samples.referral())
    await delivered(m, "shelter", theirs)
    hostile = T.TransferRequest(request_id, None, "shelter", theirs, "other", clock.now())
    data = sealed(m, agency_keys(m, "police"), "shelter", T.TRANSFER_REQUEST, hostile.encode())
    await publish(m, "police", "shelter", data)

    async def both_held() -> bool:
        return len(transfer_rows(m, "shelter")) == 2

    await eventually(both_held, timeout=30, what="the shelter to hold police's request too")
    path = f"/v1/transfer-requests/{request_id}"
    status, problem = await call(m, "shelter", "GET", path)
    assert (status, problem["requesters"]) == (409, ["police", "shelter"]), problem
    schema = OPENAPI["components"]["responses"]["Problem"]["content"]
    jsonschema.validate(problem, schema["application/problem+json"]["schema"])
    own = f"{path}/refuse?requester=shelter"
    assert (await call(m, "shelter", "POST", own, json={"reason": "other"}))[0] == 404
    assert (await call(m, "shelter", "POST", f"{path}/revoke?requester=police"))[0] == 404
    status, revoked = await call(m, "shelter", "POST", path + "/revoke")
    assert (status, revoked["requester"], revoked["state"]) == (202, "shelter", "revoked")
    await state_of(m, "police", request_id, "revoked")
    status, refused = await call(m, "shelter", "POST", path + "/refuse", json={"reason": "other"})
    assert (status, refused["requester"], refused["state"]) == (202, "police", "refused")


async def test_a_request_on_a_pair_whose_consent_was_withdrawn_is_not_shared(
    mechanism: Mechanism,
) -> None:
    """Police refers to the shelter under a consent the person then withdraws; the shelter's
    agent signs a request on that pair anyway: police refuses it `not-shared` (the pair is
    no longer shared) and stores nothing."""
    m = mechanism
    rid = await referred_then_withdrawn(m)
    late = T.TransferRequest(secrets.token_hex(16), None, "police", rid, "other", clock.now())
    data = sealed(m, agency_keys(m, "shelter"), "police", T.TRANSFER_REQUEST, late.encode())
    await publish(m, "shelter", "police", data)
    await rejected(m, "police", data, "not-shared")
    assert transfer_rows(m, "police") == []
    assert not any(e["type"] == "transfer_request.received" for e in POLICE_EVENTS)


async def test_a_request_the_owner_refuses_shows_its_failure(mechanism: Mechanism) -> None:
    """Police withdraws its referral; the shelter, which still holds it, asks police for the
    case under it: police's agent refuses the request `not-shared` (the pair is withdrawn),
    stores nothing and tells the shelter, whose request stays `requested` with that
    `failure` shown."""
    m = mechanism
    rid = await referred(m)
    status, body = await call(
        m, "police", "POST", f"/v1/referrals/{rid}/transitions", json={"to": "withdrawn"}
    )
    assert status == 202, body

    async def withdrawn_there() -> bool:
        status, body = await call(m, "shelter", "GET", f"/v1/referrals/{rid}")
        return status == 200 and body["state"] == "withdrawn"

    await eventually(withdrawn_there, timeout=30, what="the withdrawal to reach the shelter")
    status, sent = await call(m, "shelter", "POST", "/v1/transfer-requests", json=asking(rid))
    assert (status, sent["failure"]) == (202, None), sent
    path = f"/v1/transfer-requests/{sent['request_id']}"

    async def failed() -> bool:
        status, body = await call(m, "shelter", "GET", path)
        return status == 200 and body["failure"] is not None

    await eventually(failed, timeout=30, what="the shelter to hear its request was refused")
    seen = (await call(m, "shelter", "GET", path))[1]
    assert (seen["state"], seen["failure"]) == ("requested", "not-shared"), seen
    page = (await call(m, "shelter", "GET", "/v1/transfer-requests"))[1]["items"]
    assert [(r["request_id"], r["failure"]) for r in page] == [(sent["request_id"], "not-shared")]
    assert transfer_rows(m, "police") == []
