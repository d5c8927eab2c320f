"""`nrm bus authority` beside three nats-server nodes the operator runs himself.

The nodes run from the files `nrm cluster config` wrote (routes and clients over mutual
TLS), their streams come from `nrm bus provision --replicas 3`, and one `nrm bus authority`
per node runs as its own process. Publishing a directory without an agency closes its
connection on every node and keeps it off every node; publishing one that admits a new
agency lets it on every node, its inbox stream made (three replicas, by the publish: the
authorities hold no operator key, only their own) before it could connect. A restarted
authority refuses an older directory put back in the bucket (its trust cache); one whose
node is down reports it on /healthz and catches up when the node is back.
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import nats
import nats.errors
import pytest
from click.testing import CliRunner

from broker.external import ExternalServer
from broker.server import Monitoring, ReloadFailed, nats_server_binary
from keys import PublicIdentity
from keys.subjects import DIRECTORY_BUCKET, DIRECTORY_KEY, inbox_stream
from nrm import admin
from nrm.cli import main
from nrm.exits import EXIT_UNREACHABLE
from nrm.sandbox import Sandbox
from runtime.endpoint import BusEndpoint, BusTls
from runtime.files import replace_file
from runtime.keydir import init_key_dir, load_key_dir
from runtime.version import VERSION

from .support import TEST_KDF, eventually, free_port, prepared_mechanism
from .test_cluster_config import SpecTrust, spec_text, write_pki

pytestmark = pytest.mark.timeout(120)

NODES = 3
START_SECONDS = 30.0


def cluster_spec(tmp: Path, sandbox: Sandbox, pki: dict[str, Path]) -> Path:
    """Three loopback nodes on free ports, routes and clients over mutual TLS: the
    authorities (following), `nrm bus provision`, `nrm directory publish` and the test's
    clients all present a client certificate. The authorities share one key folder of
    their own (one machine), the ledger's identity is the sandbox's; no authority is given
    the operator's key."""
    replace_file(tmp / "operator.passphrase", sandbox.admin_passphrase)
    passphrase = tmp / "authority.passphrase"
    replace_file(passphrase, b"authority passphrase 1")
    init_key_dir(
        tmp / "authority",
        agency="bus-authority",
        name="Bus authority",
        passphrase=b"authority passphrase 1",
        cost=TEST_KDF,
    )
    folder = sandbox.admin
    operator = folder.path / admin.OPERATOR_DIR
    trust = SpecTrust(
        roots=(folder.root_path(1),),
        directory=folder.path / "directory.json",
        operator_identity=operator / "identity.json",
        ledger_identity=sandbox.ledger_home / "keys" / "identity.json",
        authority_identities=(tmp / "authority" / "identity.json",),
        trust_root=folder.root_path(1),
        key_dir=tmp / "authority",
        passphrase_file=passphrase,
    )
    ports = [(free_port(), free_port(), free_port(), free_port()) for _ in range(NODES)]
    spec = tmp / "cluster.toml"
    spec.write_text(spec_text(tmp, pki, ports=ports, trust=trust))
    return spec


class Processes:
    """Child processes, each stopped (SIGTERM, then SIGKILL) at the end."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], out: Path) -> subprocess.Popen[bytes]:
        with out.open("ab") as sink:
            process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT
            )
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.started):  # authorities before servers
            if process.poll() is None:
                process.terminate()
        for process in reversed(self.started):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def processes() -> Iterator[Processes]:
    p = Processes()
    try:
        yield p
    finally:
        p.stop_all()


def setting(toml: Path, key: str) -> Any:
    return tomllib.loads(toml.read_text())[key]


def wait_for(check: object, what: str, timeout: float = START_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    assert callable(check)
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def healthy(monitor_url: str) -> bool:
    try:
        return Monitoring.of_url(monitor_url).healthz()
    except OSError:
        return False


#: The test's client TLS (write_pki's files), set by the test before it connects.
CLIENT_TLS: list[BusTls] = []


def meta_formed(monitor_url: str) -> bool:
    """The node's JetStream meta group has a leader and every node (/jsz): before it,
    streams with three replicas cannot be placed."""
    try:
        meta = Monitoring.of_url(monitor_url).get("/jsz").get("meta_cluster") or {}
    except OSError:
        return False
    return bool(meta.get("leader")) and meta.get("cluster_size") == NODES


async def connect(url: str, seed: bytes) -> nats.aio.client.Client:
    return await nats.connect(
        **BusEndpoint.of(url, CLIENT_TLS[0]).connect_options(),
        nkeys_seed_str=seed.decode(),
        allow_reconnect=False,
        connect_timeout=2,
        name="probe",
    )


async def admitted(url: str, seed: bytes) -> bool:
    try:
        nc = await connect(url, seed)
    except (nats.errors.Error, OSError, TimeoutError):
        return False
    await nc.close()
    return True


async def provision(args: list[str]) -> None:
    """`nrm bus provision` (in a thread: it runs its own event loop), again while JetStream
    elects its meta leader (exit 4)."""
    deadline = time.monotonic() + START_SECONDS
    while True:
        result = await asyncio.to_thread(CliRunner().invoke, main, args)
        if result.exit_code == 0:
            assert "3 replica(s)" in result.output
            return
        assert result.exit_code == EXIT_UNREACHABLE, result.output
        assert "Traceback" not in result.output
        assert time.monotonic() < deadline, result.output
        await asyncio.sleep(0.5)


async def publish(sandbox: Sandbox, bus: BusEndpoint) -> None:
    """`nrm directory publish`, again while the bucket's new replicas elect a leader."""
    deadline = time.monotonic() + START_SECONDS
    while True:
        try:
            await admin.publish(sandbox.admin, bus, passphrase=sandbox.admin_passphrase)
            return
        except admin.BusUnreachableError:
            assert time.monotonic() < deadline, "the directory bucket never answered"
            await asyncio.sleep(0.2)


async def test_a_directory_change_reaches_every_node_through_its_authority(
    tmp_path: Path, processes: Processes
) -> None:
    sandbox = prepared_mechanism(tmp_path / "m", admins=1, threshold=1)
    pki = write_pki(tmp_path)
    tls = BusTls(ca_file=pki["ca"], cert_file=pki["client"], key_file=pki["client_key"])
    CLIENT_TLS[:] = [tls]
    out = tmp_path / "cluster"
    spec = cluster_spec(tmp_path, sandbox, pki)
    result = CliRunner().invoke(main, ["cluster", "config", "--spec", str(spec), "--out", str(out)])
    assert result.exit_code == 0, result.output
    names = [f"n{i}" for i in range(1, NODES + 1)]
    tomls = [out / f"{n}.authority.toml" for n in names]
    urls = setting(tomls[0], "nats_urls")

    def start_server(name: str) -> subprocess.Popen[bytes]:
        args = [str(nats_server_binary()), "-c", str(out / f"{name}.conf")]
        return processes.start(args, tmp_path / f"{name}.out")

    for name in names:
        (tmp_path / f"store-{name[1:]}").mkdir()
    servers = [start_server(name) for name in names]
    for toml in tomls:
        monitor_url = setting(toml, "monitor_url")
        wait_for(
            lambda url=monitor_url: healthy(url) and meta_formed(url),
            "every node healthy, in a JetStream meta group of three with a leader",
        )

    operator_dir = sandbox.admin.path / admin.OPERATOR_DIR
    provision_args = ["bus", "provision", "--nats", ",".join(urls), "--replicas", "3",
                      "--tls-ca", str(pki["ca"]), "--tls-cert", str(pki["client"]),
                      "--tls-key", str(pki["client_key"]),
                      "--operator-keys", str(operator_dir),
                      "--passphrase-file", str(tmp_path / "operator.passphrase"),
                      "--trust-root", str(sandbox.admin.root_path(1)),
                      "--directory", str(sandbox.admin.path / "directory.json")]  # fmt: skip
    await provision(provision_args)
    await publish(sandbox, BusEndpoint.of(urls[0], tls))

    first_directory = (sandbox.admin.path / "directory.json").read_bytes()

    def start_authority(toml: Path, log: Path) -> subprocess.Popen[bytes]:
        args = [sys.executable, "-m", "nrm", "bus", "authority", "--config", str(toml)]
        return processes.start(args, log)

    def wait_ready(log: Path) -> None:  # each reloads its node once at start, whatever
        wait_for(  # the file holds
            lambda: "ready" in log.read_text() and "_reloaded" in log.read_text(),
            f"{log.name} ready, its first reload done",
        )

    authorities = [tmp_path / f"{name}.authority.out" for name in names]
    first = [start_authority(toml, log) for toml, log in zip(tomls, authorities, strict=True)]
    for log in authorities:
        wait_ready(log)

    police = load_key_dir(
        sandbox.agencies["police"].key_dir, passphrase=sandbox.agencies["police"].passphrase()
    )
    assert police.nats_seed is not None
    on_every_node = [await connect(url, police.nats_seed) for url in urls]
    assert all(nc.is_connected for nc in on_every_node)
    for toml in tomls:  # what each authority's ConnectionWatch reads: its own node's /connz
        node = ExternalServer(
            endpoint=BusEndpoint.of(urls, tls),
            authorization_file=out / setting(toml, "authorization_file"),
            pid_file=Path(setting(toml, "pid_file")),
            monitor_url=setting(toml, "monitor_url"),
        )
        users = [c.get("authorized_user") for c in node.connections()]
        assert users.count(police.public.nats_key) == 1, users

    # A directory without the police: each node's authority reloads it, closing its
    # connection there, and none lets it back.
    admin.remove_agency(sandbox.admin, "police")
    sandbox.sign_draft()
    await publish(sandbox, BusEndpoint.of(urls[1], tls))

    async def cut_off() -> bool:
        return all(nc.is_closed for nc in on_every_node)

    await eventually(cut_off, timeout=30, what="the police's connection closed on every node")
    for url in urls:
        assert not await admitted(url, police.nats_seed), url

    # A directory admitting a new agency: its inbox stream first, then every node lets it in.
    clinic = init_key_dir(
        tmp_path / "clinic", agency="clinic", name="Clinic", passphrase=b"clinic", cost=TEST_KDF
    )
    assert clinic.nats_seed is not None
    identity = PublicIdentity.from_json((tmp_path / "clinic" / "identity.json").read_bytes())
    admin.add_agency(sandbox.admin, identity, roles=["ngo"])
    sandbox.sign_draft()
    await publish(sandbox, BusEndpoint.of(urls[2], tls))

    operator = load_key_dir(operator_dir, passphrase=sandbox.admin_passphrase)
    assert operator.nats_seed is not None

    async def clinic_replicas() -> int:
        nc = await connect(urls[0], operator.nats_seed)
        try:
            info = await nc.jetstream(timeout=5).stream_info(inbox_stream("clinic"))
            replicas: int = info.config.num_replicas
            return replicas
        finally:
            await nc.close()

    async def first_in() -> bool:
        return any([await admitted(url, clinic.nats_seed) for url in urls])

    async def let_in() -> bool:
        return all([await admitted(url, clinic.nats_seed) for url in urls])

    await eventually(first_in, timeout=30, what="the clinic admitted on a node")
    # As soon as it can connect anywhere, its inbox stream is there, with three replicas
    # (made by `nrm directory publish` with the directory bucket's: nothing else
    # provisioned it, the authorities cannot).
    assert await clinic_replicas() == 3
    await eventually(let_in, timeout=30, what="the clinic admitted on every node")
    await provision(provision_args)  # idempotent: again, the clinic's stream as it was
    assert await clinic_replicas() == 3
    for log in authorities:  # each reports the directory it applied, healthy
        status = re.search(r"status at (http://\S+/healthz)", log.read_text())
        assert status is not None, log.read_text()
        async with aiohttp.ClientSession() as http, http.get(status[1]) as r:
            health = await r.json()
        assert (health["status"], health["directory_version"]) == ("ok", 3), health
        assert health["version"] == VERSION
    for name in names:  # each authority reloaded its own node
        assert os.stat(out / f"{name}.authorization.conf").st_mode & 0o777 == 0o600
        assert identity.nats_key is not None
        assert identity.nats_key in (out / f"{name}.authorization.conf").read_text()
        kept = out / f"{name}.trust" / "directory.json"
        assert stat.S_IMODE(kept.stat().st_mode) == 0o600

    # The trust floor outlives a restart: the first directory (with the police), put back
    # into the bucket by someone holding the operator's NKey, is refused by a restarted
    # authority as by the others, and the police stays off its node.
    first[0].terminate()
    first[0].wait(timeout=15)
    nc = await connect(urls[0], operator.nats_seed)
    try:  # while it is down: the bucket's newest is the old one when it starts again
        kv = await nc.jetstream(timeout=5).key_value(DIRECTORY_BUCKET)
        await kv.put(DIRECTORY_KEY, first_directory)
    finally:
        await nc.close()
    again = tmp_path / "n1.authority.again.out"
    start_authority(tomls[0], again)
    wait_ready(again)
    status = re.search(r"status at (http://\S+/healthz)", again.read_text())
    assert status is not None

    async def refused() -> bool:
        async with aiohttp.ClientSession() as http, http.get(status[1]) as r:
            health = await r.json()
        return health.get("refused") is not None and health["directory_version"] == 3

    await eventually(refused, timeout=10, what="the restarted authority refusing it")
    assert not await admitted(urls[0], police.nats_seed)

    # A node that is down when a directory comes: its authority reports the failed reload
    # on /healthz and tries again until the node is back, which then runs the directory.
    n3_health = re.search(r"status at (http://\S+/healthz)", authorities[2].read_text())
    assert n3_health is not None
    servers[2].terminate()
    servers[2].wait(timeout=15)
    admin.remove_agency(sandbox.admin, "clinic")
    sandbox.sign_draft()
    await publish(sandbox, BusEndpoint.of(urls[0], tls))

    async def n3_reasons() -> list[str]:
        async with aiohttp.ClientSession() as http, http.get(n3_health[1]) as r:
            health = await r.json()
        return [] if health["directory_version"] != 4 else [*health["reasons"], "seen"]

    async def n3_failed() -> bool:
        return "authorization-reload-failed" in await n3_reasons()

    await eventually(n3_failed, timeout=30, what="n3's authority reporting the failed reload")
    servers.append(start_server("n3"))

    async def n3_caught_up() -> bool:
        return await n3_reasons() == ["seen"]

    await eventually(n3_caught_up, timeout=20, what="n3's authority retrying, then healthy")
    assert not await admitted(urls[2], clinic.nats_seed)


def test_a_refused_reload_is_reported_and_the_previous_file_put_back(
    tmp_path: Path, processes: Processes
) -> None:
    """nats-server refusing the new include file keeps its configuration: ExternalServer
    raises ReloadFailed quoting the server's log, puts the previous file back, and a good
    authorization then reloads (a newer config_load_time, the same pid)."""
    monitor = free_port()
    auth = tmp_path / "node.authorization.conf"
    good = 'authorization {\n  users = [ { nkey: "%s" } ]\n}\n'
    nkey = "UAFXAVJSNVUCTT4MDDY7AQXPW72HKWICYMWX4P37PSF7KAELDLRMFB6Y"
    replace_file(auth, (good % nkey).encode())
    conf = tmp_path / "node.conf"
    conf.write_text(
        f'listen: "127.0.0.1:{free_port()}"\nhttp: "127.0.0.1:{monitor}"\n'
        f'pid_file: "{tmp_path / "node.pid"}"\nlog_file: "{tmp_path / "node.log"}"\n'
        f'jetstream {{ store_dir: "{tmp_path / "store"}" }}\ninclude "node.authorization.conf"\n'
    )
    process = processes.start([str(nats_server_binary()), "-c", str(conf)], tmp_path / "out")
    url = f"http://127.0.0.1:{monitor}"
    wait_for(lambda: healthy(url) and (tmp_path / "node.pid").exists(), "the node healthy")
    server = ExternalServer(
        endpoint=BusEndpoint.of("nats://127.0.0.1:1"),
        authorization_file=auth,
        pid_file=tmp_path / "node.pid",
        monitor_url=url,
        log_file=tmp_path / "node.log",
    )
    before = server.monitoring.loaded().load_time

    with pytest.raises(ReloadFailed, match="Failed to reload"):
        server.reload("authorization { users = [ { nkey: \n")
    assert auth.read_text() == good % nkey
    assert server.monitoring.loaded().load_time == before

    other = "UCL4AVCKBLSIQWL5ZQUBW3OYY24AC72DBMHOO52EXO7GBBOBECPOCPPN"
    server.reload(good % other)
    assert server.monitoring.loaded().load_time != before
    assert server.pid() == process.pid
    assert stat.S_IMODE(auth.stat().st_mode) == 0o600
    # What the authority's drift check sees: nothing, until the file changes behind it.
    assert server.drifted(good % other) is None
    replace_file(auth, (good % nkey).encode())
    assert server.drifted(good % other) == "authorization-file-changed"
    server.reload(good % other)
    assert server.drifted(good % other) is None
    # A file edited by hand in another encoding is a changed file, rewritten, never an
    # error that would stop the reloads; a refused reload puts it back byte for byte.
    latin1 = ("# édité\n" + good % other).encode("latin-1")
    replace_file(auth, latin1)
    assert server.drifted(good % other) == "authorization-file-changed"
    with pytest.raises(ReloadFailed, match="Failed to reload"):
        server.reload("authorization { users = [ { nkey: \n")
    assert auth.read_bytes() == latin1
    server.reload(good % other)
    assert server.drifted(good % other) is None

    # A file that cannot be written (its directory not the authority's) is a ReloadFailed,
    # not an OSError that would end the authority's reload loop.
    elsewhere = ExternalServer(
        endpoint=server.endpoint(),
        authorization_file=tmp_path / "missing" / "node.authorization.conf",
        pid_file=tmp_path / "node.pid",
        monitor_url=url,
    )
    with pytest.raises(ReloadFailed, match="cannot write"):
        elsewhere.reload(good % nkey)

    process.terminate()
    process.wait(timeout=15)
    with pytest.raises(ReloadFailed, match="not running"):
        server.reload(good % nkey)
    assert auth.read_text() == good % other
    # A pid file naming another process (a pid reused after a crash) is never signalled.
    replace_file(tmp_path / "node.pid", str(os.getpid()).encode())
    with pytest.raises(ReloadFailed, match="not nats-server"):
        server.pid()
