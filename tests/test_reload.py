"""A reload (SIGHUP, runtime/reload.py) of a running ledger and agent: new tokens and a
renewed HTTPS certificate take effect for new requests and connections; a file that does not
load, or changes what needs a restart, is refused and the running configuration kept."""

from __future__ import annotations

import secrets
import ssl
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme

from agents.agent import Agent
from agents.config import token_digest
from broker import NatsServer
from broker.ledger import Ledger
from nrm.sandbox import Sandbox
from runtime.config import ConfigError
from runtime.reload import ReloadRefused
from runtime.tomlfile import dumps

from .support import AGENCIES, free_port, prepared_mechanism


def rewrite(path: Path, **changes: Any) -> None:
    doc = tomllib.loads(path.read_text())
    doc.update(changes)
    path.write_text(dumps(doc))


def issue(ca: trustme.CA, folder: Path) -> tuple[str, str]:
    """A certificate for 127.0.0.1 from `ca`, written over `folder`'s api.pem/api.key."""
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(folder / "api.key")
    (folder / "api.key").chmod(0o600)
    cert.cert_chain_pems[0].write_to_path(folder / "api.pem")
    return str(folder / "api.pem"), str(folder / "api.key")


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


async def status(url: str, token: str, ctx: ssl.SSLContext | bool = True) -> int:
    """The status of GET `url` with `token`, on a new connection."""
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, force_close=True)) as http,
        http.get(url, headers={"Authorization": f"Bearer {token}"}) as r,
    ):
        return r.status


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    """A prepared mechanism whose bus nothing listens on (the APIs serve regardless)."""
    sandbox = prepared_mechanism(tmp_path, admins=1, threshold=1)
    sandbox.bus = NatsServer(store_dir=tmp_path / "bus", port=free_port())
    return sandbox


@pytest.fixture
async def ledger(sandbox: Sandbox) -> AsyncIterator[tuple[Ledger, Path]]:
    path = sandbox.write_ledger_config()
    ca = trustme.CA()
    cert, key = issue(ca, path.parent)
    rewrite(path, tls_cert=cert, tls_key=key)
    running = Ledger.from_config_file(path)
    running.ca = ca  # type: ignore[attr-defined]  # the test's own note of its CA
    await running.start()
    try:
        yield running, path
    finally:
        await running.stop()


async def test_a_ledger_reload_swaps_tokens_refuses_bad_files_and_serves_a_renewed_cert(
    ledger: tuple[Ledger, Path],
) -> None:
    """A new metrics token answers 200 and the old 401 after a reload; a file of the wrong
    shape or one that moves the database is refused and the new token still works; a new
    certificate is what a new TLS connection is shown."""
    running, path = ledger
    ca: trustme.CA = running.ca  # type: ignore[attr-defined]
    metrics = running.url + "/metrics"
    old, new = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    doc = tomllib.loads(path.read_text())
    tokens = doc["tokens"]
    rewrite(path, tokens=[*tokens, {"name": "prom", "token_sha256": token_digest(old),
                                    "scope": "metrics"}])  # fmt: skip
    assert running.reload(path) == ["tokens"]
    assert await status(metrics, old, trusting(ca)) == 200
    assert await status(metrics, new, trusting(ca)) == 401

    rewrite(path, tokens=[*tokens, {"name": "prom", "token_sha256": token_digest(new),
                                    "scope": "metrics"}])  # fmt: skip
    assert running.reload(path) == ["tokens"]
    assert await status(metrics, old, trusting(ca)) == 401
    assert await status(metrics, new, trusting(ca)) == 200

    good = path.read_text()
    for change, named in (({"tokens": "x"}, "tokens"), ({"database": "other.db"}, "database")):
        rewrite(path, **change)
        with pytest.raises(ConfigError, match=named) as refused:
            running.reload(path)
        assert isinstance(refused.value, ReloadRefused) == (named == "database")
        assert await status(metrics, new, trusting(ca)) == 200
        path.write_text(good)

    renewed = trustme.CA()
    issue(renewed, path.parent)
    assert running.reload(path) == ["tls_cert"]
    assert await status(metrics, new, trusting(renewed)) == 200
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await status(metrics, new, trusting(ca))


async def test_an_agent_reload_swaps_its_api_clients(sandbox: Sandbox) -> None:
    """A client token changed in agent.toml: after a reload the old token answers 401 and
    the new one 200; a refused reload (the API's bind) keeps the new one."""
    sandbox.write_agent_configs()
    setup = sandbox.agencies[AGENCIES[0][0]]
    path = setup.config_path
    agent = Agent.from_config_file(path)
    async with agent:
        url = agent.api_url + "/v1/inbox"
        new = secrets.token_urlsafe(16)
        assert await status(url, setup.token) == 200
        doc = tomllib.loads(path.read_text())
        doc["api"]["clients"][0]["token_sha256"] = token_digest(new)
        path.write_text(dumps(doc))
        assert agent.reload(path) == ["api.clients"]
        assert await status(url, setup.token) == 401
        assert await status(url, new) == 200
        doc["api"]["bind"] = "127.0.0.1:1"
        path.write_text(dumps(doc))
        with pytest.raises(ReloadRefused, match=r"api\.bind"):
            agent.reload(path)
        assert await status(url, new) == 200
