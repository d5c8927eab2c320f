"""Prometheus metrics of one agent: counts and gauges of ids-free events only (labels are
agency ids, kinds, reasons, route templates and states; never a referral id).

Each agent has its own registry (several agents may share a process in tests and the demo),
with the process and platform collectors (`process_*`, `python_info`) and request latency
(`nrm_http_request_duration_seconds`, runtime/http_metrics.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from keys.directory import Directory
from keys.standing import REASONS
from runtime import clock
from runtime.http_metrics import HealthGauges, add_process_collectors, request_metrics
from runtime.version import VERSION

#: The standings `nrm_agent_standing` always has a series for (agents/standing.py).
STANDINGS = ("ok", *REASONS)
#: Why the publisher holds queued copies back (agents/transport.py, agents/standing.py):
#: `nrm_outbox_held` always has a series for each.
HOLD_REASONS = ("directory-unread", "signing-key-unlisted", "signing-key-revoked")


class AgentMetrics:
    def __init__(self, *, agency: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        add_process_collectors(self.registry)
        #: The API's first middleware (agents/api.py).
        self.http = request_metrics(self.registry)
        self.health = HealthGauges(self.registry)
        labels = {"agency": agency}

        def counter(name: str, documentation: str, labelnames: Sequence[str] = ()) -> Counter:
            return Counter(name, documentation, labelnames, registry=self.registry)

        def gauge(name: str, documentation: str, labelnames: Sequence[str] = ()) -> Gauge:
            return Gauge(name, documentation, labelnames, registry=self.registry)

        self.sent = counter(
            "nrm_messages_sent_total", "Messages sealed and queued, by kind", ["kind"]
        )
        self.received = counter(
            "nrm_messages_received_total", "Messages verified and stored, by kind", ["kind"]
        )
        self.rejected = counter(
            "nrm_messages_rejected_total", "Messages refused, by reason code", ["reason"]
        )
        self.ledger_alerts = counter(
            "nrm_ledger_alerts_total", "Ledger checks that failed, by reason", ["reason"]
        )
        self.outbox_failed = counter(
            "nrm_outbox_failed",
            "Outbox copies marked failed for good (they can never be accepted), by reason",
            ["reason"],
        )
        self.bus_connect_failures = counter(
            "nrm_bus_connect_failures",
            "Failed attempts to connect to the bus, by what they showed "
            "(unreachable, refused, tls-failed)",
            ["state"],
        )
        self.inbox_erase_failed = counter(
            "nrm_inbox_erase_failed_total",
            "Consumed inbox messages acked without being erased from the bus (their bytes "
            "stay in the stream's files until its block goes), by reason (refused, unavailable)",
            ["reason"],
        )
        self.outbox_pending = gauge(
            "nrm_outbox_pending", "Outbox rows not yet acknowledged by the bus"
        )
        self.outbox_held = gauge(
            "nrm_outbox_held",
            "Queued copies the publisher held back at its last look (at most one batch), by "
            "reason: directory-unread (connected, the directory not read yet: routine for a "
            "moment after each connection), signing-key-unlisted or signing-key-revoked (signed "
            "by a key the directory refuses; failed next)",
            ["reason"],
        )
        self.duplicate_instance = gauge(
            "nrm_agent_duplicate_instance",
            "1 while another agent process holds this agency's inbox lease (this one does "
            "not consume), else 0",
        )
        self.lease_conflicts = counter(
            "nrm_agent_instance_lease_conflicts_total",
            "Times this agent found another process holding its agency's inbox lease",
        )
        self.directory_expiry = gauge(
            "nrm_directory_expiry_timestamp_seconds",
            "When the last verified directory expires (Unix seconds); 0 before there is one",
        )
        self.root_expiry = gauge(
            "nrm_root_expiry_timestamp_seconds",
            "When the newest trusted root expires (Unix seconds)",
        )
        self.directory_version = gauge(
            "nrm_directory_version", "Version of the last verified directory; 0 before there is one"
        )
        self.directory_expires_in = gauge(
            "nrm_directory_expires_in_seconds",
            "Seconds until the last verified directory expires (negative once expired; "
            "0 before there is one)",
        )
        self.webhook_backlog = gauge(
            "nrm_webhook_backlog",
            "Webhook events queued and not yet taken by every configured receiver",
        )
        self.webhook_oldest_age = gauge(
            "nrm_webhook_oldest_pending_age_seconds",
            "Age of the oldest webhook event not yet taken by every receiver; 0 when none is",
        )
        self.inbox_pending = gauge(
            "nrm_inbox_pending_messages",
            "Messages waiting in the agency's inbox consumer after the last fetched batch "
            "(JetStream num_pending); 0 once drained",
        )
        self.inbox_lag = gauge(
            "nrm_inbox_lag_seconds",
            "How long the oldest message of the last fetched batch had waited on the bus; "
            "0 once the inbox is drained",
        )
        self.standing = gauge(
            "nrm_agent_standing",
            "1 for the agency's current standing in the directory (ok, removed, key-revoked, "
            "key-unlisted, key-retired), 0 for the others",
            ["standing"],
        )
        info = {**labels, "version": VERSION}
        self.info = gauge(
            "nrm_agent_info", "Constant 1, labelled with the agency and the release", list(info)
        )
        self.info.labels(**info).set(1)

    def instance_lease(self, state: str) -> None:
        """The instance lease changed state (agents/presence.py)."""
        duplicate = state == "duplicate-instance"
        self.duplicate_instance.set(1 if duplicate else 0)
        if duplicate:
            self.lease_conflicts.inc()

    def render(
        self,
        *,
        outbox_pending: Callable[[], int],
        root_expires: int,
        directory: Directory | None,
        standing: str,
        webhook_backlog: Callable[[], tuple[int, int | None]],
        inbox: tuple[int, float],
        health: dict[str, Any],
        held: dict[str, int] | None = None,
    ) -> bytes:
        now = clock.now()
        self.health.set(health)
        self.outbox_pending.set(outbox_pending())
        self.root_expiry.set(root_expires)
        if directory is not None:
            self.directory_expiry.set(directory.expires)
            self.directory_version.set(directory.version)
            self.directory_expires_in.set(directory.expires - now)
        for state in {standing, *STANDINGS}:
            self.standing.labels(state).set(1 if state == standing else 0)
        backlog, oldest = webhook_backlog()
        self.webhook_backlog.set(backlog)
        self.webhook_oldest_age.set(0 if oldest is None else max(0, now - oldest))
        self.inbox_pending.set(inbox[0])
        self.inbox_lag.set(inbox[1])
        held = held or {}
        for reason in {*held, *HOLD_REASONS}:
            self.outbox_held.labels(reason).set(held.get(reason, 0))
        out: bytes = generate_latest(self.registry)
        return out
