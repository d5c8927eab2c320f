"""Prometheus metrics of one agent: counts and gauges of ids-free events only.

Each agent has its own registry (several agents may share a process in tests and the demo).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from keys.directory import Directory


class AgentMetrics:
    def __init__(self, *, agency: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = {"agency": agency}
        self.sent = Counter(
            "nrm_messages_sent_total",
            "Messages sealed and queued, by kind",
            ["kind"],
            registry=self.registry,
        )
        self.received = Counter(
            "nrm_messages_received_total",
            "Messages verified and stored, by kind",
            ["kind"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "nrm_messages_rejected_total",
            "Messages refused, by reason code",
            ["reason"],
            registry=self.registry,
        )
        self.ledger_alerts = Counter(
            "nrm_ledger_alerts_total",
            "Ledger checks that failed, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.outbox_pending = Gauge(
            "nrm_outbox_pending",
            "Outbox rows not yet acknowledged by the bus",
            registry=self.registry,
        )
        self.directory_expiry = Gauge(
            "nrm_directory_expiry_timestamp_seconds",
            "When the last verified directory expires (Unix seconds); 0 before there is one",
            registry=self.registry,
        )
        self.root_expiry = Gauge(
            "nrm_root_expiry_timestamp_seconds",
            "When the newest trusted root expires (Unix seconds)",
            registry=self.registry,
        )
        self.info = Gauge(
            "nrm_agent_info",
            "Constant 1, labelled with the agency",
            list(labels),
            registry=self.registry,
        )
        self.info.labels(**labels).set(1)

    def render(
        self,
        *,
        outbox_pending: Callable[[], int],
        root_expires: int,
        directory: Directory | None,
    ) -> bytes:
        self.outbox_pending.set(outbox_pending())
        self.root_expiry.set(root_expires)
        if directory is not None:
            self.directory_expiry.set(directory.expires)
        out: bytes = generate_latest(self.registry)
        return out
