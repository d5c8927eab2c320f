"""Keeps the bus's authorization in step with the verified trust directory.

`authorization_for` turns a directory into the nats-server authorization block; agencies with
the auditor role get auditor permissions. `DirectoryAuthority` watches the directory bucket,
verifies each update from the pinned root exactly as agents do, and reloads the running
server (SIGHUP, no restart) whenever the set of NKeys or roles changes; a rotated NATS key
thus replaces the old one at once, and connections made with the old one are closed. It connects
with an NKey of its own (`nkeys_seed`): beside a nats-server the operator runs (`nrm bus
authority`) that is the authority's own, which may only read the directory bucket
(broker/authz.py); the stores of an agency a directory admits were made by the operator who
published it (`nrm directory publish`). Only where it is given the operator's seed as
`provisioning_seed` (the embedded bus of `nrm bus up`, whose host provisions with it anyway)
does it also make a newly admitted agency's inbox stream and attachment bucket
(broker/streams.py) before the reload lets it connect (if they cannot be made, the reload goes
ahead and they are tried again: an authorization change, a revocation say, is never held
back), and, while the shared inbox stream of an earlier release still exists, move the mail
it holds into the inbox streams every MIGRATE_SECONDS (a full inbox refuses it until its
agency has consumed what it holds; broker/streams.py `migrate_shared_inbox`). The reload waits for
nats-server to confirm it, so it runs in a worker thread, never on the event loop. It also
runs the `ConnectionWatch` reporting agencies logged in more than once. All its loops run
under one supervisor (runtime/supervisor.py), whose deaths `health` reports.

What it reloads is a `ReloadTarget`: the embedded `NatsServer` of `nrm bus up`, or, beside a
nats-server the operator runs, `broker.external.ExternalServer` (`nrm bus authority`), which
rewrites that server's authorization include file and signals it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Protocol

import structlog

from keys import DEFAULT_LIMITS
from keys.directory import Directory, Root
from runtime.endpoint import BusEndpoint
from runtime.files import fsync_dir, replace_file
from runtime.supervisor import Supervisor

from .authz import ServiceKeys, authorization_block
from .connections import ConnectionWatch
from .follower import TRANSIENT, DirectoryFollower
from .server import ReloadFailed
from .streams import migrate_leftovers, provision_stores_for
from .trust_status import service_health

#: How long to wait before trying a failed bucket creation again.
RETRY_SECONDS = 1.0
#: How long to wait before offering a directory nats-server did not take again (it was
#: not running, say, or its monitoring did not answer).
RELOAD_RETRY_SECONDS = 5.0
#: How often mail left in the shared inbox stream of an earlier release is moved again.
MIGRATE_SECONDS = 30.0

log = structlog.get_logger("nrm.broker")


def _cached_root_version(path: Path) -> int:
    """The version of a cached `root.<version>.json` (0 for a name that is not one)."""
    middle = path.name[len("root.") : -len(".json")]
    return int(middle) if middle.isdigit() else 0


def attachment_owners(directory: Directory) -> list[str]:
    """The agencies of `directory` that have an attachment bucket: all but auditors."""
    return [a.agency for a in directory.agencies if "auditor" not in a.roles]


def authorization_for(directory: Directory, *, services: ServiceKeys) -> str:
    """The authorization block for `directory`: each agency by its NKey and roles, and the
    operators, ledgers and bus authorities of `services`."""
    agencies = [(a.agency, a.nats_key) for a in directory.agencies if "auditor" not in a.roles]
    auditors = [a.nats_key for a in directory.agencies if "auditor" in a.roles]
    return authorization_block(
        agencies=agencies,
        auditors=auditors,
        operators=services.operators,
        ledgers=services.ledgers,
        authorities=services.authorities,
    )


class ReloadTarget(Protocol):
    """The nats-server whose authorization a `DirectoryAuthority` keeps in step."""

    def endpoint(self) -> BusEndpoint:
        """How the authority connects to the bus (follow the directory, provision)."""
        ...

    def reload(self, authorization: str, /) -> None:
        """Make the server run with `authorization`, no restart; return once it confirms;
        RuntimeError (broker.server.ReloadFailed) if it refuses (it keeps the previous one)
        or cannot be reached."""
        ...

    def connections(self) -> list[dict[str, object]]:
        """The open client connections (`/connz?auth=true`), for the ConnectionWatch."""
        ...


class DirectoryAuthority:
    """Follows the directory bucket and reloads `server` with the matching authorization."""

    def __init__(
        self,
        server: ReloadTarget,
        *,
        pinned_root: Path,
        nkeys_seed: bytes,
        services: ServiceKeys,
        inbox_prefix: str | None = None,
        provisioning_seed: bytes | None = None,
        warning_seconds: int = DEFAULT_LIMITS.expiry_warning_seconds,
        replicas: int = 1,
        trust_cache: Path | None = None,
    ) -> None:
        """`nkeys_seed`: the NKey it reads the directory bucket with (replies under
        `inbox_prefix`, the one its permissions allow; None: nats-py's `_INBOX`).
        `services`: the NKeys other than the directory's that every authorization admits.
        `provisioning_seed`: an operator's seed with which it makes the stores of newly
        admitted agencies and moves leftover shared-inbox mail; None: it writes nothing to
        the bus.

        `replicas`: of the inbox stream and attachment bucket it makes for an agency that
        has none (the bus's, 3 on a three-node cluster). An existing stream is never changed
        here, its replicas neither: `nrm bus provision --replicas` does that.

        `trust_cache`: a folder (made 0700) where every root and directory it accepts is
        kept (0600), and from which it starts again (`restore_trust`): after a restart an
        older directory put back into the bucket is refused as before (the trust floor)."""
        self.server = server
        self.replicas = replicas
        self.services = services
        self.provisioning_seed = provisioning_seed
        self.applied: str | None = None
        #: The version of the directory whose authorization nats-server runs (reloaded).
        self.applied_version: int | None = None
        #: The version of the last directory whose authorization nats-server refused.
        self.reload_failed: int | None = None
        self._nkeys: dict[str, str] = {}  # NKey -> agency id, of the directory applied
        #: Agencies whose inbox stream and attachment bucket exist (created by us or by the
        #: caller).
        self.provisioned: set[str] = set()
        self.supervisor = Supervisor("bus-authority")
        self.connections = ConnectionWatch(
            server, agencies=lambda: self._nkeys, supervisor=self.supervisor
        )
        self.follower = DirectoryFollower(
            endpoint=None,  # set in start(): a server started without a port has one only then
            nkeys_seed=nkeys_seed,
            inbox_prefix=inbox_prefix,
            pinned_root=pinned_root,
            on_directory=self._accepted,
            on_root=self._root_accepted,
            name="authority",
            warning_seconds=warning_seconds,
            supervisor=self.supervisor,
        )
        self.trust_cache = trust_cache
        self._wanted: Directory | None = None
        self._changed = asyncio.Event()
        #: How it reaches the bus; known in start() (an embedded server's port is chosen
        #: when it starts).
        self.endpoint: BusEndpoint | None = None

    def adopt(self, directory: Directory, block: str) -> None:
        """The server was started with `block`, the authorization of `directory`, and the
        caller provisioned its agencies' inbox streams and attachment buckets: remember all
        three, as `apply` would (the connection watch needs to know whose NKey is whose)."""
        self.applied, self.applied_version = block, directory.version
        self._nkeys = {a.nats_key: a.agency for a in directory.agencies}
        self.provisioned.update(attachment_owners(directory))

    def apply(self, directory: Directory) -> None:
        """Reload the server with the authorization of `directory` if it changed anything."""
        block = authorization_for(directory, services=self.services)
        if block != self.applied:
            self.server.reload(block)
            self.applied = block
            log.info("bus_authorization_reloaded", directory_version=directory.version)
        self.applied_version = directory.version
        self._nkeys = {a.nats_key: a.agency for a in directory.agencies}

    def reapply(self) -> None:
        """Write and reload the wanted directory's authorization even if it was applied
        (the server was found running something else)."""
        self.applied = None
        self._changed.set()

    def restore_trust(self) -> None:
        """Start from the roots and directory kept in `trust_cache` (each verified again)."""
        if self.trust_cache is None:
            return
        self.trust_cache.mkdir(mode=0o700, parents=True, exist_ok=True)
        roots = sorted(self.trust_cache.glob("root.*.json"), key=_cached_root_version)
        cached = self.trust_cache / "directory.json"
        self.follower.restore(
            [r.read_bytes() for r in roots], cached.read_bytes() if cached.exists() else None
        )
        # The bucket's newest is then no news to the follower: apply the restored one (the
        # first reload at start), and whatever newer the bucket holds after it.
        directory = self.follower.directory
        if directory is not None:
            self._offered(directory)

    def _root_accepted(self, root: Root, data: bytes) -> None:
        self._keep(f"root.{root.version}.json", data)

    def _accepted(self, directory: Directory, data: bytes) -> None:
        self._keep("directory.json", data)
        self._offered(directory)

    def _keep(self, name: str, data: bytes) -> None:
        """Write an accepted document into `trust_cache`; a failure (the folder not
        writable) is logged, never a reason to hold the authorization back."""
        if self.trust_cache is None:
            return
        try:
            replace_file(self.trust_cache / name, data)
            fsync_dir(self.trust_cache)  # a restart after a power cut never trusts an older one
        except OSError as e:
            log.error("trust_cache_write_failed", file=name, error=type(e).__name__)

    def _offered(self, directory: Directory) -> None:
        self._wanted = directory
        self._changed.set()

    async def _reloads(self) -> None:
        """Apply the newest directory the follower accepted: first create the inbox streams and
        attachment buckets of the agencies it admits (so that one can connect only when they
        exist), then reload nats-server in a worker thread. A newer directory offered
        meanwhile replaces it."""
        while True:
            await self._changed.wait()
            self._changed.clear()
            directory = self._wanted
            if directory is None:
                continue
            missing = [a for a in attachment_owners(directory) if a not in self.provisioned]
            if missing and self.provisioning_seed is not None:
                try:
                    await provision_stores_for(
                        self._endpoint(),
                        missing,
                        nkeys_seed=self.provisioning_seed,
                        replicas=self.replicas,
                    )
                except TRANSIENT as e:
                    # Never hold an authorization change (a revocation, say) back behind a
                    # bucket: apply it now; the agency's uploads wait for its bucket, its
                    # mail (retried by its senders) for its inbox; the creation is tried again.
                    log.warning("agency_stores_provisioning_failed", error=type(e).__name__)
                    self._retry_later()
                else:
                    self.provisioned.update(missing)
                    log.info("agency_stores_provisioned", count=len(missing))
            if self._wanted is not directory:
                continue  # a newer one came: it is applied next, after its own buckets
            try:
                await asyncio.to_thread(self.apply, directory)
                self.reload_failed = None
            except Exception as e:  # the loop must outlive any failure
                # Refused, or not reachable: nats-server keeps the previous authorization.
                # A ReloadFailed's reason says why (nats-server's own "Failed to reload"
                # line, a path: configuration, no personal data; never its log tail); of
                # anything else only its type.
                self.reload_failed = directory.version
                log.error(
                    "bus_authorization_reload_failed",
                    directory_version=directory.version,
                    error=type(e).__name__,
                    **({"reason": e.reason} if isinstance(e, ReloadFailed) else {}),
                )
                self._retry_later(RELOAD_RETRY_SECONDS)

    async def _migrations(self) -> None:
        """Move what the retired shared inbox stream still holds for the provisioned
        agencies every MIGRATE_SECONDS, until it is gone (at once if there is none). Only
        with a `provisioning_seed`: else `nrm bus provision` moves it."""
        if self.provisioning_seed is None:
            return
        while True:
            try:
                pending = await migrate_leftovers(
                    self._endpoint(), sorted(self.provisioned), nkeys_seed=self.provisioning_seed
                )
            except TRANSIENT as e:
                log.warning("shared_inbox_migration_failed", error=type(e).__name__)
                pending = True
            if not pending:
                return
            await asyncio.sleep(MIGRATE_SECONDS)

    def _endpoint(self) -> BusEndpoint:
        if self.endpoint is None:
            raise RuntimeError("the authority is not started")
        return self.endpoint

    def _retry_later(self, seconds: float = RETRY_SECONDS) -> None:
        """Offer the wanted directory again after `seconds` (its buckets are missing, or
        nats-server did not take it)."""
        asyncio.get_running_loop().call_later(seconds, self._changed.set)

    def health(self) -> dict[str, Any]:
        """The follower's trust health, the supervisor's dead loops, and
        `authorization-reload-failed` while nats-server runs an older authorization."""
        extra = [] if self.reload_failed is None else ["authorization-reload-failed"]
        return service_health(self.follower, self.supervisor, reasons=extra)

    async def start(self) -> None:
        """Start following the running server; if a step fails, stop what started and
        raise."""
        try:
            self.endpoint = self.follower.endpoint or self.server.endpoint()
            self.follower.endpoint = self.endpoint
            self.supervisor.spawn("authority-reload", self._reloads)
            self.supervisor.spawn("authority-migrate", self._migrations)
            await self.follower.start()
            await self.connections.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        await self.connections.stop()
        await self.follower.stop()
        await self.supervisor.stop()
