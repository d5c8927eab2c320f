"""Identification decisions (docs/PROTOCOL.md §8.7): what a competent authority signs when it
decides, at the first ("reasonable grounds") or second ("conclusive grounds") stage, whether
a person is a victim of trafficking.

    decision  = canonical msgpack [1, decision_id, authority, case_id, stage, outcome,
                                   reason_digest, supersedes, decided_at, age_route]
    signed    = canonical msgpack [1, decision (bin), signer kid, signature]
    signature = Ed25519(authority signing key, "nrm/v1/identification-decision" || 0x00 ||
                        decision)
    reason_digest = SHA-256("nrm/v1/decision-reason" || 0x00 || salt (16 bytes) || reason)

One signature serves every recipient, but not every recipient may learn why a person was
refused, so a negative decision carries only a salted digest of its reason code; a recipient
that may learn it gets `(salt, reason)` beside the signed decision and checks it with
`check_reason`. Verification returns the decision or raises. Pure.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Final, Protocol

from nacl.signing import SigningKey

from . import codec
from .errors import BadDecisionError, NotForThisRoleError, TooEarlyError, UnknownReasonCodeError
from .key_history import KeyWindow, signing_key_at
from .roles import DECISION_STAGES
from .signed import decode_frame, open_frame, sign_frame
from .subjects import AGENCY_ID_PATTERN

VERSION: Final = 1
LABEL: Final = b"nrm/v1/identification-decision"
REASON_LABEL: Final = b"nrm/v1/decision-reason"
MAX_DECISION_BYTES: Final = 512
MAX_SIGNED_DECISION_BYTES: Final = 640
SALT_BYTES: Final = 16
DIGEST_BYTES: Final = 32

STAGES: Final[tuple[str, ...]] = DECISION_STAGES
FIRST, SECOND = STAGES
POSITIVE: Final = "positive"
NEGATIVE: Final = "negative"
OUTCOMES: Final[tuple[str, ...]] = (POSITIVE, NEGATIVE)
#: Which assessment guide and rules applied; an age-disputed person is a child (CETS Art 10(3)).
AGE_ROUTES: Final[tuple[str, ...]] = ("adult", "child")

#: The closed reason codes of a negative decision, per stage (PROTOCOL §8.7).
REASON_CODES: Final[Mapping[str, tuple[str, ...]]] = {
    FIRST: ("no-indicators", "insufficient-information", "no-jurisdiction", "duplicate"),
    SECOND: (
        "act-not-established",
        "means-not-established",
        "purpose-not-established",
        "insufficient-information",
        "duplicate",
    ),
}
#: Means are not an element of trafficking in children (CETS Art 4(c)).
NOT_FOR_CHILDREN: Final = frozenset({"means-not-established"})

_DAY: Final = 86_400


@dataclass(frozen=True, slots=True)
class Decision(codec.Encoded):
    """One identification decision of one case. The constructor refuses any value the wire
    format refuses, so every Decision is well formed; who may make it is the verifier's."""

    #: A decision's wire form (see the module docstring).
    WIRE: ClassVar[codec.Record] = codec.Record(
        "decision",
        VERSION,
        (
            "decision_id",
            "authority",
            "case_id",
            "stage",
            "outcome",
            "reason_digest",
            "supersedes",
            "decided_at",
            "age_route",
        ),
    )

    decision_id: str
    authority: str
    case_id: str
    stage: str
    outcome: str
    reason_digest: bytes | None
    supersedes: str | None
    decided_at: int
    age_route: str

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise ValueError("invalid decision: " + "; ".join(problems))


def reason_digest(salt: bytes, reason: str) -> bytes:
    """The digest a negative decision signs in place of its reason code."""
    if not (isinstance(salt, bytes) and len(salt) == SALT_BYTES):
        raise ValueError(f"salt must be {SALT_BYTES} bytes")
    return hashlib.sha256(REASON_LABEL + b"\x00" + salt + reason.encode("utf-8")).digest()


def sign_decision(decision: Decision, key: SigningKey) -> bytes:
    """The signed decision bytes."""
    return sign_frame(LABEL, decision.encode(), key)


def verify_decision(data: bytes, *, history: Sequence[KeyWindow]) -> Decision:
    """Decode a signed decision strictly and return it if a signing key of its authority,
    valid at `decided_at` by the key-history rule (PROTOCOL §7.9), signed it.

    Raises MalformedError; UnknownKeyError, RetiredKeyError or RevokedKeyError for the key;
    BadSignatureError. Whether that authority may decide that stage is the caller's (it
    needs the directory at `decided_at`)."""
    return open_frame(
        data,
        label=LABEL,
        what="decision",
        max_bytes=MAX_SIGNED_DECISION_BYTES,
        max_items=10,
        decode=decode,
        signer=lambda d, kid: signing_key_at(history, agency=d.authority, kid=kid, at=d.decided_at),
    )


def claimed(data: bytes) -> Decision:
    """The decision inside a signed decision, strictly decoded but NOT verified
    (MalformedError): what it claims, to look up who must have signed it."""
    body, _, _ = decode_frame(
        data,
        max_bytes=MAX_SIGNED_DECISION_BYTES,
        max_items=10,
        what="decision",
        body_name="decision",
    )
    return decode(body)


class Decider(Protocol):
    """What the directory says of a decision's authority (keys.directory.AgencyEntry)."""

    def decides_stage(self, stage: str) -> bool: ...


def check_authority(decision: Decision, authority: Decider) -> None:
    """Return if `authority`, the directory's entry for `decision.authority` in the directory
    trusted at `decided_at`, is a competent authority that decides the decision's stage;
    NotForThisRoleError otherwise."""
    if not authority.decides_stage(decision.stage):
        raise NotForThisRoleError(
            f"{decision.authority} does not decide the {decision.stage} stage"
        )


def decode(body: bytes) -> Decision:
    """A decision body, strictly decoded; MalformedError otherwise."""
    return Decision.decoded(body, max_bytes=MAX_DECISION_BYTES, max_items=10)


def check_reason(decision: Decision, *, reason: str | None, salt: bytes | None) -> None:
    """Return if `(reason, salt)`, as received beside `decision`, belong to it: both absent,
    or (negative decisions only) both present and matching its digest.

    Raises UnknownReasonCodeError for a code outside the stage's list and BadDecisionError
    for anything else (a mismatch, a reason on a positive decision, a means reason on the
    child route)."""
    if reason is None and salt is None:
        return
    if reason is None or salt is None:
        raise BadDecisionError("a decision's reason and salt come together")
    if decision.reason_digest is None:
        raise BadDecisionError("a positive decision has no reason")
    if not isinstance(reason, str) or reason not in REASON_CODES[decision.stage]:
        raise UnknownReasonCodeError(
            f"a {decision.stage}-stage reason must be one of: "
            + ", ".join(REASON_CODES[decision.stage])
        )
    if not (isinstance(salt, bytes) and len(salt) == SALT_BYTES):
        raise BadDecisionError(f"a decision's salt is {SALT_BYTES} bytes")
    if not hmac.compare_digest(reason_digest(salt, reason), decision.reason_digest):
        raise BadDecisionError("the reason does not match the decision's digest")
    if decision.age_route == "child" and reason in NOT_FOR_CHILDREN:
        raise BadDecisionError(f"{reason} is not a reason on the child route")


def check_second_stage(first: Decision, second: Decision, *, min_days: int) -> None:
    """Return if `second` may follow `first` in their case: a positive first stage of the
    same case, at least `min_days` (the policy's `second_stage_min_days`) earlier.

    Raises BadDecisionError when they do not belong together and TooEarlyError before the
    interval."""
    if first.stage != FIRST or second.stage != SECOND:
        raise BadDecisionError("a second-stage decision follows a first-stage one")
    if first.case_id != second.case_id:
        raise BadDecisionError("the decisions belong to different cases")
    if first.outcome != POSITIVE:
        raise BadDecisionError("a second stage follows a positive first stage only")
    if second.decided_at < first.decided_at + min_days * _DAY:
        raise TooEarlyError(
            f"a second-stage decision comes at least {min_days} days after the first stage"
        )


def _hex32(value: object) -> bool:
    return isinstance(value, str) and codec.HEX32.fullmatch(value) is not None


def _problems(d: Decision) -> list[str]:
    p: list[str] = []
    for name in ("decision_id", "case_id"):
        if not _hex32(getattr(d, name)):
            p.append(f"{name} must be 32 lowercase hex digits")
    if not (isinstance(d.authority, str) and AGENCY_ID_PATTERN.fullmatch(d.authority)):
        p.append("authority must be an agency id")
    if d.stage not in STAGES:
        p.append("stage must be first or second")
    if d.outcome not in OUTCOMES:
        p.append("outcome must be positive or negative")
    if d.outcome == NEGATIVE and not (
        isinstance(d.reason_digest, bytes) and len(d.reason_digest) == DIGEST_BYTES
    ):
        p.append(f"a negative decision carries a {DIGEST_BYTES}-byte reason digest")
    if d.outcome != NEGATIVE and d.reason_digest is not None:
        p.append("only a negative decision carries a reason digest")
    if d.supersedes is not None and (not _hex32(d.supersedes) or d.supersedes == d.decision_id):
        p.append("supersedes must be nil or another decision's id")
    if type(d.decided_at) is not int or not 0 <= d.decided_at < 1 << 63:
        p.append("decided_at must be Unix seconds")
    if d.age_route not in AGE_ROUTES:
        p.append("age_route must be adult or child")
    return p


__all__: Sequence[str] = [
    "LABEL",
    "REASON_LABEL",
    "Decision",
    "check_authority",
    "check_reason",
    "check_second_stage",
    "claimed",
    "decode",
    "reason_digest",
    "sign_decision",
    "verify_decision",
]
