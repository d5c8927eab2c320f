"""What a SIGHUP reloads in a running agent or ledger (docs/RUNBOOK.md, "Reloading").

The whole configuration file is read again with the same strict loader as at start. Only
some settings take effect without a restart: the API's bearer tokens and the HTTPS
certificate and key (a renewed certificate, the same files or others). A file that does not
load, or that changes anything else (the database, key folders, bind address, bus endpoint,
whether the API serves TLS at all), is refused whole: the service keeps its running
configuration and says which setting needs a restart.
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Collection, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from .config import ConfigError
from .tls import HttpsFiles, TlsFileError, load_key_pair


class ReloadRefused(ConfigError):
    """The new configuration file is valid but changes what only a restart applies."""


def restart_needed(
    old: Any, new: Any, *, reloadable: Collection[str], keys: Mapping[str, str] | None = None
) -> None:
    """ReloadRefused naming each setting (its TOML key, `keys` maps a field to it) in which
    the dataclasses `old` and `new` differ, other than the `reloadable` fields. Values are
    never shown (a path or an address could be, but a reason is enough)."""
    keys = keys or {}
    changed = sorted(
        {
            keys.get(f.name, f.name)
            for f in fields(old)
            if f.name not in reloadable and getattr(old, f.name) != getattr(new, f.name)
        }
    )
    if changed:
        raise ReloadRefused(f"{', '.join(changed)} changed: restart to apply")


class LiveTls:
    """A server's SSL context that a reload refreshes in place: connections made after
    `refresh` present the new certificate, those already open keep theirs."""

    def __init__(self, files: HttpsFiles) -> None:
        self.files = files
        self.context = files.server_context()
        self._fingerprint = _fingerprint(files)

    def refresh(self, files: HttpsFiles) -> bool:
        """Load `files` (checked first in a context of their own, so a bad pair leaves the
        live one as it was: TlsFileError); True if the certificate or key changed."""
        files.server_context()
        fingerprint = _fingerprint(files)
        if fingerprint == self._fingerprint and files == self.files:
            return False
        load_key_pair(self.context, files.cert_file, files.key_file)
        self.files, self._fingerprint = files, fingerprint
        return True


def _fingerprint(files: HttpsFiles) -> bytes:
    try:
        return hashlib.sha256(files.cert_file.read_bytes() + files.key_file.read_bytes()).digest()
    except OSError as e:
        raise TlsFileError(f"cannot read {e.filename}: {e.strerror}") from e


def server_context(live: LiveTls | None) -> ssl.SSLContext | None:
    return None if live is None else live.context


def refresh_tls(live: LiveTls | None, old: HttpsFiles | None, new: HttpsFiles | None) -> bool:
    """Refresh `live` to `new`; ReloadRefused if the API would switch between HTTP and HTTPS
    (its URL changes: a restart), ConfigError if the new files cannot be used."""
    if (old is None) != (new is None):
        raise ReloadRefused("tls_cert/tls_key added or removed (HTTP <-> HTTPS): restart")
    if live is None or new is None:
        return False
    try:
        return live.refresh(new)
    except TlsFileError as e:
        raise ConfigError(f"tls_cert/tls_key: {e}") from e


def describe(path: Path, e: ConfigError) -> str:
    """The reason a reload of `path` was refused (ConfigErrors name the setting, never a
    secret's value)."""
    text = str(e)
    return text if text.startswith(str(path)) else f"{path}: {text}"
