"""The end of a case at a real competent authority (PROTOCOL §8.7 "Leaving the process and
closing"): the authority's case system says the person left the process, which ends what
protection runs by its normal notice to the referrer, the co-ordinator and a linked
provider; a step the case table refuses is 409 and changes nothing. The authority's timer
closes a case whose negative decision's reconsideration window ran out, and a request for a
case that left or closed is refused on the record. Each end is audited (`case.left` with its
reason, kept on the case; `case.closed`), ends a pending request unanswered, and leaves the
authority no protection step of the case."""

from __future__ import annotations

import dataclasses
import secrets
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from keys import codec
from runtime import clock

from .support import Mechanism, agency_keys, eventually, sealed, webhook_receiver
from .test_identification import (
    AUTHORITY,
    COORDINATOR_OPENS,
    authority_mechanism,
    call,
    decide,
    events,
    held,
    opened_case,
    police_accepts,
    referred_on,
)
from .test_protection_notices import TIED, notices, protect, steps
from .test_reconsideration import AUTHORITY_EVENTS, ask, case_in
from .test_reconsideration import _collect as collect
from .test_sender_scope import publish, rejected, rejections

DAY = 86_400
LEAVE_REASONS = "person-withdrew, lost-contact, moved-abroad, deceased"


async def leave(m: Mechanism, case_id: str, doc: dict[str, Any]) -> tuple[int, Any]:
    return await call(m, AUTHORITY, "POST", f"/v1/cases/{case_id}/leave", json=doc)


async def test_leaving_ends_the_protections_for_every_recipient(tmp_path: Path) -> None:
    """The co-ordinator's referral opens the case, police holds the authority's referral
    linked to it, the first stage starts both protections: leaving (`deceased`) moves the
    case to `left_process` and sends no-removal `ended` `left-process` and reflection
    `ended` `person-left` to the co-ordinator (referrer) and police (provider), each on the
    record with its reason; the case shows both ended."""
    async with authority_mechanism(tmp_path, COORDINATOR_OPENS) as m:
        rid, case_id = await opened_case(m, "coordinator")
        onward = await referred_on(m)
        await police_accepts(m, onward)
        status, body = await call(m, AUTHORITY, "PUT", f"/v1/cases/{case_id}/referrals/{onward}")
        assert status == 200, body
        status, decided = await decide(m, case_id, {"stage": "first", "outcome": "positive"})
        assert status == 202, decided
        before = len(events(m, AUTHORITY, "protection.notified"))
        assert before == 4  # two notices, two recipients

        status, left = await leave(m, case_id, {"reason": "deceased"})
        assert status == 202, left
        assert (left["case_id"], left["state"]) == (case_id, "left_process")
        assert {p: v["state"] for p, v in left["protections"].items()} == {
            "no-removal": "off",
            "reflection": "ended",
        }
        ended = [("no-removal", "ended", "left-process"), ("reflection", "ended", "person-left")]
        for agency, pair, sender in (
            ("coordinator", rid, "coordinator"),
            ("police", onward, AUTHORITY),
        ):
            got = await notices(m, agency, pair, 4, sender)
            assert steps(got)[2:] == ended, agency
        told = [
            (e.counterpart, e.referral_id, dict(e.labels)["protection"], e.reason)
            for e in events(m, AUTHORITY, "protection.notified")[before:]
        ]
        assert sorted(told) == sorted(
            (agency, pair, protection, reason)
            for agency, pair in (("coordinator", rid), ("police", onward))
            for protection, _, reason in ended
        )
        status, case = await call(m, AUTHORITY, "GET", f"/v1/cases/{case_id}")
        assert status == 200, case
        assert (case["state"], case["left_reason"], left["left_reason"]) == (
            "left_process",
            "deceased",
            "deceased",
        ), case
        ended_kinds = [
            (e.kind, e.referral_id, e.counterpart, e.reason)
            for e in events(m, AUTHORITY, "")
            if e.kind in ("case.left", "protection.notified")
        ][before:]
        # the case's end first, ids and the reason code only, then the notices it sent
        assert ended_kinds[0] == ("case.left", rid, "coordinator", "deceased")
        assert [k for k, *_ in ended_kinds[1:]] == ["protection.notified"] * 4


async def test_leaving_ends_only_what_runs_and_a_refused_step_changes_nothing(
    tmp_path: Path,
) -> None:
    """Leaving a case awaiting its first stage sends nothing; with the reflection period
    not granted, only no-removal ends. From a final state (`left_process`,
    `second_positive`) leaving is 409 naming no allowed step and sends nothing; an unknown
    reason is 400 naming the reasons, an unknown case 404. A request to reconsider the
    negative first stage of a case that left is refused `unexpected` by the authority and
    the case stays as it is."""
    async with authority_mechanism(tmp_path, TIED) as m:

        def notified() -> int:
            return len(events(m, AUTHORITY, "protection.notified"))

        _, waiting = await opened_case(m)
        status, problem = await leave(m, waiting, {"reason": "gone"})
        assert status == 400 and LEAVE_REASONS in problem["detail"], problem
        status, problem = await leave(m, waiting, {})
        assert status == 400, problem
        status, problem = await leave(m, "0" * 32, {"reason": "lost-contact"})
        assert status == 404, problem
        status, left = await leave(m, waiting, {"reason": "lost-contact"})
        assert status == 202 and left["state"] == "left_process", left
        assert notified() == 0
        # the table would let the authority refuse a reflection period never started: the
        # case's end refuses it first, naming the state; nothing is signed, sent or stored
        for protection, doc in (
            ("reflection", {"event": "not-granted", "reason": "public-order"}),
            ("no-removal", {"event": "ended", "reason": "residence-permit-granted"}),
        ):
            status, problem = await protect(m, waiting, protection, doc)
            assert (status, problem.get("state")) == (409, "left_process"), problem
            assert "allowed" not in problem, problem
        status, case = await call(m, AUTHORITY, "GET", f"/v1/cases/{waiting}")
        assert [v["notices"] for v in case["protections"].values()] == [[], []], case
        status, problem = await leave(m, waiting, {"reason": "deceased"})
        assert (status, problem["allowed"]) == (409, []), problem
        status, problem = await decide(m, waiting, {"stage": "first", "outcome": "positive"})
        assert (status, problem["allowed"]) == (409, []), problem
        assert notified() == 0

        rid, refused = await opened_case(m)
        status, body = await protect(
            m, refused, "reflection", {"event": "not-granted", "reason": "public-order"}
        )
        assert status == 202, body
        status, body = await decide(m, refused, {"stage": "first", "outcome": "positive"})
        assert status == 202, body
        await notices(m, "police", rid, 2)  # not-granted, no-removal started
        status, left = await leave(m, refused, {"reason": "moved-abroad"})
        assert status == 202, left
        got = await notices(m, "police", rid, 3)
        assert steps(got)[2] == ("no-removal", "ended", "left-process")
        assert left["protections"]["reflection"]["state"] == "not_granted"

        _, identified = await opened_case(m)
        for stage in ("first", "second"):
            status, body = await decide(m, identified, {"stage": stage, "outcome": "positive"})
            assert status == 202, body
        sent = notified()
        status, problem = await leave(m, identified, {"reason": "person-withdrew"})
        assert (status, problem["allowed"]) == (409, []), problem
        status, case = await call(m, AUTHORITY, "GET", f"/v1/cases/{identified}")
        assert case["state"] == "second_positive", case
        assert notified() == sent

        negative_rid, negative = await opened_case(m)
        status, decided = await decide(
            m, negative, {"stage": "first", "outcome": "negative", "reason": "no-indicators"}
        )
        assert status == 202, decided
        await held(m, "police", negative_rid, 1)
        status, left = await leave(m, negative, {"reason": "person-withdrew"})
        assert status == 202, left
        # police's agent cannot know the case left: it asks, the authority refuses
        doc = {"decision_id": decided["decision_id"], "ground": "new-information"}
        status, sent_request = await ask(m, "police", negative_rid, doc)
        assert status == 202, sent_request

        async def refused() -> bool:
            return any(r == "unexpected" for r, _ in rejections(m.database(AUTHORITY)))

        await eventually(refused, what="the authority to refuse the request")
        status, case = await call(m, AUTHORITY, "GET", f"/v1/cases/{negative}")
        assert (case["state"], case["reconsiderations"]) == ("left_process", []), case


async def reconsidering(m: Mechanism, reason: str, ground: str) -> tuple[str, str, Any]:
    """Police's case, negative at its first stage for `reason`, that police asked to
    reconsider on `ground`, once it is `reconsidering_first`: (referral id, case, request)."""
    rid, case_id = await opened_case(m)
    status, decided = await decide(
        m, case_id, {"stage": "first", "outcome": "negative", "reason": reason}
    )
    assert status == 202, decided
    await held(m, "police", rid, 1)
    status, asked = await ask(
        m, "police", rid, {"decision_id": decided["decision_id"], "ground": ground}
    )
    assert status == 202, asked
    await case_in(m, case_id, "reconsidering_first")
    return rid, case_id, asked


#: Any second stage at once, and one day to ask for reconsideration in.
ONE_DAY = dataclasses.replace(TIED, reconsideration_window_days=1)


@pytest.fixture
async def told_authority(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Mechanism, Path]]:
    """The mechanism under ONE_DAY with the clock movable (its offset file) and the
    authority's webhooks going to AUTHORITY_EVENTS."""
    AUTHORITY_EVENTS.clear()
    offset = tmp_path / "clock-offset"
    clock.set_offset(offset, 0)
    monkeypatch.setenv(clock.ENV, str(offset))
    async with (
        webhook_receiver(collect) as url,
        authority_mechanism(tmp_path, ONE_DAY, webhooks={AUTHORITY: url}) as m,
    ):
        yield m, offset


async def test_the_window_closes_a_negative_case(told_authority: tuple[Mechanism, Path]) -> None:
    """A negative first stage and a negative second stage (the second stage ended the
    protections) stay open until the window and the clock skew ran out (the clock moved),
    then the authority's timer closes both, sends no notice, and tells its case system
    (`case.closed`); a case with a request pending is not closed, nor one whose decision is
    damaged in the database (logged, tried again next time) while the others close. A
    request for the closed case, dated now, is refused `unexpected` (no longer
    `out-of-time`: the case moved on); police's own API refuses `out-of-time`."""
    m, offset = told_authority
    clocked = m.agents[AUTHORITY].identification
    refused_rid, first = await opened_case(m)
    status, first_decided = await decide(
        m, first, {"stage": "first", "outcome": "negative", "reason": "no-indicators"}
    )
    assert status == 202, first_decided
    _, second = await opened_case(m)
    for doc in (
        {"stage": "first", "outcome": "positive"},
        {"stage": "second", "outcome": "negative", "reason": "act-not-established"},
    ):
        status, body = await decide(m, second, doc)
        assert status == 202, body
    _, pending, _ = await reconsidering(m, "duplicate", "procedural-error")
    _, damaged = await opened_case(m)
    status, body = await decide(
        m, damaged, {"stage": "first", "outcome": "negative", "reason": "duplicate"}
    )
    assert status == 202, body
    conn = sqlite3.connect(m.database(AUTHORITY))
    try:
        with conn:  # a damaged row: the timer logs it and closes the others
            conn.execute("UPDATE decisions SET signed = x'00' WHERE case_id = ?", (damaged,))
            # an event column nothing checks: the state is read from the signed notice
            conn.execute(
                "UPDATE protection_notices SET event = 'damaged' WHERE case_id = ?", (second,)
            )
    finally:
        conn.close()
    sent = len(events(m, AUTHORITY, "protection.notified"))

    async def states() -> dict[str, str]:
        found = {}
        for case_id in (first, second, pending):
            _, case = await call(m, AUTHORITY, "GET", f"/v1/cases/{case_id}")
            found[case_id] = case["state"]
        return found

    clock.set_offset(offset, DAY - 3600)
    clocked.tick()
    assert await states() == {
        first: "first_negative",
        second: "second_negative",
        pending: "reconsidering_first",
    }
    clock.set_offset(offset, DAY + 2 * clocked.skew)  # past the window, not its travel time
    clocked.tick()
    assert await states() == {
        first: "first_negative",
        second: "second_negative",
        pending: "reconsidering_first",
    }
    clock.set_offset(offset, DAY + clocked.ttl + 2 * clocked.skew)
    clocked.tick()
    assert await states() == {first: "closed", second: "closed", pending: "reconsidering_first"}
    with m.agents[AUTHORITY].store.transaction() as db:
        still = m.agents[AUTHORITY].store.case(db, damaged)
    assert still is not None and still.state == "first_negative"
    assert len(events(m, AUTHORITY, "protection.notified")) == sent

    async def told() -> bool:
        return {e["data"]["case_id"] for e in AUTHORITY_EVENTS if e["type"] == "case.closed"} == {
            first,
            second,
        }

    await eventually(told, what="the authority's system to be told of both closings")
    closings = [(e.referral_id, e.counterpart, e.reason) for e in events(m, AUTHORITY, "case.")]
    _, second_case = await call(m, AUTHORITY, "GET", f"/v1/cases/{second}")
    assert sorted(closings) == sorted(
        [(refused_rid, "police", None), (second_case["referral_id"], "police", None)]
    )
    assert {e.kind for e in events(m, AUTHORITY, "case.")} == {"case.closed"}
    assert second_case["left_reason"] is None
    # a closed case's reflection period, never started, is no longer the authority's to refuse
    status, problem = await protect(
        m, first, "reflection", {"event": "not-granted", "reason": "improper-claim"}
    )
    assert (status, problem.get("state")) == (409, "closed"), problem
    assert len(events(m, AUTHORITY, "protection.notified")) == sent
    hook = next(e for e in AUTHORITY_EVENTS if e["data"].get("case_id") == first)
    assert (hook["data"]["state"], hook["data"]["referral_id"]) == ("closed", refused_rid)

    doc = {"decision_id": first_decided["decision_id"], "ground": "new-information"}
    status, problem = await ask(m, "police", refused_rid, doc)
    assert (status, problem.get("reason")) == (409, "out-of-time"), problem
    body = codec.pack(
        [
            1,
            secrets.token_hex(16),
            first_decided["decision_id"],
            "police",
            refused_rid,
            "new-information",
            clock.now(),
        ]
    )
    data = sealed(m, agency_keys(m, "police"), AUTHORITY, "reconsideration-request", body)
    await publish(m, "police", AUTHORITY, data)
    await rejected(m, AUTHORITY, data, "unexpected")
    _, case = await call(m, AUTHORITY, "GET", f"/v1/cases/{first}")
    assert (case["state"], case["reconsiderations"]) == ("closed", []), case


async def test_leaving_ends_a_pending_reconsideration_unanswered(tmp_path: Path) -> None:
    """Police asks to reconsider a negative first stage; while the case is
    `reconsidering_first` the person leaves: the case is `left_process` with its reason,
    the request is no longer pending and says what ended it (`ended_by` `left_process`,
    answered by no decision), and the stage can no longer be decided (409, nothing
    allowed)."""
    async with authority_mechanism(tmp_path, TIED) as m:
        rid, case_id, asked = await reconsidering(m, "no-indicators", "new-information")

        status, left = await leave(m, case_id, {"reason": "moved-abroad"})
        assert status == 202, left
        assert (left["state"], left["left_reason"]) == ("left_process", "moved-abroad"), left
        status, case = await call(m, AUTHORITY, "GET", f"/v1/cases/{case_id}")
        assert status == 200, case
        [request] = case["reconsiderations"]
        assert request["request_id"] == asked["request_id"], request
        assert (request["pending"], request["answered_by"], request["ended_by"]) == (
            False,
            None,
            "left_process",
        ), request
        status, problem = await decide(m, case_id, {"stage": "first", "outcome": "positive"})
        assert (status, problem["allowed"]) == (409, []), problem
        [ended] = events(m, AUTHORITY, "case.")
        assert (ended.kind, ended.referral_id, ended.reason) == ("case.left", rid, "moved-abroad")
