"""A legal basis other than consent, for an adult, only where the national policy opens it
to the sender's roles (PROTOCOL §7.11, §8.2 step 2, §6.4 `unlawful-basis`): refused by the
sender with 422, and by the receiver when a sender's software does not refuse it."""

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
from nrm import admin

from . import samples
from .support import Mechanism, agency_keys, eventually, running_mechanism, sealed
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
        ({}, CHILD, ("police",), POLICY, False),  # the child route has rules of its own
    ],
    ids=["no-policy", "police", "coordinator", "other-basis", "child"],
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
        assert "without_consent" in problem and "Mira" not in problem


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
        admin.set_policy(m.sandbox.admin, POLICY)
        m.sandbox.sign_draft()
        await m.sandbox.publish()

        async def everyone_has_it() -> bool:
            return all(
                (d := a.trust.directory) is not None and d.policy == POLICY
                for a in m.agents.values()
            )

        await eventually(everyone_has_it, what="every agent to take the directory with a policy")
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
