"""The `nrm` command line: composes keys, agents and broker into one tool."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import secrets
import signal
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import click

from agents import Agent, AgentConfig, ConfigError, token_digest
from keys import DEFAULT_LIMITS, KeyFileError, NrmError, PublicIdentity, UntrustedInputError
from keys.identity import MissingProofError, fingerprint, verify_proof
from keys.keyfile import MODERATE
from runtime import clock
from runtime.endpoint import BusEndpoint
from runtime.files import write_new_file
from runtime.keydir import init_key_dir, read_passphrase, reseal_key_dir, rotate_key_dir
from runtime.tls import PlainHttpError, check_plain_http_url
from runtime.version import VERSION

from . import admin, logs
from .audit import LedgerCopy
from .bus_options import bus_endpoint_options
from .config_cli import agent_config_command, ledger_config_command, seed_authorization_command
from .exits import (
    EXIT_VERIFICATION_FAILED,
    NrmGroup,
    Unreachable,
    VerificationFailed,
    document_exit_codes,
    expected_errors,
)
from .output import emit, json_option

if TYPE_CHECKING:
    from broker.bus import Listen

PATH = click.Path(path_type=Path)
DAY = 86400
F = TypeVar("F", bound=Callable[..., Any])


def _days_option(
    name: str, default_seconds: int | None, help: str, *, positive: bool = False
) -> Callable[[F], F]:
    """A `--...-days` option: a non-negative (or, if `positive`, positive) number of days,
    defaulting to `default_seconds` (None: the command finds its own default)."""
    return click.option(
        name,
        type=click.FloatRange(0, min_open=positive),
        default=None if default_seconds is None else default_seconds / DAY,
        show_default=default_seconds is not None,
        help=help,
    )


def _seconds(days: float) -> int:
    return int(days * DAY)


ADMIN_DIR = click.option(
    "--dir",
    "admin_dir",
    type=PATH,
    envvar="NRM_ADMIN_DIR",
    default=Path("."),
    show_default=True,
    help="Administrator working folder (or $NRM_ADMIN_DIR).",
)


def _host_port(text: str, *, option: str = "--status-bind") -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not (port.isascii() and port.isdigit() and 0 <= int(port) <= 65535):
        raise click.BadParameter(f"{text!r} is not HOST:PORT", param_hint=option)
    return host, int(port)


def _parse_time(text: str) -> int:
    if text.isascii() and text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as e:
        raise click.BadParameter(f"{text!r} is not ISO 8601 or Unix seconds") from e
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


@click.group(cls=NrmGroup)
@click.version_option(VERSION, "--version", prog_name="nrm", message="%(prog)s %(version)s")
def main() -> None:
    """NRM Exchange: secure referrals between the agencies of a National Referral Mechanism.

    Exit codes (every command): 0 ok, 1 refused or failed, 2 usage, 3 verification failed,
    4 unreachable (bus or ledger; try again). README.md "Exit codes".
    """


# --- keys ----------------------------------------------------------------------------------


@main.group()
def keys() -> None:
    """An agency's own keys."""


@keys.command("init")
@click.option("--agency", required=True, help="Agency id (a-z, 0-9, '-').")
@click.option("--dir", "directory", type=PATH, required=True, help="Key directory to create.")
@click.option("--name", default=None, help="Display name (defaults to the agency id).")
@click.option(
    "--passphrase-file",
    type=PATH,
    default=None,
    help="File holding the passphrase; otherwise $NRM_PASSPHRASE.",
)
def keys_init(agency: str, directory: Path, name: str | None, passphrase_file: Path | None) -> None:
    """Create the agency's signing and encryption keys, encrypted at rest."""
    try:
        passphrase = read_passphrase(file=passphrase_file)
        agency_keys = init_key_dir(
            directory, agency=agency, name=name or agency, passphrase=passphrase, cost=MODERATE
        )
    except (KeyFileError, ValueError, OSError) as e:
        raise click.ClickException(str(e)) from e
    ident = agency_keys.public
    click.echo(f"created keys for {ident.agency} in {directory}")
    click.echo(f"  signing key    {ident.signing_kid} (Ed25519)")
    click.echo(f"  encryption key {ident.encryption_kid} (X25519)")
    click.echo(f"  fingerprint    {fingerprint(ident)}")
    click.echo(f"  hand {directory / 'identity.json'} {_hand_identity_to(ident.agency)}")


def _hand_identity_to(agency: str) -> str:
    """Who needs a new identity.json (deploy/README.md "Bringing up a whole mechanism")."""
    if agency == "ledger":
        return (
            "to the administrators (the cluster spec's [trust] ledger_identity), every agency "
            "(`nrm agent config --ledger-identity`) and the auditors (`nrm audit verify "
            "--ledger-identity`)"
        )
    if agency.startswith("bus-authority-"):
        return "to the administrators (the cluster spec's [trust] authority_identities)"
    return "to the administrators"


@keys.command("passphrase")
@click.option("--dir", "directory", type=PATH, required=True, help="The key folder.")
@click.option("--old-file", type=PATH, required=True, help="File holding the current passphrase.")
@click.option("--new-file", type=PATH, required=True, help="File holding the new passphrase.")
def keys_passphrase(directory: Path, old_file: Path, new_file: Path) -> None:
    """Seal the folder's agency.key with a new passphrase (the keys stay the same)."""
    try:
        old, new = read_passphrase(file=old_file), read_passphrase(file=new_file)
        reseal_key_dir(directory, old=old, new=new, cost=MODERATE)
    except (KeyFileError, ValueError, OSError) as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"{directory / 'agency.key'} sealed with the new passphrase")


@keys.command("rotate")
@click.option("--agency", required=True, help="Agency id whose keys to rotate.")
@click.option("--dir", "directory", type=PATH, required=True, help="The agency's key directory.")
@click.option("--passphrase-file", type=PATH, default=None, help="Else $NRM_PASSPHRASE.")
def keys_rotate(agency: str, directory: Path, passphrase_file: Path | None) -> None:
    """New signing, encryption and NATS keys; the old encryption key is kept for mail in
    flight, the old NATS key until the new directory is published.

    Hand the new identity.json to the administrators: `nrm directory add-agency` then
    retires the old keys after the overlap window; once that directory is published the bus
    accepts only the new NATS key (a machine holding a copy of the old key file is cut off)
    and the running agent switches to the new one by itself.
    """
    try:
        holder = PublicIdentity.from_json((directory / "identity.json").read_bytes()).agency
        if holder != agency:  # checked before anything is rotated
            raise click.ClickException(f"{directory} holds the keys of {holder}, not {agency}")
        rotated = rotate_key_dir(directory, passphrase=read_passphrase(file=passphrase_file))
    except (KeyFileError, OSError, UntrustedInputError) as e:
        raise click.ClickException(str(e)) from e
    click.echo(
        f"rotated keys of {agency}: signing {rotated.public.signing_kid}, "
        f"encryption {rotated.public.encryption_kid}, NATS {rotated.public.nats_key}"
    )
    click.echo(f"  fingerprint {fingerprint(rotated.public)}")
    click.echo(f"  hand {directory / 'identity.json'} {_hand_identity_to(agency)}")


@keys.command("fingerprint")
@click.option(
    "--identity",
    "identity_file",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    required=True,
    help="The identity.json.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def keys_fingerprint(identity_file: Path, as_json: bool) -> None:
    """Print the fingerprint of an identity's public keys (docs/PROTOCOL.md §2.4), to read
    out over the phone: the administrator compares it with what `nrm directory add-agency`
    prints. Also says whether its proof of possession verifies."""
    with expected_errors():
        identity = PublicIdentity.from_json(identity_file.read_bytes())
    try:
        verify_proof(identity)
        proof = "valid"
    except MissingProofError:
        proof = "missing"
    except UntrustedInputError:
        proof = "invalid"
    if as_json:
        doc = {"agency": identity.agency, "fingerprint": fingerprint(identity), "proof": proof}
        click.echo(json.dumps(doc, sort_keys=True))
        return
    click.echo(f"{identity.agency}: {fingerprint(identity)} (proof of possession: {proof})")


@keys.command("revoke")
@click.option("--agency", required=True)
@click.option("--kid", required=True, help="Key id to revoke.")
@click.option("--reason", required=True, help="Why (kept in the directory; no personal data).")
@click.option("--at", "at", default=None, help="Revocation time (ISO 8601 or Unix seconds).")
@ADMIN_DIR
def keys_revoke(agency: str, kid: str, reason: str, at: str | None, admin_dir: Path) -> None:
    """Revoke an agency key in the directory draft, from a stated time (default now).

    To replace keys rather than only revoke them, prefer `nrm directory add-agency
    NEW-identity.json --revoke-previous`: one change, and the agency is never left without a
    usable key.
    """
    folder = admin.AdminFolder(admin_dir)
    with expected_errors():
        warning = admin.revocation_leaves_no_key(folder, agency, kid)
        d = admin.revoke_key(
            folder, agency, kid, reason=reason, at=None if at is None else _parse_time(at)
        )
    click.echo(f"revoked {kid} of {agency} in draft version {d.version}; sign and publish it")
    if warning is not None:
        click.echo(f"warning: {warning}", err=True)


# --- bus -----------------------------------------------------------------------------------


@main.group()
def bus() -> None:
    """The NATS JetStream bus: the embedded server, provisioning, and the authority beside
    servers you run yourself."""


@bus.command("up")
@click.option("--store", type=PATH, required=True, help="JetStream store directory.")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Client port.")
@click.option(
    "--listen",
    default=None,
    metavar="HOST:PORT",
    help="Client listen address, e.g. 0.0.0.0:4222 (default 127.0.0.1, --port or a free port).",
)
@click.option(
    "--monitor",
    default=None,
    metavar="HOST:PORT",
    help="HTTP monitoring address, for Prometheus say (default: loopback, a free port).",
)
@click.option("--server-tls-cert", type=PATH, default=None, help="Server certificate (PEM).")
@click.option("--server-tls-key", type=PATH, default=None, help="Its key (PEM, 0600).")
@click.option(
    "--server-tls-ca", type=PATH, default=None, help="CA of the clients' certificates (PEM)."
)
@click.option(
    "--server-tls-verify",
    is_flag=True,
    help="Require a client certificate signed by --server-tls-ca (mutual TLS).",
)
@click.option(
    "--server-tls-name",
    default=None,
    metavar="NAME",
    help="The name in the server certificate that this command's own connections expect "
    "(a DNS-named certificate; else the address they dial, e.g. 127.0.0.1 for 0.0.0.0).",
)
@click.option(
    "--trust-root",
    "trust_roots",
    type=PATH,
    multiple=True,
    help="The pinned root.1.json; repeat with root.2.json ... after root rotations.",
)
@click.option(
    "--directory", "directory_file", type=PATH, default=None, help="A signed directory.json."
)
@click.option(
    "--operator-keys",
    type=PATH,
    default=None,
    help="The operator's key directory (the admin folder's operator/).",
)
@click.option(
    "--ledger-identity",
    "ledger_identities",
    type=PATH,
    multiple=True,
    help="The ledger's identity.json: its NATS key may read the audit stream (repeat).",
)
@click.option("--passphrase-file", type=PATH, default=None, help="Else $NRM_PASSPHRASE.")
@click.option(
    "--unsafe-open",
    is_flag=True,
    help="No authorization at all: anyone may connect. Local experiments only.",
)
@click.option(
    "--agency",
    "open_agencies",
    multiple=True,
    help="With --unsafe-open: make this agency's inbox stream and attachment bucket (repeat).",
)
@click.option(
    "--status-bind",
    default=None,
    metavar="HOST:PORT",
    help="Serve /healthz and /metrics (directory and root expiry) here, e.g. 127.0.0.1:8222.",
)
@_days_option(
    "--expiry-warning-days",
    DEFAULT_LIMITS.expiry_warning_seconds,
    "/healthz turns to warning this long before the directory or root expires.",
)
def bus_up(
    store: Path,
    port: int | None,
    listen: str | None,
    monitor: str | None,
    server_tls_cert: Path | None,
    server_tls_key: Path | None,
    server_tls_ca: Path | None,
    server_tls_verify: bool,
    server_tls_name: str | None,
    trust_roots: tuple[Path, ...],
    directory_file: Path | None,
    operator_keys: Path | None,
    ledger_identities: tuple[Path, ...],
    passphrase_file: Path | None,
    unsafe_open: bool,
    open_agencies: tuple[str, ...],
    status_bind: str | None,
    expiry_warning_days: float,
) -> None:
    """Run nats-server in the foreground until Ctrl-C (SIGINT) or SIGTERM (on loopback
    unless --listen says otherwise).

    Secured (the default): agencies authenticate with the NKeys of a directory verified
    against the trust root, and later `nrm directory publish` reloads the authorization.
    With --server-tls-cert/--server-tls-key clients must use TLS (mutual with
    --server-tls-verify); this command's own connections then trust --server-tls-ca (else
    the system's CAs) and, with --server-tls-verify, present the server's certificate.
    """
    from broker.bus import BusTrust, run_foreground, unsafe_run_foreground_open

    where = _bus_listen(
        port,
        listen,
        monitor,
        server_tls_cert,
        server_tls_key,
        server_tls_ca,
        server_tls_verify,
        server_tls_name,
    )
    secured = (
        bool(trust_roots)
        or directory_file is not None
        or operator_keys is not None
        or bool(ledger_identities)
    )
    if unsafe_open:
        if secured or status_bind is not None:
            raise click.UsageError(
                "--unsafe-open cannot be combined with --trust-root/--directory/--operator-keys"
                "/--ledger-identity/--status-bind"
            )
        logs.configure()
        sys.exit(
            unsafe_run_foreground_open(
                store_dir=store, port=None, agencies=open_agencies, listen=where
            )
        )
    if open_agencies:
        raise click.UsageError("--agency goes with --unsafe-open (a secured bus reads them)")
    bind = None if status_bind is None else _host_port(status_bind)
    if not (trust_roots and directory_file is not None and operator_keys is not None):
        raise click.UsageError(
            "give --trust-root, --directory and --operator-keys for a secured bus "
            "(or --unsafe-open for an open one, local experiments only)"
        )
    logs.configure()
    with expected_errors():
        from .show import refuse_unsigned

        refuse_unsigned(directory_file.read_bytes(), what=f"the directory {directory_file}")
        ledger_nkeys = tuple(admin.identity_nats_key(p) for p in ledger_identities)
        try:
            code = run_foreground(
                store_dir=store,
                port=None,
                listen=where,
                trust=BusTrust(
                    trust_roots=trust_roots,
                    directory=directory_file,
                    operator_keys=operator_keys,
                    ledger_nkeys=ledger_nkeys,
                    passphrase=read_passphrase(file=passphrase_file),
                    status_bind=bind,
                    warning_seconds=_seconds(expiry_warning_days),
                ),
            )
        except RuntimeError as e:  # nats-server would not start
            raise click.ClickException(str(e)) from e
    sys.exit(code)


def _bus_listen(
    port: int | None,
    listen: str | None,
    monitor: str | None,
    cert: Path | None,
    key: Path | None,
    ca: Path | None,
    verify: bool,
    name: str | None = None,
) -> Listen:
    """The `broker.bus.Listen` of `bus up`'s options; a usage error naming a bad one."""
    from broker.bus import Listen
    from broker.server import ServerTls

    host, listen_port = "127.0.0.1", port
    if listen is not None:
        if port is not None:
            raise click.UsageError("give the client port with --listen or --port, not both")
        host, listen_port = _host_port(listen, option="--listen")
    monitor_at = None if monitor is None else _host_port(monitor, option="--monitor")
    if (cert is None) != (key is None):
        raise click.UsageError("--server-tls-cert and --server-tls-key go together")
    if cert is None or key is None:
        if ca is not None or verify or name is not None:
            raise click.UsageError(
                "--server-tls-ca/--server-tls-verify/--server-tls-name need --server-tls-cert"
            )
        tls = None
    else:
        if verify and ca is None:
            raise click.UsageError("--server-tls-verify needs --server-tls-ca")
        tls = ServerTls(cert_file=cert, key_file=key, ca_file=ca, verify=verify, server_name=name)
    return Listen(host=host, port=listen_port or None, monitor=monitor_at, tls=tls)


#: JetStream errors that go away by themselves once a cluster has formed: 10005 no suitable
#: peers for the replicas (the other nodes not joined yet), 10202 cluster not ready
#: (electing its meta leader). `nrm bus provision` exits 4 for them: run it again.
JETSTREAM_NOT_READY = frozenset({10005, 10202})


@bus.command("provision")
@bus_endpoint_options()
@click.option(
    "--replicas",
    type=click.IntRange(1, 5),
    default=1,
    show_default=True,
    help="Replicas of every stream and bucket: 3 on a three-node cluster.",
)
@click.option(
    "--operator-keys",
    type=PATH,
    required=True,
    help="The operator's key directory (the admin folder's operator/).",
)
@click.option("--passphrase-file", type=PATH, default=None, help="Else $NRM_PASSPHRASE.")
@click.option(
    "--trust-root",
    "trust_roots",
    type=PATH,
    multiple=True,
    required=True,
    help="The pinned root.1.json; repeat with root.2.json ... after root rotations.",
)
@click.option(
    "--directory",
    "directory_file",
    type=PATH,
    required=True,
    help="The signed directory.json: its agencies get their inbox streams and buckets.",
)
def bus_provision(
    endpoint: BusEndpoint,
    replicas: int,
    operator_keys: Path,
    passphrase_file: Path | None,
    trust_roots: tuple[Path, ...],
    directory_file: Path,
) -> None:
    """Create (or bring to the wanted configuration) the streams, the directory and lease
    buckets, and each agency's inbox stream and attachment bucket, as the operator.

    Idempotent: run it again after a change, or with --replicas 3 once a single node has
    become a cluster. Exits 4 if the bus cannot be reached or JetStream is not ready yet
    (run it again), 1 for a refused directory, unreadable keys or a bus that refuses.
    """
    import nats.errors
    import nats.js.errors

    from broker.authority import attachment_owners
    from broker.streams import provision
    from runtime.keydir import load_key_dir

    with expected_errors():
        directory = admin.verified_directory(trust_roots, directory_file)
        operator = load_key_dir(operator_keys, passphrase=read_passphrase(file=passphrase_file))
        if operator.nats_seed is None:
            raise admin.AdminError(f"the operator keys in {operator_keys} have no NATS key")
    agencies = attachment_owners(directory)
    urls = ", ".join(endpoint.urls)
    try:
        asyncio.run(
            provision(endpoint, replicas=replicas, nkeys_seed=operator.nats_seed, agencies=agencies)
        )
    except nats.errors.AuthorizationError as e:
        raise click.ClickException(f"the bus at {urls} refused the operator's NKey") from e
    except (
        nats.js.errors.ServiceUnavailableError,
        nats.js.errors.NoStreamResponseError,
    ) as e:
        raise Unreachable(f"JetStream at {urls} is not ready yet; try again") from e
    except nats.js.errors.APIError as e:
        if e.err_code in JETSTREAM_NOT_READY:
            raise Unreachable(
                f"JetStream at {urls} is not ready yet ({e.description}); try again"
            ) from e
        raise click.ClickException(f"the bus at {urls} refused: {e.description}") from e
    except (nats.errors.Error, OSError, TimeoutError) as e:
        raise Unreachable(f"cannot reach the bus at {urls} ({type(e).__name__})") from e
    click.echo(
        f"provisioned {urls}: streams and buckets with {replicas} replica(s), "
        f"{len(agencies)} agencies' inbox streams and attachment buckets "
        f"(directory version {directory.version})"
    )


@bus.command("authority")
@click.option("--config", "config_path", type=PATH, required=True, help="authority.toml")
@_days_option(
    "--expiry-warning-days",
    DEFAULT_LIMITS.expiry_warning_seconds,
    "/healthz turns to warning this long before the directory or root expires.",
)
def bus_authority(config_path: Path, expiry_warning_days: float) -> None:
    """Keep a nats-server you run yourself authorized as the published directory says.

    Beside each node (systemd, or a Kubernetes sidecar sharing its process namespace): it
    follows the directory bucket, verifying every update from the pinned root, provisions a
    newly admitted agency's inbox stream and bucket, rewrites the node's authorization
    include file, sends the server SIGHUP (its pid_file) and confirms the reload on its
    monitoring port. Runs until SIGINT or SIGTERM. Exits 1 for a bad authority.toml,
    operator keys that cannot be opened, or a trust_root that is not a valid root.
    """
    from broker.external import AuthorityConfig, run_authority
    from runtime.config import ConfigError

    try:
        config = AuthorityConfig.load(config_path)
    except ConfigError as e:
        raise click.ClickException(str(e)) from e
    logs.configure()
    try:
        code = run_authority(config, warning_seconds=_seconds(expiry_warning_days))
    except KeyFileError as e:
        raise click.ClickException(str(e)) from e
    except UntrustedInputError as e:  # MalformedError too: a trust_root that is no root
        raise click.ClickException(
            f"bus authority for {config.node_name}: the trust_root {config.trust_root} or a "
            f"cached root or directory in {config.trust_cache} is refused ({e.reason}): {e}"
        ) from e
    except OSError as e:  # the status address cannot be bound, say
        raise click.ClickException(f"bus authority for {config.node_name}: {e}") from e
    sys.exit(code)


@main.group("cluster")
def cluster_group() -> None:
    """A nats-server cluster you run yourself."""


@cluster_group.command("config")
@click.option("--spec", "spec_path", type=PATH, required=True, help="cluster.toml")
@click.option("--out", type=PATH, required=True, help="Folder to write the files into.")
@click.option(
    "--force",
    is_flag=True,
    help="Replace existing <name>.authorization.conf files (which each node's authority "
    "keeps in step with the directory) with the initial ones.",
)
def cluster_config(spec_path: Path, out: Path, force: bool) -> None:
    """Write every node's nats-server configuration, its initial authorization (from the
    verified directory) and its authority.toml, from one spec (deploy/nats-cluster/).
    The configuration files are rewritten; an existing authorization file is replaced
    only with --force (exit 1 naming it otherwise, nothing written)."""
    from broker.authority import authorization_for
    from broker.cluster import ClusterSpec, cluster_files
    from runtime.config import ConfigError
    from runtime.files import replace_file

    with expected_errors():
        try:
            spec = ClusterSpec.load(spec_path)
        except ConfigError as e:
            raise click.ClickException(str(e)) from e
        directory = admin.verified_directory(spec.roots, spec.directory)
        services = admin.service_keys(
            operators=[spec.operator_identity],
            ledgers=[spec.ledger_identity],
            authorities=spec.authority_identities,
        )
        authorization = authorization_for(directory, services=services)
        files = cluster_files(spec, authorization=authorization, services=services)
        kept = [n for n in files if n.endswith(".authorization.conf") and (out / n).exists()]
        if kept and not force:
            raise click.ClickException(
                f"{out / kept[0]} exists (its authority may have changed it since): "
                "give --force to replace the authorization files; nothing written"
            )
        out.mkdir(parents=True, exist_ok=True)
        for name, (text, file_mode) in files.items():
            replace_file(out / name, text.encode("utf-8"), mode=file_mode)
    click.echo(
        f"wrote {len(files)} files for {len(spec.nodes)} nodes in {out} "
        f"(authorization of directory version {directory.version})"
    )


# --- agent ---------------------------------------------------------------------------------


@main.group()
def agent() -> None:
    """The agency agent."""


@agent.command("run")
@click.option("--config", "config_path", type=PATH, required=True, help="Agent TOML file.")
def agent_run(config_path: Path) -> None:
    """Run the agent until SIGINT or SIGTERM; SIGHUP reloads its tokens and HTTPS
    certificate (docs/RUNBOOK.md, "Reloading")."""
    _run(
        lambda: Agent.from_config_file(config_path),
        lambda a: {"part": "agent", "agency": a.config.agency, "url": a.api_url},
        lambda a: a.reload(config_path),
        config_path,
    )


SWITCH_INTERVAL_SECONDS = 0.001


def _run(
    load: Callable[[], Any],
    describe: Callable[[Any], dict[str, str]],
    reload: Callable[[Any], list[str]],
    config_path: Path,
) -> None:
    """Load a service from its configuration (a bad one is a CLI error, not a traceback) and
    serve it until SIGINT or SIGTERM, reloading on SIGHUP."""
    import sqlite3

    # No logger cache: a service run in-process (tests) must not pin the loggers of every
    # module to this configuration for the rest of the process.
    logs.configure()
    try:
        service = load()
    except (NrmError, ValueError, sqlite3.Error) as e:  # ConfigErrors are ValueErrors
        raise click.ClickException(str(e)) from e
    try:
        asyncio.run(
            _serve(service, lambda: describe(service), lambda: reload(service), config_path)
        )
    except OSError as e:  # e.g. its port is taken
        raise click.ClickException(f"could not start: {e}") from e


async def _serve(
    service: Any,
    describe: Callable[[], dict[str, str]],
    reload: Callable[[], list[str]],
    config_path: Path,
) -> None:
    """Run an async-context-managed service until SIGINT or SIGTERM; log `serving` (one JSON
    event, on stderr like every other) once it serves. On each SIGHUP read the configuration
    again (`reload`): `reloaded` with the names of what changed, or `reload_refused` with the
    reason (the file and setting; never a token) and the running configuration kept."""
    import structlog

    from runtime.config import ConfigError
    from runtime.reload import describe as refusal

    log = structlog.get_logger("nrm.serve")
    # fsyncs finish in a worker thread (runtime/durability.py); let it hand its result back to a
    # busy event loop within a millisecond rather than the default five.
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with service:
        what = describe()

        def on_hup() -> None:
            try:
                changed = reload()
            except ConfigError as e:
                log.warning("reload_refused", part=what["part"], reason=refusal(config_path, e))
            except (NrmError, OSError, ValueError) as e:  # a file it names, unreadable
                log.warning(
                    "reload_refused", part=what["part"], reason=f"{config_path}: {type(e).__name__}"
                )
            else:
                log.info("reloaded", part=what["part"], changed=changed)

        loop.add_signal_handler(signal.SIGHUP, on_hup)
        log.info("serving", **what)
        await stop.wait()


@agent.command("backup")
@click.option("--config", "config_path", type=PATH, required=True, help="The agent's agent.toml.")
@click.option("--to", "target", type=PATH, required=True, help="A new file (never overwritten).")
def agent_backup(config_path: Path, target: Path) -> None:
    """Copy the agent's database consistently, while it runs (docs/RUNBOOK.md)."""
    try:
        config = AgentConfig.load(config_path)
    except ConfigError as e:
        raise click.ClickException(str(e)) from e
    _backup(config.database, target, what=f"{config.agency}'s agent database")


@agent.command("restore")
@click.option("--config", "config_path", type=PATH, required=True, help="The agent's agent.toml.")
@click.option("--from", "source", type=PATH, required=True, help="The backup to put back.")
def agent_restore(config_path: Path, source: Path) -> None:
    """Put a backup back as the agent database (the agent must be stopped); on its next
    start the agent asks every agency to send again what it lost (docs/RUNBOOK.md)."""
    import sqlite3

    from agents.restore import AgentRestoreError, restore_agent

    try:
        config = AgentConfig.load(config_path)
        result = restore_agent(config, source, stamp=clock.now())
    except (ConfigError, AgentRestoreError) as e:
        raise click.ClickException(str(e)) from e
    except (OSError, sqlite3.Error) as e:
        raise click.ClickException(f"could not restore: {e}") from e
    click.echo(f"restored {config.agency}'s agent database from {source}")
    if result.kept is not None:
        click.echo(f"the replaced database is kept as {result.kept}")
    click.echo("start the agent: it asks every agency to send again what it sent since")


def _backup(source: Path, target: Path, *, what: str) -> None:
    import sqlite3

    from runtime.durability import backup

    try:
        size = backup(source, target)
    except FileExistsError as e:
        raise click.ClickException(f"{target} exists; name a new file") from e
    except (OSError, sqlite3.Error) as e:
        raise click.ClickException(f"could not back up {source}: {e}") from e
    click.echo(f"backed up {what} to {target} ({size} bytes, mode 0600)")


@agent.command("alerts")
@click.option("--config", "config_path", type=PATH, required=True, help="The agent's agent.toml.")
@click.option("--all", "show_all", is_flag=True, help="Also those already acknowledged.")
@json_option
def agent_alerts(config_path: Path, show_all: bool, as_json: bool) -> None:
    """List the ledger alerts the agent raised (open ones unless --all)."""
    from .show import when

    store = _agent_store(config_path)
    try:
        rows = store.alerts(open_only=not show_all)
    finally:
        store.close()
    if as_json:
        fields = ("reason", "event_id", "first_at", "last_at", "occurrences", "acknowledged_at")
        emit({"alerts": [dict(zip(fields, row[1:], strict=True)) for row in rows]})
        return
    if not rows:
        click.echo("no open ledger alerts" if not show_all else "no ledger alerts")
        return
    for _, reason, event_id, first_at, last_at, occurrences, acknowledged_at in rows:
        state = "open" if acknowledged_at is None else f"acknowledged {when(acknowledged_at)}"
        click.echo(
            f"{reason:26} event {event_id or '-':32}  first {when(first_at)}  "
            f"last {when(last_at)}  x{occurrences}  {state}"
        )


@agent.command("ack-alert")
@click.option("--config", "config_path", type=PATH, required=True, help="The agent's agent.toml.")
@click.option("--reason", required=True, help="The alert reason, e.g. missing-event.")
@click.option(
    "--event", "event_ids", multiple=True, help="Only the alerts about this event id (repeat)."
)
def agent_ack_alert(config_path: Path, reason: str, event_ids: tuple[str, ...]) -> None:
    """Acknowledge ledger alerts whose cause is understood: /healthz stops counting them
    (the acknowledgement is audited, and survives restarts); new alerts still raise."""
    import re

    from agents.audit import AuditTrail
    from agents.ledger_check import ALERT_REASONS
    from keys.key_history import signing_key_at
    from runtime.keydir import load_key_dir

    if reason not in ALERT_REASONS:
        raise click.BadParameter(
            f"must be one of {', '.join(sorted(ALERT_REASONS))}", param_hint="--reason"
        )
    bad = [e for e in event_ids if not re.fullmatch(r"[0-9a-f]{32}", e)]
    if bad:
        raise click.BadParameter("an event id is 32 lowercase hex digits", param_hint="--event")
    try:
        config = AgentConfig.load(config_path)
        agency_keys = load_key_dir(
            config.key_dir, passphrase=read_passphrase(file=config.passphrase_file)
        )
    except (ConfigError, KeyFileError, OSError) as e:
        raise click.ClickException(str(e)) from e
    store = _agent_store(config_path)
    try:
        # The acknowledgement is an audit event: sign it only with a key the ledger accepts
        # (not a rotated key whose directory is not published yet).
        try:
            signing_key_at(
                store.key_history(config.agency),
                agency=config.agency,
                kid=agency_keys.public.signing_kid,
                at=clock.now(),
            )
        except UntrustedInputError as e:
            raise click.ClickException(
                f"the key file's signing key cannot sign now ({e.reason}): publish the "
                "directory with the agency's current identity.json first; nothing changed"
            ) from e
        audit = AuditTrail(agency=config.agency, keys=lambda: agency_keys, store=store)
        with store.transaction() as tx:
            count = store.acknowledge_alerts(tx, reason=reason, event_ids=event_ids)
            if count:
                audit.record(tx, "alert.acknowledged", reason=reason)
        asyncio.run(store.durable())
    finally:
        store.close()
    if not count:
        raise click.ClickException(f"no open {reason} alert to acknowledge")
    click.echo(f"acknowledged {count} {reason} alert(s) of {config.agency}")


def _agent_store(config_path: Path) -> Any:
    import sqlite3

    from agents.store import Store

    try:
        config = AgentConfig.load(config_path)
        if not config.database.exists():
            raise click.ClickException(f"{config.database} does not exist")
        return Store(config.database, agency=config.agency)
    except (ConfigError, OSError, sqlite3.Error) as e:
        raise click.ClickException(str(e)) from e


@agent.command("new-token")
def agent_new_token() -> None:
    """Make an API token for a client system: the token, and the line for agent.toml."""
    token = secrets.token_urlsafe(32)
    click.echo(f"token (give to the client system, store nowhere else): {token}")
    click.echo(f'token_sha256 = "{token_digest(token)}"')
    click.echo('scopes = ["submit", "read", "act"]  # keep only what the client needs')


@main.group("consent")
def consent_group() -> None:
    """Consent receipts recorded by this agency."""


@consent_group.command("show")
@click.argument("receipt_id")
@click.option("--config", "config_path", type=PATH, required=True, help="The agent's agent.toml.")
@json_option
def consent_show(receipt_id: str, config_path: Path, as_json: bool) -> None:
    """Print a consent receipt readably, after checking the agency's signature on it.

    The signature is checked under the key that made it, as the agency's key history says it
    was when the receipt was recorded. Exits 3 if it does not verify, 1 on other errors.
    """
    import sqlite3

    from agents.consent import decode_stored, render, verify_stored_receipt
    from agents.store import read_consent

    try:
        config = AgentConfig.load(config_path)
        identity = PublicIdentity.from_json((config.key_dir / "identity.json").read_bytes())
        found = read_consent(config.database, receipt_id, agency=config.agency)
    except (ConfigError, OSError, sqlite3.Error, UntrustedInputError) as e:
        raise click.ClickException(str(e)) from e
    if found is None:
        raise click.ClickException(f"no consent receipt {receipt_id} at {config.agency}")
    stored, history = found
    try:
        signed = decode_stored(stored.signed)
        receipt, kid = verify_stored_receipt(signed, signed_at=stored.recorded, history=history)
    except UntrustedInputError as e:
        if as_json:
            emit({"receipt_id": receipt_id, "verified": False, "reason": e.reason})
        click.echo(
            f"signature: DOES NOT VERIFY ({e.reason}): {e}. The stored receipt may have been "
            "altered, or was signed by a key not valid when it was recorded; see RUNBOOK.md "
            "(Consent withdrawn).",
            err=True,
        )
        sys.exit(EXIT_VERIFICATION_FAILED)
    from .show import when

    if as_json:
        import json

        emit(
            {
                "receipt_id": receipt.receipt_id,
                "verified": True,
                "agency": signed.agency,
                "kid": kid,
                "current_key": kid == identity.signing_kid,
                "recorded_at": stored.recorded,
                "withdrawn_at": stored.withdrawn_at,
                "receipt": json.loads(signed.body),
            }
        )
        return
    click.echo(render(receipt))
    if kid == identity.signing_kid:
        click.echo(f"signature: verified, {signed.agency} key {kid} (the current key)")
    else:
        click.echo(
            f"signature: verified, {signed.agency} key {kid}: an earlier key of this agency, "
            f"valid when the receipt was recorded ({when(stored.recorded)})"
        )
    if stored.withdrawn_at is not None:
        click.echo(f"WITHDRAWN at {when(stored.withdrawn_at)}")


# --- administrators -------------------------------------------------------------------------


@main.group("admin")
def admin_group() -> None:
    """Root keys of the administrators."""


def _passphrases(
    files: tuple[Path, ...], count: int, option: str, keys: str
) -> tuple[bytes | None, list[bytes] | None]:
    """The passphrases a repeatable `option` gives for `count` key files: none given, the
    one in $NRM_PASSPHRASE for all; one, that one for all (`(passphrase, None)`); else one
    per key file in order (`(None, passphrases)`; a usage error unless exactly `count`)."""
    if len(files) <= 1:
        return read_passphrase(file=files[0] if files else None), None
    if len(files) != count:
        raise click.UsageError(
            f"{len(files)} {option} for {count} {keys}: give one for all, or one per key in order"
        )
    return None, [read_passphrase(file=f) for f in files]


@admin_group.command("init")
@click.option("--admins", type=click.IntRange(1, 16), required=True, help="Number of root keys.")
@click.option("--threshold", type=click.IntRange(1, 16), required=True, help="Signatures needed.")
@click.option("--dir", "admin_dir", type=PATH, required=True, help="Folder to create.")
@click.option(
    "--passphrase-file",
    "passphrase_files",
    type=PATH,
    multiple=True,
    help="Seals the administrators' keys: once for all, or once per administrator in order "
    "(admin-1.key first). Else $NRM_PASSPHRASE.",
)
@click.option(
    "--operator-passphrase-file",
    type=PATH,
    default=None,
    help="Seals the bus operator's key (operator/), which `nrm directory publish`, "
    "`nrm bus provision` and `nrm bus up` read; default: the administrators' single "
    "passphrase (not recommended; required with one passphrase per administrator).",
)
@_days_option(
    "--directory-lifetime-days",
    DEFAULT_LIMITS.directory_ttl_seconds,
    "How long each new directory version is valid (kept in settings.toml).",
    positive=True,
)
@_days_option(
    "--publish-margin-days",
    DEFAULT_LIMITS.publish_margin_seconds,
    "Publishing refuses a directory expiring sooner than this (kept in settings.toml).",
)
def admin_init(
    admins: int,
    threshold: int,
    admin_dir: Path,
    passphrase_files: tuple[Path, ...],
    operator_passphrase_file: Path | None,
    directory_lifetime_days: float,
    publish_margin_days: float,
) -> None:
    """Create N administrator root keys, root.1.json signed by all, and an empty directory.

    Give --passphrase-file once per administrator so that each key file has its own
    passphrase, or once for all and have each administrator run `nrm admin passphrase` on
    the key before it is handed over. The bus operator's key (operator/) is sealed with
    --operator-passphrase-file: give it one of its own."""
    with expected_errors():
        if len(passphrase_files) > 1 and operator_passphrase_file is None:
            raise click.UsageError(
                "with one passphrase per administrator, give the operator's key its own "
                "with --operator-passphrase-file"
            )
        operator_passphrase = (
            None
            if operator_passphrase_file is None
            else read_passphrase(file=operator_passphrase_file)
        )
        passphrase, each = _passphrases(
            passphrase_files, admins, "--passphrase-file", "administrators"
        )
        settings = admin.AdminSettings(
            directory_lifetime_seconds=_seconds(directory_lifetime_days),
            publish_margin_seconds=_seconds(publish_margin_days),
        )
        root = admin.init_admin(
            admin_dir,
            admins=admins,
            threshold=threshold,
            passphrase=passphrase,
            passphrases=each,
            cost=MODERATE,
            settings=settings,
            operator_passphrase=operator_passphrase,
        )
    if operator_passphrase is None:
        click.echo(
            "warning: the operator's key is sealed with the administrators' passphrase; "
            "give --operator-passphrase-file (or `nrm keys passphrase --dir "
            f"{admin_dir / 'operator'} ...`) before handing it to the ledger and the bus",
            err=True,
        )
    click.echo(f"root version 1: {threshold}-of-{admins}; keys {', '.join(root.keys)}")
    click.echo(
        f"  give {admin_dir / 'root.1.json'} to every agency as its trust_root; hand each "
        "admin-N.key to its administrator"
    )
    if each is None and admins > 1:
        click.echo(
            "  every admin-N.key has the same passphrase: each administrator seals theirs "
            "with their own (`nrm admin passphrase --key admin-N.key --old-file F --new-file "
            "G`) before it leaves this folder"
        )


@admin_group.command("rotate-root")
@click.option(
    "--key",
    "old_keys",
    type=PATH,
    multiple=True,
    required=True,
    help="A current root key (repeat to reach the current threshold).",
)
@click.option("--admins", type=click.IntRange(1, 16), required=True, help="Number of new keys.")
@click.option("--threshold", type=click.IntRange(1, 16), required=True)
@click.option(
    "--passphrase-file",
    "passphrase_files",
    type=PATH,
    multiple=True,
    help="Opens the --key files: once for all, or once per --key in the same order. "
    "Else $NRM_PASSPHRASE.",
)
@click.option(
    "--new-passphrase-file",
    "new_passphrase_files",
    type=PATH,
    multiple=True,
    help="Seals the new keys: once for all, or once per new key in order (admin-1.rN.key "
    "first). Default: the single --passphrase-file (required when each --key has its own).",
)
@ADMIN_DIR
def admin_rotate_root(
    old_keys: tuple[Path, ...],
    admins: int,
    threshold: int,
    passphrase_files: tuple[Path, ...],
    new_passphrase_files: tuple[Path, ...],
    admin_dir: Path,
) -> None:
    """New root keys: root N+1 signed by a threshold of the old keys and all the new ones.

    Every --key signs here, on this machine (there is no export and merge for a root):
    each administrator may bring their key file and its own passphrase file."""
    with expected_errors():
        passphrase, each = _passphrases(
            passphrase_files, len(old_keys), "--passphrase-file", "--key files"
        )
        if new_passphrase_files:
            new_passphrase, new_each = _passphrases(
                new_passphrase_files, admins, "--new-passphrase-file", "new keys"
            )
        elif passphrase is None:
            raise click.UsageError(
                "with one passphrase per --key, give the new keys theirs with "
                "--new-passphrase-file (once for all, or once per new key)"
            )
        else:
            new_passphrase, new_each = passphrase, None
        root = admin.rotate_root(
            admin.AdminFolder(admin_dir),
            old_keys=old_keys,
            admins=admins,
            threshold=threshold,
            passphrase=passphrase,
            passphrases=each,
            new_passphrase=new_passphrase,
            new_passphrases=new_each,
            cost=MODERATE,
        )
    click.echo(
        f"root version {root.version}: {threshold}-of-{admins}; re-sign the directory "
        f"with the new keys (admin-N.r{root.version}.key) and publish"
    )


@admin_group.command("passphrase")
@click.option("--key", "key_path", type=PATH, required=True, help="An administrator key file.")
@click.option("--old-file", type=PATH, required=True, help="File holding the current passphrase.")
@click.option("--new-file", type=PATH, required=True, help="File holding the new passphrase.")
def admin_passphrase(key_path: Path, old_file: Path, new_file: Path) -> None:
    """Seal one administrator key file with a new passphrase (the key stays the same).

    Run by its administrator, on their own machine; the file is replaced atomically (0600)
    and left as it was if the current passphrase does not open it."""
    with expected_errors():
        old, new = read_passphrase(file=old_file), read_passphrase(file=new_file)
        try:
            kid = admin.change_admin_passphrase(key_path, old=old, new=new, cost=MODERATE)
        except KeyFileError as e:
            raise KeyFileError(f"{key_path}: {e}") from e
    click.echo(f"{key_path} ({kid}) sealed with the new passphrase")


@main.group("directory")
def directory_group() -> None:
    """The signed trust directory."""


@directory_group.command("add-agency")
@click.argument("identity_file", type=PATH)
@click.option("--roles", default="", help="Comma-separated roles, e.g. police or ngo.")
@click.option(
    "--decides",
    type=click.Choice(["first", "second"]),
    default=None,
    help="A competent-authority that decides one identification stage only (default: both).",
)
@_days_option(
    "--overlap-days", 7 * DAY, "When this is a rotation: how long the old keys stay valid."
)
@click.option(
    "--revoke-previous",
    is_flag=True,
    help="Revoke every earlier key of the agency in the same change (a lost or stolen machine).",
)
@click.option("--reason", default=None, help="With --revoke-previous: why (no personal data).")
@click.option(
    "--at", "at", default=None, help="With --revoke-previous: revocation time (default now)."
)
@click.option(
    "--accept-legacy-identity",
    is_flag=True,
    help="Accept an identity.json written before proofs of possession (with a warning).",
)
@ADMIN_DIR
def directory_add_agency(
    identity_file: Path,
    roles: str,
    decides: str | None,
    overlap_days: float,
    revoke_previous: bool,
    reason: str | None,
    at: str | None,
    accept_legacy_identity: bool,
    admin_dir: Path,
) -> None:
    """Admit an agency from its identity.json, or take in its rotated keys.

    Prints the identity's fingerprint: compare it with the agency's (`nrm keys fingerprint`,
    read out over the phone) before signing. An identity.json without a valid proof of
    possession is refused (exit 1); --accept-legacy-identity takes one with no proof at all.
    With --revoke-previous the agency's earlier keys are revoked in the same change: have the
    agency run `nrm keys rotate` first, then this, then sign and publish (docs/RUNBOOK.md).
    """
    if not revoke_previous and (reason is not None or at is not None):
        raise click.UsageError("--reason and --at go with --revoke-previous")
    if revoke_previous and not reason:
        raise click.UsageError("--revoke-previous needs --reason")
    folder = admin.AdminFolder(admin_dir)
    with expected_errors():
        identity = PublicIdentity.from_json(identity_file.read_bytes())
        try:
            verify_proof(identity)
        except MissingProofError:
            if not accept_legacy_identity:
                raise
            click.echo(
                f"warning: {identity.agency}'s identity.json has no proof of possession; "
                "compare the fingerprint with the agency before signing",
                err=True,
            )
        click.echo(f"fingerprint of {identity.agency}: {fingerprint(identity)}")
        if revoke_previous:
            assert reason is not None
            if roles or decides:
                raise click.UsageError("--roles and --decides cannot change with --revoke-previous")
            d = admin.replace_keys(
                folder,
                identity,
                reason=reason,
                at=None if at is None else _parse_time(at),
                overlap_seconds=_seconds(overlap_days),
            )
            click.echo(
                f"{identity.agency}: earlier keys revoked and new keys admitted in draft "
                f"version {d.version}; sign and publish it"
            )
            return
        d = admin.add_agency(
            folder,
            identity,
            roles=[r for r in roles.split(",") if r],
            decides=decides,
            overlap_seconds=_seconds(overlap_days),
        )
    click.echo(f"{identity.agency} in draft version {d.version}; sign and publish it")


@directory_group.command("remove-agency")
@click.argument("agency")
@ADMIN_DIR
def directory_remove_agency(agency: str, admin_dir: Path) -> None:
    """Remove an agency from the directory draft."""
    with expected_errors():
        d = admin.remove_agency(admin.AdminFolder(admin_dir), agency)
    click.echo(f"{agency} removed in draft version {d.version}; sign and publish it")


@directory_group.command("renew")
@_days_option(
    "--lifetime-days",
    None,
    "How long the new version is valid; default: the folder's settings.toml.",
    positive=True,
)
@ADMIN_DIR
def directory_renew(lifetime_days: float | None, admin_dir: Path) -> None:
    """A new draft version with the same content and a new expiry; sign and publish it."""
    with expected_errors():
        d = admin.renew_directory(
            admin.AdminFolder(admin_dir),
            lifetime_seconds=None if lifetime_days is None else _seconds(lifetime_days),
        )
    expires = datetime.fromtimestamp(d.expires, UTC).isoformat(timespec="minutes")
    click.echo(f"renewed: draft version {d.version} expires {expires}; sign and publish it")


@directory_group.command("sign")
@click.option("--key", "key_path", type=PATH, required=True, help="An administrator key file.")
@click.option("--passphrase-file", type=PATH, default=None, help="Else $NRM_PASSPHRASE.")
@ADMIN_DIR
def directory_sign(key_path: Path, passphrase_file: Path | None, admin_dir: Path) -> None:
    """Add one administrator's signature to the directory draft."""
    folder = admin.AdminFolder(admin_dir)
    with expected_errors():
        count = admin.sign_draft(folder, key_path, passphrase=read_passphrase(file=passphrase_file))
        threshold = folder.trusted_root(now=clock.now()).threshold
    state = "publishable" if count >= threshold else "not publishable yet"
    click.echo(f"directory has {count} of {threshold} required signatures: {state}")


@directory_group.command("export-draft")
@click.option("--out", type=PATH, required=True, help="The draft file to write (a new file).")
@ADMIN_DIR
def directory_export_draft(out: Path, admin_dir: Path) -> None:
    """Write the draft for administrators who sign on other machines: its unsigned bytes and
    what it says (docs/RUNBOOK.md, "Sign on separate machines"). Refuses to overwrite."""
    folder = admin.AdminFolder(admin_dir)
    with expected_errors():
        data = admin.export_draft(folder)
        write_new_file(out, data, mode=0o644)
    click.echo(f"draft written to {out}; have it signed with `nrm directory sign-draft`")


@directory_group.command("sign-draft")
@click.option(
    "--draft",
    "draft_file",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    required=True,
    help="The file `nrm directory export-draft` wrote.",
)
@click.option("--key", "key_path", type=PATH, required=True, help="An administrator key file.")
@click.option("--out", type=PATH, required=True, help="The signature file to write (new).")
@click.option("--passphrase-file", type=PATH, default=None, help="Else $NRM_PASSPHRASE.")
def directory_sign_draft(
    draft_file: Path, key_path: Path, out: Path, passphrase_file: Path | None
) -> None:
    """Sign an exported draft here, with only the draft, the key file and its passphrase;
    prints what the draft says (read from the bytes signed) and writes a signature file to
    take back to the admin folder (`nrm directory merge-signatures`)."""
    with expected_errors():
        data = draft_file.read_bytes()
        _, directory = admin.read_exported_draft(data)
        signature = admin.sign_exported_draft(
            data, key_path, passphrase=read_passphrase(file=passphrase_file)
        )
        write_new_file(out, signature, mode=0o644)
    from .show import entry_fingerprint

    for line in admin.describe_draft(directory):
        click.echo(f"  {line}")
    for entry in directory.agencies:  # what the agency's `nrm keys init` printed
        found = entry_fingerprint(entry)
        if found is not None:
            click.echo(f"  fingerprint of {entry.agency}: {found}")
    click.echo(f"signature written to {out}")


@directory_group.command("merge-signatures")
@click.argument(
    "signature_files",
    nargs=-1,
    required=True,
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
)
@ADMIN_DIR
def directory_merge_signatures(signature_files: tuple[Path, ...], admin_dir: Path) -> None:
    """Add signature files made by `nrm directory sign-draft` to the draft. Each must be over
    exactly this draft and by a key of the current root; otherwise nothing changes (exit 1)."""
    folder = admin.AdminFolder(admin_dir)
    with expected_errors():
        count = admin.merge_signatures(folder, [f.read_bytes() for f in signature_files])
        threshold = folder.trusted_root(now=clock.now()).threshold
    state = "publishable" if count >= threshold else "not publishable yet"
    click.echo(f"directory has {count} of {threshold} required signatures: {state}")


@directory_group.command("publish")
@bus_endpoint_options()  # --nats and --tls-*: the operator's NKey is used on the bus
@click.option("--passphrase-file", type=PATH, default=None, help="Else $NRM_PASSPHRASE.")
@_days_option(
    "--margin-days",
    None,
    "Refuse (exit 3) a directory expiring sooner; default: the folder's settings.toml.",
)
@ADMIN_DIR
def directory_publish(
    endpoint: BusEndpoint,
    passphrase_file: Path | None,
    margin_days: float | None,
    admin_dir: Path,
) -> None:
    """Verify the draft as an agent would, then publish roots and directory to the bus.

    Exits 3, publishing nothing, if the draft expires sooner than the publishing margin.
    """
    folder = admin.AdminFolder(admin_dir)
    margin = None if margin_days is None else _seconds(margin_days)
    with expected_errors():
        from .show import refuse_unsigned

        refuse_unsigned(folder.directory_bytes(), what=f"the draft in {admin_dir}")
        admin.publishable_draft(folder, margin_seconds=margin)  # before asking the passphrase
        passphrase = read_passphrase(file=passphrase_file)
        d = asyncio.run(
            admin.publish(folder, endpoint, passphrase=passphrase, margin_seconds=margin)
        )
    click.echo(f"published directory version {d.version} ({len(d.agencies)} agencies)")


@directory_group.command("set-policy")
@click.argument("policy_file", type=PATH, required=False)
@click.option("--none", "remove", is_flag=True, help="Take the policy out (spec_version 1).")
@ADMIN_DIR
def directory_set_policy(policy_file: Path | None, remove: bool, admin_dir: Path) -> None:
    """Put the national policy (a JSON file, `nrm directory policy-template`) into the
    directory draft, which becomes spec_version 2 (PROTOCOL §7.11); sign and publish it.
    Upgrade every agent and the ledger first: earlier releases refuse spec_version 2."""
    if (policy_file is None) == (not remove):
        raise click.UsageError("give a policy file, or --none")
    with expected_errors():
        folder = admin.AdminFolder(admin_dir)
        policy = None if policy_file is None else admin.read_policy(policy_file.read_bytes())
        d = admin.set_policy(folder, policy)
    state = "no policy (spec_version 1)" if d.policy is None else f"policy of {d.policy.country}"
    click.echo(f"draft version {d.version}: {state}; sign and publish it")


@directory_group.command("policy-template")
@click.option("--country", required=True, help="ISO 3166-1 alpha-2 code, e.g. LT.")
def directory_policy_template(country: str) -> None:
    """Print a national policy with the starting values of docs/PROTOCOL.md §7.11, to edit
    and give to `nrm directory set-policy`."""
    from keys.policy import Policy, policy_doc

    with expected_errors():
        emit(policy_doc(Policy(country=country)))


@directory_group.command("show")
@ADMIN_DIR
@json_option
def directory_show(admin_dir: Path, as_json: bool) -> None:
    """A readable table of the directory draft: agencies, roles, keys and their windows
    (--json: every key in full, README "Scripting")."""
    from .show import directory_document, show_directory

    folder = admin.AdminFolder(admin_dir)
    with expected_errors():
        if as_json:
            emit(directory_document(folder))
        else:
            click.echo(show_directory(folder))


@main.group("broker")
def broker_group() -> None:
    """Bus-side configuration."""


@broker_group.command("config")
@click.option(
    "--directory", "directory_file", type=PATH, required=True, help="A signed directory.json."
)
@click.option(
    "--root",
    "root_files",
    type=PATH,
    required=True,
    multiple=True,
    help="The pinned root.1.json, then each later root in order (repeat).",
)
@click.option(
    "--operator",
    "operator_identity",
    type=PATH,
    required=True,
    help="The operator's identity.json (its NATS key).",
)
@click.option(
    "--ledger-identity",
    "ledger_identities",
    type=PATH,
    multiple=True,
    help="The ledger's identity.json (its NATS key reads the audit stream; repeat).",
)
@click.option(
    "--authority-identity",
    "authority_identities",
    type=PATH,
    multiple=True,
    help="A bus authority's identity.json (its NATS key reads the directory; repeat).",
)
@click.option("--out", type=PATH, required=True, help="Authorization file to write (0600).")
def broker_config(
    directory_file: Path,
    root_files: tuple[Path, ...],
    operator_identity: Path,
    ledger_identities: tuple[Path, ...],
    authority_identities: tuple[Path, ...],
    out: Path,
) -> None:
    """Write the nats-server authorization generated from a verified directory."""
    from broker.authority import authorization_for
    from runtime.files import replace_file

    with expected_errors():
        directory = admin.verified_directory(root_files, directory_file)
        services = admin.service_keys(
            operators=[operator_identity],
            ledgers=ledger_identities,
            authorities=authority_identities,
        )
        replace_file(out, authorization_for(directory, services=services).encode())
    click.echo(
        f"wrote {out} for directory version {directory.version}; "
        "reload nats-server (SIGHUP) to apply it"
    )


# --- ledger and auditors ----------------------------------------------------------------------


@main.group("ledger")
def ledger_group() -> None:
    """The tamper-evident audit ledger."""


@ledger_group.command("run")
@click.option("--config", "config_path", type=PATH, required=True, help="ledger.toml")
def ledger_run(config_path: Path) -> None:
    """Run the ledger until SIGINT or SIGTERM; SIGHUP reloads its tokens and HTTPS
    certificate (docs/RUNBOOK.md, "Reloading")."""
    from broker.ledger import Ledger

    _run(
        lambda: Ledger.from_config_file(config_path),
        lambda ledger: {"part": "ledger", "url": ledger.url},
        lambda ledger: ledger.reload(config_path),
        config_path,
    )


@ledger_group.command("backup")
@click.option("--config", "config_path", type=PATH, required=True, help="ledger.toml")
@click.option("--to", "target", type=PATH, required=True, help="A new file (never overwritten).")
def ledger_backup(config_path: Path, target: Path) -> None:
    """Copy the ledger's database consistently, while it runs (`nrm audit verify --db` reads
    the copy)."""
    from broker.ledger import LedgerConfig, LedgerConfigError

    try:
        config = LedgerConfig.load(config_path)
    except LedgerConfigError as e:
        raise click.ClickException(str(e)) from e
    _backup(config.database, target, what="the ledger database")


@ledger_group.command("restore")
@click.option("--config", "config_path", type=PATH, required=True, help="ledger.toml")
@click.option("--from", "source", type=PATH, required=True, help="The backup to put back.")
@click.option(
    "--replaced-lost",
    is_flag=True,
    help="The ledger database is gone (a lost disk): restore without it.",
)
def ledger_restore(config_path: Path, source: Path, replaced_lost: bool) -> None:
    """Put a backup back as the ledger database, with a signed restore declaration (the
    ledger must be stopped; docs/RUNBOOK.md "Restore the ledger")."""
    import sqlite3

    from broker.ledger import LedgerConfig
    from broker.ledger_restore import restore_ledger
    from runtime.keydir import load_key_dir

    try:
        config = LedgerConfig.load(config_path)
        signer = load_key_dir(
            config.key_dir, passphrase=read_passphrase(file=config.passphrase_file)
        )
        result = restore_ledger(config, source, signer=signer, replaced_lost=replaced_lost)
    except (NrmError, ValueError) as e:  # a running ledger, config and restore errors too
        raise click.ClickException(str(e)) from e
    except (OSError, sqlite3.Error) as e:
        raise click.ClickException(f"could not restore: {e}") from e
    d = result.declaration
    before = "unknown (replaced database lost)" if d.previous_size is None else d.previous_size
    click.echo(
        f"restored the ledger to {d.restored_size} entries (before: {before}); "
        f"restore declaration {d.seq} signed"
    )
    if result.kept is not None:
        click.echo(f"the replaced database is kept as {result.kept}")
    click.echo("start the ledger: it reads the audit stream again; agents re-offer the rest")


@main.group("audit")
def audit_group() -> None:
    """Verify, query and export the audit ledger."""


def _allow_plain_http(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    ctx.meta["nrm.allow_plain_http"] = value


def _source(f: Callable[..., None]) -> Callable[..., None]:
    f = click.option(
        "--allow-plain-http",
        is_flag=True,
        expose_value=False,
        callback=_allow_plain_http,
        help="Accept an http:// --ledger beyond loopback (the token in clear): private "
        "networks only.",
    )(f)
    f = click.option(
        "--ledger", "ledger_url", default=None, help="Ledger URL (https:// beyond loopback)."
    )(f)
    f = click.option(
        "--ledger-ca",
        type=PATH,
        default=None,
        help="The CA of an https:// --ledger (else the system's CAs).",
    )(f)
    f = click.option("--db", "db", type=PATH, default=None, help="A copy of the ledger database.")(
        f
    )
    f = click.option(
        "--token-file",
        type=PATH,
        default=None,
        help="Auditor token for --ledger (else $NRM_AUDITOR_TOKEN).",
    )(f)
    return f


def _check_plain_http(url: str, *, what: str, allowed: bool) -> None:
    """A usage error for an http:// `url` beyond loopback unless --allow-plain-http."""
    try:
        check_plain_http_url(url, what=what, allowed=allowed, how="--allow-plain-http")
    except PlainHttpError as e:
        raise click.UsageError(str(e)) from e


def _bearer_token(token_file: Path | None, *, env: str) -> str:
    """The token in `token_file`, else in the environment variable `env` (a usage error if
    neither gives one)."""
    if token_file is not None:
        return token_file.read_text(encoding="utf-8").strip()
    token = os.environ.get(env, "")
    if not token:
        raise click.UsageError(f"give --token-file or set {env}")
    return token


def _load(
    ledger_url: str | None, ledger_ca: Path | None, db: Path | None, token_file: Path | None
) -> LedgerCopy:
    import sqlite3

    from keys.ledger_verify import LedgerVerificationError
    from runtime.migrate import DatabaseTooNewError

    from .audit import from_database, from_http

    if (ledger_url is None) == (db is None):
        raise click.UsageError("give exactly one of --ledger URL and --db FILE")
    if ledger_ca is not None and not (ledger_url or "").startswith("https://"):
        raise click.UsageError("--ledger-ca goes with an https:// --ledger URL")
    if ledger_url is not None:
        allowed = bool(click.get_current_context().meta.get("nrm.allow_plain_http"))
        _check_plain_http(ledger_url, what="--ledger", allowed=allowed)
    try:
        if db is not None:
            return from_database(db)
        assert ledger_url is not None
        token = _bearer_token(token_file, env="NRM_AUDITOR_TOKEN")
        return asyncio.run(from_http(ledger_url, token, ca_file=ledger_ca))
    except (aiohttp.ClientSSLError, aiohttp.ServerFingerprintMismatch) as e:
        raise click.ClickException(f"could not read the ledger: {e}") from e
    except (aiohttp.ClientConnectionError, TimeoutError) as e:
        raise Unreachable(
            f"could not reach the ledger at {ledger_url}: {type(e).__name__}: {e}"
        ) from e
    except (
        OSError,
        ValueError,  # runtime.tls.TlsFileError: a CA file that cannot be read
        sqlite3.Error,
        aiohttp.ClientError,
        LedgerVerificationError,
        DatabaseTooNewError,
    ) as e:
        raise click.ClickException(f"could not read the ledger: {e}") from e


@audit_group.command("verify")
@_source
@click.option(
    "--root",
    "roots",
    type=PATH,
    multiple=True,
    required=True,
    help="The pinned root.1.json; later roots come from the ledger (or repeat to add them).",
)
@click.option(
    "--ledger-identity",
    type=PATH,
    required=True,
    help="The ledger's identity.json (its checkpoint key).",
)
@click.option("--name", default="national", show_default=True, help="The ledger's name.")
@json_option
def audit_verify(
    ledger_url: str | None,
    ledger_ca: Path | None,
    db: Path | None,
    token_file: Path | None,
    roots: tuple[Path, ...],
    ledger_identity: Path,
    name: str,
    as_json: bool,
) -> None:
    """Recompute the tree, check every event's signature and the checkpoint; exit 3 naming
    the first bad index (--json: README "Scripting")."""
    import sqlite3

    from keys.ledger_verify import LedgerVerificationError

    from .audit import (
        checkpoint_of,
        describe_restore,
        restores_of,
        trusted_directories,
        verify_with_progress,
    )

    try:
        copy = _load(ledger_url, ledger_ca, db, token_file)
        checkpoint = checkpoint_of(copy, identity=ledger_identity, name=name)
        restores = restores_of(copy, identity=ledger_identity, name=name)
        directories = trusted_directories(copy, roots)
        count = verify_with_progress(
            copy, directories=directories, checkpoint=checkpoint, restores=restores
        )
    except LedgerVerificationError as e:
        if as_json:
            emit({"ok": False, "index": e.index, "failure": str(e)})
        click.echo(f"FAILED: {e}", err=True)
        sys.exit(EXIT_VERIFICATION_FAILED)
    except UntrustedInputError as e:  # a directory or root the ledger used does not verify
        raise VerificationFailed(f"FAILED: refused ({e.reason}): {e}") from e
    except sqlite3.Error as e:  # the database's rows are read while they are verified
        raise click.ClickException(f"could not read the ledger: {e}") from e
    except (OSError, ValueError, aiohttp.ClientError) as e:
        raise click.ClickException(str(e)) from e
    if as_json:
        emit(
            {
                "ok": True,
                "events": count,
                "checkpoint": {
                    "size": checkpoint.size,
                    "root": checkpoint.root.hex(),
                    "origin": checkpoint.origin,
                    "timestamp": checkpoint.timestamp,
                },
                "restores": [describe_restore(d) for d in restores],
            }
        )
        return
    click.echo(
        f"OK: {count} events verified; checkpoint size {checkpoint.size}, root "
        f"{checkpoint.root.hex()} signed by {checkpoint.origin} at "
        f"{datetime.fromtimestamp(checkpoint.timestamp, UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}"
    )
    for declaration in restores:
        click.echo(describe_restore(declaration))


_FILTERS = [
    click.option("--referral", default=None, help="Referral id."),
    click.option("--agency", default=None, help="Agency id (as actor or counterpart)."),
    click.option("--kind", default=None, help="Event kind, e.g. referral.sent."),
    click.option("--since", default=None, help="From this time (ISO 8601 or Unix seconds)."),
    click.option("--until", default=None, help="Before this time."),
]


def _filters(f: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(_FILTERS):
        f = option(f)
    return f


def _matching_events(f: Callable[..., None]) -> Callable[..., None]:
    """The options of a ledger source and of the filters; `f` is called with the list of
    matching events (metadata only) and its own options."""

    @functools.wraps(f)
    def command(
        ledger_url: str | None,
        ledger_ca: Path | None,
        db: Path | None,
        token_file: Path | None,
        referral: str | None,
        agency: str | None,
        kind: str | None,
        since: str | None,
        until: str | None,
        **rest: Any,
    ) -> None:
        from .audit import select

        copy = _load(ledger_url, ledger_ca, db, token_file)
        items = select(
            copy.rows,
            referral=referral,
            agency=agency,
            kind=kind,
            since=None if since is None else _parse_time(since),
            until=None if until is None else _parse_time(until),
        )
        f(list(items), **rest)

    return _source(_filters(command))


@audit_group.command("query")
@_matching_events
@json_option
def audit_query(items: list[dict[str, Any]], as_json: bool) -> None:
    """Print matching events as a table (metadata only; --json: {"events": [...], "count"},
    each event as `audit export` writes it)."""
    from .show import when

    if as_json:
        emit({"count": len(items), "events": items})
        return

    click.echo(
        f"{'index':>6}  {'time':<16}  {'agency':<14} {'kind':<20} {'counterpart':<14} "
        f"{'referral':<12} reason"
    )
    for i in items:
        click.echo(
            f"{i['index']:>6}  {when(i['time']):<16}  {i['agency']:<14} {i['kind']:<20} "
            f"{i['counterpart'] or '-':<14} {(i['referral_id'] or '-')[:12]:<12} "
            f"{i['reason'] or ''}"
        )
    click.echo(f"{len(items)} events")


@audit_group.command("export")
@_matching_events
@click.option(
    "--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True
)
def audit_export(items: list[dict[str, Any]], fmt: str) -> None:
    """Write matching events to standard output as JSON lines or CSV."""
    from .audit import render

    click.echo(render(items, fmt), nl=False)


def _read_client_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """`--ca-file`, `--token-file` (a token with the read scope) and `--allow-plain-http`:
    what a command reading the agent API as a client needs."""
    for option in reversed(
        (
            click.option(
                "--ca-file",
                type=PATH,
                default=None,
                help="The CA of https:// services (else the system's).",
            ),
            click.option(
                "--token-file",
                type=PATH,
                default=None,
                help="An API client token with the read scope (else $NRM_API_TOKEN).",
            ),
            click.option(
                "--allow-plain-http",
                is_flag=True,
                help="Accept http:// beyond loopback (tokens in clear): private networks only.",
            ),
        )
    ):
        f = option(f)
    return f


# --- subject access (nrm/subject_access.py) -------------------------------------------------


@main.command("subject-access")
@click.option(
    "--referral",
    "referral_ids",
    multiple=True,
    required=True,
    help="A referral id this agency sent about the person (repeat for each).",
)
@click.option("--config", "config_path", type=PATH, default=None, help="The agent's agent.toml.")
@click.option("--url", default=None, help="The agent API's URL (instead of --config).")
@_read_client_options
@click.option("--csv", "as_csv", is_flag=True, help="One CSV row per read, for the person.")
@json_option
def subject_access(
    referral_ids: tuple[str, ...],
    config_path: Path | None,
    url: str | None,
    ca_file: Path | None,
    token_file: Path | None,
    allow_plain_http: bool,
    as_csv: bool,
    as_json: bool,
) -> None:
    """What this agency sent about a person and every read of it the ledger recorded
    (GDPR Art 15): per referral and recipient the categories sent, when sent and
    delivered, its state, consent withdrawal and erasure, and each read. The case system
    gives the ids; what recipients passed on under their own referrals they answer for.
    Exits 3 if the ledger's records do not verify, 4 if the agent or the ledger cannot
    be reached (docs/RUNBOOK.md "Answer a subject access request")."""
    import re

    from . import subject_access as report

    if as_csv and as_json:
        raise click.UsageError("give at most one of --csv and --json")
    if not all(re.fullmatch(r"[0-9a-f]{32}", i) for i in referral_ids):
        raise click.BadParameter(
            "a referral id is 32 lowercase hex digits", param_hint="--referral"
        )
    if (url is None) == (config_path is None):
        raise click.UsageError("give exactly one of --config agent.toml and --url URL")
    if url is None:
        assert config_path is not None
        try:
            config = AgentConfig.load(config_path)
        except ConfigError as e:
            raise click.ClickException(str(e)) from e
        if config.api_port == 0:
            raise click.UsageError("agent.toml binds its API to port 0: give --url")
        url = report.api_url(config)
    _check_plain_http(url, what="--url", allowed=allow_plain_http)
    token = _bearer_token(token_file, env="NRM_API_TOKEN")
    answer = asyncio.run(
        report.fetch(url, token, list(dict.fromkeys(referral_ids)), ca_file=ca_file)
    )
    if as_json:
        emit(answer)
    elif as_csv:
        click.echo(report.csv_text(answer), nl=False)
    else:
        click.echo(report.text(answer))


# --- the rapporteur (nrm/rapporteur.py) ----------------------------------------------------


@main.group()
def rapporteur() -> None:
    """The national rapporteur's statistics (PROTOCOL §8.11)."""


@rapporteur.command("report")
@click.option("--from", "first", required=True, help="The first month, YYYY-MM.")
@click.option("--to", "last", required=True, help="The last month, YYYY-MM.")
@click.option("--url", required=True, help="The rapporteur agent API's URL.")
@click.option("--ledger", "ledger_url", required=True, help="The ledger's URL.")
@_read_client_options
@click.option(
    "--ledger-token-file",
    type=PATH,
    default=None,
    help="A ledger token of scope auditor (else $NRM_LEDGER_TOKEN).",
)
@click.option("--k", "k", type=click.IntRange(2, 1000), default=None,
              help="No published cell below it: statistics.k or more (else it).")  # fmt: skip
@click.option("--round-to", type=click.IntRange(1, 1000), default=None,
              help="The policy's statistics.round_to or more (else it).")  # fmt: skip
@click.option("--csv", "as_csv", is_flag=True, help="The released cells as CSV.")
@click.option(
    "--diagnostics",
    "diagnostics_file",
    type=PATH,
    default=None,
    help="Write the cross-check (each contribution, its counts where they differ from the "
    "ledger's, the missing months) to this new file, JSON, mode 0600: internal, exact small "
    "counts, never to publish.",
)
@click.option(
    "--publish",
    "key_dir",
    type=PATH,
    default=None,
    help="Sign the report with the rapporteur's keys in this folder and post it to the ledger "
    "(PROTOCOL §8.12).",
)
@click.option("--passphrase-file", type=PATH, default=None, help="Else $NRM_PASSPHRASE.")
@click.option(
    "--rapporteur-token-file",
    type=PATH,
    default=None,
    help="With --publish: a ledger token of scope rapporteur (else $NRM_RAPPORTEUR_TOKEN).",
)
@json_option
def rapporteur_report(
    first: str,
    last: str,
    url: str,
    ledger_url: str,
    ca_file: Path | None,
    token_file: Path | None,
    ledger_token_file: Path | None,
    k: int | None,
    round_to: int | None,
    allow_plain_http: bool,
    as_csv: bool,
    diagnostics_file: Path | None,
    key_dir: Path | None,
    passphrase_file: Path | None,
    rapporteur_token_file: Path | None,
    as_json: bool,
) -> None:
    """The contributions of the months FROM to TO (one calendar month, quarter or year),
    each cross-checked against the ledger's
    identification decisions (one that does not add up is left out and listed,
    contribution-mismatch), summed and released by stage, outcome, sex, age group and form
    of exploitation with every marginal under disclosure control (k and round_to: the
    national policy's, as the rapporteur's agent trusts it, or stricter ones given). With --publish
    the report is signed (also one releasing nothing) and posted to the ledger, which
    verifies and serves it. The output (text, --json, --csv) and the signed report carry
    only the released cells; the cross-check's verdicts go to stderr, its counts only to
    --diagnostics FILE. Exits 1 after the report, with no cell, when a cell below k cannot
    be hidden."""
    import re

    from runtime.keydir import load_key_dir

    from . import rapporteur as report

    if as_csv and as_json:
        raise click.UsageError("give at most one of --csv and --json")
    for value, hint in ((first, "--from"), (last, "--to")):
        if not re.fullmatch(r"[0-9]{4}-(0[1-9]|1[0-2])", value):
            raise click.BadParameter("a month is YYYY-MM", param_hint=hint)
    if last < first:
        raise click.UsageError("--to is before --from")
    if report.release_period(first, last) is None:
        raise click.UsageError(
            "--from and --to must be one calendar month, quarter or year (releases over "
            "overlapping months would give their difference by subtraction)"
        )
    _check_plain_http(url, what="--url", allowed=allow_plain_http)
    _check_plain_http(ledger_url, what="--ledger", allowed=allow_plain_http)
    signer = None
    if key_dir is not None:
        publish_token = _bearer_token(rapporteur_token_file, env="NRM_RAPPORTEUR_TOKEN")
        try:
            signer = load_key_dir(key_dir, passphrase=read_passphrase(file=passphrase_file))
        except KeyFileError as e:
            raise click.ClickException(str(e)) from e
    held, entries, policy, hashes = asyncio.run(
        report.fetch(
            url=url,
            token=_bearer_token(token_file, env="NRM_API_TOKEN"),
            ledger_url=ledger_url,
            ledger_token=_bearer_token(ledger_token_file, env="NRM_LEDGER_TOKEN"),
            periods=report.months(first, last),
            ca_file=ca_file,
        )
    )
    for given, floor, hint in ((k, policy.k, "--k"), (round_to, policy.round_to, "--round-to")):
        if given is not None and given < floor:
            raise click.BadParameter(
                f"below the national policy's {floor}: a release may be stricter, never laxer",
                param_hint=hint,
            )
    in_range = report.decided_in(entries, first, last)
    answer = report.build(
        held,
        in_range,
        k=policy.k if k is None else k,
        round_to=policy.round_to if round_to is None else round_to,
        now=clock.now(),
        grace_days=policy.contribution_grace_days,
        hashes=hashes,
    )
    if diagnostics_file is not None:
        with expected_errors():
            doc = json.dumps(report.diagnostics(answer), sort_keys=True, indent=2)
            write_new_file(diagnostics_file, doc.encode("utf-8"))
    if verdicts := report.diagnostics_text(answer):
        click.echo(f"cross-check (internal, not for publication):\n{verdicts}", err=True)
    published = report.publication(answer, first=first, last=last)
    if signer is not None:
        data = report.signed(answer, first=first, last=last, keys=signer, at=clock.now())
        published["report_id"] = asyncio.run(
            report.publish(ledger_url=ledger_url, token=publish_token, data=data, ca_file=ca_file)
        )
    if as_json:
        emit(published)
    elif as_csv:
        click.echo(report.csv_text(published), nl=False)
    else:
        click.echo(report.text(published))
        if signer is not None:
            click.echo(f"published to the ledger as report {published['report_id']}")
    if not answer["released"]:
        raise click.ClickException("nothing released: a cell below k cannot be hidden")


# --- demo ----------------------------------------------------------------------------------


@main.command()
@click.option("--keep", is_flag=True, help="Leave everything running; print URLs and tokens.")
@click.option("--dir", "workdir", type=PATH, default=None, help="Work in this new directory.")
def demo(keep: bool, workdir: Path | None) -> None:
    """A bus and five agencies on this machine; one person's way through the NRM."""
    from .demo import run

    sys.exit(run(keep=keep, workdir=workdir))


# --- configuration files (nrm/config_cli.py) ---------------------------------------------------

agent.add_command(agent_config_command)
ledger_group.add_command(ledger_config_command)
cluster_group.add_command(seed_authorization_command)

document_exit_codes(main)
