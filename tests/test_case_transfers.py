"""Case transfers between real agents (PROTOCOL §8.10 "`case-transfer`"): police referred
to the shelter, the shelter asked police for the case, and police hands it over with R, a
schema-v2 referral minimised for the shelter. Police holds the transfer `proposed`, then
`delivered` on the shelter's receipt, the request `granted`; the shelter holds it
`delivered` with R as its own record, the request `granted` too, and its system hears
once. The API refuses what it would not send; a hostile agency's transfer naming a request
it was never sent, reusing a transfer id, or carrying an R a referral could not carry, is
refused with nothing stored."""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from nacl.secret import SecretBox

from agents import referral as R
from agents import transfers as T
from agents.messages import CONSENT_WITHDRAWAL, REFERRAL, REFUSAL, Refusal
from agents.retention import DAY
from keys import AgencyKeys
from keys.audit import AuditEvent, decode_signed_event
from keys.codec import canonical_json
from keys.policy import Policy, Tier
from runtime import clock

from . import samples
from .support import (
    Mechanism,
    agency_keys,
    eventually,
    poll,
    publish_policy,
    query,
    running_mechanism,
    sealed,
    webhook_receiver,
)
from .test_access import move_clock
from .test_erasure import _consent_of, _files, _probes, _withdrawn, held_in_a_file
from .test_retention import short_schedule
from .test_sender_scope import publish, referral_body, rejected
from .test_subject_access import read_in_a_checkpoint
from .test_transfer_requests import asking, audit_kinds, call, referred, requested, state_of

#: The events the shelter's agent sent its system (webhooks), in order of arrival.
SHELTER_EVENTS: list[dict[str, Any]] = []


async def _collect(request: web.Request) -> web.Response:
    SHELTER_EVENTS.append(json.loads(await request.read()))
    return web.Response(status=200)


@pytest.fixture
async def mechanism(tmp_path: Path) -> AsyncIterator[Mechanism]:
    SHELTER_EVENTS.clear()
    async with (
        webhook_receiver(_collect) as url,
        running_mechanism(tmp_path, webhooks={"shelter": url}) as m,
    ):
        yield m


def v2(**over: Any) -> dict[str, Any]:
    """R as police's case system gives it: a schema-v2 adult referral under public task."""
    return samples.referral(schema_version="2", **over)


#: R as police's agent minimises it for the shelter (role `ngo`).
FOR_SHELTER = R.minimise(samples.BODY, R.categories_for_roles(["ngo"]))


def proposing(request_id: str | None = None, **over: Any) -> dict[str, Any]:
    return {
        "transferee": "shelter",
        "referral": v2(),
        "reason": "migration_or_change_of_location",
        "request_id": request_id,
        **over,
    }


def audit_events(m: Mechanism, agency: str) -> list[AuditEvent]:
    """The agency's audit events, oldest first."""
    rows = query(m.database(agency), "SELECT event FROM audit_outbox ORDER BY seq")
    return [decode_signed_event(bytes(r[0]))[0] for r in rows]


def transfer_rows(m: Mechanism, agency: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(m.database(agency))
    try:
        return conn.execute("SELECT * FROM case_transfers ORDER BY seq").fetchall()
    finally:
        conn.close()


async def transfer_state(m: Mechanism, agency: str, transfer_id: str, state: str) -> dict[str, Any]:
    async def check() -> bool:
        status, body = await call(m, agency, "GET", f"/v1/transfers/{transfer_id}")
        return status == 200 and body["state"] == state

    await eventually(check, timeout=30, what=f"{agency} to hold the transfer {state}")
    return (await call(m, agency, "GET", f"/v1/transfers/{transfer_id}"))[1]


def forged_transfer(
    m: Mechanism,
    sender: AgencyKeys,
    *,
    transfer_id: str | None = None,
    request_id: str | None = None,
    referral: dict[str, Any] | None = None,
    referral_id: str | None = None,
) -> bytes:
    """A `case-transfer` `sender`'s agent (or one acting as it) signs to the shelter."""
    r = v2(body=FOR_SHELTER) if referral is None else referral
    message = T.CaseTransfer(
        transfer_id=transfer_id or secrets.token_hex(16),
        case_id=None,
        reason="other",
        request_id=request_id,
        referral={**r, "referral_id": referral_id or secrets.token_hex(16)},
        attachment_key=None,
    )
    return sealed(m, sender, "shelter", T.CASE_TRANSFER, message.encode())


async def test_a_transfer_answering_a_request_reaches_the_transferee(mechanism: Mechanism) -> None:
    """Police answers the shelter's request with a transfer: `proposed` at police, then
    `delivered` on the receipt, the request `granted` at both sides; the shelter holds it
    `delivered` with R, its own record (a fresh id, none of police's pairs), and its system
    hears once; the ledgers hold `transfer.sent` and `transfer.received`."""
    m = mechanism
    rid, request_id = await requested(m)
    await state_of(m, "police", request_id, "delivered")
    status, sent = await call(m, "police", "POST", "/v1/transfers", json=proposing(request_id))
    assert status == 202, sent
    transfer_id = sent["transfer_id"]
    assert (sent["state"], sent["side"], sent["request_id"]) == ("proposed", "owner", request_id)
    assert sent["referral_id"] != rid and "referral" not in sent
    assert (await call(m, "police", "GET", f"/v1/transfer-requests/{request_id}"))[1][
        "state"
    ] == "granted"
    await transfer_state(m, "police", transfer_id, "delivered")
    held = await transfer_state(m, "shelter", transfer_id, "delivered")
    assert (held["side"], held["owner"], held["referral_id"]) == (
        "transferee",
        "police",
        sent["referral_id"],
    )
    assert held["referral"]["referral_id"] == sent["referral_id"]
    assert held["referral"]["schema_version"] == "2"
    assert held["referral"]["body"] == FOR_SHELTER  # minimised as a referral to it is
    assert "narrative" not in FOR_SHELTER
    await state_of(m, "shelter", request_id, "granted")

    async def told() -> bool:
        return any(e["type"] == "transfer.received" for e in SHELTER_EVENTS)

    await eventually(told, timeout=30, what="the shelter's system to hear of the transfer")
    received = {e["id"]: e["data"] for e in SHELTER_EVENTS if e["type"] == "transfer.received"}
    assert [(d["transfer_id"], d["state"]) for d in received.values()] == [
        (transfer_id, "delivered")
    ]
    assert "referral" not in next(iter(received.values()))  # ids and codes only
    assert audit_kinds(m, "police", "transfer.") == [("transfer.sent", None)]
    assert audit_kinds(m, "shelter", "transfer.") == [("transfer.received", None)]
    status, page = await call(m, "shelter", "GET", "/v1/transfers")
    assert status == 200 and [t["transfer_id"] for t in page["items"]] == [transfer_id]
    status, page = await call(m, "police", "GET", "/v1/transfers")
    assert status == 200 and [t["state"] for t in page["items"]] == ["delivered"]


async def test_a_transfer_without_a_request(mechanism: Mechanism) -> None:
    """A transfer need answer no request: the shelter holds it `delivered`, no request is
    touched."""
    m = mechanism
    status, sent = await call(m, "police", "POST", "/v1/transfers", json=proposing())
    assert status == 202, sent
    held = await transfer_state(m, "shelter", sent["transfer_id"], "delivered")
    assert held["request_id"] is None


async def test_the_transferee_keeps_r_sealed_only(mechanism: Mechanism) -> None:
    """R reaches the shelter as its own record, sealed in its transfer row: no file of the
    shelter's database (the database, -wal, -shm) holds a value of R's body in clear, the
    inbox row of the `case-transfer` keeping no body."""
    m = mechanism
    marker = "Transferee" + secrets.token_hex(8)
    body = {**samples.BODY, "names": {"given_names": "Mira", "family_name": marker}}
    status, sent = await call(
        m, "police", "POST", "/v1/transfers", json=proposing(referral=v2(body=body))
    )
    assert status == 202, sent
    held = await transfer_state(m, "shelter", sent["transfer_id"], "delivered")
    assert held["referral"]["body"]["names"]["family_name"] == marker
    files = _files(m.database("shelter"))
    assert any(p.name == "agent.db-wal" for p in files)  # the agent is running
    for p in files:
        assert marker.encode() not in p.read_bytes(), f"R is in clear in {p.name}"


async def test_the_api_refuses_what_it_would_not_send(mechanism: Mechanism) -> None:
    """400 for a bad transferee, reason, case or request id, or an R carrying its id; 422
    for a v1 R, an R a referral to the shelter could not be (no consent for a category),
    itself as transferee, an unknown member or a case_id police holds nothing of; 404 for a
    request_id no request of the shelter's names, 409 naming `allowed` for one refused
    already; 404 and 400 for unknown and malformed transfer ids; nothing stored or sent."""
    m = mechanism
    _, request_id = await requested(m)
    await state_of(m, "police", request_id, "delivered")
    for over, status in [
        ({"transferee": "Not An Id"}, 400),
        ({"reason": "because"}, 400),
        ({"case_id": "00"}, 400),
        ({"request_id": "zz"}, 400),
        ({"referral": {**v2(), "referral_id": secrets.token_hex(16)}}, 400),
        ({"referral": samples.referral()}, 422),
        ({"referral": v2(legal_basis="consent")}, 422),
        ({"transferee": "police"}, 422),
        ({"transferee": "nobody"}, 422),
        ({"case_id": secrets.token_hex(16)}, 422),
        ({"extra": 1}, 422),
        ({"request_id": secrets.token_hex(16)}, 404),
    ]:
        got, problem = await call(m, "police", "POST", "/v1/transfers", json=proposing(**over))
        assert got == status, (over, problem)
    path = f"/v1/transfer-requests/{request_id}"
    assert (await call(m, "police", "POST", path + "/refuse", json={"reason": "other"}))[0] == 202
    got, problem = await call(m, "police", "POST", "/v1/transfers", json=proposing(request_id))
    assert (got, problem["allowed"]) == (409, [])
    assert transfer_rows(m, "police") == []
    assert (await call(m, "police", "GET", f"/v1/transfers/{secrets.token_hex(16)}"))[0] == 404
    assert (await call(m, "police", "GET", "/v1/transfers/nope"))[0] == 400
    assert audit_kinds(m, "police", "transfer.") == []


async def test_a_hostile_transfer_is_refused_and_stores_nothing(mechanism: Mechanism) -> None:
    """The co-ordinator's agent signs transfers to the shelter: one answering the shelter's
    request to police (`not-shared`), one naming no request of the shelter's (`not-shared`),
    one with a v1 R (`schema-invalid`) and one whose R carries a category the shelter's role
    never receives (`category-not-allowed`): nothing stored, nothing granted, the system
    told of none."""
    m = mechanism
    _, request_id = await requested(m)
    coordinator = agency_keys(m, "coordinator")
    forged = [
        (forged_transfer(m, coordinator, request_id=request_id), "not-shared"),
        (forged_transfer(m, coordinator, request_id=secrets.token_hex(16)), "not-shared"),
        (forged_transfer(m, coordinator, referral=samples.referral()), "schema-invalid"),
        (forged_transfer(m, coordinator, referral=v2()), "category-not-allowed"),
    ]
    for data, _ in forged:
        await publish(m, "coordinator", "shelter", data)
    for data, reason in forged:
        await rejected(m, "shelter", data, reason)
    assert transfer_rows(m, "shelter") == []
    assert (await call(m, "shelter", "GET", f"/v1/transfer-requests/{request_id}"))[1]["state"] in (
        "requested",
        "delivered",
    )
    assert not any(e["type"] == "transfer.received" for e in SHELTER_EVENTS)


async def test_a_transfer_id_again_and_a_request_ended_are_unexpected(
    mechanism: Mechanism,
) -> None:
    """Police's agent sending a transfer id again is `unexpected`, the first transfer kept as
    it was; a transfer answering a request the shelter revoked is `unexpected` too."""
    m = mechanism
    rid = await referred(m)
    police = agency_keys(m, "police")
    transfer_id = secrets.token_hex(16)
    first = forged_transfer(m, police, transfer_id=transfer_id)
    await publish(m, "police", "shelter", first)
    await transfer_state(m, "shelter", transfer_id, "delivered")
    again = forged_transfer(m, police, transfer_id=transfer_id)
    await publish(m, "police", "shelter", again)
    await rejected(m, "shelter", again, "unexpected")
    status, sent = await call(m, "shelter", "POST", "/v1/transfer-requests", json=asking(rid))
    assert status == 202, sent
    path = f"/v1/transfer-requests/{sent['request_id']}"
    assert (await call(m, "shelter", "POST", path + "/revoke"))[0] == 202
    late = forged_transfer(m, police, request_id=sent["request_id"])
    await publish(m, "police", "shelter", late)
    await rejected(m, "shelter", late, "unexpected")
    assert len(transfer_rows(m, "shelter")) == 1


async def test_a_request_is_answered_by_one_transfer(mechanism: Mechanism) -> None:
    """Police's agent answering the shelter's request a second time, once the first
    transfer made it `granted`, is `unexpected`: the first transfer alone answers it."""
    m = mechanism
    _, request_id = await requested(m)
    police = agency_keys(m, "police")
    first_id = secrets.token_hex(16)
    first = forged_transfer(m, police, transfer_id=first_id, request_id=request_id)
    await publish(m, "police", "shelter", first)
    await transfer_state(m, "shelter", first_id, "delivered")
    await state_of(m, "shelter", request_id, "granted")
    second = forged_transfer(m, police, request_id=request_id)
    await publish(m, "police", "shelter", second)
    await rejected(m, "shelter", second, "unexpected")
    assert len(transfer_rows(m, "shelter")) == 1


async def test_r_and_the_senders_referrals_never_share_an_id(mechanism: Mechanism) -> None:
    """R's attachments are held under (sender, R's id): police's agent sending a transfer
    whose R reuses the id of its referral to the shelter is `reused-referral-id`, and so is
    its referral reusing the id of an R it sent the shelter; nothing of either is stored,
    so withdrawing the one never erases the other."""
    m = mechanism
    rid = await referred(m)
    police = agency_keys(m, "police")
    reusing = forged_transfer(m, police, referral_id=rid)
    await publish(m, "police", "shelter", reusing)
    await rejected(m, "shelter", reusing, "reused-referral-id")
    assert transfer_rows(m, "shelter") == []
    r_id = secrets.token_hex(16)
    transfer_id = secrets.token_hex(16)
    first = forged_transfer(m, police, transfer_id=transfer_id, referral_id=r_id)
    await publish(m, "police", "shelter", first)
    await transfer_state(m, "shelter", transfer_id, "delivered")
    referral = sealed(m, police, "shelter", REFERRAL, referral_body(m, r_id, to="shelter"))
    await publish(m, "police", "shelter", referral)
    await rejected(m, "shelter", referral, "reused-referral-id")
    assert (await call(m, "shelter", "GET", f"/v1/referrals/{r_id}"))[0] == 404
    # R erased (as a withdrawal or retention does) keeps its row, and so its id: a referral
    # reusing it now is refused all the same.
    store = m.agents["shelter"].store
    with store.transaction() as db:
        store.erase_transferred(db, "police", r_id)
    again = sealed(m, police, "shelter", REFERRAL, referral_body(m, r_id, to="shelter"))
    await publish(m, "police", "shelter", again)
    await rejected(m, "shelter", again, "reused-referral-id")
    assert (await call(m, "shelter", "GET", f"/v1/referrals/{r_id}"))[0] == 404


async def test_a_transfer_its_transferee_refused_ends_and_ungrants(mechanism: Mechanism) -> None:
    """The shelter's agent refuses police's `case-transfer` (its refusal notice, §6.5, while
    the shelter's agent is down and the transfer still `proposed`): police holds the
    transfer `expired` with the refusal as `failure`, and the request it answered, whose
    grant never reached the shelter, `delivered` again, as the shelter holds it: police may
    answer it with another transfer."""
    m = mechanism
    _, request_id = await requested(m)
    await state_of(m, "police", request_id, "delivered")
    await state_of(m, "shelter", request_id, "delivered")
    await m.stop("shelter")
    status, sent = await call(m, "police", "POST", "/v1/transfers", json=proposing(request_id))
    assert status == 202, sent
    conn = sqlite3.connect(m.database("police"))
    try:
        [(message_id, digest)] = conn.execute(
            "SELECT o.message_id, o.envelope_hash FROM outbox o JOIN case_transfers t"
            " ON t.message_id = o.message_id WHERE t.transfer_id = ?",
            (sent["transfer_id"],),
        ).fetchall()
    finally:
        conn.close()
    notice = Refusal(message_id, digest, "category-not-allowed", clock.now())
    data = sealed(m, agency_keys(m, "shelter"), "police", REFUSAL, notice.encode())
    await publish(m, "shelter", "police", data)
    ended = await transfer_state(m, "police", sent["transfer_id"], "expired")
    assert ended["failure"] == "category-not-allowed"
    await state_of(m, "police", request_id, "delivered")
    status, again = await call(m, "police", "POST", "/v1/transfers", json=proposing(request_id))
    assert status == 202, again


async def pair_cancelled(m: Mechanism, rid: str) -> None:
    """Police's pair `rid` with the shelter is `cancelled` `referred-elsewhere` at both."""
    status, mine = await call(m, "police", "GET", f"/v1/referrals/{rid}")
    assert status == 200 and [p["state"] for p in mine["recipients"]] == ["cancelled"], mine

    async def at_shelter() -> bool:
        status, theirs = await call(m, "shelter", "GET", f"/v1/referrals/{rid}")
        return status == 200 and theirs["state"] == "cancelled"

    await eventually(at_shelter, timeout=30, what="the shelter to hold the pair cancelled")
    status, steps = await call(m, "shelter", "GET", f"/v1/referrals/{rid}/history")
    assert status == 200 and steps["items"][-1]["reason"] == "referred-elsewhere", steps


async def delivered_transfer(m: Mechanism, request_id: str | None = None) -> str:
    """The id of a transfer police proposed to the shelter, `delivered` at both sides."""
    status, sent = await call(m, "police", "POST", "/v1/transfers", json=proposing(request_id))
    assert status == 202, sent
    await transfer_state(m, "police", sent["transfer_id"], "delivered")
    await transfer_state(m, "shelter", sent["transfer_id"], "delivered")
    return str(sent["transfer_id"])


async def test_an_accepted_transfer_completes_and_fulfils_its_request(
    mechanism: Mechanism,
) -> None:
    """The shelter accepts: police holds it `accepted`, may no longer revoke (409, allowed
    only `completed`), and completes it: the shelter holds it `completed`, its system hears
    each step once with kind `transfer`, the request it answered is `fulfilled` at both
    sides and the pair it was asked under `cancelled` `referred-elsewhere`; both ledgers
    hold the steps with their labels."""
    m = mechanism
    rid, request_id = await requested(m)
    await state_of(m, "police", request_id, "delivered")
    transfer_id = await delivered_transfer(m, request_id)
    path = f"/v1/transfers/{transfer_id}"
    assert (await call(m, "police", "POST", path + "/accept"))[0] == 404  # not its transferee
    assert (await call(m, "shelter", "POST", path + "/complete"))[0] == 404  # not its owner
    status, accepted = await call(m, "shelter", "POST", path + "/accept")
    assert (status, accepted["state"]) == (202, "accepted"), accepted
    await transfer_state(m, "police", transfer_id, "accepted")
    status, problem = await call(
        m, "police", "POST", path + "/revoke", json={"reason": "sent-in-error"}
    )
    assert (status, problem["allowed"]) == (409, ["completed"])
    status, done = await call(m, "police", "POST", path + "/complete")
    assert (status, done["state"]) == (202, "completed"), done
    await transfer_state(m, "shelter", transfer_id, "completed")
    await state_of(m, "shelter", request_id, "fulfilled")
    await state_of(m, "police", request_id, "fulfilled")
    await pair_cancelled(m, rid)  # the pair the request was asked under ended first

    async def told() -> bool:
        steps = [e for e in SHELTER_EVENTS if e["type"] == "transfer_step.received"]
        return any(e["data"]["state"] == "completed" for e in steps)

    await eventually(told, timeout=30, what="the shelter's system to hear of the completion")
    steps = {e["id"]: e["data"] for e in SHELTER_EVENTS if e["type"] == "transfer_step.received"}
    assert [(d["kind"], d["transfer_id"], d["state"]) for d in steps.values()] == [
        ("transfer", transfer_id, "completed")
    ]
    assert audit_kinds(m, "shelter", "transfer-step.") == [
        ("transfer-step.sent", None),
        ("transfer-step.received", None),
    ]
    assert audit_kinds(m, "police", "transfer-step.") == [
        ("transfer-step.received", None),
        ("transfer-step.sent", None),
    ]


async def test_a_rejected_transfer_lapses_its_request(mechanism: Mechanism) -> None:
    """The shelter rejects with a rejection reason (400 for another code): police holds it
    `rejected` with the reason, the request `lapsed` at both sides; nothing more is allowed
    (409, allowed none)."""
    m = mechanism
    _, request_id = await requested(m)
    await state_of(m, "police", request_id, "delivered")
    transfer_id = await delivered_transfer(m, request_id)
    path = f"/v1/transfers/{transfer_id}"
    status, problem = await call(
        m, "shelter", "POST", path + "/reject", json={"reason": "lost-contact"}
    )
    assert status == 400 and "no-capacity" in problem["detail"]
    assert (await call(m, "shelter", "POST", path + "/reject"))[0] == 400
    status, rejected_ = await call(
        m, "shelter", "POST", path + "/reject", json={"reason": "no-capacity"}
    )
    assert (status, rejected_["state"]) == (202, "rejected"), rejected_
    seen = await transfer_state(m, "police", transfer_id, "rejected")
    assert seen["step_reason"] == "no-capacity"
    await state_of(m, "police", request_id, "lapsed")
    await state_of(m, "shelter", request_id, "lapsed")
    status, problem = await call(m, "police", "POST", path + "/complete")
    assert (status, problem["allowed"]) == (409, [])
    status, problem = await call(m, "shelter", "POST", path + "/accept")
    assert (status, problem["allowed"]) == (409, [])


async def test_a_revoked_transfer_is_revoked_at_the_transferee(mechanism: Mechanism) -> None:
    """Police revokes before the shelter decided (a revocation reason): the shelter holds
    it `revoked`, its accepting then 409 naming no allowed step; completing a `delivered`
    transfer is 409 allowing only `revoked`."""
    m = mechanism
    transfer_id = await delivered_transfer(m)
    path = f"/v1/transfers/{transfer_id}"
    status, problem = await call(m, "police", "POST", path + "/complete")
    assert (status, problem["allowed"]) == (409, ["revoked"])
    status, revoked = await call(
        m, "police", "POST", path + "/revoke", json={"reason": "sent-in-error"}
    )
    assert (status, revoked["state"], revoked["step_reason"]) == (202, "revoked", "sent-in-error")
    await transfer_state(m, "shelter", transfer_id, "revoked")
    status, problem = await call(m, "shelter", "POST", path + "/accept")
    assert (status, problem["allowed"]) == (409, [])


async def test_a_hostile_step_or_a_reused_transfer_id_touches_nothing(
    mechanism: Mechanism,
) -> None:
    """The co-ordinator's agent steps police's transfer to the shelter: as its owner at the
    shelter, and as its transferee at police (`not-shared`); it sends the shelter a transfer
    of its own under police's transfer id, stored apart under (coordinator, id): police's
    stays `delivered` at both sides, the bare id is 409 naming both owners, and the
    shelter's step on police's (named by `?owner=`) reaches police. The shelter's agent
    stepping from a state police does not hold is `unexpected`."""
    m = mechanism
    transfer_id = await delivered_transfer(m)
    coordinator = agency_keys(m, "coordinator")
    shelter = agency_keys(m, "shelter")
    now = 1_700_000_000
    as_owner = T.TransferStep(
        T.TRANSFER, transfer_id, "shelter", "delivered", "revoked", "owner", "other", now
    )
    as_transferee = T.TransferStep(
        T.TRANSFER, transfer_id, "coordinator", "delivered", "accepted", "transferee", None, now
    )
    forged = [
        (sealed(m, coordinator, "shelter", T.TRANSFER_STEP, as_owner.encode()), "shelter"),
        (sealed(m, coordinator, "police", T.TRANSFER_STEP, as_transferee.encode()), "police"),
    ]
    for data, to in forged:
        await publish(m, "coordinator", to, data)
    for data, to in forged:
        await rejected(m, to, data, "not-shared")
    reused = forged_transfer(m, coordinator, transfer_id=transfer_id)
    await publish(m, "coordinator", "shelter", reused)

    async def both() -> bool:
        return len(transfer_rows(m, "shelter")) == 2

    await eventually(both, timeout=30, what="the shelter to hold the reused id apart")
    path = f"/v1/transfers/{transfer_id}"
    status, problem = await call(m, "shelter", "GET", path)
    assert (status, problem["owners"]) == (409, ["coordinator", "police"])
    assert (await call(m, "police", "GET", path))[1]["state"] == "delivered"
    status, _ = await call(m, "shelter", "POST", path + "/accept?owner=police")
    assert status == 202
    await transfer_state(m, "police", transfer_id, "accepted")
    late = T.TransferStep(
        T.TRANSFER, transfer_id, "shelter", "delivered", "rejected", "transferee", "other", now
    )
    data = sealed(m, shelter, "police", T.TRANSFER_STEP, late.encode())
    await publish(m, "shelter", "police", data)
    await rejected(m, "police", data, "unexpected")
    assert (await call(m, "police", "GET", path))[1]["state"] == "accepted"
    status, theirs = await call(m, "shelter", "GET", path + "?owner=coordinator")
    assert (status, theirs["state"]) == (200, "delivered")


async def test_a_transfer_left_undecided_expires_at_both_sides(mechanism: Mechanism) -> None:
    """Under a national policy whose `urgent` tier is due in 2 s, an urgent R's transfer
    left `delivered` expires at both sides on their own timers and its request lapses; the
    shelter's accepting it then is 409 naming no step. A routine one, due in two weeks,
    stays `delivered`."""
    m = mechanism
    priority = {**Policy(country="LT").priority, "emergency": Tier(1, 1), "urgent": Tier(1, 2)}
    await publish_policy(
        m,
        Policy(country="LT", without_consent={"police": ("public_task",)}, priority=priority),
    )
    _, request_id = await requested(m)
    await state_of(m, "police", request_id, "delivered")
    routine = await delivered_transfer(m)
    status, sent = await call(
        m,
        "police",
        "POST",
        "/v1/transfers",
        json=proposing(request_id, referral=v2(urgency="urgent")),
    )
    assert status == 202, sent
    transfer_id = sent["transfer_id"]
    await transfer_state(m, "shelter", transfer_id, "expired")
    await transfer_state(m, "police", transfer_id, "expired")
    await state_of(m, "police", request_id, "lapsed")
    await state_of(m, "shelter", request_id, "lapsed")
    status, problem = await call(m, "shelter", "POST", f"/v1/transfers/{transfer_id}/accept")
    assert (status, problem["allowed"]) == (409, [])
    assert (await call(m, "shelter", "GET", f"/v1/transfers/{routine}"))[1]["state"] == "delivered"


async def test_a_step_made_past_the_due_time_is_unexpected(mechanism: Mechanism) -> None:
    """Under a national policy (a routine R due in two weeks), the shelter's agent sending
    police an `accepted` step made past the transfer's due time is `unexpected`: police,
    whose timer has not run out yet, holds it `delivered` still, as the shelter's own timer
    would find it expired; a step made in time is taken."""
    m = mechanism
    await publish_policy(m, Policy(country="LT", without_consent={"police": ("public_task",)}))
    transfer_id = await delivered_transfer(m)
    late = T.TransferStep(
        T.TRANSFER,
        transfer_id,
        "shelter",
        "delivered",
        "accepted",
        "transferee",
        None,
        clock.now() + 15 * 86_400,
    )
    data = sealed(m, agency_keys(m, "shelter"), "police", T.TRANSFER_STEP, late.encode())
    await publish(m, "shelter", "police", data)
    await rejected(m, "police", data, "unexpected")
    assert (await call(m, "police", "GET", f"/v1/transfers/{transfer_id}"))[1]["state"] == (
        "delivered"
    )
    assert (await call(m, "shelter", "POST", f"/v1/transfers/{transfer_id}/accept"))[0] == 202
    await transfer_state(m, "police", transfer_id, "accepted")


#: What each party may move a transfer to, written apart from agents/transfers.py (PROTOCOL
#: §8.10 "Case transfer"): (state, party) -> allowed targets.
EXPECTED: dict[tuple[str, str], list[str]] = {
    ("delivered", "owner"): ["revoked"],
    ("delivered", "transferee"): ["accepted", "rejected"],
    ("accepted", "owner"): ["completed"],
    ("accepted", "transferee"): [],
    **{(s, p): [] for s in ("rejected", "revoked", "completed") for p in ("owner", "transferee")},
}
#: Each API step: (path, party, target, body).
STEPS = [
    ("accept", "transferee", "accepted", None),
    ("reject", "transferee", "rejected", {"reason": "out-of-area"}),
    ("revoke", "owner", "revoked", {"reason": "duplicate"}),
    ("complete", "owner", "completed", None),
]


async def test_the_api_follows_the_transfer_table(mechanism: Mechanism) -> None:
    """In each state a transfer reaches over the API, every step of either party that the
    independent table does not allow is 409 naming exactly the allowed targets, and the
    state held at both sides is unchanged by it."""
    m = mechanism
    agency = {"owner": "police", "transferee": "shelter"}
    reached: dict[str, str] = {}
    for route in (["accept"], ["accept", "complete"], ["reject"], ["revoke"], []):
        transfer_id = await delivered_transfer(m)
        state = "delivered"
        for name in route:
            _, party, state, body = next(s for s in STEPS if s[0] == name)
            path = f"/v1/transfers/{transfer_id}/{name}"
            status, moved = await call(m, agency[party], "POST", path, json=body)
            assert (status, moved["state"]) == (202, state), moved
            other = "police" if party == "transferee" else "shelter"
            await transfer_state(m, other, transfer_id, state)
        reached[state] = transfer_id
    assert set(reached) == {s for s, _ in EXPECTED}
    for state, transfer_id in reached.items():
        for name, party, target, body in STEPS:
            allowed = EXPECTED[(state, party)]
            if target in allowed:
                continue
            path = f"/v1/transfers/{transfer_id}/{name}"
            status, problem = await call(m, agency[party], "POST", path, json=body)
            assert (status, problem["allowed"]) == (409, allowed), (state, name)
        for side in agency.values():
            held = (await call(m, side, "GET", f"/v1/transfers/{transfer_id}"))[1]
            assert held["state"] == state, (side, state)


# --- R erased: the person's consent withdrawn, or the retention period over -----------------


def canary_r(**over: Any) -> tuple[str, dict[str, Any]]:
    """(the canary, R) whose person's given names are the canary."""
    canary = f"Canary{secrets.token_hex(8)}"
    body = {**samples.BODY, "names": {"given_names": canary, "family_name": "Example"}}
    return canary, v2(body=body, **over)


def what_opens_r(m: Mechanism, transfer_id: str, canary: str) -> dict[str, list[bytes]]:
    """Every byte that reveals or opens R at either side: the canary, the shelter's data key
    (sealed and plain) and sealed R, police's `case-transfer` envelope."""
    shelter_db, police_db = m.database("shelter"), m.database("police")
    [(referral_id, sealed_body)] = query(
        shelter_db,
        "SELECT referral_id, body FROM case_transfers WHERE transfer_id = ?",
        transfer_id,
    )
    [(sealed_key,)] = query(
        shelter_db,
        "SELECT sealed_key FROM data_keys WHERE owner = 'shelter' AND referral_id = ?",
        referral_id,
    )
    data_key = SecretBox(m.agents["shelter"].keys.storage_key).decrypt(bytes(sealed_key))
    opened = json.loads(SecretBox(data_key).decrypt(bytes(sealed_body)))
    assert opened["referral"]["body"]["names"]["given_names"] == canary
    [(envelope,)] = query(
        police_db,
        "SELECT o.envelope FROM outbox o JOIN case_transfers t ON t.message_id = o.message_id"
        " WHERE t.transfer_id = ?",
        transfer_id,
    )
    return {
        "the canary": [canary.encode()],
        "the sealed data key": _probes(bytes(sealed_key)),
        "the data key": [data_key],
        "the sealed R": _probes(bytes(sealed_body)),
        "the case-transfer envelope": _probes(bytes(envelope)),
    }


async def no_file_holds(m: Mechanism, forbidden: dict[str, list[bytes]]) -> None:
    """Wait until no file holds any of `forbidden`: each agent truncates its WAL after
    the commit that erased them (agents/erasure.py), on its own loop."""
    found: list[str | None] = [None]

    async def gone() -> bool:
        found[0] = held_in_a_file(m, forbidden)
        return found[0] is None

    if not await poll(gone, timeout=30):
        raise AssertionError(found[0])


async def transferred_under_consent(m: Mechanism) -> tuple[str, str, str, str]:
    """(receipt id, canary, transfer id, R's id) of a transfer police proposed to the
    shelter with R under the person's consent to assistance by the shelter."""
    receipt_id = await _consent_of(m, "police", "shelter")
    canary, r = canary_r(legal_basis="consent", consent_receipt_id=receipt_id)
    status, sent = await call(m, "police", "POST", "/v1/transfers", json=proposing(referral=r))
    assert status == 202, sent
    return receipt_id, canary, sent["transfer_id"], sent["referral_id"]


async def test_a_consent_withdrawal_erases_r_at_the_transferee(mechanism: Mechanism) -> None:
    """Police hands the case over with R under the person's consent, and another with R
    under public task. The person withdraws: police records R as a use of the consent, sends
    the shelter its withdrawal and drops the `case-transfer` envelope; the shelter erases R
    (the transfer stays, R read as erased), confirms, and no file of any agency or the bus
    holds a byte that reveals or opens R. The public-task R stays, and a withdrawal naming
    it, by police or by the co-ordinator, is refused (`not-shared`) with nothing erased."""
    m = mechanism
    receipt_id, canary, transfer_id, referral_id = await transferred_under_consent(m)
    status, other = await call(m, "police", "POST", "/v1/transfers", json=proposing())
    assert status == 202, other
    held = await transfer_state(m, "shelter", transfer_id, "delivered")
    assert held["referral"]["body"]["names"]["given_names"] == canary
    await transfer_state(m, "shelter", other["transfer_id"], "delivered")
    shelter_db, police_db = m.database("shelter"), m.database("police")
    # The inbox keeps no copy of R: it is sealed in `case_transfers` alone.
    assert query(shelter_db, "SELECT body FROM inbox WHERE kind = 'case-transfer'") == [
        (None,),
        (None,),
    ]
    forbidden = what_opens_r(m, transfer_id, canary)
    status, uses = await call(m, "police", "GET", f"/v1/consents/{receipt_id}")
    assert [(u["agency"], u["referral_id"]) for u in uses["recipients"]] == [
        ("shelter", referral_id)
    ]

    await _withdrawn(m, "police", receipt_id)
    erased = await transfer_state(m, "shelter", transfer_id, "delivered")
    assert erased["referral"] is None
    assert query(
        shelter_db, "SELECT body FROM case_transfers WHERE transfer_id = ?", transfer_id
    ) == [(None,)]
    assert not query(shelter_db, "SELECT 1 FROM data_keys WHERE referral_id = ?", referral_id)
    confirmed = [e for e in audit_events(m, "shelter") if e.kind == "erasure.confirmed"]
    assert [(e.referral_id, e.counterpart) for e in confirmed] == [(referral_id, "police")]
    envelopes = dict(
        query(
            police_db,
            "SELECT t.transfer_id, length(o.envelope) FROM outbox o"
            " JOIN case_transfers t ON t.message_id = o.message_id",
        )
    )
    assert envelopes[transfer_id] == 0 and envelopes[other["transfer_id"]] > 0

    await no_file_holds(m, forbidden)
    # The public-task R is no consent's to withdraw: kept, and a withdrawal naming it refused.
    assert (await transfer_state(m, "shelter", other["transfer_id"], "delivered"))["referral"]
    body = canonical_json({"receipt_id": receipt_id, "referral_ids": [other["referral_id"]]})
    by_police = sealed(m, agency_keys(m, "police"), "shelter", CONSENT_WITHDRAWAL, body)
    # Nor may another agency withdraw an R it never sent.
    by_coordinator = sealed(m, agency_keys(m, "coordinator"), "shelter", CONSENT_WITHDRAWAL, body)
    await publish(m, "police", "shelter", by_police)
    await publish(m, "coordinator", "shelter", by_coordinator)
    await rejected(m, "shelter", by_police, "not-shared")
    await rejected(m, "shelter", by_coordinator, "not-shared")
    assert (await transfer_state(m, "shelter", other["transfer_id"], "delivered"))["referral"]


async def test_a_finished_transfer_goes_with_r_after_the_period(
    mechanism: Mechanism, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shelter rejects one transfer and accepts another. Just before the closed-referral
    period nothing goes; after it the rejected one goes at both sides, counted in
    `retention.purged`: at the shelter with R's data key and sealed R, at police with the
    `case-transfer` envelope dropped, and once the WAL is truncated no file holds a byte
    that reveals or opens R. The accepted one, not final, stays."""
    m = mechanism
    offset = short_schedule(m, tmp_path, monkeypatch)
    canary, r = canary_r()
    status, sent = await call(m, "police", "POST", "/v1/transfers", json=proposing(referral=r))
    assert status == 202, sent
    transfer_id = sent["transfer_id"]
    kept = await delivered_transfer(m)
    await transfer_state(m, "shelter", transfer_id, "delivered")
    forbidden = what_opens_r(m, transfer_id, canary)
    status, body = await call(
        m, "shelter", "POST", f"/v1/transfers/{transfer_id}/reject", json={"reason": "other"}
    )
    assert status == 202, body
    assert (await call(m, "shelter", "POST", f"/v1/transfers/{kept}/accept"))[0] == 202
    await transfer_state(m, "police", transfer_id, "rejected")
    await transfer_state(m, "police", kept, "accepted")

    def transfers(agency: str) -> list[str]:
        return [r[0] for r in query(m.database(agency), "SELECT transfer_id FROM case_transfers")]

    clock.set_offset(offset, 2 * DAY - 60)
    for agency in ("police", "shelter"):
        assert (await m.agents[agency].retention.purge())["closed_referrals"] == 0
        assert sorted(transfers(agency)) == sorted([transfer_id, kept])
    clock.set_offset(offset, 2 * DAY + 60)
    for agency in ("police", "shelter"):
        assert (await m.agents[agency].retention.purge())["closed_referrals"] == 1
        assert transfers(agency) == [kept]
        purged = [e for e in audit_events(m, agency) if e.kind == "retention.purged"]
        assert dict(purged[-1].labels)["closed_referrals"] == "1"
    assert (await call(m, "shelter", "GET", f"/v1/transfers/{transfer_id}"))[0] == 404
    assert len(query(m.database("shelter"), "SELECT 1 FROM data_keys WHERE owner = 'shelter'")) == 1
    assert (await transfer_state(m, "shelter", kept, "accepted"))["referral"] is not None

    await no_file_holds(m, forbidden)
    clock.set_offset(offset, 0)


async def test_the_subject_access_report_names_the_transferee(
    mechanism: Mechanism, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Police hands the case over with R under the person's consent, and the shelter reads
    R. Police's report on R's id names the shelter as the one agency that received
    it, as a referral's recipient: the categories R carried, when the `case-transfer` was
    sent and delivered, the transfer's state, the consent's withdrawal and the shelter's
    erasure once they come, and its read of R; the shelter, which sent nothing, knows none."""
    m = mechanism
    receipt_id, _, transfer_id, referral_id = await transferred_under_consent(m)
    held = await transfer_state(m, "shelter", transfer_id, "delivered")
    read = sorted({R.FIELD_CATEGORY[f] for f in held["referral"]["body"]})
    move_clock(monkeypatch, tmp_path, m.agents["shelter"].limits.access_coalesce_seconds)
    assert m.agents["shelter"].access.flush() in (0, 1)  # or the timers loop signed it
    await read_in_a_checkpoint(m)
    status, answer = await call(
        m, "police", "POST", "/v1/subject-access", json={"referral_ids": [referral_id]}
    )
    assert status == 200, answer
    [entry] = answer["referrals"]
    assert (entry["known"], entry["legal_basis"], entry["other_accesses"]) == (
        True,
        "consent",
        [],
    )
    [copy] = entry["recipients"]
    assert (copy["agency"], copy["state"], copy["categories"]) == ("shelter", "delivered", read)
    assert copy["sent_at"] is not None and copy["delivered_at"] >= copy["sent_at"]
    assert copy["consent_withdrawn_at"] is None and copy["erasure_confirmed_at"] is None
    [access] = copy["accesses"]
    assert (access["record"], access["categories"]) == ("body", read)
    assert access["reads"] >= 1  # each GET while waiting for `delivered` is a read
    await _withdrawn(m, "police", receipt_id)
    status, answer = await call(
        m, "police", "POST", "/v1/subject-access", json={"referral_ids": [referral_id]}
    )
    [copy] = answer["referrals"][0]["recipients"]
    assert copy["consent_withdrawn_at"] is not None and copy["erasure_confirmed_at"] is not None
    status, theirs = await call(
        m, "shelter", "POST", "/v1/subject-access", json={"referral_ids": [referral_id]}
    )
    assert (status, theirs["referrals"]) == (200, [{"id": referral_id, "known": False}])
