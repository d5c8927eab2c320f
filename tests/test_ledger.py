"""The audit ledger end to end: real nats-server, real ledger, real agents, real HTTP, and the
auditor CLI on the live ledger and on tampered copies of its database (issue 5)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import re
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import nats.errors
import pytest
import pytest_asyncio
from click.testing import CliRunner
from nacl.signing import SigningKey
from structlog.testing import capture_logs

from broker.ledger import METRICS_SCOPE, LedgerToken
from broker.ledger_migrate import LEGACY_ORIGIN_PREFIX, legacy_note, migrate_legacy
from broker.ledger_store import LedgerStore
from keys import PublicIdentity
from keys.audit import AuditEvent, new_event_id, sign_event
from keys.checkpoint import Checkpoint, ledger_origin, sign_checkpoint, verify_checkpoint
from keys.keyfile import INTERACTIVE
from keys.ledger_entry import LedgerEntry
from keys.merkle import leaf_hash, verify_inclusion
from keys.restore import RestoreDeclaration, sign_restore, verify_restore
from keys.subjects import audit_subject
from nrm import admin
from nrm.cli import main
from nrm.sandbox import LEDGER_NAME
from runtime import clock
from runtime.http import token_digest
from runtime.keydir import load_key_dir, rotate_key_dir

from . import samples
from .conftest import LedgerAccess, fill_ledger
from .support import AGENCIES, Mechanism, eventually, running_mechanism
from .test_agent import connect_as, delivered

# --- helpers ----------------------------------------------------------------------------------


def ledger_identity_path(m: Mechanism) -> Path:
    return m.sandbox.ledger_home / "keys" / "identity.json"


def ledger_db(m: Mechanism) -> Path:
    return m.sandbox.ledger_home / "ledger.db"


def outbox(m: Mechanism, agency: str) -> list[tuple[str, bytes, str]]:
    """(event id, signed event, state) of every audit event `agency` emitted."""
    with sqlite3.connect(m.database(agency)) as db:
        rows = db.execute("SELECT event_id, event, state FROM audit_outbox ORDER BY seq")
        return [(str(r[0]), bytes(r[1]), str(r[2])) for r in rows]


def backup(source: Path, target: Path) -> Path:
    """A consistent copy of a (possibly live, WAL-mode) SQLite database."""
    src = sqlite3.connect(source)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()
    return target


async def get(http: aiohttp.ClientSession, url: str, token: str | None) -> tuple[int, str, bytes]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with http.get(url, headers=headers) as r:
        return r.status, r.content_type, await r.read()


async def get_json(http: aiohttp.ClientSession, url: str, token: str) -> Any:
    async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status == 200, (url, r.status, await r.text())
        return await r.json()


async def all_confirmed(m: Mechanism) -> None:
    """Wait until every agent has published and proved the inclusion of all its events."""

    async def check() -> bool:
        return all(
            a.store.unconfirmed_audit(1) == [] and a.store.pending_audit(1) == []
            for a in m.agents.values()
        )

    await eventually(check, what="every audit event in the ledger and confirmed")


async def exchange(m: Mechanism, referral: dict[str, Any] | None = None) -> list[str]:
    """Three referrals police -> shelter and one police -> coordinator, all delivered."""
    body = referral or samples.referral()
    ids = [await m.api("police").refer(["shelter"], body) for _ in range(3)]
    ids.append(await m.api("police").refer(["coordinator"], body))
    for rid in ids:
        await delivered(m, "police", rid)
    await all_confirmed(m)
    return ids


def audit_verify(m: Mechanism, *source: str) -> tuple[int, str]:
    """Run `nrm audit verify` with `source` (--db FILE or --ledger URL --token-file F)."""
    result = CliRunner().invoke(
        main,
        [
            "audit",
            "verify",
            *source,
            "--root",
            str(m.sandbox.admin.root_path(1)),
            "--ledger-identity",
            str(ledger_identity_path(m)),
            "--name",
            LEDGER_NAME,
        ],
    )
    return result.exit_code, result.output


def set_ledger_option(m: Mechanism, agency: str, name: str, value: object) -> None:
    """Set `name = value` in the [ledger] table of `agency`'s agent.toml."""
    path = m.setups[agency].config_path
    text = path.read_text()
    line = f"{name} = {value!r}"
    if re.search(rf"^{name} = ", text, flags=re.MULTILINE):
        text = re.sub(rf"^{name} = .*$", line, text, count=1, flags=re.MULTILINE)
    else:
        text = text.replace("[ledger]\n", f"[ledger]\n{line}\n", 1)
    path.write_text(text)


async def agent_health(m: Mechanism, agency: str) -> dict[str, Any]:
    async with m.http.get(m.agents[agency].api_url + "/healthz") as r:
        body: dict[str, Any] = await r.json()
        return body


# --- a ledger database shared by the tampering tests --------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """A closed, checkpointed ledger database and what an auditor needs to verify it."""

    m: Mechanism
    db: Path
    size: int


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> Snapshot:
    """One real exchange, once per module; the ledger is then stopped (its last checkpoint
    covers every entry) and its database copied."""
    root = tmp_path_factory.mktemp("snapshot")

    async def build() -> Snapshot:
        async with aiohttp.ClientSession() as http:
            m = await Mechanism.create(root / "mechanism", http)
            try:
                for agency, _, _ in AGENCIES:
                    await m.start(agency)
                await exchange(m)
            finally:
                await m.close()
            db = backup(ledger_db(m), root / "ledger.db")
            with sqlite3.connect(db) as conn:
                (size,) = conn.execute("SELECT count(*) FROM entries").fetchone()
                (cp_size,) = conn.execute("SELECT max(size) FROM checkpoints").fetchone()
            assert size == cp_size >= 8
            return Snapshot(m, db, int(size))

    return asyncio.run(build())


def fresh_copy(snapshot: Snapshot, tmp_path: Path) -> Path:
    return backup(snapshot.db, tmp_path / "copy.db")


# --- 1. every emitted event is in the ledger and proved -------------------------------------


async def test_every_emitted_event_is_included_and_proved(
    mechanism: Mechanism, ledger_with_data: LedgerAccess
) -> None:
    """Every event in each agent's audit outbox is a ledger leaf whose inclusion proof, fetched
    over HTTP, verifies against the ledger's signed checkpoint; agents report ledger ok."""
    m, access = mechanism, ledger_with_data
    assert m.sandbox.ledger is not None
    identity = PublicIdentity.from_json(ledger_identity_path(m).read_bytes())
    body = await get_json(m.http, access.url + "/v1/checkpoint", access.token)
    cp = verify_checkpoint(
        body["note"],
        key=identity.signing_key,
        origin=m.sandbox.ledger.config.origin,
    )
    assert (cp.size, cp.root.hex()) == (body["size"], body["root"])
    emitted = 0
    for agency, _, _ in AGENCIES:
        events = outbox(m, agency)
        assert events, f"{agency} emitted no audit event"
        for event_id, signed, state in events:
            assert state == "included", (agency, event_id)
            item = await get_json(
                m.http, f"{access.url}/v1/events/{event_id}?size={cp.size}", access.token
            )
            leaf = base64.b64decode(item["leaf"])
            entry = LedgerEntry.decode(leaf)
            assert entry.signed_event == signed
            assert entry.index == item["index"] < cp.size
            assert item["agency"] == agency
            verify_inclusion(
                leaf_hash=leaf_hash(leaf),
                index=item["index"],
                size=cp.size,
                proof=[bytes.fromhex(h) for h in item["proof"]],
                root=cp.root,
            )
            emitted += 1
    assert emitted == cp.size == m.sandbox.ledger.tree.size
    for agency, _, _ in AGENCIES:
        health = await agent_health(m, agency)
        assert health["status"] == "ok", health
        assert health["ledger"]["status"] == "ok", health
        assert health["ledger"]["events_confirmed"] > 0, health


# --- 2. nrm audit verify: live, on a copy, and on tampered copies -----------------------------


async def test_audit_verify_passes_live_and_on_a_copy(
    mechanism: Mechanism, ledger_with_data: LedgerAccess, tmp_path: Path
) -> None:
    """`nrm audit verify` accepts the live ledger over HTTP and a backup of its database."""
    m, access = mechanism, ledger_with_data
    assert m.sandbox.ledger is not None
    size = m.sandbox.ledger.tree.size
    token_file = tmp_path / "token"
    token_file.write_text(access.token)
    code, output = await asyncio.to_thread(
        audit_verify, m, "--ledger", access.url, "--token-file", str(token_file)
    )
    assert code == 0, output
    assert f"OK: {size} events verified" in output
    m.sandbox.ledger.checkpoint()
    copy = tmp_path / "copy.db"
    config = m.sandbox.ledger_home / "ledger.toml"
    made = await asyncio.to_thread(
        CliRunner().invoke, main, ["ledger", "backup", "--config", str(config), "--to", str(copy)]
    )
    assert made.exit_code == 0, made.output
    assert copy.stat().st_mode & 0o777 == 0o600
    code, output = audit_verify(m, "--db", str(copy))
    assert code == 0, output
    assert "OK:" in output
    code, output = audit_verify(m, "--db", str(copy), "--json")
    assert output.startswith("{"), repr(output[:40])  # no progress bar's newline before it
    doc = json.loads(output)
    assert code == 0 and doc["ok"] is True and doc["events"] >= size, output
    assert doc["checkpoint"]["size"] >= size and len(doc["checkpoint"]["root"]) == 64
    query = CliRunner().invoke(main, ["audit", "query", "--db", str(copy), "--json"])
    events = json.loads(query.output)
    n = doc["events"]
    assert query.exit_code == 0 and events["count"] == n == len(events["events"])
    assert sorted(e["index"] for e in events["events"]) == list(range(n))
    assert all(e["kind"] and e["agency"] for e in events["events"])
    wrong = tmp_path / "wrong-token"
    wrong.write_text("not-a-token")
    code, output = await asyncio.to_thread(
        audit_verify, m, "--ledger", access.url, "--token-file", str(wrong)
    )
    assert code != 0 and "401" in output, output


def _columns(db: sqlite3.Connection, idx: int) -> tuple[Any, ...]:
    return tuple(db.execute("SELECT * FROM entries WHERE idx = ?", (idx,)).fetchone())


def _flip_leaf_signature(db: sqlite3.Connection, k: int) -> None:
    (leaf,) = db.execute("SELECT leaf FROM entries WHERE idx = ?", (k,)).fetchone()
    leaf = bytearray(leaf)
    leaf[-1] ^= 0x01  # the last byte of the event's Ed25519 signature
    db.execute("UPDATE entries SET leaf = ? WHERE idx = ?", (bytes(leaf), k))


def _change_kind(db: sqlite3.Connection, k: int) -> None:
    (kind,) = db.execute("SELECT kind FROM entries WHERE idx = ?", (k,)).fetchone()
    other = "consent.withdrawn" if kind != "consent.withdrawn" else "referral.sent"
    db.execute("UPDATE entries SET kind = ? WHERE idx = ?", (other, k))


def _change_time(db: sqlite3.Connection, k: int) -> None:
    db.execute("UPDATE entries SET time = time - 86400 WHERE idx = ?", (k,))


def _delete(db: sqlite3.Connection, k: int) -> None:
    db.execute("DELETE FROM entries WHERE idx = ?", (k,))


def _insert_duplicate(db: sqlite3.Connection, k: int) -> None:
    """Shift rows k.. up by one and put a copy of row 0 (under a new event id) at k."""
    db.execute("UPDATE entries SET idx = -idx - 1 WHERE idx >= ?", (k,))
    db.execute("UPDATE entries SET idx = -idx WHERE idx < 0")
    row = list(_columns(db, 0))
    row[0], row[1] = k, "f" * 32
    db.execute(f"INSERT INTO entries VALUES ({', '.join('?' * len(row))})", row)  # noqa: S608


def _swap(db: sqlite3.Connection, i: int, j: int) -> None:
    db.execute("UPDATE entries SET idx = -1 WHERE idx = ?", (i,))
    db.execute("UPDATE entries SET idx = ? WHERE idx = ?", (i, j))
    db.execute("UPDATE entries SET idx = ? WHERE idx = -1", (j,))


# (name, tamper(db, size), the index the verifier must name, or None for the checkpoint)
TAMPERING: list[tuple[str, Callable[[sqlite3.Connection, int], None], Callable[[int], int]]] = [
    ("change-leaf", lambda db, n: _flip_leaf_signature(db, 3), lambda n: 3),
    ("change-kind", lambda db, n: _change_kind(db, 2), lambda n: 2),
    ("change-time", lambda db, n: _change_time(db, 5), lambda n: 5),
    ("delete-first", lambda db, n: _delete(db, 0), lambda n: 0),
    ("delete-middle", lambda db, n: _delete(db, 4), lambda n: 4),
    ("delete-last", lambda db, n: _delete(db, n - 1), lambda n: n - 1),
    ("insert-middle", lambda db, n: _insert_duplicate(db, 2), lambda n: 2),
    ("swap", lambda db, n: _swap(db, 1, 6), lambda n: 1),
]


@pytest.mark.parametrize(
    ("tamper", "bad_index"), [pytest.param(t, i, id=name) for name, t, i in TAMPERING]
)
def test_audit_verify_names_the_tampered_index(
    snapshot: Snapshot,
    tmp_path: Path,
    tamper: Callable[[sqlite3.Connection, int], None],
    bad_index: Callable[[int], int],
) -> None:
    """Changing, deleting, inserting or reordering one row makes `nrm audit verify --db` exit
    non-zero naming the first bad index."""
    copy = fresh_copy(snapshot, tmp_path)
    code, output = audit_verify(snapshot.m, "--db", str(copy))
    assert code == 0, output
    with sqlite3.connect(copy) as db:
        tamper(db, snapshot.size)
    code, output = audit_verify(snapshot.m, "--db", str(copy))
    assert code == 3, output  # verification failed (nrm/exits.py)
    assert f"FAILED: entry {bad_index(snapshot.size)}:" in output, output


# --- 3. forged checkpoints ----------------------------------------------------------------------


def _latest_checkpoint(db: sqlite3.Connection) -> tuple[int, bytes, int, str]:
    row = db.execute(
        "SELECT size, root, timestamp, note FROM checkpoints ORDER BY size DESC LIMIT 1"
    ).fetchone()
    return int(row[0]), bytes(row[1]), int(row[2]), str(row[3])


def _forged_note(snapshot: Snapshot, note: str, size: int, root: bytes, ts: int) -> str:
    cp = Checkpoint(origin=ledger_origin(LEDGER_NAME), size=size, root=root, timestamp=ts)
    return sign_checkpoint(cp, key=SigningKey.generate())


def _altered_root_text(snapshot: Snapshot, note: str, size: int, root: bytes, ts: int) -> str:
    lines = note.split("\n")
    other = bytes([root[0] ^ 0x80]) + root[1:]
    assert lines[2] == base64.b64encode(root).decode()
    lines[2] = base64.b64encode(other).decode()
    return "\n".join(lines)


def _wrong_root_ledger_key(snapshot: Snapshot, note: str, size: int, root: bytes, ts: int) -> str:
    keys = load_key_dir(
        snapshot.m.sandbox.ledger_home / "keys", passphrase=snapshot.m.sandbox.ledger_passphrase
    )
    cp = Checkpoint(origin=ledger_origin(LEDGER_NAME), size=size, root=bytes(32), timestamp=ts)
    return sign_checkpoint(cp, key=keys.signing_key)


@pytest.mark.parametrize(
    ("forge", "expected"),
    [
        pytest.param(_forged_note, "checkpoint does not verify", id="other-key"),
        pytest.param(_altered_root_text, "checkpoint does not verify", id="root-edited"),
        pytest.param(_wrong_root_ledger_key, "root differs from the checkpoint", id="wrong-root"),
    ],
)
def test_forged_checkpoint_fails(
    snapshot: Snapshot,
    tmp_path: Path,
    forge: Callable[[Snapshot, str, int, bytes, int], str],
    expected: str,
) -> None:
    """A latest checkpoint signed by another key, with its root edited, or (even when signed by
    the ledger's key) with a root the entries do not produce, fails verification."""
    copy = fresh_copy(snapshot, tmp_path)
    with sqlite3.connect(copy) as db:
        size, root, ts, note = _latest_checkpoint(db)
        db.execute(
            "UPDATE checkpoints SET note = ? WHERE size = ?",
            (forge(snapshot, note, size, root, ts), size),
        )
    code, output = audit_verify(snapshot.m, "--db", str(copy))
    assert code == 3, output  # verification failed
    assert expected in output, output
    code, output = audit_verify(snapshot.m, "--db", str(copy), "--json")
    doc = json.loads(output[: output.rindex("}") + 1])
    assert code == 3 and doc["ok"] is False and expected in doc["failure"], output


def test_former_format_is_resigned_on_open(snapshot: Snapshot, tmp_path: Path) -> None:
    """A database whose checkpoints and restore declaration are in the former format (origin
    nrm-exchange/ledger/v1/<name>, key name <name>, a timestamp extension line) is re-signed
    when the ledger opens it: every checkpoint then verifies in the current format at the
    time it was first signed, the declaration under the current origin with its fields
    unchanged, `nrm audit verify` passes, and a second open changes nothing."""
    keys = load_key_dir(
        snapshot.m.sandbox.ledger_home / "keys", passphrase=snapshot.m.sandbox.ledger_passphrase
    )
    copy = fresh_copy(snapshot, tmp_path)
    legacy = LEGACY_ORIGIN_PREFIX + LEDGER_NAME
    with sqlite3.connect(copy) as db:
        rows = db.execute("SELECT size, root, timestamp FROM checkpoints").fetchall()
        assert rows
        for size, root, ts in rows:
            note = legacy_note(LEDGER_NAME, size, root, ts, keys.signing_key)
            db.execute("UPDATE checkpoints SET note = ? WHERE size = ?", (note, size))
        size, root, _ = rows[-1]
        old = RestoreDeclaration(legacy, 1, size, root, None, None, 1_700_000_000)
        db.execute(
            "INSERT INTO restores (seq, declaration, restored_size, previous_size, declared_at)"
            " VALUES (1, ?, ?, NULL, ?)",
            (sign_restore(old, keys.signing_key), size, old.declared_at),
        )
    code, output = audit_verify(snapshot.m, "--db", str(copy))
    assert code == 3 and "checkpoint does not verify" in output, output
    origin = ledger_origin(LEDGER_NAME)
    store = LedgerStore(copy)
    try:
        assert migrate_legacy(store, key=keys.signing_key, name=LEDGER_NAME) == len(rows) + 1
        for size, root, ts, note in store.checkpoint_rows():
            cp = verify_checkpoint(note, key=keys.signing_key.verify_key, origin=origin)
            assert (cp.size, cp.root, cp.timestamp) == (size, root, ts)
        [(_, data)] = store.restores()
        got = verify_restore(data, key=keys.signing_key.verify_key, origin=origin)
        assert got == dataclasses.replace(old, origin=origin)
        before = store.checkpoint_rows(), store.restores()
        assert migrate_legacy(store, key=keys.signing_key, name=LEDGER_NAME) == 0
        assert (store.checkpoint_rows(), store.restores()) == before
    finally:
        store.close()
    code, output = audit_verify(snapshot.m, "--db", str(copy))
    assert code == 0, output


# --- 4. the canary ------------------------------------------------------------------------------


async def test_canary_appears_nowhere_in_ledger_bus_or_logs(mechanism: Mechanism) -> None:
    """A name placed in a referral's personal fields is in no ledger file, ledger HTTP answer,
    JetStream store file, nats-server log or captured log line."""
    m = mechanism
    assert m.sandbox.ledger is not None
    canary = f"Canary-{secrets.token_hex(8)}"
    needles = [canary.encode(), canary.encode("utf-16-le"), canary[7:].encode()]
    referral = samples.referral(
        {**samples.BODY, "names": {"given_names": canary, "family_name": "Person"}},
        urgency="urgent",
    )
    with capture_logs() as logs:
        rid = await m.api("police").refer(["shelter"], referral)
        await delivered(m, "police", rid)
        await all_confirmed(m)
        inbox = await m.api("shelter").inbox()
    # the canary really travelled
    assert [i["referral"]["body"]["names"]["given_names"] for i in inbox] == [canary]
    assert logs, "no log captured"
    assert canary[7:] not in repr(logs)
    m.sandbox.ledger.checkpoint()
    url, token = m.sandbox.ledger.url, m.sandbox.auditor_token
    size = m.sandbox.ledger.tree.size
    event_ids = [e for e, _, _ in outbox(m, "police")]
    paths = [
        "/v1/checkpoint",
        "/v1/checkpoints",
        "/v1/entries?start=0",
        "/v1/events",
        f"/v1/events?q={rid}",
        *[f"/v1/events/{e}?size={size}" for e in event_ids],
        f"/v1/entries/0/proof?size={size}",
        f"/v1/proof/consistency?first=1&second={size}",
        "/v1/stats",
        f"/v1/referrals/{rid}/timeline",
        "/v1/directories",
        "/openapi.json",
        "/ui/",
    ]
    for path in paths:
        status, _, body = await get(m.http, url + path, token)
        assert status == 200, (path, status, body)
        for needle in needles:
            assert needle not in body, path
    timeline = await get_json(m.http, f"{url}/v1/referrals/{rid}/timeline", token)
    assert {i["kind"] for i in timeline["items"]} >= {"referral.sent", "referral.received"}
    files = [p for p in m.sandbox.ledger_home.rglob("*") if p.is_file()]
    assert any(p.name == "ledger.db-wal" for p in files), files
    files += [p for p in (m.root / "bus").rglob("*") if p.is_file()]
    assert m.bus.log_path in files
    for file in files:
        data = file.read_bytes()
        for needle in needles:
            assert needle not in data, file


async def test_token_scopes_limit_what_each_token_reads(mechanism: Mechanism) -> None:
    """An agency's token (the agents hold these, and confirm their events with them) reads
    its own events and the proofs, and is refused (403 problem+json) every other agency's
    events and the listings; a metrics token reads no /v1 route; the auditor reads all."""
    m = mechanism
    ledger = m.sandbox.ledger
    assert ledger is not None
    await exchange(m)
    ledger.checkpoint()
    size = ledger.tree.size
    police = (m.setups["police"].home / "ledger.token").read_text().strip()
    own, other = outbox(m, "police")[0][0], outbox(m, "shelter")[0][0]
    metrics = secrets.token_urlsafe(16)
    ledger.config = dataclasses.replace(
        ledger.config,
        tokens=(*ledger.config.tokens, LedgerToken(token_digest(metrics), METRICS_SCOPE)),
    )
    ledger.tokens = (ledger.config.tokens, ledger.config.token_digests)
    url = ledger.url
    readable = [
        "/v1/checkpoint",
        "/v1/checkpoints",
        f"/v1/events/{own}?size={size}",
        f"/v1/entries/0/proof?size={size}",
        f"/v1/proof/consistency?first=1&second={size}",
        "/v1/directories",
        "/v1/roots",
        "/v1/restores",
    ]
    refused = [
        f"/v1/events/{other}",
        "/v1/events",
        "/v1/entries?start=0",
        "/v1/stats",
        f"/v1/referrals/{outbox(m, 'police')[0][0]}/timeline",
    ]
    for path in readable + refused:
        status, ctype, _ = await get(m.http, url + path, police)
        assert status == (200 if path in readable else 403), (path, status)
        assert (await get(m.http, url + path, m.sandbox.auditor_token))[0] == 200, path
        status, ctype, body = await get(m.http, url + path, metrics)
        assert (status, ctype) == (403, "application/problem+json"), path
        assert b"'metrics'" in body
    auth = {"Authorization": f"Bearer {police}"}
    for ids, expected in (([own], 200), ([own, other], 403)):
        async with m.http.post(
            url + "/v1/proofs", json={"size": size, "event_ids": ids}, headers=auth
        ) as r:
            assert r.status == expected, await r.text()
            if expected == 403:
                assert r.content_type == "application/problem+json"
                assert "agency:police" in (await r.json())["detail"]
    # /metrics: a metrics or an auditor token; no token 401, an agency's 403; /healthz open.
    for token, expected in ((None, 401), (police, 403), (metrics, 200)):
        status, ctype, _ = await get(m.http, url + "/metrics", token)
        assert status == expected, (token is None, status)
        assert expected == 200 or ctype == "application/problem+json"
    assert (await get(m.http, url + "/metrics", m.sandbox.auditor_token))[0] == 200
    assert (await get(m.http, url + "/healthz", None))[0] == 200


# --- 5. events that do not verify are refused and counted -------------------------------------


async def test_ledger_refuses_and_counts_unverifiable_events(mechanism: Mechanism) -> None:
    """Events on police's own audit subject with a corrupted signature, signed with the
    shelter's key, not an event at all, or of a kind police may not sign (a decision) stay
    out of the ledger and are counted by reason."""
    m = mechanism
    ledger = m.sandbox.ledger
    assert ledger is not None
    # Without a grace period an unknown key is refused at once rather than retried for 2 min.
    ledger.config = dataclasses.replace(ledger.config, unknown_key_grace_seconds=0)
    police = load_key_dir(m.setups["police"].key_dir, passphrase=m.setups["police"].passphrase())
    shelter = load_key_dir(m.setups["shelter"].key_dir, passphrase=m.setups["shelter"].passphrase())

    def event() -> AuditEvent:
        return AuditEvent(
            event_id=new_event_id(), agency="police", kind="referral.sent", time=int(time.time())
        )

    corrupted_event = event()
    corrupted = bytearray(sign_event(corrupted_event, police.signing_key))
    corrupted[-1] ^= 0x01
    # Shelter's signature presented under police's key id: the key police holds rejects it.
    borrowed_event = event()
    borrowed = sign_event(borrowed_event, shelter.signing_key).replace(
        shelter.public.signing_kid.encode(), police.public.signing_kid.encode()
    )
    # Shelter's key under its own key id, claiming police: not a key of police.
    foreign_event = event()
    foreign = sign_event(foreign_event, shelter.signing_key)
    # Police's own key, but a decision only a competent authority signs: the statistics
    # count decisions, so no other agency may add to them.
    decision_event = dataclasses.replace(
        event(),
        kind="identification.decided",
        referral_id="a" * 32,
        counterpart="police",
        labels=(("age_route", "adult"), ("outcome", "positive"), ("stage", "first")),
    )
    decision = sign_event(decision_event, police.signing_key)
    # Nor a statistics contribution, which only a competent authority sends (§8.11).
    contributed_event = dataclasses.replace(
        event(),
        kind="statistics.contributed",
        counterpart="coordinator",
        envelope_hash="e" * 64,
        labels=(("period", "2026-12"),),
    )
    contributed = sign_event(contributed_event, police.signing_key)
    before = ledger.store.refused()
    async with connect_as(m, "police") as nc:
        js = nc.jetstream()
        forged = [bytes(corrupted), borrowed, foreign, b"\x93junk", decision, contributed]
        for n, data in enumerate(forged):
            await js.publish(audit_subject("police"), data, headers={"Nats-Msg-Id": f"forged-{n}"})

    async def counted() -> bool:
        refused = ledger.store.refused()
        return (
            refused.get("bad-signature", 0) - before.get("bad-signature", 0) == 2
            and refused.get("unknown-key", 0) - before.get("unknown-key", 0) == 1
            and refused.get("malformed", 0) - before.get("malformed", 0) == 1
            and refused.get("not-for-this-role", 0) - before.get("not-for-this-role", 0) == 2
        )

    await eventually(counted, what="the forged events to be refused and counted")
    # A legitimate exchange still goes through afterwards, and the ledger holds only it.
    await exchange(m)
    for held in (corrupted_event, borrowed_event, foreign_event, decision_event, contributed_event):
        assert not ledger.store.has_event(held.event_id)
    legitimate = {e for agency, _, _ in AGENCIES for e, _, _ in outbox(m, agency)}
    in_ledger = [r.event_id for r in ledger.store.iter_rows()]
    assert sorted(in_ledger) == sorted(legitimate)
    assert ledger.tree.size == len(legitimate)


async def _published_version(m: Mechanism) -> int:
    """Sign the draft and publish it; once the ledger trusts it, its version."""
    ledger = m.sandbox.ledger
    assert ledger is not None
    m.sandbox.sign_draft()
    version = await m.sandbox.publish()

    async def taken() -> bool:
        return ledger.directory is not None and ledger.directory.version == version

    await eventually(taken, what="the ledger to trust the new directory")
    return version


async def _publish_event(m: Mechanism, agency: str, data: bytes, msg_id: str) -> None:
    """Publish a signed event on `agency`'s audit subject with its current bus credentials
    (tried again until the bus takes them: a rotation replaces the NATS key too)."""

    async def published() -> bool:
        try:
            async with connect_as(m, agency) as nc:
                await nc.jetstream().publish(
                    audit_subject(agency), data, headers={"Nats-Msg-Id": msg_id}
                )
        except (nats.errors.Error, OSError):
            return False
        return True

    await eventually(published, what=f"the bus to take {agency}'s event")


async def test_ledger_refuses_an_event_backdated_before_its_keys_revocation(
    mechanism: Mechanism,
) -> None:
    """An event signed with police's key, claiming a time before the key's revocation but
    reaching the bus after it (a stolen key back-dating), is refused `revoked-key`, whatever
    its time: the ledger judges revocation at the bus's stored time (PROTOCOL.md §9.0)."""
    m = mechanism
    ledger = m.sandbox.ledger
    assert ledger is not None
    police = load_key_dir(m.setups["police"].key_dir, passphrase=m.setups["police"].passphrase())
    assert ledger.directory is not None
    [key] = [
        k
        for k in ledger.directory.agency("police").signing_keys
        if k.kid == police.public.signing_kid
    ]

    async def past_valid_from() -> bool:
        return clock.now() > key.valid_from

    await eventually(past_valid_from, what="a second inside the key's window")
    # Police's own agent goes first: it would go on signing with the revoked key, and the
    # ledger would refuse those too, so the count would not be this event's alone.
    await m.stop("police")
    revoked_at = clock.now()
    backdated = AuditEvent(
        event_id=new_event_id(), agency="police", kind="referral.sent", time=key.valid_from
    )
    data = sign_event(backdated, police.signing_key)
    admin.revoke_key(m.sandbox.admin, "police", key.kid, reason="laptop stolen", at=revoked_at)
    await _published_version(m)
    before = ledger.store.refused()
    await _publish_event(m, "police", data, "backdated")

    async def counted() -> bool:
        refused = ledger.store.refused()
        return refused.get("revoked-key", 0) - before.get("revoked-key", 0) == 1

    await eventually(counted, what="the back-dated event to be refused revoked-key")
    assert not ledger.store.has_event(backdated.event_id)


async def test_ledger_appends_an_event_delayed_past_its_keys_retirement(
    mechanism: Mechanism,
) -> None:
    """An event signed before a rotation and reaching the bus after the old key's
    valid_until (held in an outbox, say) is appended: only a revocation is judged at the
    bus's stored time, a retirement at the event's own (PROTOCOL.md §9.0)."""
    m = mechanism
    ledger = m.sandbox.ledger
    assert ledger is not None
    setup = m.setups["police"]
    police = load_key_dir(setup.key_dir, passphrase=setup.passphrase())
    delayed = AuditEvent(
        event_id=new_event_id(), agency="police", kind="referral.sent", time=clock.now()
    )
    data = sign_event(delayed, police.signing_key)
    rotate_key_dir(setup.key_dir, passphrase=setup.passphrase(), cost=INTERACTIVE)
    identity = PublicIdentity.from_json(setup.identity_path.read_bytes())
    admin.add_agency(m.sandbox.admin, identity, roles=[], overlap_seconds=0)
    await _published_version(m)
    assert ledger.directory is not None
    [old] = [
        k
        for k in ledger.directory.agency("police").signing_keys
        if k.kid == police.public.signing_kid
    ]
    assert old.status == "retiring" and old.valid_until is not None
    until = old.valid_until

    async def retired() -> bool:
        return clock.now() > until

    await eventually(retired, what="the old key's valid_until to pass")
    await _publish_event(m, "police", data, "delayed")

    async def appended() -> bool:
        return ledger.store.has_event(delayed.event_id)

    await eventually(appended, what="the delayed event to be appended")


# --- 6. agents raise alerts ---------------------------------------------------------------------


async def test_forked_checkpoint_raises_an_alert(mechanism: Mechanism) -> None:
    """A checkpoint signed with the ledger's own key for the current size but another root
    (a fork) puts every agent that sees it in alert, and its health in degraded."""
    m = mechanism
    ledger = m.sandbox.ledger
    assert ledger is not None
    await exchange(m)
    ledger.checkpoint()
    size = ledger.tree.size

    async def seen() -> bool:
        watch = m.agents["police"].ledger_watch
        return watch is not None and watch.checkpoint is not None and watch.checkpoint.size == size

    await eventually(seen, what="police to hold the current checkpoint")
    keys = load_key_dir(m.sandbox.ledger_home / "keys", passphrase=m.sandbox.ledger_passphrase)
    forked_root = bytes(32)
    cp = Checkpoint(
        origin=ledger.config.origin, size=size, root=forked_root, timestamp=int(time.time())
    )
    note = sign_checkpoint(cp, key=keys.signing_key)
    with sqlite3.connect(ledger_db(m)) as db:
        db.execute(
            "INSERT OR REPLACE INTO checkpoints (size, root, timestamp, note) VALUES (?, ?, ?, ?)",
            (size, forked_root, cp.timestamp, note),
        )
    served = await get_json(m.http, ledger.url + "/v1/checkpoint", m.sandbox.auditor_token)
    assert served["root"] == forked_root.hex()

    async def alerted() -> bool:
        health = await agent_health(m, "police")
        return bool(health["ledger"]["status"] == "alert")

    await eventually(alerted, timeout=10, what="police to raise a ledger alert")
    health = await agent_health(m, "police")
    assert health["status"] == "degraded", health
    assert health["ledger"]["last_alert"] == "inconsistent-checkpoints", health
    assert health["ledger"]["alerts"] >= 1


async def test_missing_event_raises_an_alert(mechanism: Mechanism) -> None:
    """An event the agent emitted but the ledger no longer has (its row deleted before the
    agent proved it) raises a missing-event alert once missing_after_seconds have passed."""
    m = mechanism
    ledger = m.sandbox.ledger
    assert ledger is not None
    await exchange(m)
    await m.stop("police")
    set_ledger_option(m, "police", "missing_after_seconds", 1)
    event_id = outbox(m, "police")[0][0]
    with sqlite3.connect(ledger_db(m)) as db:
        assert db.execute("DELETE FROM entries WHERE event_id = ?", (event_id,)).rowcount == 1
    # The agent had not proved it yet (the race the deletion would otherwise have to win).
    with sqlite3.connect(m.database("police")) as db:
        db.execute("UPDATE audit_outbox SET state = 'sent' WHERE event_id = ?", (event_id,))
    status, _, _ = await get(m.http, f"{ledger.url}/v1/events/{event_id}", m.sandbox.auditor_token)
    assert status == 404
    with capture_logs() as logs:
        await m.start("police", wait=False)

        async def alerted() -> bool:
            return bool(m.agents["police"].health()["ledger"]["status"] == "alert")

        await eventually(alerted, timeout=10, what="police to report the missing event")
    health = await agent_health(m, "police")
    assert health["status"] == "degraded", health
    assert health["ledger"]["last_alert"] == "missing-event", health
    alerts = [e for e in logs if e["event"] == "ledger_alert"]
    assert [(e["reason"], e["event_id"]) for e in alerts] == [("missing-event", event_id)]


# --- 7. HTTP --------------------------------------------------------------------------------------

V1_PATHS = [
    "/v1/checkpoint",
    "/v1/checkpoints",
    "/v1/entries?start=0",
    "/v1/entries/0/proof",
    "/v1/events",
    "/v1/events/" + "0" * 32,
    "/v1/proof/consistency?first=0&second=0",
    "/v1/referrals/" + "0" * 32 + "/timeline",
    "/v1/directories",
    "/v1/stats",
]


async def test_http_needs_a_token_documents_itself_and_refuses_bad_parameters(
    mechanism: Mechanism, ledger_with_data: LedgerAccess
) -> None:
    """Every /v1 route answers 401 problem+json without (or with a wrong) token; /openapi.json
        is OpenAPI 3.1 listing the /v1 paths; bad query parameters answer 400 problem+json, a size
    past the tree 404, sizes in the wrong order 422."""
    http, access = mechanism.http, ledger_with_data
    for path in V1_PATHS:
        for token in (None, "wrong-token"):
            status, ctype, body = await get(http, access.url + path, token)
            assert (status, ctype) == (401, "application/problem+json"), (path, token, body)
        status, _, body = await get(http, access.url + path, access.token)
        assert status in (200, 404), (path, body)
    status, ctype, _ = await get(http, access.url + "/openapi.json", None)
    assert (status, ctype) == (200, "application/json")
    doc = await get_json(http, access.url + "/openapi.json", access.token)
    assert doc["openapi"].startswith("3.1")
    scrape = doc["paths"]["/metrics"]["get"]
    assert scrape["security"] == [{"bearer": []}] and {"401", "403"} <= set(scrape["responses"])
    assert doc["paths"]["/healthz"]["get"]["security"] == []
    assert {p.split("?")[0] for p in V1_PATHS} <= {
        p.replace("{index}", "0").replace("{event_id}", "0" * 32).replace("{referral_id}", "0" * 32)
        for p in doc["paths"]
    }
    # 400: outside what the OpenAPI document allows; 404: a tree or entry the ledger does not
    # have (yet); 422: two valid sizes in the wrong order.
    refused = {
        "/v1/entries?start=-1": 400,
        "/v1/entries": 400,
        "/v1/entries?start=abc": 400,
        "/v1/entries?start=0&end=" + str(2**62 + 1): 400,
        "/v1/events?limit=0": 400,
        "/v1/events?q=" + "x" * 65: 400,
        "/v1/entries/0/proof?size=0": 400,
        "/v1/entries?start=99999": 404,
        "/v1/proof/consistency?first=0&second=99999": 404,
        "/v1/entries/0/proof?size=99999": 404,
        "/v1/proof/consistency?first=5&second=2": 422,
        "/v1/entries?start=3&end=2": 422,
    }
    for path, expected in refused.items():
        status, ctype, body = await get(http, access.url + path, access.token)
        assert (status, ctype) == (expected, "application/problem+json"), (path, status, body)
    # A range past the tree, or over 1000 entries, is cut short: the client goes on from there.
    whole = await get_json(http, access.url + "/v1/entries?start=0&end=100000", access.token)
    assert 0 < len(whole["items"]) <= 1000
    assert [e["index"] for e in whole["items"]] == list(range(len(whole["items"])))


async def post_proofs(
    http: aiohttp.ClientSession, access: LedgerAccess, body: bytes, ctype: str = "application/json"
) -> tuple[int, str, Any]:
    headers = {"Authorization": f"Bearer {access.token}", "Content-Type": ctype}
    async with http.post(access.url + "/v1/proofs", data=body, headers=headers) as r:
        return r.status, r.content_type, await r.read()


async def test_batched_proofs_verify_and_name_what_is_missing(
    mechanism: Mechanism, ledger_with_data: LedgerAccess
) -> None:
    """POST /v1/proofs answers, for a tree size, every known event's entry with an inclusion
    proof that verifies against the signed checkpoint of that size, and lists unknown ids as
    missing; an event past that size comes without a proof."""
    m, access = mechanism, ledger_with_data
    cp_body = await get_json(m.http, access.url + "/v1/checkpoint", access.token)
    identity = PublicIdentity.from_json(ledger_identity_path(m).read_bytes())
    assert m.sandbox.ledger is not None
    cp = verify_checkpoint(
        cp_body["note"],
        key=identity.signing_key,
        origin=m.sandbox.ledger.config.origin,
    )
    events = {event_id: signed for event_id, signed, _ in outbox(m, "police")}
    unknown = secrets.token_hex(16)
    small = cp.size - 1
    query = {"size": small, "event_ids": [*events, unknown]}
    status, _, raw = await post_proofs(m.http, access, json.dumps(query).encode())
    assert status == 200, raw
    answer = json.loads(raw)
    assert answer["missing"] == [unknown]
    assert {item["event_id"] for item in answer["items"]} == set(events)
    small_root = m.sandbox.ledger.tree.root(small)
    proved = 0
    for item in answer["items"]:
        leaf = base64.b64decode(item["leaf"])
        assert LedgerEntry.decode(leaf).signed_event == events[item["event_id"]]
        if item["index"] >= small:
            assert "proof" not in item
            continue
        verify_inclusion(
            leaf_hash=leaf_hash(leaf),
            index=item["index"],
            size=small,
            proof=[bytes.fromhex(h) for h in item["proof"]],
            root=small_root,
        )
        proved += 1
    assert proved >= len(events) - 1
    async with m.http.post(access.url + "/v1/proofs", json=query) as r:
        assert (r.status, r.content_type) == (401, "application/problem+json")


@pytest_asyncio.fixture(scope="class", loop_scope="class")
async def refusing_ledger(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[aiohttp.ClientSession, LedgerAccess]]:
    """A ledger holding a real exchange (`fill_ledger`), shared by the cases of one class:
    each only sends it a query it refuses, which changes nothing in it."""
    async with running_mechanism(tmp_path_factory.mktemp("refusing")) as m:
        yield m.http, await fill_ledger(m)


@pytest.mark.asyncio(loop_scope="class")
class TestBatchedProofsRefuseBadQueries:
    """Each malformed, oversized or mistyped POST /v1/proofs is a problem+json refusal."""

    @pytest.mark.parametrize(
        ("body", "ctype", "status"),
        [
            (b"{", "application/json", 400),
            (b"[]", "application/json", 400),
            (b'{"size": 1}', "application/json", 400),
            (b'{"size": 0, "event_ids": []}', "application/json", 400),
            (b'{"size": true, "event_ids": []}', "application/json", 400),
            (b'{"size": 999999, "event_ids": []}', "application/json", 404),  # past the tree
            (b'{"size": 1, "event_ids": ["not-hex"]}', "application/json", 400),
            (b'{"size": 1, "event_ids": [], "more": 1}', "application/json", 400),
            (
                json.dumps({"size": 1, "event_ids": ["0" * 32] * 257}).encode(),
                "application/json",
                400,
            ),
            (b"x" * 20000, "application/json", 413),
            (b'{"size": ' + b"9" * 5000 + b', "event_ids": []}', "application/json", 400),
            (b'{"size": 1, "event_ids": []}', "text/plain", 415),
        ],
    )
    async def test_batched_proofs_refuse_bad_queries(
        self,
        refusing_ledger: tuple[aiohttp.ClientSession, LedgerAccess],
        body: bytes,
        ctype: str,
        status: int,
    ) -> None:
        http, access = refusing_ledger
        got, got_type, raw = await post_proofs(http, access, body, ctype)
        assert (got, got_type) == (status, "application/problem+json"), raw
        assert json.loads(raw)["status"] == status


async def test_agent_backup_is_a_consistent_private_copy_and_never_overwrites(
    mechanism: Mechanism, ledger_with_data: LedgerAccess, tmp_path: Path
) -> None:
    """`nrm agent backup` copies the running agent's database (WAL included) into a new 0600
    file; a second backup to the same name is refused and leaves the first one as it was."""
    m = mechanism
    config = m.setups["shelter"].config_path
    target = tmp_path / "shelter-backup.db"

    def run(to: Path) -> Any:
        return CliRunner().invoke(
            main, ["agent", "backup", "--config", str(config), "--to", str(to)]
        )

    made = await asyncio.to_thread(run, target)
    assert made.exit_code == 0, made.output
    assert target.stat().st_mode & 0o777 == 0o600
    with sqlite3.connect(m.database("shelter")) as live, sqlite3.connect(target) as copy:
        for query in (
            "SELECT count(*) FROM inbox",
            "SELECT count(*) FROM referrals",
            "SELECT count(*) FROM audit_outbox",
        ):
            assert copy.execute(query).fetchone() == live.execute(query).fetchone(), query
        assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    before = target.read_bytes()
    again = await asyncio.to_thread(run, target)
    assert again.exit_code != 0 and "exists" in again.output, again.output
    assert target.read_bytes() == before
    nowhere = await asyncio.to_thread(run, tmp_path / "missing" / "x.db")
    assert nowhere.exit_code != 0 and "could not back up" in nowhere.output, nowhere.output


def test_the_access_listings_search_an_index_rather_than_every_entry(tmp_path: Path) -> None:
    # GET /v1/accesses for an auditor (every owner) and for one owner: neither may read the
    # whole entries table to find the few `record.accessed` entries among millions.
    store = LedgerStore(tmp_path / "ledger.db")
    try:
        statements: list[str] = []
        store._db.set_trace_callback(statements.append)
        store.accesses(owner=None, since=0, after=0, limit=10)
        store.accesses(owner="police", since=0, after=0, limit=10)
        store._db.set_trace_callback(None)
        selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
        assert len(selects) == 2
        for sql in selects:
            plan = " ".join(row[3] for row in store._db.execute(f"EXPLAIN QUERY PLAN {sql}"))
            assert "SCAN entries" not in plan, plan
            assert "USING INDEX entries_accesses" in plan, plan
    finally:
        store.close()
