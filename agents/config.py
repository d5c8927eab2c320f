"""The agent's configuration file (TOML), parsed into one frozen object.

    agency = "police"
    name = "Metropolitan Police anti-trafficking unit"
    key_dir = "keys/police"                 # agency.key + identity.json
    passphrase_file = "police.pass"         # optional; else $NRM_PASSPHRASE
    nats_urls = ["tls://nats-1.example:4222", "tls://nats-2.example:4222"]
    database = "police.db"

    [nats_tls]                              # optional: runtime/endpoint.py
    ca_file = "bus-ca.pem"                  # the CAs of the servers (else the system's)
    cert_file = "police-bus.pem"            # this agent's client certificate (mutual TLS)
    key_file = "police-bus.key"
    server_name = "nats.example"            # if the certificates name another host

    [api]
    bind = "127.0.0.1:8081"
    tls_cert = "api.pem"                    # optional, both or neither: serve HTTPS only
    tls_key = "api.key"
    [[api.clients]]                         # one per agency system; only the token's hash
    name = "case-management"
    token_sha256 = "<hex>"
    scopes = ["submit", "read", "act"]

    trust_root = "root.json"                # the pinned root handed over by administrators
    trust_cache = "trust"                   # verified roots and directory, kept across restarts

    [ledger]                                # optional: check this agency's audit events
    url = "https://ledger.example:8090"    # http:// on loopback only (or allow_plain_http)
    ca_file = "ledger-ca.pem"               # optional: the CA of an https ledger
    name = "national"                       # the ledger's name: origin <name>/nrm-ledger
    identity = "ledger-identity.json"       # the ledger's public identity
    token_file = "ledger.token"             # its ledger token (scope agency:<id>, §9.0)

    [[webhooks]]                            # optional: where to notify the agency system
    url = "http://127.0.0.1:9000/nrm-events"
    secret_file = "webhook.secret"          # HMAC-SHA256 key, 16+ bytes
    ca_file = "case-system-ca.pem"          # optional: the CA of an https webhook URL

    [retention]                             # optional: agents.retention.RetentionSchedule
    delivered_envelopes_days = 30           # defaults shown; docs/RUNBOOK.md "Retention"
    idempotency_keys_days = 7
    webhook_bodies_days = 30
    history_days = 2190
    closed_referrals_days = 2190
    purge_interval_seconds = 3600
    purge_batch = 500

    [limits]                                # optional overrides of keys.Limits
    ack_wait_seconds = 10
    expiry_warning_seconds = 604800         # /healthz warns this long before expiry
    access_coalesce_seconds = 60            # reads of one record by one client within this
                                            # long: one record.accessed event with a count

Plain HTTP beyond loopback (an `[api] bind` other than 127.0.0.0/8, ::1 or localhost without
`tls_cert`, an `http://` `[ledger] url` to another host) sends bearer tokens in clear and is
refused unless the top level says `allow_plain_http = true` (a private network only).

Relative paths are relative to the configuration file; a setting not listed here is an
error (runtime/config.py). The single `nats_url` of
earlier versions is gone: `nats_urls` takes one URL as well.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from keys import DEFAULT_LIMITS, Limits, check_agency_id
from keys.audit import CLIENT_NAME
from keys.limits import (
    MAX_ACCESS_COALESCE_SECONDS,
    MAX_CAPACITY_LIFETIME_SECONDS,
    MAX_CATALOGUE_SERVICES,
)
from runtime import http
from runtime.config import ConfigError as ConfigError
from runtime.config import Table, bind_address, load_toml, path_in
from runtime.endpoint import BusEndpoint, EndpointError, endpoint_from_config
from runtime.tls import HttpsFiles, check_plain_http, check_plain_http_url, https_files

from .ledger_check import LedgerSettings
from .retention import RetentionSchedule
from .webhooks import WebhookTarget

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
SCOPES = frozenset({"submit", "read", "act", "metrics", "decide", "confirm"})


@dataclass(frozen=True, slots=True)
class ApiClient:
    name: str
    token_sha256: bytes
    #: What the client may do: submit (referrals, consents), read, act (transitions,
    #: withdrawals), metrics (GET /metrics only: for a Prometheus client; read reads it
    #: too), decide (a competent authority's cases and decisions), confirm (confirm or
    #: refuse another client's break-glass referral; never with submit, refused at load).
    #: Listed explicitly in the configuration; there is no default.
    scopes: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class AgentConfig:
    agency: str
    key_dir: Path
    #: Where the bus is and how to reach it (TLS): `nats_urls` and `[nats_tls]`.
    bus: BusEndpoint
    database: Path
    api_host: str
    api_port: int
    clients: tuple[ApiClient, ...]
    trust_root: Path
    trust_cache: Path
    passphrase_file: Path | None = None
    limits: Limits = field(default=DEFAULT_LIMITS)
    ledger: LedgerSettings | None = None
    webhooks: tuple[WebhookTarget, ...] = ()
    retention: RetentionSchedule = field(default=RetentionSchedule())
    #: `[api] tls_cert` and `tls_key`: the API serves HTTPS only (runtime/tls.py).
    api_tls: HttpsFiles | None = None

    @classmethod
    def load(cls, path: Path) -> AgentConfig:
        return cls.from_dict(load_toml(path), base=path.parent)

    @classmethod
    def from_dict(cls, doc: dict[str, Any], *, base: Path) -> AgentConfig:
        """Read `doc` strictly: a setting this version does not read is an error."""
        table = Table(doc)
        table.allow("name")  # informative: the directory holds the agency's name

        def path_of(value: Any, key: str) -> Path:
            return path_in(value, base=base, key=key)

        try:
            agency = check_agency_id(table["agency"])
            api = table.table("api", required=True)
            host, port = bind_address(api["bind"], key="api.bind")
            if "nats_url" in table:
                raise ConfigError("nats_url is no longer read: give nats_urls (one URL or more)")
            bus = endpoint_from_config(table, base=base)
            try:
                bus.connect_options()  # the TLS files are read now: named at once
            except EndpointError as e:
                raise ConfigError(f"nats_tls: {e}") from e
            clients = tuple(_client(c) for c in api.tables("clients"))
            _no_repeated_tokens(clients)
            config = cls(
                agency=agency,
                key_dir=path_of(table["key_dir"], "key_dir"),
                bus=bus,
                database=path_of(table["database"], "database"),
                api_host=host,
                api_port=port,
                clients=clients,
                trust_root=path_of(table["trust_root"], "trust_root"),
                trust_cache=path_of(table.get("trust_cache", "trust"), "trust_cache"),
                passphrase_file=(
                    path_of(table["passphrase_file"], "passphrase_file")
                    if "passphrase_file" in table
                    else None
                ),
                limits=_limits(table.table("limits")),
                retention=RetentionSchedule.from_dict(table.table("retention")),
                ledger=(
                    LedgerSettings.from_dict(table.table("ledger"), base=base)
                    if "ledger" in table
                    else None
                ),
                webhooks=tuple(
                    WebhookTarget(
                        url=str(w["url"]),
                        secret=path_of(w["secret_file"], "webhooks.secret_file")
                        .read_bytes()
                        .strip(),
                        ca_file=(
                            path_of(w["ca_file"], "webhooks.ca_file") if "ca_file" in w else None
                        ),
                    )
                    for w in table.tables("webhooks")
                ),
                api_tls=https_files(api, base=base, prefix="api."),
            )
            allowed = table.get("allow_plain_http", False)
            if not isinstance(allowed, bool):
                raise ConfigError("allow_plain_http must be true or false")
            table.finish()
            if config.api_tls is None:
                check_plain_http(host, what="api.bind without api.tls_cert", allowed=allowed)
            if config.ledger is not None:
                check_plain_http_url(config.ledger.url, what="ledger.url", allowed=allowed)
            for target in config.webhooks:
                target.ssl_context()  # a CA file that cannot be read is named at once
            return config
        except KeyError as e:
            raise ConfigError(f"missing setting {e.args[0]!r}") from e
        except OSError as e:
            raise ConfigError(f"cannot read a file the configuration names: {e}") from e
        except (TypeError, ValueError) as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(str(e)) from e


def _limits(doc: Any) -> Limits:
    """`[limits]` overrides single fields of `keys.Limits`; unknown names are an error."""
    if not isinstance(doc, dict):
        raise ConfigError("[limits] must be a table")
    known = {f.name: f.type for f in fields(Limits)}
    for name, value in doc.items():
        if name not in known:
            raise ConfigError(f"unknown limit {name!r}")
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ConfigError(f"limit {name} must be a positive number")
        if known[name] in (int, "int") and not isinstance(value, int):
            raise ConfigError(f"limit {name} must be an integer")
    coalesce = doc.get("access_coalesce_seconds", 0)
    if coalesce > MAX_ACCESS_COALESCE_SECONDS:
        raise ConfigError(
            f"limit access_coalesce_seconds is at most {MAX_ACCESS_COALESCE_SECONDS} (an owner "
            "learns of reads of its referrals no later than that)"
        )
    if doc.get("capacity_lifetime_seconds", 0) > MAX_CAPACITY_LIFETIME_SECONDS:
        raise ConfigError(
            f"limit capacity_lifetime_seconds is at most {MAX_CAPACITY_LIFETIME_SECONDS} (a "
            "capacity record lives at most an hour, docs/PROTOCOL.md §8.8)"
        )
    if doc.get("max_catalogue_services", 0) > MAX_CATALOGUE_SERVICES:
        raise ConfigError(
            f"limit max_catalogue_services is at most {MAX_CATALOGUE_SERVICES} (what a "
            "catalogue may list, docs/PROTOCOL.md §8.8)"
        )
    return replace(DEFAULT_LIMITS, **doc)


def _client(doc: Any) -> ApiClient:
    if not isinstance(doc, dict):
        raise ConfigError("each [[api.clients]] entry must be a table")
    digest = str(doc.get("token_sha256", ""))
    if not _HEX64.fullmatch(digest):
        raise ConfigError("api.clients.token_sha256 must be 64 lowercase hex characters")
    scopes = doc.get("scopes")
    if not isinstance(scopes, list) or not scopes or not set(scopes) <= SCOPES:
        raise ConfigError(f"api.clients.scopes must list some of {sorted(SCOPES)}")
    name = doc.get("name")
    if not (isinstance(name, str) and CLIENT_NAME.fullmatch(name)):
        raise ConfigError(
            "api.clients.name must be 1-40 characters of a-z, 0-9 and -, starting with a"
            " letter: the name of a system (it is written into the audit events of its"
            " reads, PROTOCOL.md §9.0), never a person's"
        )
    if {"confirm", "submit"} <= set(scopes):
        raise ConfigError(
            f"api.clients {name!r} has both the confirm and the submit scope: a break-glass"
            " referral is confirmed by another system than the one that submits (PROTOCOL.md"
            " §8.2 step 2); give the confirmer a client of its own"
        )
    return ApiClient(name=name, token_sha256=bytes.fromhex(digest), scopes=frozenset(scopes))


def _no_repeated_tokens(clients: tuple[ApiClient, ...]) -> None:
    """One token, one client: the same digest twice (for two clients, or the same client
    with other scopes) is refused, naming both entries; its digest is never shown. Names
    are distinct too: access records tell clients apart by name."""
    seen: dict[bytes, int] = {}
    for i, client in enumerate(clients):
        if client.token_sha256 in seen:
            first = seen[client.token_sha256]
            raise ConfigError(
                f"api.clients[{first}] ({clients[first].name!r}) and api.clients[{i}] "
                f"({client.name!r}) have the same token_sha256: give each client its own token"
            )
        seen[client.token_sha256] = i
    names: dict[str, int] = {}
    for i, client in enumerate(clients):
        if client.name in names:
            raise ConfigError(
                f"api.clients[{names[client.name]}] and api.clients[{i}] have the same name "
                f"{client.name!r}: each system its own (its reads are recorded by name)"
            )
        names[client.name] = i


def token_digest(token: str) -> str:
    """What goes into `token_sha256` for a bearer token."""
    return http.token_digest(token).hex()
