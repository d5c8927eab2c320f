"""Identification decisions (keys/decision.py, PROTOCOL §8.7): the wire rules, the reason
beside a decision, the second-stage rule and verification under a key history that has
moved on. The decision-* vectors cover one failure each; these are the scenario tables."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import pytest
from nacl.signing import SigningKey

from keys.decision import (
    REASON_CODES,
    Decision,
    check_reason,
    check_second_stage,
    decode,
    reason_digest,
    sign_decision,
    verify_decision,
)
from keys.errors import (
    BadDecisionError,
    BadSignatureError,
    MalformedError,
    RevokedKeyError,
    TooEarlyError,
    UnknownKeyError,
    UnknownReasonCodeError,
)
from keys.identity import signing_kid
from keys.key_history import KeyWindow

T0 = 1_767_225_600
DAY = 86_400
OLD = SigningKey.generate()
NEW = SigningKey.generate()
SALT = os.urandom(16)


def window(key: SigningKey, start: int, until: int | None, revoked: int | None = None) -> KeyWindow:
    return KeyWindow(
        agency="authority",
        kid=signing_kid(key.verify_key),
        public=bytes(key.verify_key),
        valid_from=start,
        valid_until=until,
        revoked_at=revoked,
        listed_version=1,
    )


def decision(**changes: Any) -> Decision:
    base = Decision(
        decision_id=os.urandom(16).hex(),
        authority="authority",
        case_id="c" * 32,
        stage="first",
        outcome="positive",
        reason_digest=None,
        supersedes=None,
        decided_at=T0 + DAY,
        age_route="adult",
    )
    return dataclasses.replace(base, **changes)


def negative(reason: str, **changes: Any) -> Decision:
    return decision(outcome="negative", reason_digest=reason_digest(SALT, reason), **changes)


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"decision_id": "A" * 32}, "decision_id"),
        ({"case_id": "c" * 31}, "case_id"),
        ({"authority": "Authority"}, "authority"),
        ({"stage": "third"}, "stage"),
        ({"outcome": "maybe"}, "outcome"),
        ({"outcome": "negative"}, "reason digest"),
        ({"reason_digest": bytes(32)}, "only a negative"),
        ({"supersedes": "z" * 32}, "supersedes"),
        ({"decided_at": True}, "decided_at"),
        ({"decided_at": -1}, "decided_at"),
        ({"age_route": "age_disputed"}, "age_route"),
    ],
)
def test_a_decision_outside_the_wire_rules_cannot_be_made(
    changes: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        decision(**changes)


def test_a_decision_cannot_supersede_itself() -> None:
    d = decision()
    with pytest.raises(ValueError, match="supersedes"):
        dataclasses.replace(d, supersedes=d.decision_id)


def test_encoding_round_trips_and_is_bounded() -> None:
    d = negative("duplicate", supersedes=os.urandom(16).hex())
    assert decode(d.encode()) == d
    with pytest.raises(MalformedError):
        decode(d.encode() + b"\x00")


@pytest.mark.parametrize(
    ("name", "history", "refused"),
    [
        ("signed by the key of the day: verifies", [window(OLD, T0, None)], None),
        (
            "the authority rotated since: the old key's window still covers decided_at",
            [window(OLD, T0, T0 + 2 * DAY), window(NEW, T0 + 2 * DAY, None)],
            None,
        ),
        ("only the new key is known: unknown key", [window(NEW, T0, None)], UnknownKeyError),
        (
            "the old key was revoked before decided_at",
            [window(OLD, T0, None, revoked=T0 + DAY - 1)],
            RevokedKeyError,
        ),
        (
            "revoked only after decided_at: still verifies",
            [window(OLD, T0, None, revoked=T0 + 5 * DAY)],
            None,
        ),
    ],
)
def test_verification_follows_the_key_history(
    name: str, history: list[KeyWindow], refused: type[Exception] | None
) -> None:
    d = decision()
    signed = sign_decision(d, OLD)
    if refused is None:
        assert verify_decision(signed, history=history) == d, name
    else:
        with pytest.raises(refused):
            verify_decision(signed, history=history)


def test_a_decision_signed_by_another_agency_s_key_does_not_verify() -> None:
    other = SigningKey.generate()
    forged = sign_decision(decision(), other)
    history = [window(OLD, T0, None), dataclasses.replace(window(other, T0, None), agency="x")]
    with pytest.raises(UnknownKeyError):
        verify_decision(forged, history=history)
    # The authority's own kid over someone else's signature: the signature fails.
    body = bytearray(sign_decision(decision(), OLD))
    body[-2] ^= 0x40
    with pytest.raises(BadSignatureError):
        verify_decision(bytes(body), history=[window(OLD, T0, None)])


@pytest.mark.parametrize("stage", sorted(REASON_CODES))
def test_every_reason_of_its_stage_checks_and_no_other(stage: str) -> None:
    for reason in REASON_CODES[stage]:
        check_reason(negative(reason, stage=stage), reason=reason, salt=SALT)
    other = next(r for s in REASON_CODES for r in REASON_CODES[s] if r not in REASON_CODES[stage])
    with pytest.raises(UnknownReasonCodeError):
        check_reason(negative(other, stage=stage), reason=other, salt=SALT)


@pytest.mark.parametrize(
    ("name", "d", "reason", "salt", "refused"),
    [
        ("positive, nothing beside", decision(), None, None, None),
        (
            "negative, nothing beside (a recipient not told why)",
            negative("duplicate"),
            None,
            None,
            None,
        ),
        ("positive with a reason", decision(), "duplicate", SALT, BadDecisionError),
        ("reason without salt", negative("duplicate"), "duplicate", None, BadDecisionError),
        ("salt without reason", negative("duplicate"), None, SALT, BadDecisionError),
        ("another salt", negative("duplicate"), "duplicate", os.urandom(16), BadDecisionError),
        ("a short salt", negative("duplicate"), "duplicate", SALT[:15], BadDecisionError),
        (
            "means on the child route",
            negative("means-not-established", stage="second", age_route="child"),
            "means-not-established",
            SALT,
            BadDecisionError,
        ),
        (
            "means on the adult route",
            negative("means-not-established", stage="second"),
            "means-not-established",
            SALT,
            None,
        ),
    ],
)
def test_the_reason_beside_a_decision(
    name: str, d: Decision, reason: str | None, salt: bytes | None, refused: type[Exception] | None
) -> None:
    if refused is None:
        check_reason(d, reason=reason, salt=salt)
    else:
        with pytest.raises(refused):
            check_reason(d, reason=reason, salt=salt)


@pytest.mark.parametrize(
    ("name", "first", "second_changes", "refused"),
    [
        ("30 days after a positive first stage", decision(), {"decided_at": T0 + 31 * DAY}, None),
        ("a day early", decision(), {"decided_at": T0 + 30 * DAY}, TooEarlyError),
        (
            "another case",
            decision(),
            {"case_id": "d" * 32, "decided_at": T0 + 40 * DAY},
            BadDecisionError,
        ),
        (
            "after a negative first stage",
            negative("duplicate"),
            {"decided_at": T0 + 40 * DAY},
            BadDecisionError,
        ),
        (
            "a first stage after a first stage",
            decision(),
            {"stage": "first", "decided_at": T0 + 40 * DAY},
            BadDecisionError,
        ),
    ],
)
def test_the_second_stage_follows_a_positive_first_after_the_interval(
    name: str, first: Decision, second_changes: dict[str, Any], refused: type[Exception] | None
) -> None:
    second = decision(**{"stage": "second", **second_changes})
    if refused is None:
        check_second_stage(first, second, min_days=30)
    else:
        with pytest.raises(refused):
            check_second_stage(first, second, min_days=30)
