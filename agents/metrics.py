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
        self.outbox_failed = Counter(
            "nrm_outbox_failed",
            "Outbox copies marked failed for good (they can never be accepted), by reason",
            ["reason"],
            registry=self.registry,
        )
        self.bus_connect_failures = Counter(
            "nrm_bus_connect_failures",
            "Failed attempts to connect to the bus, by what they showed (unreachable, refused)",
            ["state"],
            registry=self.registry,
        )
        self.inbox_erase_failed = Counter(
            "nrm_inbox_erase_failed_total",
            "Consumed inbox messages acked without being erased from the bus (their bytes "
            "stay in the stream's files until its block goes), by reason (refused, unavailable)",
            ["reason"],
            registry=self.registry,
        )
        self.outbox_pending = Gauge(
            "nrm_outbox_pending",
            "Outbox rows not yet acknowledged by the bus",
            registry=self.registry,
        )
        self.duplicate_instance = Gauge(
            "nrm_agent_duplicate_instance",
            "1 while another agent process holds this agency's inbox lease (this one does "
            "not consume), else 0",
            registry=self.registry,
        )
        self.lease_conflicts = Counter(
            "nrm_agent_instance_lease_conflicts_total",
            "Times this agent found another process holding its agency's inbox lease",
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
    ) -> bytes:
        self.outbox_pending.set(outbox_pending())
        self.root_expiry.set(root_expires)
        if directory is not None:
            self.directory_expiry.set(directory.expires)
        out: bytes = generate_latest(self.registry)
        return out
