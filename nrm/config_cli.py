"""`nrm agent config` and `nrm ledger config`: write a complete agent.toml / ledger.toml
(and `nrm cluster seed-authorization`: a node's first authorization, no agency in it).

Both write a new file (0600) and refuse to overwrite one (exit 1). Paths are written as
given and, like every path in these files, a relative one is relative to the folder of the
file written (`--out`); they need not exist where the command runs (a file made for a
container names the container's paths). Tokens are the exception: `--client NAME:SCOPES`,
`--auditor NAME`, `--agency-token AGENCY`, `--metrics-token NAME` and `--rapporteur-token
NAME` keep each bearer token
in `NAME.token` beside `--out` (read if it is there, else made, 0600) and write only its
SHA-256 into the configuration.
A malformed option is a usage error (exit 2) naming it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from agents.config import SCOPES
from broker.authz import authorization_block
from keys import check_agency_id
from keys.checkpoint import ledger_origin
from keys.subjects import AGENCY_ID_PATTERN
from runtime.config import ConfigError, bind_address
from runtime.endpoint import BusEndpoint
from runtime.files import write_new_file
from runtime.tls import PlainHttpError, check_plain_http, check_plain_http_url

from . import admin
from .bus_options import bus_endpoint_options
from .configs import (
    ApiClientSpec,
    HttpTls,
    LedgerLink,
    agent_config,
    client_token,
    digest_of,
    ledger_config,
    write_config,
)

PATH = click.Path(path_type=Path)
F = TypeVar("F", bound=Callable[..., Any])


def _http_tls_options(f: F) -> F:
    f = click.option(
        "--http-tls-key",
        default=None,
        metavar="FILE",
        help="Its private key (PEM, 0600); with --http-tls-cert.",
    )(f)
    return click.option(
        "--http-tls-cert",
        default=None,
        metavar="FILE",
        help="Serve the HTTP API over HTTPS only, with this certificate chain (PEM).",
    )(f)


def _http_tls(cert: str | None, key: str | None) -> HttpTls | None:
    if (cert is None) != (key is None):
        raise click.UsageError("--http-tls-cert and --http-tls-key go together")
    return None if cert is None or key is None else HttpTls(cert_file=cert, key_file=key)


def _plain_http_option(f: F) -> F:
    return click.option(
        "--allow-plain-http",
        is_flag=True,
        help="Accept plain HTTP beyond loopback (bearer tokens in clear): a private network "
        "only; else such a file is refused (allow_plain_http = true).",
    )(f)


def _check_plain_http(host_port: str, url: str | None, *, tls: bool, allowed: bool) -> None:
    """Refuse what the service would refuse at start: an HTTP bind beyond loopback without
    TLS, an http:// URL to another host, unless --allow-plain-http."""
    how = "--allow-plain-http"
    try:
        if not tls:
            host, _ = bind_address(host_port, key="bind")
            check_plain_http(host, what="the API without --http-tls-cert", allowed=allowed, how=how)
        if url is not None:
            check_plain_http_url(url, what="--ledger-url", allowed=allowed, how=how)
    except PlainHttpError as e:
        raise click.UsageError(str(e)) from e


def _check_bind(value: str, option: str) -> str:
    try:
        bind_address(value, key=option)
    except ConfigError as e:
        raise click.BadParameter(str(e), param_hint=option) from e
    return value


def _check_ledger_name(value: str, option: str) -> str:
    try:
        ledger_origin(value)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint=option) from e
    return value


def _write(out: Path, doc: dict[str, Any], *, header: str) -> None:
    try:
        write_config(out, doc, header=header)
    except FileExistsError as e:
        raise click.ClickException(str(e)) from e
    except OSError as e:
        raise click.ClickException(f"cannot write {out}: {e.strerror}") from e
    click.echo(f"wrote {out}")


def _token(out: Path, name: str, option: str) -> str:
    """The SHA-256 of the token in `NAME.token` beside `out` (made if missing)."""
    if not name or "/" in name or name.startswith("."):
        raise click.BadParameter(f"{name!r} is not a usable name", param_hint=option)
    path = out.parent / f"{name}.token"
    try:
        digest = digest_of(client_token(path))
    except (OSError, ValueError) as e:
        raise click.ClickException(f"{path}: {e}") from e
    click.echo(f"token for {name}: {path}")
    return digest


@click.command("config")
@click.option("--out", type=PATH, required=True, help="The agent.toml to write (a new file).")
@click.option("--agency", required=True, help="This agency's id, as in the directory.")
@click.option("--name", default=None, help="The agency's name (informative).")
@click.option("--key-dir", default="keys", show_default=True, help="agency.key + identity.json.")
@click.option(
    "--passphrase-file",
    default=None,
    metavar="FILE",
    help="The key file's passphrase (else $NRM_PASSPHRASE when the agent starts).",
)
@bus_endpoint_options()
@click.option("--database", default="agent.db", show_default=True, help="SQLite database.")
@click.option(
    "--api-bind", default="127.0.0.1:8081", show_default=True, help="HOST:PORT of the API."
)
@_http_tls_options
@click.option(
    "--trust-root", default="root.json", show_default=True, help="The pinned root.1.json."
)
@click.option(
    "--trust-cache", default="trust", show_default=True, help="Verified roots and directory."
)
@click.option(
    "--client",
    "clients",
    multiple=True,
    metavar="NAME:SCOPES",
    help="An API client and its scopes, e.g. case-management:submit,read,act (repeat); "
    "its token is kept in NAME.token beside --out.",
)
@click.option("--ledger-url", default=None, help="The audit ledger to check, http(s)://...")
@click.option("--ledger-name", default=None, help="Its name (origin <name>/nrm-ledger).")
@click.option("--ledger-identity", default=None, metavar="FILE", help="Its identity.json.")
@click.option(
    "--ledger-token-file",
    default=None,
    metavar="FILE",
    help="This agency's ledger token (scope agency:<id>: `nrm ledger config --agency-token`).",
)
@click.option("--ledger-ca", default=None, metavar="FILE", help="CAs for an https:// ledger (PEM).")
@click.option("--webhook", "webhook_url", default=None, help="Notify the agency system here.")
@click.option(
    "--webhook-secret-file", default=None, metavar="FILE", help="Its HMAC key (16+ bytes)."
)
@_plain_http_option
def agent_config_command(
    out: Path,
    agency: str,
    name: str | None,
    key_dir: str,
    passphrase_file: str | None,
    endpoint: BusEndpoint,
    database: str,
    api_bind: str,
    http_tls_cert: str | None,
    http_tls_key: str | None,
    trust_root: str,
    trust_cache: str,
    clients: tuple[str, ...],
    ledger_url: str | None,
    ledger_name: str | None,
    ledger_identity: str | None,
    ledger_token_file: str | None,
    ledger_ca: str | None,
    webhook_url: str | None,
    webhook_secret_file: str | None,
    allow_plain_http: bool,
) -> None:
    """Write a complete agent.toml (0600; refuses to overwrite).

    Paths are written as given; a relative one is relative to the folder of --out when the
    agent reads the file. Options left out are left out of the file (the agent's defaults).
    """
    try:
        check_agency_id(agency)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--agency") from e
    _check_bind(api_bind, "--api-bind")
    http_tls = _http_tls(http_tls_cert, http_tls_key)
    _check_plain_http(api_bind, ledger_url, tls=http_tls is not None, allowed=allow_plain_http)
    ledger_given = [ledger_url, ledger_name, ledger_identity, ledger_token_file]
    if any(v is not None for v in [*ledger_given, ledger_ca]) and None in ledger_given:
        raise click.UsageError(
            "--ledger-url, --ledger-name, --ledger-identity and --ledger-token-file go together"
        )
    if (webhook_url is None) != (webhook_secret_file is None):
        raise click.UsageError("--webhook and --webhook-secret-file go together")
    specs: list[tuple[str, tuple[str, ...]]] = []
    for item in clients:
        client, _, scopes = item.partition(":")
        wanted = tuple(s for s in scopes.split(",") if s)
        if not client or not wanted or not set(wanted) <= SCOPES:
            raise click.BadParameter(
                f"{item!r} is not NAME:SCOPES with scopes among {', '.join(sorted(SCOPES))}",
                param_hint="--client",
            )
        if {"confirm", "submit"} <= set(wanted):  # the agent refuses it too (agents/config.py)
            raise click.BadParameter(
                f"{client!r} would both submit and confirm break-glass referrals: give the "
                "confirmer a client of its own (PROTOCOL.md §8.2 step 2)",
                param_hint="--client",
            )
        specs.append((client, wanted))
    if ledger_token_file is not None:
        ledger_token = out.parent / ledger_token_file  # an absolute one stays as it is
        for client, _ in specs:
            if os.path.abspath(out.parent / f"{client}.token") == os.path.abspath(ledger_token):
                raise click.BadParameter(
                    f"{client!r} would keep its token in {ledger_token}, the ledger's token "
                    "(--ledger-token-file): name the client otherwise",
                    param_hint="--client",
                )
    if out.exists():  # before any token file is made
        raise click.ClickException(f"{out} already exists; refusing to overwrite")
    ledger = None
    if ledger_url is not None and ledger_name is not None:
        assert ledger_identity is not None and ledger_token_file is not None
        if not ledger_url.startswith(("http://", "https://")):
            raise click.BadParameter("an http:// or https:// URL", param_hint="--ledger-url")
        ledger = LedgerLink(
            url=ledger_url,
            name=_check_ledger_name(ledger_name, "--ledger-name"),
            identity=ledger_identity,
            token_file=ledger_token_file,
            ca_file=ledger_ca,
        )
    doc = agent_config(
        agency=agency,
        name=name,
        key_dir=key_dir,
        passphrase_file=passphrase_file,
        endpoint=endpoint,
        database=database,
        api_bind=api_bind,
        trust_root=trust_root,
        trust_cache=trust_cache,
        http_tls=http_tls,
        clients=[ApiClientSpec(c, _token(out, c, "--client"), scopes) for c, scopes in specs],
        ledger=ledger,
        webhooks=[] if webhook_url is None else [(webhook_url, str(webhook_secret_file))],
        allow_plain_http=allow_plain_http,
    )
    _write(out, doc, header=f"agent.toml for {agency}, written by `nrm agent config`.")


@click.command("config")
@click.option("--out", type=PATH, required=True, help="The ledger.toml to write (a new file).")
@click.option("--name", required=True, help="DNS-like name; origin <name>/nrm-ledger.")
@click.option(
    "--key-dir",
    default="keys",
    show_default=True,
    help="The ledger's own keys: it signs checkpoints and logs in to the bus with them.",
)
@click.option(
    "--passphrase-file",
    default=None,
    metavar="FILE",
    help="For its key file (else $NRM_PASSPHRASE when the ledger starts).",
)
@bus_endpoint_options()
@click.option(
    "--trust-root", default="root.json", show_default=True, help="The pinned root.1.json."
)
@click.option("--database", default="ledger.db", show_default=True, help="SQLite database.")
@click.option("--bind", default="127.0.0.1:8090", show_default=True, help="HOST:PORT of the API.")
@_http_tls_options
@click.option(
    "--auditor",
    "auditors",
    multiple=True,
    metavar="NAME",
    help="An auditor that reads the whole ledger (repeat); its token is kept in NAME.token "
    "beside --out.",
)
@click.option(
    "--agency-token",
    "agency_tokens",
    multiple=True,
    metavar="AGENCY",
    help="An agency's agent, whose token reads only that agency's events and the proofs its "
    "ledger check needs (scope agency:AGENCY; repeat); kept in AGENCY.token beside --out.",
)
@click.option(
    "--metrics-token",
    "metrics_tokens",
    multiple=True,
    metavar="NAME",
    help="A metrics reader whose token reads no /v1 route (scope metrics; repeat); kept in "
    "NAME.token beside --out.",
)
@click.option(
    "--rapporteur-token",
    "rapporteur_tokens",
    multiple=True,
    metavar="NAME",
    help="A rapporteur whose token only posts signed reports (scope rapporteur, POST "
    "/v1/reports; repeat); kept in NAME.token beside --out.",
)
@click.option(
    "--checkpoint-interval",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="Seconds between signed checkpoints (default 2).",
)
@click.option(
    "--suppress-below",
    type=click.IntRange(1),
    default=None,
    help="Statistics cells under this count are suppressed (default 5).",
)
@click.option(
    "--expiry-warning-days",
    type=click.FloatRange(0),
    default=None,
    help="/healthz warns this long before expiry (default 7).",
)
@_plain_http_option
def ledger_config_command(
    out: Path,
    name: str,
    key_dir: str,
    passphrase_file: str | None,
    endpoint: BusEndpoint,
    trust_root: str,
    database: str,
    bind: str,
    http_tls_cert: str | None,
    http_tls_key: str | None,
    auditors: tuple[str, ...],
    agency_tokens: tuple[str, ...],
    metrics_tokens: tuple[str, ...],
    rapporteur_tokens: tuple[str, ...],
    checkpoint_interval: float | None,
    suppress_below: int | None,
    expiry_warning_days: float | None,
    allow_plain_http: bool,
) -> None:
    """Write a complete ledger.toml (0600; refuses to overwrite).

    Paths are written as given; a relative one is relative to the folder of --out when the
    ledger reads the file. Options left out are left out of the file (the ledger's defaults).
    """
    _check_ledger_name(name, "--name")
    _check_bind(bind, "--bind")
    http_tls = _http_tls(http_tls_cert, http_tls_key)
    _check_plain_http(bind, None, tls=http_tls is not None, allowed=allow_plain_http)
    names = [*auditors, *agency_tokens, *metrics_tokens, *rapporteur_tokens]
    if len(set(names)) != len(names):
        raise click.BadParameter(
            "each name once (each has its own NAME.token)",
            param_hint="--auditor/--agency-token/--metrics-token/--rapporteur-token",
        )
    for agency in agency_tokens:
        if not AGENCY_ID_PATTERN.fullmatch(agency):
            raise click.BadParameter(f"{agency!r} is not an agency id", param_hint="--agency-token")
    if out.exists():
        raise click.ClickException(f"{out} already exists; refusing to overwrite")
    doc = ledger_config(
        name=name,
        key_dir=key_dir,
        passphrase_file=passphrase_file,
        endpoint=endpoint,
        trust_root=trust_root,
        database=database,
        bind=bind,
        http_tls=http_tls,
        tokens=[  # an auditor as `[[tokens]] scope = "auditor"`, not the older [[auditors]]
            *((a, _token(out, a, "--auditor"), "auditor") for a in auditors),
            *((a, _token(out, a, "--agency-token"), f"agency:{a}") for a in agency_tokens),
            *((m, _token(out, m, "--metrics-token"), "metrics") for m in metrics_tokens),
            *((r, _token(out, r, "--rapporteur-token"), "rapporteur") for r in rapporteur_tokens),
        ],
        checkpoint_interval_seconds=checkpoint_interval,
        suppress_below=suppress_below,
        expiry_warning_days=expiry_warning_days,
        allow_plain_http=allow_plain_http,
    )
    _write(out, doc, header=f"ledger.toml for {name}, written by `nrm ledger config`.")


@click.command("seed-authorization")
@click.option(
    "--operator-identity",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="The bus operator's identity.json (its NATS key gets operator rights).",
)
@click.option(
    "--authority-identity",
    "authority_identities",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    multiple=True,
    help="A bus authority's identity.json (repeat, one per node): it must log in to apply "
    "the first directory.",
)
@click.option(
    "--ledger-identity",
    "ledger_identities",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    multiple=True,
    help="The ledger's identity.json (repeat): it may read the audit stream at once.",
)
@click.option("--out", type=PATH, required=True, help="The authorization include to write.")
def seed_authorization_command(
    operator_identity: Path,
    authority_identities: tuple[Path, ...],
    ledger_identities: tuple[Path, ...],
    out: Path,
) -> None:
    """Write an authorization include that admits only the bus operator, the bus
    authorities and the ledger: no agency.

    A node started with it lets no agency in until its `nrm bus authority` has applied a
    directory verified from the pinned root: a recreated node never admits an agency that
    was removed after the cluster's files were generated."""
    try:
        services = admin.service_keys(
            operators=[operator_identity],
            ledgers=ledger_identities,
            authorities=authority_identities,
        )
    except admin.AdminError as e:
        raise click.ClickException(str(e)) from e
    block = authorization_block(
        agencies=[],
        auditors=[],
        operators=services.operators,
        ledgers=services.ledgers,
        authorities=services.authorities,
    )
    try:
        write_new_file(out, block.encode())
    except FileExistsError as e:
        raise click.ClickException(f"{out} exists: not overwritten") from e
    click.echo(f"wrote {out} (the operator, the ledger and the bus authorities only)")
