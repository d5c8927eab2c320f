"""Schema v2 (PROTOCOL §8.1 "Schema versions", §8.2 step 4): the HTCDS 2.0 code lists, v1
documents read as v2 by a table held to both schemas, and the child route
(`child-route-incomplete`) on the sending and the receiving side."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agents import referral as R
from agents import referral_versions as V
from agents.inbound import check
from keys import DEFAULT_LIMITS
from keys.codec import canonical_json
from keys.errors import ChildRouteIncompleteError
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

VECTORS = Path(__file__).parent / "vectors"
V1_EXAMPLES = [
    p
    for p in sorted((R.SCHEMA_DIR / "examples" / "valid").glob("*.json"))
    if json.loads(p.read_text(encoding="utf-8"))["schema_version"] == "1"
]
#: Police may refer an adult under public_task (the samples' basis) without consent.
POLICY = Policy(
    country="LT",
    without_consent={"police": ("public_task",)},
    child_legal_bases=("children_act_s17", "children_act_s47"),
)
GUARDIAN = {"guardian_type": "local_authority"}


def v2_child(body: dict[str, Any] | None = None, **routing: Any) -> dict[str, Any]:
    """A schema v2 referral about a child under child protection, with a guardian and the
    provision it relies on, `routing` overriding fields (None removes one)."""
    content = {**samples.BODY, "age_category": "child", "guardian": GUARDIAN}
    doc = samples.referral(
        content if body is None else body,
        schema_version="2",
        legal_basis="child_protection",
        legal_basis_ref="children_act_s17",
    )
    doc.update(routing)
    return {k: v for k, v in doc.items() if v is not None}


def _enum(version: str, field: str) -> list[str]:
    spec = R.body_properties(version)[field]
    values: list[str] = spec["items"]["enum"] if "items" in spec else spec["enum"]
    return values


def _without_descriptions(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_descriptions(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [_without_descriptions(v) for v in node]
    return node


# --- the v1 mapping -----------------------------------------------------------------------


def test_the_mapping_tables_are_held_to_both_schemas() -> None:
    """Every v1 code has its v2 code, and every v2 code it names exists; the fields v2 drops
    are exactly those the table drops; every other field is the same in both versions, so
    a v1 document read as v2 is a valid v2 document."""
    for field, table in (
        ("gender", V.GENDER_V1_TO_V2),
        ("exploitation_types", V.EXPLOITATION_V1_TO_V2),
    ):
        assert sorted(table) == sorted(_enum("1", field)), field
        assert set(table.values()) <= set(_enum("2", field)), field
    v1, v2 = R.body_properties("1"), R.body_properties("2")
    assert set(v1) - set(v2) == V.DROPPED_IN_V2
    assert set(v2) <= set(v1)  # v2 adds no body field
    for field in set(v2) - {"gender", "exploitation_types"}:
        assert _without_descriptions(v1[field]) == _without_descriptions(v2[field]), field
    r1, r2 = R.load_schema("1")["properties"], R.load_schema("2")["properties"]
    assert set(r2) - set(r1) == {"legal_basis_ref"}
    for name in set(r1) - {"schema_version"}:
        assert _without_descriptions(r1[name]) == _without_descriptions(r2[name]), name
    assert (set(r1) | set(r2)) - {"body"} == R.ROUTING_FIELDS
    # HTCDS 2.0 codes v1 never had, so no v1 document can claim them
    assert {"child_labour", "servitude"} <= set(_enum("2", "exploitation_types")) - set(
        _enum("1", "exploitation_types")
    )
    assert "illicit_activities" not in _enum("2", "exploitation_types")  # fmt: skip


@pytest.mark.parametrize("path", V1_EXAMPLES, ids=lambda p: p.stem)  # type: ignore[misc]
def test_every_v1_example_reads_as_a_valid_v2_document(path: Path) -> None:
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc.pop("$comment")
    before = copy.deepcopy(doc)
    v2 = V.as_v2(doc)
    assert doc == before  # the caller's document is untouched
    R.validate_referral(v2)
    assert v2["schema_version"] == "2"
    assert {k: v for k, v in v2.items() if k not in ("schema_version", "body")} == {
        k: v for k, v in doc.items() if k not in ("schema_version", "body")
    }
    changed = {"gender", "exploitation_types", *V.DROPPED_IN_V2}
    assert {k: v for k, v in v2["body"].items() if k not in changed} == {
        k: v for k, v in doc["body"].items() if k not in changed
    }
    assert not V.DROPPED_IN_V2 & set(v2["body"])
    if "gender" in doc["body"]:
        assert v2["body"]["gender"] == V.GENDER_V1_TO_V2[doc["body"]["gender"]]


def test_a_v2_document_reads_as_itself_and_other_versions_are_refused() -> None:
    doc = v2_child()
    assert V.as_v2(doc) == doc and V.as_v2(doc) is not doc
    with pytest.raises(ValueError, match="schema version"):
        V.as_v2({**doc, "schema_version": "3"})


def _decoded(lines: list[str]) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(base64.b64decode("".join(lines)))
    return doc


@pytest.mark.parametrize(  # type: ignore[misc]
    "path", sorted(VECTORS.glob("referral-v1-to-v2-*.txt")), ids=lambda p: p.stem
)
def test_mapping_vectors(path: Path) -> None:
    """Each vector's v1 document is valid v1, its v2 document valid v2, and one reads as the
    other."""
    text = path.read_text(encoding="utf-8").split("\n\n")
    assert text[0].startswith("comment: ")
    v1 = _decoded(text[1].splitlines()[1:])
    v2 = _decoded(text[2].splitlines()[1:])
    R.validate_referral(v1)
    R.validate_referral(v2)
    assert (v1["schema_version"], v2["schema_version"]) == ("1", "2")
    assert V.as_v2(v1) == v2


def test_there_are_mapping_vectors() -> None:
    names = {p.stem for p in VECTORS.glob("referral-v1-to-v2-*.txt")}
    assert names >= {"referral-v1-to-v2-codes", "referral-v1-to-v2-unchanged"}


# --- the child route ----------------------------------------------------------------------


#: A child's body with no guardian nor best-interests assessment.
UNGUARDED = {**samples.BODY, "age_category": "child"}
#: A disputed age, assessed.
ASSESSED = {
    **samples.BODY,
    "age_category": "age_disputed",
    "best_interests_assessment_ref": "BIA-2026-01",
}
NGO = [("ngo",)]
CONSENT = {"legal_basis": "consent", "consent_receipt_id": "ab" * 16}
V1_CHILD = samples.referral({**UNGUARDED, "guardian": GUARDIAN}, legal_basis="child_protection")


@pytest.mark.parametrize(  # type: ignore[misc]
    ("doc", "policy", "recipients", "problem"),
    [
        (v2_child(), POLICY, NGO, None),
        (v2_child(), None, NGO, "lists none"),  # no list, no code: never free text
        (v2_child(), Policy(country="LT"), NGO, "lists none"),
        (v2_child(legal_basis_ref="children_act_s47"), POLICY, NGO, None),
        (v2_child(legal_basis_ref=None), POLICY, NGO, "legal_basis_ref"),
        (v2_child(legal_basis_ref=None), None, NGO, "legal_basis_ref"),
        (v2_child(legal_basis_ref=None), Policy(country="LT"), NGO, "legal_basis_ref"),
        (v2_child(legal_basis_ref="children_act_s99"), POLICY, NGO, "child_legal_bases"),
        (v2_child(**CONSENT), POLICY, NGO, "never on consent"),
        (v2_child(legal_basis="public_task"), None, NGO, "never on public_task"),
        (v2_child(legal_basis="vital_interests"), POLICY, NGO, None),
        # a guardian, a best-interests assessment, or a child-protecting recipient
        (v2_child(UNGUARDED), POLICY, NGO, "guardian"),
        (v2_child(UNGUARDED), POLICY, [("ngo",), ("social-services",)], None),
        (v2_child(UNGUARDED), POLICY, [("child-protection",)], None),
        (v2_child(ASSESSED), POLICY, NGO, None),
        (v2_child({**UNGUARDED, "age_category": "age_disputed"}), POLICY, [("coordinator",)],
         "guardian"),
        # a recipient judges no recipients (it sees its own copy)
        (v2_child(UNGUARDED), POLICY, None, None),
        # an adult is not the child route's; schema v1 only until the policy lists bases
        (samples.referral(schema_version="2"), POLICY, NGO, None),
        (V1_CHILD, None, NGO, None),
        (V1_CHILD, Policy(country="LT"), NGO, None),
        (V1_CHILD, POLICY, NGO, 'schema_version "2"'),
    ],
    ids=["ok", "no-policy", "no-list", "other-listed", "no-ref", "no-ref-no-policy",
         "no-ref-no-list", "not-listed",
         "consent", "public-task", "vital", "no-guardian", "social-services",
         "child-protection", "age-disputed-bia", "coordinator-is-no-guardian", "received",
         "adult", "v1-no-policy", "v1-no-list", "v1-under-a-list"],
)  # fmt: skip
def test_the_child_route(
    doc: dict[str, Any],
    policy: Policy | None,
    recipients: list[tuple[str, ...]] | None,
    problem: str | None,
) -> None:
    referral = R.validate_referral(doc)
    found = R.child_route_problem(referral, policy=policy, recipient_roles=recipients)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found
        assert "Mira" not in found


def _message(doc: dict[str, Any], roles: tuple[str, ...]) -> bytes:
    referral = R.validate_referral(doc)
    body = R.minimise(referral.body, R.categories_for(roles, child=True, policy=POLICY))
    return canonical_json(
        {"referral": {**referral.routing(), "referral_id": "ab" * 16, "body": body}}
    )


def test_the_receiver_holds_to_the_child_route() -> None:
    """A recipient refuses a v2 child's referral without a listed provision or under consent
    alone, whatever its own roles; a copy minimised to no age (the rapporteur's, empty) is
    not one it can judge."""
    common = {"limits": DEFAULT_LIMITS, "policy": POLICY, "sender_roles": ("police",)}
    check("referral", _message(v2_child(), ("coordinator",)), roles=("coordinator",), **common)
    for bad in (v2_child(legal_basis_ref=None), v2_child(legal_basis_ref="children_act_s99")):
        for roles in (("coordinator",), ("ngo",), ("health",)):
            with pytest.raises(ChildRouteIncompleteError):
                check("referral", _message(bad, roles), roles=roles, **common)
    check(
        "referral",
        _message(v2_child(legal_basis_ref=None), ("rapporteur",)),
        roles=("rapporteur",),
        **common,
    )


# --- end to end ---------------------------------------------------------------------------


@pytest.fixture
async def under_policy(tmp_path: Path) -> AsyncIterator[Mechanism]:
    async with running_mechanism(tmp_path) as m:
        await publish_policy(m, POLICY)
        yield m


async def _inbox_item(m: Mechanism, agency: str, rid: str) -> dict[str, Any]:
    async def arrived() -> bool:
        return any(i["id"] == rid for i in await m.api(agency).inbox())

    await eventually(arrived, what=f"referral {rid} at {agency}")
    [item] = [i for i in await m.api(agency).inbox() if i["id"] == rid]
    return item


async def test_a_child_s_v2_referral_end_to_end(under_policy: Mechanism) -> None:
    """Police's v2 child's referral is refused 422 (nothing sent) without the provision,
    with one the policy does not list, and with no guardian for a shelter; with all of them
    it reaches the shelter and the co-ordinator as v2. The same referral without the
    provision, sealed by police's own keys past its agent, is refused by the shelter
    `child-route-incomplete`, on the record."""
    m = under_policy
    police = m.api("police")
    for doc, named in (
        (v2_child(legal_basis_ref=None), "legal_basis_ref"),
        (v2_child(legal_basis_ref="children_act_s99"), "child_legal_bases"),
        (v2_child({**samples.BODY, "age_category": "child"}), "guardian"),
    ):
        status, problem, _ = await police.call(
            "POST", "/v1/referrals", json={"recipients": ["shelter"], "referral": doc}
        )
        assert status == 422, problem
        assert named in problem["detail"] and "Mira" not in str(problem)
    status, listing, _ = await police.call("GET", "/v1/referrals")
    assert (status, listing["items"]) == (200, [])  # nothing was sent, nothing kept

    sent = await police.refer(["shelter", "coordinator"], v2_child())
    for agency in ("shelter", "coordinator"):
        received = (await _inbox_item(m, agency, sent))["referral"]
        assert received["schema_version"] == "2"
        assert received["legal_basis_ref"] == "children_act_s17"
        assert "nrm_stage" not in received["body"]

    bad = v2_child(legal_basis_ref=None)
    data = sealed(m, agency_keys(m, "police"), "shelter", "referral", _message(bad, ("ngo",)))
    await publish(m, "police", "shelter", data)
    await rejected(m, "shelter", data, "child-route-incomplete")


async def test_a_v1_referral_is_read_as_v2_on_request(under_policy: Mechanism) -> None:
    """A v1 referral travels as v1 (an older agent reads it); the recipient's case system
    reads it as v2 with `schema=2`: HTCDS 2.0 codes, no nrm_stage. Any other `schema` is
    400, naming the parameter."""
    m = under_policy
    body = {
        **samples.ID_BODY,
        "gender": "female",
        "exploitation_types": ["illicit_activities", "illegal_adoption"],
    }
    sent = await m.api("police").refer(["coordinator"], samples.referral(body))
    item = await _inbox_item(m, "coordinator", sent)
    assert item["referral"]["schema_version"] == "1"
    path = f"/v1/referrals/{sent}"
    status, as_sent, _ = await m.api("coordinator").call("GET", path)
    assert status == 200, as_sent
    assert as_sent["referral"]["body"]["nrm_stage"] == "first_responder_referral"
    status, read, _ = await m.api("coordinator").call("GET", path + "?schema=2")
    assert status == 200, read
    doc = read["referral"]
    assert doc["schema_version"] == "2"
    assert doc["body"]["gender"] == "feminine"
    assert doc["body"]["exploitation_types"] == ["forced_labour", "forced_adoption"]
    assert "nrm_stage" not in doc["body"]
    R.validate_referral(doc)
    status, page, _ = await m.api("coordinator").call("GET", "/v1/inbox?schema=2")
    assert status == 200, page
    assert [i["referral"] for i in page["items"] if i["id"] == sent] == [doc]
    for wrong in ("1", "3", ""):
        for where in (path, "/v1/inbox"):
            status, problem, _ = await m.api("coordinator").call("GET", f"{where}?schema={wrong}")
            assert status == 400, problem
            assert "schema" in problem["detail"]
