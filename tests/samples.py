"""Test documents: the fictional examples the demo uses too."""

from typing import Any

from nrm.examples import BODY, consent, iso, referral

__all__ = ["BODY", "ID_BODY", "consent", "iso", "referral"]

#: A body the identification purpose covers in full for the co-ordinator.
ID_BODY: dict[str, Any] = {
    "age_category": "adult",
    "names": {"given_names": "Mira", "family_name": "Example"},
    "exploitation_types": ["forced_labour"],
    "nrm_stage": "first_responder_referral",
    "narrative": "Recruited with a false job offer; documents withheld.",
}
