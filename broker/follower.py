"""Follows the trust directory published in the bucket, verifying from a pinned root.

Shared by the bus authority (which reloads nats-server's authorization) and the ledger
(which verifies audit events against every directory version it has seen).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

import nats
import nats.errors
import structlog

from keys import UntrustedInputError
from keys.directory import Directory, TrustStore, verify_initial_root
from keys.subjects import DIRECTORY_BUCKET, DIRECTORY_KEY
from runtime import clock

log = structlog.get_logger("nrm.broker")

TRANSIENT = (nats.errors.Error, TimeoutError, OSError, ConnectionError)

#: Called with each newly accepted directory and its signed bytes.
OnDirectory = Callable[[Directory, bytes], None]


class DirectoryFollower:
    """Owns a TrustStore fed from the bucket, and the task that watches it."""

    def __init__(
        self,
        *,
        urls: list[str],
        nkeys_seed: bytes,
        pinned_root: Path,
        on_directory: OnDirectory,
        name: str,
    ) -> None:
        self.urls = urls
        self.nkeys_seed = nkeys_seed
        self.on_directory = on_directory
        self.name = name
        self.store = TrustStore(verify_initial_root(pinned_root.read_bytes(), now=clock.now()))
        self._task: asyncio.Task[None] | None = None
        self._running = False

    def offer(self, key: str, value: bytes) -> None:
        now = clock.now()
        try:
            if key.startswith("root."):
                if int(key.split(".", 1)[1]) > self.store.root.version:
                    self.store.update_root(value, now=now)
            elif key == DIRECTORY_KEY:
                before = self.store.directory
                directory = self.store.update_directory(value, now=now)
                if directory != before:
                    self.on_directory(directory, bytes(value))
        except UntrustedInputError as e:
            log.warning("directory_refused", follower=self.name, key=key, reason=e.reason)
        except ValueError:
            log.warning("directory_refused", follower=self.name, key=key, reason="malformed")

    async def start(self) -> None:
        self._running = True
        self._task = asyncio.create_task(self._watch(), name=f"directory-{self.name}")

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
                    servers=self.urls,
                    nkeys_seed_str=self.nkeys_seed.decode(),
                    max_reconnect_attempts=-1,
                    connect_timeout=2,
                    name=f"nrm-{self.name}-directory",
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
                log.warning(
                    "directory_follow_interrupted", follower=self.name, error=type(e).__name__
                )
                await asyncio.sleep(1.0)
