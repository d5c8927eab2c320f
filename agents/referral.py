"""The standard referral: schema validation, data categories, minimisation, anonymisation.

Pure code, no I/O beyond reading the published schemas once. The schemas
(`agents/schemas/referral-v1.schema.json` and `referral-v2.schema.json`; a document names its
own in `schema_version`) are the normative definition of the format; this module reads the
data category of every body field from their `x-nrm-category` annotations, so the two cannot
drift apart. A field both versions define has the same category in both.

Nothing here ever puts a submitted value into an error: referral bodies are personal data, and
problems travel into logs, audit events and problem+json answers. A problem names a JSON pointer
and what the schema requires there.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from keys.policy import Policy
from keys.roles import ROLES

from .schema_check import SchemaCheck

if TYPE_CHECKING:
    from jsonschema.exceptions import ValidationError

__all__ = [
    "ANONYMOUS_FIELDS",
    "ANONYMOUS_LOCATION_FIELDS",
    "BREAK_GLASS_BASIS",
    "CATEGORIES",
    "CHILD_BASES",
    "CHILD_PROTECTING_ROLES",
    "FIELD_CATEGORY",
    "IDENTIFYING",
    "MAX_PROBLEMS",
    "ROLE_CATEGORIES",
    "ROUTING_FIELDS",
    "SCHEMA_DIR",
    "SCHEMA_IDS",
    "SCHEMA_PATHS",
    "SCHEMA_VERSIONS",
    "Referral",
    "ReferralInvalid",
    "anonymise",
    "basis_problem",
    "break_glass_problem",
    "categories_for",
    "categories_for_roles",
    "categories_present",
    "child_route_problem",
    "is_child",
    "load_schema",
    "minimise",
    "strip_identifying",
    "validate_received",
    "validate_referral",
]

#: The published schemas (package data), one per `schema_version` an agent accepts, oldest
#: first. A sender keeps the version its case system submitted; PROTOCOL §8.1 says how a
#: version 1 document reads as version 2 (agents/referral_versions.py).
SCHEMA_DIR: Final = Path(__file__).resolve().parent / "schemas"
SCHEMA_VERSIONS: Final[tuple[str, ...]] = ("1", "2")
SCHEMA_PATHS: Final[Mapping[str, Path]] = {
    v: SCHEMA_DIR / f"referral-v{v}.schema.json" for v in SCHEMA_VERSIONS
}
SCHEMA_IDS: Final[Mapping[str, str]] = {
    v: f"https://nrm-exchange.org/schemas/referral-v{v}.json" for v in SCHEMA_VERSIONS
}
#: At most this many problems are reported for one document (the rest are summarised).
MAX_PROBLEMS: Final = 50

_SAFE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
# RFC 3339 section 5.6 date-time; the offset is mandatory. jsonschema checks "date-time" only
# when rfc3339-validator is installed, so the agent registers its own checker.
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


class ReferralInvalid(ValueError):
    """A referral (or a body handed to `anonymise`) does not meet the standard.

    `problems` holds one line per problem: a JSON pointer and what is wrong, never the value.
    """

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems: list[str] = list(problems)
        if not self.problems:
            raise TypeError("ReferralInvalid needs at least one problem")
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True)
class Referral:
    """A validated referral: the routing part (no personal data) and the body (personal data).

    `body` is the agent's own deep copy, never the caller's dict.
    """

    schema_version: str
    referral_type: str
    urgency: str
    legal_basis: str
    purpose: str
    created: str
    body: dict[str, Any]
    referral_id: str | None = None
    consent_receipt_id: str | None = None
    in_reply_to: str | None = None
    expires: str | None = None
    #: Schema v2: the national provision a child's referral relies on (PROTOCOL §8.2 step 4).
    legal_basis_ref: str | None = None
    #: The routing member `break_glass` (PROTOCOL §8.2 step 2): its reason, and whether the
    #: sending agent marked it confirmed by a second API client.
    break_glass_reason: str | None = None
    break_glass_confirmed: bool = False
    #: The routing member `service` (PROTOCOL §8.2 step 5): the provider and the id of the
    #: service in its catalogue that the referral asks for.
    service: tuple[str, str] | None = None

    @property
    def created_at(self) -> datetime:
        return _parse_datetime(self.created)

    @property
    def expires_at(self) -> datetime | None:
        return None if self.expires is None else _parse_datetime(self.expires)

    @property
    def is_child(self) -> bool:
        return is_child(self.body)

    def routing(self) -> dict[str, Any]:
        """The routing fields present, as a new dict (no personal data)."""
        out: dict[str, Any] = {
            "schema_version": self.schema_version,
            "referral_type": self.referral_type,
            "urgency": self.urgency,
            "legal_basis": self.legal_basis,
            "purpose": self.purpose,
            "created": self.created,
        }
        if self.legal_basis_ref is not None:
            out["legal_basis_ref"] = self.legal_basis_ref
        for name in ("referral_id", "consent_receipt_id", "in_reply_to", "expires"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.break_glass_reason is not None:
            out["break_glass"] = {"reason": self.break_glass_reason}
            if self.break_glass_confirmed:
                out["break_glass"]["confirmed"] = True
        if self.service is not None:
            out["service"] = {"agency": self.service[0], "service_id": self.service[1]}
        return out


# -- schema ---------------------------------------------------------------------------------


@functools.cache
def load_schema(version: str) -> dict[str, Any]:
    """The published referral schema of `version`, read once. Do not mutate the result."""
    path = SCHEMA_PATHS[version]
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if schema.get("$id") != SCHEMA_IDS[version]:
        raise RuntimeError(f"{path} is not the referral v{version} schema")
    return schema  # a valid Draft 2020-12 schema: tests/test_referral_schema.py


def _is_rfc3339(value: object) -> bool:
    if not isinstance(value, str):
        return True  # "format" applies to strings only; "type" reports the rest
    if _RFC3339.fullmatch(value) is None:
        return False
    try:
        datetime.fromisoformat(value.upper())
    except ValueError:
        return False
    return True


def _is_date(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if _DATE.fullmatch(value) is None:
        return False
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True


@functools.cache
def _check(version: str) -> SchemaCheck:
    return SchemaCheck(load_schema(version), formats={"date": _is_date, "date-time": _is_rfc3339})


def compile_validators() -> None:
    """Compile the schemas now (at start-up, so the compiler's scratch memory is reused by
    what comes after instead of raising the agent's resident size for good)."""
    for version in SCHEMA_VERSIONS:
        _check(version)


def body_properties(version: str) -> dict[str, Any]:
    """The body fields `version` defines, with their schemas."""
    props: dict[str, Any] = load_schema(version)["$defs"]["body"]["properties"]
    return props


def _categories() -> tuple[str, ...]:
    names = tuple(load_schema("1")["x-nrm-categories"])
    for version in SCHEMA_VERSIONS:
        if tuple(load_schema(version)["x-nrm-categories"]) != names:
            raise RuntimeError(f"referral v{version} has other data categories than v1")
    return names


def _field_category() -> dict[str, str]:
    known = set(_categories())
    out: dict[str, str] = {}
    for version in SCHEMA_VERSIONS:
        for field, spec in body_properties(version).items():
            category = spec.get("x-nrm-category")
            if category not in known:
                raise RuntimeError(f"body field {field} has no known x-nrm-category")
            if out.setdefault(field, category) != category:
                raise RuntimeError(f"body field {field} changes category between versions")
    return out


#: Every data category, in the schema's order (`x-nrm-categories` documents each).
CATEGORIES: Final[tuple[str, ...]] = _categories()
#: body field -> data category, from the schemas' `x-nrm-category` annotations (every field of
#: any version: a field one version lacks is refused by that version's schema).
FIELD_CATEGORY: Final[Mapping[str, str]] = _field_category()
#: The routing fields of any version (the referral object's members other than `body`).
ROUTING_FIELDS: Final = frozenset(
    name for v in SCHEMA_VERSIONS for name in load_schema(v)["properties"] if name != "body"
)

_LAW_ENFORCEMENT: Final = frozenset(
    {
        "demographic",
        "identity",
        "contact",
        "language",
        "exploitation",
        "criminal",
        "case",
        "safety",
        "immigration",
        # scanned identity and travel documents, photos of papers
        "attachments",
    }
)

#: What each directory role may ever receive; consent narrows this further, never widens it.
ROLE_CATEGORIES: Final[Mapping[str, frozenset[str]]] = {
    "police": _LAW_ENFORCEMENT,
    "border-guard": _LAW_ENFORCEMENT,
    "prosecutor": _LAW_ENFORCEMENT,
    # Labour inspectors enforce labour law; a firewall keeps immigration status away from them
    # so that reporting exploitation does not expose the person to immigration enforcement.
    "labour-inspection": _LAW_ENFORCEMENT - {"immigration"},
    # A shelter supports the person: not the narrative (case) nor perpetrator data (criminal).
    "ngo": frozenset(
        {
            "demographic",
            "identity",
            "contact",
            "language",
            "health",
            "safety",
            "needs",
            "guardianship",
            # identity papers the shelter needs to arrange services; consent decides
            "attachments",
        }
    ),
    "social-services": frozenset(
        {
            "demographic",
            "identity",
            "contact",
            "language",
            "immigration",
            "health",
            "safety",
            "needs",
            "guardianship",
            "exploitation",
            "case",
        }
    ),
    "health": frozenset({"demographic", "identity", "language", "health", "needs"}),
    "coordinator": frozenset(CATEGORIES),
    "auditor": frozenset(),
    # Directory spec_version 2 (docs/proposals/nrm-process.md §3.1). The competent authority
    # decides identification: it sees what the co-ordinator sees.
    "competent-authority": frozenset(CATEGORIES),
    # Immigration learns who is protected from removal, never the story or the exploiters.
    "immigration": frozenset({"demographic", "identity", "immigration"}),
    "child-protection": frozenset(
        {
            "demographic",
            "identity",
            "contact",
            "language",
            "guardianship",
            "safety",
            "needs",
            "health",
            "case",
        }
    ),
    # The rapporteur receives statistics contributions only, never a referral's body.
    "rapporteur": frozenset(),
}

#: The categories that identify a child or lead to one: under a national policy they go only
#: to agencies holding a role of its `child_identity_roles` (PROTOCOL §7.11, CETS Art 11).
CHILD_IDENTITY_CATEGORIES: Final = frozenset({"identity", "contact", "attachments"})
#: The legal bases a child's referral relies on (under a national policy, or in schema v2): it
#: needs no consent, and consent alone is not a basis for it (PROTOCOL §8.2 step 4).
CHILD_BASES: Final[tuple[str, ...]] = ("child_protection", "legal_obligation", "vital_interests")
#: Roles that protect children: one among the recipients of a schema v2 child's referral
#: stands in for a guardian or a best-interests assessment (PROTOCOL §8.2 step 4).
CHILD_PROTECTING_ROLES: Final = frozenset({"child-protection", "social-services"})

#: Body fields an anonymous notification may carry (`locations` reduced further, see below):
#: coded fields only, each value from a closed list (enumerations, country and language codes).
#: Not `indicators`: its codes are open (national lists vary), so they could spell a name.
#: (`nrm_stage` is a field of schema v1 only.)
ANONYMOUS_FIELDS: Final = frozenset(
    {
        "age_category",
        "gender",
        "citizenship",
        "languages",
        "exploitation_types",
        "methods_of_control",
        "locations",
        "requested_services",
        "nrm_stage",
    }
)
#: Keys a location may keep in an anonymous notification: where (the country), when, which
#: stage. Not `region`: it is free text, which can name a village, a farm or a person.
ANONYMOUS_LOCATION_FIELDS: Final = frozenset({"stage", "country", "period_start", "period_end"})
#: Body fields that identify, or help identify, a person: everything outside the allow-list.
IDENTIFYING: Final = frozenset(FIELD_CATEGORY) - ANONYMOUS_FIELDS


def _check_tables() -> None:
    known = frozenset(CATEGORIES)
    if frozenset(ROLE_CATEGORIES) != ROLES:
        raise RuntimeError("every directory role needs its row in ROLE_CATEGORIES")
    for role, allowed in ROLE_CATEGORIES.items():
        if not allowed <= known:
            raise RuntimeError(f"role {role} names unknown categories")
    if ANONYMOUS_FIELDS - frozenset(FIELD_CATEGORY):
        raise RuntimeError("anonymous allow-list names unknown fields")
    for version in SCHEMA_VERSIONS:
        anonymous_body = load_schema(version)["allOf"][1]["then"]["properties"]["body"]
        fields = ANONYMOUS_FIELDS & frozenset(body_properties(version))
        if frozenset(anonymous_body["propertyNames"]["enum"]) != fields:
            raise RuntimeError(f"schema v{version} and module disagree on the anonymous fields")
        location = anonymous_body["properties"]["locations"]["items"]["propertyNames"]["enum"]
        if frozenset(location) != ANONYMOUS_LOCATION_FIELDS:
            raise RuntimeError(f"schema v{version} and module disagree on anonymous locations")


_check_tables()


# -- validation -----------------------------------------------------------------------------


def _pointer(parts: Iterable[object]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _field_name(name: object) -> str:
    """A property name fit to echo: only names shaped like schema fields are repeated."""
    if isinstance(name, str) and _SAFE_NAME.fullmatch(name):
        return name
    return "(unprintable name)"


def _describe(error: ValidationError) -> list[str]:
    """Problems for one schema error, built from the schema only, never from the instance."""
    where = _pointer(error.absolute_path)
    kind = error.validator
    rule: Any = error.validator_value
    instance: Any = error.instance
    if "propertyNames" in error.schema_path:
        return [f"{where}/{_field_name(instance)}: not allowed in this kind of referral"]
    if kind == "not":  # the schema says why in its own words (x-nrm-problem)
        return [f"{where}: {error.schema.get('x-nrm-problem', 'not allowed here')}"]
    if kind == "required" and isinstance(instance, dict):
        return [f"{where}/{name}: required" for name in rule if name not in instance]
    if kind == "additionalProperties" and isinstance(instance, dict):
        allowed = error.schema.get("properties", {})
        extra = [name for name in instance if name not in allowed]
        return [f"{where}/{_field_name(name)}: unknown field" for name in extra]
    if kind == "anyOf" and all(set(alt) == {"required"} for alt in rule):
        names = ", ".join(n for alt in rule for n in alt["required"])
        return [f"{where}: requires one of {names}"]
    messages: dict[str, str] = {
        "type": f"must be of type {rule}",
        "enum": "must be one of: " + ", ".join(map(str, rule))
        if isinstance(rule, list) and len(rule) <= 20
        else "must be one of the allowed codes",
        "const": f"must be {json.dumps(rule)}",
        "pattern": f"does not match {rule}",
        "format": f"is not a valid {rule}",
        "minLength": f"must be at least {rule} characters",
        "maxLength": f"must be at most {rule} characters",
        "minItems": f"must have at least {rule} items",
        "maxItems": f"must have at most {rule} items",
        "uniqueItems": "must not repeat items",
        "minimum": f"must be at least {rule}",
        "maximum": f"must be at most {rule}",
        "minProperties": f"must have at least {rule} fields",
        "maxProperties": f"must have at most {rule} fields",
    }
    return [f"{where or '/'}: {messages.get(str(kind), f'fails the {kind} rule')}"]


def _problems(doc: object, *, excused: frozenset[str] = frozenset()) -> list[str]:
    """Problems of `doc`, leaving out a body's missing required fields whose categories are
    all in `excused` (see `validate_received`). A document is judged by the schema its
    `schema_version` names; one naming none that an agent knows, by none."""
    version = doc.get("schema_version") if isinstance(doc, dict) else None
    if not isinstance(version, str) or version not in SCHEMA_VERSIONS:
        return ["/schema_version: must be one of: " + ", ".join(map(json.dumps, SCHEMA_VERSIONS))]
    errors = sorted(_check(version).errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    problems: list[str] = []
    for error in errors:
        if excused and _minimised_away(error, excused):
            continue
        for line in _describe(error):
            if line not in problems:
                problems.append(line)
    if len(problems) > MAX_PROBLEMS:
        rest = len(problems) - MAX_PROBLEMS
        problems = [*problems[:MAX_PROBLEMS], f"... and {rest} more problems"]
    return problems


def _minimised_away(error: ValidationError, excused: frozenset[str]) -> bool:
    """Whether `error` only says that body fields of `excused` categories are missing."""
    if list(error.absolute_path) != ["body"] or not isinstance(error.instance, dict):
        return False
    rule: Any = error.validator_value
    if error.validator == "required":
        names = [n for n in rule if n not in error.instance]
    elif error.validator == "anyOf" and all(set(alt) == {"required"} for alt in rule):
        names = [n for alt in rule for n in alt["required"]]
    else:
        return False
    return bool(names) and all(FIELD_CATEGORY.get(n) in excused for n in names)


def _parse_datetime(text: str) -> datetime:
    return datetime.fromisoformat(text.upper())


def _semantic_problems(doc: dict[str, Any]) -> list[str]:
    """Rules JSON Schema cannot state: order of times and of periods."""
    problems: list[str] = []
    if "expires" in doc and _parse_datetime(doc["expires"]) <= _parse_datetime(doc["created"]):
        problems.append("/expires: must be after created")
    for i, loc in enumerate(doc["body"].get("locations", ())):
        if "period_start" in loc and "period_end" in loc:
            start = date.fromisoformat(loc["period_start"])
            if date.fromisoformat(loc["period_end"]) < start:
                problems.append(f"/body/locations/{i}/period_end: must not be before period_start")
    return problems


def validate_referral(doc: dict[str, Any]) -> Referral:
    """Validate a submitted referral against the schema of its `schema_version` and return
    it, or raise `ReferralInvalid`.

    The caller's dict is never mutated nor aliased by the result.
    """
    return _validated(doc, excused=frozenset())


def validate_received(doc: dict[str, Any], *, allowed_categories: Iterable[str]) -> Referral:
    """Validate a referral as its recipient receives it, or raise `ReferralInvalid`.

    The sender minimised the body for the recipient's roles (§8.2), so a field the schema
    requires of the whole referral (a service request's `requested_services`, a child's
    guardian or best-interests reference) may be missing when its category is one the
    recipient may never receive; everything present must meet the schema all the same.
    Whether the body holds only `allowed_categories` is the caller's check.
    """
    if isinstance(allowed_categories, str):
        raise TypeError("allowed_categories must be a collection of category names")
    return _validated(doc, excused=frozenset(CATEGORIES) - frozenset(allowed_categories))


def _validated(doc: dict[str, Any], *, excused: frozenset[str]) -> Referral:
    if not isinstance(doc, dict):
        raise ReferralInvalid(["/: must be of type object"])
    problems = _problems(doc, excused=excused)
    if not problems:
        problems = _semantic_problems(doc)
    if problems:
        raise ReferralInvalid(problems)
    return Referral(
        schema_version=doc["schema_version"],
        referral_type=doc["referral_type"],
        urgency=doc["urgency"],
        legal_basis=doc["legal_basis"],
        purpose=doc["purpose"],
        created=doc["created"],
        body=copy.deepcopy(doc["body"]),
        referral_id=doc.get("referral_id"),
        consent_receipt_id=doc.get("consent_receipt_id"),
        in_reply_to=doc.get("in_reply_to"),
        expires=doc.get("expires"),
        legal_basis_ref=doc.get("legal_basis_ref"),
        break_glass_reason=doc["break_glass"]["reason"] if "break_glass" in doc else None,
        break_glass_confirmed=doc.get("break_glass", {}).get("confirmed") is True,
        service=(doc["service"]["agency"], doc["service"]["service_id"])
        if "service" in doc
        else None,
    )


# -- categories, minimisation, anonymisation ------------------------------------------------


def categories_present(body: Mapping[str, Any]) -> dict[str, set[str]]:
    """category -> the body fields of that category present in `body`.

    A field the schema does not know raises `ReferralInvalid`: an uncategorised field could
    never be covered by a consent, so it must not pass silently.
    """
    unknown = [f"/body/{_field_name(f)}: unknown field" for f in body if f not in FIELD_CATEGORY]
    if unknown:
        raise ReferralInvalid(unknown)
    out: dict[str, set[str]] = {}
    for field in body:
        out.setdefault(FIELD_CATEGORY[field], set()).add(field)
    return out


def categories_for_roles(roles: Iterable[str]) -> frozenset[str]:
    """The categories an agency holding all of `roles` may receive (their union)."""
    allowed: frozenset[str] = frozenset()
    for role in roles:
        if role not in ROLE_CATEGORIES:
            raise ValueError(f"unknown role {role!r}")
        allowed |= ROLE_CATEGORIES[role]
    return allowed


def minimise(body: Mapping[str, Any], allowed_categories: Iterable[str]) -> dict[str, Any]:
    """A new body holding only the fields whose category is allowed (deep copies).

    Fields the schema does not know are dropped: fail closed. An unknown category name is a
    caller's mistake and raises `ValueError`.
    """
    if isinstance(allowed_categories, str):
        raise TypeError("allowed_categories must be a collection of category names")
    allowed = frozenset(allowed_categories)
    unknown = allowed - frozenset(CATEGORIES)
    if unknown:
        raise ValueError(f"unknown data categories: {', '.join(sorted(unknown))}")
    return {
        field: copy.deepcopy(value)
        for field, value in body.items()
        if FIELD_CATEGORY.get(field) in allowed
    }


#: The one legal basis of a break-glass referral (docs/proposals/nrm-process.md §10).
BREAK_GLASS_BASIS: Final = "vital_interests"


def basis_problem(
    referral: Referral,
    *,
    policy: Policy | None,
    sender_roles: Iterable[str],
    received: bool = False,
) -> str | None:
    """Why `referral` may not rely on its legal basis, or None (PROTOCOL §7.11): under a
    national policy, a referral about an adult that is not anonymous and not under consent
    must use a basis the policy's `without_consent` opens to one of its sender's roles, or
    be a break-glass referral (`break_glass_problem`). A child's referral (a child or a
    disputed age) needs no consent but relies on one of `CHILD_BASES`, never on consent
    alone (docs/proposals/nrm-process.md §6.2). Without a policy (directory spec_version 1)
    every basis of the schema stands, and none is break-glass. `received`: judged by a
    recipient, for whom a break-glass referral must be marked confirmed. The answer names
    codes only, never a value of the body."""
    if referral.break_glass_reason is not None:
        return break_glass_problem(referral, policy=policy, received=received)
    if policy is None:
        return None
    if referral.is_child:
        if referral.legal_basis in CHILD_BASES or referral.schema_version != "1":
            # a schema v2 child's referral: the child route judges it (child_route_problem)
            return None
        return (
            f"a child's referral (age_category {referral.body.get('age_category')}) relies on "
            f"{', '.join(CHILD_BASES)} under the national policy, never on "
            f"{referral.legal_basis} alone; a consent receipt may still be cited"
        )
    if referral.legal_basis == "consent" or referral.referral_type == "anonymous_notification":
        return None
    roles = tuple(sorted(sender_roles))
    if policy.may_skip_consent(roles, referral.legal_basis):
        return None
    return (
        f"legal basis {referral.legal_basis} without a consent receipt is not open to the "
        f"roles {', '.join(roles) or '(none)'} under the national policy (without_consent); "
        "refer under consent"
    )


def child_route_problem(
    referral: Referral,
    *,
    policy: Policy | None,
    recipient_roles: Iterable[Iterable[str]] | None = None,
) -> str | None:
    """Why a referral about a child (or a disputed age) lacks what the child route
    needs, or None (PROTOCOL §8.2 step 4, `child-route-incomplete`): a basis of
    `CHILD_BASES`, never consent alone; a `legal_basis_ref`, one of the national policy's
    `child_legal_bases` (so never free text: without a policy listing some, a child's v2
    referral cannot be sent); and a guardian, a best-interests assessment or, among
    `recipient_roles` (each recipient's roles), an agency holding one of
    `CHILD_PROTECTING_ROLES`. A recipient passes None: it sees its own copy only, so the
    last rule is its sender's, and a copy minimised to no `age_category` (a role that never
    learns it) is judged by the sender alone too. A schema v1 referral keeps the rules of v1
    (`basis_problem`) unless the policy lists `child_legal_bases`: it then cannot name one,
    and is refused. The answer names codes only, never a value of the body."""
    if referral.body.get("age_category") in (None, "adult"):
        return None
    listed = () if policy is None else policy.child_legal_bases
    if referral.schema_version == "1":
        if not listed:
            return None
        return (
            "the national policy lists child_legal_bases: a child's referral names the one it "
            'relies on (legal_basis_ref), which needs schema_version "2"'
        )
    if referral.legal_basis not in CHILD_BASES:
        return (
            f"a child's referral relies on {', '.join(CHILD_BASES)}, never on "
            f"{referral.legal_basis} alone; a consent receipt may still be cited"
        )
    if not listed:
        return (
            "a child's schema v2 referral names legal_basis_ref from the national policy's "
            "child_legal_bases, and the policy this agent trusts lists none"
        )
    if referral.legal_basis_ref not in listed:
        return "legal_basis_ref must be one of the national policy's child_legal_bases: " + (
            ", ".join(listed)
        )
    if recipient_roles is None or "guardian" in referral.body or _ASSESSED in referral.body:
        return None
    if any(CHILD_PROTECTING_ROLES & set(roles) for roles in recipient_roles):
        return None
    return (
        "a child's referral has a guardian, a best_interests_assessment_ref, or a "
        "recipient holding " + " or ".join(sorted(CHILD_PROTECTING_ROLES))
    )


_ASSESSED: Final = "best_interests_assessment_ref"


def break_glass_problem(
    referral: Referral, *, policy: Policy | None, received: bool = False
) -> str | None:
    """Why `referral`, which carries `break_glass`, may not be sent or received as a
    break-glass referral, or None (PROTOCOL §8.2 step 2): under a national policy, about an
    adult, not anonymous, under `vital_interests`, with a reason of the policy's
    `break_glass.reasons`; a recipient also needs it marked confirmed. The reason given is
    never repeated (a code outside the list may spell anything)."""
    if referral.break_glass_reason is None:
        raise ValueError("not a break-glass referral")
    if policy is None:
        return "break_glass needs a national policy (a directory of spec_version 2)"
    if referral.is_child or referral.referral_type == "anonymous_notification":
        return (
            "break_glass is for an adult's referral that is not an anonymous notification "
            "(a child's referral needs no consent)"
        )
    if referral.legal_basis != BREAK_GLASS_BASIS:
        return f"break_glass needs legal basis {BREAK_GLASS_BASIS}, not {referral.legal_basis}"
    if referral.break_glass_reason not in policy.break_glass.reasons:
        return (
            "break_glass.reason must be one of the national policy's break_glass.reasons: "
            + ", ".join(policy.break_glass.reasons)
        )
    if received and not referral.break_glass_confirmed:
        return "a break-glass referral is sent only once confirmed (break_glass.confirmed)"
    return None


def categories_for(roles: Iterable[str], *, child: bool, policy: Policy | None) -> frozenset[str]:
    """The categories an agency holding `roles` may receive of one referral: its roles'
    union, and for a child under a national policy not `CHILD_IDENTITY_CATEGORIES` unless
    one of the roles is in the policy's `child_identity_roles` (CETS Art 11)."""
    roles = tuple(roles)
    allowed = categories_for_roles(roles)
    if child and policy is not None and not set(roles) & set(policy.child_identity_roles):
        allowed -= CHILD_IDENTITY_CATEGORIES
    return allowed


def is_child(body: Mapping[str, Any]) -> bool:
    """Whether the child rules apply: a child, a disputed age, or anything not plainly adult."""
    return body.get("age_category") != "adult"


def strip_identifying(body: Mapping[str, Any]) -> dict[str, Any]:
    """A new body with every identifying field removed, ready for `anonymise`.

    Keeps the anonymous allow-list only, and of each location only its stage, country and
    period.
    """
    out: dict[str, Any] = {}
    for field, value in body.items():
        if field not in ANONYMOUS_FIELDS:
            continue
        if field == "locations" and isinstance(value, list):
            out[field] = [
                {k: copy.deepcopy(v) for k, v in loc.items() if k in ANONYMOUS_LOCATION_FIELDS}
                for loc in value
                if isinstance(loc, Mapping)
            ]
        else:
            out[field] = copy.deepcopy(value)
    return out


def anonymise(body: Mapping[str, Any]) -> dict[str, Any]:
    """The body of an anonymous notification to the co-ordinator, as a new dict.

    Refuses (`ReferralInvalid`, naming each field) any field outside the anonymous allow-list
    rather than dropping it: the agent strips identifying fields itself (`strip_identifying`)
    before calling, so anything left over is a bug to stop, not to paper over. The person must
    be an adult: children are referred under child protection, never anonymously.
    """
    problems = [
        f"/body/{_field_name(f)}: not allowed in an anonymous notification"
        for f in body
        if f not in ANONYMOUS_FIELDS
    ]
    locations = body.get("locations", [])
    if not isinstance(locations, list):
        problems.append("/body/locations: must be of type array")
    else:
        for i, loc in enumerate(locations):
            if not isinstance(loc, Mapping):
                problems.append(f"/body/locations/{i}: must be of type object")
                continue
            problems.extend(
                f"/body/locations/{i}/{_field_name(k)}: not allowed in an anonymous notification"
                for k in loc
                if k not in ANONYMOUS_LOCATION_FIELDS
            )
    if "age_category" not in body:
        problems.append("/body/age_category: required")
    elif body["age_category"] != "adult":
        problems.append("/body/age_category: an anonymous notification concerns an adult")
    if problems:
        raise ReferralInvalid(problems)
    return {field: copy.deepcopy(value) for field, value in body.items()}
