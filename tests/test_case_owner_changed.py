"""A case transfer naming an identification case (PROTOCOL §8.10 "`case-owner-changed`",
"Order at the authority"): police's referral opened a case at the competent authority (the
shelter here) and police holds its first decision; police hands the case to the
co-ordinator. Once the co-ordinator accepts, police tells the authority, which records the
new owner; police can complete the transfer only after the authority's receipt. An agency
that does not own the case telling the authority otherwise is refused `not-shared`,
touching nothing; a case the authority does not hold is `unexpected`."""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agents import transfers as T
from keys import codec
from nrm import admin
from runtime import clock

from . import samples
from .support import Mechanism, agency_keys, eventually, publish_policy, sealed
from .test_identification import (
    AUTHORITY,
    POLICY,
    also_authority,
    authority_mechanism,
    call,
    decided_first,
    held,
    signed_by,
)
from .test_sender_scope import publish, rejected
from .test_transfer_requests import audit_kinds


@pytest.fixture
async def with_authority(tmp_path: Path) -> AsyncIterator[Mechanism]:
    async with authority_mechanism(tmp_path, POLICY) as m:
        yield m


def case_owners(m: Mechanism) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(m.database(AUTHORITY))
    try:
        return conn.execute(
            "SELECT case_id, owner, transfer_id, changed_by FROM case_owners"
        ).fetchall()
    finally:
        conn.close()


def proposal(case_id: str, transferee: str = "coordinator") -> dict[str, Any]:
    """Police's transfer of the authority's case `case_id` to `transferee`."""
    return {
        "transferee": transferee,
        "referral": samples.referral(schema_version="2"),
        "reason": "other",
        "case_id": case_id,
    }


async def state_at(m: Mechanism, agency: str, transfer_id: str, state: str) -> None:
    async def check() -> bool:
        status, body = await call(m, agency, "GET", f"/v1/transfers/{transfer_id}")
        return status == 200 and body["state"] == state

    await eventually(check, timeout=30, what=f"{agency} to hold the transfer {state}")


async def test_the_authority_learns_the_new_owner_before_the_transfer_completes(
    with_authority: Mechanism,
) -> None:
    """Police transfers its case to the co-ordinator; the co-ordinator accepts; police tells
    the authority (`case-owner-changed`), which holds the co-ordinator as the case's owner;
    on the authority's receipt police completes the transfer (409 until then, never after),
    its opening pair with the authority cancelled first, and the co-ordinator holds it
    `completed`. Before, the co-ordinator telling the
    authority it owns the case is `not-shared`, naming a case the authority does not hold
    `unexpected`, and telling police `not-for-this-role`; after, police telling it again is
    `not-shared`: nothing changes."""
    m = with_authority
    rid, case_id = await decided_first(m)
    coordinator = agency_keys(m, "coordinator")
    now = clock.now()
    early = T.CaseOwnerChanged(case_id, "coordinator", secrets.token_hex(16), now)
    unknown = T.CaseOwnerChanged(secrets.token_hex(16), "coordinator", secrets.token_hex(16), now)
    forged = [
        (sealed(m, coordinator, AUTHORITY, T.CASE_OWNER_CHANGED, early.encode()), "not-shared"),
        (sealed(m, coordinator, AUTHORITY, T.CASE_OWNER_CHANGED, unknown.encode()), "unexpected"),
        (
            sealed(m, coordinator, "police", T.CASE_OWNER_CHANGED, early.encode()),
            "not-for-this-role",
        ),
    ]
    for data, _ in forged[:2]:
        await publish(m, "coordinator", AUTHORITY, data)
    await publish(m, "coordinator", "police", forged[2][0])
    for data, reason in forged[:2]:
        await rejected(m, AUTHORITY, data, reason)
    await rejected(m, "police", forged[2][0], forged[2][1])
    assert case_owners(m) == []

    status, sent = await call(m, "police", "POST", "/v1/transfers", json=proposal(case_id))
    assert status == 202, sent
    transfer_id = sent["transfer_id"]
    await state_at(m, "coordinator", transfer_id, "delivered")
    again = await call(m, "police", "POST", "/v1/transfers", json=proposal(case_id))
    assert (again[0], again[1].get("state")) == (409, "delivered")  # one under way
    path = f"/v1/transfers/{transfer_id}"
    status, accepted = await call(m, "coordinator", "POST", path + "/accept")
    assert status == 202, accepted
    await state_at(m, "police", transfer_id, "accepted")

    async def owned() -> bool:
        return case_owners(m) == [(case_id, "coordinator", transfer_id, "police")]

    await eventually(owned, timeout=30, what="the authority to hold the new owner")
    assert audit_kinds(m, "police", "case-owner-changed.") == [("case-owner-changed.sent", None)]

    async def completed() -> bool:
        status, body = await call(m, "police", "POST", path + "/complete")
        assert status in (202, 409), body
        return status == 202

    await eventually(completed, timeout=30, what="police to complete on the authority's receipt")
    await state_at(m, "coordinator", transfer_id, "completed")
    status, opening = await call(m, "police", "GET", f"/v1/referrals/{rid}")
    assert status == 200 and [p["state"] for p in opening["recipients"]] == ["cancelled"]
    again = T.CaseOwnerChanged(case_id, "police", transfer_id, now)
    data = sealed(m, agency_keys(m, "police"), AUTHORITY, T.CASE_OWNER_CHANGED, again.encode())
    await publish(m, "police", AUTHORITY, data)
    await rejected(m, AUTHORITY, data, "not-shared")  # police owns the case no more
    assert case_owners(m) == [(case_id, "coordinator", transfer_id, "police")]
    status, problem = await call(m, "police", "POST", "/v1/transfers", json=proposal(case_id))
    assert (status, problem.get("member")) == (422, "case_id"), problem


async def test_only_the_case_owner_proposes_a_transfer_of_it(with_authority: Mechanism) -> None:
    """The co-ordinator holds the case's decisions under police's pair, not as the case's
    owner: its transfer of the case is 422, nothing stored (the authority would refuse
    its `case-owner-changed`, and the transfer could never complete)."""
    m = with_authority
    _, case_id = await decided_first(m)
    without_consent = {**POLICY.without_consent, "coordinator": ("public_task",)}
    await publish_policy(m, replace(POLICY, without_consent=without_consent))
    status, problem = await call(
        m, "coordinator", "POST", "/v1/transfers", json=proposal(case_id, "police")
    )
    assert (status, problem.get("member")) == (422, "case_id"), problem
    assert (await call(m, "coordinator", "GET", "/v1/transfers"))[1]["items"] == []


def _demote(m: Mechanism) -> None:
    """The authority holds the role `ngo` only from the next directory on."""
    identity = admin.PublicIdentity.from_json(m.setups[AUTHORITY].identity_path.read_bytes())
    admin.add_agency(m.sandbox.admin, identity, roles=["ngo"])


def _revoke_encryption_key(m: Mechanism) -> None:
    """The authority's encryption key is revoked from the next directory on."""
    d = m.agents["police"].trust.directory
    assert d is not None
    [key] = d.agency(AUTHORITY).encryption_keys
    admin.revoke_key(m.sandbox.admin, AUTHORITY, key.kid, reason="compromised", at=clock.now())


@pytest.mark.parametrize(
    ("change", "failure"),
    [(_demote, "not-for-this-role"), (_revoke_encryption_key, "unknown-key")],
    ids=["authority-refuses", "no-key-to-seal-to"],
)
async def test_an_authority_not_told_lets_the_transfer_complete(
    with_authority: Mechanism, change: Callable[[Mechanism], None], failure: str
) -> None:
    """Police's `case-owner-changed` cannot reach the authority: its agent refuses it (it
    no longer holds the role, `not-for-this-role`), or police has no key to seal it to
    (`unknown-key`: the co-ordinator's `accepted` step is taken all the same). Police's
    transfer shows it as `authority_failure` and completes all the same (the co-ordinator
    holds the case from `accepted` on), the authority keeping police as the case's owner;
    with no key to seal the opening pair's cancellation to, `/complete` is 503 naming
    `unknown-key`, nothing sent, until the authority has a key again."""
    m = with_authority
    _, case_id = await decided_first(m)
    status, sent = await call(m, "police", "POST", "/v1/transfers", json=proposal(case_id))
    assert status == 202, sent
    transfer_id = sent["transfer_id"]
    await state_at(m, "coordinator", transfer_id, "delivered")
    before = m.agents["police"].trust.directory
    assert before is not None
    change(m)
    m.sandbox.sign_draft()
    await m.sandbox.publish()

    async def changed() -> bool:
        return all(
            (d := m.agents[a].trust.directory) is not None and d.version > before.version
            for a in ("police", AUTHORITY)
        )

    await eventually(changed, what="police and the authority to read the change")
    path = f"/v1/transfers/{transfer_id}"
    assert (await call(m, "coordinator", "POST", path + "/accept"))[0] == 202
    await state_at(m, "police", transfer_id, "accepted")

    async def failed() -> bool:
        status, body = await call(m, "police", "GET", path)
        return status == 200 and body["authority_failure"] == failure

    await eventually(failed, timeout=30, what="police to hold the authority untold")
    status, done = await call(m, "police", "POST", path + "/complete")
    if failure == "unknown-key":
        assert (status, done.get("reason")) == (503, "unknown-key"), done
        assert (await call(m, "police", "GET", path))[1]["state"] == "accepted"
        return
    assert (status, done.get("state")) == (202, "completed"), done
    await state_at(m, "coordinator", transfer_id, "completed")
    assert case_owners(m) == []


async def test_a_case_id_of_two_authorities_names_no_transfer(with_authority: Mechanism) -> None:
    """A case is named by (authority, case_id): the co-ordinator, made a competent
    authority, reuses the authority's case id in a decision under police's pair with it.
    Police then holds that id of two authorities' cases, and proposing a transfer of it is
    409 naming both, nothing stored or sent: telling the wrong authority would move a case
    of another person's."""
    m = with_authority
    _, case_id = await decided_first(m)
    await also_authority(m, "coordinator", "coordinator", seen_by="police")
    other = await m.api("police").refer(["coordinator"], samples.referral())
    body = codec.pack([1, signed_by(m, "coordinator", case_id), "police", other, None, None])
    data = sealed(m, agency_keys(m, "coordinator"), "police", "identification-decision", body)
    await publish(m, "coordinator", "police", data)
    await held(m, "police", other, 1)
    status, problem = await call(m, "police", "POST", "/v1/transfers", json=proposal(case_id))
    assert (status, problem.get("authorities")) == (409, sorted([AUTHORITY, "coordinator"]))
    assert (await call(m, "police", "GET", "/v1/transfers"))[1]["items"] == []


async def test_the_authority_hears_when_the_owner_took_the_acceptance(
    with_authority: Mechanism,
) -> None:
    """`case-owner-changed`'s `at` is when police recorded the acceptance, not the time
    the co-ordinator's step claims (here one long past)."""
    m = with_authority
    _, case_id = await decided_first(m)
    before = clock.now()
    status, sent = await call(m, "police", "POST", "/v1/transfers", json=proposal(case_id))
    assert status == 202, sent
    transfer_id = sent["transfer_id"]
    await state_at(m, "coordinator", transfer_id, "delivered")
    claimed = T.TransferStep(
        T.TRANSFER, transfer_id, "coordinator", "delivered", "accepted", "transferee", None, 1_000
    )
    data = sealed(m, agency_keys(m, "coordinator"), "police", T.TRANSFER_STEP, claimed.encode())
    await publish(m, "coordinator", "police", data)
    await state_at(m, "police", transfer_id, "accepted")

    async def owned() -> bool:
        return bool(case_owners(m))

    await eventually(owned, timeout=30, what="the authority to hold the new owner")
    conn = sqlite3.connect(m.database(AUTHORITY))
    try:
        [(at,)] = conn.execute("SELECT at FROM case_owners").fetchall()
    finally:
        conn.close()
    assert at >= before
