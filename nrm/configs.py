"""agent.toml and ledger.toml from settings: what `nrm agent config`, `nrm ledger config` and
the sandbox (`nrm demo`, the tests) write, so every generated file has one shape.

Each builder returns the document as a dict for `runtime.tomlfile.dumps`; an optional
setting that is not given (None) is left out of the file, so the file holds only what the
operator chose and what the service needs. Paths are written as given: a relative path is
relative to the configuration file's folder when the service reads it (runtime/config.py),
so a file made for a container or another machine may name paths that do not exist here.

Formats: agents/config.py (AgentConfig) and broker/ledger.py (LedgerConfig). The HTTP TLS
settings (`[api] tls_cert`/`tls_key`, the ledger's top-level `tls_cert`/`tls_key`, `[ledger]
ca_file`) and the bus's `[nats_tls]` table are the names issue 13 agreed on.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.config import SCOPES, token_digest
from runtime.endpoint import BusEndpoint
from runtime.files import write_new_file
from runtime.tomlfile import dumps

__all__ = [
    "ApiClientSpec",
    "HttpTls",
    "LedgerLink",
    "agent_config",
    "client_token",
    "endpoint_settings",
    "ledger_config",
    "write_config",
]


@dataclass(frozen=True, slots=True)
class HttpTls:
    """A PEM certificate (chain) and its key: the API then serves HTTPS only."""

    cert_file: str
    key_file: str


@dataclass(frozen=True, slots=True)
class ApiClientSpec:
    """A client system of the agent API: its name, the SHA-256 of its token, its scopes."""

    name: str
    token_sha256: str
    scopes: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.scopes or not set(self.scopes) <= SCOPES:
            raise ValueError(f"the scopes of client {self.name!r} must be some of {sorted(SCOPES)}")


@dataclass(frozen=True, slots=True)
class LedgerLink:
    """The `[ledger]` table of agent.toml: where the ledger is and how to check it."""

    url: str
    name: str
    identity: str
    token_file: str
    ca_file: str | None = None
    interval_seconds: float | None = None
    missing_after_seconds: int | None = None


def endpoint_settings(endpoint: BusEndpoint) -> dict[str, Any]:
    """`nats_urls` and, only with TLS settings, `[nats_tls]` (runtime.endpoint)."""
    tls = endpoint.tls
    return {
        "nats_urls": list(endpoint.urls),
        "nats_tls": None
        if tls is None
        else {
            "ca_file": _opt(tls.ca_file),
            "cert_file": _opt(tls.cert_file),
            "key_file": _opt(tls.key_file),
            "server_name": tls.server_name,
        },
    }


def agent_config(
    *,
    agency: str,
    key_dir: str,
    database: str,
    endpoint: BusEndpoint,
    api_bind: str,
    trust_root: str,
    trust_cache: str = "trust",
    clients: Sequence[ApiClientSpec] = (),
    name: str | None = None,
    passphrase_file: str | None = None,
    http_tls: HttpTls | None = None,
    ledger: LedgerLink | None = None,
    webhooks: Sequence[tuple[str, str]] = (),
    limits: Mapping[str, int | float] | None = None,
    allow_plain_http: bool = False,
) -> dict[str, Any]:
    """The agent.toml document; `webhooks` are `(url, secret_file)` pairs."""
    doc: dict[str, Any] = {
        "agency": agency,
        "name": name,
        "key_dir": key_dir,
        "passphrase_file": passphrase_file,
        "allow_plain_http": True if allow_plain_http else None,
        **endpoint_settings(endpoint),
        "database": database,
        "trust_root": trust_root,
        "trust_cache": trust_cache,
        "api": {
            "bind": api_bind,
            "tls_cert": None if http_tls is None else http_tls.cert_file,
            "tls_key": None if http_tls is None else http_tls.key_file,
            "clients": [
                {"name": c.name, "token_sha256": c.token_sha256, "scopes": list(c.scopes)}
                for c in clients
            ],
        },
        "ledger": None
        if ledger is None
        else {
            "url": ledger.url,
            "name": ledger.name,
            "identity": ledger.identity,
            "token_file": ledger.token_file,
            "ca_file": ledger.ca_file,
            "interval_seconds": ledger.interval_seconds,
            "missing_after_seconds": ledger.missing_after_seconds,
        },
        "webhooks": [{"url": url, "secret_file": secret} for url, secret in webhooks] or None,
        "limits": dict(limits) if limits else None,
    }
    return doc


def ledger_config(
    *,
    name: str,
    key_dir: str,
    endpoint: BusEndpoint,
    trust_root: str,
    database: str,
    bind: str,
    auditors: Sequence[tuple[str, str]] = (),
    tokens: Sequence[tuple[str, str, str]] = (),
    passphrase_file: str | None = None,
    http_tls: HttpTls | None = None,
    checkpoint_interval_seconds: float | None = None,
    suppress_below: int | None = None,
    expiry_warning_days: float | None = None,
    allow_plain_http: bool = False,
) -> dict[str, Any]:
    """The ledger.toml document; `auditors` are `(name, token_sha256)` pairs (scope
    `auditor`), `tokens` `(name, token_sha256, scope)` triples."""
    return {
        "name": name,
        "key_dir": key_dir,
        "passphrase_file": passphrase_file,
        "allow_plain_http": True if allow_plain_http else None,
        **endpoint_settings(endpoint),
        "trust_root": trust_root,
        "database": database,
        "bind": bind,
        "tls_cert": None if http_tls is None else http_tls.cert_file,
        "tls_key": None if http_tls is None else http_tls.key_file,
        "checkpoint_interval_seconds": checkpoint_interval_seconds,
        "suppress_below": suppress_below,
        "expiry_warning_days": expiry_warning_days,
        "auditors": [{"name": n, "token_sha256": digest} for n, digest in auditors] or None,
        "tokens": [
            {"name": n, "token_sha256": digest, "scope": scope} for n, digest, scope in tokens
        ]
        or None,
    }


def write_config(path: Path, doc: Mapping[str, Any], *, header: str = "") -> None:
    """Write `doc` as TOML to the new file `path` (0600); FileExistsError if it exists."""
    write_new_file(path, dumps(doc, header=header).encode())


def client_token(path: Path) -> str:
    """The bearer token kept in `path`: read if the file exists, else a fresh one written
    there (0600). The configuration holds only its SHA-256 (`token_digest`)."""
    if path.exists():
        token = path.read_text(encoding="utf-8").strip()
        if len(token) < 16:
            raise ValueError(f"{path}: a token must be at least 16 characters")
        return token
    token = secrets.token_urlsafe(32)
    write_new_file(path, token.encode())
    return token


def digest_of(token: str) -> str:
    """What goes into `token_sha256` for `token`."""
    return token_digest(token)


def _opt(path: Path | None) -> str | None:
    return None if path is None else str(path)
