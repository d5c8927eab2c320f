"""A whole local mechanism in one folder: administrators, agencies, a secured bus.

Used by `nrm demo` and by the tests, so both set things up the way operators would: the
administrators' root and signed directory, each agency's keys and agent configuration, and
a nats-server whose authorization is generated from the directory.

    root/admin/        root keys, root.1.json, directory.json, operator/  (nrm admin init)
    root/<agency>/     keys/, passphrase, root.json (the pinned trust anchor), agent.toml
    root/bus/          the nats-server store and configuration
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nats

from agents.config import token_digest
from broker import NatsServer, provision
from broker.authority import DirectoryAuthority, attachment_owners, authorization_for
from broker.authz import ServiceKeys
from broker.cluster import ClusterNode, cluster_block
from broker.ledger import Ledger
from broker.server import ServerTls
from keys import AgencyKeys, PublicIdentity
from keys.keyfile import INTERACTIVE, KdfCost
from keys.policy import Policy
from keys.roles import COMPETENT_AUTHORITY
from keys.subjects import DIRECTORY_BUCKET
from runtime import clock
from runtime.endpoint import BusEndpoint, BusTls
from runtime.files import replace_file, write_new_file
from runtime.keydir import init_key_dir, load_key_dir
from runtime.tomlfile import dumps

from . import admin, configs

LEDGER_NAME = "national"


@dataclass(frozen=True, slots=True)
class AgencySetup:
    agency: str
    name: str
    roles: tuple[str, ...]
    home: Path
    config_path: Path
    token: str

    @property
    def key_dir(self) -> Path:
        return self.home / "keys"

    @property
    def identity_path(self) -> Path:
        return self.key_dir / "identity.json"

    def passphrase(self) -> bytes:
        return (self.home / "passphrase").read_bytes()


@dataclass(frozen=True, slots=True)
class SandboxTls:
    """TLS for a whole sandbox, from one CA: nats-server requires TLS of every client
    (mutual TLS when a client certificate is given, which every client then presents),
    and with `https` the agents' and the ledger's APIs serve HTTPS with the server's
    certificate (which must name the API host, 127.0.0.1)."""

    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path | None = None
    client_key: Path | None = None
    https: bool = True

    def server(self) -> ServerTls:
        return ServerTls(
            cert_file=self.server_cert,
            key_file=self.server_key,
            ca_file=self.ca_file,
            verify=self.client_cert is not None,
        )

    def client(self) -> BusTls:
        return BusTls(ca_file=self.ca_file, cert_file=self.client_cert, key_file=self.client_key)

    def http_tls(self) -> configs.HttpTls | None:
        """The certificate an API serving HTTPS presents (none without `https`)."""
        if not self.https:
            return None
        return configs.HttpTls(cert_file=str(self.server_cert), key_file=str(self.server_key))


@dataclass
class Sandbox:
    root: Path
    admin: admin.AdminFolder
    admin_passphrase: bytes
    agencies: dict[str, AgencySetup]
    bus: NatsServer | None = None
    authority: DirectoryAuthority | None = None
    ledger: Ledger | None = None
    auditor_token: str = ""
    cluster_nodes: list[NatsServer] = field(default_factory=list)
    #: TLS for the bus and the HTTP APIs (set before starting anything); None: plain, loopback.
    tls: SandboxTls | None = None

    @property
    def ledger_home(self) -> Path:
        return self.root / "ledger"

    @property
    def ledger_passphrase(self) -> bytes:
        """The passphrase of the ledger's own key file (its own, not the administrators')."""
        return (self.ledger_home / "passphrase").read_bytes()

    def write_ledger_config(
        self, *, checkpoint_interval: float = 1.0, bind: str = "127.0.0.1:0"
    ) -> Path:
        """Write ledger.toml (the ledger's own key, with which it also logs in to the bus, a
        token of scope `agency:<id>` per agency and one auditor token) without starting the ledger;
        `nrm ledger run --config` runs it. Returns its path."""
        assert self.bus_urls, "start the bus first"
        home = self.ledger_home
        tokens = [
            (agency, token_digest((a.home / "ledger.token").read_text().strip()))
            for agency, a in self.agencies.items()
        ]
        config = configs.ledger_config(
            name=LEDGER_NAME,
            key_dir="keys",
            passphrase_file="passphrase",  # noqa: S106 (a file name)
            endpoint=BusEndpoint.of(self.bus_urls, None if self.tls is None else self.tls.client()),
            trust_root=str(self.admin.root_path(1)),
            database="ledger.db",
            bind=bind,
            http_tls=None if self.tls is None else self.tls.http_tls(),
            checkpoint_interval_seconds=checkpoint_interval,
            auditors=[("auditor", token_digest(self.auditor_token))],
            tokens=[(agency, digest, f"agency:{agency}") for agency, digest in tokens],
        )
        replace_file(home / "ledger.toml", dumps(config).encode())
        return home / "ledger.toml"

    async def start_ledger(self, *, checkpoint_interval: float = 1.0) -> Ledger:
        """Write ledger.toml (`write_ledger_config`) and start the ledger in this process."""
        path = self.write_ledger_config(checkpoint_interval=checkpoint_interval)
        self.ledger = Ledger.from_config_file(path)
        await self.ledger.start()
        return self.ledger

    @property
    def bus_urls(self) -> list[str]:
        """The client URLs of the bus: the single server's, or every cluster node's."""
        if self.cluster_nodes:
            return [n.url for n in self.cluster_nodes]
        return [] if self.bus is None else [self.bus.url]

    @property
    def bus_endpoint(self) -> BusEndpoint:
        """How a client of this sandbox reaches the bus: its URLs, and TLS if it has it."""
        return BusEndpoint.of(self.bus_urls, None if self.tls is None else self.tls.client())

    async def stop_ledger(self) -> None:
        if self.ledger is not None:
            await self.ledger.stop()
            self.ledger = None

    @property
    def admin_keys(self) -> list[Path]:
        return sorted(self.admin.path.glob("admin-*.key"))

    def sign_draft(self) -> None:
        """Sign the directory draft with as many administrator keys as the root needs."""
        threshold = self.admin.trusted_root(now=_now()).threshold
        for key in self.admin_keys[:threshold]:
            admin.sign_draft(self.admin, key, passphrase=self.admin_passphrase)

    @property
    def ledger_identity(self) -> PublicIdentity:
        """The ledger's public identity: its NATS key logs in as a ledger."""
        return PublicIdentity.from_json((self.ledger_home / "keys" / "identity.json").read_bytes())

    def services(self, operator: AgencyKeys) -> ServiceKeys:
        """The operator's and the ledger's NKeys, which the bus admits beside the directory's."""
        assert operator.public.nats_key is not None
        ledger = self.ledger_identity.nats_key
        assert ledger is not None
        return ServiceKeys(operators=(operator.public.nats_key,), ledgers=(ledger,))

    async def start_bus(self, *, port: int | None = None) -> NatsServer:
        """Start nats-server with authorization from the signed draft, provision the streams
        and bucket as the operator, publish the directory, and follow later publications."""
        directory = admin.verified_draft(self.admin)
        operator = load_key_dir(
            self.admin.path / admin.OPERATOR_DIR, passphrase=self.admin_passphrase
        )
        assert operator.nats_seed is not None and operator.public.nats_key is not None
        authorization = authorization_for(directory, services=self.services(operator))
        self.bus = NatsServer(
            store_dir=self.root / "bus",
            port=port,
            extra_config=authorization,
            tls=None if self.tls is None else self.tls.server(),
        )
        self.bus.start()
        await provision(
            self.bus_endpoint, nkeys_seed=operator.nats_seed, agencies=attachment_owners(directory)
        )
        await self.publish()
        self.authority = DirectoryAuthority(
            self.bus,
            pinned_root=self.admin.root_path(1),
            nkeys_seed=operator.nats_seed,
            services=self.services(operator),
            provisioning_seed=operator.nats_seed,  # the embedded bus's, as `nrm bus up`
        )
        self.authority.adopt(directory, authorization)
        self.authority.follower.endpoint = self.bus_endpoint
        await self.authority.start()
        return self.bus

    async def start_cluster(
        self, *, client_ports: Sequence[int], cluster_ports: Sequence[int]
    ) -> list[NatsServer]:
        """Start a nats-server cluster on loopback (one node per port pair, each with its own
        store under root/bus-N), every node with the authorization from the signed draft;
        provision the streams and the bucket with one replica per node and publish the
        directory. Changes to the directory are not followed (no DirectoryAuthority)."""
        directory = admin.verified_draft(self.admin)
        operator = load_key_dir(
            self.admin.path / admin.OPERATOR_DIR, passphrase=self.admin_passphrase
        )
        assert operator.nats_seed is not None and operator.public.nats_key is not None
        authorization = authorization_for(directory, services=self.services(operator))
        nodes = [
            ClusterNode(
                name=f"nrm-{n + 1}",
                host="127.0.0.1",
                client_port=client,
                cluster_port=route,
                store_dir=str(self.root / f"bus-{n + 1}"),
            )
            for n, (client, route) in enumerate(zip(client_ports, cluster_ports, strict=True))
        ]
        self.cluster_nodes = [
            NatsServer(
                store_dir=Path(node.store_dir),
                port=node.client_port,
                extra_config=authorization,
                cluster=cluster_block(node, nodes),
                tls=None if self.tls is None else self.tls.server(),  # clients' TLS only
            )
            for node in nodes
        ]
        for server in self.cluster_nodes:
            server.start()
        self.bus = self.cluster_nodes[0]
        deadline = time.monotonic() + 30
        while True:  # the JetStream meta leader is elected once routes are up
            try:
                await provision(
                    self.bus_endpoint,
                    nkeys_seed=operator.nats_seed,
                    replicas=len(nodes),
                    agencies=attachment_owners(directory),
                )
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
        await self.publish()
        return self.cluster_nodes

    async def publish(self) -> int:
        """Publish the signed draft; its directory version."""
        assert self.bus is not None
        published = await admin.publish(
            self.admin, self.bus_endpoint, passphrase=self.admin_passphrase
        )
        return published.version

    async def put(self, key: str, value: bytes) -> None:
        """Put raw bytes in the directory bucket as the operator (tests use it to offer
        agents forged or stale documents)."""
        assert self.bus is not None
        operator = load_key_dir(
            self.admin.path / admin.OPERATOR_DIR, passphrase=self.admin_passphrase
        )
        assert operator.nats_seed is not None
        nc = await nats.connect(
            **self.bus_endpoint.connect_options(), nkeys_seed_str=operator.nats_seed.decode()
        )
        try:
            await (await nc.jetstream().key_value(DIRECTORY_BUCKET)).put(key, value)
        finally:
            await nc.drain()

    async def stop_all(self) -> None:
        await self.stop_ledger()
        await self.stop_bus()

    async def stop_bus(self) -> None:
        if self.authority is not None:
            await self.authority.stop()
            self.authority = None
        for node in self.cluster_nodes:
            node.stop()
        if self.bus is not None:
            self.bus.stop()

    def write_agent_configs(
        self,
        *,
        limits: dict[str, int | float] | None = None,
        ledger_missing_after: int = 60,
        webhooks: dict[str, str] | None = None,
        ledger_url: str | None = None,
        api_ports: dict[str, int] | None = None,
    ) -> None:
        """Write each agent's agent.toml; `webhooks` maps an agency to the URL its system
        listens on (the HMAC secret goes to <agency>/webhook.secret, 0600). `ledger_url`
        names a ledger run elsewhere (default: the one started here, if any); `api_ports`
        fixes an agency's API port (default: any free port)."""
        assert self.bus_urls, "start the bus first"
        if ledger_url is None and self.ledger is not None:
            ledger_url = self.ledger.url
        for setup in self.agencies.values():
            _write_config(
                setup,
                nats_urls=self.bus_urls,
                api_port=(api_ports or {}).get(setup.agency, 0),
                limits=limits or {},
                ledger_url=ledger_url,
                ledger_missing_after=ledger_missing_after,
                webhook_url=(webhooks or {}).get(setup.agency),
                tls=self.tls,
            )


def prepare_mechanism(
    root: Path,
    agencies: Sequence[tuple[str, str, str]],
    *,
    admins: int = 3,
    threshold: int = 2,
    cost: KdfCost = INTERACTIVE,
    settings: admin.AdminSettings | None = None,
    policy: Policy | None = None,
) -> Sandbox:
    """Administrators, then each `(agency id, display name, role)` with keys, admitted to a
    signed directory draft (`settings`: the directory lifetime and publishing margin, as
    `nrm admin init` keeps them; `policy`: the national policy the draft carries, which a
    role of spec_version 2 such as `competent-authority` needs). Demo and test keys use the
    cheaper INTERACTIVE key-file cost; real deployments use the `nrm` commands and their
    default."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    admin_passphrase = secrets.token_urlsafe(24).encode()
    folder = admin.AdminFolder(root / "admin")
    admin.init_admin(
        folder.path,
        admins=admins,
        threshold=threshold,
        passphrase=admin_passphrase,
        cost=cost,
        settings=settings,
    )
    if policy is not None:
        admin.set_policy(folder, policy)
    setups = {}
    for agency, name, role in agencies:
        home = root / agency
        home.mkdir(mode=0o700)
        passphrase = secrets.token_urlsafe(24)
        write_new_file(home / "passphrase", passphrase.encode())
        init_key_dir(
            home / "keys", agency=agency, name=name, passphrase=passphrase.encode(), cost=cost
        )
        shutil.copyfile(folder.root_path(1), home / "root.json")
        write_new_file(home / "ledger.token", secrets.token_urlsafe(32).encode())
        setups[agency] = AgencySetup(
            agency, name, (role,), home, home / "agent.toml", secrets.token_urlsafe(32)
        )
        identity = PublicIdentity.from_json((home / "keys" / "identity.json").read_bytes())
        admin.add_agency(folder, identity, roles=[role])
    ledger_home = root / "ledger"
    ledger_home.mkdir(mode=0o700)
    ledger_passphrase = secrets.token_urlsafe(24).encode()  # its own, as every host's
    write_new_file(ledger_home / "passphrase", ledger_passphrase)
    init_key_dir(
        ledger_home / "keys",
        agency="ledger",
        name="Audit ledger",
        passphrase=ledger_passphrase,
        cost=cost,
    )
    sandbox = Sandbox(
        root, folder, admin_passphrase, setups, auditor_token=secrets.token_urlsafe(32)
    )
    sandbox.sign_draft()
    return sandbox


def _write_config(
    setup: AgencySetup,
    *,
    nats_urls: list[str],
    limits: dict[str, int | float],
    ledger_url: str | None,
    ledger_missing_after: int,
    webhook_url: str | None = None,
    api_port: int = 0,
    tls: SandboxTls | None = None,
) -> None:
    scopes: tuple[str, ...] = ("submit", "read", "act")
    if COMPETENT_AUTHORITY in setup.roles:  # its case system decides
        scopes += ("decide",)
    webhooks = []
    if webhook_url is not None:
        secret = setup.home / "webhook.secret"
        if not secret.exists():
            write_new_file(secret, secrets.token_hex(32).encode())
        webhooks.append((webhook_url, "webhook.secret"))
    config = configs.agent_config(
        agency=setup.agency,
        key_dir="keys",
        passphrase_file="passphrase",  # noqa: S106 (a file name)
        endpoint=BusEndpoint.of(nats_urls, None if tls is None else tls.client()),
        database="agent.db",
        trust_root="root.json",
        trust_cache="trust",
        api_bind=f"127.0.0.1:{api_port}",
        http_tls=None if tls is None else tls.http_tls(),
        clients=[configs.ApiClientSpec("case-management", token_digest(setup.token), scopes)],
        ledger=None
        if ledger_url is None
        else configs.LedgerLink(
            url=ledger_url,
            name=LEDGER_NAME,
            identity="../ledger/keys/identity.json",
            token_file="ledger.token",  # noqa: S106 (a file name)
            ca_file=(
                str(tls.ca_file) if tls is not None and ledger_url.startswith("https://") else None
            ),
            interval_seconds=1,
            missing_after_seconds=ledger_missing_after,
        ),
        webhooks=webhooks,
        limits=limits,
    )
    replace_file(setup.config_path, dumps(config).encode())


def _now() -> int:
    return clock.now()
