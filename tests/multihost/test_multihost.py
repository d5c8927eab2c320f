"""A mechanism spread over hosts: network namespaces on this machine (tests/multihost/netns.py).

Three nats-server nodes on addresses of their own form a JetStream cluster, TLS for clients
and mutual TLS between the nodes (certificates made here with trustme, IP SANs); the ledger
is on a host of its own, and each agency (police, shelter, social services) on its own. The
agencies' case systems call their agents' HTTP APIs from their agency's host. Then:

- referrals flow police -> shelter and police -> social services;
- the leader of the shelter's inbox stream is killed (SIGKILL) and referrals still flow;
- the police's WAN link is cut while its case system keeps submitting: the agent accepts
  and queues them (its outbox) and delivers them once the link returns;
- the social services' link is cut: mail for it waits in its inbox stream on the cluster
  and arrives when the link returns;
- nothing is lost and nothing is delivered twice.

Where network namespaces cannot be made the test says why and skips (fails under CI).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
import trustme

from agents.config import token_digest
from broker.authority import attachment_owners
from broker.server import HEADER_ALLOWANCE_BYTES, conf_string, nats_server_binary
from broker.streams import provision_streams
from keys.limits import DEFAULT_LIMITS
from keys.subjects import inbox_stream
from nrm import admin
from nrm.examples import referral
from nrm.sandbox import LEDGER_NAME, Sandbox, prepare_mechanism
from runtime.endpoint import BusEndpoint, BusTls
from runtime.keydir import load_key_dir

from ..support import TEST_KDF, eventually, query
from .netns import Host, Network, Proc

pytestmark = [pytest.mark.multihost, pytest.mark.timeout(300)]

#: (agency id, display name, role), each on a host of its own.
AGENCIES = [
    ("police", "Police", "police"),
    ("shelter", "Shelter", "ngo"),
    ("social-services", "Social services", "social-services"),
]
#: The last octet of each host's 10.213.0.x address.
ADDRESSES = {
    "ops": 2,
    "nats-1": 11,
    "nats-2": 12,
    "nats-3": 13,
    "ledger": 20,
    "police": 31,
    "shelter": 32,
    "social-services": 33,
}
NODES = ("nats-1", "nats-2", "nats-3")
CLIENT_PORT, ROUTE_PORT, MONITOR_PORT = 4222, 6222, 8222
API_PORT, LEDGER_PORT = 8080, 8443
LIMITS = {"ack_wait_seconds": 2, "retry_max_seconds": 0.5, "timer_interval_seconds": 0.5}
#: The shelter's inbox stream: the one whose leader is killed.
TARGET = inbox_stream("shelter")
TIMEOUT = 60.0
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=10)


@pytest.fixture
def network(netns_available: None, tmp_path: Path) -> Iterator[Network]:
    with Network(tmp_path / "logs") as net:
        for name, octet in ADDRESSES.items():
            net.add_host(name, octet)
        yield net
    assert net.leftovers() == []


@dataclass
class Pki:
    """The test CA and the files of every certificate it issued, by owner."""

    folder: Path
    ca: trustme.CA = field(default_factory=trustme.CA)

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.ca.cert_pem.write_to_path(str(self.ca_file))

    @property
    def ca_file(self) -> Path:
        return self.folder / "ca.pem"

    def issue(self, owner: str, *names: str) -> tuple[Path, Path]:
        """A certificate for `names` (IP addresses or host names) and its key."""
        cert = self.ca.issue_cert(*names)
        cert_file, key_file = self.folder / f"{owner}.pem", self.folder / f"{owner}.key"
        cert.cert_chain_pems[0].write_to_path(str(cert_file))
        cert.private_key_pem.write_to_path(str(key_file))
        key_file.chmod(0o600)
        return cert_file, key_file


@dataclass
class Deployment:
    net: Network
    sandbox: Sandbox
    pki: Pki
    root: Path
    nodes: dict[str, Proc] = field(default_factory=dict)
    procs: dict[str, Proc] = field(default_factory=dict)
    measured: dict[str, float] = field(default_factory=dict)

    @property
    def admin_passphrase_file(self) -> Path:
        path = self.root / "admin.passphrase"
        if not path.exists():
            path.write_bytes(self.sandbox.admin_passphrase)
            path.chmod(0o600)
        return path

    def host(self, name: str) -> Host:
        return self.net.hosts[name]

    @property
    def ops(self) -> Host:
        return self.net.hosts["ops"]

    @property
    def urls(self) -> list[str]:
        return [f"tls://{self.host(n).address}:{CLIENT_PORT}" for n in NODES]

    @property
    def endpoint(self) -> BusEndpoint:
        return BusEndpoint.of(self.urls, BusTls(ca_file=self.pki.ca_file))

    def env(self) -> dict[str, str]:
        """What every process is given: the test CA as the trusted one for `tls://` URLs
        (phase 1: before [nats_tls] lands)."""
        return {"SSL_CERT_FILE": str(self.pki.ca_file)}

    def nrm(self, host: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Run `nrm args...` on `host` to its end; fail the test, quoting it, if it fails."""
        result = subprocess.run(
            ["ip", "netns", "exec", self.host(host).namespace, sys.executable, "-m", "nrm", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **self.env()},
            check=False,
        )
        assert result.returncode == 0, f"nrm {' '.join(args)}: {result.stdout}{result.stderr}"
        return result


# --- the bus -------------------------------------------------------------------------------


def write_node_configs(d: Deployment) -> dict[str, Path]:
    """Hand-written nats-server configurations (phase 1), the authorization block from
    `nrm broker config`."""
    folder = d.root / "bus"
    folder.mkdir()
    directory = d.sandbox.admin.path / admin.DIRECTORY_FILE
    authorization = folder / "authorization.conf"
    d.nrm(
        "ops",
        "broker",
        "config",
        "--directory",
        str(directory),
        "--root",
        str(d.sandbox.admin.root_path(1)),
        "--operator",
        str(d.sandbox.admin.path / admin.OPERATOR_DIR / "identity.json"),
        "--out",
        str(authorization),
    )
    configs = {}
    max_payload = DEFAULT_LIMITS.max_envelope_bytes + HEADER_ALLOWANCE_BYTES
    for name in NODES:
        address = d.host(name).address
        cert, key = d.pki.issue(name, address, f"{name}.bus.nrm.test")
        tls = (
            f"    cert_file: {conf_string(str(cert))}\n"
            f"    key_file: {conf_string(str(key))}\n"
            f"    ca_file: {conf_string(str(d.pki.ca_file))}\n"
        )
        routes = "".join(
            f'    "nats-route://{d.host(n).address}:{ROUTE_PORT}"\n' for n in NODES if n != name
        )
        store = folder / name
        store.mkdir()
        text = (
            f"server_name: {name}\n"
            f'listen: "{address}:{CLIENT_PORT}"\n'
            f'http: "{address}:{MONITOR_PORT}"\n'
            f"max_payload: {max_payload}\n"
            f"jetstream {{\n  store_dir: {conf_string(str(store))}\n}}\n"
            f"tls {{\n{tls}    verify: false\n    timeout: 5\n}}\n"
            "cluster {\n"
            '  name: "nrm"\n'
            f'  listen: "{address}:{ROUTE_PORT}"\n'
            f"  tls {{\n{tls}    verify: true\n    timeout: 5\n  }}\n"
            f"  routes: [\n{routes}  ]\n"
            "}\n"
            f"include {conf_string(authorization.name)}\n"
        )
        path = folder / f"{name}.conf"
        path.write_text(text)
        configs[name] = path
    return configs


def start_node(d: Deployment, name: str, config: Path) -> None:
    d.nodes[name] = d.host(name).spawn("nats", [str(nats_server_binary()), "-c", str(config)])


async def node_healthy(d: Deployment, name: str) -> bool:
    if not d.nodes[name].running:
        raise AssertionError(f"{name} exited: {d.nodes[name].tail()}")
    url = f"http://{d.host(name).address}:{MONITOR_PORT}/healthz?js-enabled-only=true"
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r,
        ):
            return r.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def operator_connection(d: Deployment, **options: Any) -> Any:
    keys = load_key_dir(
        d.sandbox.admin.path / admin.OPERATOR_DIR, passphrase=d.sandbox.admin_passphrase
    )
    assert keys.nats_seed is not None
    return await nats.connect(
        **d.endpoint.connect_options(),
        nkeys_seed_str=keys.nats_seed.decode(),
        connect_timeout=2,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.2,
        **options,
    )


async def provision_cluster(d: Deployment) -> None:
    """Every node healthy, then the streams and buckets with three replicas (retried until
    the JetStream meta leader is elected)."""

    async def healthy() -> bool:
        return all([await node_healthy(d, name) for name in NODES])

    await eventually(healthy, timeout=TIMEOUT, what="every node healthy")
    directory = admin.verified_draft(d.sandbox.admin)
    nc = await operator_connection(d)
    try:
        js = nc.jetstream(timeout=2)

        async def provisioned() -> bool:
            try:
                await provision_streams(js, replicas=3, agencies=attachment_owners(directory))
            except (nats.errors.Error, TimeoutError):
                return False
            return True

        await eventually(provisioned, timeout=TIMEOUT, what="the streams provisioned")
        info = await js.stream_info(TARGET)
        assert info.config.num_replicas == 3
    finally:
        await nc.close()


# --- the ledger and the agents -------------------------------------------------------------


def write_ledger_config(d: Deployment) -> Path:
    """Hand-written ledger.toml (phase 1)."""
    home = d.sandbox.ledger_home
    tokens = [d.sandbox.auditor_token] + [
        (a.home / "ledger.token").read_text().strip() for a in d.sandbox.agencies.values()
    ]
    lines = [
        f"name = {json.dumps(LEDGER_NAME)}",
        'key_dir = "keys"',
        f"operator_key_dir = {json.dumps(str(d.sandbox.admin.path / admin.OPERATOR_DIR))}",
        'passphrase_file = "passphrase"',
        f"nats_urls = {json.dumps(d.urls)}",
        f"trust_root = {json.dumps(str(d.sandbox.admin.root_path(1)))}",
        'database = "ledger.db"',
        f'bind = "{d.host("ledger").address}:{LEDGER_PORT}"',
        "checkpoint_interval_seconds = 0.5",
        *[f'[[auditors]]\nname = "auditor"\ntoken_sha256 = "{token_digest(t)}"' for t in tokens],
        "",
    ]
    path = home / "ledger.toml"
    path.write_text("\n".join(lines))
    return path


def write_agent_config(d: Deployment, agency: str) -> Path:
    """Hand-written agent.toml (phase 1), as nrm/sandbox.py writes it."""
    setup = d.sandbox.agencies[agency]
    lines = [
        f"agency = {json.dumps(agency)}",
        'key_dir = "keys"',
        'passphrase_file = "passphrase"',
        f"nats_urls = {json.dumps(d.urls)}",
        'database = "agent.db"',
        'trust_root = "root.json"',
        'trust_cache = "trust"',
        "",
        "[api]",
        f'bind = "{d.host(agency).address}:{API_PORT}"',
        "[[api.clients]]",
        'name = "case-management"',
        f'token_sha256 = "{token_digest(setup.token)}"',
        'scopes = ["submit", "read", "act"]',
        "",
        "[ledger]",
        f'url = "http://{d.host("ledger").address}:{LEDGER_PORT}"',
        f"name = {json.dumps(LEDGER_NAME)}",
        'identity = "../ledger/keys/identity.json"',
        'token_file = "ledger.token"',
        "interval_seconds = 1",
        "missing_after_seconds = 600",
        "",
        "[limits]",
        *[f"{k} = {v!r}" for k, v in LIMITS.items()],
        "",
    ]
    setup.config_path.write_text("\n".join(lines))
    return setup.config_path


@dataclass
class CaseSystem:
    """An agency's case-management system: on the agency's host, calling its agent."""

    host: Host
    token: str
    base: str

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async def request() -> tuple[int, Any]:
            headers = {"Authorization": f"Bearer {self.token}"}
            async with (
                aiohttp.ClientSession() as http,
                http.request(
                    method, self.base + path, json=body, headers=headers, timeout=REQUEST_TIMEOUT
                ) as r,
            ):
                data = await r.read()
                return r.status, json.loads(data) if data else None

        return await self.host.run(request())

    async def refer(self, to: str) -> str:
        status, body = await self.call(
            "POST", "/v1/referrals", {"recipients": [to], "referral": referral()}
        )
        assert status == 202, body
        return str(body["id"])

    async def status(self, referral_id: str) -> str:
        status, body = await self.call("GET", f"/v1/referrals/{referral_id}")
        assert status == 200, body
        return str(body["status"])

    async def health(self) -> dict[str, Any]:
        try:
            _, body = await self.call("GET", "/healthz")
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return {}
        return body if isinstance(body, dict) else {}

    async def ready(self) -> bool:
        h = await self.health()
        return h.get("bus") == "connected" and bool(h.get("trust", {}).get("directory_trusted"))

    async def inbox_ids(self) -> list[str]:
        ids: list[str] = []
        cursor = ""
        while True:
            status, body = await self.call("GET", f"/v1/inbox?limit=100{cursor}")
            assert status == 200, body
            ids += [str(item["id"]) for item in body["items"]]
            if body["next_cursor"] is None:
                return ids
            cursor = f"&cursor={body['next_cursor']}"


def case_system(d: Deployment, agency: str) -> CaseSystem:
    base = f"http://{d.host(agency).address}:{API_PORT}"
    return CaseSystem(d.host(agency), d.sandbox.agencies[agency].token, base)


async def all_delivered(police: CaseSystem, ids: list[str]) -> bool:
    for rid in ids:
        if await police.status(rid) != "delivered":
            return False
    return True


async def leader_of(js: Any, stream: str) -> str | None:
    try:
        info = await js.stream_info(stream)
    except (nats.errors.Error, TimeoutError):
        return None
    return info.cluster.leader if info.cluster else None


async def replicas_current(js: Any, stream: str) -> bool:
    try:
        info = await js.stream_info(stream)
    except (nats.errors.Error, TimeoutError):
        return False
    replicas = info.cluster.replicas or [] if info.cluster else []
    return len(replicas) == 2 and all(r.current and not r.offline for r in replicas)


def deliveries(db: Path, referral_id: str) -> list[tuple[str, bool]]:
    """(state, tried at least once) of each copy of the referral in a sender's outbox."""
    rows = query(
        db,
        "SELECT d.state, d.attempts FROM deliveries d JOIN outbox o USING (message_id)"
        " WHERE o.referral_id = ?",
        referral_id,
    )
    return [(str(state), int(attempts) > 0) for state, attempts in rows]


# --- the scenario --------------------------------------------------------------------------


async def scenario(d: Deployment) -> None:
    """Runs on the ops host's loop (its operator connection is made from there)."""
    configs = write_node_configs(d)
    for name, config in configs.items():
        start_node(d, name, config)
    await provision_cluster(d)
    d.nrm(
        "ops",
        "directory",
        "publish",
        "--nats",
        d.urls[0],
        "--passphrase-file",
        str(d.admin_passphrase_file),
        "--dir",
        str(d.sandbox.admin.path),
    )
    ledger = write_ledger_config(d)
    d.procs["ledger"] = d.host("ledger").spawn(
        "ledger",
        [sys.executable, "-m", "nrm", "ledger", "run", "--config", str(ledger)],
        env=d.env(),
    )
    systems = {}
    for agency, _, _ in AGENCIES:
        config = write_agent_config(d, agency)
        d.procs[agency] = d.host(agency).spawn(
            "agent",
            [sys.executable, "-m", "nrm", "agent", "run", "--config", str(config)],
            env=d.env(),
        )
        systems[agency] = case_system(d, agency)
    for agency, system in systems.items():
        await eventually(system.ready, timeout=TIMEOUT, what=f"the {agency} agent ready")
    police, shelter, social = systems["police"], systems["shelter"], systems["social-services"]
    sent: dict[str, list[str]] = {"shelter": [], "social-services": []}

    # Referrals flow police -> shelter and police -> social services, across hosts.
    for to in ("shelter", "social-services", "shelter"):
        sent[to].append(await police.refer(to))
    await eventually(
        lambda: all_delivered(police, [*sent["shelter"], *sent["social-services"]]),
        timeout=TIMEOUT,
        what="the first referrals delivered",
    )

    nc = await operator_connection(d)
    try:
        js = nc.jetstream(timeout=2)

        # The leader of the shelter's inbox stream dies; referrals still flow.
        victim = await leader_of(js, TARGET)
        assert victim in NODES, victim
        d.nodes[victim].kill()
        killed = time.monotonic()

        async def new_leader() -> bool:
            return (await leader_of(js, TARGET)) not in (None, victim)

        await eventually(new_leader, timeout=TIMEOUT, what=f"a leader for {TARGET} after {victim}")
        d.measured["leader failover (s)"] = time.monotonic() - killed
        during = [await police.refer("shelter") for _ in range(2)]
        sent["shelter"] += during
        await eventually(
            lambda: all_delivered(police, during),
            timeout=TIMEOUT,
            what="delivery without the leader",
        )
        d.nodes[victim].start()
        await eventually(
            lambda: replicas_current(js, TARGET), timeout=TIMEOUT, what=f"{victim} back and current"
        )

        # The police's WAN link is down: its agent accepts and queues; delivered on return.
        d.net.cut(d.host("police"))
        cut = time.monotonic()
        queued = [await police.refer("shelter") for _ in range(3)]
        sent["shelter"] += queued
        assert (await police.health())["outbox_pending"] >= len(queued)
        db = d.sandbox.agencies["police"].home / "agent.db"

        async def tried_and_kept() -> bool:
            """Every queued copy was tried at least once (the bus unreachable) and kept."""
            return all(deliveries(db, rid) == [("queued", True)] for rid in queued)

        await eventually(tried_and_kept, timeout=TIMEOUT, what="failed publishes, kept queued")
        d.measured["outbox: link down (s)"] = time.monotonic() - cut
        d.net.restore(d.host("police"))
        restored = time.monotonic()
        await eventually(
            lambda: all_delivered(police, queued), timeout=TIMEOUT, what="the queued referrals"
        )
        d.measured["outbox: queued referrals delivered after the link returned (s)"] = (
            time.monotonic() - restored
        )

        # The social services' link is down: mail for it waits in its inbox stream.
        d.net.cut(d.host("social-services"))
        waiting = [await police.refer("social-services") for _ in range(2)]
        sent["social-services"] += waiting
        stream = inbox_stream("social-services")

        async def held() -> bool:
            statuses = [await police.status(rid) for rid in waiting]
            if statuses != ["sent"] * len(waiting):
                return False
            info = await js.stream_info(stream)
            return bool(info.state.messages >= len(waiting))

        await eventually(held, timeout=TIMEOUT, what=f"the referrals held in {stream}")
        d.net.restore(d.host("social-services"))
        restored = time.monotonic()
        await eventually(
            lambda: all_delivered(police, waiting), timeout=TIMEOUT, what="the held referrals"
        )
        d.measured["inbox: held referrals delivered after the link returned (s)"] = (
            time.monotonic() - restored
        )
    finally:
        await nc.close()

    # Nothing lost, nothing twice.
    for agency, system in (("shelter", shelter), ("social-services", social)):
        got = Counter(await system.inbox_ids())
        assert got == Counter(sent[agency]), (agency, got, sent[agency])


def test_a_mechanism_over_hosts(
    network: Network, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Referrals flow between agencies on hosts of their own over a TLS cluster, through
    a stream leader's death and WAN outages, nothing lost or delivered twice."""
    sandbox = prepare_mechanism(tmp_path / "m", AGENCIES, admins=1, threshold=1, cost=TEST_KDF)
    d = Deployment(network, sandbox, Pki(tmp_path / "pki"), tmp_path)
    try:
        asyncio.run(d.ops.run(scenario(d)))
    except BaseException:
        for proc in [*d.nodes.values(), *d.procs.values()]:
            print(f"--- {proc.log}\n{proc.tail()}")
        raise
    with capsys.disabled():
        print("\nmulti-host: " + ", ".join(f"{k}: {v:.2f}" for k, v in d.measured.items()))
