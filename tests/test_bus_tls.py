"""nats-server with TLS and mutual TLS, and clients reaching it through a BusEndpoint."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import nats
import nats.errors
import pytest
import trustme

from broker import NatsServer
from broker.server import ServerTls, tls_block
from runtime.endpoint import BusEndpoint, BusTls


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, the server's certificate for 127.0.0.1, and one client certificate."""
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "nats.test")
    client = ca.issue_cert("police.agency.test")
    files = {
        "ca": folder / "ca.pem",
        "cert": folder / "server.pem",
        "key": folder / "server.key",
        "client_cert": folder / "client.pem",
        "client_key": folder / "client.key",
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    server.cert_chain_pems[0].write_to_path(str(files["cert"]))
    server.private_key_pem.write_to_path(str(files["key"]))
    client.cert_chain_pems[0].write_to_path(str(files["client_cert"]))
    client.private_key_pem.write_to_path(str(files["client_key"]))
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
