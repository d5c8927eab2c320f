"""A three-node (or larger) nats-server cluster: the configuration of each node.

Every node gets a unique `server_name` (JetStream clustering needs it), its own JetStream
store directory, a `cluster {}` block listening for routes and naming every other node's
route URL, and the same authorization generated from the trust directory
(`broker.authority.authorization_for`), so an agency's NKey and permissions are identical
whichever node it connects to. Streams are then provisioned with three replicas
(`nrm bus provision --replicas 3`, `broker.streams.provision`).

`cluster_block` is what `NatsServer(cluster=...)` adds to the configuration it writes (the
sandbox's test clusters). For servers an operator runs, `nrm cluster config` reads one spec
file (`ClusterSpec.load`, the format is in deploy/nats-cluster/README.md) and writes, per
node (`cluster_files`):

    <name>.conf                nats-server's configuration; `include`s the next file
    <name>.authorization.conf  the authorization of the verified directory (0600), which
                               `nrm bus authority` rewrites when the directory changes
    <name>.authority.toml      the configuration of that node's `nrm bus authority`
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from keys.limits import DEFAULT_LIMITS
from runtime.config import ConfigError, Table, bind_address, path_in, read_config
from runtime.tomlfile import dumps

from .authz import ServiceKeys
from .server import HEADER_ALLOWANCE_BYTES, ServerTls, conf_string, local_host, tls_block

#: The cluster name all nodes share (nats-server refuses routes from another cluster name).
DEFAULT_CLUSTER_NAME = "nrm"
#: Where each node's `nrm bus authority` serves /healthz and /metrics unless the spec says.
DEFAULT_STATUS_BIND = "127.0.0.1:8223"
#: File modes: the authorization names every NKey (no secret, but nobody else's business).
CONF_MODE = 0o644
AUTHORIZATION_MODE = 0o600


@dataclass(frozen=True, slots=True)
class ClusterNode:
    """One node: its server name, the host the others (and clients) reach it on, its ports
    and store; optionally the addresses it listens on (default: `host` for clients and
    routes, loopback for monitoring), its pid file and log file."""

    name: str
    host: str
    client_port: int
    cluster_port: int
    store_dir: str
    monitor_port: int = 8222
    client_host: str | None = None
    route_host: str | None = None
    monitor_host: str = "127.0.0.1"
    pid_file: str | None = None
    log_file: str | None = None
    status_bind: str = DEFAULT_STATUS_BIND

    @property
    def url(self) -> str:
        return f"nats://{self.client_advertise}"

    @property
    def route(self) -> str:
        return f"nats-route://{self.cluster_advertise}"

    @property
    def client_advertise(self) -> str:
        """`host:port` the others and clients reach its client port on (IPv6 bracketed)."""
        return f"{_bracketed(self.host)}:{self.client_port}"

    @property
    def cluster_advertise(self) -> str:
        return f"{_bracketed(self.host)}:{self.cluster_port}"

    @property
    def monitor_url(self) -> str:
        """Where this node's authority reads the monitoring: from the same machine."""
        host = local_host(self.monitor_host)
        return f"http://{f'[{host}]' if ':' in host else host}:{self.monitor_port}"

    @property
    def pid_path(self) -> str:
        return self.pid_file or str(PurePosixPath(self.store_dir) / "nats-server.pid")


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


#: What a node name may be: it names the node's files (`<name>.conf`, ...).
NODE_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")


def _check(nodes: Sequence[ClusterNode]) -> None:
    for n in nodes:
        if not NODE_NAME.fullmatch(n.name):
            raise ValueError(
                f"node name {n.name!r}: lowercase letters, digits and '-' only (it names files)"
            )
    if len(nodes) < 3:
        raise ValueError("a JetStream cluster needs at least three nodes")
    for what in ("name", "store_dir"):
        values = [getattr(n, what) for n in nodes]
        if len(set(values)) != len(values):
            raise ValueError(f"cluster nodes need distinct {what}s: {values}")
    endpoints = [(n.host, p) for n in nodes for p in (n.client_port, n.cluster_port)]
    if len(set(endpoints)) != len(endpoints):
        raise ValueError("cluster nodes need distinct host:port pairs")


def cluster_block(
    node: ClusterNode,
    nodes: Sequence[ClusterNode],
    *,
    cluster_name: str = DEFAULT_CLUSTER_NAME,
    tls: ServerTls | None = None,
) -> str:
    """`server_name` and the `cluster {}` block of `node`: routes to every other node,
    with `tls` for the routes (mutual: `tls.verify`)."""
    _check(nodes)
    if node not in nodes:
        raise ValueError(f"{node.name} is not one of the cluster's nodes")
    routes = "".join(f"    {conf_string(n.route)}\n" for n in nodes if n != node)
    listen = f"{_bracketed(node.route_host or node.host)}:{node.cluster_port}"
    return (
        f"server_name: {conf_string(node.name)}\n"
        "cluster {\n"
        f"  name: {conf_string(cluster_name)}\n"
        f"  listen: {conf_string(listen)}\n"
        # What the others are told to dial (not the listen address, 0.0.0.0 say).
        f"  advertise: {conf_string(node.cluster_advertise)}\n"
        + ("" if tls is None else tls_block(tls, indent="  "))
        + "  routes: [\n"
        f"{routes}"
        "  ]\n"
        "}\n"
    )


# --- the spec of a cluster run by an operator (`nrm cluster config`) ---------------------------


@dataclass(frozen=True, slots=True)
class AuthoritySettings:
    """What every node's `nrm bus authority` is given (paths on the node)."""

    trust_root: str
    #: The authority's own key folder (`nrm keys init`) on every node, each with its own keys.
    key_dir: str
    passphrase_file: str
    #: Where the node's files are installed; None: beside authority.toml (relative names).
    config_dir: str | None = None
    #: The authority's own client TLS towards the bus: ca_file, cert_file, key_file,
    #: server_name (authority.toml `[nats_tls]`).
    nats_tls: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """A whole cluster: nodes, TLS for clients and routes, the trust documents the initial
    authorization comes from, the identity files of the bus users that are not in the
    directory (the operator, the ledger, every node's authority), and the authorities'
    settings."""

    nodes: tuple[ClusterNode, ...]
    roots: tuple[Path, ...]
    directory: Path
    operator_identity: Path
    authority: AuthoritySettings
    #: The ledger's identity.json (its NATS key logs in as a ledger).
    ledger_identity: Path
    #: Each node's authority's identity.json (one per node, or one they share).
    authority_identities: tuple[Path, ...]
    cluster_name: str = DEFAULT_CLUSTER_NAME
    client_tls: ServerTls | None = None
    route_tls: ServerTls | None = None
    #: Routes in the clear (no `route_tls`): only for nodes on a private network nobody
    #: else reaches; routes carry every message and the JetStream replication.
    insecure_routes: bool = False

    def __post_init__(self) -> None:
        _check(self.nodes)
        if not self.authority_identities:
            raise ConfigError("trust.authority_identities must list the authorities' identity.json")
        if len(set(self.authority_identities)) != len(self.authority_identities):
            raise ConfigError("trust.authority_identities lists one identity.json twice")
        if len(self.authority_identities) > len(self.nodes):
            raise ConfigError(
                "trust.authority_identities lists more identities than there are nodes "
                "(one authority per node, or one they share)"
            )
        if self.route_tls is None and not self.insecure_routes:
            raise ConfigError(
                "give [route_tls] (routes carry every message): routes in the clear only "
                "with insecure_routes = true, for a private network nobody else reaches"
            )
        if self.route_tls is not None and self.insecure_routes:
            raise ConfigError("insecure_routes = true and [route_tls] contradict each other")
        if self.route_tls is not None and not self.route_tls.verify:
            raise ConfigError("route_tls.verify must be true: routes use mutual TLS")
        if self.client_tls is not None and not self.authority.nats_tls:
            raise ConfigError(
                "client_tls is set: give [authority.nats_tls] (at least the ca_file that "
                "signs the nodes' certificates) so the authorities can connect"
            )
        if (
            self.client_tls is not None
            and self.client_tls.verify
            and "cert_file" not in self.authority.nats_tls
        ):
            raise ConfigError(
                "client_tls.verify is true: [authority.nats_tls] needs cert_file and key_file"
            )

    @classmethod
    def load(cls, path: Path) -> ClusterSpec:
        """Read the spec strictly (runtime/config.py); ConfigError naming what is wrong.
        Paths under [trust] are read now, relative to the spec's folder; every other path
        is one on the nodes and must be absolute."""
        return read_config(path, _spec_of)


def _text(table: Table, key: str) -> str:
    value = table[key]
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{table.where}{key} must be a non-empty string")
    return value


def _node_path(table: Table, key: str) -> str:
    value = _text(table, key)
    if not PurePosixPath(value).is_absolute():
        raise ConfigError(f"{table.where}{key} must be an absolute path on the node")
    return value


def _optional_node_path(table: Table, key: str) -> str | None:
    return _node_path(table, key) if key in table else None


def _server_tls(table: Table) -> ServerTls:
    verify = table.get("verify", False)
    if not isinstance(verify, bool):
        raise ConfigError(f"{table.where}verify must be true or false")
    ca = _optional_node_path(table, "ca_file")
    return ServerTls(
        cert_file=Path(_node_path(table, "cert_file")),
        key_file=Path(_node_path(table, "key_file")),
        ca_file=None if ca is None else Path(ca),
        verify=verify,
    )


def _fixed_address(value: object, key: str) -> tuple[str, int]:
    """`host:port` with a port of its own (0, a port of the server's choosing, is no
    address the others or the authority could be told)."""
    host, port = bind_address(value, key=key)
    if port == 0:
        raise ConfigError(f"{key} needs a port (not 0)")
    return host.strip("[]"), port


def _node_of(table: Table) -> ClusterNode:
    client_host, client_port = _fixed_address(_text(table, "client"), f"{table.where}client")
    route_host, route_port = _fixed_address(_text(table, "route"), f"{table.where}route")
    monitor = table.get("monitor", "127.0.0.1:8222")
    monitor_host, monitor_port = _fixed_address(monitor, f"{table.where}monitor")
    status = str(table.get("status_bind", DEFAULT_STATUS_BIND))
    bind_address(status, key=f"{table.where}status_bind")
    return ClusterNode(
        name=_text(table, "name"),
        host=_text(table, "host"),
        client_port=client_port,
        cluster_port=route_port,
        store_dir=_node_path(table, "store_dir"),
        monitor_port=monitor_port,
        client_host=client_host,
        route_host=route_host,
        monitor_host=monitor_host,
        pid_file=_optional_node_path(table, "pid_file"),
        log_file=_optional_node_path(table, "log_file"),
        status_bind=status,
    )


#: Settings of earlier releases that are refused with what replaces them.
RETIRED_SETTINGS = {
    "authority.operator_key_dir": (
        "authority.operator_key_dir is no longer read: give authority.key_dir (each "
        "authority's own keys, `nrm keys init`) and trust.authority_identities (their "
        "identity.json files) and trust.ledger_identity; no bus host holds the operator's key "
        "(CHANGELOG, Upgrade)"
    ),
    "replicas": (
        "replicas is no longer read: the authorities make no streams (`nrm directory publish` "
        "makes a new agency's with the replicas of the directory bucket, `nrm bus provision "
        "--replicas` the rest); remove it"
    ),
}


def _spec_of(table: Table, base: Path) -> ClusterSpec:
    if "operator_key_dir" in table.get("authority", {}):
        raise ConfigError(RETIRED_SETTINGS["authority.operator_key_dir"])
    if "replicas" in table:
        raise ConfigError(RETIRED_SETTINGS["replicas"])
    trust = table.table("trust", required=True)
    roots = trust["roots"]
    if not isinstance(roots, list) or not roots:
        raise ConfigError("trust.roots must list the pinned root.1.json (then later roots)")
    authority = table.table("authority", required=True)
    nats_tls: dict[str, str] = {}
    if "nats_tls" in authority:
        t = authority.table("nats_tls")
        for key in ("ca_file", "cert_file", "key_file"):
            if key in t:
                nats_tls[key] = _node_path(t, key)
        if "server_name" in t:
            nats_tls["server_name"] = _text(t, "server_name")
        if ("cert_file" in nats_tls) != ("key_file" in nats_tls):
            raise ConfigError("authority.nats_tls: cert_file and key_file go together")
    if "nodes" not in table:
        raise ConfigError("missing setting 'nodes': give the nodes as [[nodes]] tables")
    nodes = table.tables("nodes")
    return ClusterSpec(
        nodes=tuple(_node_of(n) for n in nodes),
        roots=tuple(path_in(r, base=base, key="trust.roots") for r in roots),
        directory=path_in(trust["directory"], base=base, key="trust.directory"),
        operator_identity=path_in(
            trust["operator_identity"], base=base, key="trust.operator_identity"
        ),
        ledger_identity=path_in(trust["ledger_identity"], base=base, key="trust.ledger_identity"),
        authority_identities=_paths(trust, "authority_identities", base),
        authority=AuthoritySettings(
            trust_root=_node_path(authority, "trust_root"),
            key_dir=_node_path(authority, "key_dir"),
            passphrase_file=_node_path(authority, "passphrase_file"),
            config_dir=_optional_node_path(authority, "config_dir"),
            nats_tls=nats_tls,
        ),
        cluster_name=str(table.get("cluster_name", DEFAULT_CLUSTER_NAME)),
        insecure_routes=_flag(table, "insecure_routes"),
        client_tls=_server_tls(table.table("client_tls")) if "client_tls" in table else None,
        route_tls=_server_tls(table.table("route_tls")) if "route_tls" in table else None,
    )


def _flag(table: Table, key: str) -> bool:
    value = table.get(key, False)
    if not isinstance(value, bool):
        raise ConfigError(f"{table.where}{key} must be true or false")
    return value


def _paths(table: Table, key: str, base: Path) -> tuple[Path, ...]:
    value = table[key]
    if not isinstance(value, list):
        raise ConfigError(f"{table.where}{key} must be a list of files")
    return tuple(path_in(v, base=base, key=f"{table.where}{key}") for v in value)


def authorization_file_name(node: ClusterNode) -> str:
    return f"{node.name}.authorization.conf"


def node_config(node: ClusterNode, spec: ClusterSpec) -> str:
    """The whole nats-server configuration file of `node`; its authorization is in the
    file it includes (`authorization_file_name`), beside it."""
    nodes = spec.nodes
    max_payload = DEFAULT_LIMITS.max_envelope_bytes + HEADER_ALLOWANCE_BYTES
    listen = f"{_bracketed(node.client_host or node.host)}:{node.client_port}"
    text = (
        f"# {node.name}: one of {len(nodes)} nodes of the NRM Exchange bus cluster "
        f"{conf_string(spec.cluster_name)}.\n"
        "# Generated by `nrm cluster config` from the cluster spec: regenerate, do not edit.\n"
        f"# The authorization is in {authorization_file_name(node)}, which this node's\n"
        "# `nrm bus authority` rewrites (then SIGHUP) when a new directory is published.\n"
        f"listen: {conf_string(listen)}\n"
        # What clients are told of this node in INFO's connect_urls (not its listen address).
        f"client_advertise: {conf_string(node.client_advertise)}\n"
        f"http: {conf_string(f'{_bracketed(node.monitor_host)}:{node.monitor_port}')}\n"
        f"max_payload: {max_payload}\n"
        f"pid_file: {conf_string(node.pid_path)}\n"
        'lame_duck_duration: "30s"\n'
        'lame_duck_grace_period: "10s"\n'
    )
    if node.log_file is not None:
        text += f"log_file: {conf_string(node.log_file)}\n"
    text += f"jetstream {{\n  store_dir: {conf_string(node.store_dir)}\n}}\n"
    if spec.client_tls is not None:
        text += tls_block(spec.client_tls, handshake_first=True)
    text += cluster_block(node, nodes, cluster_name=spec.cluster_name, tls=spec.route_tls)
    return text + f"include {conf_string(authorization_file_name(node))}\n"


def authority_config(node: ClusterNode, spec: ClusterSpec, services: ServiceKeys) -> str:
    """The authority.toml of `node`'s `nrm bus authority` (the keys of broker/external.py);
    `services` are the NKeys of the spec's operator, ledger and authority identities."""
    a = spec.authority
    scheme = "nats" if spec.client_tls is None else "tls"
    # Every node (nats-py tries them in random order): the authority follows and
    # provisions through whichever answers.
    urls = list(dict.fromkeys(f"{scheme}://{n.client_advertise}" for n in (node, *spec.nodes)))
    auth = authorization_file_name(node)
    # Its trust floor (the roots and directory it accepted) beside the include: the one
    # folder the authority may write.
    trust = f"{node.name}.trust"
    if a.config_dir is not None:
        auth = str(PurePosixPath(a.config_dir) / auth)
        trust = str(PurePosixPath(a.config_dir) / trust)
    return dumps(
        {
            "node_name": node.name,
            "nats_urls": urls,
            "authorization_file": auth,
            "pid_file": node.pid_path,
            "monitor_url": node.monitor_url,
            "log_file": node.log_file,
            "trust_root": a.trust_root,
            "key_dir": a.key_dir,
            "passphrase_file": a.passphrase_file,
            "status_bind": node.status_bind,
            "trust_cache": trust,
            "operator_nkeys": list(services.operators),
            "ledger_nkeys": list(services.ledgers),
            "authority_nkeys": list(services.authorities),
            "nats_tls": dict(sorted(a.nats_tls.items())) or None,
        },
        header=f"{node.name}: the authority beside this node's nats-server.\n"
        "Generated by `nrm cluster config`; run `nrm bus authority --config <this file>`.\n"
        "operator_nkeys, ledger_nkeys, authority_nkeys: the bus users beside the directory's\n"
        "agencies (cluster.toml [trust]).",
    )


def cluster_files(
    spec: ClusterSpec, *, authorization: str, services: ServiceKeys
) -> dict[str, tuple[str, int]]:
    """Every file of the cluster, by file name: (text, mode). `authorization` is the block
    of the verified directory (`broker.authority.authorization_for` with `services`, the
    NKeys of the spec's identity files)."""
    files: dict[str, tuple[str, int]] = {}
    for node in spec.nodes:
        files[f"{node.name}.conf"] = (node_config(node, spec), CONF_MODE)
        files[authorization_file_name(node)] = (authorization, AUTHORIZATION_MODE)
        files[f"{node.name}.authority.toml"] = (authority_config(node, spec, services), CONF_MODE)
    return files
