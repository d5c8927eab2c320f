"""nats-server with TLS and mutual TLS, and clients reaching it through a BusEndpoint."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import nats
import nats.errors
import pytest
import trustme
from click.testing import CliRunner, Result

from agents import Agent
from agents.transport import STOP_GRACE_SECONDS
from broker import NatsServer
from broker.server import ServerTls, tls_block
from keys.identity import new_nats_seed
from nrm.cli import main
from runtime.bus_client import CLOSE_SECONDS, close_client
from runtime.endpoint import BusEndpoint, BusTls
from runtime.files import write_new_file

from .support import (
    Mechanism,
    Pki,
    copy_agency_folder,
    eventually,
    make_tls,
    running_mechanism,
)
from .test_ledger import audit_verify, exchange


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, the server's certificate for 127.0.0.1, and one client certificate."""
    pki = Pki(tmp_path_factory.mktemp("pki"))
    cert, key = pki.issue("server", "127.0.0.1", "nats.test")
    client_cert, client_key = pki.issue("client", "police.agency.test")
    files = {"ca": pki.ca_file, "cert": cert, "key": key}
    files |= {"client_cert": client_cert, "client_key": client_key}
    return files


@pytest.fixture(scope="module")
def mtls_server(
    pki: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NatsServer]:
    tls = ServerTls(cert_file=pki["cert"], key_file=pki["key"], ca_file=pki["ca"], verify=True)
    with NatsServer(store_dir=tmp_path_factory.mktemp("tls-bus"), tls=tls) as server:
        yield server


def test_the_tls_block_names_every_file() -> None:
    block = tls_block(
        ServerTls(Path("/c.pem"), Path("/k.pem"), Path("/ca.pem"), verify=True), indent="  "
    )
    assert block.splitlines() == [
        "  tls {",
        '    cert_file: "/c.pem"',
        '    key_file: "/k.pem"',
        '    ca_file: "/ca.pem"',
        "    verify: true",
        "    timeout: 5",
        "  }",
    ]
    with pytest.raises(ValueError, match="needs the CA"):
        ServerTls(Path("/c.pem"), Path("/k.pem"), verify=True)


async def test_a_client_with_its_certificate_is_served(
    mtls_server: NatsServer, pki: dict[str, Path]
) -> None:
    assert mtls_server.url.startswith("tls://")
    tls = BusTls(ca_file=pki["ca"], cert_file=pki["client_cert"], key_file=pki["client_key"])
    nc = await nats.connect(
        **BusEndpoint.of(mtls_server.url, tls).connect_options(), allow_reconnect=False
    )
    try:
        await nc.publish("x", b"y")
        await nc.flush()
        assert nc.client_id is not None  # the server answered INFO/CONNECT/PONG over TLS
    finally:
        await nc.close()


async def test_the_server_name_can_differ_from_the_url_host(
    mtls_server: NatsServer, pki: dict[str, Path]
) -> None:
    tls = BusTls(
        ca_file=pki["ca"],
        cert_file=pki["client_cert"],
        key_file=pki["client_key"],
        server_name="nats.test",
    )
    nc = await nats.connect(
        **BusEndpoint.of(mtls_server.url, tls).connect_options(), allow_reconnect=False
    )
    await nc.close()


@pytest.mark.parametrize(
    "settings",
    [
        {"ca_file": "ca"},  # no client certificate: mutual TLS refuses it
        {"cert_file": "client_cert", "key_file": "client_key"},  # server's CA not trusted
        {
            "ca_file": "ca",
            "cert_file": "client_cert",
            "key_file": "client_key",
            "server_name": "other.test",
        },  # the certificate does not carry that name
    ],
)
async def test_a_client_that_fails_tls_is_refused(
    mtls_server: NatsServer, pki: dict[str, Path], settings: dict[str, str]
) -> None:
    files = {k: pki[v] for k, v in settings.items() if k != "server_name"}
    tls = BusTls(**files, server_name=settings.get("server_name"))
    with pytest.raises((nats.errors.NoServersError, OSError, TimeoutError)):
        nc = await nats.connect(
            **BusEndpoint.of(mtls_server.url, tls).connect_options(),
            allow_reconnect=False,
            connect_timeout=2,
        )
        try:  # with mutual TLS refused the server closes the connection after the handshake
            await nc.flush(timeout=2)
        finally:
            await nc.close()


# --- a whole mechanism over mutual TLS, its APIs over HTTPS ----------------------------------


def nrm_in_thread(*args: str | Path) -> Awaitable[Result]:
    """Run an `nrm` command in a worker thread (it runs its own event loop)."""
    return asyncio.to_thread(CliRunner().invoke, main, [str(a) for a in args])


async def refused_plain_http(url: str) -> bool:
    """Whether a plain-HTTP request to the port of the https:// `url` gets no answer."""
    plain = url.replace("https://", "http://", 1)
    async with aiohttp.ClientSession() as http:
        try:
            async with http.get(f"{plain}/healthz") as r:
                await r.read()
        except aiohttp.ClientError:
            return True
    return False


async def test_agencies_exchange_over_mutual_tls_and_serve_https(tmp_path: Path) -> None:
    """Agents and the ledger reach a bus requiring mutual TLS; referrals flow, the ledger
    confirms the events over HTTPS; both APIs serve HTTPS only (a client with the CA is
    served, plain HTTP to the port is not); the auditor CLI reads the ledger over HTTPS and
    `nrm directory publish` reaches the bus with several tls:// URLs and the --tls-* files."""
    tls = make_tls(tmp_path / "pki")
    async with running_mechanism(tmp_path / "m", tls=tls) as m:
        assert m.bus.url.startswith("tls://")
        await exchange(m)  # referrals delivered over the bus, every event confirmed
        [item, *_] = await m.api("shelter").inbox()
        assert item["sender"] == "police"
        ledger = m.sandbox.ledger
        assert ledger is not None and ledger.url.startswith("https://")
        for agency in ("police", "shelter"):
            assert m.agents[agency].api_url.startswith("https://")
            status, health, _ = await m.api(agency).call("GET", "/healthz")
            assert (status, health["bus"], health["ledger"]["status"]) == (200, "connected", "ok")
            assert await refused_plain_http(m.agents[agency].api_url)
        assert await refused_plain_http(ledger.url)

        token_file = tmp_path / "auditor.token"
        token_file.write_text(m.sandbox.auditor_token)
        source = ("--ledger", ledger.url, "--token-file", str(token_file))
        code, out = await asyncio.to_thread(
            audit_verify, m, *source, "--ledger-ca", str(tls.ca_file)
        )
        assert code == 0 and "OK:" in out, out
        code, out = await asyncio.to_thread(audit_verify, m, *source)  # the system's CAs
        assert code == 1 and "could not read the ledger" in out and "Traceback" not in out

        assert tls.client_cert is not None and tls.client_key is not None
        bus = f"{m.bus.url},tls://127.0.0.1:1"  # a second node that is down
        publish = ("directory", "publish", "--nats", bus, "--tls-ca", tls.ca_file)
        passphrase = tmp_path / "admin.pass"
        write_new_file(passphrase, m.sandbox.admin_passphrase)
        admin = ("--dir", m.sandbox.admin.path, "--passphrase-file", passphrase)
        with_cert = ("--tls-cert", tls.client_cert, "--tls-key", tls.client_key)
        result = await nrm_in_thread(*publish, *with_cert, *admin)
        assert result.exit_code == 0, result.output
        assert "published directory version 1" in result.output
        result = await nrm_in_thread(*publish, *admin)  # mutual TLS: no certificate, refused
        assert result.exit_code == 4, result.output  # unreachable (nrm/exits.py)
        assert "could not publish to the bus at tls://127.0.0.1:" in result.output
        assert isinstance(result.exception, SystemExit)  # a message, not a traceback
        assert "Traceback" not in result.output, result.output

        # An agent whose TLS settings are wrong says so in its health, and stops cleanly.
        other_ca = tmp_path / "other-ca.pem"
        trustme.CA().cert_pem.write_to_path(str(other_ca))
        for case, nats_tls in [
            ("wrong-ca", BusTls(other_ca, tls.client_cert, tls.client_key)),
            ("no-client-cert", BusTls(tls.ca_file)),
        ]:
            config = copy_agency_folder(m, "police", f"police-{case}")
            text = re.sub(r"\[nats_tls\]\n(.+\n)+", nats_tls_table(nats_tls), config.read_text())
            config.write_text(text)
            agent = Agent.from_config_file(config)
            await agent.start()
            try:

                async def tls_failed(agent: Agent = agent) -> bool:
                    return bool(agent.health()["bus"] == "tls-failed")

                await eventually(tls_failed, what=f"{case}: the bus link to show tls-failed")
                assert agent.health()["status"] == "degraded"
            finally:
                async with asyncio.timeout(STOP_BOUND_SECONDS):
                    await agent.stop()


def nats_tls_table(tls: BusTls) -> str:
    """The `[nats_tls]` table of `tls`, as agent.toml holds it."""
    lines = ["[nats_tls]"]
    for key in ("ca_file", "cert_file", "key_file"):
        if getattr(tls, key) is not None:
            lines.append(f'{key} = "{getattr(tls, key)}"')
    return "\n".join(lines) + "\n"


#: How long an agent may take to stop with its bus down: the transport's close (drain or
#: close, then abandon: runtime/bus_client.py) and its loops' grace.
STOP_BOUND_SECONDS = 2 * CLOSE_SECONDS + STOP_GRACE_SECONDS


async def test_an_agent_stops_cleanly_while_its_tls_bus_is_down(tmp_path: Path) -> None:
    """Issue 13: with the TLS bus stopped under a connected agent (and the ledger), stopping
    them finishes within the bound and raises nothing, though nats-py buffered requests
    for a TLS socket that is closed (its close wrote them into it: AttributeError)."""
    async with aiohttp.ClientSession() as http:
        m = await Mechanism.create(tmp_path / "m", http, tls=make_tls(tmp_path / "pki"))
        try:
            agent = await m.start("police")
            ledger = m.sandbox.ledger
            assert ledger is not None
            m.bus.stop()

            async def buffered_while_down() -> bool:
                # nats-py's own buffer (what made its close fail): the consumer's requests
                nc = agent.transport._nc
                return (
                    not agent.transport.link.connected
                    and nc is not None
                    and nc._pending_data_size > 0
                )

            await eventually(buffered_while_down, what="requests buffered with the bus down")
            async with asyncio.timeout(STOP_BOUND_SECONDS):
                await m.stop("police")
            async with asyncio.timeout(STOP_BOUND_SECONDS + 3):
                await m.sandbox.stop_ledger()
            assert ledger.supervisor.reasons() == []  # the consumer did not die closing
        finally:
            await m.close()


async def test_a_tls_client_sends_nothing_in_clear_to_a_server_that_offers_no_tls(
    pki: dict[str, Path],
) -> None:
    """A man in the middle answering like a plaintext nats-server (INFO without
    `tls_required`, the cue nats-py waits for) sees a TLS ClientHello, never the CONNECT
    that carries the NKey login."""
    received = bytearray()

    async def fake_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b'INFO {"server_id":"x","version":"2.15.1","max_payload":1048576,'
                     b'"auth_required":true,"nonce":"abc"}\r\n')  # fmt: skip
        await writer.drain()
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            received.extend(await asyncio.wait_for(reader.read(4096), 5))
        writer.close()

    server = await asyncio.start_server(fake_server, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises((nats.errors.NoServersError, OSError, TimeoutError)):
            await nats.connect(
                **BusEndpoint.of(
                    f"tls://127.0.0.1:{port}", BusTls(ca_file=pki["ca"])
                ).connect_options(),
                allow_reconnect=False,
                connect_timeout=2,
                nkeys_seed_str=new_nats_seed().decode(),
            )
    finally:
        server.close()
        await server.wait_closed()
    assert received[:1] == b"\x16"  # a TLS handshake record
    assert b"CONNECT" not in received


async def test_a_close_that_fails_after_closed_still_cancels_the_subscriptions(
    tmp_path: Path,
) -> None:
    """nats-py marks a client CLOSED before it flushes what it buffered; if that write fails
    (over TLS: AttributeError from a transport that is gone, injected here into a real
    connection), a second close() returns at once. close_client then abandons the client:
    the subscription's callback task is cancelled, not left running."""
    with NatsServer(store_dir=tmp_path / "nats") as server:
        nc = await nats.connect(server.url, allow_reconnect=False)

        async def on_message(_msg: Any) -> None:
            return None

        sub = await nc.subscribe("nrm.test", cb=on_message)
        task = sub._wait_for_msgs_task
        assert task is not None and not task.done()
        nc._flusher_task.cancel()  # what it buffered stays for close() to write

        def gone(*_: Any) -> None:
            raise AttributeError("'NoneType' object has no attribute 'write'")

        nc._transport.writelines = gone
        nc._pending, nc._pending_data_size = [b"PUB nrm.test 0\r\n\r\n"], 18
        nc._status = nc.RECONNECTING  # not connected: close_client closes, without drain
        await close_client(nc)
        assert nc.is_closed

        async def ended() -> bool:
            return task.done()

        await eventually(ended, what="the subscription's task ended")
