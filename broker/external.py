"""`nrm bus authority`: the bus authority beside a nats-server the operator runs himself.

One small process per node (a systemd unit, or a Kubernetes sidecar sharing the server's
process namespace) keeps that node's authorization in step with the directory exactly as
`nrm bus up` does for its embedded server: a `DirectoryAuthority` follows the directory
bucket, verifying every update from the pinned root as agents do. It logs in with an NKey of
its own (`key_dir`, made with `nrm keys init`), which the bus admits as a bus authority
(broker/authz.py): it reads the directory bucket and writes nothing to the bus. The host
holds no operator key: a newly admitted agency's inbox stream and attachment bucket are made
by `nrm directory publish` before it puts the directory in the bucket. The NKeys the
authorization admits besides the directory's agencies (operators, ledgers, every node's
authority) are in the configuration (`operator_nkeys`, `ledger_nkeys`, `authority_nkeys`).
What it reloads is an `ExternalServer`:

1. it writes the authorization the node's configuration `include`s (`authorization_file`,
   written atomically, 0600: runtime/files.py);
2. sends SIGHUP to the pid in the node's `pid_file`;
3. confirms on the node's monitoring port (`monitor_url`) that `/varz` reports a newer
   `config_load_time`, a new `config_digest` when the block changed, `/healthz` is OK and
   (the block changed) `/connz?auth=true` lists no connection of an NKey it no longer has.
   nats-server that refuses the new file (it keeps running with the previous
   configuration) never reports a new load time: the reload fails after
   RELOAD_TIMEOUT_SECONDS, or at once when `log_file` (the server's log) names the failure;
   the previous file is put back, so a restart runs what the server runs. Any failure
   (a file it cannot write, a server gone before the signal) is a ReloadFailed, reported on
   /healthz as `authorization-reload-failed` and tried again.

The include file is never taken for what the server runs: the first directory is reloaded
at start, and every DRIFT_SECONDS the file and `/varz` (`config_digest`, `start`) are
compared with what the last reload confirmed; a difference (the file edited, the server
restarted or reloaded by hand) is written and reloaded again.

Connections for the ConnectionWatch come from the node's `/connz`. Configuration
(authority.toml, read strictly; `nrm cluster config` writes one per node):

    node_name          = "nrm-1"
    nats_urls          = ["tls://nats-1.example:4222", ...]   # + optional [nats_tls]
    authorization_file = "/etc/nrm/nats/nrm-1.authorization.conf"
    pid_file           = "/var/lib/nrm/nats-1/nats-server.pid"
    monitor_url        = "http://127.0.0.1:8222"
    log_file           = "/var/log/nrm/nats-1.log"          # optional
    trust_root         = "/etc/nrm/trust/root.1.json"
    key_dir            = "/etc/nrm/authority"               # its own NATS identity
    passphrase_file    = "/etc/nrm/authority/passphrase"
    operator_nkeys     = ["U..."]                           # the bus operator(s)
    ledger_nkeys       = ["U..."]                           # the ledger(s); may be []
    authority_nkeys    = ["U...", "U...", "U..."]           # every node's authority,
                                                            # its own among them
    status_bind        = "127.0.0.1:8223"                   # optional: /healthz, /metrics
    trust_cache        = "/etc/nrm/nats/nrm-1.trust"        # optional ("trust", beside this
                                                            # file): accepted roots and
                                                            # directory, kept across restarts
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from keys import DEFAULT_LIMITS, KeyFileError
from runtime.config import ConfigError, Table, bind_address, path_in, read_config
from runtime.endpoint import BusEndpoint, endpoint_from_config
from runtime.files import fsync_dir, replace_file
from runtime.keydir import load_key_dir, read_passphrase

from .authority import DirectoryAuthority
from .authz import USER_NKEY_PATTERN, ServiceKeys, service_reply_prefix
from .server import (
    RELOAD_TIMEOUT_SECONDS,
    Loaded,
    Monitoring,
    ReloadFailed,
    reload_failure_in_log,
)
from .trust_status import serve_status

log = structlog.get_logger("nrm.broker")

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: How often a reload in progress asks the monitoring port again.
_POLL_SECONDS = 0.05
#: How often the authority checks that the server still runs what it applied.
DRIFT_SECONDS = 30.0
#: What /proc/<pid>/comm says for the server (checked before signalling a pid).
NATS_SERVER_COMMAND = "nats-server"


#: Settings of earlier releases that are refused with what replaces them.
RETIRED_SETTINGS = {
    "operator_key_dir": (
        "operator_key_dir is no longer read: the authority logs in with its own key_dir "
        "(`nrm keys init`) and knows the operator by operator_nkeys (and ledger_nkeys, "
        "authority_nkeys); regenerate authority.toml with `nrm cluster config` and remove the "
        "operator's key from this host (CHANGELOG, Upgrade)"
    ),
    "replicas": (
        "replicas is no longer read: the authority makes no streams (`nrm directory publish` "
        "makes a new agency's with the replicas of the directory bucket); remove it"
    ),
}


#: A user's public NKey, as the authorization block and /connz's `authorized_user` name it.


def _nkeys_of(authorization: str) -> frozenset[str]:
    """The NKeys an authorization block (broker/authz.py) admits."""
    return frozenset(re.findall(r'nkey:\s*"(U[A-Z2-7]{55})"', authorization))


def process_name(pid: int) -> str | None:
    """The command name of process `pid` (/proc/<pid>/comm), or None where there is no
    /proc to ask."""
    if not Path("/proc/self").exists():
        return None
    try:
        return Path(f"/proc/{pid}/comm").read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""  # gone meanwhile


class ExternalServer:
    """A nats-server this process does not own: reloaded by file, SIGHUP and monitoring."""

    def __init__(
        self,
        *,
        endpoint: BusEndpoint,
        authorization_file: Path,
        pid_file: Path,
        monitor_url: str,
        log_file: Path | None = None,
        reload_timeout: float = RELOAD_TIMEOUT_SECONDS,
    ) -> None:
        self._endpoint = endpoint
        self.authorization_file = authorization_file
        self.pid_file = pid_file
        self.monitoring = Monitoring.of_url(monitor_url)
        self.log_file = log_file
        self.reload_timeout = reload_timeout
        #: What /varz reported after the last reload this process confirmed.
        self.confirmed: Loaded | None = None
        self._running: str | None = None  # the block of that reload

    def endpoint(self) -> BusEndpoint:
        return self._endpoint

    def current_authorization(self) -> str | None:
        """What the authorization file holds now (what the server runs, if it started from
        it), or None if there is none. Bytes that are not UTF-8 (a file edited by hand)
        read as U+FFFD: such a file differs from every block, so it is rewritten."""
        previous = self._file_bytes()
        return None if previous is None else previous.decode("utf-8", errors="replace")

    def _file_bytes(self) -> bytes | None:
        try:
            return self.authorization_file.read_bytes()
        except FileNotFoundError:
            return None

    def pid(self) -> int:
        """The running server's pid, from its pid file; ReloadFailed if there is none, or the
        process it names is not a nats-server (a pid reused after a crash). Pid 1 is allowed:
        a sidecar sharing the server's process namespace (compose `pid: service:nats`)."""
        try:
            text = self.pid_file.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ReloadFailed(f"cannot read the pid file {self.pid_file}: {e}") from e
        if not text.isdigit() or int(text) < 1:
            raise ReloadFailed(f"the pid file {self.pid_file} holds no pid")
        pid = int(text)
        try:
            os.kill(pid, 0)
        except ProcessLookupError as e:
            raise ReloadFailed(f"nats-server (pid {pid} in {self.pid_file}) is not running") from e
        except PermissionError as e:
            raise ReloadFailed(
                f"not allowed to signal nats-server (pid {pid}): run the authority as its user"
            ) from e
        command = process_name(pid)
        if command is not None and command != NATS_SERVER_COMMAND:
            raise ReloadFailed(
                f"pid {pid} in {self.pid_file} is {command or 'gone'!r}, not "
                f"{NATS_SERVER_COMMAND}: a stale pid file"
            )
        return pid

    def reload(self, authorization: str, /) -> None:
        """Write `authorization` to the include file, SIGHUP the server, and return once it
        reports the new configuration loaded and is healthy; ReloadFailed (with the
        previous file put back) if it refuses it, does not confirm in time, or a file or
        signal fails (OSError: the include's directory not writable, the server gone
        between reading its pid and the signal)."""
        pid = self.pid()
        try:
            before = self.monitoring.loaded()
        except OSError as e:
            raise ReloadFailed(f"monitoring at {self._monitor_address()} unreachable: {e}") from e
        try:
            previous = self._file_bytes()
        except OSError as e:
            raise ReloadFailed(f"cannot read {self.authorization_file}: {e}") from e
        log_offset = self._log_size()
        try:
            self._write(authorization)
        except OSError as e:
            raise ReloadFailed(
                f"cannot write {self.authorization_file} (its directory must be writable by "
                f"the authority): {e}"
            ) from e
        try:
            try:
                os.kill(pid, signal.SIGHUP)
            except OSError as e:
                raise ReloadFailed(f"cannot signal nats-server (pid {pid}): {e}") from e
            # A block other than the one the server was last confirmed running must change
            # the digest too: a reload of something else (or of the old file) is no
            # confirmation of this one. (Unknown before the first confirmation.)
            changed = self._running is not None and authorization != self._running
            self.confirmed = self._confirm(
                before, log_offset, changed=changed, nkeys=_nkeys_of(authorization)
            )
            self._running = authorization
        except BaseException:
            self._put_back(previous)
            raise

    def drifted(self, applied: str) -> str | None:
        """Why the server may not run `applied` (the last block it confirmed), or None: the
        include file was changed behind the authority's back, or `/varz` reports another
        configuration digest or start time (edited and reloaded by hand, or restarted from
        another file) than the last reload confirmed. OSError if monitoring does not
        answer."""
        if self.current_authorization() != applied:
            return "authorization-file-changed"
        now = self.monitoring.loaded()
        if self.confirmed is None:
            return "never-confirmed"
        if now.start != self.confirmed.start:
            return "server-restarted"
        if now.digest != self.confirmed.digest:
            return "config-digest-changed"
        return None

    def _write(self, authorization: str | bytes) -> None:
        data = authorization.encode("utf-8") if isinstance(authorization, str) else authorization
        replace_file(self.authorization_file, data, mode=0o600)
        fsync_dir(self.authorization_file.parent)

    def _put_back(self, previous: bytes | None) -> None:
        """The file as it was before a failed reload, byte for byte (so a restart runs what
        the server runs); a failure here is logged: the reload's own error is what is raised."""
        try:
            if previous is None:
                self.authorization_file.unlink(missing_ok=True)
            else:
                self._write(previous)
        except OSError as e:
            log.error("authorization_file_not_restored", error=type(e).__name__)

    def _confirm(
        self, before: Loaded, log_offset: int | None, *, changed: bool, nkeys: frozenset[str]
    ) -> Loaded:
        """Wait for /varz to report the reload (a new digest too when `changed`), /healthz
        OK and, when `changed`, /connz to list no connection logged in with an NKey outside
        `nkeys` (nats-server closes those at the reload)."""
        deadline = time.monotonic() + self.reload_timeout
        problem = f"no new configuration loaded within {self.reload_timeout}s"
        while time.monotonic() < deadline:
            if self.log_file is not None and log_offset is not None:
                failure = reload_failure_in_log(self.log_file, log_offset)
                if failure is not None:
                    problem = failure
                    break
            try:
                now = self.monitoring.loaded()
                if (
                    now.load_time != before.load_time
                    and (not changed or now.digest != before.digest)
                    and self.monitoring.healthz()
                ):
                    left = 0 if not changed else self._outsiders(nkeys)
                    if not left:
                        return now
                    problem = (
                        f"{left} connection(s) logged in with an NKey the new authorization "
                        "lacks still open"
                    )
            except OSError:
                pass  # monitoring briefly unavailable: ask again
            time.sleep(_POLL_SECONDS)
        raise ReloadFailed(
            f"nats-server reload failed: {problem}; it keeps its previous configuration"
        )

    def _outsiders(self, nkeys: frozenset[str]) -> int:
        """How many open connections logged in with an NKey not in `nkeys`."""
        users = [c.get("authorized_user") for c in self.monitoring.connections()]
        return sum(
            1
            for u in users
            if isinstance(u, str) and USER_NKEY_PATTERN.fullmatch(u) and u not in nkeys
        )

    def _log_size(self) -> int | None:
        if self.log_file is None:
            return None
        try:
            return self.log_file.stat().st_size
        except OSError:
            return 0

    def _monitor_address(self) -> str:
        return f"{self.monitoring.host}:{self.monitoring.port}"

    def connections(self) -> list[dict[str, object]]:
        return self.monitoring.connections()


@dataclass(frozen=True, slots=True)
class AuthorityConfig:
    """authority.toml (see the module docstring)."""

    node_name: str
    endpoint: BusEndpoint
    authorization_file: Path
    pid_file: Path
    monitor_url: str
    trust_root: Path
    #: The authority's own key folder: it logs in to the bus with its NATS seed.
    key_dir: Path
    #: The NKeys every authorization admits besides the directory's agencies.
    services: ServiceKeys
    passphrase_file: Path = field(repr=False)
    log_file: Path | None = None
    status_bind: tuple[str, int] | None = None
    trust_cache: Path = Path("trust")

    @classmethod
    def load(cls, path: Path) -> AuthorityConfig:
        """Read `path` strictly; ConfigError naming the first thing wrong."""
        return read_config(path, cls._of)

    @classmethod
    def _of(cls, t: Table, base: Path) -> AuthorityConfig:
        for key, why in RETIRED_SETTINGS.items():
            if key in t:
                raise ConfigError(why)
        name = t["node_name"]
        if not isinstance(name, str) or not name:
            raise ConfigError("node_name must be the node's server name")
        monitor_url = str(t["monitor_url"])
        try:
            Monitoring.of_url(monitor_url)
        except ValueError as e:
            raise ConfigError(f"monitor_url: {e}") from e

        def path(key: str) -> Path:
            return path_in(t[key], base=base, key=key)

        return cls(
            node_name=name,
            endpoint=endpoint_from_config(t, base=base),
            authorization_file=path("authorization_file"),
            pid_file=path("pid_file"),
            monitor_url=monitor_url,
            trust_root=path("trust_root"),
            key_dir=path("key_dir"),
            passphrase_file=path("passphrase_file"),
            services=ServiceKeys(
                operators=_nkeys(t, "operator_nkeys", at_least=1),
                ledgers=_nkeys(t, "ledger_nkeys", at_least=0),
                authorities=_nkeys(t, "authority_nkeys", at_least=1),
            ),
            log_file=path("log_file") if "log_file" in t else None,
            status_bind=(
                bind_address(t["status_bind"], key="status_bind") if "status_bind" in t else None
            ),
            trust_cache=path_in(t.get("trust_cache", "trust"), base=base, key="trust_cache"),
        )


def _nkeys(t: Table, key: str, *, at_least: int) -> tuple[str, ...]:
    value = t[key]
    if not isinstance(value, list) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"{key} must be a list of public NKeys (U...)")
    for nkey in value:
        if not USER_NKEY_PATTERN.fullmatch(nkey):
            raise ConfigError(f"{key}: not a user's public NKey: {nkey!r}")
    if len(value) < at_least:
        raise ConfigError(f"{key} must list at least {at_least} NKey(s)")
    return tuple(value)


def run_authority(
    config: AuthorityConfig, *, warning_seconds: int = DEFAULT_LIMITS.expiry_warning_seconds
) -> int:
    """Follow the directory and keep the node's authorization in step until SIGINT/SIGTERM.
    KeyFileError if its keys cannot be opened, have no NATS key, or that key is not among
    `authority_nkeys` (before anything starts: its own node would refuse it)."""
    own = load_key_dir(config.key_dir, passphrase=read_passphrase(file=config.passphrase_file))
    if own.nats_seed is None or own.public.nats_key is None:
        raise KeyFileError(f"the keys in {config.key_dir} have no NATS key")
    if own.public.nats_key not in config.services.authorities:
        raise KeyFileError(
            f"the NATS key of {config.key_dir} ({own.public.nats_key}) is not among "
            "authority_nkeys: the bus would refuse it"
        )
    server = ExternalServer(
        endpoint=config.endpoint,
        authorization_file=config.authorization_file,
        pid_file=config.pid_file,
        monitor_url=config.monitor_url,
        log_file=config.log_file,
    )
    authority = DirectoryAuthority(
        server,
        pinned_root=config.trust_root,
        nkeys_seed=own.nats_seed,
        inbox_prefix=service_reply_prefix("authority", own.public.nats_key),
        services=config.services,
        warning_seconds=warning_seconds,
        trust_cache=config.trust_cache,
    )
    authority.restore_trust()  # the trust floor: what it accepted before this start
    # What the server runs is not assumed to be the include file (edited, or the server
    # started from another one): the first directory is always reloaded (a SIGHUP that
    # changes nothing is harmless), then `_drift` watches for changes made behind our back.
    authority.applied = None
    return asyncio.run(_serve(config, authority, server))


async def _drift(authority: DirectoryAuthority, server: ExternalServer) -> None:
    """Every DRIFT_SECONDS: if the server may not run the authorization last applied
    (`ExternalServer.drifted`), write and reload it again."""
    while True:
        await asyncio.sleep(DRIFT_SECONDS)
        applied = authority.applied
        if applied is None:
            continue  # nothing confirmed yet: the reload loop is at it
        try:
            reason = await asyncio.to_thread(server.drifted, applied)
        except OSError as e:
            log.warning("authorization_drift_unchecked", error=type(e).__name__)
            continue
        if reason is not None:
            log.warning("authorization_drift", reason=reason)
            authority.reapply()


async def _serve(
    config: AuthorityConfig, authority: DirectoryAuthority, server: ExternalServer
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    status = None
    try:
        await authority.start()
        authority.supervisor.spawn("authority-drift", lambda: _drift(authority, server))
        try:
            where = ""
            if config.status_bind is not None:
                host, port = config.status_bind
                status = await serve_status(authority, host=host, port=port)
                bound = status.addresses[0][:2]
                where = f"; status at http://{bound[0]}:{bound[1]}/healthz"
            print(f"bus authority for {config.node_name} ready{where}", flush=True)
            log.info("bus_authority_ready", node=config.node_name)
            await stop.wait()
        finally:
            if status is not None:
                await status.cleanup()
            await authority.stop()
    finally:
        for sig in _STOP_SIGNALS:
            loop.remove_signal_handler(sig)
    print(f"bus authority for {config.node_name} stopped", flush=True)
    return 0
