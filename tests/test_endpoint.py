"""Bus URLs in every documented form, and the TLS settings' own checks."""

from __future__ import annotations

from pathlib import Path

import click
import nats.errors
import pytest
from click.testing import CliRunner

from keys.identity import nats_public_key
from nrm.bus_options import bus_endpoint_options
from runtime.config import ConfigError, Table
from runtime.endpoint import BusEndpoint, BusTls, EndpointError, endpoint_from_config, parse_urls


@pytest.mark.parametrize(
    ("given", "urls"),
    [
        ("nats://a.example:4222", ("nats://a.example:4222",)),
        ("tls://a:4222,tls://b:4223", ("tls://a:4222", "tls://b:4223")),
        (" tls://a , b:5000 ,", ("tls://a:4222", "nats://b:5000")),
        ("10.0.0.1", ("nats://10.0.0.1:4222",)),
        ("[::1]:4333", ("nats://[::1]:4333",)),
        (["nats://a", "nats://a:4222", "c"], ("nats://a:4222", "nats://c:4222")),
    ],
)
def test_urls_in_every_documented_form(given: str | list[str], urls: tuple[str, ...]) -> None:
    assert parse_urls(given) == urls


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ("http://a", "scheme"),
        ("", "no bus URL"),
        (" , ", "no bus URL"),
        ("nats://a/x", "only a scheme"),
        ("nats://a:99999", "not a bus URL"),
        ("nats://:4222", "no host"),
    ],
)
def test_malformed_urls_are_refused_by_name(given: str, says: str) -> None:
    with pytest.raises(EndpointError, match=says):
        parse_urls(given)


def test_credentials_in_a_url_are_refused_without_being_quoted() -> None:
    with pytest.raises(EndpointError) as e:
        parse_urls("nats://user:s3cret@a:4222")
    assert "s3cret" not in str(e.value)


def test_a_tls_url_gets_a_verifying_context() -> None:
    options = BusEndpoint.of("tls://a").connect_options()
    assert options["servers"] == ["tls://a:4222"]
    assert options["tls"].check_hostname
    assert "tls" not in BusEndpoint.of("nats://a").connect_options()


def test_a_server_name_is_passed_on() -> None:
    options = BusEndpoint.of("10.0.0.1", BusTls(server_name="nats.example")).connect_options()
    assert options["tls_hostname"] == "nats.example"


def test_a_certificate_needs_its_key(tmp_path: Path) -> None:
    with pytest.raises(EndpointError, match="needs its key"):
        BusTls(cert_file=tmp_path / "c.pem")


def test_unreadable_tls_files_are_an_endpoint_error(tmp_path: Path) -> None:
    with pytest.raises(EndpointError, match="cannot load"):
        BusTls(ca_file=tmp_path / "missing.pem").context()


def test_a_config_file_endpoint_with_tls(tmp_path: Path) -> None:
    doc = Table(
        {
            "nats_urls": "tls://a:4222, tls://b:4222",
            "nats_tls": {"ca_file": "ca.pem", "cert_file": "/etc/c.pem", "key_file": "k.pem"},
        }
    )
    endpoint = endpoint_from_config(doc, base=tmp_path)
    doc.finish()
    assert endpoint.urls == ("tls://a:4222", "tls://b:4222")
    assert endpoint.tls == BusTls(
        ca_file=tmp_path / "ca.pem", cert_file=Path("/etc/c.pem"), key_file=tmp_path / "k.pem"
    )


def test_a_config_file_endpoint_names_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nats_urls: .*scheme"):
        endpoint_from_config(Table({"nats_urls": ["http://a"]}), base=tmp_path)
    with pytest.raises(ConfigError, match=r"nats_tls: .*needs its key"):
        endpoint_from_config(
            Table({"nats_urls": ["a"], "nats_tls": {"cert_file": "c.pem"}}), base=tmp_path
        )
    doc = Table({"nats_urls": ["a"], "nats_tls": {"ca_fil": "x"}})
    endpoint_from_config(doc, base=tmp_path)
    with pytest.raises(ConfigError, match=r"nats_tls\.'ca_fil'"):
        doc.finish()


def test_the_cli_options_give_one_endpoint(tmp_path: Path) -> None:
    @click.command()
    @bus_endpoint_options()
    def show(endpoint: BusEndpoint) -> None:
        click.echo(" ".join(endpoint.urls) + f" tls={endpoint.tls is not None}")

    runner = CliRunner()
    ok = runner.invoke(show, ["--nats", "tls://a,tls://b", "--nats", "c"])
    assert (ok.exit_code, ok.output) == (0, "tls://a:4222 tls://b:4222 nats://c:4222 tls=False\n")
    with_ca = runner.invoke(show, ["--nats", "a", "--tls-ca", str(tmp_path / "ca.pem")])
    assert with_ca.output.endswith("tls=True\n")
    bad = runner.invoke(show, ["--nats", "http://a"])
    assert bad.exit_code == 2 and "scheme" in bad.output
    half = runner.invoke(show, ["--nats", "a", "--tls-cert", "c.pem"])
    assert half.exit_code == 2 and "needs its key" in half.output


async def test_connect_once_goes_on_to_the_next_server_and_raises_the_servers_own_error(
    tmp_path: Path,
) -> None:
    """With one node of two down, every attempt connects (the order is shuffled: five
    tries cover both orders); a server refusing the NKey is that refusal, not 'no
    servers'."""
    from broker import NatsServer
    from keys.identity import new_nats_seed
    from runtime.bus_client import connect_once

    from .support import free_port

    dead = f"nats://127.0.0.1:{free_port()}"
    with NatsServer(store_dir=tmp_path / "open") as server:
        for _ in range(5):
            nc = await connect_once(
                BusEndpoint.of([dead, server.url]), nkeys_seed=None, connect_timeout=2
            )
            await nc.close()
    users = f'authorization {{ users = [ {{ nkey: "{nats_public_key(new_nats_seed())}" }} ] }}'
    with (
        NatsServer(store_dir=tmp_path / "secured", extra_config=users) as server,
        pytest.raises(nats.errors.AuthorizationError),
    ):
        seed = new_nats_seed()
        await connect_once(BusEndpoint.of(server.url), nkeys_seed=seed, connect_timeout=2)
    with pytest.raises((nats.errors.NoServersError, OSError)):
        await connect_once(BusEndpoint.of(dead), nkeys_seed=None, connect_timeout=2)
