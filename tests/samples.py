"""Test documents: the fictional examples the demo uses too."""

from nrm.examples import BODY, consent, iso, referral

__all__ = ["BODY", "consent", "iso", "referral"]
