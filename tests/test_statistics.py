"""Statistics contributions between real agents (PROTOCOL §8.11): the competent authority's
timers seal each month's contribution to the rapporteur once the grace has run (the clock
moved, never slept), once, across restarts; the rapporteur keeps it and serves it; every
other agency refuses the kind, and the rapporteur refuses one from an agency that is no
authority; no clear personal data reaches the bus or the ledger."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from click.testing import CliRunner
from structlog.testing import capture_logs

from agents import contributions as S
from agents.statistics import MAX_ATTEMPTS
from keys.policy import Statistics
from keys.roles import RAPPORTEUR
from nrm import admin
from nrm.cli import main
from runtime import clock

from .support import (
    Mechanism,
    agency_keys,
    eventually,
    renew_directory,
    sealed,
    webhook_receiver,
)
from .test_identification import (
    AUTHORITY,
    POLICY,
    authority_mechanism,
    call,
    decide,
    events,
    opened_case,
)
from .test_sender_scope import publish, rejected

RAPPORTEUR_AGENCY = "coordinator"  # made the rapporteur below
#: Contributions due at once when the month ends.
NO_GRACE = dataclasses.replace(POLICY, statistics=Statistics(contribution_grace_days=0))
DAY = 86_400
#: A body the sample's with a sex and two forms of exploitation (`mixed`).
MIXED = {
    "age_category": "adult",
    "gender": "female",
    "exploitation_types": ["sexual_exploitation", "forced_begging"],
    "names": {"given_names": "Ana", "family_name": "Example"},
}


#: The events the rapporteur's agent sent its system (webhooks), in order of arrival.
RAPPORTEUR_EVENTS: list[dict[str, Any]] = []


async def _collect(request: web.Request) -> web.Response:
    RAPPORTEUR_EVENTS.append(json.loads(await request.read()))
    return web.Response(status=200)


@pytest.fixture
async def rapporteur(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Mechanism, Path]]:
    """The authority mechanism under NO_GRACE, the co-ordinator turned into the rapporteur,
    the clock movable by its offset file."""
    RAPPORTEUR_EVENTS.clear()
    offset = tmp_path / "clock-offset"
    clock.set_offset(offset, 0)
    monkeypatch.setenv(clock.ENV, str(offset))
    async with (
        webhook_receiver(_collect) as url,
        authority_mechanism(tmp_path, NO_GRACE, webhooks={RAPPORTEUR_AGENCY: url}) as m,
    ):
        setup = m.setups[RAPPORTEUR_AGENCY]
        identity = admin.PublicIdentity.from_json(setup.identity_path.read_bytes())
        admin.add_agency(m.sandbox.admin, identity, roles=[RAPPORTEUR])
        m.sandbox.sign_draft()
        await m.sandbox.publish()

        async def everyone_knows() -> bool:
            return all(
                (d := a.trust.directory) is not None
                and d.agency(RAPPORTEUR_AGENCY).roles == (RAPPORTEUR,)
                for a in m.agents.values()
            )

        await eventually(everyone_knows, what="every agent to know the rapporteur")
        yield m, offset


async def _month_over(m: Mechanism, offset: Path, period: str) -> None:
    """The clock moved past the end of `period` (the directory renewed half-way)."""
    due = S.due_at(period, 0) - clock.now()
    clock.set_offset(offset, due // 2)
    await renew_directory(m)
    clock.set_offset(offset, due + 60)


async def _held(m: Mechanism, period: str, n: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []

    async def arrived() -> bool:
        nonlocal items
        status, body = await call(m, RAPPORTEUR_AGENCY, "GET", f"/v1/contributions?period={period}")
        assert status == 200, body
        items = body["items"]
        return len(items) >= n

    await eventually(arrived, timeout=30, what=f"{n} contribution(s) at the rapporteur")
    return items


def _cells(held: dict[str, Any]) -> tuple[S.Cell, ...]:
    return tuple(
        S.Cell(c["stage"], c["outcome"], c["sex"], c["age_group"], c["form"], c["count"])
        for c in held["cells"]
    )


async def _ledger_items(m: Mechanism, path: str, kind: str, n: int) -> list[dict[str, Any]]:
    """The items of the ledger's `path` (auditor token), once `n` of them are of `kind`."""
    assert m.sandbox.ledger is not None
    url = m.sandbox.ledger.url.rstrip("/") + path
    headers = {"Authorization": f"Bearer {m.sandbox.auditor_token}"}
    items: list[dict[str, Any]] = []

    async def held() -> bool:
        nonlocal items
        async with m.http.get(url, headers=headers) as r:
            assert r.status == 200, await r.text()
            items = (await r.json())["items"]
        return len([e for e in items if e["kind"] == kind]) >= n

    await eventually(held, timeout=30, what=f"{n} {kind} in the ledger")
    return items


async def _decided_in_ledger(m: Mechanism, n: int) -> list[dict[str, Any]]:
    """The ledger's `identification.decided` entries, once it holds `n`."""
    return await _ledger_items(m, "/v1/events?q=identification.decided&limit=500", S.DECIDED, n)


async def _report(m: Mechanism, period: str, *flags: str) -> dict[str, Any]:
    """`nrm rapporteur report` for `period` against the rapporteur's agent and the ledger,
    in a thread of its own: the servers answer on this loop."""
    assert m.sandbox.ledger is not None
    api = m.api(RAPPORTEUR_AGENCY)
    args = ["rapporteur", "report", "--from", period, "--to", period, "--url", api.base,
            "--ledger", m.sandbox.ledger.url, *flags]  # fmt: skip
    env = {"NRM_API_TOKEN": api.token, "NRM_LEDGER_TOKEN": m.sandbox.auditor_token}
    result = await asyncio.to_thread(CliRunner().invoke, main, args, env=env)
    return {"exit": result.exit_code, "output": result.output}


def _json_in(output: str) -> Any:
    """The JSON document the command printed (the agents of this process log beside it)."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("{"))
    doc, _ = json.JSONDecoder().raw_decode("\n".join(lines[start:]))
    return doc


def _files_hold(root: Path, needles: tuple[bytes, ...]) -> list[str]:
    assert root.is_dir() and any(p.is_file() for p in root.rglob("*")), root
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path.name}: {n!r}" for n in needles if n in data]
    return found


async def test_the_contribution_arrives_adds_up_and_is_sent_once(
    rapporteur: tuple[Mechanism, Path], tmp_path: Path
) -> None:
    """Two cases decided this month (a positive and a negative first stage, and the
    negative one's second stage is not possible: one first stage each). Before the month
    ends nothing is sent; once it ended the authority's timer seals one contribution to
    the rapporteur, whose API shows exactly the cells and durations of the two cases, and
    whose decisions add up to the authority's `identification.decided` events of the month.
    Ticking again, and restarting the authority, sends nothing more. The ledger, the bus and
    the rapporteur's database hold no cell in clear: the ledger only the events with the
    envelope's hash and the month."""
    m, offset = rapporteur
    period = S.period_of(clock.now())
    _, mixed = await opened_case(m, body=MIXED)
    _, plain = await opened_case(m)
    status, body = await decide(m, mixed, {"stage": "first", "outcome": "positive"})
    assert status == 202, body
    status, body = await decide(
        m, plain, {"stage": "first", "outcome": "negative", "reason": "no-indicators"}
    )
    assert status == 202, body
    desk = m.agents[AUTHORITY].statistics
    desk.tick()
    assert events(m, AUTHORITY, "statistics.") == []  # the month has not ended

    await _month_over(m, offset, period)
    desk.tick()
    [held] = await _held(m, period, 1)
    assert (held["authority"], held["period"]) == (AUTHORITY, period)
    assert held["cells"] == [
        {"age_group": "adult", "count": 1, "form": "forced_labour", "outcome": "negative",
         "sex": "unknown", "stage": "first"},
        {"age_group": "adult", "count": 1, "form": "mixed", "outcome": "positive",
         "sex": "female", "stage": "first"},
    ]  # fmt: skip
    assert [(d["interval"], d["sex"], d["form"], d["count"]) for d in held["durations"]] == [
        ("referral-to-first", "female", "mixed", 1),
        ("referral-to-first", "unknown", "forced_labour", 1),
    ]
    decided = [
        e for e in events(m, AUTHORITY, "identification.decided") if S.period_of(e.time) == period
    ]
    assert sum(c["count"] for c in held["cells"]) == len(decided) == 2
    dated = set()
    for case_id in (mixed, plain):
        status, case = await call(m, AUTHORITY, "GET", f"/v1/cases/{case_id}")
        assert status == 200, case
        dated |= {d["decided_at"] for d in case["decisions"]}
    assert {e.time for e in decided} == dated  # the event dated as the decision (§9.0)

    [sent] = events(m, AUTHORITY, "statistics.contributed")
    assert (sent.counterpart, sent.labels, sent.referral_id) == (
        RAPPORTEUR_AGENCY,
        (("period", period),),
        None,
    )
    assert sent.envelope_hash == held["envelope_hash"]

    async def received() -> bool:
        return len(events(m, RAPPORTEUR_AGENCY, "statistics.received")) == 1

    await eventually(received, what="the rapporteur's statistics.received")
    [got] = events(m, RAPPORTEUR_AGENCY, "statistics.received")
    assert (got.counterpart, got.labels, got.envelope_hash) == (
        AUTHORITY,
        (("period", period),),
        held["envelope_hash"],
    )

    async def told() -> bool:  # at least once: deduplicated by event id
        return any(e["type"] == "statistics.received" for e in RAPPORTEUR_EVENTS)

    await eventually(told, what="the rapporteur's system told of the contribution")
    told_of = {e["id"]: e["data"] for e in RAPPORTEUR_EVENTS if e["type"] == "statistics.received"}
    assert list(told_of.values()) == [
        {"authority": AUTHORITY, "period": period, "envelope_hash": held["envelope_hash"],
         "received_at": held["received_at"]}
    ]  # fmt: skip

    # The rapporteur's cross-check against the ledger's own events (an auditor's read).
    entries = await _decided_in_ledger(m, 2)
    served = S.Contribution(period, AUTHORITY, _cells(held), ())
    [checked], missing = S.cross_check([served], entries)
    assert (checked.ok, missing) == (True, [])
    doctored = S.Contribution(period, AUTHORITY, _cells(held)[1:], ())  # one case left out
    [refused], _ = S.cross_check([doctored], entries)
    assert refused.reason == "contribution-mismatch"
    assert refused.mismatches == (S.Mismatch("first", "negative", 0, 1),)

    # The report: the contribution accepted against the ledger; two people, so every count
    # but 0 is suppressed (the stage and outcome totals too: none is public). The policy's
    # k and round_to, or stricter ones, never laxer.
    status, body = await call(m, RAPPORTEUR_AGENCY, "GET", f"/v1/contributions?period={period}")
    assert status == 200, body
    assert body["statistics"] == {"k": 11, "round_to": 5, "contribution_grace_days": 0}
    report = await _report(m, period, "--json", "--diagnostics", str(tmp_path / "checked"))
    assert report["exit"] == 0, report
    doc = _json_in(report["output"])
    # The output is the publication: the disclosure control and the cells, nothing per
    # authority; the cross-check in the internal file only (and its verdicts on stderr).
    assert set(doc) == {"from", "to", "k", "round_to", "released", "cells"}
    checked = json.loads((tmp_path / "checked").read_text())
    assert (tmp_path / "checked").stat().st_mode & 0o777 == 0o600
    assert f"{period} {AUTHORITY}: accepted" in report["output"]
    assert (doc["k"], doc["round_to"]) == (11, 5)  # the policy's
    stricter = _json_in((await _report(m, period, "--json", "--k", "12"))["output"])
    assert (stricter["k"], stricter["round_to"]) == (12, 5)
    for lax in (("--k", "10"), ("--round-to", "4")):
        refused = await _report(m, period, "--json", *lax)
        assert refused["exit"] == 2 and "below the national policy's" in refused["output"]
    assert [(c["authority"], c["accepted"]) for c in checked["contributions"]] == [
        (AUTHORITY, True)
    ]
    assert (checked["missing"], doc["released"]) == ([], True)
    for released in (doc, stricter):
        counts = [c["count"] for c in released["cells"] if not c["suppressed"]]
        assert all(n == 0 or n >= released["k"] for n in counts), released["cells"]
    grand = {d: "total" for d in ("stage", "outcome", "sex", "age_group", "form")}
    [total] = [c for c in doc["cells"] if all(c[d] == v for d, v in grand.items())]
    assert (total["count"], total["suppressed"]) == (None, True)
    first = {**grand, "stage": "first", "outcome": "negative"}
    [one] = [c for c in doc["cells"] if all(c[d] == v for d, v in first.items())]
    assert (one["count"], one["suppressed"]) == (None, True)

    for _ in range(2):
        desk.tick()
    await m.stop(AUTHORITY)
    await m.start(AUTHORITY)
    m.agents[AUTHORITY].statistics.tick()
    assert len(events(m, AUTHORITY, "statistics.contributed")) == 1
    assert len(await _held(m, period, 1)) == 1

    # Nothing of the cells in clear: neither the bus's store, the ledger's files nor the
    # rapporteur's database (the body sealed under its storage key, as a referral's).
    needles = (b'"cells"', b'"age_group"', b"sexual_exploitation", b'"mixed"')
    control = m.sandbox.root / "needle-control"
    control.mkdir()
    (control / "body").write_bytes(served.encode())
    assert _files_hold(control, needles)  # the search finds the body in clear
    assert _files_hold(m.database(RAPPORTEUR_AGENCY).parent, needles) == []
    assert _files_hold(m.sandbox.root / "bus", needles) == []
    assert _files_hold(m.sandbox.root / "ledger", needles) == []


async def test_only_a_rapporteur_takes_it_and_only_from_an_authority(
    rapporteur: tuple[Mechanism, Path],
) -> None:
    """A contribution sealed by the authority to police is refused `not-for-this-role`;
    one sealed by police (no competent authority) to the rapporteur `not-an-authority`;
    one of the authority naming another authority `unexpected`; a month that has not
    ended `misdated`. The rapporteur holds none of them."""
    m, _ = rapporteur
    authority, police = agency_keys(m, AUTHORITY), agency_keys(m, "police")
    ended = S.period_of(S.period_start(S.period_of(clock.now())) - 1)
    own = S.Contribution(ended, AUTHORITY, (), ()).encode()

    to_police = sealed(m, authority, "police", S.STATISTICS_CONTRIBUTION, own)
    await publish(m, AUTHORITY, "police", to_police)
    await rejected(m, "police", to_police, "not-for-this-role")

    for sender, keys, body, reason in (
        ("police", police, S.Contribution(ended, "police", (), ()).encode(), "not-an-authority"),
        (AUTHORITY, authority, S.Contribution(ended, "police", (), ()).encode(), "unexpected"),
        (AUTHORITY, authority, S.Contribution(S.period_of(clock.now()), AUTHORITY, (), ()).encode(),
         "misdated"),
    ):  # fmt: skip
        data = sealed(m, keys, RAPPORTEUR_AGENCY, S.STATISTICS_CONTRIBUTION, body)
        await publish(m, sender, RAPPORTEUR_AGENCY, data)
        await rejected(m, RAPPORTEUR_AGENCY, data, reason)
    for period in (ended, S.period_of(clock.now())):
        status, body = await call(m, RAPPORTEUR_AGENCY, "GET", f"/v1/contributions?period={period}")
        assert (status, body["items"]) == (200, []), body
    status, body = await call(m, RAPPORTEUR_AGENCY, "GET", "/v1/contributions?period=2027-13")
    assert status == 400, body
    assert json.dumps(body).count("YYYY-MM") == 1


async def test_a_damaged_decision_holds_the_month_back(
    rapporteur: tuple[Mechanism, Path],
) -> None:
    """A decision row damaged in the authority's database sends no contribution (no count
    is better than a wrong one): logged, and the month goes once the row is whole again."""
    m, offset = rapporteur
    period = S.period_of(clock.now())
    _, case_id = await opened_case(m)
    status, body = await decide(m, case_id, {"stage": "first", "outcome": "positive"})
    assert status == 202, body
    conn = sqlite3.connect(m.database(AUTHORITY))
    try:
        with conn:
            [(signed,)] = conn.execute("SELECT signed FROM decisions WHERE case_id = ?", (case_id,))
            conn.execute("UPDATE decisions SET signed = x'00' WHERE case_id = ?", (case_id,))
        await _month_over(m, offset, period)
        desk = m.agents[AUTHORITY].statistics
        desk.tick()
        assert events(m, AUTHORITY, "statistics.") == []
        with conn:
            conn.execute("UPDATE decisions SET signed = ? WHERE case_id = ?", (signed, case_id))
    finally:
        conn.close()
    desk.tick()
    [held] = await _held(m, period, 1)
    assert sum(c["count"] for c in held["cells"]) == 1


async def _one_decision_month_over(m: Mechanism, offset: Path) -> str:
    """A case decided (a positive first stage) this month, then the month over: the month."""
    period = S.period_of(clock.now())
    _, case_id = await opened_case(m)
    status, body = await decide(m, case_id, {"stage": "first", "outcome": "positive"})
    assert status == 202, body
    await _month_over(m, offset, period)
    return period


async def test_a_copy_that_failed_for_good_is_sent_again_a_bounded_number_of_times(
    rapporteur: tuple[Mechanism, Path],
) -> None:
    """A month's copy to the rapporteur recorded failed for good (as a refusal notice or an
    expiry records it, `deliveries`) is sealed again on the next tick, in a new envelope of
    the same body, until MAX_ATTEMPTS copies failed: then the month is given up for that
    rapporteur, logged once, and nothing more is sent; a copy not failed is never sent again."""
    m, offset = rapporteur
    period = await _one_decision_month_over(m, offset)
    desk = m.agents[AUTHORITY].statistics

    def fail_last_copy() -> None:
        conn = sqlite3.connect(m.database(AUTHORITY))
        try:
            with conn:
                changed = conn.execute(
                    "UPDATE deliveries SET state = 'failed', failure = 'expired'"
                    " WHERE recipient = ? AND message_id = (SELECT message_id FROM"
                    " contributions_sent WHERE period = ? AND rapporteur = ?)",
                    (RAPPORTEUR_AGENCY, period, RAPPORTEUR_AGENCY),
                ).rowcount
        finally:
            conn.close()
        assert changed == 1

    desk.tick()
    desk.tick()  # not failed: not sent again
    assert len(events(m, AUTHORITY, "statistics.contributed")) == 1
    for sends in range(2, MAX_ATTEMPTS + 1):
        fail_last_copy()
        desk.tick()
        assert len(events(m, AUTHORITY, "statistics.contributed")) == sends
    sent = events(m, AUTHORITY, "statistics.contributed")
    assert len({e.envelope_hash for e in sent}) == MAX_ATTEMPTS  # a new envelope each time
    [held] = await _held(m, period, 1)  # the same body again changes nothing there
    assert held["envelope_hash"] in {e.envelope_hash for e in sent}

    fail_last_copy()
    with capture_logs() as logs:
        for _ in range(3):
            desk.tick()
    assert len(events(m, AUTHORITY, "statistics.contributed")) == MAX_ATTEMPTS
    given_up = [e for e in logs if e["event"] == "statistics_contribution_given_up"]
    assert [(e["period"], e["rapporteur"]) for e in given_up] == [(period, RAPPORTEUR_AGENCY)]


async def test_what_the_rapporteur_holds_is_shown_to_be_what_the_ledger_names(
    rapporteur: tuple[Mechanism, Path],
) -> None:
    """The rapporteur keeps the sealed envelope: its contribution verifies against the
    ledger's `statistics.contributed` (the hash) and opens again to the body held; a body
    changed in its database is `opens-to-other-body`, an envelope swapped with its hash
    `not-in-ledger`, an envelope swapped alone `envelope-mismatch`."""
    m, offset = rapporteur
    period = await _one_decision_month_over(m, offset)
    m.agents[AUTHORITY].statistics.tick()
    [held] = await _held(m, period, 1)
    entries = await _ledger_items(m, "/v1/entries?start=0", "statistics.contributed", 1)
    desk = m.agents[RAPPORTEUR_AGENCY].statistics
    verified = desk.verify_held(AUTHORITY, period, entries)
    assert verified.cells == _cells(held)

    doctored = dataclasses.replace(
        verified, cells=(dataclasses.replace(verified.cells[0], count=2),)
    )
    other = b"not the envelope"
    conn = sqlite3.connect(m.database(RAPPORTEUR_AGENCY))
    try:
        [(body_row, envelope, digest)] = conn.execute(
            "SELECT body, envelope, envelope_hash FROM contributions"
        )
        for change, error in (
            (("body", bytes(desk.storage().encrypt(doctored.encode()))), S.OpensToOtherBodyError),
            (("envelope", other, "envelope_hash", hashlib.sha256(other).hexdigest()),
             S.NotInLedgerError),
            (("envelope", other), S.EnvelopeMismatchError),
        ):  # fmt: skip
            names, values = change[0::2], change[1::2]
            with conn:
                sets = ", ".join(f"{n} = ?" for n in names)
                conn.execute(f"UPDATE contributions SET {sets}", values)  # noqa: S608 - names above
            with pytest.raises(error):
                desk.verify_held(AUTHORITY, period, entries)
            with conn:
                conn.execute(
                    "UPDATE contributions SET body = ?, envelope = ?, envelope_hash = ?",
                    (body_row, envelope, digest),
                )
    finally:
        conn.close()
    assert desk.verify_held(AUTHORITY, period, entries) == verified


async def test_a_rapporteur_that_cannot_be_sealed_to_is_logged_once_a_month(
    rapporteur: tuple[Mechanism, Path],
) -> None:
    """With the rapporteur's encryption key revoked, its months are not sent (nothing can
    be sealed to it) and not marked sent either; each is logged
    `statistics_recipient_unusable` once, not on every timer step."""
    m, offset = rapporteur
    kid = m.agents[RAPPORTEUR_AGENCY].keys.public.encryption_kid
    admin.revoke_key(m.sandbox.admin, RAPPORTEUR_AGENCY, kid, reason="key lost", at=clock.now())
    m.sandbox.sign_draft()
    await m.sandbox.publish()

    async def unusable() -> bool:
        d = m.agents[AUTHORITY].trust.directory
        return d is not None and all(
            k.status == "revoked" for k in d.agency(RAPPORTEUR_AGENCY).encryption_keys
        )

    await eventually(unusable, what="the authority to know the rapporteur's key revoked")
    period = await _one_decision_month_over(m, offset)
    desk = m.agents[AUTHORITY].statistics
    with capture_logs() as logs:
        for _ in range(3):
            desk.tick()
    told = [e for e in logs if e["event"] == "statistics_recipient_unusable"]
    assert [(e["period"], e["rapporteur"]) for e in told] == [(period, RAPPORTEUR_AGENCY)]
    assert [e for e in logs if e["event"] == "recipient_unusable"] == []
    assert events(m, AUTHORITY, "statistics.contributed") == []
