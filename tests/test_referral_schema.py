"""The referral schemas (v1 and v2), their examples, data categories, minimisation and
anonymisation.

Each example file is plain data any implementation can use. Its top-level `"$comment"` says
what the example shows (for an invalid one: the single thing that is wrong) and an invalid
one's `"$expect"` is the JSON pointer every reported problem must sit under. Both header keys
are removed before validation; they are not part of the referral.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from agents import referral as R
from keys import ROLES

EXAMPLES = R.SCHEMA_DIR / "examples"
VALID = sorted((EXAMPLES / "valid").glob("*.json"))
INVALID = sorted((EXAMPLES / "invalid").glob("*.json"))
CANARY = "ZZ-CANARY-7f3a9c"
LAW_ENFORCEMENT = ("police", "border-guard", "prosecutor", "labour-inspection")


def load(path: Path) -> tuple[dict[str, Any], str, str | None]:
    doc = json.loads(path.read_text(encoding="utf-8"))
    comment = doc.pop("$comment")
    expect = doc.pop("$expect", None)
    return doc, comment, expect


def example(name: str) -> dict[str, Any]:
    return load(EXAMPLES / "valid" / f"{name}.json")[0]


@pytest.mark.parametrize("version", R.SCHEMA_VERSIONS)
def test_schema_is_a_valid_2020_12_schema(version: str) -> None:
    """Each published schema is itself valid JSON Schema 2020-12 with the agreed $id."""
    schema = R.load_schema(version)
    Draft202012Validator.check_schema(schema)
    assert schema["$id"] == f"https://nrm-exchange.org/schemas/referral-v{version}.json"
    assert schema["properties"]["schema_version"] == {"const": version}


def test_enough_examples() -> None:
    """At least five valid and eight invalid examples are published."""
    assert len(VALID) >= 5
    assert len(INVALID) >= 8


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_example(path: Path) -> None:
    """Every valid example validates and round-trips its routing fields and body."""
    doc, comment, expect = load(path)
    assert comment
    assert expect is None
    ref = R.validate_referral(doc)
    assert ref.body == doc["body"]
    assert ref.routing() == {k: v for k, v in doc.items() if k != "body"}


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_example(path: Path) -> None:
    """Every invalid example is refused, for the labelled reason, without echoing any value."""
    doc, comment, expect = load(path)
    assert comment
    assert expect is not None
    with pytest.raises(R.ReferralInvalid) as info:
        R.validate_referral(doc)
    problems = info.value.problems
    assert problems
    for problem in problems:
        assert problem.startswith(expect), problem
        assert CANARY not in problem
    assert CANARY not in str(info.value)


def test_canary_is_used() -> None:
    """The no-echo check has teeth: several invalid examples carry the canary value."""
    carrying = [p for p in INVALID if CANARY in p.read_text(encoding="utf-8")]
    assert len(carrying) >= 4


def every_string(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *every_string(v)]]
    if isinstance(value, list):
        return [s for v in value for s in every_string(v)]
    return []


def test_problems_never_contain_submitted_values() -> None:
    """A body with every value wrong yields problems that quote none of the submitted strings."""
    doc = example("adult-with-consent")
    doc["urgency"] = "Mira Example, 1 Fake Street"
    doc["body"]["citizenship"] = ["Moldova, Mira's home town"]
    doc["body"]["birth_date"] = "1st of June, Mira"
    doc["body"]["gender"] = "Mira-secret-gender"
    doc["body"]["Mira Example"] = "secret"
    with pytest.raises(R.ReferralInvalid) as info:
        R.validate_referral(doc)
    text = str(info.value)
    assert len(info.value.problems) >= 5
    for secret in ("Mira", "Fake Street", "Moldova", "secret"):
        assert secret not in text


def test_validate_does_not_mutate_or_alias() -> None:
    """Validation leaves the caller's dict untouched and the result shares no mutable state."""
    doc = example("adult-with-consent")
    before = copy.deepcopy(doc)
    ref = R.validate_referral(doc)
    assert doc == before
    ref.body["names"]["given_names"] = "Changed"
    assert doc == before


def test_referral_is_frozen_and_typed() -> None:
    """A validated referral is immutable and exposes parsed times and the child rule."""
    ref = R.validate_referral(example("transnational"))
    with pytest.raises(AttributeError):
        ref.urgency = "emergency"  # type: ignore[misc]
    assert ref.expires_at is not None
    assert ref.expires_at > ref.created_at
    assert ref.in_reply_to == "aa11bb22cc33dd44ee55ff6600778899"
    assert not ref.is_child


def test_not_an_object() -> None:
    """A referral that is not a JSON object is refused, not crashed on."""
    with pytest.raises(R.ReferralInvalid):
        R.validate_referral([])  # type: ignore[arg-type]


def test_every_body_field_has_a_known_category() -> None:
    """Every body property of either version carries an x-nrm-category among the documented
    categories, the same in both."""
    fields: set[str] = set()
    for version in R.SCHEMA_VERSIONS:
        props = R.load_schema(version)["$defs"]["body"]["properties"]
        fields |= set(props)
        assert set(R.CATEGORIES) == set(R.load_schema(version)["x-nrm-categories"])
        for name, spec in props.items():
            assert R.FIELD_CATEGORY[name] == spec["x-nrm-category"]
    assert set(R.FIELD_CATEGORY) == fields
    assert set(R.FIELD_CATEGORY.values()) <= set(R.CATEGORIES)
    assert R.FIELD_CATEGORY["narrative"] == "case"
    assert R.FIELD_CATEGORY["perpetrator_information"] == "criminal"
    assert R.FIELD_CATEGORY["health_needs"] == "health"
    assert R.FIELD_CATEGORY["safe_contact"] == "contact"


def test_every_directory_role_has_categories() -> None:
    """ROLE_CATEGORIES covers exactly the trust directory's roles."""
    assert set(R.ROLE_CATEGORIES) == set(ROLES)
    assert R.ROLE_CATEGORIES["coordinator"] == frozenset(R.CATEGORIES)
    assert R.ROLE_CATEGORIES["auditor"] == frozenset()


def test_categories_present() -> None:
    """categories_present maps each category to the fields of it in the body."""
    present = R.categories_present(example("service-request")["body"])
    assert present == {
        "demographic": {"age_category"},
        "identity": {"names"},
        "language": {"languages", "interpreter_needed"},
        "health": {"health_needs"},
        "needs": {"requested_services"},
    }
    with pytest.raises(R.ReferralInvalid):
        R.categories_present({"age_category": "adult", "unknown_field": 1})


def test_shelter_gets_no_narrative_or_perpetrator_information() -> None:
    """A shelter (ngo) gets needs, safe contact and health, not the narrative or perpetrators."""
    body = example("adult-with-consent")["body"]
    shelter = R.minimise(body, R.ROLE_CATEGORIES["ngo"])
    assert "narrative" not in shelter
    assert "perpetrator_information" not in shelter
    assert "attachments" in shelter  # identity papers the shelter needs; consent decides
    for field in ("requested_services", "safe_contact", "health_needs", "never_contact", "names"):
        assert shelter[field] == body[field]


@pytest.mark.parametrize("role", LAW_ENFORCEMENT)
def test_law_enforcement_gets_no_health_needs(role: str) -> None:
    """Law enforcement roles never receive health data or requested services."""
    body = example("adult-with-consent")["body"]
    out = R.minimise(body, R.ROLE_CATEGORIES[role])
    assert "health_needs" not in out
    assert "requested_services" not in out
    assert out["perpetrator_information"] == body["perpetrator_information"]
    assert out["narrative"] == body["narrative"]


def test_labour_inspection_gets_no_immigration_status() -> None:
    """Labour inspectors are firewalled from immigration status."""
    body = example("adult-with-consent")["body"]
    assert "immigration_status" not in R.minimise(body, R.ROLE_CATEGORIES["labour-inspection"])
    assert "immigration_status" in R.minimise(body, R.ROLE_CATEGORIES["police"])


def test_health_and_auditor() -> None:
    """Health gets identity, language, health and needs only; the auditor gets nothing."""
    body = example("adult-with-consent")["body"]
    health = R.minimise(body, R.ROLE_CATEGORIES["health"])
    assert {R.FIELD_CATEGORY[f] for f in health} <= {
        "demographic",
        "identity",
        "language",
        "health",
        "needs",
    }
    assert "health_needs" in health
    assert R.minimise(body, R.ROLE_CATEGORIES["auditor"]) == {}


def test_minimise_returns_a_new_dict_and_never_mutates() -> None:
    """minimise copies deeply and leaves its input unchanged."""
    body = example("adult-with-consent")["body"]
    before = copy.deepcopy(body)
    out = R.minimise(body, R.ROLE_CATEGORIES["coordinator"])
    assert out == body
    out["locations"][0]["country"] = "ZZ"
    out.pop("names")
    assert body == before


def test_minimise_misuse() -> None:
    """An unknown category or a bare string is a caller's mistake."""
    body = example("service-request")["body"]
    with pytest.raises(ValueError):
        R.minimise(body, {"needs", "everything"})
    with pytest.raises(TypeError):
        R.minimise(body, "needs")


def test_minimise_drops_unknown_fields() -> None:
    """A field without a category never passes minimisation, whatever is allowed."""
    body = {"age_category": "adult", "mystery": "x"}
    assert R.minimise(body, R.CATEGORIES) == {"age_category": "adult"}


def test_categories_for_roles() -> None:
    """An agency's categories are the union over its roles; an unknown role is refused."""
    both = R.categories_for_roles(["ngo", "health"])
    assert both == R.ROLE_CATEGORIES["ngo"] | R.ROLE_CATEGORIES["health"]
    with pytest.raises(ValueError):
        R.categories_for_roles(["police", "journalist"])


def test_strip_then_anonymise_keeps_no_identifying_field() -> None:
    """A stripped, anonymised full body has no identifying field and validates as anonymous."""
    full = example("adult-with-consent")
    before = copy.deepcopy(full)
    anon = R.anonymise(R.strip_identifying(full["body"]))
    assert full == before
    assert not set(anon) & R.IDENTIFYING
    assert set(anon) <= R.ANONYMOUS_FIELDS
    for secret in ("Mira", "Example", "Agency X", "1994-06-01"):
        assert secret not in json.dumps(anon)
    for loc in anon["locations"]:
        assert set(loc) <= R.ANONYMOUS_LOCATION_FIELDS
    notice = {
        k: v for k, v in full.items() if k not in {"consent_receipt_id", "referral_id", "body"}
    }
    notice.update(referral_type="anonymous_notification", legal_basis="public_task", body=anon)
    R.validate_referral(notice)


def test_identifying_fields() -> None:
    """Names, birth date, contact, narrative, perpetrators, guardian and attachments identify."""
    for field in (
        "names",
        "aliases",
        "birth_date",
        "safe_contact",
        "never_contact",
        "narrative",
        "perpetrator_information",
        "guardian",
        "best_interests_assessment_ref",
        "attachments",
        "immigration_status",
        "health_needs",
    ):
        assert field in R.IDENTIFYING
    assert not R.IDENTIFYING & R.ANONYMOUS_FIELDS


def test_anonymise_refuses_a_narrative() -> None:
    """anonymise names a leftover identifying field instead of silently dropping it."""
    body = example("anonymous-notification")["body"]
    body["narrative"] = CANARY
    before = copy.deepcopy(body)
    with pytest.raises(R.ReferralInvalid) as info:
        R.anonymise(body)
    assert info.value.problems == ["/body/narrative: not allowed in an anonymous notification"]
    assert CANARY not in str(info.value)
    assert body == before


def test_anonymise_refuses_fine_location_and_children() -> None:
    """A location finer than its country (a street, a region), or a child, cannot be
    notified anonymously."""
    body = example("anonymous-notification")["body"]
    body["locations"][0]["street"] = CANARY
    with pytest.raises(R.ReferralInvalid) as info:
        R.anonymise(body)
    assert info.value.problems == [
        "/body/locations/0/street: not allowed in an anonymous notification"
    ]
    child = example("anonymous-notification")["body"]
    child["age_category"] = "age_disputed"
    with pytest.raises(R.ReferralInvalid):
        R.anonymise(child)


def test_anonymise_returns_a_copy() -> None:
    """anonymise's result shares nothing with its input."""
    body = example("anonymous-notification")["body"]
    out = R.anonymise(body)
    assert out == body
    out["locations"].clear()
    assert body["locations"]


@pytest.mark.parametrize(
    ("age", "child"),
    [("adult", False), ("child", True), ("age_disputed", True), (None, True)],
)
def test_is_child(age: str | None, child: bool) -> None:
    """A disputed or missing age is treated as a child."""
    body = {} if age is None else {"age_category": age}
    assert R.is_child(body) is child
