"""Hosts on one machine: Linux network namespaces joined by a bridge, for the multi-host test.

`Network` makes, for one test run, a namespace holding only a bridge (the "WAN"; nothing is
added to the root namespace's networking, so the run is hermetic and no traffic leaves the
machine), and one namespace per host, each with its loopback up and an `eth0` (one end of a
veth pair whose other end is a port of the bridge) carrying a 10.x address. A host runs
processes with `ip netns exec` (`Host.spawn`, logs to a file per process) and runs coroutines
on an event loop of its own whose thread entered the host's namespace (`Host.run`): the
sockets that loop opens are the host's, so an HTTP client or a NATS client there talks from
that host. `Network.cut(host)` / `restore(host)` take the host's bridge port down and up (a
WAN outage: the other hosts see nothing, the host's packets are dropped).

Teardown kills every process in the run's namespaces (`ip netns pids`) and deletes them, on
success, failure or interruption (a context manager, and an atexit hook for a SIGINT that
skips it). Names carry the creating pid (`nrmh<pid>x<n>-<host>`); a run first deletes the
namespaces of runs whose process is gone (a crashed or SIGKILLed run).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import ctypes
import itertools
import os
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")

#: Every namespace of a run is named PREFIX<pid>x<n>-<host>.
PREFIX = "nrmh"
_NAME = re.compile(rf"^{PREFIX}(\d+)x(\d+)-")
#: The bridge in the run's "wan" namespace.
BRIDGE = "br0"
#: setns(2) flag for a network namespace.
CLONE_NEWNET = 0x40000000
#: How long a process gets between SIGTERM and SIGKILL.
STOP_SECONDS = 10.0
_runs = itertools.count(1)


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be made here (not root, no `ip`, or refused)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def unavailable_reason() -> str | None:
    """Why this machine cannot run the multi-host test, or None if it can: probes by
    making (and deleting) a namespace of its own."""
    if os.geteuid() != 0:
        return f"network namespaces need root (running as uid {os.geteuid()})"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = f"{PREFIX}{os.getpid()}x0-probe"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` was refused: {made.stderr.strip()}"
    try:
        up = _ip(
            "-n", probe, "link", "add", "p0", "type", "veth", "peer", "name", "p1", check=False
        )
        if up.returncode != 0:
            return f"veth pairs cannot be made: {up.stderr.strip()}"
        br = _ip("-n", probe, "link", "add", BRIDGE, "type", "bridge", check=False)
        if br.returncode != 0:
            return f"bridges cannot be made: {br.stderr.strip()}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, killed but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _namespaces() -> list[str]:
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _kill_all_in(namespace: str) -> None:
    """SIGKILL every process in `namespace` (they are all the run's) and reap ours."""
    pids = _ip("netns", "pids", namespace, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def _delete(namespace: str) -> None:
    _kill_all_in(namespace)
    _ip("netns", "del", namespace, check=False)


def remove_stale() -> list[str]:
    """Delete the namespaces (and kill the processes) of runs whose creator is gone."""
    stale = []
    for name in _namespaces():
        m = _NAME.match(name)
        if m is not None and not _alive(int(m.group(1))):
            _delete(name)
            stale.append(name)
    return stale


def _enter(namespace: str) -> None:
    """Move the calling thread into `namespace` (sockets it opens from now on are there)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {namespace}: {os.strerror(err)}")
    finally:
        os.close(fd)


class Proc:
    """One process run in a host's namespace, its output in `log`."""

    def __init__(self, host: Host, name: str, argv: Sequence[str], log: Path, env: dict[str, str]):
        self.host, self.name, self.argv, self.log, self.env = host, name, list(argv), log, env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                ["ip", "netns", "exec", self.host.namespace, *self.argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL (a crash) and wait for the exit."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_SECONDS."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, size: int = 3000) -> str:
        try:
            data = self.log.read_bytes()[-size:]
        except OSError as e:
            return f"(no log: {e})"
        return data.decode("utf-8", errors="replace")


class _Loop:
    """An event loop on a daemon thread that entered a namespace first."""

    def __init__(self, namespace: str) -> None:
        self.loop = asyncio.new_event_loop()
        entered: concurrent.futures.Future[None] = concurrent.futures.Future()

        def main() -> None:
            try:
                _enter(namespace)
            except BaseException as e:
                entered.set_exception(e)
                return
            asyncio.set_event_loop(self.loop)
            entered.set_result(None)
            self.loop.run_forever()

        self.thread = threading.Thread(target=main, name=f"netns-{namespace}", daemon=True)
        self.thread.start()
        entered.result(timeout=10)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        if not self.thread.is_alive():
            return

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.submit(cancel_all()).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        if not self.thread.is_alive():
            self.loop.close()


@dataclass
class Host:
    """One machine: a namespace with `address` on its eth0, its processes, its loop."""

    network: Network
    name: str
    namespace: str
    address: str
    port: str  # its port on the bridge, in the wan namespace
    procs: list[Proc] = field(default_factory=list)
    _loop: _Loop | None = None

    def spawn(self, name: str, argv: Sequence[str], *, env: dict[str, str] | None = None) -> Proc:
        """Start `argv` in this host's namespace; its output goes to logs/<host>.<name>.log."""
        log = self.network.logs / f"{self.name}.{name}.log"
        proc = Proc(self, name, argv, log, {**os.environ, **(env or {})})
        self.procs.append(proc)
        return proc.start()

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on this host's own loop (its sockets are this host's); awaitable
        from any other loop."""
        if self._loop is None:
            self._loop = _Loop(self.namespace)
        return await asyncio.wrap_future(self._loop.submit(coro))

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        if self._loop is not None:
            self._loop.close()
            self._loop = None


class Network:
    """The hosts of one test run on a bridge of their own; see the module docstring."""

    def __init__(self, logs: Path, *, subnet: str = "10.213.0") -> None:
        self.logs = logs
        self.subnet = subnet
        self.run_id = f"{PREFIX}{os.getpid()}x{next(_runs)}"
        self.wan = f"{self.run_id}-wan"
        self.hosts: dict[str, Host] = {}
        self._namespaces: list[str] = []
        self._closed = False

    def __enter__(self) -> Network:
        self.logs.mkdir(parents=True, exist_ok=True)
        remove_stale()
        atexit.register(self.close)
        try:
            self._add_namespace(self.wan)
            _ip("-n", self.wan, "link", "add", BRIDGE, "type", "bridge")
            _ip("-n", self.wan, "link", "set", BRIDGE, "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self._namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def add_host(self, name: str, octet: int) -> Host:
        """A host `name` at <subnet>.<octet>/24 on the bridge."""
        if name in self.hosts:
            raise ValueError(f"host {name} exists")
        namespace = f"{self.run_id}-{name}"
        port = f"h{octet}"
        address = f"{self.subnet}.{octet}"
        self._add_namespace(namespace)
        _ip("-n", self.wan, "link", "add", port, "type", "veth", "peer", "name", "eth0",
            "netns", namespace)  # fmt: skip
        _ip("-n", self.wan, "link", "set", port, "master", BRIDGE)
        _ip("-n", self.wan, "link", "set", port, "up")
        _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        host = Host(self, name, namespace, address, port)
        self.hosts[name] = host
        return host

    def cut(self, host: Host) -> None:
        """Take the host's link down: nothing reaches it or leaves it until `restore`."""
        _ip("-n", self.wan, "link", "set", host.port, "down")

    def restore(self, host: Host) -> None:
        _ip("-n", self.wan, "link", "set", host.port, "up")

    def close(self) -> None:
        """Stop every process and loop of every host, then delete every namespace."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        for host in reversed(list(self.hosts.values())):
            with contextlib.suppress(Exception):
                host.close()
        for name in reversed(self._namespaces):
            _delete(name)

    def leftovers(self) -> list[str]:
        """The run's namespaces that still exist (none after `close`)."""
        return [n for n in _namespaces() if n.startswith(f"{self.run_id}-")]
