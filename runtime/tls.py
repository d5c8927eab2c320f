"""TLS for the HTTP APIs (the agent's, the ledger's) and for their HTTPS clients.

A service given a certificate and its key (`HttpsFiles`) serves HTTPS only, TLS 1.2 or
later; without them it serves plain HTTP, which is for loopback (docs/DESIGN.md "TLS").
Clients (the agent towards the ledger and its webhooks, the audit command line) verify the
server's certificate and name, against a CA file when one is given, else the system's CAs.
The bus has its own settings (runtime/endpoint.py).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError, Table, path_in


class TlsFileError(ValueError):
    """A certificate, key or CA file cannot be read or does not hold what it should."""


@dataclass(frozen=True, slots=True)
class HttpsFiles:
    """A server's certificate chain and private key (PEM files)."""

    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        """A server context presenting the certificate, TLS 1.2+; TlsFileError naming the
        problem if the files cannot be used."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        except (OSError, ssl.SSLError) as e:
            raise TlsFileError(
                f"cannot use the certificate {self.cert_file} with the key {self.key_file}: {e}"
            ) from e
        return ctx


def client_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """A client context that verifies the server's certificate and host name (TLS 1.2+),
    against `ca_file` if given, else the system's CAs; TlsFileError if it cannot be read."""
    try:
        ctx = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=None if ca_file is None else str(ca_file)
        )
    except (OSError, ssl.SSLError) as e:
        raise TlsFileError(f"cannot read the CA file {ca_file}: {e}") from e
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def https_files(
    table: Table, *, base: Path, prefix: str = "", cert: str = "tls_cert", key: str = "tls_key"
) -> HttpsFiles | None:
    """The `tls_cert` and `tls_key` settings of `table` (both or neither; paths relative to
    `base`), checked by loading them once; ConfigError naming the setting that is wrong."""
    given = (cert in table, key in table)
    if given == (False, False):
        return None
    if given != (True, True):
        raise ConfigError(f"{prefix}{cert} and {prefix}{key} go together: give both or neither")
    files = HttpsFiles(
        cert_file=path_in(table[cert], base=base, key=f"{prefix}{cert}"),
        key_file=path_in(table[key], base=base, key=f"{prefix}{key}"),
    )
    try:
        files.server_context()
    except TlsFileError as e:
        raise ConfigError(f"{prefix}{cert}/{prefix}{key}: {e}") from e
    return files


def url_host(host: str) -> str:
    """`host` as it goes into a URL: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host
