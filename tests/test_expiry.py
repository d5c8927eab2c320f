"""Expiry you can see coming, renewal, and the root chain over time, in a running mechanism:
the clock offset (runtime.clock) moves every in-process part (agents, ledger, bus authority)
through the warning window, past expiry and past the pinned root's lifetime."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner

from keys.keyfile import INTERACTIVE
from nrm import admin
from nrm.cli import main
from nrm.sandbox import LEDGER_NAME
from runtime import clock, expiry
from runtime.durability import backup
from runtime.version import VERSION

from . import samples
from .support import TEST_LIMITS, Mechanism, eventually

DAY = 86400
REFERRAL = samples.referral()


WEEK = 7 * DAY
T = 1_800_000_000

#: (name, root expires, directory expires, status, reasons) at time T, 7-day window.
ASSESSMENTS: list[tuple[str, int, int | None, str, list[str]]] = [
    ("both a month away: ok", T + 30 * DAY, T + 30 * DAY, "ok", []),
    ("directory 8 days away: ok", T + 30 * DAY, T + 8 * DAY, "ok", []),
    ("directory exactly 7 days away: warning", T + 30 * DAY, T + WEEK, "warning",
     ["directory-expires-soon"]),
    ("root 2 days away: warning", T + 2 * DAY, T + 30 * DAY, "warning", ["root-expires-soon"]),
    ("both soon: warning, both reasons", T + DAY, T + DAY, "warning",
     ["directory-expires-soon", "root-expires-soon"]),
    ("directory expires now: degraded", T + 30 * DAY, T, "degraded", ["directory-expired"]),
    ("no directory yet: degraded", T + 30 * DAY, None, "degraded", ["no-directory"]),
    ("root expired, directory soon: degraded, both said", T - 1, T + DAY, "degraded",
     ["root-expired", "directory-expires-soon"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "root_expires", "directory_expires", "status", "reasons"),
    ASSESSMENTS,
    ids=[a[0] for a in ASSESSMENTS],
)
def test_expiry_assessment(
    name: str, root_expires: int, directory_expires: int | None, status: str, reasons: list[str]
) -> None:
    """Degraded once the directory or newest root has expired, warning within the window,
    ok otherwise, and every reason that applies is named (degraded ones first)."""
    state = expiry.assess(
        root_expires=root_expires,
        directory_expires=directory_expires,
        now=T,
        warning_seconds=WEEK,
    )
    assert (state.status, list(state.reasons)) == (status, reasons)


@pytest.fixture
async def m(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Mechanism]:
    """One agency (police) with a ledger and the bus authority, all on a clock the test can
    move; the ledger checks never call an event missing (the clock jumps by weeks)."""
    offset = tmp_path / "clock-offset"
    clock.set_offset(offset, 0)
    monkeypatch.setenv(clock.ENV, str(offset))
    async with aiohttp.ClientSession() as http:
        mechanism = await Mechanism.create(tmp_path / "m", http)
        mechanism.sandbox.write_agent_configs(limits=TEST_LIMITS, ledger_missing_after=10**9)
        try:
            await mechanism.start("police")
            yield mechanism
        finally:
            await mechanism.close()


def shift(m: Mechanism, days: float) -> None:
    clock.set_offset(m.root.parent / "clock-offset", int(days * DAY))


async def get(m: Mechanism, url: str, *, token: str | None = None) -> tuple[int, str]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with m.http.get(url, headers=headers) as r:
        return r.status, await r.text()


def gauge(text: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", text, flags=re.MULTILINE)
    assert found is not None, text
    return float(found.group(1))


async def agent_status(m: Mechanism) -> tuple[int, dict[str, Any]]:
    async with m.http.get(m.agents["police"].api_url + "/healthz") as r:
        body: dict[str, Any] = await r.json()
        return r.status, body


async def all_report(m: Mechanism, status: str, reason: str | None) -> bool:
    """The agent's, the ledger's and the bus authority's /healthz all say `status` (with
    `reason` among their reasons), with the HTTP code that goes with it."""
    code = 503 if status == "degraded" else 200
    assert m.sandbox.ledger is not None and m.sandbox.authority is not None
    agent_code, agent = await agent_status(m)
    ledger_code, ledger_text = await get(m, m.sandbox.ledger.url + "/healthz")
    ledger = json.loads(ledger_text)
    bus = m.sandbox.authority.follower.health()
    answers = [(agent_code, agent), (ledger_code, ledger), (code, bus)]
    return all(
        got == code
        and body["status"] == status
        and body.get("version", VERSION) == VERSION  # the follower's health alone has none
        and ((reason is None and body["reasons"] == []) or reason in body["reasons"])
        for got, body in answers
    )


async def renew_and_publish(m: Mechanism, *, keys: list[Path] | None = None) -> int:
    folder = m.sandbox.admin
    version = admin.renew_directory(folder).version
    for key in keys if keys is not None else m.sandbox.admin_keys[:1]:
        admin.sign_draft(folder, key, passphrase=m.sandbox.admin_passphrase)
    await m.sandbox.publish()
    return version


async def test_directory_expiry_warns_then_degrades_and_a_renewal_clears_it(
    m: Mechanism,
) -> None:
    """Within 7 days of the directory's expiry every part says warning (HTTP 200) with
    directory-expires-soon and shows the expiry gauge; past it, degraded (503) and nothing
    is trusted; a renewed directory published then brings every part back to ok."""
    directory = admin.verified_draft(m.sandbox.admin)
    assert await all_report(m, "ok", None)
    token = m.setups["police"].token
    assert m.sandbox.ledger is not None
    info = (
        f'nrm_agent_info{{agency="police",version="{VERSION}"}} 1.0',
        f'nrm_ledger_info{{version="{VERSION}"}} 1.0',
    )
    for url, auth, release in zip(
        (m.agents["police"].api_url, m.sandbox.ledger.url),
        (token, m.sandbox.auditor_token),
        info,
        strict=True,
    ):
        status, text = await get(m, url + "/metrics", token=auth)
        assert status == 200
        assert release in text.splitlines()
        assert gauge(text, "nrm_directory_expiry_timestamp_seconds") == directory.expires
        root = admin.AdminFolder(m.sandbox.admin.path).trusted_root(now=clock.now())
        assert gauge(text, "nrm_root_expiry_timestamp_seconds") == root.expires

    shift(m, 30 - 6)  # six days left
    await eventually(
        lambda: all_report(m, "warning", "directory-expires-soon"), what="every part to warn"
    )
    assert m.agents["police"].trust.directory is not None  # still trusted

    shift(m, 30 + 1)
    await eventually(
        lambda: all_report(m, "degraded", "directory-expired"), what="every part degraded"
    )
    assert m.agents["police"].trust.directory is None
    status, body, ctype = await m.api("police").call(
        "POST", "/v1/referrals", json={"recipients": ["shelter"], "referral": REFERRAL}
    )
    assert (status, ctype) == (503, "application/problem+json"), body

    version = await renew_and_publish(m)
    assert version == directory.version + 1

    async def renewed() -> bool:
        trusted = m.agents["police"].trust.directory
        return (
            trusted is not None and trusted.version == version and await all_report(m, "ok", None)
        )

    await eventually(renewed, what="every part back to ok on the renewed directory")
    token_text = (await get(m, m.agents["police"].api_url + "/metrics", token=token))[1]
    assert gauge(token_text, "nrm_directory_expiry_timestamp_seconds") > directory.expires


async def test_agent_pinned_to_an_expired_root_starts_and_follows_the_chain(
    m: Mechanism, tmp_path: Path
) -> None:
    """Past root.1's lifetime a new agent pinned to root.1 still starts and says why it
    trusts nothing (root-expired); once root.2 and a directory signed under it are
    published it trusts them (ok), and the ledger serves the chain it verified, with which
    `nrm audit verify --root root.1.json` passes over the whole ledger, live and on a copy."""
    folder = m.sandbox.admin
    root1 = folder.trusted_root(now=clock.now())
    await m.stop("police")
    shift(m, (root1.expires - clock.now()) / DAY + 5)  # root.1 expired five days ago

    agent = await m.start("shelter", wait=False)

    async def says_why() -> bool:
        health = agent.health()
        return health["status"] == "degraded" and "root-expired" in health["reasons"]

    await eventually(says_why, what="the new agent to report root-expired")
    assert agent.trust.directory is None

    admin.rotate_root(
        folder,
        old_keys=m.sandbox.admin_keys[:1],
        admins=1,
        threshold=1,
        passphrase=m.sandbox.admin_passphrase,
        cost=INTERACTIVE,
    )
    new_keys = sorted(folder.path.glob("admin-*.r2.key"))
    admin.sign_draft(folder, new_keys[0], passphrase=m.sandbox.admin_passphrase)
    await m.sandbox.publish()

    async def trusts_root_2() -> bool:
        health = agent.health()
        return (
            health["status"] == "ok"
            and health["trust"]["root_version"] == 2
            and agent.trust.directory is not None
        )

    await eventually(trusts_root_2, what="the new agent to trust root 2 and its directory")

    ledger = m.sandbox.ledger
    assert ledger is not None

    async def ledger_has_chain() -> bool:
        status, text = await get(m, ledger.url + "/v1/roots", token=m.sandbox.auditor_token)
        items = json.loads(text)["items"] if status == 200 else []
        return [i["version"] for i in items] == [1, 2] and ledger.follower.directory is not None

    await eventually(ledger_has_chain, what="the ledger to verify and serve root 2")
    status, text = await get(m, ledger.url + "/v1/roots")
    assert status == 401  # auditors only, like every /v1 route

    _, text = await get(m, ledger.url + "/v1/roots", token=m.sandbox.auditor_token)
    served = [base64.b64decode(i["data"]) for i in json.loads(text)["items"]]
    assert served == [folder.root_path(1).read_bytes(), folder.root_path(2).read_bytes()]

    async def events_appended() -> bool:
        return any(r.directory_version == 2 for r in ledger.store.iter_rows())

    await eventually(events_appended, what="events under directory version 2 in the ledger")
    ledger.checkpoint()
    token_file = tmp_path / "auditor.token"
    token_file.write_text(m.sandbox.auditor_token)
    copy = tmp_path / "ledger-copy.db"
    backup(ledger.store.path, copy)
    for source in (["--ledger", ledger.url, "--token-file", str(token_file)], ["--db", str(copy)]):
        result = await asyncio.to_thread(  # the CLI runs its own event loop
            CliRunner().invoke,
            main,
            [
                "audit", "verify", *source,
                "--root", str(folder.root_path(1)),
                "--ledger-identity", str(m.root / "ledger" / "keys" / "identity.json"),
                "--name", LEDGER_NAME,
            ],
        )  # fmt: skip
        assert result.exit_code == 0, (source, result.output)
        assert "OK:" in result.output


def test_follower_holds_a_directory_back_until_its_root_arrives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bus authority's and the ledger's follower, pinned to an expired root.1, reports
    root-expired; a directory signed under root.2 offered first is refused and held; once
    root.2 arrives the held directory is accepted, reported once, and health turns ok."""
    from broker.follower import DirectoryFollower

    from .test_directory import NOW, chain_directory, chain_root

    pinned = tmp_path / "root.1.json"
    pinned.write_bytes(chain_root(1, NOW - DAY))
    seen: list[int] = []
    roots: list[int] = []
    follower = DirectoryFollower(
        endpoint=None,  # never connected: offer() is fed by hand
        nkeys_seed=b"unused",
        pinned_root=pinned,
        on_directory=lambda d, _: seen.append(d.version),
        on_root=lambda r, _: roots.append(r.version),
        name="test",
    )
    path = tmp_path / "offset"
    clock.set_offset(path, NOW - clock.now())
    monkeypatch.setenv(clock.ENV, str(path))

    assert follower.health()["status"] == "degraded"
    assert follower.health()["reasons"] == ["no-directory", "root-expired"]
    follower.offer("directory", chain_directory(2))
    assert (follower.refused, seen, follower.directory) == ("under-signed", [], None)
    follower.offer("root.2", chain_root(2, NOW + 400 * DAY))
    assert (roots, seen, follower.refused) == ([2], [2], None)
    assert follower.directory is not None
    assert follower.health()["status"] == "ok"
    follower.offer("root.1", chain_root(1, NOW - DAY))  # an old root: ignored
    assert follower.store.root.version == 2
