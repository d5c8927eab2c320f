"""A mechanism spread over hosts: network namespaces on this machine (tests/multihost/netns.py).

Three nats-server nodes on addresses of their own form a JetStream cluster, TLS for clients
and mutual TLS between the nodes (certificates made here with trustme, IP SANs), each node
with its `nrm bus authority`; the ledger is on a host of its own, and each agency (police,
shelter, social services, later outreach) on its own. The operator writes one file, the
cluster spec (as deploy/nats-cluster/cluster.toml); `nrm cluster config` writes each node's
nats-server configuration, initial authorization and authority.toml from it, `nrm bus
provision` makes the streams, `nrm directory` commands change and publish the directory.
The operator's key stays on the ops host: each node's authority logs in with keys of its own
(`nrm keys init` on the node, at the same path on every node, each node seeing its own
folder there), the ledger with its own.
The agencies' case systems call their agents' HTTP APIs from their agency's host. Then:

- referrals flow police -> shelter and police -> social services;
- the leader of the shelter's inbox stream is killed (SIGKILL) and referrals still flow;
- an agency admitted to the directory can log in on every node (the authorities follow the
  published directory), and receives a referral; removed, its agent's connection is closed
  and no node lets it log in again; no step is taken on any node;
- the police's WAN link is cut while its case system keeps submitting: the agent accepts
  and queues them (its outbox) and delivers them once the link returns;
- the social services' link is cut: mail for it waits in its inbox stream on the cluster
  and arrives when the link returns;
- nothing is lost and nothing is delivered twice.

The figures measured (failover, propagation, catch-up after an outage) are printed; docs/
DESIGN.md ("Leaf nodes") quotes them. Where network namespaces cannot be made the test says
why and skips (fails under CI).
"""

from __future__ import annotations

import asyncio
import functools
import json
import shutil
import ssl
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

from broker.server import nats_server_binary
from keys.subjects import inbox_stream
from nrm import admin
from nrm.examples import referral
from nrm.sandbox import LEDGER_NAME, Sandbox, prepare_mechanism
from runtime.endpoint import BusEndpoint, BusTls
from runtime.files import write_new_file
from runtime.keydir import load_key_dir

from ..support import TEST_KDF, Pki, eventually, query
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
    "outreach": 34,
}
#: The agency admitted, then removed, while the mechanism runs.
NEWCOMER = "outreach"
NODES = ("nats-1", "nats-2", "nats-3")
CLIENT_PORT, ROUTE_PORT, MONITOR_PORT = 4222, 6222, 8222
STATUS_PORT, API_PORT, LEDGER_PORT = 8223, 8080, 8443
#: The shelter's inbox stream: the one whose leader is killed.
TARGET = inbox_stream("shelter")
TIMEOUT = 60.0
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=10)
SHORT = aiohttp.ClientTimeout(total=2)


@pytest.fixture
def network(netns_available: None, tmp_path: Path) -> Iterator[Network]:
    with Network(tmp_path / "logs") as net:
        for name, octet in ADDRESSES.items():
            net.add_host(name, octet)
        yield net
    assert net.leftovers() == []


@dataclass
class Deployment:
    """The mechanism being deployed over the hosts of `net`: its files under `root`, the
    processes started (nats-server per node in `nodes`, the rest in `procs`), what was
    measured."""

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
            write_new_file(path, self.sandbox.admin_passphrase)
        return path

    def host(self, name: str) -> Host:
        return self.net.hosts[name]

    @property
    def authority_home(self) -> Path:
        """The authority's folder on every node (one path; each node's own folder is bound
        there for its authority: `own_authority_home`)."""
        return self.root / "bus" / "authority"

    def own_authority_home(self, node: str) -> Path:
        """What `authority_home` holds on `node`: its authority's passphrase and keys."""
        return self.root / "hosts" / node / "authority"

    @property
    def ops(self) -> Host:
        return self.net.hosts["ops"]

    @property
    def urls(self) -> list[str]:
        return [f"tls://{self.host(n).address}:{CLIENT_PORT}" for n in NODES]

    @property
    def endpoint(self) -> BusEndpoint:
        return BusEndpoint.of(self.urls, BusTls(ca_file=self.pki.ca_file))

    @functools.cached_property
    def operator_seed(self) -> bytes:
        keys = load_key_dir(
            self.sandbox.admin.path / admin.OPERATOR_DIR, passphrase=self.sandbox.admin_passphrase
        )
        assert keys.nats_seed is not None
        return keys.nats_seed

    def bus_options(self) -> list[str]:
        """How every `nrm` command run here reaches the bus: every node, the test CA."""
        return ["--nats", ",".join(self.urls), "--tls-ca", str(self.pki.ca_file)]

    async def nrm(
        self, host: str, *args: str, codes: tuple[int, ...] = (0,)
    ) -> subprocess.CompletedProcess[str]:
        """Run `nrm args...` on `host` to its end; fail the test, quoting its output, if it
        exits with a code not in `codes`."""
        argv = ["ip", "netns", "exec", self.host(host).namespace, sys.executable, "-m", "nrm"]
        result = await asyncio.to_thread(
            subprocess.run,
            [*argv, *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode in codes, (
            f"nrm {' '.join(args)} exited {result.returncode}: {result.stdout}{result.stderr}"
        )
        return result

    async def admin(self, *args: str) -> None:
        """An `nrm directory` command in the administrators' folder (on the ops host)."""
        await self.nrm("ops", "directory", *args, "--dir", str(self.sandbox.admin.path))

    async def publish(self) -> float:
        """Sign the draft with the (one) administrator key and publish it; returns when
        (time.monotonic) the publishing began."""
        key = self.sandbox.admin_keys[0]
        passphrase = ("--passphrase-file", str(self.admin_passphrase_file))
        await self.admin("sign", "--key", str(key), *passphrase)
        began = time.monotonic()
        await self.admin("publish", *self.bus_options(), *passphrase)
        return began


# --- the bus -------------------------------------------------------------------------------


async def make_authority_keys(d: Deployment) -> list[Path]:
    """On each node, as deploy/README.md says: a passphrase of the node's own and `nrm keys
    init --agency bus-authority-<node>`; returns their identity.json files (public), which
    the operator lists in the spec."""
    d.authority_home.mkdir(parents=True)  # the mount point of each node's own folder

    async def on(node: str) -> Path:
        home = d.own_authority_home(node)
        home.mkdir(parents=True, mode=0o700)
        write_new_file(home / "passphrase", f"{node} authority passphrase, test only".encode())
        passphrase = ("--passphrase-file", str(home / "passphrase"))
        agency = ("--agency", f"bus-authority-{node}")
        await d.nrm(node, "keys", "init", *agency, "--dir", str(home / "keys"), *passphrase)
        return home / "keys" / "identity.json"

    return list(await asyncio.gather(*(on(n) for n in NODES)))


def start_authority(d: Deployment, node: str, config: Path) -> Proc:
    """`nrm bus authority` on `node`, seeing the node's own folder at `authority_home` (a
    bind mount in the mount namespace `ip netns exec` gives it, as on a host of its own)."""
    bind = 'mount --bind "$1" "$2"; shift 2; exec "$@"'
    argv = [sys.executable, "-m", "nrm", "bus", "authority", "--config", str(config)]
    own, common = d.own_authority_home(node), d.authority_home
    return d.host(node).spawn("authority", ["sh", "-ec", bind, "sh", str(own), str(common), *argv])


def write_cluster_spec(d: Deployment, authority_identities: list[Path]) -> Path:
    """The one file the operator writes for the cluster (as deploy/nats-cluster/cluster.toml):
    nodes on their hosts' addresses, TLS files, the trust documents (the public identities
    of the operator, the ledger and the authorities), the authorities' paths."""
    folder = d.root / "bus"
    for name in NODES:
        (folder / name).mkdir(parents=True)
    (folder / "run").mkdir()
    ips = [d.host(n).address for n in NODES]
    cert, key = d.pki.issue("nats", *ips, *(f"{n}.bus.nrm.test" for n in NODES))
    route_cert, route_key = d.pki.issue("route", *ips)
    admin_dir = d.sandbox.admin.path
    nodes = "".join(
        "[[nodes]]\n"
        f'name = "{n}"\n'
        f'host = "{d.host(n).address}"\n'
        f'client = "{d.host(n).address}:{CLIENT_PORT}"\n'
        f'route = "{d.host(n).address}:{ROUTE_PORT}"\n'
        f'monitor = "127.0.0.1:{MONITOR_PORT}"\n'
        f'status_bind = "{d.host(n).address}:{STATUS_PORT}"\n'
        f"store_dir = {json.dumps(str(folder / n))}\n"
        f"pid_file = {json.dumps(str(folder / 'run' / f'{n}.pid'))}\n"
        f"log_file = {json.dumps(str(folder / n / 'nats.log'))}\n\n"
        for n in NODES
    )
    spec = folder / "cluster.toml"
    spec.write_text(
        'cluster_name = "nrm"\n\n'
        "[trust]\n"
        f"roots = [{json.dumps(str(d.sandbox.admin.root_path(1)))}]\n"
        f"directory = {json.dumps(str(admin_dir / admin.DIRECTORY_FILE))}\n"
        f"operator_identity = {json.dumps(str(admin_dir / admin.OPERATOR_DIR / 'identity.json'))}\n"
        f"ledger_identity = {json.dumps(str(d.sandbox.ledger_home / 'keys' / 'identity.json'))}\n"
        f"authority_identities = {json.dumps([str(p) for p in authority_identities])}\n"
        "\n[client_tls]\n"
        f"cert_file = {json.dumps(str(cert))}\n"
        f"key_file = {json.dumps(str(key))}\n"
        f"ca_file = {json.dumps(str(d.pki.ca_file))}\n"
        "verify = false\n"
        "\n[route_tls]\n"
        f"cert_file = {json.dumps(str(route_cert))}\n"
        f"key_file = {json.dumps(str(route_key))}\n"
        f"ca_file = {json.dumps(str(d.pki.ca_file))}\n"
        "verify = true\n"
        "\n[authority]\n"
        f"config_dir = {json.dumps(str(folder))}\n"
        f"trust_root = {json.dumps(str(d.sandbox.admin.root_path(1)))}\n"
        f"key_dir = {json.dumps(str(d.authority_home / 'keys'))}\n"
        f"passphrase_file = {json.dumps(str(d.authority_home / 'passphrase'))}\n"
        "\n[authority.nats_tls]\n"
        f"ca_file = {json.dumps(str(d.pki.ca_file))}\n\n" + nodes
    )
    return spec


async def node_healthy(d: Deployment, name: str) -> bool:
    """The node answers the operator over TLS (its monitoring port is its host's loopback)."""
    if not d.nodes[name].running:
        raise AssertionError(f"{name} exited: {d.nodes[name].tail()}")
    return bool(await nkey_admitted(d, d.operator_seed, name))


async def authority_healthy(d: Deployment, name: str) -> bool:
    if not d.procs[f"authority-{name}"].running:
        raise AssertionError(
            f"the authority of {name} exited: {d.procs[f'authority-{name}'].tail()}"
        )
    url = f"http://{d.host(name).address}:{STATUS_PORT}/healthz"
    try:
        async with aiohttp.ClientSession() as http, http.get(url, timeout=SHORT) as r:
            return r.status == 200 and (await r.json())["status"] == "ok"
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return False


async def operator_connection(d: Deployment, **options: Any) -> Any:
    return await nats.connect(
        **d.endpoint.connect_options(),
        nkeys_seed_str=d.operator_seed.decode(),
        connect_timeout=2,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.2,
        **options,
    )


async def start_cluster(d: Deployment) -> None:
    """Each node's authority's keys, `nrm cluster config` from the spec, each node's
    nats-server on its host with the generated configuration, `nrm bus provision` (again
    while JetStream is not ready: exit 4), `nrm directory publish`, then each node's `nrm
    bus authority`."""
    spec = write_cluster_spec(d, await make_authority_keys(d))
    out = spec.parent
    await d.nrm("ops", "cluster", "config", "--spec", str(spec), "--out", str(out))
    for name in NODES:
        conf = out / f"{name}.conf"
        d.nodes[name] = d.host(name).spawn("nats", [str(nats_server_binary()), "-c", str(conf)])

    async def healthy() -> bool:
        return all([await node_healthy(d, name) for name in NODES])

    await eventually(healthy, timeout=TIMEOUT, what="every node answering over TLS")
    admin_dir = d.sandbox.admin.path

    async def provisioned() -> bool:
        result = await d.nrm(
            "ops",
            "bus",
            "provision",
            *d.bus_options(),
            "--replicas",
            "3",
            "--operator-keys",
            str(admin_dir / admin.OPERATOR_DIR),
            "--passphrase-file",
            str(d.admin_passphrase_file),
            "--trust-root",
            str(d.sandbox.admin.root_path(1)),
            "--directory",
            str(admin_dir / admin.DIRECTORY_FILE),
            codes=(0, 4),
        )
        return result.returncode == 0

    await eventually(provisioned, timeout=TIMEOUT, what="nrm bus provision")
    await d.publish()
    for name in NODES:
        d.procs[f"authority-{name}"] = start_authority(d, name, out / f"{name}.authority.toml")

    async def authorities() -> bool:
        return all([await authority_healthy(d, name) for name in NODES])

    await eventually(authorities, timeout=TIMEOUT, what="every node's authority healthy")


# --- the ledger and the agents -------------------------------------------------------------


async def configure_ledger(d: Deployment, agencies: list[str]) -> Path:
    """`nrm ledger config`: HTTPS on the ledger's host, an auditor token per agency; it logs
    in to the bus with its own keys (the spec's ledger_identity), no operator key."""
    home = d.sandbox.ledger_home
    address = d.host("ledger").address
    cert, key = d.pki.issue("ledger", address)
    out = home / "ledger.toml"
    await d.nrm(
        "ops",
        "ledger",
        "config",
        "--out",
        str(out),
        "--name",
        LEDGER_NAME,
        "--key-dir",
        "keys",
        "--passphrase-file",
        "passphrase",
        *d.bus_options(),
        "--trust-root",
        str(d.sandbox.admin.root_path(1)),
        "--bind",
        f"{address}:{LEDGER_PORT}",
        "--http-tls-cert",
        str(cert),
        "--http-tls-key",
        str(key),
        "--checkpoint-interval",
        "0.5",
        *[arg for a in agencies for arg in ("--auditor", a)],
    )
    return out


async def configure_agent(d: Deployment, agency: str, home: Path) -> Path:
    """`nrm agent config`: the agent's API over HTTPS on its host, the ledger over HTTPS."""
    address = d.host(agency).address
    cert, key = d.pki.issue(agency, address)
    out = home / "agent.toml"
    ledger = d.sandbox.ledger_home
    await d.nrm(
        "ops",
        "agent",
        "config",
        "--out",
        str(out),
        "--agency",
        agency,
        "--passphrase-file",
        "passphrase",
        *d.bus_options(),
        "--api-bind",
        f"{address}:{API_PORT}",
        "--http-tls-cert",
        str(cert),
        "--http-tls-key",
        str(key),
        "--client",
        "case-management:submit,read,act",
        "--ledger-url",
        f"https://{d.host('ledger').address}:{LEDGER_PORT}",
        "--ledger-name",
        LEDGER_NAME,
        "--ledger-identity",
        str(ledger / "keys" / "identity.json"),
        "--ledger-token-file",
        str(ledger / f"{agency}.token"),
        "--ledger-ca",
        str(d.pki.ca_file),
    )
    return out


def start_agent(d: Deployment, agency: str, config: Path) -> CaseSystem:
    d.procs[agency] = d.host(agency).spawn(
        "agent", [sys.executable, "-m", "nrm", "agent", "run", "--config", str(config)]
    )
    token = (config.parent / "case-management.token").read_text().strip()
    return CaseSystem(
        d.host(agency),
        token,
        f"https://{d.host(agency).address}:{API_PORT}",
        d.pki.client_context(),
        d.procs[agency],
    )


@dataclass
class CaseSystem:
    """An agency's case-management system: on the agency's host, calling its agent."""

    host: Host
    token: str
    base: str
    tls: ssl.SSLContext
    agent: Proc

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async def request() -> tuple[int, Any]:
            headers = {"Authorization": f"Bearer {self.token}"}
            async with (
                aiohttp.ClientSession() as http,
                http.request(
                    method,
                    self.base + path,
                    json=body,
                    headers=headers,
                    timeout=REQUEST_TIMEOUT,
                    ssl=self.tls,
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
        if not self.agent.running:
            raise AssertionError(f"{self.agent.name} exited: {self.agent.tail()}")
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


async def all_delivered(police: CaseSystem, ids: list[str]) -> bool:
    for rid in ids:
        if await police.status(rid) != "delivered":
            return False
    return True


#: What asking the cluster may raise while a node is down or being elected (a lost
#: connection is reported as one of these too).
UNANSWERED = (nats.errors.Error, TimeoutError, OSError)


async def stream_info(js: Any, stream: str) -> Any:
    """The stream's info, or None while the cluster does not answer."""
    try:
        return await js.stream_info(stream)
    except UNANSWERED:
        return None


async def leader_of(js: Any, stream: str) -> str | None:
    info = await stream_info(js, stream)
    return info.cluster.leader if info is not None and info.cluster else None


async def replicas_current(js: Any, stream: str) -> bool:
    info = await stream_info(js, stream)
    replicas = (info.cluster.replicas or []) if info is not None and info.cluster else []
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


async def _quiet(_: Exception) -> None:
    """nats-py's error callback; the caller sees the failure itself."""


def refused(e: Exception) -> bool:
    """Whether `e` is the server refusing the login (nats-py raises it in two forms)."""
    return (
        isinstance(e, nats.errors.AuthorizationError) or "authorization violation" in str(e).lower()
    )


async def nkey_admitted(d: Deployment, seed: bytes, node: str) -> bool | None:
    """Whether `node` (alone) lets the holder of `seed` log in: True, False when it refuses
    the login, None when it does not answer (down, restarting)."""
    url = f"tls://{d.host(node).address}:{CLIENT_PORT}"
    try:
        nc = await nats.connect(
            **BusEndpoint.of(url, BusTls(ca_file=d.pki.ca_file)).connect_options(),
            nkeys_seed_str=seed.decode(),
            connect_timeout=2,
            allow_reconnect=False,
            error_cb=_quiet,
        )
    except UNANSWERED as e:
        return False if refused(e) else None
    await nc.close()
    return True


async def on_every_node(d: Deployment, seed: bytes, *, admitted: bool) -> bool:
    return all([await nkey_admitted(d, seed, n) == admitted for n in NODES])


def nats_key_of(identity: Path) -> str:
    key = json.loads(identity.read_text())["nats_key"]
    assert isinstance(key, str)
    return key


async def logged_in(d: Deployment) -> set[str]:
    """The NKeys of every client connection of every node (its `/connz`, asked on the
    node's host: monitoring is on its loopback)."""

    async def connz() -> Any:
        url = f"http://127.0.0.1:{MONITOR_PORT}/connz?auth=true&limit=4096"
        async with aiohttp.ClientSession() as http, http.get(url, timeout=SHORT) as r:
            return await r.json()

    users: set[str] = set()
    for node in NODES:
        try:
            body = await d.host(node).run(connz())
        except (aiohttp.ClientError, TimeoutError, ValueError):
            continue
        users |= {str(c.get("authorized_user")) for c in body.get("connections") or []}
    return users


async def checkpoint_size(d: Deployment) -> int:
    """The size of the ledger's latest signed checkpoint (0 before the first), asked over
    HTTPS with an auditor token."""
    if not d.procs["ledger"].running:
        raise AssertionError(f"the ledger exited: {d.procs['ledger'].tail()}")
    token = (d.sandbox.ledger_home / "police.token").read_text().strip()
    url = f"https://{d.host('ledger').address}:{LEDGER_PORT}/v1/checkpoint"
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(url, headers=headers, ssl=d.pki.client_context(), timeout=SHORT) as r,
        ):
            return int((await r.json())["size"]) if r.status == 200 else 0
    except (aiohttp.ClientError, TimeoutError):
        return 0


async def scenario(d: Deployment) -> None:
    """Runs on the ops host's loop (the operator's connection is made from there)."""
    await start_cluster(d)
    agencies = [a for a, _, _ in AGENCIES]
    ledger = await configure_ledger(d, [*agencies, NEWCOMER])
    d.procs["ledger"] = d.host("ledger").spawn(
        "ledger", [sys.executable, "-m", "nrm", "ledger", "run", "--config", str(ledger)]
    )
    systems = {}
    for agency in agencies:
        config = await configure_agent(d, agency, d.sandbox.agencies[agency].home)
        systems[agency] = start_agent(d, agency, config)
    for agency, system in systems.items():
        await eventually(system.ready, timeout=TIMEOUT, what=f"the {agency} agent ready")
    police, shelter, social = systems["police"], systems["shelter"], systems["social-services"]
    sent: dict[str, list[str]] = {"shelter": [], "social-services": [], NEWCOMER: []}

    # Referrals flow police -> shelter and police -> social services, across hosts.
    for to in ("shelter", "social-services", "shelter"):
        sent[to].append(await police.refer(to))
    await eventually(
        lambda: all_delivered(police, [*sent["shelter"], *sent["social-services"]]),
        timeout=TIMEOUT,
        what="the first referrals delivered",
    )

    # Each node's authority is logged in with its own NKey and the ledger with its own: the
    # operator's key is on the ops host only.
    own = {nats_key_of(d.own_authority_home(n) / "keys" / "identity.json") for n in NODES}
    ledger_key = nats_key_of(d.sandbox.ledger_home / "keys" / "identity.json")
    assert len(own) == len(NODES) and ledger_key not in own

    async def own_identities() -> bool:
        return {*own, ledger_key} <= await logged_in(d)

    await eventually(own_identities, timeout=TIMEOUT, what="the authorities and the ledger")

    nc = await operator_connection(d)
    try:
        js = nc.jetstream(timeout=2)

        # The leader of the shelter's inbox stream dies; referrals still flow.
        victim = await leader_of(js, TARGET)
        assert victim in NODES, victim
        d.nodes[victim].kill()
        killed = time.monotonic()

        quick = nc.jetstream(timeout=0.5)  # no leader: no answer; ask again soon

        async def new_leader() -> bool:
            return (await leader_of(quick, TARGET)) not in (None, victim)

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

        # A directory change (an agency admitted) reaches every node's authorization.
        home = d.root / NEWCOMER
        home.mkdir(mode=0o700)
        write_new_file(home / "passphrase", b"newcomer passphrase, test only")
        shutil.copyfile(d.sandbox.admin.root_path(1), home / "root.json")
        await d.nrm(
            "ops",
            "keys",
            "init",
            "--agency",
            NEWCOMER,
            "--dir",
            str(home / "keys"),
            "--passphrase-file",
            str(home / "passphrase"),
        )
        await d.admin("add-agency", str(home / "keys" / "identity.json"), "--roles", "ngo")
        published = await d.publish()
        keys = load_key_dir(home / "keys", passphrase=(home / "passphrase").read_bytes())
        assert keys.nats_seed is not None
        seed = keys.nats_seed
        await eventually(
            lambda: on_every_node(d, seed, admitted=True),
            timeout=TIMEOUT,
            what=f"{NEWCOMER} admitted on every node",
        )
        d.measured["admission on every node (s)"] = time.monotonic() - published
        newcomer = start_agent(d, NEWCOMER, await configure_agent(d, NEWCOMER, home))
        await eventually(newcomer.ready, timeout=TIMEOUT, what=f"the {NEWCOMER} agent ready")
        sent[NEWCOMER].append(await police.refer(NEWCOMER))
        await eventually(
            lambda: all_delivered(police, sent[NEWCOMER]), timeout=TIMEOUT, what="to the newcomer"
        )

        # Removed from the directory, it is cut off on every node: its agent's connection is
        # closed and it cannot log in again anywhere; no manual step on any node.
        await d.admin("remove-agency", NEWCOMER)
        published = await d.publish()

        async def cut_off() -> bool:
            health = await newcomer.health()
            return health.get("bus") != "connected" and await on_every_node(d, seed, admitted=False)

        await eventually(cut_off, timeout=TIMEOUT, what=f"{NEWCOMER} cut off on every node")
        d.measured["removal on every node (s)"] = time.monotonic() - published
        newcomer.agent.stop()

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

        async def on_cluster() -> bool:
            return all([await police.status(rid) in ("sent", "delivered") for rid in queued])

        await eventually(on_cluster, timeout=TIMEOUT, what="the queued referrals published")
        d.measured["outbox: queued referrals on the cluster after the link returned (s)"] = (
            time.monotonic() - restored
        )

        async def arrived() -> bool:
            return set(queued) <= set(await shelter.inbox_ids())

        await eventually(arrived, timeout=TIMEOUT, what="the queued referrals at the shelter")
        d.measured["outbox: in the shelter's inbox (s)"] = time.monotonic() - restored
        await eventually(
            lambda: all_delivered(police, queued), timeout=TIMEOUT, what="their receipts"
        )
        d.measured["outbox: their receipts back at the police (s)"] = time.monotonic() - restored

        # The social services' link is down: mail for it waits in its inbox stream.
        d.net.cut(d.host("social-services"))
        waiting = [await police.refer("social-services") for _ in range(2)]
        sent["social-services"] += waiting
        stream = inbox_stream("social-services")

        async def held() -> bool:
            statuses = [await police.status(rid) for rid in waiting]
            if statuses != ["sent"] * len(waiting):
                return False
            info = await stream_info(js, stream)
            return info is not None and bool(info.state.messages >= len(waiting))

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

    # The ledger on its host took in the agencies' audit events and signs checkpoints of
    # them, served over HTTPS to an auditor on another host.
    total = sum(len(ids) for ids in sent.values())

    async def audited() -> bool:
        return await checkpoint_size(d) >= 2 * total  # referral.sent and .received each

    await eventually(audited, timeout=TIMEOUT, what="the audit events in a signed checkpoint")


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
        for log in sorted((tmp_path / "bus").glob("*/nats.log")):
            print(f"--- {log}\n{log.read_text(errors='replace')[-3000:]}")
        raise
    with capsys.disabled():
        print("\nmulti-host: " + ", ".join(f"{k}: {v:.2f}" for k, v in d.measured.items()))
