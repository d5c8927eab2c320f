"""Fictional referral and consent documents with current times: for the demo and the tests."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

from runtime import clock

BODY: dict[str, Any] = {
    "age_category": "adult",
    "names": {"given_names": "Mira", "family_name": "Example"},
    "languages": ["ro"],
    "interpreter_needed": True,
    "safe_contact": {"method": "via_referring_agency", "details": "Through the caseworker."},
    "health_needs": {"needs": ["physical_injury"], "notes": "Wrist injury."},
    "requested_services": ["shelter", "medical", "interpretation"],
    "exploitation_types": ["forced_labour"],
    "narrative": "Recruited with a false job offer; documents withheld.",
    "perpetrator_information": [{"roles": ["recruiter_or_intermediary"]}],
}


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def referral(body: dict[str, Any] | None = None, **routing: Any) -> dict[str, Any]:
    """A valid referral: public-task assistance by default, `routing` overriding fields."""
    doc: dict[str, Any] = {
        "schema_version": "1",
        "referral_type": "nrm_full",
        "urgency": "routine",
        "legal_basis": "public_task",
        "purpose": "assistance",
        "created": iso(clock.time()),
        "body": copy.deepcopy(BODY if body is None else body),
    }
    doc.update(routing)
    return doc


def _by_consent(purpose: str, categories: list[str], retention: str, **to: Any) -> dict[str, Any]:
    """A purpose the person consented to: `to` names the recipients or recipient roles."""
    return {
        "purpose": purpose,
        "lawful_basis": "consent",
        "data_categories": categories,
        "retention": retention,
        **to,
    }


#: What the police's receipt lets the shelter have for its assistance.
ASSISTANCE = _by_consent(
    "assistance", ["contact", "needs", "language", "health"], "P2Y", recipients=["shelter"]
)
#: What it lets the co-ordinator have for identification.
IDENTIFICATION = _by_consent(
    "identification",
    ["demographic", "identity", "exploitation", "case"],
    "P5Y",
    recipient_roles=["coordinator"],
)


def receipt(receipt_id: str, consent_time: float, **overrides: Any) -> dict[str, Any]:
    """A consent receipt the police took at `consent_time`, with no end: assistance by the
    shelter (contact, needs, language, health); `overrides` replace fields."""
    doc: dict[str, Any] = {
        "receipt_id": receipt_id,
        "version": "1",
        "jurisdiction": "GB",
        "consent_time": iso(consent_time),
        "collection_method": "in_person_with_interpreter",
        "language": "en",
        "subject_id": "psn-6b1f0c2d9e8a7b6c5d4e3f2a1b0c9d8e",
        "controllers": [
            {
                "agency": "police",
                "name": "National Police",
                "contact": {
                    "name": "Data Protection Office",
                    "email": "dpo@police.example",
                    "phone": "tel:+44-20-7946-0000",
                    "address": {"addressCountry": "GB"},
                },
            }
        ],
        "notice": {"url": "https://police.example/nrm-notice-v3", "sha256": "ab" * 32},
        "purposes": [copy.deepcopy(ASSISTANCE)],
        "sensitive_categories": ["health"],
        "withdrawal_method": "Tell any caseworker",
        "given_by": {"kind": "person", "interpreter": True, "interpreter_language": "ro"},
    }
    doc.update(copy.deepcopy(overrides))
    return doc


def consent(receipt_id: str, **overrides: Any) -> dict[str, Any]:
    """A live consent receipt recorded by the police a minute ago: assistance by the shelter
    (needs, contact, language, health, identity, demographic) and identification by the
    co-ordinator."""
    now = clock.time()
    assistance = dict(
        ASSISTANCE,
        data_categories=["demographic", "identity", "contact", "language", "health", "needs"],
    )
    return receipt(
        receipt_id,
        now - 60,
        **{
            "purposes": [assistance, IDENTIFICATION],
            "expires": iso(now + 180 * 86400),
            **overrides,
        },
    )
