"""What the agent, the ledger and the bus authority export on /metrics (docs/RUNBOOK.md,
"Watch it"): request latency by route template, backlog, inbox, directory and standing
gauges, `/healthz` as gauges, the process collectors; no referral id in any label."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agents.metrics import AgentMetrics
from agents.store import Store
from agents.webhooks import WebhookEvent, enqueue, new_event_id
from broker.trust_status import serve_status

from .support import Mechanism, running_mechanism

#: Metric name -> {label tuple -> value}, one sample family per name (histograms' samples
#: under their own names: `_bucket`, `_count`, `_sum`).
Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def samples(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


async def scrape(m: Mechanism, url: str, token: str | None = None) -> str:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with m.http.get(url + "/metrics", headers=headers) as r:
        assert r.status == 200, await r.text()
        return await r.text()


@pytest.fixture
async def scraped(tmp_path: Path) -> AsyncIterator[dict[str, Samples]]:
    """One scrape of a running agent, ledger and bus authority status, after a request for
    a referral that does not exist (its id must not reach a label)."""
    async with running_mechanism(tmp_path) as m:
        police = m.api("police")
        status, _, _ = await police.call("GET", "/v1/referrals/" + "ab" * 16)
        assert status == 404
        assert m.sandbox.ledger is not None and m.sandbox.authority is not None
        agent_text = await scrape(m, police.base, police.token)
        assert "ab" * 16 not in agent_text
        runner = await serve_status(m.sandbox.authority, host="127.0.0.1", port=0)
        try:
            host, port = runner.addresses[0][:2]
            bus_text = await scrape(m, f"http://{host}:{port}")
        finally:
            await runner.cleanup()
        yield {
            "agent": samples(agent_text),
            "ledger": samples(await scrape(m, m.sandbox.ledger.url)),
            "bus": samples(bus_text),
        }


def value(s: Samples, name: str, **labels: str) -> float:
    return s[name][tuple(sorted(labels.items()))]


def test_services_export_latency_backlog_trust_and_process_metrics(
    scraped: dict[str, Samples],
) -> None:
    agent, ledger, bus = scraped["agent"], scraped["ledger"], scraped["bus"]
    assert value(agent, "nrm_http_request_duration_seconds_count",
                 route="/v1/referrals/{id}", status="4xx") == 1  # fmt: skip
    assert value(agent, "nrm_agent_standing", standing="ok") == 1
    assert value(agent, "nrm_agent_standing", standing="key-revoked") == 0
    assert value(agent, "nrm_webhook_backlog") == 0
    assert value(agent, "nrm_inbox_pending_messages") == 0
    assert value(agent, "nrm_inbox_lag_seconds") == 0
    assert value(ledger, "nrm_ledger_checkpoint_age_seconds") >= 0
    assert value(ledger, "nrm_ledger_tree_size") >= 0
    for part, s in (("agent", agent), ("ledger", ledger), ("bus", bus)):
        assert value(s, "nrm_directory_version") >= 1, part
        assert value(s, "nrm_directory_expires_in_seconds") > 86400, part
        assert value(s, "nrm_health_status", status="degraded") == 0, part
        assert value(s, "process_start_time_seconds") > 0, part
        assert "python_info" in s, part


def test_webhook_backlog_counts_queued_events_and_the_oldest_age(tmp_path: Path) -> None:
    store = Store(tmp_path / "agent.db")
    events = [
        WebhookEvent(
            id=new_event_id(), type="transition.received", created=1_700_000_000 + n, data={"n": n}
        )
        for n in range(2)
    ]
    with store.transaction() as db:
        for e in events:
            assert enqueue(db, e)
    assert store.webhook_backlog() == (2, 1_700_000_000)
    metrics = AgentMetrics(agency="police")
    text = metrics.render(
        outbox_pending=lambda: 0, root_expires=0, directory=None, standing="removed",
        webhook_backlog=store.webhook_backlog, inbox=(3, 1.5),
        health={"status": "degraded", "reasons": ["task-died:timers-police"]},
    ).decode()  # fmt: skip
    s = samples(text)
    assert value(s, "nrm_webhook_backlog") == 2
    assert value(s, "nrm_webhook_oldest_pending_age_seconds") > 0
    assert (value(s, "nrm_inbox_pending_messages"), value(s, "nrm_inbox_lag_seconds")) == (3, 1.5)
    assert value(s, "nrm_agent_standing", standing="removed") == 1
    assert value(s, "nrm_agent_standing", standing="ok") == 0
    assert value(s, "nrm_health_status", status="degraded") == 1
    assert value(s, "nrm_health_reason", reason="task-died:timers-police") == 1
