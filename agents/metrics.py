"""Prometheus metrics of one agent: counts and gauges of ids-free events only.

Each agent has its own registry (several agents may share a process in tests and the demo).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from keys.directory import Directory
from runtime.version import VERSION


class AgentMetrics:
    def __init__(self, *, agency: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
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
    ) -> bytes:
        self.outbox_pending.set(outbox_pending())
        self.root_expiry.set(root_expires)
        if directory is not None:
            self.directory_expiry.set(directory.expires)
        out: bytes = generate_latest(self.registry)
        return out
