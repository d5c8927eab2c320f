"""Keeps the bus's authorization in step with the verified trust directory.

`authorization_for` turns a directory into the nats-server authorization block; agencies with
the auditor role get auditor permissions. `DirectoryAuthority` watches the directory bucket,
verifies each update from the pinned root exactly as agents do, and reloads the running
server (SIGHUP, no restart) whenever the set of NKeys or roles changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from pathlib import Path

import nats
import nats.errors
import structlog

from keys import UntrustedInputError
from keys.directory import Directory, TrustStore, verify_initial_root
from keys.subjects import DIRECTORY_BUCKET, DIRECTORY_KEY

from .authz import authorization_block
from .server import NatsServer

log = structlog.get_logger("nrm.broker")

TRANSIENT = (nats.errors.Error, TimeoutError, OSError, ConnectionError)


def authorization_for(directory: Directory, *, operators: Sequence[str]) -> str:
    """The authorization block for `directory`: each agency by its NKey and roles."""
    agencies = [(a.agency, a.nats_key) for a in directory.agencies if "auditor" not in a.roles]
    auditors = [a.nats_key for a in directory.agencies if "auditor" in a.roles]
    return authorization_block(agencies=agencies, auditors=auditors, operators=list(operators))


class DirectoryAuthority:
    """Watches the directory bucket and reloads `server` with the matching authorization."""

    def __init__(
        self,
        server: NatsServer,
        *,
        pinned_root: Path,
        operator_key: str,
        operator_seed: bytes,
        directory: Directory | None = None,
    ) -> None:
        self.server = server
        self.operators = [operator_key]
        self.operator_seed = operator_seed
        self.store = TrustStore(
            verify_initial_root(pinned_root.read_bytes(), now=int(time.time())), directory
        )
        self.applied: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._running = False

    def apply(self, directory: Directory | None) -> None:
        """Reload the server with the authorization of `directory` if it changed anything."""
        block = authorization_for(
            directory or Directory(version=1, expires=0, agencies=()), operators=self.operators
        )
        if block != self.applied:
            self.server.reload(block)
            self.applied = block
            log.info(
                "bus_authorization_reloaded",
                directory_version=None if directory is None else directory.version,
            )

    def offer(self, key: str, value: bytes) -> None:
        now = int(time.time())
        try:
            if key.startswith("root."):
                if int(key.split(".", 1)[1]) > self.store.root.version:
                    self.store.update_root(value, now=now)
            elif key == DIRECTORY_KEY:
                self.apply(self.store.update_directory(value, now=now))
        except (UntrustedInputError, ValueError) as e:
            log.warning("directory_refused", key=key, reason=getattr(e, "reason", "malformed"))

    async def start(self) -> None:
        self._running = True
        self._task = asyncio.create_task(self._watch(), name="directory-authority")

    async def stop(self) -> None:
        self._running = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _watch(self) -> None:
        while self._running:
            try:
                nc = await nats.connect(
                    self.server.url,
                    nkeys_seed_str=self.operator_seed.decode(),
                    max_reconnect_attempts=-1,
                    connect_timeout=2,
                )
                try:
                    kv = await nc.jetstream().key_value(DIRECTORY_BUCKET)
                    watcher = await kv.watchall()
                    while self._running:
                        try:
                            entry = await watcher.updates(timeout=1.0)  # type: ignore[no-untyped-call]
                        except (nats.errors.TimeoutError, TimeoutError):
                            continue
                        if entry is not None and entry.value is not None:
                            self.offer(entry.key, entry.value)
                finally:
                    with contextlib.suppress(*TRANSIENT):
                        await nc.close()
            except TRANSIENT as e:
                log.warning("directory_authority_interrupted", error=type(e).__name__)
                await asyncio.sleep(1.0)
