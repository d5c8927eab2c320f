"""The audit ledger: consumes signed audit events, verifies them, appends them to an
RFC 6962 Merkle tree in SQLite, and signs checkpoints (PROTOCOL.md §9).

It connects to the bus with the NATS key of its own key folder (`key_dir`, whose
identity.json agents already pin to verify its checkpoints), which the bus admits as a
ledger (broker/authz.py `ledger_permissions`): the directory bucket and its audit consumer,
nothing else.

Events that fail verification are kept out and counted by reason. Each fetched batch is
appended in one transaction and its messages are acked only once that commit is on disk; a
redelivered event (same event id) is acked without a second entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import nats.errors
import structlog
from aiohttp import web
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import NotFoundError

from keys import DEFAULT_LIMITS, AgencyKeys, UnknownKeyError, UntrustedInputError
from keys.audit import AuditEvent, decode_signed_event, verify_event
from keys.checkpoint import Checkpoint, ledger_origin, sign_checkpoint
from keys.directory import Directory, Root
from keys.errors import NotForThisRoleError
from keys.ledger_entry import LedgerEntry
from keys.merkle import MerkleTree, leaf_hash
from keys.roles import COMPETENT_AUTHORITY, RAPPORTEUR
from keys.subjects import AGENCY_ID_PATTERN, AUDIT_STREAM, AUDIT_SUBJECTS
from runtime import clock
from runtime.backoff import RETRY_CAP_SECONDS, Backoff, Retry
from runtime.bus_link import BusLink, connect_linked, release
from runtime.config import ConfigError, Table, bind_address, days, load_toml, path_in
from runtime.endpoint import BusEndpoint, EndpointError, endpoint_from_config
from runtime.http import app_runner
from runtime.keydir import load_key_dir, read_passphrase
from runtime.reload import LiveTls, refresh_tls, restart_needed
from runtime.supervisor import Supervisor, pause, unless_stopping
from runtime.tls import HttpsFiles, check_plain_http, https_files, url_host

from .authz import LEDGER_CONSUMER, service_reply_prefix
from .follower import TRANSIENT, DirectoryFollower
from .ledger_migrate import migrate_legacy
from .ledger_store import LedgerStore
from .trust_status import service_health

log = structlog.get_logger("nrm.ledger")

#: How long the bus link may be down before /healthz says so (`degraded`, `bus-<state>`): a
#: reconnection, a node restarting, must not flap the ledger's health.
BUS_GRACE_SECONDS = 10.0


#: Kinds only an agency that decides the identification stage they name may sign (PROTOCOL
#: §9.0): the statistics count them, so no other agency may add to the count.
DECIDER_KINDS = frozenset({"identification.decided", "identification.sent"})


#: Kinds only an agency holding the role may sign (PROTOCOL §8.11: the statistics'
#: contributions go from competent authorities to the rapporteur).
ROLE_KINDS: Final[Mapping[str, str]] = {
    "statistics.contributed": COMPETENT_AUTHORITY,
    "statistics.received": RAPPORTEUR,
}


def check_signer_may(event: AuditEvent, directory: Directory) -> None:
    """Refuse (`not-for-this-role`) an event of a kind its agency may not sign."""
    role = ROLE_KINDS.get(event.kind)
    if role is not None and role not in directory.agency(event.agency).roles:
        raise NotForThisRoleError(f"{event.kind} is signed only by an agency holding {role}")
    if event.kind in DECIDER_KINDS:
        stage = dict(event.labels).get("stage", "")
        if not directory.agency(event.agency).decides_stage(stage):
            raise NotForThisRoleError(
                f"{event.kind} is signed only by an agency that decides the {stage} stage"
            )


def bus_event(state: str) -> str:
    """The log event of the ledger's bus link entering `state`: `ledger_bus_refused`,
    `ledger_bus_unreachable`, `ledger_bus_connected`... (runtime/bus_link.py)."""
    return "ledger_bus_" + state.replace("-", "_")


def bus_link(connection: str) -> BusLink:
    """The link of one of the ledger's bus connections (`audit`, `directory`)."""
    return BusLink(
        backoff=Backoff(1.0, RETRY_CAP_SECONDS),
        log=log.bind(service="ledger", connection=connection),
        event=bus_event,
    )


#: Settings of earlier releases that are refused with what replaces them.
RETIRED_SETTINGS = {
    "operator_key_dir": (
        "operator_key_dir is no longer read: the ledger connects to the bus with its own "
        "key_dir's NATS key (admitted as a ledger: the bus operator lists its identity.json, "
        "cluster.toml trust.ledger_identity or `nrm bus up --ledger-identity`); remove the "
        "setting and the operator's key from this host (CHANGELOG, Upgrade)"
    ),
}


class LedgerConfigError(ConfigError):
    """The ledger configuration file is missing something or holds a wrong value."""


AUDITOR_SCOPE = "auditor"
METRICS_SCOPE = "metrics"
#: Posts rapporteur reports (`POST /v1/reports`, PROTOCOL.md §8.12) and reads nothing.
RAPPORTEUR_SCOPE = "rapporteur"
AGENCY_SCOPE_PREFIX = "agency:"


@dataclass(frozen=True, slots=True)
class LedgerToken:
    """A bearer token's SHA-256 digest and its scope: `auditor` reads every route,
    `agency:<id>` reads that agency's own events and what only reveals hashes (PROTOCOL.md
    §9.0), `metrics` reads no /v1 route, only /metrics (/healthz needs no token),
    `rapporteur` only posts reports (§8.12)."""

    digest: bytes
    scope: str

    @property
    def agency(self) -> str | None:
        """The agency of an `agency:<id>` scope, else None."""
        if self.scope.startswith(AGENCY_SCOPE_PREFIX):
            return self.scope[len(AGENCY_SCOPE_PREFIX) :]
        return None


def _token_digest(digest: str, key: str) -> bytes:
    if len(digest) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digest):
        raise LedgerConfigError(f"{key}.token_sha256 must be 64 hex characters")
    return bytes.fromhex(digest)


def _scope(scope: str) -> str:
    """`scope` if it is one a token may have, else a LedgerConfigError naming it."""
    if scope in (AUDITOR_SCOPE, METRICS_SCOPE, RAPPORTEUR_SCOPE):
        return scope
    agency = scope.removeprefix(AGENCY_SCOPE_PREFIX)
    if scope.startswith(AGENCY_SCOPE_PREFIX) and AGENCY_ID_PATTERN.fullmatch(agency):
        return scope
    raise LedgerConfigError(
        "tokens.scope must be 'auditor', 'metrics', 'rapporteur' or 'agency:<agency id>', "
        f"not {scope!r}"
    )


@dataclass(frozen=True, slots=True)
class LedgerConfig:
    """`nrm ledger run --config ledger.toml`:

    name = "national"                   # DNS-like; the checkpoint origin is <name>/nrm-ledger
    key_dir = "ledger-keys"             # the ledger's own keys (nrm keys init): it signs
                                        # checkpoints and logs in to the bus with them
    passphrase_file = "passphrase"      # for its key file; else $NRM_PASSPHRASE
    nats_urls = ["tls://nats-1.example:4222", "tls://nats-2.example:4222"]
    trust_root = "root.json"
    database = "ledger.db"
    bind = "0.0.0.0:8090"
    tls_cert = "ledger.pem"             # optional, both or neither: serve HTTPS only
    tls_key = "ledger.key"              # (agencies reach the ledger with bearer tokens)
    allow_plain_http = false            # without tls_cert, a bind beyond loopback is refused
    checkpoint_interval_seconds = 2
    suppress_below = 5
    expiry_warning_days = 7             # /healthz warns this long before directory/root expiry
    [nats_tls]                          # optional: runtime/endpoint.py
    ca_file = "bus-ca.pem"
    cert_file = "ledger-bus.pem"        # for a bus that requires mutual TLS
    key_file = "ledger-bus.key"
    [[auditors]]                        # scope "auditor": reads everything (as [[tokens]])
    name = "court-of-audit"
    token_sha256 = "<hex>"
    [[tokens]]                          # a bearer token with a scope (PROTOCOL.md §9.0)
    name = "police"
    token_sha256 = "<hex>"
    scope = "agency:police"             # "auditor", "agency:<id>", "metrics" or "rapporteur"
    """

    name: str
    key_dir: Path
    #: Where the bus is and how to reach it (TLS): `nats_urls` and `[nats_tls]`.
    bus: BusEndpoint
    trust_root: Path
    database: Path
    host: str
    port: int
    #: Every bearer token the API accepts, each with its scope (`LedgerToken`).
    tokens: tuple[LedgerToken, ...]
    passphrase_file: Path | None = None
    checkpoint_interval_seconds: float = 2.0
    suppress_below: int = 5
    unknown_key_grace_seconds: int = 120
    #: /healthz turns to "warning" this long before the directory or the root expires.
    expiry_warning_seconds: int = DEFAULT_LIMITS.expiry_warning_seconds
    #: `tls_cert` and `tls_key`: the API serves HTTPS only (runtime/tls.py).
    tls: HttpsFiles | None = None

    @property
    def origin(self) -> str:
        return ledger_origin(self.name)

    @property
    def token_digests(self) -> tuple[bytes, ...]:
        """The digests of `tokens`, in their order (what `bearer_match` compares)."""
        return tuple(t.digest for t in self.tokens)

    @property
    def auditor_tokens(self) -> tuple[bytes, ...]:
        """The digests of the tokens that read everything."""
        return tuple(t.digest for t in self.tokens if t.scope == AUDITOR_SCOPE)

    @classmethod
    def load(cls, path: Path) -> LedgerConfig:
        """Read `path` strictly (runtime/config.py): a setting not listed above is an error."""
        try:
            table = Table(load_toml(path))
        except ConfigError as e:
            raise LedgerConfigError(str(e)) from e
        base = path.parent
        for key, why in RETIRED_SETTINGS.items():
            if key in table:
                raise LedgerConfigError(f"{path}: {why}")

        def p(key: str) -> Path:
            return path_in(table[key], base=base, key=key)

        try:
            host, port = bind_address(table["bind"], key="bind")
            tokens = []
            entries: dict[bytes, str] = {}  # digest -> the entry that gave it
            for key in ("auditors", "tokens"):
                for i, a in enumerate(table.tables(key)):
                    a.allow("name")  # whose token it is, for the reader of the file
                    # An [[auditors]] entry (the older form) reads everything.
                    scope = str(a["scope"]) if key == "tokens" else AUDITOR_SCOPE
                    token = LedgerToken(_token_digest(str(a["token_sha256"]), key), _scope(scope))
                    entry = f"{key}[{i}] ({str(a.get('name', '?'))!r})"
                    if token.digest in entries:
                        raise LedgerConfigError(
                            f"{entries[token.digest]} and {entry} have the same token_sha256: "
                            "one token, one scope"
                        )
                    entries[token.digest] = entry
                    tokens.append(token)
            config = cls(
                name=str(table["name"]),
                key_dir=p("key_dir"),
                bus=endpoint_from_config(table, base=base),
                trust_root=p("trust_root"),
                database=p("database"),
                host=host,
                port=port,
                tokens=tuple(tokens),
                passphrase_file=p("passphrase_file") if "passphrase_file" in table else None,
                checkpoint_interval_seconds=float(table.get("checkpoint_interval_seconds", 2.0)),
                suppress_below=int(table.get("suppress_below", 5)),
                expiry_warning_seconds=days(
                    table.get("expiry_warning_days", DEFAULT_LIMITS.expiry_warning_seconds / 86400),
                    key="expiry_warning_days",
                ),
                tls=https_files(table, base=base),
            )
            allowed = table.get("allow_plain_http", False)
            if not isinstance(allowed, bool):
                raise LedgerConfigError("allow_plain_http must be true or false")
            table.finish()
            if config.tls is None:
                check_plain_http(host, what="bind without tls_cert", allowed=allowed)
            try:
                config.bus.connect_options()  # the bus TLS files are read now: named at once
            except EndpointError as e:
                raise LedgerConfigError(f"nats_tls: {e}") from e
            ledger_origin(config.name)  # a DNS-like name, else a ValueError
            return config
        except KeyError as e:
            raise LedgerConfigError(f"missing setting {e.args[0]!r}") from e
        except LedgerConfigError:
            raise
        except (TypeError, ValueError) as e:  # runtime.config.ConfigError among them
            raise LedgerConfigError(str(e)) from e


class Ledger:
    """Owns the store, the tree, the audit consumer, the checkpointer and the HTTP API."""

    def __init__(self, config: LedgerConfig, *, signer: AgencyKeys) -> None:
        """`signer`: the ledger's own keys (its key folder): it signs checkpoints with them
        and logs in to the bus with their NATS seed."""
        if signer.nats_seed is None or signer.public.nats_key is None:
            raise ValueError("the ledger's keys have no NATS seed")
        self.config = config
        self.signer = signer
        self.nats_seed: bytes = signer.nats_seed
        #: The reply subjects its NKey may subscribe to (broker/authz.py).
        self.inbox_prefix = service_reply_prefix("ledger", signer.public.nats_key)
        #: Every background loop of the ledger runs under it; a death degrades /healthz.
        self.supervisor = Supervisor("ledger")
        self.store = LedgerStore(config.database)
        migrate_legacy(self.store, key=signer.signing_key, name=config.name)
        self.tree = MerkleTree(self.store, size=self.store.size())
        self.directory: Directory | None = None
        #: The audit consumer's bus link (its state is the ledger's `bus` in /healthz).
        self.bus_link = bus_link("audit")
        #: How long either link may be down before /healthz degrades (BUS_GRACE_SECONDS).
        self.bus_grace_seconds = BUS_GRACE_SECONDS
        self.follower = DirectoryFollower(
            endpoint=config.bus,
            nkeys_seed=self.nats_seed,
            inbox_prefix=self.inbox_prefix,
            pinned_root=config.trust_root,
            on_directory=self._on_directory,
            on_root=self._on_root,
            name="ledger",
            warning_seconds=config.expiry_warning_seconds,
            supervisor=self.supervisor,
            link=bus_link("directory"),
        )
        pinned = self.follower.store.root
        with self.store.transaction():  # the chain served at /v1/roots starts at the pin
            self.store.add_root(pinned.version, self.follower.pinned_root_bytes, clock.now())
        later = [data for version, data, _ in self.store.roots() if version > pinned.version]
        last = self.store.directories()[-1:]
        self.follower.restore(later, last[0][1] if last else None)
        self.directory = self.follower.store.directory
        if self.directory is not None:
            log.info("ledger_directory_restored", directory_version=self.directory.version)
        self._running = False
        #: Set by stop(): the loops' idle waits end at once (runtime.supervisor.unless_stopping).
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self._nc: Any = None
        #: The tokens the API accepts and their digests, swapped whole by `reload`.
        self.tokens = (config.tokens, config.token_digests)
        #: The API's SSL context, refreshed in place by `reload` (a renewed certificate).
        self._tls = None if config.tls is None else LiveTls(config.tls)

    @classmethod
    def from_config_file(cls, path: Path) -> Ledger:
        config = LedgerConfig.load(path)
        passphrase = read_passphrase(file=config.passphrase_file)
        return cls(config, signer=load_key_dir(config.key_dir, passphrase=passphrase))

    def reload(self, path: Path) -> list[str]:
        """Read `path` again (SIGHUP): the tokens and the HTTPS certificate and key take
        effect for new requests and connections; the names of what changed. ConfigError
        (ReloadRefused: a setting only a restart applies) leaves everything as it was."""
        new = LedgerConfig.load(path)
        restart_needed(
            self.config, new, reloadable=("tokens", "tls"), keys={"host": "bind", "port": "bind"}
        )
        changed = ["tls_cert"] if refresh_tls(self._tls, self.config.tls, new.tls) else []
        if new.tokens != self.config.tokens:
            changed.append("tokens")
        self.config = new
        self.tokens = (new.tokens, new.token_digests)
        return changed

    @property
    def url(self) -> str:
        """The API's URL: https:// when it serves TLS (`tls_cert`, `tls_key`)."""
        scheme = "http" if self.config.tls is None else "https"
        return f"{scheme}://{url_host(self.config.host)}:{self.port}"

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the API, the directory follower, the consumer and the checkpointer. If a
        step fails (the port is taken, say), what started is stopped again, the database
        closed, and the error raised."""
        try:
            await self._start()
        except BaseException:
            await self._stop(checkpoint=False)
            raise

    async def _start(self) -> None:
        from .ledger_http import make_app

        self._running = True
        self._stopping.clear()
        self.checkpoint()
        await self.follower.start()
        self._runner = app_runner(make_app(self), DEFAULT_LIMITS)
        await self._runner.setup()
        await web.TCPSite(
            self._runner,
            self.config.host,
            self.config.port,
            ssl_context=None if self._tls is None else self._tls.context,
        ).start()
        self.port = self._runner.addresses[0][1]
        self.supervisor.spawn("ledger-consumer", self._consume)
        self.supervisor.spawn("ledger-checkpoints", self._checkpoints)
        log.info("ledger_started", url=self.url, size=self.tree.size)

    async def stop(self) -> None:
        await self._stop(checkpoint=True)

    async def _stop(self, *, checkpoint: bool) -> None:
        self._running = False
        self._stopping.set()  # the loops' idle waits end at once
        await self.follower.stop()
        await self.supervisor.stop(grace_seconds=3.0)  # the consumer finishes its batch
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if checkpoint:
            try:
                self.checkpoint()
            except sqlite3.Error as e:  # stopping always finishes; the error is in the log
                log.error("final_checkpoint_failed", error=type(e).__name__)
        self.store.close()
        log.info("ledger_stopped")

    def bus_state(self) -> tuple[str, float]:
        """The state of the ledger's bus links and for how long it has held: the audit
        consumer's while it is down, else the directory follower's (the same NKey and
        servers: what refuses one refuses the other)."""
        for link in (self.bus_link, self.follower.link):
            if not link.connected:
                return link.state, link.down_seconds()
        return "connected", 0.0

    def health(self) -> dict[str, Any]:
        """/healthz: the bus link, the trusted directory's expiry and the loops that died;
        `degraded` with `bus-<state>` once the link has been down past the grace."""
        state, down = self.bus_state()
        reasons = [f"bus-{state}"] if state != "connected" and down > self.bus_grace_seconds else []
        return {
            **service_health(self.follower, self.supervisor, reasons=reasons),
            "bus": state,
            "bus_link": {"audit": self.bus_link.health(), "directory": self.follower.link.health()},
        }

    async def __aenter__(self) -> Ledger:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- appending ------------------------------------------------------------------------

    def _on_root(self, root: Root, data: bytes) -> None:
        with self.store.transaction():
            self.store.add_root(root.version, data, clock.now())
        log.info("ledger_root_accepted", root_version=root.version)

    def _on_directory(self, directory: Directory, data: bytes) -> None:
        self.store.add_directory(directory.version, data, clock.now())
        self.directory = directory
        log.info("ledger_directory_accepted", directory_version=directory.version)

    def append(self, batch: Sequence[tuple[bytes, int]]) -> list[bool | None]:
        """Verify and append signed events (data, time the bus stored it), all in one
        transaction. Per event, True: appended or already there (ack); False: refused and
        counted (ack, it stays out); None: cannot judge yet (retry)."""
        try:
            with self.store.transaction():
                return [self._append_one(data, stored_at=t) for data, t in batch]
        except BaseException:
            self.tree = MerkleTree(self.store, size=self.store.size())
            raise

    def _append_one(self, data: bytes, *, stored_at: int) -> bool | None:
        # Judged under the directory as it stood when the bus stored the event: one stored
        # after the directory or the root expired waits (retry) for the renewed one.
        directory = self.follower.store.directory_at(stored_at)
        if directory is None:
            return None
        try:
            # An event already appended is skipped before any signature work: after a
            # restore the whole audit stream is read again (PROTOCOL.md §9.4).
            if self.store.has_event(decode_signed_event(data)[0].event_id):
                return True
            signed = verify_event(data, signers=directory)
            # The event's time is the signer's word, stored_at the bus's: whoever holds a
            # revoked key could back-date events to before the revocation (PROTOCOL.md §9.0).
            # Revocation only: an honest event delayed past its key's retirement is taken.
            directory.check_not_revoked(signed.event.agency, signed.signer_kid, at=stored_at)
            check_signer_may(signed.event, directory)
        except UnknownKeyError as e:
            if clock.time() - stored_at < self.config.unknown_key_grace_seconds:
                return None
            return self._refuse(e)
        except UntrustedInputError as e:
            return self._refuse(e)
        event = signed.event
        index = self.tree.size
        leaf = LedgerEntry(index=index, appended_at=clock.now(), signed_event=data).encode()
        self.tree.append(leaf_hash(leaf))
        self.store.insert_entry(index, leaf, event, directory.version)
        return True

    def _refuse(self, e: UntrustedInputError) -> bool:
        self.store.count_refused(e.reason)
        log.warning("ledger_event_refused", reason=e.reason)
        return False

    def checkpoint(self) -> None:
        """Sign a checkpoint for the current size if there is none for it yet."""
        latest = self.store.latest_checkpoint()
        size = self.tree.size
        if latest is not None and latest[0] == size:
            return
        root = self.tree.root()
        cp = Checkpoint(origin=self.config.origin, size=size, root=root, timestamp=clock.now())
        note = sign_checkpoint(cp, key=self.signer.signing_key)
        with self.store.transaction():
            self.store.add_checkpoint(size, root, cp.timestamp, note)
        log.info("checkpoint_signed", size=size, root=root.hex())

    async def _checkpoints(self) -> None:
        while self._running:
            await pause(self.config.checkpoint_interval_seconds, self._stopping)
            if self._running:
                self.checkpoint()

    async def _consume(self) -> None:
        config = ledger_consumer_config()
        retry = Retry.after(1.0)
        while self._running:
            # Retries until the bus takes it, each failed attempt paced and its state told
            # by the link (ledger_bus_refused, ledger_bus_unreachable...), never raising.
            nc = await connect_linked(
                self.bus_link,
                self.config.bus,
                stopping=self._stopping,
                nkeys_seed_str=self.nats_seed.decode(),
                inbox_prefix=self.inbox_prefix,
                name="nrm-ledger",
            )
            if nc is None:
                return
            sub = None
            try:
                js = nc.jetstream()
                replay = self.store.replay_pending()
                if replay:  # after a restore: read the audit stream again from its start
                    with contextlib.suppress(NotFoundError):
                        await js.delete_consumer(AUDIT_STREAM, LEDGER_CONSUMER)
                sub = await js.pull_subscribe(
                    AUDIT_SUBJECTS, durable=LEDGER_CONSUMER, stream=AUDIT_STREAM, config=config
                )
                if replay:
                    self.store.replay_started()
                    log.info("ledger_replaying_audit_stream")
                retry.succeeded()
                while self._running:
                    try:
                        msgs: list[Msg] = await unless_stopping(
                            sub.fetch(256, timeout=1.0), self._stopping
                        )
                    except (nats.errors.TimeoutError, TimeoutError):
                        continue
                    # What the bucket says now, before judging: a revocation its signer saw
                    # is seen here too (broker/follower.py catch_up). Unread (no leader
                    # for the directory's stream, say), the batch waits, judged by nobody;
                    # the connection stays.
                    try:
                        await self.follower.catch_up(js)
                    except TRANSIENT as e:
                        log.warning("ledger_directory_unread", error=type(e).__name__)
                        for msg in msgs:
                            await msg.nak(delay=1.0)
                        await pause(retry.next_delay(), self._stopping)
                        continue
                    verdicts = self.append([(msg.data, _stored_at(msg)) for msg in msgs])
                    await self.store.durable()  # one fsync for the batch, before any ack
                    for msg, verdict in zip(msgs, verdicts, strict=True):
                        if verdict is None:
                            await msg.nak(delay=1.0)
                        else:
                            await msg.ack()
            except TRANSIENT as e:
                log.warning("ledger_consumer_interrupted", error=type(e).__name__)
                await pause(retry.next_delay(), self._stopping)
            finally:
                if sub is not None and nc.is_connected:
                    # nats-py's drain waits for a pull subscription's queue to be marked
                    # done, which fetch never does: draining it would take its whole
                    # drain_timeout at every stop. Its messages are acked or naked already.
                    with contextlib.suppress(*TRANSIENT):
                        await sub.unsubscribe()
                await release(self.bus_link, nc)  # over TLS with the bus down too


def ledger_consumer_config() -> ConsumerConfig:
    """The ledger's durable pull consumer on the audit stream (the one its NKey may use,
    broker/authz.py `ledger_permissions`)."""
    return ConsumerConfig(
        name=LEDGER_CONSUMER,
        durable_name=LEDGER_CONSUMER,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=30,
        filter_subject=AUDIT_SUBJECTS,
    )


def _stored_at(msg: Msg) -> int:
    """When the bus stored the message: a sender cannot backdate it. Without the bus's
    timestamp (JetStream always sends one), the ledger's own time, which is no earlier: a
    revocation is never judged at time 0."""
    meta = msg.metadata
    return int(clock.from_bus(meta.timestamp.timestamp())) if meta.timestamp else clock.now()
