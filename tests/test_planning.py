"""Referral planning (agents/planning.py): pure, so tested without agents, bus or store."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from agents import consent as C
from agents import errors as E
from agents import planning as P
from agents import referral as R
from keys.policy import Policy
from runtime import clock
from tests import samples

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "schemas" / "examples" / "valid"
RID = "6f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f"
GUARDIAN = {"guardian_type": "local_authority"}
ROLES = {"shelter": ("ngo",), "police2": ("police",), "coordinator": ("coordinator",)}


def plan(
    document: dict[str, Any],
    recipients: list[str],
    *,
    consent: P.Consent | None = None,
    now: int | None = None,
    attachment_problems: tuple[str, ...] = (),
) -> P.Plan:
    return P.plan(
        P.validate(document),
        recipients=recipients,
        roles=ROLES,
        consent=consent,
        now=clock.now() if now is None else now,
        attachment_problems=attachment_problems,
    )


def anonymous(**body: Any) -> dict[str, Any]:
    notice = json.loads((EXAMPLES / "anonymous-notification.json").read_text())
    del notice["$comment"]
    notice["created"] = samples.iso(clock.time())
    notice["body"].update(body)
    return dict(notice)


def live_consent(**overrides: Any) -> P.Consent:
    return P.Consent(C.parse_receipt(samples.consent(RID, **overrides)), withdrawn=False)


def under_consent() -> dict[str, Any]:
    return samples.referral(legal_basis="consent", consent_receipt_id=RID)


def test_each_recipient_gets_only_what_its_roles_may_receive() -> None:
    document = samples.referral()
    before = copy.deepcopy(document)
    got = plan(document, ["shelter", "police2"])
    shelter, police = got.deliveries
    assert shelter.recipient == "shelter" and police.recipient == "police2"
    # A shelter never gets the narrative nor perpetrator data; the police never health data.
    assert {"narrative", "perpetrator_information"} <= set(shelter.withheld)
    assert "narrative" not in shelter.body and "health_needs" in shelter.body
    assert "health_needs" in police.withheld and "narrative" in police.body
    for d in got.deliveries:
        assert set(d.body) | set(d.withheld) == set(samples.BODY)
        assert not set(d.body) & set(d.withheld)
        categories = set(R.categories_present(d.body))
        assert categories <= R.categories_for_roles(ROLES[d.recipient])
    assert got.receipt is None
    assert document == before  # the caller's document is not touched


def test_an_invalid_referral_names_its_problems() -> None:
    with pytest.raises(E.ReferralInvalid) as e:
        plan(samples.referral(urgency="whenever"), ["shelter"])
    assert e.value.detail == "the referral is not valid"
    assert any(p.startswith("/urgency") for p in e.value.extra["problems"])
    assert "whenever" not in json.dumps(e.value.extra)  # the value is never echoed
    with pytest.raises(E.BadRequest):
        P.validate({**samples.referral(), "referral_id": "chosen-by-the-client"})


def test_consent_must_cover_every_recipient() -> None:
    """The sample receipt covers the shelter for assistance; not the police at all."""
    got = plan(under_consent(), ["shelter"], consent=live_consent())
    assert got.receipt is not None and got.receipt.receipt_id == RID
    assert set(got.bodies) == {"shelter"}
    with pytest.raises(E.ConsentDoesNotCover) as e:
        plan(under_consent(), ["shelter", "police2"], consent=live_consent())
    assert e.value.detail == "the referral cannot be sent as it is"
    assert e.value.extra["problems"] == [
        "recipient police2 (role police) is not named by consent receipt " + RID
    ]


def test_consent_narrower_than_the_role_refuses_the_categories_it_lacks() -> None:
    receipt = samples.consent(RID)
    receipt["purposes"][0]["data_categories"] = ["demographic", "identity", "language"]
    receipt["sensitive_categories"] = []
    consent = P.Consent(C.parse_receipt(receipt), withdrawn=False)
    with pytest.raises(E.ConsentDoesNotCover) as e:
        plan(under_consent(), ["shelter"], consent=consent)
    (problem,) = e.value.extra["problems"]
    assert "does not cover categories" in problem and "health" in problem


@pytest.mark.parametrize(
    ("document", "consent", "detail"),
    [
        (
            under_consent(),
            None,
            "no consent receipt with this id was recorded at this agency; nothing was sent",
        ),
        (
            under_consent(),
            P.Consent(C.parse_receipt(samples.consent(RID)), withdrawn=True),
            "the consent receipt is withdrawn or expired; nothing was sent",
        ),
    ],
)
def test_unusable_consent_is_refused_before_planning(
    document: dict[str, Any], consent: P.Consent | None, detail: str
) -> None:
    with pytest.raises(E.ConsentUnusable) as e:
        plan(document, ["shelter"], consent=consent)
    assert e.value.detail == detail


def test_consent_without_a_receipt_id_is_refused() -> None:
    """The schema requires the id already; planning refuses without it all the same."""
    referral = dataclasses.replace(P.validate(under_consent()), consent_receipt_id=None)
    with pytest.raises(E.ConsentUnusable) as e:
        P.plan(referral, recipients=["shelter"], roles=ROLES, consent=None, now=clock.now())
    assert e.value.detail == "legal basis consent needs consent_receipt_id"


def test_expiry_is_judged_at_the_given_now() -> None:
    consent = live_consent()
    expires = consent.receipt.expires_at
    assert expires is not None
    plan(under_consent(), ["shelter"], consent=consent, now=expires - 1)
    with pytest.raises(E.ConsentUnusable):
        plan(under_consent(), ["shelter"], consent=consent, now=expires)


def test_an_anonymous_notification_goes_to_the_coordinator_coded_only() -> None:
    notice = anonymous()
    got = plan(notice, ["coordinator"])
    (d,) = got.deliveries
    assert d.body == notice["body"] and set(d.body) <= R.ANONYMOUS_FIELDS and not d.withheld
    with pytest.raises(E.ReferralUnsendable) as e:
        plan(notice, ["coordinator", "shelter"])
    assert not isinstance(e.value, E.ConsentDoesNotCover)
    assert e.value.extra["problems"] == ["shelter: anonymous notifications go to the co-ordinator"]


def test_an_anonymous_notification_with_free_text_is_invalid() -> None:
    notice = anonymous(
        locations=[{"stage": "exploitation", "country": "GB", "region": "Near the farm"}],
        indicators=["debt"],
    )
    with pytest.raises(E.ReferralInvalid) as e:
        plan(notice, ["coordinator"])
    problems = e.value.extra["problems"]
    assert "/body/locations/0/region: not allowed in this kind of referral" in problems
    assert "/body/indicators: not allowed in this kind of referral" in problems
    assert "Near the farm" not in json.dumps(problems)


def test_child_rules() -> None:
    """A child needs a guardian or a best-interests assessment; is never notified
    anonymously; and the guardian goes to the shelter but not to the police."""
    child = {**samples.BODY, "age_category": "child"}
    with pytest.raises(E.ReferralInvalid) as e:
        plan(samples.referral(child), ["shelter"])
    assert e.value.extra["problems"] == [
        "/body: requires one of guardian, best_interests_assessment_ref"
    ]
    with pytest.raises(E.ReferralInvalid) as e:
        plan(anonymous(age_category="child", guardian=GUARDIAN), ["coordinator"])
    assert '/body/age_category: must be "adult"' in e.value.extra["problems"]
    got = plan(samples.referral({**child, "guardian": GUARDIAN}), ["shelter", "police2"])
    assert "guardian" in got.bodies["shelter"]
    assert "guardian" not in got.bodies["police2"]
    assert "guardian" in got.deliveries[1].withheld


def test_under_a_policy_a_child_s_identity_goes_only_to_its_child_identity_roles() -> None:
    """CETS Art 11: the names and contact of a child reach a health service (not in the
    policy's child_identity_roles) only without a policy; under one they are withheld from
    it, kept for the police, and the basis must be a child basis (422 otherwise)."""
    child = {**samples.BODY, "age_category": "age_disputed", "guardian": GUARDIAN}
    roles = {**ROLES, "clinic": ("health",)}
    policy = Policy(country="LT")

    def planned(basis: str, under: Policy | None) -> P.Plan:
        return P.plan(
            P.validate(samples.referral(child, legal_basis=basis)),
            recipients=["clinic", "police2"],
            roles=roles,
            consent=None,
            now=clock.now(),
            policy=under,
            sender_roles=("police",),
        )

    assert "names" in planned("child_protection", None).bodies["clinic"]
    got = planned("child_protection", policy)
    assert "names" not in got.bodies["clinic"] and "names" in got.deliveries[0].withheld
    assert "health_needs" in got.bodies["clinic"]
    assert "names" in got.bodies["police2"] and "safe_contact" in got.bodies["police2"]
    with pytest.raises(E.BasisNotAllowed) as refused:
        planned("public_task", policy)
    assert "child_protection" in refused.value.detail and "Mira" not in refused.value.detail


def test_every_problem_is_reported_at_once_in_order() -> None:
    with pytest.raises(E.ReferralUnsendable) as e:
        plan(
            under_consent(),
            ["police2", "shelter"],
            consent=live_consent(),
            attachment_problems=("/body/attachments/0: no uploaded attachment with this id",),
        )
    assert not isinstance(e.value, E.ConsentDoesNotCover)  # not only a matter of consent
    assert e.value.extra["problems"] == [
        "/body/attachments/0: no uploaded attachment with this id",
        "recipient police2 (role police) is not named by consent receipt " + RID,
    ]
