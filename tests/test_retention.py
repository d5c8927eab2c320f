"""Retention (issue 11, deliverable 4): the schedule's strict configuration, and purges that
happen after each period, not before, and never to a referral under legal hold.

The clock is moved with runtime.clock's offset file (as in tests/timetravel) while the agents
run in this process; each purge round is run directly (the background loop waits an hour).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agents import transfers as T
from agents.config import AgentConfig, ConfigError
from agents.retention import DAY, RetentionSchedule
from agents.storage import CLOSED_REQUEST_STATES
from keys.audit import AuditEvent, decode_signed_event, new_event_id
from runtime import clock

from . import samples
from .support import Mechanism, eventually, query
from .test_agent import delivered

SHORT = RetentionSchedule(
    delivered_envelopes_days=1,
    idempotency_keys_days=1,
    webhook_bodies_days=1,
    history_days=3,
    closed_referrals_days=2,
)


def short_schedule(m: Mechanism, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Police and the shelter on the SHORT schedule, the clock at its offset file (returned)
    set to now."""
    offset = tmp_path / "clock-offset"
    clock.set_offset(offset, 0)
    monkeypatch.setenv(clock.ENV, str(offset))
    for agency in ("police", "shelter"):
        m.agents[agency].retention.schedule = SHORT
    return offset


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"history_days": 0}, "positive integer"),
        ({"history_days": -5}, "positive integer"),
        ({"history_days": 1.5}, "positive integer"),
        ({"history_days": True}, "positive integer"),
        ({"history_days": "30"}, "positive integer"),
        ({"keep_forever": 1}, "unknown retention setting"),
        ([], "must be a table"),
    ],
)
def test_a_bad_retention_setting_is_refused(doc: Any, message: str) -> None:
    """Zero, negative, fractional, boolean or quoted periods and unknown names are refused."""
    with pytest.raises(ValueError, match=message):
        RetentionSchedule.from_dict(doc)


def test_the_defaults_are_documented_values() -> None:
    """An empty `[retention]` table gives the documented defaults (docs/RUNBOOK.md)."""
    s = RetentionSchedule.from_dict({})
    assert (s.delivered_envelopes_days, s.idempotency_keys_days, s.webhook_bodies_days) == (
        30,
        7,
        30,
    )
    assert (s.history_days, s.closed_referrals_days) == (2190, 2190)
    assert RetentionSchedule.from_dict({"history_days": 10}).history_days == 10


def test_the_agent_configuration_reads_its_retention_table(tmp_path: Path) -> None:
    """`[retention]` in agent.toml sets the schedule; a bad value stops the configuration
    from loading with an error naming the setting; without the table the defaults apply."""
    doc: dict[str, Any] = {
        "agency": "police",
        "key_dir": "keys",
        "nats_urls": ["nats://127.0.0.1:4222"],
        "database": "agent.db",
        "api": {"bind": "127.0.0.1:0"},
        "trust_root": "root.json",
    }
    assert AgentConfig.from_dict(doc, base=tmp_path).retention == RetentionSchedule()
    config = AgentConfig.from_dict({**doc, "retention": {"history_days": 10}}, base=tmp_path)
    assert config.retention.history_days == 10
    with pytest.raises(ConfigError, match="closed_referrals_days"):
        AgentConfig.from_dict({**doc, "retention": {"closed_referrals_days": 0}}, base=tmp_path)


@pytest.mark.parametrize(
    ("kind", "labels", "valid"),
    [
        ("retention.purged", (("closed_referrals", "12"), ("history", "0")), True),
        ("retention.purged", (("history", "012"),), False),  # not canonical decimal
        ("retention.purged", (("history", "1e3"),), False),
        ("retention.purged", (("history", "1234567890"),), False),  # over nine digits
        ("retention.purged", (("names", "1"),), False),  # not a purged kind
        ("retention.purged", (("urgency", "urgent"),), False),  # statistics labels: not here
        ("referral.sent", (("history", "1"),), False),  # counts only on retention.purged
    ],
)
def test_retention_events_carry_counts_and_nothing_else(
    kind: str, labels: tuple[tuple[str, str], ...], valid: bool
) -> None:
    """A `retention.purged` event carries only decimal counts of the purged kinds, and
    count labels are refused on every other kind (PROTOCOL.md §9.0)."""

    def make() -> AuditEvent:
        return AuditEvent(
            event_id=new_event_id(), agency="police", kind=kind, time=1, labels=labels
        )

    if valid:
        assert make().labels == labels
    else:
        with pytest.raises(ValueError, match="label"):
            make()


async def test_purge_after_the_period_not_before_and_not_under_legal_hold(
    mechanism: Mechanism, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two referrals declined by the shelter, one under legal hold at both agencies: before
    the periods nothing goes; after them the free one's envelopes, idempotency record,
    history and finally the referral itself go, counted in `retention.purged`, while the held
    one keeps everything until its hold is lifted."""
    m = mechanism
    offset = short_schedule(m, tmp_path, monkeypatch)
    police, shelter = m.agents["police"], m.agents["shelter"]
    ids = []
    for n in range(2):
        status, body, _ = await m.api("police").call(
            "POST",
            "/v1/referrals",
            json={"recipients": ["shelter"], "referral": samples.referral()},
            headers={"Idempotency-Key": f"retention-{n}"},
        )
        assert status == 202, body
        ids.append(body["id"])
    free, held = ids
    for rid in ids:
        await delivered(m, "police", rid)
        for step in ({"to": "acknowledged"}, {"to": "declined", "reason": "no-capacity"}):
            status, body, _ = await m.api("shelter").call(
                "POST", f"/v1/referrals/{rid}/transitions", json=step
            )
            assert status == 202, body

    async def declined_at_police() -> bool:
        got = [await m.api("police").call("GET", f"/v1/referrals/{rid}") for rid in ids]
        return all(b["recipients"][0]["state"] == "declined" for _, b, _ in got)

    await eventually(declined_at_police, what="police to see both referrals declined")
    for agency in ("police", "shelter"):
        status, body, _ = await m.api(agency).call("PUT", f"/v1/referrals/{held}/legal-hold")
        assert (status, body["legal_hold"]) == (200, True), body
    status, body, _ = await m.api("shelter").call("PUT", f"/v1/referrals/{'0' * 32}/legal-hold")
    assert status == 404, body
    status, body, _ = await m.api("shelter").call(
        "PUT", f"/v1/referrals/{held}/legal-hold", token="not-a-token"
    )
    assert status == 401, body

    police_db, shelter_db = m.database("police"), m.database("shelter")

    def envelope_sizes() -> dict[str, int]:
        rows = query(
            police_db,
            "SELECT referral_id, length(envelope) FROM outbox WHERE kind = 'referral'",
        )
        return {r[0]: r[1] for r in rows}

    def held_everything() -> None:
        assert envelope_sizes()[held] > 0
        assert query(shelter_db, "SELECT 1 FROM referrals WHERE referral_id = ?", held)
        assert query(shelter_db, "SELECT 1 FROM data_keys WHERE referral_id = ?", held)
        assert query(shelter_db, "SELECT 1 FROM history WHERE referral_id = ?", held)
        assert query(police_db, "SELECT 1 FROM history WHERE referral_id = ?", held)

    # Just before each period: nothing at all.
    clock.set_offset(offset, DAY - 60)
    for agent in (police, shelter):
        assert set((await agent.retention.purge()).values()) == {0}
    assert all(size > 0 for size in envelope_sizes().values())
    assert query(police_db, "SELECT count(*) FROM idempotency") == [(2,)]

    # Past the envelope and idempotency periods: those go, but not the held referral's.
    clock.set_offset(offset, DAY + 60)
    counts = await police.retention.purge()
    assert counts["envelopes"] >= 1 and counts["idempotency_keys"] == 2, counts
    assert counts["closed_referrals"] == counts["history"] == 0, counts
    assert envelope_sizes()[free] == 0
    assert query(police_db, "SELECT count(*) FROM idempotency") == [(0,)]
    held_everything()

    # Past the closed-referral period: the free referral goes whole, at both agencies.
    clock.set_offset(offset, 2 * DAY + 60)
    for agent in (police, shelter):
        counts = await agent.retention.purge()
        assert counts["closed_referrals"] == 1, counts
    assert not query(shelter_db, "SELECT 1 FROM referrals WHERE referral_id = ?", free)
    assert not query(shelter_db, "SELECT 1 FROM data_keys WHERE referral_id = ?", free)
    assert not query(shelter_db, "SELECT 1 FROM history WHERE referral_id = ?", free)
    assert query(shelter_db, "SELECT body FROM inbox WHERE referral_id = ?", free) == [(None,)]
    assert not query(police_db, "SELECT 1 FROM referrals WHERE referral_id = ?", free)
    status, _, _ = await m.api("shelter").call("GET", f"/v1/referrals/{free}")
    assert status == 404
    held_everything()

    # The purge is audited by count only.
    events = [
        decode_signed_event(bytes(r[0]))[0]
        for r in query(shelter_db, "SELECT event FROM audit_outbox ORDER BY seq")
    ]
    purged = [e for e in events if e.kind == "retention.purged"]
    assert purged and all(e.referral_id is None and e.counterpart is None for e in purged)
    assert dict(purged[-1].labels)["closed_referrals"] == "1"

    # Once the hold is lifted, the schedule applies to it too.
    status, body, _ = await m.api("shelter").call("DELETE", f"/v1/referrals/{held}/legal-hold")
    assert (status, body["legal_hold"]) == (200, False), body
    counts = await shelter.retention.purge()
    assert counts["closed_referrals"] == 1, counts
    assert not query(shelter_db, "SELECT 1 FROM referrals WHERE referral_id = ?", held)
    clock.set_offset(offset, 0)


async def test_finished_transfer_requests_go_with_their_pair(
    mechanism: Mechanism, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shelter asks police twice for the case of a referral it then declines; police
    refuses one request. Just before the closed-referral period nothing goes; after it the
    pair goes at both agencies and the refused request with it, while the request still
    open stays (its pair gone, it is purged once it is final)."""
    m = mechanism
    offset = short_schedule(m, tmp_path, monkeypatch)
    police, shelter = m.agents["police"], m.agents["shelter"]
    assert set(CLOSED_REQUEST_STATES) == T.FINAL_STATES[T.REQUEST]
    rid = await m.api("police").refer(["shelter"], samples.referral())
    await delivered(m, "police", rid)
    asked = {"owner": "police", "referral_id": rid, "case_id": None, "reason": "other"}
    ids = []
    for _ in range(2):
        status, body, _ = await m.api("shelter").call("POST", "/v1/transfer-requests", json=asked)
        assert status == 202, body
        ids.append(body["request_id"])
    refused, still_open = ids

    async def at_police() -> bool:
        return len(query(m.database("police"), "SELECT 1 FROM transfer_requests")) == 2

    await eventually(at_police, what="police to hold both requests")
    status, body, _ = await m.api("police").call(
        "POST", f"/v1/transfer-requests/{refused}/refuse", json={"reason": "other"}
    )
    assert status == 202, body
    for step in ({"to": "acknowledged"}, {"to": "declined", "reason": "no-capacity"}):
        status, body, _ = await m.api("shelter").call(
            "POST", f"/v1/referrals/{rid}/transitions", json=step
        )
        assert status == 202, body

    def requests(agency: str) -> list[tuple[str, str]]:
        return query(m.database(agency), "SELECT request_id, state FROM transfer_requests")

    async def settled() -> bool:
        _, body, _ = await m.api("police").call("GET", f"/v1/referrals/{rid}")
        return body["recipients"][0]["state"] == "declined" and sorted(requests("shelter")) == (
            sorted([(refused, "refused"), (still_open, "delivered")])
        )

    await eventually(settled, what="the refusal and the decline to reach the other side")
    clock.set_offset(offset, 2 * DAY - 60)
    for agent in (police, shelter):
        assert (await agent.retention.purge())["closed_referrals"] == 0
    assert len(requests("police")) == len(requests("shelter")) == 2
    clock.set_offset(offset, 2 * DAY + 60)
    for agent in (police, shelter):
        assert (await agent.retention.purge())["closed_referrals"] == 2
    for agency in ("police", "shelter"):
        assert not query(m.database(agency), "SELECT 1 FROM referrals WHERE referral_id = ?", rid)
        assert requests(agency) == [(still_open, "delivered")]
    clock.set_offset(offset, 0)
