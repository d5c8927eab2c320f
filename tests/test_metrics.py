"""What the agent, the ledger and the bus authority export on /metrics (docs/RUNBOOK.md,
"Watch it"): request latency by route template, backlog, inbox, directory and standing
gauges, `/healthz` as gauges, the process collectors; no referral id in any label."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from agents.metrics import AgentMetrics
from agents.store import Store
from agents.webhooks import WebhookEvent, enqueue, new_event_id
from broker.trust_status import serve_status

from .support import Mechanism, running_mechanism, unavailable

MONITORING = Path(__file__).parent.parent / "deploy" / "monitoring"
ALERTS = MONITORING / "nrm-alerts.yml"
DASHBOARD = MONITORING / "nrm-dashboard.json"
SCRAPE = MONITORING / "prometheus.yml"
#: Series Prometheus makes itself for every target (not exported by a service).
PROMETHEUS_OWN = frozenset({"up"})
#: PromQL words that look like names but are not metrics.
KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
     "bool", "offset", "inf", "nan"}
)  # fmt: skip

#: Metric name -> {label tuple -> value}, one sample family per name (histograms' samples
#: under their own names: `_bucket`, `_count`, `_sum`).
Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def samples(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def exported_names(text: str) -> set[str]:
    """Every series name `text` (the Prometheus text format) declares or has samples of,
    labelled families with no child yet included (from their `# TYPE` line)."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.add(name)
            suffixes = {"histogram": ("_bucket", "_count", "_sum"), "summary": ("_count", "_sum")}
            names |= {name + suffix for suffix in suffixes.get(kind, ())}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def promql_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: what is left of its identifiers once
    strings, label matchers, ranges, grouping clauses and function calls are taken out."""
    rest = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    rest = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", rest)
    rest = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", rest)
    words = re.findall(r"(?<![\w.])([a-zA-Z_:][\w:]*)(\s*\()?", rest)
    return {w for w, call in words if not call and w.lower() not in KEYWORDS}


def monitoring_expressions() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    exprs = [str(r["expr"]) for g in rules["groups"] for r in g["rules"]]
    dashboard = json.loads(DASHBOARD.read_text())
    exprs += [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    return exprs


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
        ledger_text = await scrape(m, m.sandbox.ledger.url, m.sandbox.auditor_token)
        yield {
            "agent": samples(agent_text),
            "ledger": samples(ledger_text),
            "bus": samples(bus_text),
            "names": {
                n: {} for t in (agent_text, ledger_text, bus_text) for n in exported_names(t)
            },
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
    # Every name the alert rules and the dashboard read is one of these services' own.
    exported = set(scraped["names"])
    exprs = monitoring_expressions()
    assert len(exprs) > 20
    for expr in exprs:
        names = promql_names(expr)
        assert names, expr
        assert names - PROMETHEUS_OWN <= exported, (expr, names - exported)


def test_promql_names_are_the_metrics_only() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, route) (rate(nrm_x_bucket{job=~"a.b"}[5m])))'
        " > 0 and on (instance) nrm_y offset 5m or vector(1)"
    )
    assert promql_names(expr) == {"nrm_x_bucket", "nrm_y"}


def test_alert_rules_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        unavailable("promtool is not installed (Debian package prometheus)")
    result = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_scrape_config_passes_promtool(tmp_path: Path) -> None:
    """deploy/monitoring/prometheus.yml (its token files given) passes `promtool check
    config`, and the ledger job sends a bearer token file."""
    promtool = shutil.which("promtool")
    if promtool is None:
        unavailable("promtool is not installed (Debian package prometheus)")
    config = yaml.safe_load(SCRAPE.read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert jobs["nrm-ledger"]["authorization"]["credentials_file"]
    for name in (SCRAPE.name, ALERTS.name):
        shutil.copy(SCRAPE.parent / name, tmp_path / name)
    for job in ("nrm-agent", "nrm-ledger"):
        token = tmp_path / jobs[job]["authorization"]["credentials_file"]
        token.write_text("t" * 22)
        token.chmod(0o600)
    result = subprocess.run(
        [promtool, "check", "config", str(tmp_path / SCRAPE.name)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


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
