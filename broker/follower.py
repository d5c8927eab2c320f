"""Follows the trust directory published in the bucket, verifying from a pinned root.

Shared by the bus authority (which reloads nats-server's authorization) and the ledger
(which verifies audit events against every directory version it has seen). The bucket's
stream is read as agents read it (agents/transport.py `_watch_directory`): message by
message (`STREAM.MSG.GET`, next by subject), polled every POLL_SECONDS, never through a
consumer, which the ledger's and the authorities' own NKeys may not create (broker/authz.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors
import structlog

from keys import DEFAULT_LIMITS
from keys.directory import Directory, Root, TrustFeed
from keys.subjects import DIRECTORY_KEY
from runtime import clock, expiry
from runtime.backoff import RETRY_CAP_SECONDS, Backoff, Retry
from runtime.bus_link import BusLink, connect_linked, release
from runtime.endpoint import BusEndpoint
from runtime.jetstream import read_directory_bucket
from runtime.supervisor import Supervisor

log = structlog.get_logger("nrm.broker")

TRANSIENT = (nats.errors.Error, TimeoutError, OSError, ConnectionError)
#: How often the directory bucket is asked for what is new.
POLL_SECONDS = 0.5

#: Called with each newly accepted directory and its signed bytes.
OnDirectory = Callable[[Directory, bytes], None]
#: Called with each newly accepted root and its signed bytes.
OnRoot = Callable[[Root, bytes], None]


class DirectoryFollower:
    """Owns a TrustStore fed from the bucket, and the task that watches it.

    The pinned root may have expired: later roots from the bucket (or `restore`) lead to the
    current one, and a directory is trusted only under a current root (PROTOCOL.md §7.5).
    """

    def __init__(
        self,
        *,
        endpoint: BusEndpoint | None,
        nkeys_seed: bytes,
        pinned_root: Path,
        on_directory: OnDirectory,
        name: str,
        inbox_prefix: str | None = None,
        on_root: OnRoot | None = None,
        warning_seconds: int = DEFAULT_LIMITS.expiry_warning_seconds,
        supervisor: Supervisor | None = None,
        link: BusLink | None = None,
    ) -> None:
        #: Where the bus is and how to reach it (TLS); None until the owner knows (a server
        #: started without a port has one only once started), then set before start().
        self.endpoint = endpoint
        #: Runs the watch; its owner's, so that a death shows in the owner's health.
        self.supervisor = supervisor or Supervisor(name)
        self.nkeys_seed = nkeys_seed
        #: The reply subjects its NKey may subscribe to (broker/authz.py); None: `_INBOX`.
        self.inbox_prefix = inbox_prefix
        self.on_directory = on_directory
        self.on_root = on_root
        self.name = name
        self.warning_seconds = warning_seconds
        self.pinned_root_bytes = pinned_root.read_bytes()
        self.feed = TrustFeed(self.pinned_root_bytes)
        self.store = self.feed.store
        #: The state of its bus connection (runtime/bus_link.py); the owner's, to name
        #: it in its own log events, else one logging `bus_state` with `follower=<name>`.
        self.link = link or BusLink(
            backoff=Backoff(1.0, RETRY_CAP_SECONDS), log=log.bind(follower=name)
        )
        self._task: asyncio.Task[None] | None = None
        self._running = False
        #: Set by stop(): a connection attempt's back-off ends at once.
        self._stopping = asyncio.Event()
        #: The bucket's stream sequence to read from next (1: from the start, newest only).
        self._seq = 1
        #: One reader at a time: the poll and `catch_up` share `_seq`.
        self._reading = asyncio.Lock()

    @property
    def refused(self) -> str | None:
        """The last refusal's reason code, until a directory is accepted."""
        return None if self.feed.refused is None else self.feed.refused.reason

    @property
    def directory(self) -> Directory | None:
        """The trusted directory, if it and the newest root are current."""
        return self.store.directory_at(clock.now())

    def restore(self, roots: Iterable[bytes], directory: bytes | None) -> None:
        """Re-apply roots and a directory kept from an earlier run (each verified again;
        nothing is reported to the callbacks)."""
        now, refused = clock.now(), self.feed.refused
        for data in roots:
            self.feed.offer_root(data, now=now)
        if directory is not None:
            self.feed.offer(DIRECTORY_KEY, directory, now=now)
        self.feed.refused = refused  # what a restart could not take again is no news

    def offer(self, key: str, value: bytes) -> None:
        offered = self.feed.offer(key, value, now=clock.now())
        for root, data in offered.roots:
            log.info("root_accepted", follower=self.name, root_version=root.version)
            if self.on_root is not None:
                self.on_root(root, data)
        if offered.directory is not None:
            self.on_directory(*offered.directory)
        if offered.refused is not None:
            log.warning(
                "directory_refused", follower=self.name, key=key, reason=offered.refused.reason
            )

    def expiry(self) -> expiry.Expiry:
        """How close the directory and the newest root are to expiry (runtime.expiry)."""
        return expiry.of_store(self.store, warning_seconds=self.warning_seconds)

    def health(self) -> dict[str, Any]:
        """`status` ok / warning / degraded with its `reasons` (runtime.expiry), and what is
        trusted: versions and expiry times only."""
        state = self.expiry()
        d = self.store.directory
        out: dict[str, Any] = {
            "status": state.status,
            "reasons": list(state.reasons),
            "root_version": self.store.root.version,
            "root_expires": self.store.root.expires,
            "directory_version": None if d is None else d.version,
            "directory_expires": None if d is None else d.expires,
        }
        if self.refused is not None:
            out["refused"] = self.refused
        return out

    async def start(self) -> None:
        self._running = True
        self._stopping.clear()
        self._task = self.supervisor.spawn(f"directory-{self.name}", self._watch)

    async def stop(self) -> None:
        self._running = False
        self._stopping.set()
        if self._task is not None:
            await self.supervisor.stop([self._task])
            self._task = None

    async def catch_up(self, js: Any) -> None:
        """Read and offer what the bucket holds beyond what this follower has read, over
        `js` (the follower's own connection, or its owner's, with the same NKey).

        The ledger calls it after each fetch from the audit stream: an event fetched is then
        judged under every directory published before it was, since its signer could only
        have learnt of a revocation from the bucket (no poll interval in between)."""
        async with self._reading:
            found, cursor = await read_directory_bucket(js, self._seq, newest_only=self._seq == 1)
            for key, value in found:
                self.offer(key, value)
            self._seq = cursor  # only once every value was offered

    async def _watch(self) -> None:
        if self.endpoint is None:
            raise RuntimeError("the directory follower was started without a bus endpoint")
        retry = Retry.after(1.0)
        while self._running:
            try:
                # Retries until the bus takes it, its attempts paced and told by the link.
                nc = await connect_linked(
                    self.link,
                    self.endpoint,
                    stopping=self._stopping,
                    nkeys_seed_str=self.nkeys_seed.decode(),
                    name=f"nrm-{self.name}-directory",
                    inbox_prefix=self.inbox_prefix or "_INBOX",  # nats-py's default
                )
                if nc is None:
                    return
                try:
                    js = nc.jetstream()
                    self._seq = 1  # a new connection reads the bucket again from its start
                    while self._running:
                        await self.catch_up(js)
                        retry.succeeded()
                        await asyncio.sleep(POLL_SECONDS)
                finally:
                    await release(self.link, nc)  # over TLS with the bus down too
            except TRANSIENT as e:
                log.warning(
                    "directory_follow_interrupted", follower=self.name, error=type(e).__name__
                )
                await asyncio.sleep(retry.next_delay())
