"""`nrm bus up` listen, monitoring and TLS options, and `nrm bus provision`'s errors."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import urllib.request
from pathlib import Path

import nats
import nats.errors
import pytest
from click.testing import CliRunner

from keys.subjects import inbox_stream
from nrm.cli import EXIT_BUS_UNREACHABLE, main
from runtime.endpoint import BusEndpoint, BusTls
from runtime.files import replace_file

from .support import prepared_mechanism
from .test_bus_authority import free_port
from .test_cli import BusUp, bus_up  # noqa: F401 - the fixture
from .test_cluster_config import write_pki


def test_bus_up_listens_monitors_and_requires_mutual_tls_where_told(
    bus_up: BusUp,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    """--listen, --monitor on every address (Prometheus can scrape /varz) and mutual TLS:
    the bus provisions itself over TLS, a client with its certificate is served, one
    without is refused."""
    pki = write_pki(tmp_path)
    port, monitor = free_port(), free_port()
    process, out = bus_up.start(
        "--store", tmp_path / "s", "--unsafe-open", "--agency", "police",
        "--listen", f"127.0.0.1:{port}", "--monitor", f"0.0.0.0:{monitor}",
        "--server-tls-cert", pki["server"], "--server-tls-key", pki["server_key"],
        "--server-tls-ca", pki["ca"], "--server-tls-verify",
    )  # fmt: skip
    text = out.read_text()
    assert re.search(rf"NATS bus ready at tls://127\.0\.0\.1:{port};", text), text
    assert f"monitoring at http://127.0.0.1:{monitor}" in text
    with urllib.request.urlopen(f"http://127.0.0.1:{monitor}/varz", timeout=5) as r:
        varz = json.loads(r.read())
    assert varz["port"] == port and varz["tls_required"] and varz["tls_verify"]

    url = f"tls://127.0.0.1:{port}"
    with_cert = BusTls(ca_file=pki["ca"], cert_file=pki["client"], key_file=pki["client_key"])

    async def clients() -> None:
        nc = await nats.connect(
            **BusEndpoint.of(url, with_cert).connect_options(), allow_reconnect=False
        )
        try:  # provisioned by `bus up` itself, over mutual TLS
            info = await nc.jetstream(timeout=5).stream_info(inbox_stream("police"))
            assert info.config.name == inbox_stream("police")
        finally:
            await nc.close()
        with pytest.raises((nats.errors.Error, OSError, TimeoutError)):
            nc = await nats.connect(
                **BusEndpoint.of(url, BusTls(ca_file=pki["ca"])).connect_options(),
                allow_reconnect=False,
                connect_timeout=2,
            )
            try:
                await nc.flush(timeout=2)
            finally:
                await nc.close()

    asyncio.run(clients())
    assert bus_up.stop(process, signal.SIGTERM) == 0


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--listen", "127.0.0.1:4222", "--port", "4222"), "not both"),
        (("--listen", "4222"), "--listen"),
        (("--monitor", "somewhere"), "--monitor"),
        (("--server-tls-cert", "c.pem"), "go together"),
        (
            ("--server-tls-cert", "c.pem", "--server-tls-key", "k.pem", "--server-tls-verify"),
            "needs --server-tls-ca",
        ),
        (("--server-tls-ca", "ca.pem"), "need --server-tls-cert"),
    ],
)
def test_bus_up_refuses_inconsistent_listen_options(
    tmp_path: Path, args: tuple[str, ...], says: str
) -> None:
    result = CliRunner().invoke(
        main, ["bus", "up", "--store", str(tmp_path / "s"), "--unsafe-open", *args]
    )
    assert result.exit_code == 2, result.output
    assert says in result.output
    assert not (tmp_path / "s").exists()


def test_bus_provision_says_an_unreachable_bus_is_unreachable(tmp_path: Path) -> None:
    """Exit 4 with one line naming the URLs, no traceback; a refused directory exits 1."""
    sandbox = prepared_mechanism(tmp_path / "m", admins=1, threshold=1)
    passphrase = tmp_path / "passphrase"
    replace_file(passphrase, sandbox.admin_passphrase)
    url = f"nats://127.0.0.1:{free_port()}"
    args = ["bus", "provision", "--nats", url, "--replicas", "3",
            "--operator-keys", str(sandbox.admin.path / "operator"),
            "--passphrase-file", str(passphrase),
            "--trust-root", str(sandbox.admin.root_path(1))]  # fmt: skip
    directory = sandbox.admin.path / "directory.json"
    result = CliRunner().invoke(main, [*args, "--directory", str(directory)])
    assert result.exit_code == EXIT_BUS_UNREACHABLE, result.output
    assert f"cannot reach the bus at {url}" in result.output
    assert "Traceback" not in result.output

    forged = tmp_path / "forged.json"
    forged.write_bytes(directory.read_bytes().replace(b'"version":1', b'"version":9'))
    result = CliRunner().invoke(main, [*args, "--directory", str(forged)])
    assert result.exit_code == 1, result.output
    assert "refused" in result.output and "Traceback" not in result.output
