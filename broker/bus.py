"""`nrm bus up`: run the embedded bus in the foreground until interrupted.

`run_foreground` runs it secured: the authorization is generated from a directory verified
against the pinned root (docs/PROTOCOL.md section 5), the streams and the directory bucket
are provisioned as the operator, and a `DirectoryAuthority` reloads the authorization when
administrators publish a new directory. `unsafe_run_foreground_open` runs it with no
authorization at all, for local experiments only.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from keys import DEFAULT_LIMITS, KeyFileError
from keys.directory import directory_from_files
from runtime import clock
from runtime.keydir import load_key_dir

from .authority import DirectoryAuthority, attachment_owners, authorization_for
from .authz import ServiceKeys
from .server import NatsServer, ServerTls
from .streams import provision
from .trust_status import serve_status

log = structlog.get_logger("nrm.broker")

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: How often the foreground loop checks that nats-server is still running.
_WATCH_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class BusTrust:
    """What a secured bus starts from.

    `trust_roots` is the pinned root (root.1.json) followed by any later roots in order,
    each verified against the one before; `directory` a signed directory.json;
    `operator_keys` the operator's key directory (its NKey seed, encrypted): the embedded
    bus provisions with it, and its authority makes a newly admitted agency's stores with it;
    `ledger_nkeys` the public NKeys of the ledgers it admits (their own, broker/authz.py).
    """

    trust_roots: Sequence[Path]
    directory: Path
    operator_keys: Path
    passphrase: bytes = field(repr=False)
    ledger_nkeys: Sequence[str] = ()
    #: Where to serve /healthz and /metrics (host, port), or None for nowhere.
    status_bind: tuple[str, int] | None = None
    #: How long before expiry /healthz turns to "warning".
    warning_seconds: int = DEFAULT_LIMITS.expiry_warning_seconds

    def __post_init__(self) -> None:
        if not self.trust_roots:
            raise ValueError("a secured bus needs at least one trusted root")


@dataclass(frozen=True, slots=True)
class Listen:
    """Where the embedded server listens: clients on `host`:`port` (None: a port of its
    choosing), its HTTP monitoring on `monitor` (None: loopback, a port of its choosing),
    and, with `tls`, clients over TLS only (mutual with `tls.verify`)."""

    host: str = "127.0.0.1"
    port: int | None = None
    monitor: tuple[str, int] | None = None
    tls: ServerTls | None = None

    def server(self, store_dir: Path, *, extra_config: str = "") -> NatsServer:
        return NatsServer(
            store_dir=store_dir,
            host=self.host,
            port=self.port,
            monitor=self.monitor,
            tls=self.tls,
            extra_config=extra_config,
        )


def run_foreground(
    *, store_dir: Path, port: int | None, trust: BusTrust, listen: Listen | None = None
) -> int:
    """Start a secured server, provision, follow the directory; stop on SIGINT/SIGTERM.
    `listen` says where (its port is `port` when given).

    Raises (before starting anything) if the directory does not verify against the roots
    (`UntrustedInputError` with its reason) or the operator's keys cannot be opened.
    """
    later_roots = [r.read_bytes() for r in trust.trust_roots[1:]]
    directory_bytes = trust.directory.read_bytes()
    pinned = trust.trust_roots[0].read_bytes()
    directory = directory_from_files(pinned, later_roots, directory_bytes, now=clock.now())
    operator = load_key_dir(trust.operator_keys, passphrase=trust.passphrase)
    if operator.nats_seed is None or operator.public.nats_key is None:
        raise KeyFileError(f"the operator keys in {trust.operator_keys} have no NATS key")
    services = ServiceKeys(operators=(operator.public.nats_key,), ledgers=tuple(trust.ledger_nkeys))
    authorization = authorization_for(directory, services=services)
    where = _listen(listen, port)
    server = where.server(store_dir, extra_config=authorization)
    authority = DirectoryAuthority(
        server,
        pinned_root=trust.trust_roots[0],
        nkeys_seed=operator.nats_seed,
        services=services,
        provisioning_seed=operator.nats_seed,
        warning_seconds=trust.warning_seconds,
    )
    authority.follower.restore(later_roots, directory_bytes)
    authority.adopt(directory, authorization)
    mode = (
        f"authorization from directory version {directory.version}, "
        f"{len(directory.agencies)} agencies"
    )
    return asyncio.run(
        _serve(
            server,
            nkeys_seed=operator.nats_seed,
            authority=authority,
            mode=mode,
            status_bind=trust.status_bind,
            agencies=attachment_owners(directory),
        )
    )


def unsafe_run_foreground_open(
    *,
    store_dir: Path,
    port: int | None,
    agencies: Sequence[str] = (),
    listen: Listen | None = None,
) -> int:
    """Like `run_foreground` but with NO authorization: any local client may connect,
    read every inbox and write the directory. For experiments on one machine only; it
    knows no directory, so `agencies` name the inbox streams and attachment buckets it
    makes."""
    warning = (
        "WARNING: unsafe open bus: no authorization, anonymous clients may read and write "
        "every subject, inbox and the directory bucket; never use it with real data"
    )
    print(warning, file=sys.stderr, flush=True)
    log.warning("unsafe_open_bus", store=str(store_dir))
    server = _listen(listen, port).server(store_dir)
    return asyncio.run(
        _serve(server, nkeys_seed=None, authority=None, mode="UNSAFE: open", agencies=agencies)
    )


def _listen(listen: Listen | None, port: int | None) -> Listen:
    where = listen or Listen()
    if port is not None and where.port is None:
        where = Listen(host=where.host, port=port, monitor=where.monitor, tls=where.tls)
    return where


async def _serve(
    server: NatsServer,
    *,
    nkeys_seed: bytes | None,
    authority: DirectoryAuthority | None,
    mode: str,
    status_bind: tuple[str, int] | None = None,
    agencies: Sequence[str] = (),
) -> int:
    """Run `server` (and `authority`, and its status endpoint at `status_bind`) until
    SIGINT/SIGTERM; 1 if the server dies first. `agencies` get their inbox streams and
    attachment buckets before anything else starts."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    try:
        server.start()
        try:
            await provision(server.endpoint(), nkeys_seed=nkeys_seed, agencies=agencies)
            status = None
            if authority is not None:
                await authority.start()
            try:
                if authority is not None and status_bind is not None:
                    status = await serve_status(authority, host=status_bind[0], port=status_bind[1])
                    host, port = status.addresses[0][:2]
                    mode += f"; status at http://{host}:{port}/healthz"
                mode += f"; monitoring at {server.monitor_url}"
                print(f"NATS bus ready at {server.url}; {mode}", flush=True)
                log.info("bus_ready", url=server.url, secured=authority is not None)
                while not stop.is_set():
                    if not server.running:
                        print(
                            f"nats-server exited unexpectedly; see {server.log_path}",
                            file=sys.stderr,
                            flush=True,
                        )
                        return 1
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=_WATCH_SECONDS)
            finally:
                if status is not None:
                    await status.cleanup()
                if authority is not None:
                    await authority.stop()
        finally:
            server.stop()
    finally:
        for sig in _STOP_SIGNALS:
            loop.remove_signal_handler(sig)
    print("NATS bus stopped", flush=True)
    return 0
