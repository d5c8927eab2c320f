"""The bus side of "one agent per agency": agencies logged in more than once, seen by nats-server.

Agents keep a second process of their agency off the inbox with the instance lease
(docs/PROTOCOL.md §5.2), but a copy of an agency's key folder that does not cooperate would
not. nats-server knows every connection and the NKey it authenticated with, so the bus
authority asks it (`/connz?auth=true`) every `CHECK_SECONDS` and reports each agency with more
than one open connection: a log line when that set changes and `duplicates` for callers.
An agent opens exactly one bus connection, so two mean two agent processes (or a stale one
the server has not yet timed out; it drops dead TCP peers after its ping interval).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

import structlog

from runtime.supervisor import Supervisor

log = structlog.get_logger("nrm.broker")

#: How often the open connections are counted.
CHECK_SECONDS = 5.0


def duplicate_agencies(
    connections: Iterable[Mapping[str, object]], agencies: Mapping[str, str]
) -> dict[str, int]:
    """{agency id: number of connections} for agencies logged in more than once;
    `agencies` maps each agency's NKey to its id."""
    counts: dict[str, int] = {}
    for conn in connections:
        agency = agencies.get(str(conn.get("authorized_user") or ""))
        if agency is not None:
            counts[agency] = counts.get(agency, 0) + 1
    return {agency: n for agency, n in sorted(counts.items()) if n > 1}


class ListsConnections(Protocol):
    """A server that lists its open client connections: the embedded `NatsServer`, or a
    server the operator runs (`broker.external.ExternalServer`), both from `/connz`."""

    def connections(self) -> list[dict[str, object]]: ...


class ConnectionWatch:
    """Counts each agency's open connections on `server` and reports agencies seen twice."""

    def __init__(
        self,
        server: ListsConnections,
        *,
        agencies: Callable[[], Mapping[str, str]],
        supervisor: Supervisor | None = None,
    ) -> None:
        self.server = server
        self.supervisor = supervisor or Supervisor("connection-watch")
        self.agencies = agencies
        #: The agencies with more than one open connection at the last check.
        self.duplicates: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    def check(self) -> dict[str, int]:
        """Count now; log each agency whose duplicate state changed."""
        found = duplicate_agencies(self.server.connections(), self.agencies())
        for agency in sorted(set(found) | set(self.duplicates)):
            if agency in found and found[agency] != self.duplicates.get(agency):
                log.error("agency_connected_twice", agency=agency, connections=found[agency])
            elif agency not in found:
                log.info("agency_connected_once", agency=agency)
        self.duplicates = found
        return found

    async def start(self) -> None:
        self._task = self.supervisor.spawn("connection-watch", self._run)

    async def stop(self) -> None:
        if self._task is not None:
            await self.supervisor.stop([self._task])
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.check)
            except (OSError, ValueError, RuntimeError) as e:
                log.warning("connection_check_failed", error=type(e).__name__)
            await asyncio.sleep(CHECK_SECONDS)
