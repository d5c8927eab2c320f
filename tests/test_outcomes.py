"""Outcome feedback to the referrer (issue 15 item 4, docs/proposals/nrm-process.md §7.4): a
provider closing a referral tells the referrer what happened with the service, one code of
the closed outcome vocabulary (PROTOCOL.md §8.4).

Real nats-server, real ledger, real SQLite, real HTTP: the police refers to the shelter, the
shelter closes; the hostile step is sealed with the shelter's own keys and published with its
own bus credentials, past its agent.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from agents import lifecycle as L
from agents.messages import REFUSAL, TRANSITION
from keys import codec
from keys.audit import decode_signed_event
from runtime import clock

from . import samples
from .support import Mechanism, agency_keys, eventually, query, running_mechanism, sealed
from .support import webhook_receiver as serve_webhooks
from .test_agent import delivered
from .test_referrals import act, get, recipient_state
from .test_sender_scope import held, publish, rejected

#: The outcomes this release adds (PROTOCOL.md §8.4), written out apart from agents/lifecycle.py.
NEW_OUTCOMES = (
    "service_provided",
    "service_partly_provided",
    "person_declined",
    "person_left",
    "transferred",
)


class Events:
    """The police's agency system: takes every webhook event (200) and keeps its JSON."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(json.loads(await request.read()))
        return web.Response(status=200)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.received if e.get("type") == kind]


@pytest.fixture
async def hooked(tmp_path: Path) -> AsyncIterator[tuple[Mechanism, Events]]:
    """The three agencies, the police's webhooks going to a local agency system."""
    events = Events()
    async with (
        serve_webhooks(events.handle) as url,
        running_mechanism(tmp_path, webhooks={"police": url}) as m,
    ):
        yield m, events


async def in_progress(m: Mechanism) -> str:
    """A referral from the police that the shelter has acknowledged, accepted and is working
    on, both sides seeing in_progress."""
    referral_id = await m.api("police").refer(["shelter"], samples.referral())
    await delivered(m, "police", referral_id)
    for to in ("acknowledged", "accepted", "in_progress"):
        status, body, _ = await act(m, "shelter", referral_id, to=to)
        assert status == 202, body
    await recipient_state(m, referral_id, "in_progress")
    return referral_id


def audited(db: Path, kind: str, referral_id: str) -> list[tuple[tuple[str, str], ...]]:
    """The labels of every `kind` event about `referral_id` the agent at `db` signed."""
    events = [
        decode_signed_event(bytes(r[0]))[0] for r in query(db, "SELECT event FROM audit_outbox")
    ]
    return [e.labels for e in events if e.kind == kind and e.referral_id == referral_id]


async def test_a_provider_closes_with_each_new_outcome_and_the_referrer_sees_it(
    hooked: tuple[Mechanism, Events],
) -> None:
    """For each new outcome the shelter closes a referral with it; the police sees the pair
    closed with that outcome in its API and history, gets it in `transition.received`, and
    signs `transition.received` labelled only `state` = `closed` (the ledger learns that the
    pair closed, never how: the outcome is not an audit label)."""
    m, events = hooked
    closed: dict[str, str] = {}
    for outcome in NEW_OUTCOMES:
        referral_id = await in_progress(m)
        status, body, _ = await act(m, "shelter", referral_id, to="closed", outcome=outcome)
        assert status == 202, body
        assert body["state"] == "closed"
        closed[referral_id] = outcome
    for referral_id in closed:
        await recipient_state(m, referral_id, "closed")

    async def told() -> bool:
        hooks = {
            e["data"]["referral_id"]
            for e in events.of_type("transition.received")
            if e["data"]["to"] == "closed"
        }
        return set(closed) <= hooks

    await eventually(told, timeout=30, what="the police's system to be told of every close")
    for referral_id, outcome in closed.items():
        for agency in ("police", "shelter"):
            history = await get(m, agency, f"/v1/referrals/{referral_id}/history")
            last = history["items"][-1]
            assert (last["to"], last["party"], last["outcome"]) == ("closed", "recipient", outcome)
        # Webhooks are at least once: a redelivery carries the same data.
        [hook] = {
            json.dumps(e["data"], sort_keys=True)
            for e in events.of_type("transition.received")
            if e["data"]["referral_id"] == referral_id and e["data"]["to"] == "closed"
        }
        assert json.loads(hook) == {
            "owner": "police",
            "referral_id": referral_id,
            "counterpart": "shelter",
            "from": "in_progress",
            "to": "closed",
            "reason": None,
            "outcome": outcome,
        }
        received = audited(m.database("police"), "transition.received", referral_id)
        assert (("state", "closed"),) in received
        sent = audited(m.database("shelter"), "transition.sent", referral_id)
        assert (("state", "closed"),) in sent
        assert all(name != "outcome" for labels in received + sent for name, _ in labels)


async def test_an_unknown_outcome_is_400_naming_the_codes_and_changes_nothing(
    mechanism: Mechanism,
) -> None:
    """Closing with an outcome outside the vocabulary (a lookalike, free text, or on a step
    that takes none) is 400 problem+json naming every allowed code and never the value;
    nothing is stored or sent at either side, and the pair still closes with a real code."""
    m = mechanism
    referral_id = await in_progress(m)
    # What a step stores or sends; delivery states and receipts of the earlier steps may
    # still move meanwhile, so copies are compared by id, events by what they are about.
    selects = (
        "SELECT message_id, kind FROM outbox",
        "SELECT message_id, recipient FROM deliveries",
        "SELECT * FROM history",
        "SELECT owner, referral_id, counterpart, state FROM referrals",
    )

    def snapshot() -> dict[str, Any]:
        return {
            agency: (
                [query(m.database(agency), sql) for sql in selects],
                audited(m.database(agency), "transition.sent", referral_id),
                audited(m.database(agency), "transition.received", referral_id),
            )
            for agency in ("police", "shelter")
        }

    before = snapshot()
    for doc in (
        {"to": "closed", "outcome": "service-provided"},
        {"to": "closed", "outcome": "Rehoused with her sister"},
        {"to": "cancelled", "reason": "other", "outcome": "rehoused"},
    ):
        status, body, ctype = await act(m, "shelter", referral_id, **doc)
        assert (status, ctype) == (400, "application/problem+json"), body
        assert body["detail"] == "outcome must be one of: " + ", ".join(L.OUTCOMES)
        assert str(doc["outcome"]) not in json.dumps(body)
    assert snapshot() == before
    assert (await get(m, "shelter", f"/v1/referrals/{referral_id}"))["state"] == "in_progress"

    status, body, _ = await act(m, "shelter", referral_id, to="closed", outcome="person_left")
    assert status == 202, body
    await recipient_state(m, referral_id, "closed")


async def test_a_hand_sealed_close_with_an_unknown_outcome_is_refused_by_the_referrer(
    mechanism: Mechanism,
) -> None:
    """The shelter's keys sign a closed step whose outcome is no code of the vocabulary,
    published past its agent: the police refuses it as unknown-outcome-code, audited, with a
    refusal notice to the shelter, and keeps its pair in_progress, row for row; an honest
    close with a new outcome then goes through."""
    m = mechanism
    referral_id = await in_progress(m)
    police_db = m.database("police")
    before = held(police_db, "police", referral_id)
    refusals = len(query(police_db, "SELECT 1 FROM outbox WHERE kind = ?", REFUSAL))
    step = [1, referral_id, "shelter", "in_progress", "closed", "recipient", None, "rehoused"]
    data = sealed(
        m, agency_keys(m, "shelter"), "police", TRANSITION, codec.pack([*step, clock.now()])
    )
    await publish(m, "shelter", "police", data)
    await rejected(m, "police", data, "unknown-outcome-code")

    assert held(police_db, "police", referral_id) == before
    assert len(query(police_db, "SELECT 1 FROM outbox WHERE kind = ?", REFUSAL)) == refusals + 1
    [pair] = (await get(m, "police", f"/v1/referrals/{referral_id}"))["recipients"]
    assert pair["state"] == "in_progress"

    status, body, _ = await act(m, "shelter", referral_id, to="closed", outcome="transferred")
    assert status == 202, body
    await recipient_state(m, referral_id, "closed")
    history = await get(m, "police", f"/v1/referrals/{referral_id}/history")
    assert history["items"][-1]["outcome"] == "transferred"
