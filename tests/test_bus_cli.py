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

from broker.external import AuthorityConfig
from keys.subjects import inbox_stream
from nrm.cli import main
from nrm.exits import EXIT_UNREACHABLE
from runtime.endpoint import BusEndpoint, BusTls
from runtime.files import replace_file
from runtime.keydir import init_key_dir

from .support import TEST_KDF, prepared_mechanism
from .test_bus_authority import free_port
from .test_cli import BusUp, bus_up  # noqa: F401 - the fixture
from .test_cluster_config import write_pki


def test_bus_up_listens_monitors_and_requires_mutual_tls_where_told(
    bus_up: BusUp,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    """--listen and --monitor on every address (Prometheus can scrape /varz) and mutual TLS
    with a certificate naming only a DNS name (--server-tls-name: what its own connections
    expect): the bus provisions itself over TLS, a client with its certificate is served,
    one without is refused."""
    pki = write_pki(tmp_path)
    port, monitor = free_port(), free_port()
    process, out = bus_up.start(
        "--store", tmp_path / "s", "--unsafe-open", "--agency", "police",
        "--listen", f"0.0.0.0:{port}", "--monitor", f"0.0.0.0:{monitor}",
        "--server-tls-cert", pki["named"], "--server-tls-key", pki["named_key"],
        "--server-tls-ca", pki["ca"], "--server-tls-verify", "--server-tls-name", "bus.nrm.test",
    )  # fmt: skip
    text = out.read_text()
    assert re.search(rf"NATS bus ready at tls://127\.0\.0\.1:{port};", text), text
    assert f"monitoring at http://127.0.0.1:{monitor}" in text
    with urllib.request.urlopen(f"http://127.0.0.1:{monitor}/varz", timeout=5) as r:
        varz = json.loads(r.read())
    assert varz["port"] == port and varz["tls_required"] and varz["tls_verify"]

    url = f"tls://127.0.0.1:{port}"
    with_cert = BusTls(
        ca_file=pki["ca"],
        cert_file=pki["client"],
        key_file=pki["client_key"],
        server_name="bus.nrm.test",
    )

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
                **BusEndpoint.of(
                    url, BusTls(ca_file=pki["ca"], server_name="bus.nrm.test")
                ).connect_options(),
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
    assert result.exit_code == EXIT_UNREACHABLE, result.output
    assert f"cannot reach the bus at {url}" in result.output
    assert "Traceback" not in result.output

    forged = tmp_path / "forged.json"
    forged.write_bytes(directory.read_bytes().replace(b'"version":1', b'"version":9'))
    result = CliRunner().invoke(main, [*args, "--directory", str(forged)])
    assert result.exit_code == 1, result.output
    assert "refused" in result.output and "Traceback" not in result.output


AUTHORITY_TOML = """node_name = "n1"
nats_urls = "nats://127.0.0.1:4222,nats://127.0.0.1:4223"
authorization_file = "n1.authorization.conf"
pid_file = "/run/nrm/n1.pid"
monitor_url = "http://127.0.0.1:8222"
trust_root = "root.1.json"
key_dir = "authority"
passphrase_file = "passphrase"
status_bind = "127.0.0.1:8223"
operator_nkeys = ["UOPERATOR{rest}A"]
ledger_nkeys = ["ULEDGER{rest}AAA"]
authority_nkeys = ["UAUTHORITY{rest}"]
""".replace("{rest}", "A" * 46)


def test_authority_config_reads_every_setting(tmp_path: Path) -> None:
    """Paths relative to the file's folder; URLs in any documented form."""
    path = tmp_path / "n1.authority.toml"
    path.write_text(AUTHORITY_TOML)
    config = AuthorityConfig.load(path)
    assert config.endpoint.urls == ("nats://127.0.0.1:4222", "nats://127.0.0.1:4223")
    assert config.authorization_file == tmp_path / "n1.authorization.conf"
    assert config.pid_file == Path("/run/nrm/n1.pid")
    assert config.status_bind == ("127.0.0.1", 8223)
    assert config.key_dir == tmp_path / "authority"
    assert config.services.operators == ("UOPERATOR" + "A" * 47,)
    assert config.services.ledgers == ("ULEDGER" + "A" * 49,)
    assert config.services.authorities == ("UAUTHORITY" + "A" * 46,)


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (('node_name = "n1"\n', 'node_name = "n1"\ncolour = "blue"\n'), "'colour'"),
        (('node_name = "n1"\n', ""), "node_name"),
        (("http://127.0.0.1:8222", "https://127.0.0.1:8222"), "monitor_url"),
        (('status_bind = "127.0.0.1:8223"\n', "replicas = 3\n"), "replicas is no longer read"),
        (('key_dir = "authority"\n', 'operator_key_dir = "operator"\n'), "its own key_dir"),
        (("ULEDGER", "XLEDGER"), "ledger_nkeys"),
        (
            ('authority_nkeys = ["UAUTHORITY' + "A" * 46 + '"]', "authority_nkeys = []"),
            "authority_nkeys must list at least 1",
        ),
        (("nats://127.0.0.1:4222,", "ftp://x,"), "nats_urls"),
        (("", '[nats_tls]\ncert_file = "c.pem"\n'), "nats_tls"),
    ],
)
def test_a_bad_authority_toml_is_refused_naming_the_setting(
    tmp_path: Path, change: tuple[str, str], says: str
) -> None:
    text = AUTHORITY_TOML.replace(*change) if change[0] else AUTHORITY_TOML + change[1]
    path = tmp_path / "authority.toml"
    path.write_text(text)
    result = CliRunner().invoke(main, ["bus", "authority", "--config", str(path)])
    assert result.exit_code == 1, result.output
    assert says in result.output and "Traceback" not in result.output


def test_an_authority_whose_key_the_bus_does_not_list_is_refused(tmp_path: Path) -> None:
    """Its own NKey not among authority_nkeys: exit 1 naming both, before it starts."""
    init_key_dir(
        tmp_path / "authority",
        agency="bus-authority",
        name="Authority",
        passphrase=b"authority pass 1",
        cost=TEST_KDF,
    )
    replace_file(tmp_path / "passphrase", b"authority pass 1")
    path = tmp_path / "authority.toml"
    path.write_text(AUTHORITY_TOML)
    result = CliRunner().invoke(main, ["bus", "authority", "--config", str(path)])
    assert result.exit_code == 1, result.output
    assert "is not among authority_nkeys" in result.output
    assert "Traceback" not in result.output


def test_a_trust_root_that_is_no_root_is_refused_without_a_traceback(tmp_path: Path) -> None:
    own = init_key_dir(
        tmp_path / "authority",
        agency="bus-authority",
        name="Authority",
        passphrase=b"authority pass 1",
        cost=TEST_KDF,
    )
    replace_file(tmp_path / "passphrase", b"authority pass 1")
    (tmp_path / "root.1.json").write_text('{"not": "a root"}')
    path = tmp_path / "authority.toml"
    assert own.public.nats_key is not None
    path.write_text(AUTHORITY_TOML.replace("UAUTHORITY" + "A" * 46, own.public.nats_key))
    result = CliRunner().invoke(main, ["bus", "authority", "--config", str(path)])
    assert result.exit_code == 1, result.output
    assert "trust_root" in result.output and "malformed" in result.output
    assert "Traceback" not in result.output
