"""Consent receipts: schema, signatures, coverage, Kantara CR 1.1 export, rendering."""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from nacl.signing import SigningKey

from agents.consent import (
    CONSENT_LABEL,
    CONSENT_TYPES,
    SCHEMA_PATH,
    ConsentInvalid,
    ConsentReceipt,
    SignedReceipt,
    decode_stored,
    encode_stored,
    is_live,
    parse_receipt,
    render,
    sign_receipt,
    to_doc,
    to_kantara,
    uncovered,
    verify_receipt,
    verify_stored_receipt,
)
from keys.codec import canonical_json
from keys.errors import (
    BadSignatureError,
    MalformedError,
    RetiredKeyError,
    RevokedKeyError,
    UnknownKeyError,
)
from keys.identity import signing_kid
from keys.key_history import KeyWindow
from nrm import examples

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
DAY = 86_400
RID = "0f8e5f0a-3c2d-4b7e-9a1f-2d3c4b5a6e7f"
#: Directory names of the agencies, as the agent passes them to the Kantara export.
NAMES = {"police": "Metropolitan Police", "shelter": "Safe Harbour Shelter"}


def receipt_doc() -> dict[str, Any]:
    """A valid receipt: police and the shelter took consent; two purposes."""
    return examples.receipt(
        RID,
        T0,
        purposes=[examples.ASSISTANCE, examples.IDENTIFICATION],
        expires="2026-07-01T00:00:00Z",
    )


@pytest.fixture
def receipt() -> ConsentReceipt:
    return parse_receipt(receipt_doc())


# --------------------------------------------------------------------------- parsing


def test_parse_round_trips() -> None:
    """A valid document parses, and `to_doc` gives back exactly that document."""
    doc = receipt_doc()
    assert to_doc(parse_receipt(doc)) == doc


def test_missing_receipt_id_is_assigned_without_touching_the_input() -> None:
    """An absent receipt_id becomes a fresh UUID 4; the caller's dict is unchanged."""
    doc = receipt_doc()
    del doc["receipt_id"]
    before = copy.deepcopy(doc)
    r = parse_receipt(doc)
    assert doc == before
    assert len(r.receipt_id) == 36 and r.receipt_id[14] == "4"
    assert parse_receipt(doc).receipt_id != r.receipt_id


def _mutate(path: list[Any], value: Any) -> dict[str, Any]:
    doc = receipt_doc()
    target: Any = doc
    for step in path[:-1]:
        target = target[step]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


_DELETE = object()

INVALID: dict[str, tuple[list[Any], Any, str]] = {
    "a name as subject id": (["subject_id"], "Maria Popescu", "$.subject_id"),
    "unknown top-level field": (["full_name"], "Maria Popescu", "$"),
    "unknown purpose": (["purposes", 0, "purpose"], "Maria Popescu", "$.purposes[0].purpose"),
    "unknown data category": (
        ["purposes", 0, "data_categories", 0],
        "Maria Popescu",
        "$.purposes[0].data_categories[0]",
    ),
    "consent time without offset": (["consent_time"], "2026-01-01T00:00:00", "$.consent_time"),
    "missing notice": (["notice"], _DELETE, "'notice'"),
    "guardian without reference": (["given_by", "kind"], "guardian", "'guardian_ref'"),
    "interpreter without language": (
        ["given_by", "interpreter_language"],
        _DELETE,
        "'interpreter_language'",
    ),
    "purpose naming no recipient": (["purposes", 0, "recipients"], _DELETE, "$.purposes[0]"),
    "retention not a duration": (["purposes", 0, "retention"], "two years", "$.purposes[0]"),
    "impossible date": (["consent_time"], "2026-02-30T00:00:00Z", "$.consent_time"),
    "expires before consent": (["expires"], "2025-12-31T00:00:00Z", "$.expires"),
    "sensitive category no purpose covers": (
        ["sensitive_categories"],
        ["criminal"],
        "$.sensitive_categories",
    ),
    "plain http notice": (["notice", "url"], "http://police.example/n", "$.notice.url"),
}


@pytest.mark.parametrize("case", list(INVALID), ids=list(INVALID))
def test_invalid_receipts_are_refused_without_echoing_values(case: str) -> None:
    """Each invalid document is refused; a problem names the place; none echoes the value."""
    path, value, where = INVALID[case]
    with pytest.raises(ConsentInvalid) as info:
        parse_receipt(_mutate(path, value))
    problems = info.value.problems
    assert problems and any(where in p for p in problems), problems
    assert isinstance(info.value, ValueError) and isinstance(info.value, MalformedError)
    text = " ".join(problems) + str(info.value)
    assert "Maria" not in text and "Popescu" not in text


# --------------------------------------------------------------------------- signatures


def test_sign_verify_round_trip(receipt: ConsentReceipt) -> None:
    """A signed receipt verifies under the agency key and gives back the same receipt."""
    key = SigningKey.generate()
    signed = sign_receipt(receipt, key, agency="police")
    assert signed.body == canonical_json(to_doc(receipt))
    assert verify_receipt(signed, key.verify_key) == receipt


def test_signature_is_over_label_and_canonical_bytes(receipt: ConsentReceipt) -> None:
    """The signature is Ed25519 over "nrm/v1/consent" || 0x00 || canonical JSON."""
    key = SigningKey.generate()
    signed = sign_receipt(receipt, key, agency="police")
    body = json.dumps(
        to_doc(receipt), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()
    key.verify_key.verify(CONSENT_LABEL + b"\x00" + body, signed.signature)


def test_only_a_controller_may_sign(receipt: ConsentReceipt) -> None:
    """Signing as an agency that is not a controller of the receipt is a caller error."""
    with pytest.raises(ValueError, match="not a controller"):
        sign_receipt(receipt, SigningKey.generate(), agency="shelter")


def _resign(key: SigningKey, body: bytes, agency: str = "police") -> SignedReceipt:
    sig = key.sign(CONSENT_LABEL + b"\x00" + body).signature
    return SignedReceipt(agency=agency, body=body, signature=sig)


def _tampered(key: SigningKey, signed: SignedReceipt) -> dict[str, tuple[SignedReceipt, type]]:
    doc = json.loads(signed.body)
    wider = copy.deepcopy(doc)
    wider["purposes"][0]["data_categories"].append("criminal")
    no_id = {k: v for k, v in doc.items() if k != "receipt_id"}
    other = SigningKey.generate()
    return {
        "a category added after signing: refused": (
            dataclasses.replace(signed, body=canonical_json(wider)),
            BadSignatureError,
        ),
        "one signature bit flipped: refused": (
            dataclasses.replace(
                signed, signature=bytes([signed.signature[0] ^ 1]) + signed.signature[1:]
            ),
            BadSignatureError,
        ),
        "signed by another key: refused": (_resign(other, signed.body), BadSignatureError),
        "signed without the label: refused": (
            dataclasses.replace(signed, signature=key.sign(signed.body).signature),
            BadSignatureError,
        ),
        "truncated signature: refused": (
            dataclasses.replace(signed, signature=signed.signature[:63]),
            BadSignatureError,
        ),
        "validly signed but not canonical JSON: refused": (
            _resign(key, json.dumps(doc, sort_keys=True).encode()),
            MalformedError,
        ),
        "validly signed but without receipt_id: refused": (
            _resign(key, canonical_json(no_id)),
            ConsentInvalid,
        ),
        "validly signed, claimed by a non-controller agency: refused": (
            dataclasses.replace(signed, agency="shelter"),
            ConsentInvalid,
        ),
    }


def test_tampering_is_refused(receipt: ConsentReceipt) -> None:
    """Every tampered or mis-signed receipt is refused with its own error class."""
    key = SigningKey.generate()
    signed = sign_receipt(receipt, key, agency="police")
    for name, (bad, error) in _tampered(key, signed).items():
        with pytest.raises(error):
            verify_receipt(bad, key.verify_key)
        assert verify_receipt(signed, key.verify_key) == receipt, name


# --------------------------------------------------------------------------- stored receipts


def _window(key: SigningKey, valid_from: int, valid_until: int | None, **kw: Any) -> KeyWindow:
    return KeyWindow(
        agency=kw.pop("agency", "police"),
        kid=signing_kid(key.verify_key),
        public=bytes(key.verify_key),
        valid_from=valid_from,
        valid_until=valid_until,
        revoked_at=kw.pop("revoked_at", None),
        listed_version=1,
    )


def test_stored_form_round_trips_with_its_key_id(receipt: ConsentReceipt) -> None:
    """A signed receipt is stored with the id of the key that signed it and reads back equal."""
    key = SigningKey.generate()
    signed = sign_receipt(receipt, key, agency="police")
    assert signed.kid == signing_kid(key.verify_key)
    assert decode_stored(encode_stored(signed)) == signed


@pytest.mark.parametrize(
    "data",
    [b"not json", b"[]", b'{"agency":"police"}', b'{"agency":"police","body":"!!","signature":""}',
     b'{"agency":"police","body":"","signature":"","extra":1}',
     b'{"agency":"police","body":"","kid":"not-a-kid","signature":""}'],
)  # fmt: skip
def test_a_broken_stored_form_is_malformed(data: bytes) -> None:
    """Anything but the stored form is refused as malformed, not a crash."""
    with pytest.raises(MalformedError):
        decode_stored(data)


def test_a_receipt_signed_by_a_rotated_out_key_verifies_under_that_key(
    receipt: ConsentReceipt,
) -> None:
    """After a rotation the receipt verifies under its own (retired) key at its signing time,
    and names that key; the same record claimed later than the old key's window is refused."""
    old, new = SigningKey.generate(), SigningKey.generate()
    history = [_window(old, T0, T0 + DAY), _window(new, T0 + DAY // 2, None)]
    signed = sign_receipt(receipt, old, agency="police")
    got, kid = verify_stored_receipt(signed, signed_at=T0 + 10, history=history)
    assert got == receipt and kid == signing_kid(old.verify_key)
    with pytest.raises(RetiredKeyError):
        verify_stored_receipt(signed, signed_at=T0 + 2 * DAY, history=history)


def test_a_receipt_stored_without_a_key_id_finds_its_key(receipt: ConsentReceipt) -> None:
    """A receipt stored before key ids were kept is matched to the agency key that signed it;
    with no such key in the history it is refused as bad-signature."""
    old, new, stranger = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
    history = [_window(new, T0, None), _window(old, T0 - DAY, None)]
    legacy = dataclasses.replace(sign_receipt(receipt, old, agency="police"), kid=None)
    _, kid = verify_stored_receipt(legacy, signed_at=T0, history=history)
    assert kid == signing_kid(old.verify_key)
    foreign = dataclasses.replace(sign_receipt(receipt, stranger, agency="police"), kid=None)
    with pytest.raises(BadSignatureError):
        verify_stored_receipt(foreign, signed_at=T0, history=history)
    with pytest.raises(UnknownKeyError):
        verify_stored_receipt(legacy, signed_at=T0, history=[])


def test_stored_receipt_refusals_are_named(receipt: ConsentReceipt) -> None:
    """A tampered body, a key revoked before the signing time and a key the history never
    listed are each refused with their own error class."""
    key = SigningKey.generate()
    signed = sign_receipt(receipt, key, agency="police")
    history = [_window(key, T0, None)]
    wider = json.loads(signed.body)
    wider["purposes"][0]["data_categories"].append("criminal")
    tampered = dataclasses.replace(signed, body=canonical_json(wider))
    with pytest.raises(BadSignatureError):
        verify_stored_receipt(tampered, signed_at=T0 + 5, history=history)
    revoked = [_window(key, T0, None, revoked_at=T0 + 1)]
    with pytest.raises(RevokedKeyError):
        verify_stored_receipt(signed, signed_at=T0 + 5, history=revoked)
    other = [_window(SigningKey.generate(), T0, None)]
    with pytest.raises(UnknownKeyError):
        verify_stored_receipt(signed, signed_at=T0 + 5, history=other)
    assert verify_stored_receipt(signed, signed_at=T0 + 5, history=history)[0] == receipt


# --------------------------------------------------------------------------- coverage


@dataclass(frozen=True)
class Scenario:
    recipient: str
    role: str
    purpose: str
    categories: frozenset[str]
    now: int = T0 + DAY
    withdrawn: bool = False
    #: Substrings every problem must contain; empty means covered.
    expect: tuple[str, ...] = ()


COVERAGE = {
    "covered by agency id": Scenario(
        "shelter", "ngo", "assistance", frozenset({"contact", "needs"})
    ),
    "covered by role": Scenario(
        "coordinator", "coordinator", "identification", frozenset({"identity", "case"})
    ),
    "no categories at all: covered": Scenario("shelter", "ngo", "assistance", frozenset()),
    "wrong purpose: refused, names recipient and purpose": Scenario(
        "shelter",
        "ngo",
        "investigation",
        frozenset({"needs"}),
        expect=("shelter", "investigation"),
    ),
    "missing category: refused, names the category": Scenario(
        "shelter",
        "ngo",
        "assistance",
        frozenset({"needs", "exploitation", "criminal"}),
        expect=("shelter", "criminal, exploitation"),
    ),
    "category of another purpose: refused": Scenario(
        "shelter", "ngo", "assistance", frozenset({"identity"}), expect=("identity",)
    ),
    "unknown recipient: refused, names the recipient": Scenario(
        "border-guard-east",
        "border-guard",
        "identification",
        frozenset({"identity"}),
        expect=("border-guard-east",),
    ),
    "expired: covers nothing": Scenario(
        "shelter",
        "ngo",
        "assistance",
        frozenset({"needs"}),
        now=T0 + 200 * DAY,
        expect=("expired", "shelter"),
    ),
    "withdrawn: not live": Scenario(
        "shelter", "ngo", "assistance", frozenset({"needs"}), withdrawn=True, expect=("live",)
    ),
}


def _check(r: ConsentReceipt, s: Scenario) -> list[str]:
    """What a sender does: a receipt must be live, then cover what is sent."""
    if s.withdrawn and not is_live(r, now=s.now, withdrawn=True):
        return [f"consent receipt {r.receipt_id} is not live"]
    return uncovered(
        r,
        recipient=s.recipient,
        role=s.role,
        purpose=s.purpose,
        categories=set(s.categories),
        now=s.now,
    )


@pytest.mark.parametrize("name", list(COVERAGE), ids=list(COVERAGE))
def test_coverage(receipt: ConsentReceipt, name: str) -> None:
    """Each scenario is covered, or refused with problems naming what is not covered."""
    s = COVERAGE[name]
    problems = _check(receipt, s)
    if not s.expect:
        assert problems == []
    else:
        assert problems
        for needle in s.expect:
            assert any(needle in p for p in problems), (needle, problems)


def test_liveness_window(receipt: ConsentReceipt) -> None:
    """A receipt is live from consent (less clock skew) until expiry, unless withdrawn."""
    assert is_live(receipt, now=T0, withdrawn=False)
    assert is_live(receipt, now=T0 - 60, withdrawn=False)
    assert not is_live(receipt, now=T0 - 3600, withdrawn=False)
    assert not is_live(receipt, now=receipt.expires_at or 0, withdrawn=False)
    assert not is_live(receipt, now=T0 + DAY, withdrawn=True)
    no_end = parse_receipt(_mutate(["expires"], _DELETE))
    assert is_live(no_end, now=T0 + 3650 * DAY, withdrawn=False)


# --------------------------------------------------------------------------- Kantara export

# Kantara Initiative Consent Receipt Specification v1.1.0 (2018-02-20), written from its
# field definitions. §4.2: "A Consent Receipt MUST include the fields defined as REQUIRED".
_NON_EMPTY = {"type": "string", "minLength": 1}
KANTARA_CR_1_1 = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": [
        "version",  # §4.3.1
        "jurisdiction",  # §4.3.2
        "consentTimestamp",  # §4.3.3
        "collectionMethod",  # §4.3.4
        "consentReceiptID",  # §4.3.5
        # §4.3.7 language: secondary sources disagree on REQUIRED vs OPTIONAL; we always emit
        # it, so the test holds us to the stricter reading.
        "language",
        "piiPrincipalId",  # §4.4.1
        "piiControllers",  # §4.4.2
        "policyUrl",  # §4.4.10
        "services",  # §4.5.1
        "sensitive",  # §4.5.12
    ],
    "properties": {
        # §4.3.1: "The value MUST be "KI-CR-v1.1.0" for this version of the specification."
        "version": {"const": "KI-CR-v1.1.0"},
        # §4.3.2: "MUST contain a non-empty string describing the jurisdiction(s)."
        "jurisdiction": _NON_EMPTY,
        # §4.3.3: "The JSON value MUST be expressed as the number of seconds since
        # 1970-01-01 00:00:00 GMT." -- an integer, not an RFC 3339 string.
        "consentTimestamp": {"type": "integer", "minimum": 0},
        "collectionMethod": _NON_EMPTY,  # §4.3.4
        "consentReceiptID": _NON_EMPTY,  # §4.3.5: SHOULD be a UUID-4, MUST be non-empty
        "publicKey": {"type": "string"},  # §4.3.6, optional
        "language": _NON_EMPTY,  # §4.3.7
        "piiPrincipalId": _NON_EMPTY,  # §4.4.1: "MUST contain a non-empty string"
        "piiControllers": {  # §4.4.2: array of PII Controller objects
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                # §4.4.3 piiController, §4.4.5 contact, §4.4.6 address, §4.4.7 email,
                # §4.4.8 phone are REQUIRED; §4.4.4 onBehalf and §4.4.9 piiControllerUrl are not.
                "required": ["piiController", "contact", "address", "email", "phone"],
                "properties": {
                    "piiController": _NON_EMPTY,
                    "onBehalf": {"type": "boolean"},
                    "contact": _NON_EMPTY,
                    # §4.4.6: "The JSON value MUST follow the schema at
                    # https://schema.org/PostalAddress."
                    "address": {
                        "type": "object",
                        "propertyNames": {
                            "enum": [
                                "streetAddress",
                                "addressLocality",
                                "addressRegion",
                                "postalCode",
                                "postOfficeBoxNumber",
                                "addressCountry",
                            ]
                        },
                    },
                    "email": _NON_EMPTY,
                    # §4.4.8: "This field MUST follow RFC 3966".
                    "phone": {"type": "string", "pattern": "^tel:\\+"},
                    "piiControllerUrl": {"type": "string"},
                },
            },
        },
        "policyUrl": _NON_EMPTY,  # §4.4.10: "MUST contain a non-empty string"
        "services": {  # §4.5.1
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["service", "purposes"],  # §4.5.2, §4.5.3
                "properties": {
                    "service": _NON_EMPTY,  # §4.5.2: "MUST contain a non-empty string"
                    "purposes": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            # §4.5.4 purpose, §4.5.5 purposeCategory, §4.5.6 consentType,
                            # §4.5.7 piiCategory, §4.5.9 termination, §4.5.10
                            # thirdPartyDisclosure; §4.5.8 primaryPurpose is optional.
                            "required": [
                                "purpose",
                                "purposeCategory",
                                "consentType",
                                "piiCategory",
                                "termination",
                                "thirdPartyDisclosure",
                            ],
                            "properties": {
                                "purpose": _NON_EMPTY,
                                "purposeCategory": {"type": "array", "items": _NON_EMPTY},
                                # §4.5.6: non-empty, default "EXPLICIT".
                                "consentType": _NON_EMPTY,
                                "piiCategory": {"type": "array", "items": _NON_EMPTY},
                                "primaryPurpose": {"type": "boolean"},
                                "termination": _NON_EMPTY,  # §4.5.9
                                "thirdPartyDisclosure": {"type": "boolean"},
                                "thirdPartyName": _NON_EMPTY,
                            },
                            # §4.5.11: thirdPartyName "MUST be supplied if Third Party
                            # Disclosure is TRUE and MUST contain a non-empty string."
                            "if": {"properties": {"thirdPartyDisclosure": {"const": True}}},
                            "then": {"required": ["thirdPartyName"]},
                        },
                    },
                },
            },
        },
        "sensitive": {"type": "boolean"},  # §4.5.12
        "spiCat": {"type": "array", "items": _NON_EMPTY},  # §4.5.13
    },
    # §4.5.13: spiCat "MUST contain a non-empty string if Sensitive PII is TRUE".
    "if": {"properties": {"sensitive": {"const": True}}},
    "then": {"required": ["spiCat"], "properties": {"spiCat": {"minItems": 1}}},
}


def _kantara_errors(doc: dict[str, Any]) -> list[str]:
    Draft202012Validator.check_schema(KANTARA_CR_1_1)
    return [e.message for e in Draft202012Validator(KANTARA_CR_1_1).iter_errors(doc)]


def test_kantara_export_carries_every_required_field(receipt: ConsentReceipt) -> None:
    """The export validates against the CR 1.1 required fields and their types."""
    key = SigningKey.generate()
    out = to_kantara(receipt, controller_public_key=bytes(key.verify_key), agency_names=NAMES)
    assert _kantara_errors(out) == []
    assert out["consentTimestamp"] == T0
    assert out["consentReceiptID"] == RID
    assert out["piiPrincipalId"] == receipt.subject_id
    assert out["policyUrl"] == receipt.notice.url
    assert out["sensitive"] is True and out["spiCat"] == ["health"]
    purposes = out["services"][0]["purposes"]
    assert [p["piiCategory"] for p in purposes] == [
        ["contact", "needs", "language", "health"],
        ["demographic", "identity", "exploitation", "case"],
    ]
    assert purposes[0]["thirdPartyName"] == "Safe Harbour Shelter"
    assert purposes[1]["thirdPartyName"] == "any coordinator agency of the referral mechanism"
    json.dumps(out)  # plain JSON types only


def test_kantara_third_parties_are_named_from_the_directory_or_else_by_id(
    receipt: ConsentReceipt,
) -> None:
    """thirdPartyName gives each recipient agency's directory name; one the directory does
    not list (removed, or no directory trusted now) keeps its id; controllers are not third
    parties."""
    doc = receipt_doc()
    doc["purposes"][0]["recipients"] = ["shelter", "labour", "police"]
    receipt = parse_receipt(doc)
    named = to_kantara(receipt, controller_public_key=None, agency_names=NAMES)
    assert named["services"][0]["purposes"][0]["thirdPartyName"] == "Safe Harbour Shelter, labour"
    bare = to_kantara(receipt, controller_public_key=None, agency_names={})
    assert bare["services"][0]["purposes"][0]["thirdPartyName"] == "shelter, labour"


def test_kantara_consent_type_follows_the_lawful_basis() -> None:
    """consentType is EXPLICIT only for a purpose resting on consent; every other basis of
    the schema is named as the authority instead."""
    schema = json.loads(SCHEMA_PATH.read_text())
    bases = schema["$defs"]["purpose"]["properties"]["lawful_basis"]["enum"]
    assert sorted(CONSENT_TYPES) == sorted(bases)
    expected = {
        "consent": "EXPLICIT",
        "legal_obligation": "LEGAL_OBLIGATION",
        "public_task": "PUBLIC_TASK",
        "vital_interests": "VITAL_INTERESTS",
        "child_protection": "CHILD_PROTECTION",
    }
    for basis, consent_type in expected.items():
        doc = receipt_doc()
        doc["purposes"][1]["lawful_basis"] = basis
        out = to_kantara(parse_receipt(doc), controller_public_key=None, agency_names=NAMES)
        purposes = out["services"][0]["purposes"]
        assert [p["consentType"] for p in purposes] == ["EXPLICIT", consent_type], basis
        assert _kantara_errors(out) == []


def test_kantara_export_without_key_or_sensitive_data(receipt: ConsentReceipt) -> None:
    """Without a key publicKey is left out; with no sensitive data `sensitive` is false."""
    doc = receipt_doc()
    doc["sensitive_categories"] = []
    out = to_kantara(parse_receipt(doc), controller_public_key=None, agency_names=NAMES)
    assert "publicKey" not in out
    assert out["sensitive"] is False and out["spiCat"] == []
    assert _kantara_errors(out) == []


def test_kantara_schema_catches_a_missing_field(receipt: ConsentReceipt) -> None:
    """The test schema is not vacuous: dropping a required field or mistyping one fails."""
    out = to_kantara(receipt, controller_public_key=None, agency_names=NAMES)
    for name in ("consentReceiptID", "piiPrincipalId", "services", "sensitive"):
        assert _kantara_errors({k: v for k, v in out.items() if k != name})
    assert _kantara_errors({**out, "consentTimestamp": receipt.consent_time})


# --------------------------------------------------------------------------- rendering


def test_render_is_readable(receipt: ConsentReceipt) -> None:
    """The rendering names the receipt, subject, purposes, categories and recipients."""
    text = render(receipt)
    for needle in (RID, receipt.subject_id, "Assistance", "shelter", "coordinator", "P2Y"):
        assert needle in text
    assert "interpreter (ro)" in text


def test_consent_schema_is_a_valid_2020_12_schema() -> None:
    """The published consent-receipt schema is itself valid JSON Schema 2020-12 (the agent
    does not check this at start-up: it imports jsonschema only to explain a refusal)."""
    Draft202012Validator.check_schema(json.loads(SCHEMA_PATH.read_text(encoding="utf-8")))
