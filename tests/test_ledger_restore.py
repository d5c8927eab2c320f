"""Restoring the ledger from a backup, end to end: real nats-server, real ledger, real agents,
the `nrm ledger backup` / `nrm ledger restore` / `nrm audit verify` commands (issue 10, 6)."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from structlog.testing import capture_logs

from broker.ledger import Ledger
from keys.merkle import Frontier, root_of
from keys.subjects import AUDIT_STREAM
from nrm.cli import main

from .support import Mechanism, eventually
from .test_agent import operator_js
from .test_ledger import audit_verify, exchange, ledger_db, outbox


def ledger_config(m: Mechanism) -> Path:
    return m.sandbox.ledger_home / "ledger.toml"


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


async def held_by_every_agent(m: Mechanism, size: int) -> None:
    """Wait until every agent has verified a checkpoint of at least `size` entries."""

    async def check() -> bool:
        return all(
            a.ledger_watch is not None
            and a.ledger_watch.checkpoint is not None
            and a.ledger_watch.checkpoint.size >= size
            for a in m.agents.values()
        )

    await eventually(check, what=f"every agent to hold a checkpoint of {size} entries")


async def restart_ledger(m: Mechanism, port: int) -> Ledger:
    """Start the ledger again on the port the agents know."""
    path = m.sandbox.write_ledger_config(checkpoint_interval=0.5, bind=f"127.0.0.1:{port}")
    ledger = Ledger.from_config_file(path)
    await ledger.start()
    m.sandbox.ledger = ledger
    return ledger


async def grow_after_backup(m: Mechanism, backup: Path) -> tuple[int, int]:
    """Back the ledger up, exchange more, let every agent see the larger tree, stop the
    ledger. Returns the size at backup and the ledger's port."""
    ledger = m.sandbox.ledger
    assert ledger is not None
    await exchange(m)
    code, out = cli("ledger", "backup", "--config", str(ledger_config(m)), "--to", str(backup))
    assert code == 0, out
    with sqlite3.connect(backup) as db:
        (at_backup,) = db.execute("SELECT count(*) FROM entries").fetchone()
    await exchange(m)
    ledger.checkpoint()
    size = ledger.tree.size
    assert size > at_backup
    await held_by_every_agent(m, size)
    assert ledger.port is not None
    port = ledger.port
    await m.sandbox.stop_ledger()
    return at_backup, port


def copy_by_hand(backup: Path, db: Path) -> None:
    """What an administrator might do by analogy with a file restore: no declaration."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(backup, db)


def every_event_included(m: Mechanism, ledger: Ledger) -> bool:
    """Every event every agent emitted is in the ledger and proved included by its agent."""
    for agency in m.agents:
        for event_id, _, state in outbox(m, agency):
            if state != "included" or not ledger.store.has_event(event_id):
                return False
    return True


def alerts(m: Mechanism) -> dict[str, Any]:
    return {
        agency: a.ledger_watch.last_alert
        for agency, a in m.agents.items()
        if a.ledger_watch is not None and a.ledger_watch.alerts
    }


@pytest.mark.parametrize("stream", ["kept", "purged"])
async def test_declared_restore_catches_up_without_a_tamper_alarm(
    mechanism: Mechanism, tmp_path: Path, stream: str
) -> None:
    """After backup, more traffic, stop and `nrm ledger restore`, the restarted ledger gets
    back every event it lost (from the audit stream, and from the agents' re-offers when the
    stream no longer holds them), every agent proves each of its events included again, no
    agent raises an alert, and `nrm audit verify` passes and shows the declaration."""
    m = mechanism
    backup = tmp_path / "ledger-backup.db"
    at_backup, port = await grow_after_backup(m, backup)
    code, out = cli("ledger", "restore", "--config", str(ledger_config(m)), "--from", str(backup))
    assert code == 0, out
    if stream == "purged":  # as if every event had aged out of the stream
        nc, js = await operator_js(m)
        try:
            await js.purge_stream(AUDIT_STREAM)
        finally:
            await nc.close()
    assert f"restored the ledger to {at_backup} entries" in out
    with capture_logs() as logs:
        ledger = await restart_ledger(m, port)
        await exchange(m)  # traffic goes on after the restore

        async def caught_up() -> bool:
            ledger.checkpoint()
            agents_hold = all(
                a.ledger_watch is not None
                and a.ledger_watch.checkpoint is not None
                and a.ledger_watch.checkpoint.size == ledger.tree.size
                for a in m.agents.values()
            )
            return agents_hold and every_event_included(m, ledger) and not alerts(m)

        await eventually(caught_up, timeout=60, what="the restored ledger to catch up")
    assert not alerts(m)
    assert not [e for e in logs if e["event"] == "ledger_alert"]
    accepted = {e["agency"] for e in logs if e["event"] == "ledger_restore_accepted"}
    assert accepted == set(m.agents)
    await proofs_refuse_bad_parameters(m, ledger, at_backup)
    headers = {"Authorization": f"Bearer {m.sandbox.auditor_token}"}
    async with m.http.get(ledger.url + "/v1/restores", headers=headers) as r:
        served = (await r.json())["items"]
    assert [(d["seq"], d["restored_size"]) for d in served] == [(1, at_backup)]
    # An auditor reads the whole ledger; an agency's token reads only its own events.
    token_file = tmp_path / "auditor.token"
    token_file.write_text(m.sandbox.auditor_token)
    token = str(token_file)
    code, out = await asyncio.to_thread(
        audit_verify, m, "--ledger", ledger.url, "--token-file", token
    )
    assert code == 0, out
    assert "restore 1 declared" in out and f"back to {at_backup} entries" in out
    await m.sandbox.stop_ledger()
    code, out = audit_verify(m, "--db", str(ledger_db(m)))
    assert code == 0, out
    assert "restore 1 declared" in out
    # The replaced database is kept; it is no earlier state of the restored one (it forks
    # after the restored entries), so it cannot be restored over it.
    replaced = ledger_db(m).with_name("ledger.db.before-restore-1")
    before = ledger_db(m).read_bytes()
    code, out = cli("ledger", "restore", "--config", str(ledger_config(m)), "--from", str(replaced))
    assert code == 1 and "not an earlier state" in out, out
    assert ledger_db(m).read_bytes() == before


async def proofs_refuse_bad_parameters(m: Mechanism, ledger: Ledger, restored: int) -> None:
    """The restore proof endpoint answers problem+json 4xx to bad input, never a 500."""
    headers = {"Authorization": f"Bearer {m.sandbox.auditor_token}"}
    for path, status in [
        ("/v1/restores/1/proof", 400),  # size missing
        (f"/v1/restores/1/proof?size={restored - 1}", 404),  # below the restored size
        ("/v1/restores/1/proof?size=99999999", 404),  # past the tree
        ("/v1/restores/2/proof?size=1", 404),
        ("/v1/restores/99999999999999999999/proof?size=1", 404),
        ("/v1/restores/x/proof?size=1", 404),
    ]:
        async with m.http.get(ledger.url + path, headers=headers) as r:
            assert r.status == status, (path, r.status)
            assert r.content_type == "application/problem+json"


async def test_restore_of_a_lost_ledger_is_accepted_but_reported_unproven(
    mechanism: Mechanism, tmp_path: Path
) -> None:
    """With the replaced database lost (`--replaced-lost`), agents cannot check their last
    checkpoint against the restore: they raise restore-unproven, never the tamper alarm, and
    every event is included again."""
    m = mechanism
    backup = tmp_path / "ledger-backup.db"
    _, port = await grow_after_backup(m, backup)
    config = str(ledger_config(m))
    code, out = cli(
        "ledger", "restore", "--config", config, "--from", str(backup), "--replaced-lost"
    )
    assert code == 1 and "without --replaced-lost" in out, out
    for path in ledger_db(m).parent.glob("ledger.db*"):
        path.unlink()
    code, out = cli(
        "ledger", "restore", "--config", config, "--from", str(backup), "--replaced-lost"
    )
    assert code == 0 and "before: unknown" in out, out
    ledger = await restart_ledger(m, port)

    async def caught_up() -> bool:
        raised = alerts(m)
        return every_event_included(m, ledger) and raised == dict.fromkeys(
            m.agents, "restore-unproven"
        )

    await eventually(caught_up, timeout=60, what="every agent to catch up, reporting unproven")


async def test_undeclared_rollback_still_raises_the_tamper_alarm(
    mechanism: Mechanism, tmp_path: Path
) -> None:
    """A backup put back by copying the file, with no declaration, makes the agents that
    verified the larger tree raise checkpoint-rolled-back or inconsistent-checkpoints."""
    m = mechanism
    backup = tmp_path / "ledger-backup.db"
    _, port = await grow_after_backup(m, backup)
    copy_by_hand(backup, ledger_db(m))
    await restart_ledger(m, port)

    async def alarmed() -> bool:
        raised = alerts(m)
        return set(raised) == set(m.agents) and all(
            reason in ("checkpoint-rolled-back", "inconsistent-checkpoints")
            for reason in raised.values()
        )

    await eventually(alarmed, timeout=30, what="every agent to raise the tamper alarm")


async def test_restore_is_refused_while_the_ledger_runs_or_from_a_foreign_backup(
    mechanism: Mechanism, tmp_path: Path
) -> None:
    """`nrm ledger restore` refuses, changing nothing, while the ledger runs (as does a
    second `nrm ledger run`), and a backup that is not an earlier state of the database."""
    m = mechanism
    ledger = m.sandbox.ledger
    assert ledger is not None
    await exchange(m)
    backup = tmp_path / "ledger-backup.db"
    code, out = cli("ledger", "backup", "--config", str(ledger_config(m)), "--to", str(backup))
    assert code == 0, out
    code, out = cli("ledger", "restore", "--config", str(ledger_config(m)), "--from", str(backup))
    assert code == 1 and "stop it first" in out, out
    # A second ledger on the same database is refused the same way.
    code, out = await asyncio.to_thread(cli, "ledger", "run", "--config", str(ledger_config(m)))
    assert code == 1 and "in use by a running ledger" in out, out
    # A "backup" whose first entry differs: not an earlier state of this ledger.
    with sqlite3.connect(backup) as b:
        b.execute("DELETE FROM entries WHERE idx = (SELECT max(idx) FROM entries)")
        b.execute("DELETE FROM entries WHERE idx = 0")
    await m.sandbox.stop_ledger()
    before = ledger_db(m).read_bytes()
    code, out = cli("ledger", "restore", "--config", str(ledger_config(m)), "--from", str(backup))
    assert code == 1 and "not a readable ledger database" in out, out
    assert ledger_db(m).read_bytes() == before
    assert not list(ledger_db(m).parent.glob("ledger.db.before-restore-*"))


def test_the_restore_check_computes_rfc_6962_roots_in_bounded_memory() -> None:
    """The streaming root the restore recomputes a backup with equals the RFC 6962 root of
    the same leaves, for every size from 0 to 70."""
    for n in range(71):
        hashes = [hashlib.sha256(bytes([i])).digest() for i in range(n)]
        frontier = Frontier()
        for h in hashes:
            frontier.append(h)
        assert frontier.size == n and frontier.root() == root_of(hashes), n
