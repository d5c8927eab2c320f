"""Keeps the bus's authorization in step with the verified trust directory.

`authorization_for` turns a directory into the nats-server authorization block; agencies with
the auditor role get auditor permissions. `DirectoryAuthority` watches the directory bucket,
verifies each update from the pinned root exactly as agents do, and reloads the running
server (SIGHUP, no restart) whenever the set of NKeys or roles changes; a rotated NATS key
thus replaces the old one at once, and connections made with the old one are closed. It also
runs the `ConnectionWatch` reporting agencies logged in more than once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import structlog

from keys import DEFAULT_LIMITS
from keys.directory import Directory

from .authz import authorization_block
from .connections import ConnectionWatch
from .follower import DirectoryFollower
from .server import NatsServer

log = structlog.get_logger("nrm.broker")


def authorization_for(directory: Directory, *, operators: Sequence[str]) -> str:
    """The authorization block for `directory`: each agency by its NKey and roles."""
    agencies = [(a.agency, a.nats_key) for a in directory.agencies if "auditor" not in a.roles]
    auditors = [a.nats_key for a in directory.agencies if "auditor" in a.roles]
    return authorization_block(agencies=agencies, auditors=auditors, operators=list(operators))


class DirectoryAuthority:
    """Follows the directory bucket and reloads `server` with the matching authorization."""

    def __init__(
        self,
        server: NatsServer,
        *,
        pinned_root: Path,
        operator_key: str,
        operator_seed: bytes,
        warning_seconds: int = DEFAULT_LIMITS.expiry_warning_seconds,
    ) -> None:
        self.server = server
        self.operators = [operator_key]
        self.applied: str | None = None
        self._nkeys: dict[str, str] = {}  # NKey -> agency id, of the directory applied
        self.connections = ConnectionWatch(server, agencies=lambda: self._nkeys)
        self.follower = DirectoryFollower(
            urls=[server.url],
            nkeys_seed=operator_seed,
            pinned_root=pinned_root,
            on_directory=lambda directory, _: self.apply(directory),
            name="authority",
            warning_seconds=warning_seconds,
        )

    def adopt(self, directory: Directory, block: str) -> None:
        """The server was started with `block`, the authorization of `directory`: remember
        both, as `apply` would (the connection watch needs to know whose NKey is whose)."""
        self.applied = block
        self._nkeys = {a.nats_key: a.agency for a in directory.agencies}

    def apply(self, directory: Directory) -> None:
        """Reload the server with the authorization of `directory` if it changed anything."""
        block = authorization_for(directory, operators=self.operators)
        if block != self.applied:
            self.server.reload(block)
            self.applied = block
            log.info("bus_authorization_reloaded", directory_version=directory.version)
        self._nkeys = {a.nats_key: a.agency for a in directory.agencies}

    async def start(self) -> None:
        await self.follower.start()
        await self.connections.start()

    async def stop(self) -> None:
        await self.connections.stop()
        await self.follower.stop()
