"""Restoring an agent from a backup: `nrm agent restore`, then resend requests honoured by
the senders from their outboxes (agents/resend.py, PROTOCOL.md §6.3), against a real
nats-server, real agents and real SQLite (issue 10, 6)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from structlog.testing import capture_logs

from agents.resend import MAX_HAVE, ResendRequest
from keys import MalformedError
from keys.keyfile import INTERACTIVE
from nrm import admin
from nrm.cli import main
from runtime import clock
from runtime.keydir import rotate_key_dir

from . import samples
from .support import Mechanism, eventually
from .test_agent import delivered


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


async def refer(m: Mechanism, n: int) -> list[str]:
    ids = [await m.api("police").refer(["shelter"], samples.referral()) for _ in range(n)]
    for rid in ids:
        await delivered(m, "police", rid)
    return ids


def inbox_referrals(m: Mechanism, agency: str) -> list[str]:
    """Referral ids in `agency`'s inbox, one per stored message."""
    with sqlite3.connect(m.database(agency)) as db:
        rows = db.execute("SELECT referral_id FROM inbox WHERE kind = 'referral' ORDER BY seq")
        return [str(r[0]) for r in rows]


async def test_restored_agent_gets_back_what_it_lost_once_and_nothing_withdrawn(
    mechanism: Mechanism, tmp_path: Path
) -> None:
    """After backup, more referrals received, stop, `nrm agent restore` and start, the
    shelter gets every lost referral again, stores none twice, is not re-sent those it
    still held (no replay refusals), and does not get back a referral the police withdrew
    since; the police's referrals all end delivered."""
    m = mechanism
    before = await refer(m, 2)
    backup = tmp_path / "shelter-backup.db"
    config = str(m.setups["shelter"].config_path)
    code, out = cli("agent", "backup", "--config", config, "--to", str(backup))
    assert code == 0, out
    after = await refer(m, 3)
    withdrawn = await refer(m, 1)
    status, body, _ = await m.api("police").call(
        "POST", f"/v1/referrals/{withdrawn[0]}/transitions", json={"to": "withdrawn"}
    )
    assert status == 202, body

    async def withdrawn_there() -> bool:
        status, body, _ = await m.api("shelter").call("GET", f"/v1/referrals/{withdrawn[0]}")
        return status == 200 and body["state"] == "withdrawn"

    await eventually(withdrawn_there, what="the withdrawal to reach the shelter")
    assert sorted(inbox_referrals(m, "shelter")) == sorted(before + after + withdrawn)
    await m.stop("shelter")
    code, out = await asyncio.to_thread(
        cli, "agent", "restore", "--config", config, "--from", str(backup)
    )
    assert code == 0, out
    assert sorted(inbox_referrals(m, "shelter")) == sorted(before)
    with capture_logs() as logs:
        await m.start("shelter")

        async def back() -> bool:
            got = inbox_referrals(m, "shelter")
            honoured = [e for e in logs if e["event"] == "resend_honoured"]
            return sorted(got) == sorted(before + after) and len(honoured) == 2

        await eventually(back, timeout=30, what="the lost referrals to arrive again")
    got = inbox_referrals(m, "shelter")
    assert len(got) == len(set(got)), "a referral stored twice"
    assert withdrawn[0] not in got
    assert not [e for e in logs if e["event"] == "message_rejected"]
    by_police = [e for e in logs if e["event"] == "resend_honoured" and e["agency"] == "police"]
    assert by_police[0]["resent"] >= len(after) and by_police[0]["skipped"] == {"withdrawn": 2}

    async def all_delivered() -> bool:
        # The receipts of the re-sent copies reach the police after the shelter stored them.
        statuses = [await m.api("police").status(rid) for rid in before + after]
        return statuses == ["delivered"] * len(statuses)

    await eventually(
        all_delivered, timeout=30, what="every referral to end delivered at the police"
    )
    inbox: list[dict[str, Any]] = await m.api("shelter").inbox()
    assert {item["id"] for item in inbox} == set(before + after)
    assert all(item["referral"] is not None for item in inbox)


async def test_agent_restore_refuses_while_running_and_a_file_that_is_no_agent_database(
    mechanism: Mechanism, tmp_path: Path
) -> None:
    """`nrm agent restore` changes nothing while the agent answers on its port, nor from
    another agency's backup, nor from a file that is not an agent database."""
    m = mechanism
    config_path = m.setups["shelter"].config_path
    backup = tmp_path / "shelter-backup.db"
    code, out = cli("agent", "backup", "--config", str(config_path), "--to", str(backup))
    assert code == 0, out
    port = m.agents["shelter"].api_port
    text = config_path.read_text()
    config_path.write_text(text.replace("127.0.0.1:0", f"127.0.0.1:{port}"))
    code, out = await asyncio.to_thread(
        cli, "agent", "restore", "--config", str(config_path), "--from", str(backup)
    )
    assert code == 1 and "stop the agent first" in out, out
    await m.stop("shelter")
    before = m.database("shelter").read_bytes()
    police_backup = tmp_path / "police-backup.db"
    police_config = str(m.setups["police"].config_path)
    code, out = cli("agent", "backup", "--config", police_config, "--to", str(police_backup))
    assert code == 0, out
    code, out = cli("agent", "restore", "--config", str(config_path), "--from", str(police_backup))
    assert code == 1 and "police's agent database, not shelter's" in out, out
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all")
    code, out = cli("agent", "restore", "--config", str(config_path), "--from", str(junk))
    assert code == 1 and "not an agent database" in out, out
    assert m.database("shelter").read_bytes() == before
    assert not list(m.database("shelter").parent.glob("agent.db.before-restore-*"))


def test_resend_request_decoding_is_strict() -> None:
    """A resend request round-trips, and unsorted, duplicate, too many or malformed held
    ids are refused as malformed."""
    ids = tuple(sorted(f"{n:032x}" for n in range(3)))
    request = ResendRequest(since=1_767_225_600, have=ids)
    assert ResendRequest.decode(request.encode()) == request
    from keys import codec

    for bad in (
        codec.pack([1, 5, list(reversed(ids))]),
        codec.pack([1, 5, [ids[0], ids[0]]]),
        codec.pack([1, 5, [f"{n:032x}" for n in range(MAX_HAVE + 1)]]),
        codec.pack([1, True, []]),
        codec.pack([1, -1, []]),
        codec.pack([2, 5, []]),
        codec.pack([1, 5, ["NOT-HEX"]]),
        codec.pack([1, 5]),
    ):
        with pytest.raises(MalformedError):
            ResendRequest.decode(bad)


async def start_and_await_police_answer(m: Mechanism) -> dict[str, Any]:
    """Start the shelter and return the police's log of honouring its resend request."""
    with capture_logs() as logs:
        await m.start("shelter")

        async def answered() -> bool:
            return any(e["event"] == "resend_honoured" and e["agency"] == "police" for e in logs)

        await eventually(answered, timeout=30, what="the police to answer the resend request")
    return next(e for e in logs if e["event"] == "resend_honoured" and e["agency"] == "police")


async def test_expired_mail_is_not_sent_again(
    mechanism: Mechanism, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Restored 15 days after the backup, the shelter asks again, and the police skips the
    referrals whose envelopes have expired (counted as `expired`) instead of sending what
    the shelter would refuse; the shelter holds only what it had."""
    m = mechanism
    offset = tmp_path / "clock-offset"
    monkeypatch.setenv(clock.ENV, str(offset))
    before = await refer(m, 1)
    backup = tmp_path / "shelter-backup.db"
    config = str(m.setups["shelter"].config_path)
    code, out = cli("agent", "backup", "--config", config, "--to", str(backup))
    assert code == 0, out
    await refer(m, 2)
    await m.stop("shelter")
    code, out = await asyncio.to_thread(
        cli, "agent", "restore", "--config", config, "--from", str(backup)
    )
    assert code == 0, out
    clock.set_offset(offset, 15 * 24 * 3600)
    honoured = await start_and_await_police_answer(m)
    assert honoured["resent"] == 0 and honoured["skipped"] == {"expired": 2}, honoured
    assert inbox_referrals(m, "shelter") == before


async def test_mail_sealed_to_a_key_past_its_overlap_is_not_sent_again(
    mechanism: Mechanism, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the shelter's encryption key was rotated out (overlap over) after the backup,
    the police skips the envelopes sealed to the old key (`key-retired`): the shelter could
    not open them; nothing is re-sealed."""
    m = mechanism
    offset = tmp_path / "clock-offset"
    monkeypatch.setenv(clock.ENV, str(offset))
    await refer(m, 1)
    backup = tmp_path / "shelter-backup.db"
    shelter = m.setups["shelter"]
    code, out = cli("agent", "backup", "--config", str(shelter.config_path), "--to", str(backup))
    assert code == 0, out
    await refer(m, 1)
    await m.stop("shelter")
    rotate_key_dir(shelter.key_dir, passphrase=shelter.passphrase(), cost=INTERACTIVE)
    identity = admin.PublicIdentity.from_json(shelter.identity_path.read_bytes())
    admin.add_agency(m.sandbox.admin, identity, roles=list(shelter.roles), overlap_seconds=0)
    m.sandbox.sign_draft()
    await m.sandbox.publish()
    code, out = await asyncio.to_thread(
        cli, "agent", "restore", "--config", str(shelter.config_path), "--from", str(backup)
    )
    assert code == 0, out
    clock.set_offset(offset, 3600)  # past the old key's last second and the clock skew
    honoured = await start_and_await_police_answer(m)
    assert honoured["resent"] == 0 and honoured["skipped"] == {"key-retired": 1}, honoured
