"""A legal basis other than consent, for an adult, only where the national policy opens it
to the sender's roles, and for a child only a child basis (PROTOCOL §7.11, §8.2 step 2, §6.4
`unlawful-basis`): refused by the sender with 422, and by the receiver when a sender's
software does not refuse it. Under a policy a child's identity reaches only the policy's
child_identity_roles (CETS Art 11)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agents import referral as R
from agents.inbound import check
from keys import DEFAULT_LIMITS
from keys.codec import canonical_json
from keys.errors import UnlawfulBasisError
from keys.policy import Policy

from . import samples
from .support import (
    Mechanism,
    agency_keys,
    eventually,
    publish_policy,
    running_mechanism,
    sealed,
)
from .test_sender_scope import publish, rejected

CHILD = {**samples.BODY, "age_category": "child", "guardian": {"guardian_type": "local_authority"}}
#: The co-ordinator may refer an adult under public_task without consent; police may not.
POLICY = Policy(country="LT", without_consent={"coordinator": ("public_task",)})


@pytest.mark.parametrize(
    ("routing", "body", "roles", "policy", "refused"),
    [
        ({}, None, ("police",), None, False),  # no policy: today's rule
        ({}, None, ("police",), POLICY, True),
        ({}, None, ("coordinator",), POLICY, False),
        ({"legal_basis": "legal_obligation"}, None, ("coordinator",), POLICY, True),
        # The child route has rules of its own: no consent needed, but a child basis.
        ({"legal_basis": "child_protection"}, CHILD, ("police",), POLICY, False),
        ({"legal_basis": "vital_interests"}, CHILD, ("ngo",), POLICY, False),
        ({}, CHILD, ("coordinator",), POLICY, True),  # public_task: not a child basis
        ({}, CHILD, ("police",), None, False),  # no policy: today's rule
    ],
    ids=["no-policy", "police", "coordinator", "other-basis", "child", "child-vital",
         "child-public-task", "child-no-policy"],
)  # fmt: skip
def test_the_rule(
    routing: dict[str, str],
    body: dict[str, object] | None,
    roles: tuple[str, ...],
    policy: Policy | None,
    refused: bool,
) -> None:
    referral = R.validate_referral(samples.referral(body, **routing))
    problem = R.basis_problem(referral, policy=policy, sender_roles=roles)
    assert (problem is not None) == refused
    if problem is not None:
        assert referral.legal_basis in problem and "Mira" not in problem
        assert ("child" if referral.is_child else "without_consent") in problem


def test_the_receiver_refuses_what_the_policy_does_not_allow() -> None:
    referral = R.validate_referral(samples.referral())
    message = canonical_json(
        {"referral": {**referral.routing(), "referral_id": "ab" * 16, "body": referral.body}}
    )
    common = {"roles": ("coordinator",), "limits": DEFAULT_LIMITS}
    check("referral", message, **common, policy=None, sender_roles=("police",))
    check("referral", message, **common, policy=POLICY, sender_roles=("coordinator",))
    with pytest.raises(UnlawfulBasisError, match="without_consent"):
        check("referral", message, **common, policy=POLICY, sender_roles=("police",))


@pytest.fixture
async def under_policy(tmp_path: Path) -> AsyncIterator[Mechanism]:
    async with running_mechanism(tmp_path) as m:
        await publish_policy(m, POLICY)
        yield m


async def test_sender_and_receiver_hold_to_the_policy(under_policy: Mechanism) -> None:
    """Police's public_task referral of an adult is refused 422 and nothing is sent; the
    co-ordinator's is delivered; the same referral sealed by police's own keys and published
    past its agent reaches the shelter and is refused `unlawful-basis`, on the record."""
    m = under_policy
    status, problem, _ = await m.api("police").call(
        "POST", "/v1/referrals", json={"recipients": ["shelter"], "referral": samples.referral()}
    )
    assert status == 422, problem
    assert "without_consent" in problem["detail"] and "Mira" not in str(problem)
    status, listing, _ = await m.api("police").call("GET", "/v1/referrals")
    assert (status, listing["items"]) == (200, [])  # nothing was sent, nothing kept

    sent = await m.api("coordinator").refer(["shelter"], samples.referral())

    async def delivered() -> bool:
        return await m.api("coordinator").status(sent) == "delivered"

    await eventually(delivered, what="the co-ordinator's referral to be delivered")

    referral = R.validate_referral(samples.referral())
    body = R.minimise(dict(referral.body), R.categories_for_roles(("ngo",)))
    message = canonical_json(
        {"referral": {**referral.routing(), "referral_id": "cd" * 16, "body": body}}
    )
    data = sealed(m, agency_keys(m, "police"), "shelter", "referral", message)
    await publish(m, "police", "shelter", data)
    await rejected(m, "shelter", data, "unlawful-basis")


async def test_a_child_s_identity_reaches_only_the_child_identity_roles(
    under_policy: Mechanism,
) -> None:
    """CETS Art 11 on both sides: police's referral of a child under child_protection reaches
    the shelter (an ngo, outside the policy's child_identity_roles) without the child's
    names or contact, and the co-ordinator with them; the same body with the names, sealed
    by police's own keys past its agent, is refused by the shelter `category-not-allowed`."""
    m = under_policy
    child = {**CHILD, "safe_contact": {"method": "via_referring_agency"}}
    document = samples.referral(child, legal_basis="child_protection")
    sent = await m.api("police").refer(["shelter", "coordinator"], document)

    async def both_have_it() -> bool:
        for agency in ("shelter", "coordinator"):
            if not any(i["id"] == sent for i in await m.api(agency).inbox()):
                return False
        return True

    await eventually(both_have_it, what="the child's referral at the shelter and co-ordinator")
    [at_shelter] = [i for i in await m.api("shelter").inbox() if i["id"] == sent]
    [at_coordinator] = [i for i in await m.api("coordinator").inbox() if i["id"] == sent]
    assert {"names", "safe_contact"}.isdisjoint(at_shelter["referral"]["body"])
    assert "guardian" in at_shelter["referral"]["body"]
    assert {"names", "safe_contact"} <= set(at_coordinator["referral"]["body"])

    referral = R.validate_referral(document)
    body = R.minimise(dict(referral.body), R.categories_for_roles(("ngo",)))
    assert "names" in body  # what an adult's referral to an ngo may carry
    message = canonical_json(
        {"referral": {**referral.routing(), "referral_id": "ef" * 16, "body": body}}
    )
    data = sealed(m, agency_keys(m, "police"), "shelter", "referral", message)
    await publish(m, "police", "shelter", data)
    await rejected(m, "shelter", data, "category-not-allowed")
