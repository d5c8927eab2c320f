"""Keeps the bus's authorization in step with the verified trust directory.

`authorization_for` turns a directory into the nats-server authorization block; agencies with
the auditor role get auditor permissions. `DirectoryAuthority` watches the directory bucket,
verifies each update from the pinned root exactly as agents do, and reloads the running
server (SIGHUP, no restart) whenever the set of NKeys or roles changes; a rotated NATS key
thus replaces the old one at once, and connections made with the old one are closed. An
agency the directory admits gets its attachment bucket (broker/streams.py) before the
reload lets it connect. It also runs the `ConnectionWatch` reporting agencies logged in
more than once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import structlog

from keys import DEFAULT_LIMITS
from keys.directory import Directory

from .authz import authorization_block
from .connections import ConnectionWatch
from .follower import TRANSIENT, DirectoryFollower
from .server import NatsServer
from .streams import provision_stores_for

#: How long to wait before trying a failed bucket creation again.
RETRY_SECONDS = 1.0

log = structlog.get_logger("nrm.broker")


def attachment_owners(directory: Directory) -> list[str]:
    """The agencies of `directory` that have an attachment bucket: all but auditors."""
    return [a.agency for a in directory.agencies if "auditor" not in a.roles]


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
        self.operator_seed = operator_seed
        self.applied: str | None = None
        self._nkeys: dict[str, str] = {}  # NKey -> agency id, of the directory applied
        #: Agencies whose attachment bucket exists (created by us or by the caller).
        self.provisioned: set[str] = set()
        self._waiting: Directory | None = None  # admits agencies without a bucket yet
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.connections = ConnectionWatch(server, agencies=lambda: self._nkeys)
        self.follower = DirectoryFollower(
            urls=[server.url],
            nkeys_seed=operator_seed,
            pinned_root=pinned_root,
            on_directory=lambda directory, _: self.offer(directory),
            name="authority",
            warning_seconds=warning_seconds,
        )

    def adopt(self, directory: Directory, block: str) -> None:
        """The server was started with `block`, the authorization of `directory`, and the
        caller provisioned its agencies' attachment buckets: remember all three, as
        `apply` would (the connection watch needs to know whose NKey is whose)."""
        self.applied = block
        self._nkeys = {a.nats_key: a.agency for a in directory.agencies}
        self.provisioned.update(attachment_owners(directory))

    def offer(self, directory: Directory) -> None:
        """A newly trusted directory: apply it now if every agency it lists has its
        attachment bucket, else once the provisioning task has created the missing ones
        (so that an admitted agency can connect only when its bucket exists)."""
        if set(attachment_owners(directory)) <= self.provisioned:
            self._waiting = None
            self.apply(directory)
        else:
            self._waiting = directory
            self._wake.set()

    def apply(self, directory: Directory) -> None:
        """Reload the server with the authorization of `directory` if it changed anything."""
        block = authorization_for(directory, operators=self.operators)
        if block != self.applied:
            self.server.reload(block)
            self.applied = block
            log.info("bus_authorization_reloaded", directory_version=directory.version)
        self._nkeys = {a.nats_key: a.agency for a in directory.agencies}

    async def start(self) -> None:
        self._task = asyncio.create_task(self._provision_loop(), name="authority-buckets")
        await self.follower.start()
        await self.connections.start()

    async def stop(self) -> None:
        await self.connections.stop()
        await self.follower.stop()
        if self._task is not None:
            self._task.cancel()
            # gather re-raises the caller's own cancellation, never swallows it
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _provision_loop(self) -> None:
        """Create the buckets a waiting directory needs, then apply it; a newer directory
        offered meanwhile replaces it (and is applied after its own buckets)."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            directory = self._waiting
            if directory is None:
                continue
            missing = [a for a in attachment_owners(directory) if a not in self.provisioned]
            try:
                await provision_stores_for(self.server.url, missing, nkeys_seed=self.operator_seed)
            except TRANSIENT as e:
                log.warning("attachment_bucket_provisioning_failed", error=type(e).__name__)
                await asyncio.sleep(RETRY_SECONDS)
                self._wake.set()
                continue
            self.provisioned.update(missing)
            log.info("attachment_buckets_provisioned", count=len(missing))
            if self._waiting is directory:
                self._waiting = None
                self.apply(directory)
