"""Helpers shared by the agent tests: a local mechanism and a thin API client."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import socket
import sqlite3
import ssl
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import aiohttp
import nacl.pwhash.argon2id
import pytest
import trustme
from aiohttp import web

from agents import Agent
from broker import NatsServer
from keys import AgencyKeys, seal
from keys.keyfile import KdfCost
from keys.policy import Policy
from nrm import admin
from nrm.admin import AdminFolder
from nrm.sandbox import AgencySetup, Sandbox, SandboxTls, prepare_mechanism
from runtime import clock
from runtime.keydir import load_key_dir
from runtime.poll import poll
from runtime.tls import client_context

#: (agency id, display name, role) of the test mechanism.
AGENCIES = [
    ("police", "Police", "police"),
    ("shelter", "Shelter", "ngo"),
    ("coordinator", "Co-ordinator", "coordinator"),
]
#: Short redelivery so crash tests do not wait the production 30 s (also in test_years).
SHORT_REDELIVERY = {
    "ack_wait_seconds": 2,
    "retry_max_seconds": 0.5,
    "timer_interval_seconds": 0.25,
}
#: The limits of the test agents.
TEST_LIMITS = {**SHORT_REDELIVERY}
#: The Argon2id cost of the key files of `prepared_mechanism`: libsodium's minimum. Every
#: agent, ledger and bus start decrypts a key file (seven per mechanism, ~0.13 s each at
#: INTERACTIVE); the cost is stored in each file (keys/keyfile.py), so the code that reads
#: them is the same. tests/test_keyfile.py tests the real profiles.
TEST_KDF = KdfCost(nacl.pwhash.argon2id.OPSLIMIT_MIN, nacl.pwhash.argon2id.MEMLIMIT_MIN)
#: For the escalation test only: elsewhere a slow run must not escalate mid-test.
ESCALATING_LIMITS = {
    **TEST_LIMITS,
    "escalation_urgent_seconds": 2,
    "escalation_emergency_seconds": 1,
}


_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback TCP port free right now (for a server given its port before it starts),
    never one handed out before in this run: the kernel may give a just-closed port again,
    and a test asking for several (a cluster's six) would get the same one twice."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def unavailable(reason: str) -> NoReturn:
    """A test cannot run here (a tool or privilege is missing): skipped on a developer's
    machine, failed in CI (`CI` set, as .ci/run does), where .ci/run installs every tool."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must provide it)")
    pytest.skip(reason)


async def eventually(
    check: Callable[[], Awaitable[bool]], *, timeout: float = 20.0, what: str = "condition"
) -> None:
    """Poll `check` until it holds, or fail the test after `timeout` seconds."""
    if not await poll(check, timeout=timeout):
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class Api:
    """Bearer-authenticated calls to one agent's HTTP API."""

    http: aiohttp.ClientSession
    base: str
    token: str

    async def call(
        self, method: str, path: str, *, token: str | None = None, **kwargs: Any
    ) -> tuple[int, Any, str]:
        headers = {"Authorization": f"Bearer {self.token if token is None else token}"}
        headers.update(kwargs.pop("headers", {}))
        async with self.http.request(method, self.base + path, headers=headers, **kwargs) as r:
            body = await r.read()
            ctype = r.content_type
            return r.status, (await r.json(content_type=None) if body else None), ctype

    async def refer(self, recipients: list[str], referral: dict[str, Any]) -> str:
        status, body, _ = await self.call(
            "POST", "/v1/referrals", json={"recipients": recipients, "referral": referral}
        )
        assert status == 202, body
        return str(body["id"])

    async def status(self, referral_id: str) -> str:
        status, body, _ = await self.call("GET", f"/v1/referrals/{referral_id}")
        assert status == 200, body
        return str(body["status"])

    async def inbox(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor = ""
        while True:
            status, body, _ = await self.call("GET", f"/v1/inbox?limit=100{cursor}")
            assert status == 200, body
            items += body["items"]
            if body["next_cursor"] is None:
                return items
            cursor = f"&cursor={body['next_cursor']}"


@dataclass
class Pki:
    """A test CA (trustme) in `folder` and the files of every certificate it issued: the one
    way tests make certificates. Private keys are 0600 (refused if others may read them)."""

    folder: Path
    ca: trustme.CA = field(default_factory=trustme.CA)

    def __post_init__(self) -> None:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.ca.cert_pem.write_to_path(str(self.ca_file))

    @property
    def ca_file(self) -> Path:
        return self.folder / "ca.pem"

    def client_context(self) -> ssl.SSLContext:
        """What a client trusting only the test CA uses."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def issue(self, owner: str, *names: str) -> tuple[Path, Path]:
        """A certificate for `names` (IP addresses or host names) as `<owner>.pem`, and its
        key `<owner>.key`."""
        cert = self.ca.issue_cert(*names)
        cert_file, key_file = self.folder / f"{owner}.pem", self.folder / f"{owner}.key"
        cert.cert_chain_pems[0].write_to_path(str(cert_file))
        cert.private_key_pem.write_to_path(str(key_file))
        key_file.chmod(0o600)
        return cert_file, key_file


def make_tls(folder: Path, *, mutual: bool = True, https: bool = True) -> SandboxTls:
    """Certificates made with trustme in `folder` (0700): a CA, the certificate of 127.0.0.1
    (for nats-server and, with `https`, the agents' and the ledger's APIs) and, with `mutual`,
    one client certificate that every client of the bus presents."""
    pki = Pki(folder)
    server_cert, server_key = pki.issue("server", "127.0.0.1", "localhost")
    client_cert = client_key = None
    if mutual:
        client_cert, client_key = pki.issue("client", "client.nrm.test")
    return SandboxTls(
        ca_file=pki.ca_file,
        server_cert=server_cert,
        server_key=server_key,
        client_cert=client_cert,
        client_key=client_key,
        https=https,
    )


@dataclass
class Mechanism:
    """Administrators, three agencies and a secured bus in `root`; agents run in-process."""

    sandbox: Sandbox
    http: aiohttp.ClientSession
    agents: dict[str, Agent] = field(default_factory=dict)

    @classmethod
    async def create(
        cls,
        root: Path,
        http: aiohttp.ClientSession,
        *,
        admins: int = 1,
        threshold: int = 1,
        tls: SandboxTls | None = None,
    ) -> Mechanism:
        """With `tls` the bus requires TLS (mutual TLS with a client certificate) and the
        agents and the ledger serve HTTPS (`tls.https`); `http` must then trust its CA."""
        sandbox = prepared_mechanism(root, admins=admins, threshold=threshold)
        sandbox.tls = tls
        await sandbox.start_bus()
        await sandbox.start_ledger(checkpoint_interval=0.5)
        sandbox.write_agent_configs(limits=TEST_LIMITS, ledger_missing_after=5)
        return cls(sandbox, http)

    @property
    def bus(self) -> NatsServer:
        assert self.sandbox.bus is not None
        return self.sandbox.bus

    @property
    def root(self) -> Path:
        return self.sandbox.root

    @property
    def setups(self) -> dict[str, AgencySetup]:
        return self.sandbox.agencies

    async def start(self, agency: str, *, wait: bool = True) -> Agent:
        agent = Agent.from_config_file(self.setups[agency].config_path)
        await agent.start()
        self.agents[agency] = agent
        if wait:
            await eventually(
                lambda: _ready(agent), what=f"{agency} to connect and trust the directory"
            )
        return agent

    async def stop(self, agency: str) -> None:
        await self.agents.pop(agency).stop()

    async def close(self) -> None:
        try:
            for agency in list(self.agents):
                await self.stop(agency)
        finally:  # a failing agent stop must not leave nats-server and the ledger running
            await self.sandbox.stop_all()

    def api(self, agency: str) -> Api:
        return Api(self.http, self.agents[agency].api_url, self.setups[agency].token)

    def database(self, agency: str) -> Path:
        return self.setups[agency].home / "agent.db"


#: (admins, threshold) -> a mechanism prepared once per session, never started: the template
#: `prepared_mechanism` copies.
_TEMPLATES: dict[tuple[int, int], Sandbox] = {}
_TEMPLATE_DIR: list[tempfile.TemporaryDirectory[str]] = []


def prepared_mechanism(root: Path, *, admins: int, threshold: int) -> Sandbox:
    """What `prepare_mechanism(root, AGENCIES, ...)` makes (keys, signed directory draft),
    as a copy in `root` of a template made once per session: the test gets files of its own,
    without paying again for the Argon2 encryption of every key file. Keys, passphrases and
    tokens are those of the template; timestamps are the template's (minutes old at most).
    Under a moved clock (`clock.ENV` set) the mechanism is prepared afresh, on that clock."""
    if os.environ.get(clock.ENV):
        return prepare_mechanism(root, AGENCIES, admins=admins, threshold=threshold, cost=TEST_KDF)
    template = _TEMPLATES.get((admins, threshold))
    if template is None:
        if not _TEMPLATE_DIR:
            _TEMPLATE_DIR.append(tempfile.TemporaryDirectory(prefix="nrm-mechanism-templates-"))
        folder = Path(_TEMPLATE_DIR[0].name) / f"{admins}-of-{threshold}"
        template = prepare_mechanism(
            folder, AGENCIES, admins=admins, threshold=threshold, cost=TEST_KDF
        )
        _TEMPLATES[(admins, threshold)] = template
    shutil.copytree(template.root, root, symlinks=True, dirs_exist_ok=True)
    agencies = {
        agency: dataclasses.replace(
            setup,
            home=root / setup.home.name,
            config_path=root / setup.home.name / setup.config_path.name,
        )
        for agency, setup in template.agencies.items()
    }
    return Sandbox(
        root,
        AdminFolder(root / template.admin.path.name),
        template.admin_passphrase,
        agencies,
        auditor_token=template.auditor_token,
    )


@contextlib.asynccontextmanager
async def running_mechanism(
    root: Path,
    *,
    admins: int = 1,
    threshold: int = 1,
    limits: dict[str, int | float] | None = None,
    ledger_missing_after: int = 5,
    webhooks: dict[str, str] | None = None,
    tls: SandboxTls | None = None,
) -> AsyncIterator[Mechanism]:
    """The three agencies' mechanism in `root` with all agents running and trusting the
    directory; `limits` replace the agents' TEST_LIMITS, `webhooks` maps agencies to the
    URL of their webhook receiver, `tls` (`make_tls`) puts the bus and the APIs behind TLS
    (`m.http` trusts its CA). Everything stops afterwards."""
    connector = aiohttp.TCPConnector(ssl=True if tls is None else client_context(tls.ca_file))
    async with aiohttp.ClientSession(connector=connector) as http:
        m = await Mechanism.create(root, http, admins=admins, threshold=threshold, tls=tls)
        try:
            if limits is not None or webhooks is not None or ledger_missing_after != 5:
                m.sandbox.write_agent_configs(
                    limits=TEST_LIMITS if limits is None else limits,
                    ledger_missing_after=ledger_missing_after,
                    webhooks=webhooks,
                )
            for agency, _, _ in AGENCIES:
                await m.start(agency)
            yield m
        finally:
            await m.close()


@contextlib.asynccontextmanager
async def webhook_receiver(
    handle: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    """A local HTTP server handing every POST /events to `handle`; yields that URL."""
    app = web.Application()
    app.router.add_post("/events", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/events"
    finally:
        await runner.cleanup()


async def _ready(agent: Agent) -> bool:
    """Connected and trusting a current directory: "ok", or "warning" when the directory or
    root expires soon (a test whose clock is moved near an expiry still starts agents)."""
    return bool(agent.health()["status"] in ("ok", "warning"))


def copy_agency_folder(m: Mechanism, agency: str, name: str) -> Path:
    """A copy of an agency's folder (keys, passphrase, pinned root, configuration) with a
    fresh database beside the original; returns its agent.toml."""
    target = m.root / name
    shutil.copytree(
        m.setups[agency].home, target, ignore=shutil.ignore_patterns("agent.db*", "trust")
    )
    config = target / "agent.toml"
    config.write_text(
        re.sub(r'bind = "127\.0\.0\.1:\d+"', 'bind = "127.0.0.1:0"', config.read_text())
    )
    return config


def query(db: Path, sql: str, *args: Any) -> list[Any]:
    """The rows `sql` selects from the SQLite database at `db`, on a connection of its own."""
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def agency_keys(m: Mechanism, agency: str) -> AgencyKeys:
    """An agency's private keys, read from its key folder as its agent reads them."""
    return load_key_dir(m.setups[agency].key_dir, passphrase=m.setups[agency].passphrase())


def sealed(
    m: Mechanism,
    sender: AgencyKeys,
    to: str,
    kind: str,
    body: bytes,
    *,
    created: int | None = None,
    expires: int | None = None,
) -> bytes:
    """An envelope `sender` signs and seals to `to`'s current key, as an agent would (or an
    agency with valid keys that an agent would not stop); created now and expiring an hour
    later unless given."""
    directory = m.agents[to].trust.directory
    assert directory is not None
    now = clock.now()
    created = now if created is None else created
    return seal(
        sender=sender,
        recipients=[directory.recipient(to, at=now)],
        kind=kind,
        body=body,
        created=created,
        expires=created + 3600 if expires is None else expires,
    ).data


async def renew_directory(m: Mechanism) -> None:
    """Renew the directory now (on the moved clock, as an operator does before it lapses),
    sign, publish, and wait until every running agent holds the renewal."""
    version = admin.renew_directory(m.sandbox.admin).version
    m.sandbox.sign_draft()
    await m.sandbox.publish()

    async def renewed() -> bool:
        return all(
            a.trust.directory is not None and a.trust.directory.version == version
            for a in m.agents.values()
        )

    await eventually(renewed, what="every agent to hold the renewed directory")


async def publish_policy(m: Mechanism, policy: Policy) -> None:
    """Sign and publish a directory carrying the national `policy`, and wait until every
    running agent trusts it."""
    admin.set_policy(m.sandbox.admin, policy)
    m.sandbox.sign_draft()
    await m.sandbox.publish()

    async def everyone_has_it() -> bool:
        return all(
            (d := a.trust.directory) is not None and d.policy == policy for a in m.agents.values()
        )

    await eventually(everyone_has_it, what="every agent to take the directory with the policy")
