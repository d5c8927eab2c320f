"""TLS for the HTTP APIs (the agent's, the ledger's) and for their HTTPS clients.

A service given a certificate and its key (`HttpsFiles`) serves HTTPS only, TLS 1.2 or
later; without them it serves plain HTTP, which is for loopback (docs/DESIGN.md "TLS"): a
configuration or command that would carry bearer tokens over plain HTTP beyond loopback is
refused (`PlainHttpError`) unless it says `allow_plain_http` (`--allow-plain-http`).
Clients (the agent towards the ledger and its webhooks, the audit command line) verify the
server's certificate and name, against a CA file when one is given, else the system's CAs.
The bus has its own settings (runtime/endpoint.py).
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

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
        load_key_pair(ctx, self.cert_file, self.key_file)
        return ctx


def check_key_file(key_file: Path) -> None:
    """TlsFileError if the private key `key_file` is readable by others, or by a group that
    is not this process's own (Kubernetes' fsGroup makes a secret 0440 to the pod's group)."""
    try:
        st = key_file.stat()
    except OSError as e:
        raise TlsFileError(f"cannot read the key file {key_file}: {e.strerror}") from e
    mode = st.st_mode & 0o777
    if mode & 0o007 or (mode & 0o070 and st.st_gid != os.getegid()):
        raise TlsFileError(
            f"the private key {key_file} is readable by other users (mode {mode:04o}): "
            f"chmod 600 {key_file}"
        )


def load_key_pair(ctx: ssl.SSLContext, cert_file: Path, key_file: Path) -> None:
    """Load the certificate chain and its private key into `ctx`; TlsFileError if the key
    is readable by others (`check_key_file`), encrypted (never OpenSSL's passphrase prompt:
    keys must be unencrypted PEM, protected by their mode) or the files cannot be used."""
    check_key_file(key_file)

    def no_passphrase() -> str:
        raise TlsFileError(
            f"the private key {key_file} is encrypted: give an unencrypted PEM key (0600)"
        )

    try:
        ctx.load_cert_chain(str(cert_file), str(key_file), password=no_passphrase)
    except (OSError, ssl.SSLError) as e:
        raise TlsFileError(
            f"cannot use the certificate {cert_file} with the key {key_file}: {e}"
        ) from e


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


class PlainHttpError(ConfigError):
    """Plain HTTP beyond loopback without `allow_plain_http`: bearer tokens in clear."""


def is_loopback(host: str) -> bool:
    """`localhost`, 127.0.0.0/8 or ::1 (brackets allowed)."""
    host = host.strip("[]")
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_plain_http(
    host: str, *, what: str, allowed: bool, how: str = "allow_plain_http = true"
) -> None:
    """PlainHttpError if `what` would speak plain HTTP to or on `host` beyond loopback and
    plain HTTP was not explicitly allowed (`how` says how to)."""
    if allowed or is_loopback(host):
        return
    raise PlainHttpError(
        f"{what} is plain HTTP beyond loopback ({host}): bearer tokens would cross the network "
        f"in clear; use HTTPS, or set {how} if the network is private"
    )


def check_plain_http_url(
    url: str, *, what: str, allowed: bool, how: str = "allow_plain_http = true"
) -> None:
    """check_plain_http for the host of an http:// `url` (an https:// one passes)."""
    parts = urlsplit(url)
    if parts.scheme == "http":
        check_plain_http(parts.hostname or "", what=what, allowed=allowed, how=how)
