"""Where a client finds the bus, and how it proves and checks identities there (TLS).

Every part that connects to NATS (the agent, the ledger, the bus authority, the `nrm` command
line) is given one `BusEndpoint`: the server URLs of every node it may use, and optionally the
TLS settings. `connect_options()` is what `nats.connect` takes from it; the caller adds its
own NKey, name and timeouts.

URLs are accepted in every form the docs show: `nats://host:4222`, `tls://host:4222`,
`host:4222`, `host` (port 4222), IPv6 in brackets, and several at once separated by commas
(`--nats "tls://a:4222,tls://b:4222"`) or given as a list (`nats_urls = [...]`).
A `tls://` URL, or any URL with a `BusTls`, requires TLS: the client starts the TLS
handshake before anything else (nats-server's `handshake_first`), so it never sends a byte
of the protocol in clear, whatever a server, or a man in the middle, announces.
"""

from __future__ import annotations

import ssl
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .bus_client import quiet_asyncio_ssl_eof_warning
from .config import ConfigError, Table, path_in
from .tls import TlsFileError, client_context, load_key_pair

#: The NATS client port when a URL names none.
DEFAULT_PORT = 4222
#: The URL schemes a NATS client accepts here.
SCHEMES = ("nats", "tls")


class EndpointError(ValueError):
    """A bus URL or a TLS setting is malformed, or a TLS file cannot be read."""


@dataclass(frozen=True, slots=True)
class BusTls:
    """TLS towards the bus: whom to trust, what to present, which name to expect.

    `ca_file`: the CAs that sign the servers' certificates (PEM); None trusts the system's.
    `cert_file` and `key_file`: this client's certificate and key (PEM) for servers that
    require mutual TLS (`verify: true`); both or neither. `server_name`: the name the
    servers' certificates must carry, when it differs from the host in the URL (connecting by
    IP address, say).
    """

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise EndpointError("a client certificate needs its key, and a key its certificate")
        if self.server_name is not None and not self.server_name.strip():
            raise EndpointError("the TLS server name is empty")

    def context(self) -> ssl.SSLContext:
        """A client context that verifies the server's certificate and name (TLS 1.2+)."""
        try:
            ctx = client_context(self.ca_file)
            if self.cert_file is not None and self.key_file is not None:
                load_key_pair(ctx, self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as e:
            raise EndpointError(f"cannot load the bus TLS files: {e}") from e
        except TlsFileError as e:
            raise EndpointError(f"cannot load the bus TLS files: {e}") from e
        return ctx


@dataclass(frozen=True, slots=True)
class BusEndpoint:
    """The bus's URLs (one per node) and, optionally, TLS settings."""

    urls: tuple[str, ...]
    tls: BusTls | None = None

    def __post_init__(self) -> None:
        if not self.urls:
            raise EndpointError("no bus URL given")

    @classmethod
    def of(cls, urls: str | Iterable[str], tls: BusTls | None = None) -> BusEndpoint:
        """An endpoint from URLs in any accepted form (see the module docstring)."""
        return cls(urls=parse_urls(urls), tls=tls)

    @property
    def requires_tls(self) -> bool:
        return self.tls is not None or any(u.startswith("tls://") for u in self.urls)

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for `nats.connect`: `servers`, and `tls`, `tls_hostname` and
        `tls_handshake_first`. Over TLS it also quiets nats-py's harmless eof_received
        warning (runtime/bus_client.py quiet_asyncio_ssl_eof_warning): every bus client
        connects with these options."""
        options: dict[str, Any] = {"servers": list(self.urls)}
        if self.requires_tls:
            quiet_asyncio_ssl_eof_warning()
            tls = self.tls or BusTls()
            options["tls"] = tls.context()
            # TLS before the first protocol byte. nats-py otherwise reads the server's
            # plaintext INFO first and upgrades only if it says `tls_required`, whatever the
            # URL's scheme: a man in the middle could say no and read the login. The servers
            # are configured to match (`handshake_first`, broker/server.py tls_block).
            options["tls_handshake_first"] = True
            if tls.server_name is not None:
                options["tls_hostname"] = tls.server_name
        return options


def parse_urls(value: str | Iterable[str]) -> tuple[str, ...]:
    """Normalised URLs (`scheme://host:port`) from a comma-separated string or a list of
    them; EndpointError naming the first one that is not a NATS server URL."""
    items = [value] if isinstance(value, str) else list(value)
    urls: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise EndpointError(f"a bus URL must be a string, not {type(item).__name__}")
        for part in item.split(","):
            if part.strip():
                urls.append(_normalise(part.strip()))
    if not urls:
        raise EndpointError("no bus URL given")
    return tuple(dict.fromkeys(urls))  # in order, each once


def _normalise(text: str) -> str:
    raw = text if "://" in text else f"nats://{text}"
    if "@" in raw.partition("://")[2].partition("/")[0]:
        raise EndpointError("credentials never go in a bus URL (agencies use NKeys)")
    try:
        parts = urllib.parse.urlsplit(raw)
        port = parts.port
    except ValueError as e:
        raise EndpointError(f"{text!r} is not a bus URL: {e}") from e
    if parts.scheme not in SCHEMES:
        raise EndpointError(f"{text!r}: the scheme must be one of {', '.join(SCHEMES)}")
    if not parts.hostname:
        raise EndpointError(f"{text!r} names no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise EndpointError(f"{text!r}: a bus URL has only a scheme, a host and a port")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{port or DEFAULT_PORT}"


def endpoint_from_config(table: Table, *, base: Path, prefix: str = "") -> BusEndpoint:
    """The endpoint of a service's TOML file: `nats_urls` (a list, or one comma-separated
    string) and the optional table `[nats_tls]` with `ca_file`, `cert_file`, `key_file`
    (paths relative to the file's folder `base`) and `server_name`."""
    try:
        urls = parse_urls(table["nats_urls"])
    except EndpointError as e:
        raise ConfigError(f"{prefix}nats_urls: {e}") from e
    if "nats_tls" not in table:
        return BusEndpoint(urls=urls)
    t = table["nats_tls"]
    if not isinstance(t, Table):
        raise ConfigError(f"{prefix}nats_tls must be a table")

    def path(key: str) -> Path | None:
        return path_in(t[key], base=base, key=f"{prefix}nats_tls.{key}") if key in t else None

    try:
        tls = BusTls(
            ca_file=path("ca_file"),
            cert_file=path("cert_file"),
            key_file=path("key_file"),
            server_name=str(t["server_name"]) if "server_name" in t else None,
        )
    except EndpointError as e:
        raise ConfigError(f"{prefix}nats_tls: {e}") from e
    return BusEndpoint(urls=urls, tls=tls)
