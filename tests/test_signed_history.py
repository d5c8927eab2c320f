"""What an agency signed stays verifiable after its keys rotate (issue 10, deliverable 3).

Real nats-server, ledger, SQLite and HTTP: police records consents, rotates its keys the way
RUNBOOK says (key file, add-agency, sign, publish), is removed and re-admitted, and every
earlier consent can still be shown, cited, exported and withdrawn, with erasure confirmed.
A receipt altered in the database, or signed by a key revoked from before its signing time,
is a named 409, never a 500.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import uuid
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from agents.openapi import UNVERIFIABLE_REASONS
from agents.store import Store
from keys.audit import decode_signed_event
from keys.codec import canonical_json
from keys.directory import Directory
from keys.identity import PublicIdentity
from keys.keyfile import INTERACTIVE
from nrm import admin
from nrm.cli import main
from nrm.exits import EXIT_VERIFICATION_FAILED
from runtime.keydir import rotate_key_dir

from . import samples
from .support import Mechanism, eventually
from .test_agent import delivered, rows
from .test_referrals import consented, get, post, query, record_consent, refer


def directory_of(m: Mechanism, agency: str) -> Directory:
    directory = m.agents[agency].trust.directory
    assert directory is not None
    return directory


async def on_version(m: Mechanism, version: int) -> None:
    """Wait until every running agent trusts directory `version` or later."""

    async def check() -> bool:
        return all(
            a.trust.directory is not None and a.trust.directory.version >= version
            for a in m.agents.values()
        )

    await eventually(check, what=f"every agent on directory version {version}")


async def publish(m: Mechanism) -> int:
    """Sign the draft with the threshold and publish it; the version published."""
    m.sandbox.sign_draft()
    await m.sandbox.publish()
    return admin.verified_draft(m.sandbox.admin).version


def rotate_key_file(m: Mechanism, agency: str) -> PublicIdentity:
    setup = m.setups[agency]
    rotate_key_dir(setup.key_dir, passphrase=setup.passphrase(), cost=INTERACTIVE)
    return PublicIdentity.from_json(setup.identity_path.read_bytes())


async def rotate(m: Mechanism, agency: str) -> str:
    """Rotate `agency`'s keys as RUNBOOK says; return once its agent signs with the new key
    and every agent trusts the directory announcing it."""
    identity = rotate_key_file(m, agency)
    admin.add_agency(m.sandbox.admin, identity, roles=list(m.setups[agency].roles))
    version = await publish(m)

    async def using_it() -> bool:
        agent = m.agents[agency]
        return agent.keys.public.signing_kid == identity.signing_kid and all(
            a.trust.directory is not None and a.trust.directory.version >= version
            for a in m.agents.values()
        )

    await eventually(using_it, what=f"{agency} to sign with its new key")
    return identity.signing_kid


async def consent_state(m: Mechanism, receipt_id: str) -> tuple[int, Any, str]:
    return await m.api("police").call("GET", f"/v1/consents/{receipt_id}")


def consent_show(m: Mechanism, receipt_id: str, *more: str) -> tuple[int, str]:
    """`nrm consent show` for police: (exit code, stdout and stderr)."""
    config = str(m.setups["police"].config_path)
    result = CliRunner().invoke(main, ["consent", "show", receipt_id, "--config", config, *more])
    return result.exit_code, result.output


async def all_erasures_confirmed(m: Mechanism, receipt_ids: list[str]) -> None:
    async def check() -> bool:
        for rid in receipt_ids:
            s = await get(m, "police", f"/v1/consents/{rid}")
            if not s["recipients"] or s["pending"] or s["withdrawn_at"] is None:
                return False
            if not all(r["erasure_confirmed_at"] for r in s["recipients"]):
                return False
        return True

    await eventually(check, timeout=30, what="every erasure confirmation")


def alter_stored(m: Mechanism, receipt_id: str, change: Any) -> None:
    """Rewrite police's stored receipt row with `change(stored doc)` (a hostile insider)."""
    db = m.database("police")
    [(signed,)] = query(db, "SELECT signed FROM consents WHERE receipt_id = ?", receipt_id)
    doc = change(json.loads(signed))
    conn = sqlite3.connect(db)
    try:
        with conn:
            conn.execute(
                "UPDATE consents SET signed = ? WHERE receipt_id = ?",
                (canonical_json(doc), receipt_id),
            )
    finally:
        conn.close()


def widened(doc: dict[str, Any]) -> dict[str, Any]:
    """The stored receipt with one more data category than the person agreed to."""
    body = json.loads(base64.b64decode(doc["body"]))
    body["purposes"][0]["data_categories"].append("criminal")
    return {**doc, "body": base64.b64encode(canonical_json(body)).decode()}


async def test_consents_survive_two_rotations_and_a_readmission(mechanism: Mechanism) -> None:
    """Consents recorded under police's first and second keys, after the police is removed
    and re-admitted with a third key (the directory lists neither earlier key), can still
    be read, exported, cited and withdrawn, and every recipient confirms erasure."""
    m = mechanism
    first = m.agents["police"].keys.public.signing_kid
    c1 = await record_consent(m)
    _, r1 = await refer(m, ["shelter"], consented(c1))
    await delivered(m, "police", r1["id"])

    second = await rotate(m, "police")
    c2 = await record_consent(m)
    _, r2 = await refer(m, ["shelter"], consented(c2))
    await delivered(m, "police", r2["id"])

    # Removed while its agent is down, re-admitted with new keys, then started again.
    await m.stop("police")
    admin.remove_agency(m.sandbox.admin, "police")
    await publish(m)
    identity = rotate_key_file(m, "police")
    admin.add_agency(m.sandbox.admin, identity, roles=list(m.setups["police"].roles))
    version = await publish(m)
    await m.start("police")
    await on_version(m, version)
    third = identity.signing_kid
    listed = {k.kid for k in directory_of(m, "police").agency("police").signing_keys}
    assert listed == {third} and len({first, second, third}) == 3

    for rid, kid in ((c1, first), (c2, second)):
        status, body, _ = await consent_state(m, rid)
        assert (status, body["signing_kid"], body["id"]) == (200, kid, rid), body
        kantara = await get(m, "police", f"/v1/consents/{rid}?format=kantara")
        [public] = [
            w.public for w in m.agents["police"].store.key_history("police") if w.kid == kid
        ]
        assert base64.b64decode(kantara["publicKey"]) == public
        # The recipient by its directory name ("Shelter"), not its id (PROTOCOL.md §8.3).
        assert kantara["services"][0]["purposes"][0]["thirdPartyName"] == "Shelter"
        code, out = consent_show(m, rid)
        assert code == 0, out
        assert f"key {kid}: an earlier key of this agency" in out

    status, again = await refer(m, ["shelter"], consented(c1))
    assert status == 202, again
    await delivered(m, "police", again["id"])

    for rid in (c1, c2):
        status, answer, _ = await post(m, "police", f"/v1/consents/{rid}/withdraw", {})
        assert status == 202, answer
    await all_erasures_confirmed(m, [c1, c2])
    for referral_id in (r1["id"], r2["id"], again["id"]):
        got = await get(m, "shelter", f"/v1/referrals/{referral_id}")
        assert got["erased"] is True

    c3 = await record_consent(m)
    status, body, _ = await consent_state(m, c3)
    assert (status, body["signing_kid"]) == (200, third)
    code, out = consent_show(m, c3)
    assert code == 0 and f"key {third} (the current key)" in out, out


async def test_an_altered_receipt_is_a_named_conflict_and_changes_nothing(
    mechanism: Mechanism,
) -> None:
    """A receipt altered in the database answers 409 bad-signature on read, citation and
    withdrawal; the withdrawal sends nothing, marks nothing and is audited as
    consent.unverifiable; `nrm consent show` exits 3."""
    m = mechanism
    rid = await record_consent(m)
    _, sent = await refer(m, ["shelter"], consented(rid))
    await delivered(m, "police", sent["id"])
    alter_stored(m, rid, widened)
    outbox = rows(m.database("police"), "outbox")

    for method, path, doc in (
        ("GET", f"/v1/consents/{rid}", None),
        ("GET", f"/v1/consents/{rid}?format=kantara", None),
        ("POST", f"/v1/consents/{rid}/withdraw", {}),
        ("POST", "/v1/referrals", {"recipients": ["shelter"], "referral": consented(rid)}),
    ):
        status, body, ctype = await m.api("police").call(method, path, json=doc)
        assert (status, ctype) == (409, "application/problem+json"), (path, body)
        assert body["reason"] == "bad-signature" and body["reason"] in UNVERIFIABLE_REASONS
        assert "criminal" not in json.dumps(body)
    assert query(m.database("police"), "SELECT withdrawn_at FROM consents") == [(None,)]
    assert rows(m.database("police"), "outbox") == outbox
    events = [
        decode_signed_event(bytes(e))[0]
        for (e,) in query(m.database("police"), "SELECT event FROM audit_outbox")
    ]
    [refusal] = [e for e in events if e.kind == "consent.unverifiable"]
    assert refusal.reason == "bad-signature" and refusal.key_ids == (
        m.agents["police"].keys.public.signing_kid,
    )
    code, out = consent_show(m, rid)
    assert code == EXIT_VERIFICATION_FAILED and "DOES NOT VERIFY (bad-signature)" in out, out
    assert "Consent receipt" not in out  # nothing of the altered receipt is shown as true
    code, out = consent_show(m, rid, "--json")
    assert code == EXIT_VERIFICATION_FAILED, out
    assert json.loads(out[: out.rindex("}") + 1]) == {
        "receipt_id": rid,
        "verified": False,
        "reason": "bad-signature",
    }
    code, out = consent_show(m, str(uuid.uuid4()))
    assert code == 1 and "no consent receipt" in out, out


async def test_a_key_revoked_from_before_the_signing_time_is_refused(
    mechanism: Mechanism,
) -> None:
    """Revoking police's key `--at` a time before a receipt was recorded makes that receipt
    a 409 revoked-key (show exits 3), and no new consent is signed with the revoked key."""
    m = mechanism
    rid = await record_consent(m)
    status, body, _ = await consent_state(m, rid)
    assert status == 200, body
    kid = body["signing_kid"]
    revoked = CliRunner().invoke(
        main,
        ["keys", "revoke", "--agency", "police", "--kid", kid, "--reason", "laptop lost",
         "--at", str(body["recorded_at"] - 1), "--dir", str(m.sandbox.admin.path)],
    )  # fmt: skip
    assert revoked.exit_code == 0, revoked.output
    await on_version(m, await publish(m))

    for method, path in (("GET", f"/v1/consents/{rid}"), ("POST", f"/v1/consents/{rid}/withdraw")):
        status, problem, ctype = await m.api("police").call(method, path, json={})
        assert (status, ctype, problem["reason"]) == (
            409,
            "application/problem+json",
            "revoked-key",
        ), problem
    code, out = consent_show(m, rid)
    assert code == EXIT_VERIFICATION_FAILED and "DOES NOT VERIFY (revoked-key)" in out, out

    status, refused, ctype = await m.api("police").call(
        "POST", "/v1/consents", json=samples.consent(str(uuid.uuid4()))
    )
    # The agent's standing (PROTOCOL.md §7.10) refuses it before anything is signed.
    assert (status, ctype, refused.get("reason")) == (
        503,
        "application/problem+json",
        "key-revoked",
    ), refused
    assert rows(m.database("police"), "consents") == 1


async def test_a_receipt_stored_before_key_ids_were_kept_still_verifies(
    mechanism: Mechanism,
) -> None:
    """A receipt stored without its key id (as before this change) is matched to the key
    that signed it, also after a rotation; a database without the key history table gets
    it when opened."""
    m = mechanism
    rid = await record_consent(m)
    first = m.agents["police"].keys.public.signing_kid
    alter_stored(m, rid, lambda doc: {k: v for k, v in doc.items() if k != "kid"})
    await rotate(m, "police")
    status, body, _ = await consent_state(m, rid)
    assert (status, body["signing_kid"]) == (200, first), body
    code, out = consent_show(m, rid)
    assert code == 0 and f"key {first}: an earlier key" in out, out
    code, out = consent_show(m, rid, "--json")
    doc = json.loads(out)
    assert code == 0 and doc["verified"] is True and doc["receipt_id"] == rid, out
    assert (doc["agency"], doc["kid"], doc["current_key"]) == ("police", first, False)
    assert doc["receipt"]["receipt_id"] == rid and doc["withdrawn_at"] is None


def test_a_database_without_the_key_history_opens_and_gains_it(tmp_path: Path) -> None:
    """Opening a database made before the key history existed adds the table, empty."""
    path = tmp_path / "agent.db"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE signing_key_history")
    conn.close()
    store = Store(path)
    try:
        assert store.key_history("police") == []
    finally:
        store.close()
