"""Upgrading from release 0.1.0: the databases that release's own code made open with this
one, migrated forward, with nothing lost, and this code works on them (docs/RUNBOOK.md,
"Versions and upgrades").

The previous release is checked out from this repository's history (`git archive`) and run
with this venv's Python: its sandbox starts a bus, the ledger and three agents, police sends
shelter a consented referral, shelter receives it, and the ledger checkpoints every audit
event. The agent databases it leaves are at user_version 1 (shared inbox stream `NRM_MSG`),
the ledger's at 0 with checkpoints in the former note format (PROTOCOL.md §9.3).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import subprocess
import sys
import tarfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from agents import Agent
from agents.storage.schema import VERSION as AGENT_VERSION
from broker.ledger import Ledger, LedgerConfigError
from broker.ledger_store import VERSION as LEDGER_VERSION
from keys.envelope import open_envelope
from keys.subjects import SHARED_INBOX_STREAM
from nrm.cli import main
from runtime import clock

#: The last commit of release 0.1.0, before per-agency inbox streams and C2SP checkpoints.
PREVIOUS_RELEASE = "fc417fd"
REPOSITORY = Path(__file__).resolve().parents[1]
#: Seconds the previous release gets to make its databases (about 15 on an idle machine).
OLD_RUN_SECONDS = 120

#: Run by the previous release's code: its own sandbox and example documents.
OLD_MECHANISM = textwrap.dedent(
    """
    import asyncio, json, sys
    from pathlib import Path

    import aiohttp

    from agents import Agent
    from nrm import examples
    from nrm.demo import AGENCIES, CONSENT_ID, _all_ready, _ledger_confirms
    from nrm.sandbox import prepare_mechanism

    async def main(root):
        sandbox = prepare_mechanism(root, AGENCIES)
        await sandbox.start_bus()
        await sandbox.start_ledger()
        sandbox.write_agent_configs()
        agents = {a: Agent.from_config_file(s.config_path) for a, s in sandbox.agencies.items()}
        started = []
        try:
            for agent in agents.values():
                await agent.start()
                started.append(agent)
            assert await _all_ready(started), "the agents did not get the directory"
            async with aiohttp.ClientSession() as http:
                async def call(agency, method, path, body=None):
                    headers = {"Authorization": "Bearer " + sandbox.agencies[agency].token}
                    url = agents[agency].api_url + path
                    async with http.request(method, url, json=body, headers=headers) as r:
                        doc = await r.json()
                        assert r.status < 400, (method, path, r.status, doc)
                        return doc

                await call("police", "POST", "/v1/consents", examples.consent(CONSENT_ID))
                referral = examples.referral(
                    urgency="urgent", legal_basis="consent", consent_receipt_id=CONSENT_ID
                )
                body = {"recipients": ["shelter"], "referral": referral}
                rid = (await call("police", "POST", "/v1/referrals", body))["id"]
                async with asyncio.timeout(60):
                    while True:
                        doc = await call("police", "GET", "/v1/referrals/" + rid)
                        if doc["recipients"][0]["state"] == "delivered":
                            break
                        await asyncio.sleep(0.05)
                received = await call("shelter", "GET", "/v1/referrals/" + rid)
            assert await _ledger_confirms(started), "the ledger did not confirm every event"
        finally:
            for agent in reversed(started):
                await agent.stop()
            await sandbox.stop_all()
        made = {"referral_id": rid, "received": received["referral"]}
        (root / "made.json").write_text(json.dumps(made))

    asyncio.run(main(Path(sys.argv[1])))
    """
)


def _git(*args: str) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(
            ["git", "-C", str(REPOSITORY), *args], capture_output=True, check=False
        )
    except FileNotFoundError:  # no git installed: as good as no history
        return subprocess.CompletedProcess(args, 127, b"", b"git is not installed")


@pytest.fixture(scope="module")
def old_mechanism(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The folder the previous release's sandbox left: agents' and ledger's databases,
    configurations and keys, and `made.json` (the referral id and what shelter received)."""
    if _git("cat-file", "-e", f"{PREVIOUS_RELEASE}^{{commit}}").returncode != 0:
        pytest.skip(
            f"not in a git clone holding commit {PREVIOUS_RELEASE} (release 0.1.0); CI and "
            "the fresh-clone check run in full clones, where this test runs"
        )
    base = tmp_path_factory.mktemp("upgrade")
    tree, root = base / "release-0.1.0", base / "mechanism"
    archive = _git("archive", "--format=tar", PREVIOUS_RELEASE)
    assert archive.returncode == 0, archive.stderr
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(tree, filter="data")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    run = subprocess.run(
        [sys.executable, "-c", OLD_MECHANISM, str(root)],
        cwd=tree,
        env=env,
        capture_output=True,
        timeout=OLD_RUN_SECONDS,
        check=False,
    )
    assert run.returncode == 0, run.stderr.decode()[-4000:]
    yield root


def _read(path: Path, sql: str) -> list[tuple[object, ...]]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(db.execute(sql))
    finally:
        db.close()


def _counts(path: Path) -> dict[str, int]:
    """Rows in every table of the database at `path`."""
    tables = _read(path, "SELECT name FROM sqlite_master WHERE type = 'table'")
    return {
        str(t): int(_read(path, f"SELECT count(*) FROM {t}")[0][0])  # noqa: S608 (own names)
        for (t,) in tables
        if not str(t).startswith("sqlite_")
    }


def _user_version(path: Path) -> int:
    return int(_read(path, "PRAGMA user_version")[0][0])


def test_the_agent_databases_of_0_1_0_open_migrated_and_keep_every_row(
    old_mechanism: Path,
) -> None:
    """Police's and shelter's databases go from user_version 1 to this release's; every row
    of every table is still there, the referral under the same id, side and state; shelter
    opens the received referral to what the old agent showed, its inbox row names the shared
    stream it came from, and the envelope 0.1.0 sealed verifies and opens with this code."""
    made = json.loads((old_mechanism / "made.json").read_text())
    rid = made["referral_id"]
    for agency in ("police", "shelter"):
        path = old_mechanism / agency / "agent.db"
        assert _user_version(path) == 1
        before = _counts(path)
        referrals = "SELECT owner, referral_id, counterpart, side, state FROM referrals"
        referrals_before = _read(path, referrals)
        inbox_before = _read(path, "SELECT message_id, kind, stream_seq FROM inbox ORDER BY seq")
        assert len(referrals_before) == 1 and before["inbox"] > 0 and before["outbox"] > 0
        agent = Agent.from_config_file(old_mechanism / agency / "agent.toml")
        try:
            if agency == "shelter":
                opened = agent.desk.open_body(
                    "police", rid, agent.store.received_body("police", rid)
                )
                assert opened is not None and opened["referral"] == made["received"]
                # The envelope 0.1.0 sealed, as police's outbox keeps it, opens with 0.2.0.
                ((envelope,),) = _read(
                    old_mechanism / "police" / "agent.db",
                    "SELECT envelope FROM outbox WHERE kind = 'referral'",
                )
                directory = agent.trust.directory
                assert directory is not None
                header = open_envelope(
                    bytes(envelope),
                    me="shelter",
                    decryption_keys=agent._decryption_keys(directory, clock.now()),
                    signers=directory,
                    now=clock.now(),
                ).header
                referral_message = next(m for m, kind, _ in inbox_before if kind == "referral")
                assert (header.message_id, header.sender) == (referral_message, "police")
                seq = next(s for m, _, s in inbox_before if m == referral_message)
                assert agent.store.received_position(str(referral_message)) == (
                    SHARED_INBOX_STREAM,
                    seq,
                )
            else:
                rows = agent.store.referral_rows("police", rid)
                assert [(r[0], r[2]) for r in rows] == [("shelter", "delivered")]
        finally:
            agent.store.close()
        assert _user_version(path) == AGENT_VERSION
        after = _counts(path)
        assert {t: after[t] for t in before} == before
        counterpart, side = (
            ("police", "recipient") if agency == "shelter" else ("shelter", "sender")
        )
        assert _read(path, referrals) == referrals_before
        assert referrals_before == [("police", rid, counterpart, side, "delivered")]


def test_the_ledger_database_of_0_1_0_opens_migrated_and_verifies(old_mechanism: Path) -> None:
    """The ledger's database gets its user_version; the same leaves, size and root; its
    checkpoints, which `nrm audit verify` of this release refuses before, are re-signed in
    the current format when this ledger opens it, and then verify; opening it again changes
    nothing."""
    path = old_mechanism / "ledger" / "ledger.db"
    config = old_mechanism / "ledger" / "ledger.toml"
    leaves = "SELECT idx, leaf FROM entries ORDER BY idx"

    def digest() -> str:
        return hashlib.sha256(b"".join(bytes(leaf) for _, leaf in _read(path, leaves))).hexdigest()

    assert _user_version(path) == 0
    before, leaves_before = _counts(path), digest()
    ((size, root),) = _read(path, "SELECT size, root FROM checkpoints ORDER BY size DESC LIMIT 1")
    assert size == before["entries"] > 0
    verify = [
        "audit", "verify", "--db", str(path),
        "--root", str(old_mechanism / "admin" / "root.1.json"),
        "--ledger-identity", str(old_mechanism / "ledger" / "keys" / "identity.json"),
    ]  # fmt: skip
    refused = CliRunner().invoke(main, verify)
    assert refused.exit_code == 3 and "checkpoint does not verify" in refused.output

    # As 0.1.0 wrote it, ledger.toml names the operator's keys, which this release refuses
    # with the upgrade step; done as RUNBOOK "Upgrade" says, the ledger opens.
    with pytest.raises(LedgerConfigError, match="operator_key_dir is no longer read"):
        Ledger.from_config_file(config)
    lines = config.read_text().splitlines(keepends=True)
    config.write_text("".join(line for line in lines if not line.startswith("operator_key_dir")))

    notes = []
    for _ in range(2):  # the second opening re-signs nothing
        ledger = Ledger.from_config_file(config)
        try:
            assert ledger.tree.size == size and ledger.tree.root() == root
        finally:
            ledger.store.close()
        notes.append(_read(path, "SELECT size, note FROM checkpoints ORDER BY size"))
    assert notes[0] == notes[1]
    assert _user_version(path) == LEDGER_VERSION
    after = _counts(path)
    # Tables a later release adds are created empty at start; none of the old ones changed.
    assert {t: after[t] for t in before} == before and digest() == leaves_before
    assert all(after[t] == 0 for t in after.keys() - before.keys()), after

    result = CliRunner().invoke(main, verify)
    assert result.exit_code == 0, result.output
    assert f"OK: {size} events verified" in result.output and bytes(root).hex() in result.output
