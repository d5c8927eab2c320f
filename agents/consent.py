"""Consent receipts: parse, sign, verify, check coverage, export as Kantara CR 1.1, render.

A consent receipt records what a person (or their guardian) agreed to: which recipients or
recipient roles may receive which data categories, for which purposes, until when, how the
consent was collected and in which language. Agency systems POST it in the shape of
`docs/schemas/consent-receipt-v1.schema.json`; this module is the one strict decoder for it.

Pure code: no I/O except reading the schema once at import, no clock (callers pass `now`).

Signing: Ed25519 over `b"nrm/v1/consent" || 0x00 || canonical JSON of the receipt`, where
canonical JSON is `json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)`
encoded as UTF-8. The signed document and its signature are separate objects
(`SignedReceipt`); `verify_receipt` returns the verified receipt or raises.

Receipts are re-verified whenever they are used: `verify_stored_receipt` checks one under the
key that signed it as the key history (keys.key_history) describes it at the time it was
recorded, so rotations, revocations after the fact and agencies re-admitted with new keys
leave earlier receipts verifiable (docs/PROTOCOL.md §8.3, §7.9).

Errors: `ConsentInvalid` (a `MalformedError` and a `ValueError`) for a receipt that does not
match the schema, with `.problems` naming fields and rules, never the values sent;
`keys.errors.BadSignatureError` for a signature that does not verify.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from nacl.exceptions import BadSignatureError as NaclBadSignatureError
from nacl.signing import SigningKey, VerifyKey

from keys.codec import canonical_json, load_canonical
from keys.errors import BadSignatureError, MalformedError, UnknownKeyError
from keys.identity import signing_kid
from keys.key_history import KeyWindow, signing_key_at, windows_of
from keys.signed import check_signature

from .schema_check import SchemaCheck

__all__ = [
    "CONSENT_LABEL",
    "KANTARA_VERSION",
    "SCHEMA_PATH",
    "ConsentInvalid",
    "ConsentLimits",
    "ConsentReceipt",
    "Controller",
    "ControllerContact",
    "GivenBy",
    "Notice",
    "PostalAddress",
    "Purpose",
    "SignedReceipt",
    "decode_stored",
    "encode_stored",
    "is_live",
    "parse_receipt",
    "render",
    "sign_receipt",
    "to_doc",
    "to_kantara",
    "uncovered",
    "verify_receipt",
    "verify_stored_receipt",
]

#: Domain-separation label of a consent receipt signature.
CONSENT_LABEL: Final = b"nrm/v1/consent"
#: Kantara CR 1.1 §4.3.1: "The value MUST be "KI-CR-v1.1.0" for this version".
KANTARA_VERSION: Final = "KI-CR-v1.1.0"
SCHEMA_PATH: Final = Path(__file__).resolve().parent / "schemas" / "consent-receipt-v1.schema.json"


@dataclass(frozen=True, slots=True)
class ConsentLimits:
    """Every limit this module applies, in one place."""

    #: Largest canonical receipt accepted for verification.
    max_receipt_bytes: int = 64 * 1024
    #: Most schema problems reported for one receipt.
    max_problems: int = 20
    #: Clock skew tolerated between the agency that took consent and the one checking it.
    clock_skew_seconds: int = 300


LIMITS: Final = ConsentLimits()


def compile_validators() -> None:
    """Compile the receipt schema now (at start-up, like referral.compile_validators)."""
    _check()


@functools.cache
def _check() -> SchemaCheck:
    """The receipt schema, compiled on first use (the CLI never needs it). It asserts no
    `format`; its times are checked by _semantic_problems."""
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return SchemaCheck(schema, formats={})


class ConsentInvalid(MalformedError, ValueError):
    """A consent receipt that does not match the schema. `.problems` never echoes values."""

    reason = "consent-invalid"

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        super().__init__("invalid consent receipt: " + "; ".join(self.problems))


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class PostalAddress:
    """schema.org PostalAddress subset (Kantara CR 1.1 §4.4.6)."""

    country: str
    street: str | None = None
    locality: str | None = None
    region: str | None = None
    postal_code: str | None = None


@dataclass(frozen=True, slots=True)
class ControllerContact:
    """A controller's privacy office: name, email, RFC 3966 phone, postal address."""

    name: str
    email: str
    phone: str
    address: PostalAddress


@dataclass(frozen=True, slots=True)
class Controller:
    """An agency accountable for the data (Kantara PII Controller)."""

    agency: str
    name: str
    contact: ControllerContact
    url: str | None = None


@dataclass(frozen=True, slots=True)
class Notice:
    """The privacy notice shown: where it is and the SHA-256 (hex) of its exact text."""

    url: str
    sha256: str


@dataclass(frozen=True, slots=True)
class Purpose:
    """One purpose: its lawful basis, data categories, who may receive them, how long."""

    purpose: str
    lawful_basis: str
    data_categories: tuple[str, ...]
    recipients: tuple[str, ...]
    recipient_roles: tuple[str, ...]
    retention: str

    def names(self, *, recipient: str, role: str) -> bool:
        """Whether this purpose names `recipient` by agency id or by its role."""
        return recipient in self.recipients or role in self.recipient_roles


@dataclass(frozen=True, slots=True)
class GivenBy:
    """Who gave the consent: the person or a guardian, with or without an interpreter."""

    kind: str
    interpreter: bool
    guardian_ref: str | None = None
    interpreter_language: str | None = None


@dataclass(frozen=True, slots=True)
class ConsentReceipt:
    """A parsed, schema-valid consent receipt. Times are kept as sent (RFC 3339)."""

    receipt_id: str
    version: str
    jurisdiction: str
    consent_time: str
    collection_method: str
    language: str
    subject_id: str
    controllers: tuple[Controller, ...]
    notice: Notice
    purposes: tuple[Purpose, ...]
    sensitive_categories: tuple[str, ...]
    withdrawal_method: str
    given_by: GivenBy
    expires: str | None = None

    @property
    def consent_at(self) -> int:
        """`consent_time` in seconds since the epoch."""
        return _epoch(self.consent_time)

    @property
    def expires_at(self) -> int | None:
        """`expires` in seconds since the epoch, or None for no end date."""
        return None if self.expires is None else _epoch(self.expires)

    @property
    def controller_agencies(self) -> frozenset[str]:
        return frozenset(c.agency for c in self.controllers)


@dataclass(frozen=True, slots=True)
class SignedReceipt:
    """A receipt's canonical bytes, the signing agency and its Ed25519 signature over them.

    `kid` names the signing key; receipts stored before key ids were recorded have None.
    """

    agency: str
    body: bytes
    signature: bytes
    kid: str | None = None


# --------------------------------------------------------------------------- parsing


def parse_receipt(doc: Mapping[str, Any]) -> ConsentReceipt:
    """Validate `doc` against the schema and return the receipt.

    A missing `receipt_id` is assigned here (a fresh UUID 4); the caller's mapping is not
    changed. Raises `ConsentInvalid` listing every problem found (up to a limit).
    """
    if not isinstance(doc, Mapping):
        raise ConsentInvalid(["receipt must be a JSON object"])
    if "receipt_id" not in doc:
        doc = {**doc, "receipt_id": str(uuid.uuid4())}
    return _parse(doc)


def _parse(doc: Mapping[str, Any]) -> ConsentReceipt:
    """The strict decoder: `receipt_id` must be present."""
    if not isinstance(doc, Mapping):
        raise ConsentInvalid(["receipt must be a JSON object"])
    doc = dict(doc)
    problems = _schema_problems(doc)
    if "receipt_id" not in doc:
        problems.insert(0, "$: missing required field 'receipt_id'")
    if problems:
        raise ConsentInvalid(problems[: LIMITS.max_problems])
    problems = _semantic_problems(doc)
    if problems:
        raise ConsentInvalid(problems)
    return _build(doc)


def _schema_problems(doc: dict[str, Any]) -> list[str]:
    errors = sorted(_check().errors(doc), key=lambda e: (list(map(str, e.path)), e.validator))
    return [_describe(e) for e in errors]


_RULES: Final[dict[str, str]] = {
    "const": "has a value other than the one allowed",
    "enum": "is not one of the allowed values",
    "pattern": "does not have the required format",
    "maxLength": "is too long",
    "minLength": "is too short",
    "minItems": "has too few items",
    "maxItems": "has too many items",
    "uniqueItems": "repeats an item",
    "additionalProperties": "has fields the schema does not define",
    "anyOf": "must name recipients or recipient_roles",
    "not": "has a field that is not allowed here",
}


def _describe(error: Any) -> str:
    """One problem naming the place and the rule; never the value (it may be personal data)."""
    path = error.json_path
    rule = error.validator
    if rule == "required":
        present = error.instance if isinstance(error.instance, dict) else {}
        missing = [n for n in error.validator_value if n not in present]
        return f"{path}: missing required field {', '.join(repr(n) for n in missing)}"
    if rule == "type":
        return f"{path}: must be of type {error.validator_value}"
    return f"{path}: {_RULES.get(rule, f'fails the {rule!s} rule')}"


def _semantic_problems(doc: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    times: dict[str, int] = {}
    for name in ("consent_time", "expires"):
        if name in doc:
            try:
                times[name] = _epoch(doc[name])
            except ValueError:
                problems.append(f"$.{name}: is not a valid date-time")
    if "consent_time" in times and "expires" in times and times["expires"] <= times["consent_time"]:
        problems.append("$.expires: must be later than consent_time")
    covered = {c for p in doc["purposes"] for c in p["data_categories"]}
    if not set(doc["sensitive_categories"]) <= covered:
        problems.append("$.sensitive_categories: names a category no purpose covers")
    return problems


def _epoch(value: str) -> int:
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError("date-time without an offset")
    return int(moment.timestamp())


def _build(doc: dict[str, Any]) -> ConsentReceipt:
    given = doc["given_by"]
    return ConsentReceipt(
        receipt_id=doc["receipt_id"],
        version=doc["version"],
        jurisdiction=doc["jurisdiction"],
        consent_time=doc["consent_time"],
        collection_method=doc["collection_method"],
        language=doc["language"],
        subject_id=doc["subject_id"],
        controllers=tuple(_controller(c) for c in doc["controllers"]),
        notice=Notice(url=doc["notice"]["url"], sha256=doc["notice"]["sha256"]),
        purposes=tuple(
            Purpose(
                purpose=p["purpose"],
                lawful_basis=p["lawful_basis"],
                data_categories=tuple(p["data_categories"]),
                recipients=tuple(p.get("recipients", ())),
                recipient_roles=tuple(p.get("recipient_roles", ())),
                retention=p["retention"],
            )
            for p in doc["purposes"]
        ),
        sensitive_categories=tuple(doc["sensitive_categories"]),
        withdrawal_method=doc["withdrawal_method"],
        given_by=GivenBy(
            kind=given["kind"],
            interpreter=given["interpreter"],
            guardian_ref=given.get("guardian_ref"),
            interpreter_language=given.get("interpreter_language"),
        ),
        expires=doc.get("expires"),
    )


def _controller(c: dict[str, Any]) -> Controller:
    contact = c["contact"]
    address = contact["address"]
    return Controller(
        agency=c["agency"],
        name=c["name"],
        contact=ControllerContact(
            name=contact["name"],
            email=contact["email"],
            phone=contact["phone"],
            address=PostalAddress(
                country=address["addressCountry"],
                street=address.get("streetAddress"),
                locality=address.get("addressLocality"),
                region=address.get("addressRegion"),
                postal_code=address.get("postalCode"),
            ),
        ),
        url=c.get("url"),
    )


def to_doc(receipt: ConsentReceipt) -> dict[str, Any]:
    """The receipt as the schema's JSON object (the inverse of `parse_receipt`)."""
    doc: dict[str, Any] = {
        "receipt_id": receipt.receipt_id,
        "version": receipt.version,
        "jurisdiction": receipt.jurisdiction,
        "consent_time": receipt.consent_time,
        "collection_method": receipt.collection_method,
        "language": receipt.language,
        "subject_id": receipt.subject_id,
        "controllers": [_controller_doc(c) for c in receipt.controllers],
        "notice": {"url": receipt.notice.url, "sha256": receipt.notice.sha256},
        "purposes": [_purpose_doc(p) for p in receipt.purposes],
        "sensitive_categories": list(receipt.sensitive_categories),
        "withdrawal_method": receipt.withdrawal_method,
        "given_by": _drop_none(
            {
                "kind": receipt.given_by.kind,
                "guardian_ref": receipt.given_by.guardian_ref,
                "interpreter": receipt.given_by.interpreter,
                "interpreter_language": receipt.given_by.interpreter_language,
            }
        ),
    }
    if receipt.expires is not None:
        doc["expires"] = receipt.expires
    return doc


def _controller_doc(c: Controller) -> dict[str, Any]:
    a = c.contact.address
    return _drop_none(
        {
            "agency": c.agency,
            "name": c.name,
            "contact": {
                "name": c.contact.name,
                "email": c.contact.email,
                "phone": c.contact.phone,
                "address": _drop_none(
                    {
                        "streetAddress": a.street,
                        "addressLocality": a.locality,
                        "addressRegion": a.region,
                        "postalCode": a.postal_code,
                        "addressCountry": a.country,
                    }
                ),
            },
            "url": c.url,
        }
    )


def _purpose_doc(p: Purpose) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "purpose": p.purpose,
        "lawful_basis": p.lawful_basis,
        "data_categories": list(p.data_categories),
        "retention": p.retention,
    }
    if p.recipients:
        doc["recipients"] = list(p.recipients)
    if p.recipient_roles:
        doc["recipient_roles"] = list(p.recipient_roles)
    return doc


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


# --------------------------------------------------------------------------- signatures


def _signed_message(body: bytes) -> bytes:
    return CONSENT_LABEL + b"\x00" + body


def sign_receipt(receipt: ConsentReceipt, key: SigningKey, *, agency: str) -> SignedReceipt:
    """Sign the canonical bytes of `receipt` as `agency`, which must be one of its controllers."""
    if not isinstance(receipt, ConsentReceipt):
        raise TypeError("receipt must be a ConsentReceipt")
    if not isinstance(key, SigningKey):
        raise TypeError("key must be a nacl.signing.SigningKey")
    if agency not in receipt.controller_agencies:
        raise ValueError(f"agency {agency!r} is not a controller of this receipt")
    body = canonical_json(to_doc(receipt))
    if len(body) > LIMITS.max_receipt_bytes:
        raise ValueError(f"receipt is {len(body)} bytes, more than {LIMITS.max_receipt_bytes}")
    signature = key.sign(_signed_message(body)).signature
    return SignedReceipt(
        agency=agency, body=body, signature=signature, kid=signing_kid(key.verify_key)
    )


def verify_receipt(signed: SignedReceipt, key: VerifyKey) -> ConsentReceipt:
    """Verify `signed` under `key` (the signing agency's key) and return the receipt.

    Raises `BadSignatureError` if the signature does not verify, `MalformedError` if the body
    is oversized or not canonical JSON, `ConsentInvalid` if it is not a valid receipt or the
    signing agency is not one of its controllers.
    """
    if not isinstance(signed, SignedReceipt):
        raise TypeError("signed must be a SignedReceipt")
    if not isinstance(key, VerifyKey):
        raise TypeError("key must be a nacl.signing.VerifyKey")
    body = bytes(signed.body)
    if len(body) > LIMITS.max_receipt_bytes:
        raise MalformedError(f"receipt is {len(body)} bytes, more than {LIMITS.max_receipt_bytes}")
    if len(signed.signature) != 64:
        raise BadSignatureError("consent receipt signature is not 64 bytes")
    failure = "consent receipt signature does not verify"
    check_signature(CONSENT_LABEL, body, bytes(signed.signature), key, failure=failure)
    doc = load_canonical(body, "consent receipt body")
    receipt = _parse(doc)
    if canonical_json(to_doc(receipt)) != body:
        raise MalformedError("consent receipt body does not round-trip")
    if signed.agency not in receipt.controller_agencies:
        raise ConsentInvalid(["signing agency is not a controller of the receipt"])
    return receipt


def verify_stored_receipt(
    signed: SignedReceipt, *, signed_at: int, history: Sequence[KeyWindow]
) -> tuple[ConsentReceipt, str]:
    """Verify a stored receipt under the key that signed it, as the key history describes
    it at `signed_at` (when it was recorded), and return the receipt with that key id (§8.3).

    The key must have been a signing key of `signed.agency` valid at `signed_at` and not
    revoked by then (`keys.key_history.signing_key_at`): UnknownKeyError, RetiredKeyError or
    RevokedKeyError otherwise, then everything `verify_receipt` raises. A receipt stored
    without a key id is matched to the one key of its agency in `history` whose signature
    verifies; if none does, BadSignatureError (UnknownKeyError if the history holds no key
    of that agency).
    """
    if not isinstance(signed, SignedReceipt):
        raise TypeError("signed must be a SignedReceipt")
    kid = signed.kid
    if kid is None:
        kid = _find_signer(signed, history)
    key = signing_key_at(history, agency=signed.agency, kid=kid, at=signed_at)
    return verify_receipt(signed, key), kid


def encode_stored(signed: SignedReceipt) -> bytes:
    """The stored form of a signed receipt: canonical JSON `{"agency", "body", "kid",
    "signature"}`, bytes in base64 (§8.3)."""
    if signed.kid is None:
        raise ValueError("a receipt is stored with the key id that signed it")
    return canonical_json(
        {
            "agency": signed.agency,
            "body": base64.b64encode(signed.body).decode(),
            "kid": signed.kid,
            "signature": base64.b64encode(signed.signature).decode(),
        }
    )


def decode_stored(data: bytes) -> SignedReceipt:
    """Parse the stored form; `kid` is absent from receipts stored before key ids were kept.
    Raises MalformedError for anything else (the database was altered)."""
    try:
        doc = json.loads(bytes(data).decode("utf-8"))
        if (
            not isinstance(doc, dict)
            or not {"agency", "body", "signature"} <= set(doc)
            or not (set(doc) <= {"agency", "body", "kid", "signature"})
        ):
            raise ValueError("unexpected members")
        agency, kid = doc["agency"], doc.get("kid")
        if not isinstance(agency, str) or not (kid is None or _is_kid(kid)):
            raise ValueError("agency is a string, kid 32 lowercase hex digits")
        body = base64.b64decode(doc["body"], validate=True)
        signature = base64.b64decode(doc["signature"], validate=True)
    except (ValueError, TypeError, binascii.Error) as e:
        raise MalformedError("the stored consent receipt is not in its stored form") from e
    return SignedReceipt(agency=agency, body=body, signature=signature, kid=kid)


def _is_kid(value: object) -> bool:
    return isinstance(value, str) and len(value) == 32 and all(c in _HEX for c in value)


_HEX: Final = frozenset("0123456789abcdef")


def _find_signer(signed: SignedReceipt, history: Sequence[KeyWindow]) -> str:
    """The key id of `signed.agency` in `history` whose signature on `signed` verifies."""
    kids = sorted({w.kid for w in history if w.agency == signed.agency})
    if not kids:
        raise UnknownKeyError(f"no signing key of {signed.agency} is known")
    message = _signed_message(bytes(signed.body))
    for kid in kids:
        public = windows_of(history, signed.agency, kid)[0].public
        try:
            VerifyKey(public).verify(message, bytes(signed.signature))
        except (NaclBadSignatureError, ValueError):
            continue
        return kid
    raise BadSignatureError("consent receipt signature verifies under no key of its agency")


# --------------------------------------------------------------------------- liveness, coverage


def is_live(receipt: ConsentReceipt, *, now: int, withdrawn: bool) -> bool:
    """Whether the receipt is in force at `now`: not withdrawn, begun, not expired."""
    if withdrawn:
        return False
    if now < receipt.consent_at - LIMITS.clock_skew_seconds:
        return False
    expires_at = receipt.expires_at
    return expires_at is None or now < expires_at


def uncovered(
    receipt: ConsentReceipt,
    *,
    recipient: str,
    role: str,
    purpose: str,
    categories: set[str],
    now: int,
) -> list[str]:
    """What the receipt does not cover of sending `categories` to `recipient` for `purpose`.

    Empty when covered. A purpose entry covers the recipient if it names it in `recipients` or
    its `role` in `recipient_roles`, has the same purpose, and lists the categories in its
    `data_categories` (categories may be spread over several such entries). An expired receipt,
    or one not yet in force, covers nothing. Withdrawal is checked with `is_live`.
    """
    rid = receipt.receipt_id
    expires_at = receipt.expires_at
    if expires_at is not None and now >= expires_at:
        return [f"consent receipt {rid} has expired: nothing may be sent to {recipient}"]
    if now < receipt.consent_at - LIMITS.clock_skew_seconds:
        return [f"consent receipt {rid} is not yet in force: nothing may be sent to {recipient}"]
    naming = [p for p in receipt.purposes if p.names(recipient=recipient, role=role)]
    if not naming:
        return [f"recipient {recipient} (role {role}) is not named by consent receipt {rid}"]
    matching = [p for p in naming if p.purpose == purpose]
    if not matching:
        return [f"consent receipt {rid} does not cover purpose {purpose} for recipient {recipient}"]
    allowed = {c for p in matching for c in p.data_categories}
    missing = sorted(categories - allowed)
    if missing:
        return [
            f"consent receipt {rid} does not cover categories {', '.join(missing)} "
            f"for recipient {recipient} under purpose {purpose}"
        ]
    return []


# --------------------------------------------------------------------------- Kantara export

_COLLECTION_TEXT: Final[dict[str, str]] = {
    "in_person": "In person",
    "in_person_with_interpreter": "In person, through an interpreter",
    "written": "In writing",
    "video_call": "By video call",
    "phone": "By telephone",
}

_PURPOSE_TEXT: Final[dict[str, str]] = {
    "identification": "Identification as a possible victim of trafficking",
    "assistance": "Assistance and support services",
    "protection": "Protection from harm",
    "investigation": "Criminal investigation",
    "prosecution": "Prosecution of offenders",
    "monitoring": "Monitoring of the referral mechanism",
}

_SERVICE_NAME: Final = "National Referral Mechanism referral"

#: CR 1.1 §4.5.6 defines consentType as "the type of the consent used by the PII Controller
#: as their authority to collect, use or disclose PII": EXPLICIT only where that authority is
#: the person's consent; otherwise the lawful basis that is (PROTOCOL.md §8.3).
CONSENT_TYPES: Final[dict[str, str]] = {
    "consent": "EXPLICIT",
    "legal_obligation": "LEGAL_OBLIGATION",
    "public_task": "PUBLIC_TASK",
    "vital_interests": "VITAL_INTERESTS",
    "child_protection": "CHILD_PROTECTION",
}


def _collection_text(receipt: ConsentReceipt) -> str:
    g = receipt.given_by
    parts = [_COLLECTION_TEXT[receipt.collection_method]]
    if g.interpreter and g.interpreter_language is not None:
        parts.append(f"interpreted in language {g.interpreter_language}")
    if g.kind == "guardian":
        parts.append(f"given by a guardian (reference {g.guardian_ref})")
    else:
        parts.append("given by the person")
    return "; ".join(parts)


def _third_parties(
    receipt: ConsentReceipt, p: Purpose, agency_names: Mapping[str, str]
) -> list[str]:
    own = receipt.controller_agencies
    names = [agency_names.get(r, r) for r in p.recipients if r not in own]
    names += [f"any {role} agency of the referral mechanism" for role in p.recipient_roles]
    return names


def to_kantara(
    receipt: ConsentReceipt,
    *,
    controller_public_key: bytes | None,
    agency_names: Mapping[str, str],
) -> dict[str, Any]:
    """The receipt as Kantara Consent Receipt 1.1 JSON (field names per its §4.3-4.5).

    `controller_public_key` is the signing agency's raw Ed25519 public key (32 bytes), emitted
    base64 in `publicKey` (§4.3.6, optional); None leaves the field out. `agency_names` maps
    agency ids to their directory names for `thirdPartyName` (§4.5.11); an agency it does not
    list is named by its id.
    """
    out: dict[str, Any] = {
        "version": KANTARA_VERSION,  # §4.3.1
        "jurisdiction": receipt.jurisdiction,  # §4.3.2
        "consentTimestamp": receipt.consent_at,  # §4.3.3: integer seconds since the epoch
        "collectionMethod": _collection_text(receipt),  # §4.3.4
        "consentReceiptID": receipt.receipt_id,  # §4.3.5
    }
    if controller_public_key is not None:
        if not isinstance(controller_public_key, bytes) or len(controller_public_key) != 32:
            raise ValueError("controller_public_key must be 32 bytes (Ed25519)")
        out["publicKey"] = base64.b64encode(controller_public_key).decode("ascii")  # §4.3.6
    out["language"] = receipt.language  # §4.3.7
    out["piiPrincipalId"] = receipt.subject_id  # §4.4.1
    out["piiControllers"] = [_kantara_controller(c) for c in receipt.controllers]  # §4.4.2
    out["policyUrl"] = receipt.notice.url  # §4.4.10
    termination = f"Consent ends when withdrawn ({receipt.withdrawal_method})"
    if receipt.expires is not None:
        termination += f" or at {receipt.expires}"
    purposes = []
    for i, p in enumerate(receipt.purposes):
        third = _third_parties(receipt, p, agency_names)
        entry: dict[str, Any] = {
            "purpose": f"{_PURPOSE_TEXT[p.purpose]} (lawful basis: {p.lawful_basis})",  # §4.5.4
            "purposeCategory": [p.purpose],  # §4.5.5
            "consentType": CONSENT_TYPES[p.lawful_basis],  # §4.5.6
            "piiCategory": list(p.data_categories),  # §4.5.7
            "primaryPurpose": i == 0,  # §4.5.8
            "termination": f"{termination}; data kept for {p.retention}",  # §4.5.9
            "thirdPartyDisclosure": bool(third),  # §4.5.10
        }
        if third:
            entry["thirdPartyName"] = ", ".join(third)  # §4.5.11
        purposes.append(entry)
    out["services"] = [{"service": _SERVICE_NAME, "purposes": purposes}]  # §4.5.1-4.5.3
    out["sensitive"] = bool(receipt.sensitive_categories)  # §4.5.12
    out["spiCat"] = list(receipt.sensitive_categories)  # §4.5.13
    return out


def _kantara_controller(c: Controller) -> dict[str, Any]:
    a = c.contact.address
    entry: dict[str, Any] = {
        "piiController": c.name,  # §4.4.3
        "contact": c.contact.name,  # §4.4.5
        "address": _drop_none(  # §4.4.6: schema.org PostalAddress
            {
                "streetAddress": a.street,
                "addressLocality": a.locality,
                "addressRegion": a.region,
                "postalCode": a.postal_code,
                "addressCountry": a.country,
            }
        ),
        "email": c.contact.email,  # §4.4.7
        "phone": c.contact.phone,  # §4.4.8: RFC 3966
    }
    if c.url is not None:
        entry["piiControllerUrl"] = c.url  # §4.4.9
    return entry


# --------------------------------------------------------------------------- rendering


def render(receipt: ConsentReceipt) -> str:
    """A readable multi-line description, for `nrm consent show ID`."""
    g = receipt.given_by
    given = "the person" if g.kind == "person" else f"a guardian (reference {g.guardian_ref})"
    if g.interpreter:
        given += f", through an interpreter ({g.interpreter_language})"
    lines = [
        f"Consent receipt {receipt.receipt_id} (version {receipt.version})",
        f"  Subject:      {receipt.subject_id}",
        f"  Given:        {receipt.consent_time} by {given}",
        f"  Collected:    {_COLLECTION_TEXT[receipt.collection_method]}, "
        f"in language {receipt.language}",
        f"  Jurisdiction: {receipt.jurisdiction}",
        f"  Expires:      {receipt.expires or 'no end date (until withdrawn)'}",
        f"  Notice:       {receipt.notice.url} (sha256 {receipt.notice.sha256})",
        f"  Withdrawal:   {receipt.withdrawal_method}",
        "  Controllers:",
    ]
    for c in receipt.controllers:
        lines.append(f"    - {c.name} [{c.agency}], contact {c.contact.name} <{c.contact.email}>")
    lines.append("  Purposes:")
    for p in receipt.purposes:
        lines.append(f"    - {_PURPOSE_TEXT[p.purpose]} ({p.purpose}; basis {p.lawful_basis})")
        lines.append(f"        data:       {', '.join(p.data_categories)}")
        if p.recipients:
            lines.append(f"        recipients: {', '.join(p.recipients)}")
        if p.recipient_roles:
            lines.append(f"        roles:      {', '.join(p.recipient_roles)}")
        lines.append(f"        kept for:   {p.retention}")
    sensitive = ", ".join(receipt.sensitive_categories) or "none"
    lines.append(f"  Sensitive categories: {sensitive}")
    return "\n".join(lines) + "\n"
