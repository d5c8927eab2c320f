"""Protection notices between real agents (PROTOCOL §8.9): a first-stage positive decision
starts no-removal and the reflection period at the competent authority, whose agent seals a
notice of each to the referrer and the co-ordinator; the authority extends the period, the
second stage ends both; a step the protection table refuses is 409 naming what is allowed;
a forked or forged chain, and a notice from an agency that is no authority, are refused on
the record and change nothing held."""

from __future__ import annotations

import dataclasses
import datetime
import json
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from keys import codec
from keys.protection import Notice, sign_notice
from runtime import clock

from . import samples
from .support import Mechanism, agency_keys, eventually, renew_directory, sealed
from .test_identification import (
    AUTHORITY,
    POLICE_EVENTS,
    POLICY,
    authority_mechanism,
    call,
    decide,
    events,
    opened_case,
    signed_by,
)
from .test_identification import held as held_decisions
from .test_identification import sent_past_the_agent as decision_past_the_agent
from .test_sender_scope import publish, rejected, rejections

#: As test_identification's, with no interval before the second stage and the reflection
#: period tied to it, so that the second stage can be decided at once and ends both.
TIED = dataclasses.replace(POLICY, second_stage_min_days=0, reflection_ends_with_second_stage=True)
DAY = datetime.timedelta(days=1)
PEERS = ("police", "coordinator")


@pytest.fixture
async def authority(tmp_path: Path) -> AsyncIterator[Mechanism]:
    async with authority_mechanism(tmp_path, TIED) as m:
        yield m


async def notices(
    m: Mechanism, agency: str, rid: str, count: int, sender: str = "police"
) -> list[dict[str, Any]]:
    """The notices `agency` holds under `sender`'s referral `rid`, once it holds `count`."""
    found: list[dict[str, Any]] = []

    async def arrived() -> bool:
        nonlocal found
        status, body = await call(
            m, agency, "GET", f"/v1/referrals/{rid}/protections?sender={sender}"
        )
        found = body["items"] if status == 200 else []
        return len(found) == count

    await eventually(arrived, what=f"{agency} to hold {count} protection notice(s)")
    return found


def day_of(at: int) -> datetime.date:
    """The UTC date of Unix seconds `at`."""
    return datetime.datetime.fromtimestamp(at, datetime.UTC).date()


def steps(items: list[dict[str, Any]]) -> list[tuple[str, str, str | None]]:
    return [(n["protection"], n["event"], n["reason"]) for n in items]


async def protect(m: Mechanism, case_id: str, protection: str, doc: dict[str, Any]) -> Any:
    return await call(
        m, AUTHORITY, "POST", f"/v1/cases/{case_id}/protections/{protection}", json=doc
    )


async def test_the_protections_follow_the_case(authority: Mechanism) -> None:
    """A positive first stage starts both protections for police and the co-ordinator (the
    reflection period the policy's 30 days from the decision's date); the authority extends
    the period; a step the table refuses is 409 `allowed` and sends nothing; the second
    stage ends both; each copy is audited with its labels and reason on both sides."""
    m = authority
    rid, case_id = await opened_case(m)
    status, decided = await decide(m, case_id, {"stage": "first", "outcome": "positive"})
    assert status == 202, decided
    started = [("no-removal", "started", None), ("reflection", "started", None)]
    for agency in ("police", "coordinator"):
        held = await notices(m, agency, rid, 2)
        assert steps(held) == started
        no_removal, reflection = held
        today = day_of(reflection["at"])  # the decision's date, as the notices are dated
        assert no_removal["at"] == reflection["at"]
        assert (no_removal["starts_on"], no_removal["ends_on"]) == (today.isoformat(), None)
        assert (reflection["starts_on"], reflection["ends_on"]) == (
            today.isoformat(),
            (today + 30 * DAY).isoformat(),
        )
        assert {n["case_id"] for n in held} == {case_id}
        assert {n["previous"] for n in held} == {None}

    status, case = await call(m, AUTHORITY, "GET", f"/v1/cases/{case_id}")
    assert status == 200, case
    assert {p: v["state"] for p, v in case["protections"].items()} == {
        "no-removal": "on",
        "reflection": "running",
    }

    later = (today + 60 * DAY).isoformat()
    status, body = await protect(
        m, case_id, "reflection", {"event": "extended", "ends_on": later, "reason": "proceedings"}
    )
    assert status == 202, body
    assert body["protections"]["reflection"]["ends_on"] == later
    earlier = (today + 40 * DAY).isoformat()
    status, problem = await protect(
        m, case_id, "reflection", {"event": "extended", "ends_on": earlier, "reason": "other"}
    )
    assert status == 422, problem  # an extension ends later
    status, problem = await protect(
        m, case_id, "reflection", {"event": "not-granted", "reason": "public-order"}
    )
    assert (status, problem["allowed"]) == (409, ["extended", "ended"]), problem
    status, problem = await protect(m, case_id, "reflection", {"event": "started"})
    assert status == 422, problem  # the authority's system never starts one itself
    for agency in ("police", "coordinator"):
        held = await notices(m, agency, rid, 3)
        assert steps(held)[2] == ("reflection", "extended", "proceedings")
        assert (held[2]["ends_on"], held[2]["previous"]) == (later, held[1]["notice_id"])

    status, decided = await decide(m, case_id, {"stage": "second", "outcome": "positive"})
    assert status == 202, decided
    ended = [(p, "ended", "second-stage-decided") for p in ("no-removal", "reflection")]
    for agency in ("police", "coordinator"):
        held = await notices(m, agency, rid, 5)
        assert steps(held) == [*started, ("reflection", "extended", "proceedings"), *ended]
        assert [(n["starts_on"], n["ends_on"]) for n in held[3:]] == [
            (today.isoformat(), day_of(n["at"]).isoformat()) for n in held[3:]
        ]  # ended the day of the second stage
    status, case = await call(m, AUTHORITY, "GET", f"/v1/cases/{case_id}")
    assert {p: v["state"] for p, v in case["protections"].items()} == {
        "no-removal": "off",
        "reflection": "ended",
    }
    status, problem = await protect(
        m, case_id, "no-removal", {"event": "ended", "reason": "residence-permit-granted"}
    )
    assert (status, problem["allowed"]) == (409, []), problem

    expected = steps(await notices(m, "police", rid, 5))
    notified = [
        (e.counterpart, dict(e.labels), e.reason) for e in events(m, AUTHORITY, "protection.")
    ]
    assert notified == [
        (agency, {"protection": p, "event": ev}, r)
        for p, ev, r in expected
        for agency in ("police", "coordinator")
    ]
    assert {e.kind for e in events(m, AUTHORITY, "protection.")} == {"protection.notified"}
    for agency in ("police", "coordinator"):
        received = [
            (e.kind, e.referral_id, e.counterpart, dict(e.labels), e.reason)
            for e in events(m, agency, "protection.")
        ]
        assert received == [
            ("protection.received", rid, AUTHORITY, {"protection": p, "event": ev}, r)
            for p, ev, r in expected
        ]

    async def told() -> bool:
        return [
            (e["data"]["protection"], e["data"]["event"], e["data"]["reason"])
            for e in POLICE_EVENTS
            if e["type"] == "protection.received"
        ] == expected

    await eventually(told, what="police's system to be told of every notice")

    ledger = m.sandbox.ledger
    assert ledger is not None
    wanted = sorted(
        [("protection.notified", AUTHORITY, a, p, ev, r) for p, ev, r in expected for a in PEERS]
        + [("protection.received", a, AUTHORITY, p, ev, r) for p, ev, r in expected for a in PEERS]
    )

    def ledger_rows() -> list[tuple[str, str, str | None, str, str, str | None]]:
        return sorted(
            (e.kind, e.agency, e.counterpart, e.labels["protection"], e.labels["event"], e.reason)
            for e in ledger.store.referral_events(rid)
            if e.kind.startswith("protection.")
        )

    async def in_ledger() -> bool:
        return ledger_rows() == wanted

    await eventually(in_ledger, what="the ledger to accept every protection event")
    status, _ = await call(m, "police", "POST", f"/v1/cases/{case_id}/protections/reflection")
    assert status == 403  # police's system: no decide scope


def forged(m: Mechanism, signer: str, **fields: Any) -> bytes:
    """A notice `signer`'s own keys sign, past its agent, at now."""
    today = day_of(clock.now())
    notice = Notice(
        **{
            "notice_id": secrets.token_hex(16),
            "authority": signer,
            "case_id": secrets.token_hex(16),
            "protection": "reflection",
            "event": "started",
            "starts_on": today.isoformat(),
            "ends_on": (today + 45 * DAY).isoformat(),
            "reason": None,
            "at": clock.now(),
            "previous": None,
            **fields,
        }
    )
    return sign_notice(notice, agency_keys(m, signer).signing_key)


async def sent_past_the_agent(
    m: Mechanism, sender: str, signed: bytes, rid: str, *, reason: str
) -> None:
    """`sender` seals `signed` under police's pair `rid` to the co-ordinator, which refuses
    it as `reason` (a message.rejected event with that reason)."""
    body = codec.pack([1, signed, "police", rid])
    data = sealed(m, agency_keys(m, sender), "coordinator", "protection-notice", body)
    await publish(m, sender, "coordinator", data)
    await rejected(m, "coordinator", data, reason)


async def test_a_forked_or_gapped_chain_is_refused(authority: Mechanism) -> None:
    """The authority's keys sign, past its agent, a second start of the running reflection
    period (a fork) and an extension following a notice nobody holds (a gap, refused once
    the grace for a late predecessor has passed, here none): the co-ordinator refuses both
    `unexpected`, on the record, and holds what it held."""
    m = authority
    coordinator = m.agents["coordinator"]
    coordinator.limits = dataclasses.replace(coordinator.limits, unknown_key_grace_seconds=0)
    rid, case_id = await opened_case(m)
    status, _ = await decide(m, case_id, {"stage": "first", "outcome": "positive"})
    assert status == 202
    before = await notices(m, "coordinator", rid, 2)
    fork = forged(m, AUTHORITY, case_id=case_id)
    await sent_past_the_agent(m, AUTHORITY, fork, rid, reason="unexpected")
    reflection = before[1]
    gap = forged(
        m,
        AUTHORITY,
        case_id=case_id,
        event="extended",
        starts_on=reflection["starts_on"],
        ends_on=(datetime.date.fromisoformat(reflection["ends_on"]) + DAY).isoformat(),
        reason="other",
        previous=secrets.token_hex(16),
    )
    await sent_past_the_agent(m, AUTHORITY, gap, rid, reason="unexpected")
    assert await notices(m, "coordinator", rid, 2) == before
    assert [r for r, _ in rejections(m.database("coordinator"))] == ["unexpected"] * 2
    ledger = m.sandbox.ledger
    assert ledger is not None

    async def on_the_record() -> bool:
        refused = [
            (e.reason, e.counterpart)
            for e in ledger.store.iter_rows()
            if e.kind == "message.rejected" and e.agency == "coordinator"
        ]
        return refused == [("unexpected", AUTHORITY)] * 2

    await eventually(on_the_record, what="the ledger to hold both refusals")


async def test_a_notice_that_comes_before_its_predecessor_waits_for_it(
    authority: Mechanism,
) -> None:
    """Two extensions of the running reflection period reach the co-ordinator in the wrong
    order (a restore, a key still loading): the second is held back, not refused, until the
    first has come, and the co-ordinator then holds the whole chain, refusing nothing."""
    m = authority
    rid, case_id = await opened_case(m)
    status, _ = await decide(m, case_id, {"stage": "first", "outcome": "positive"})
    assert status == 202
    before = await notices(m, "coordinator", rid, 2)
    reflection = before[1]
    assert reflection["protection"] == "reflection"
    ends = datetime.date.fromisoformat(reflection["ends_on"])
    first_id, second_id = secrets.token_hex(16), secrets.token_hex(16)
    extension = {"case_id": case_id, "event": "extended", "reason": "other"}
    first = forged(
        m,
        AUTHORITY,
        **extension,
        notice_id=first_id,
        starts_on=reflection["starts_on"],
        ends_on=(ends + DAY).isoformat(),
        previous=reflection["notice_id"],
    )
    second = forged(
        m,
        AUTHORITY,
        **extension,
        notice_id=second_id,
        starts_on=reflection["starts_on"],
        ends_on=(ends + 2 * DAY).isoformat(),
        previous=first_id,
    )
    for signed in (second, first):
        body = codec.pack([1, signed, "police", rid])
        data = sealed(m, agency_keys(m, AUTHORITY), "coordinator", "protection-notice", body)
        await publish(m, AUTHORITY, "coordinator", data)
    chain = await notices(m, "coordinator", rid, 4)
    assert [n["notice_id"] for n in chain[2:]] == [first_id, second_id]
    assert rejections(m.database("coordinator")) == []


async def test_a_notice_from_an_agency_that_is_not_an_authority_is_refused(
    authority: Mechanism,
) -> None:
    """Police's keys sign a notice and seal it to the co-ordinator past police's agent: the
    co-ordinator refuses it `not-for-this-role` and holds nothing under the pair."""
    m = authority
    rid = await m.api("police").refer([AUTHORITY], samples.referral())
    await sent_past_the_agent(m, "police", forged(m, "police"), rid, reason="not-for-this-role")
    status, _ = await call(
        m, "coordinator", "GET", f"/v1/referrals/{rid}/protections?sender=police"
    )
    assert status == 404


async def test_a_pair_holds_the_notices_of_one_case(authority: Mechanism) -> None:
    """Under a pair the co-ordinator holds no decision for, the first notice it accepts binds
    the pair to that case: a notice, or a decision, of another case of the authority under
    it is refused `other-case`, and the listings stay the first case's."""
    m = authority
    rid = await m.api("police").refer([AUTHORITY], samples.referral())
    first = forged(m, AUTHORITY)
    body = codec.pack([1, first, "police", rid])
    data = sealed(m, agency_keys(m, AUTHORITY), "coordinator", "protection-notice", body)
    await publish(m, AUTHORITY, "coordinator", data)
    [held] = await notices(m, "coordinator", rid, 1)
    await sent_past_the_agent(m, AUTHORITY, forged(m, AUTHORITY), rid, reason="other-case")
    assert await notices(m, "coordinator", rid, 1) == [held]
    other = signed_by(m, AUTHORITY, secrets.token_hex(16))
    await decision_past_the_agent(m, AUTHORITY, "coordinator", other, rid, reason="other-case")
    status, _ = await call(m, "coordinator", "GET", f"/v1/referrals/{rid}/decisions?sender=police")
    assert status == 404  # it holds no decision under the pair


async def test_a_step_the_api_refuses_writes_nothing(authority: Mechanism) -> None:
    """Bad requests of the protections API are problems naming what was wrong, never echoing
    it, and sign, store and send nothing; an unknown case is 404."""
    m = authority
    _, case_id = await opened_case(m)
    status, _ = await decide(m, case_id, {"stage": "first", "outcome": "positive"})
    assert status == 202
    before = len(events(m, AUTHORITY, "protection."))
    for protection, doc, wanted in (
        ("reflection", {"event": ["extended"], "reason": "other"}, 422),
        ("reflection", {"event": "extended", "reason": "because-we-said"}, 422),
        ("reflection", {"event": "extended", "reason": "other", "ends_on": "2099-02-30"}, 422),
        ("reflection", {"event": "extended", "reason": "other"}, 422),  # no ends_on
        ("reflection", {"event": "ended", "reason": "person-left", "ends_on": "2099-01-01"}, 422),
        ("reflection", {"event": "ended", "reason": "person-left", "note": "x"}, 422),
        ("no-removal", {"event": "ended", "reason": "second-stage-decided"}, 422),
        ("exile", {"event": "ended", "reason": "person-left"}, 404),
    ):
        status, problem = await protect(m, case_id, protection, doc)
        assert status == wanted, (doc, problem)
        assert "because-we-said" not in json.dumps(problem)
    status, _ = await protect(
        m, "ab" * 16, "reflection", {"event": "ended", "reason": "person-left"}
    )
    assert status == 404
    assert len(events(m, AUTHORITY, "protection.")) == before
    status, case = await call(m, AUTHORITY, "GET", f"/v1/cases/{case_id}")
    assert [len(p["notices"]) for p in case["protections"].values()] == [1, 1]


async def test_a_period_not_granted_is_not_started_by_the_decision(authority: Mechanism) -> None:
    """The authority refuses the period (public order, Art 13(3)) before the first stage:
    police and the co-ordinator hold the one-day not-granted notice; the positive first
    stage then starts no-removal only, and the period can be neither extended nor ended."""
    m = authority
    rid, case_id = await opened_case(m)
    status, body = await protect(
        m, case_id, "reflection", {"event": "not-granted", "reason": "public-order"}
    )
    assert status == 202, body
    assert body["protections"]["reflection"]["state"] == "not_granted"
    status, decided = await decide(m, case_id, {"stage": "first", "outcome": "positive"})
    assert status == 202, decided
    for agency in PEERS:
        held = await notices(m, agency, rid, 2)
        assert steps(held) == [
            ("reflection", "not-granted", "public-order"),
            ("no-removal", "started", None),
        ]
        assert held[0]["starts_on"] == held[0]["ends_on"] == day_of(held[0]["at"]).isoformat()
    for doc in (
        {"event": "extended", "reason": "other", "ends_on": "2099-01-01"},
        {"event": "ended", "reason": "person-left"},
    ):
        status, problem = await protect(m, case_id, "reflection", doc)
        assert (status, problem["allowed"]) == (409, []), problem


def at_day(day: datetime.date) -> int:
    """The clock offset that puts now at 01:00 UTC of `day`."""
    target = datetime.datetime.combine(day, datetime.time(1), datetime.UTC)
    return int(target.timestamp()) - int(time.time())


async def test_the_reflection_clock_warns_then_ends_the_period(
    authority: Mechanism, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The clock moved through the period: eight days before its end nothing is sent;
    seven days before (the policy's reflection_warn_days) police holds `ending-soon` with
    the dates unchanged, once however often the clock runs; the day after its end, `ended`
    `elapsed` dated the period's end."""
    m = authority
    offset = tmp_path / "clock-offset"
    clock.set_offset(offset, 0)
    monkeypatch.setenv(clock.ENV, str(offset))
    rid, case_id = await opened_case(m)
    status, _ = await decide(m, case_id, {"stage": "first", "outcome": "positive"})
    assert status == 202
    _, reflection = await notices(m, "police", rid, 2)
    ends = datetime.date.fromisoformat(reflection["ends_on"])
    clocked = m.agents[AUTHORITY].identification

    def held_at_the_authority() -> list[tuple[str, str | None]]:
        with m.agents[AUTHORITY].store.transaction() as db:
            rows = m.agents[AUTHORITY].store.notices_of_case(db, AUTHORITY, case_id)
        return [(n.protection, n.event) for n in rows]

    clock.set_offset(offset, at_day(ends - 8 * DAY))
    clocked.tick()
    assert held_at_the_authority() == [("no-removal", "started"), ("reflection", "started")]

    clock.set_offset(offset, at_day(ends - 7 * DAY))
    for _ in range(2):
        clocked.tick()
    held = await notices(m, "police", rid, 3)
    assert steps(held)[2] == ("reflection", "ending-soon", None)
    assert (held[2]["starts_on"], held[2]["ends_on"]) == (
        reflection["starts_on"],
        reflection["ends_on"],
    )

    # The directory would lapse before the period ends: renewed, as an operator does.
    await renew_directory(m)
    clock.set_offset(offset, at_day(ends))
    clocked.tick()
    assert len(held_at_the_authority()) == 3  # the period's last day is still in it
    clock.set_offset(offset, at_day(ends + DAY))
    clocked.tick()
    held = await notices(m, "police", rid, 4)
    assert steps(held)[3] == ("reflection", "ended", "elapsed")
    assert held[3]["ends_on"] == reflection["ends_on"]
    status, case = await call(m, AUTHORITY, "GET", f"/v1/cases/{case_id}")
    assert case["protections"]["reflection"]["state"] == "ended"
    assert case["protections"]["no-removal"]["state"] == "on"


async def test_a_damaged_chain_does_not_stop_the_clock(authority: Mechanism) -> None:
    """A stored reflection notice damaged in the authority's database: the clock logs that
    case and goes on (it raises nothing into the timers loop), and reading the case, or
    taking a step of that protection, is a 409 naming why, not a listing without it nor a
    500."""
    m = authority
    _, case_id = await opened_case(m)
    status, _ = await decide(m, case_id, {"stage": "first", "outcome": "positive"})
    assert status == 202
    conn = sqlite3.connect(m.database(AUTHORITY))
    try:
        with conn:
            conn.execute(
                "UPDATE protection_notices SET signed = x'00' WHERE protection = 'reflection'"
            )
    finally:
        conn.close()
    m.agents[AUTHORITY].identification.tick()
    status, problem = await call(m, AUTHORITY, "GET", f"/v1/cases/{case_id}")
    assert (status, problem["reason"]) == (409, "malformed"), problem
    status, problem = await protect(
        m, case_id, "reflection", {"event": "ended", "reason": "person-left"}
    )
    assert (status, problem["reason"]) == (409, "malformed"), problem


async def test_the_authority_ends_both_protections(authority: Mechanism) -> None:
    """After a positive first stage the authority ends the period (the person left) and
    no-removal (a residence permit): police holds both ended notices, dated the day, with
    their reasons; the second stage then sends no notice (nothing runs)."""
    m = authority
    rid, case_id = await opened_case(m)
    status, _ = await decide(m, case_id, {"stage": "first", "outcome": "positive"})
    assert status == 202
    for protection, reason in (
        ("reflection", "person-left"),
        ("no-removal", "residence-permit-granted"),
    ):
        status, body = await protect(m, case_id, protection, {"event": "ended", "reason": reason})
        assert status == 202, body
    held = await notices(m, "police", rid, 4)
    assert steps(held)[2:] == [
        ("reflection", "ended", "person-left"),
        ("no-removal", "ended", "residence-permit-granted"),
    ]
    assert [n["ends_on"] for n in held[2:]] == [day_of(n["at"]).isoformat() for n in held[2:]]
    status, _ = await decide(
        m, case_id, {"stage": "second", "outcome": "negative", "reason": "duplicate"}
    )
    assert status == 202
    await held_decisions(m, "police", rid, 2)
    assert len(events(m, AUTHORITY, "protection.notified")) == 4 * len(PEERS)  # none more
