"""Protection notices (docs/PROTOCOL.md §8.9): what a competent authority signs when a
protection of a presumed victim starts, changes or ends, so that the parties that must
know (immigration, the shelter, the referrer, the co-ordinator) hold the same dated facts.

    notice    = canonical msgpack [1, notice_id, authority, case_id, protection, event,
                                   starts_on, ends_on, reason, at, previous]
    signed    = canonical msgpack [1, notice (bin), signer kid, signature]
    signature = Ed25519(authority signing key, "nrm/v1/protection-notice" || 0x00 || notice)

Two protections: `no-removal` (CETS Art 10(2): nobody is removed from the country while
identification is pending) and `reflection` (Art 13: a recovery and reflection period of at
least 30 days). The notices of one protection of one case form a chain through `previous`:
`check_follows` accepts a notice only as the next link of the chain the receiver holds, so
there are no gaps and no forks. Verification returns the notice or raises. Pure.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Final

from nacl.signing import SigningKey

from . import codec
from .errors import ChainGapError, UnexpectedMessageError
from .key_history import KeyWindow, signing_key_at
from .signed import open_frame, sign_frame
from .subjects import AGENCY_ID_PATTERN

VERSION: Final = 1
LABEL: Final = b"nrm/v1/protection-notice"
MAX_NOTICE_BYTES: Final = 512
MAX_SIGNED_NOTICE_BYTES: Final = 640

NO_REMOVAL: Final = "no-removal"
REFLECTION: Final = "reflection"
PROTECTIONS: Final[tuple[str, ...]] = (NO_REMOVAL, REFLECTION)

STARTED: Final = "started"
EXTENDED: Final = "extended"
ENDING_SOON: Final = "ending-soon"
ENDED: Final = "ended"
NOT_GRANTED: Final = "not-granted"
EVENTS: Final[tuple[str, ...]] = (STARTED, EXTENDED, ENDING_SOON, ENDED, NOT_GRANTED)

#: (protection, event) -> the reason codes it takes; an empty tuple: no reason. A pair not
#: listed is not a notice (no-removal is never extended, nor refused, nor ending soon).
REASONS: Final[Mapping[tuple[str, str], tuple[str, ...]]] = {
    (NO_REMOVAL, STARTED): (),
    (NO_REMOVAL, ENDED): (
        "second-stage-decided",
        "left-process",
        "window-closed",
        "residence-permit-granted",
    ),
    (REFLECTION, STARTED): (),
    (REFLECTION, EXTENDED): ("recovery-needs", "child", "proceedings", "other"),
    (REFLECTION, ENDING_SOON): (),
    (REFLECTION, ENDED): (
        "elapsed",
        "second-stage-decided",
        "public-order",
        "improper-claim",
        "person-left",
    ),
    # The two exceptions CETS Art 13(3) allows.
    (REFLECTION, NOT_GRANTED): ("public-order", "improper-claim"),
}

#: Which event may follow which, per protection (None: the first notice of the chain).
#: No-removal comes on again only through a new first-stage positive decision.
FOLLOWS: Final[Mapping[tuple[str, str | None], frozenset[str]]] = {
    (NO_REMOVAL, None): frozenset({STARTED}),
    (NO_REMOVAL, STARTED): frozenset({ENDED}),
    (NO_REMOVAL, ENDED): frozenset({STARTED}),
    (REFLECTION, None): frozenset({STARTED, NOT_GRANTED}),
    (REFLECTION, STARTED): frozenset({EXTENDED, ENDING_SOON, ENDED}),
    (REFLECTION, EXTENDED): frozenset({EXTENDED, ENDING_SOON, ENDED}),
    (REFLECTION, ENDING_SOON): frozenset({EXTENDED, ENDED}),
}


@dataclass(frozen=True, slots=True)
class Notice(codec.Encoded):
    """One protection notice. The constructor refuses any value the wire format refuses;
    whether it follows the chain a receiver holds is `check_follows`'s."""

    #: A notice's wire form (see the module docstring).
    WIRE: ClassVar[codec.Record] = codec.Record(
        "protection notice",
        VERSION,
        (
            "notice_id",
            "authority",
            "case_id",
            "protection",
            "event",
            "starts_on",
            "ends_on",
            "reason",
            "at",
            "previous",
        ),
    )

    notice_id: str
    authority: str
    case_id: str
    protection: str
    event: str
    starts_on: str
    ends_on: str | None
    reason: str | None
    at: int
    previous: str | None

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise ValueError("invalid protection notice: " + "; ".join(problems))

    @property
    def days(self) -> int | None:
        """The length of the protection from `starts_on` to `ends_on`, in days."""
        if self.ends_on is None:
            return None
        return (_date(self.ends_on) - _date(self.starts_on)).days


def sign_notice(notice: Notice, key: SigningKey) -> bytes:
    """The signed notice bytes."""
    return sign_frame(LABEL, notice.encode(), key)


def verify_notice(data: bytes, *, history: Sequence[KeyWindow]) -> Notice:
    """Decode a signed notice strictly and return it if a signing key of its authority,
    valid at `at` by the key-history rule (PROTOCOL §7.9), signed it. Raises MalformedError,
    UnknownKeyError, RetiredKeyError, RevokedKeyError or BadSignatureError. Whether that
    agency is a competent authority, and whether the notice follows its chain, is the
    caller's (`keys.decision.check_authority` for the role, `check_follows`)."""
    return open_frame(
        data,
        label=LABEL,
        what="protection notice",
        max_bytes=MAX_SIGNED_NOTICE_BYTES,
        max_items=11,
        decode=decode,
        signer=lambda n, kid: signing_key_at(history, agency=n.authority, kid=kid, at=n.at),
    )


def decode(body: bytes) -> Notice:
    """A notice body, strictly decoded; MalformedError otherwise."""
    return Notice.decoded(body, max_bytes=MAX_NOTICE_BYTES, max_items=11)


def check_follows(held: Notice | None, notice: Notice, *, reflection_min_days: int) -> None:
    """Return if `notice` is the next link after `held`, the last notice the receiver holds
    of the same protection of the same case (None: it holds none); UnexpectedMessageError
    naming the rule otherwise.

    The rules: `previous` names `held` (nil when nothing is held); the same authority; the
    event may follow the held one (`FOLLOWS`); a reflection period that starts runs at least
    `reflection_min_days`; an extension ends later than before and keeps the start; an
    ending-soon notice changes no date; time does not go back."""
    if held is not None and (held.case_id, held.protection) != (
        notice.case_id,
        notice.protection,
    ):
        raise ValueError("held must be a notice of the same case and protection")
    if notice.previous is not None and notice.previous != (
        None if held is None else held.notice_id
    ):
        raise ChainGapError("a protection notice following one this agency does not hold")
    if notice.previous is None and held is not None:
        raise UnexpectedMessageError("a protection notice that starts a chain already held")
    allowed = FOLLOWS.get((notice.protection, None if held is None else held.event), frozenset())
    if notice.event not in allowed:
        raise UnexpectedMessageError(
            f"a {notice.protection} notice {notice.event} cannot follow "
            f"{'nothing' if held is None else held.event}"
        )
    if held is not None and (notice.authority != held.authority or notice.at < held.at):
        raise UnexpectedMessageError("a protection notice from another authority, or earlier")
    days = notice.days
    starts = notice.protection == REFLECTION and notice.event == STARTED
    if starts and (days is None or days < reflection_min_days):
        raise UnexpectedMessageError(
            f"a reflection period runs at least {reflection_min_days} days"
        )
    if held is not None and notice.event in (EXTENDED, ENDING_SOON):
        if notice.starts_on != held.starts_on:
            raise UnexpectedMessageError("a reflection period keeps its start")
        assert notice.ends_on is not None and held.ends_on is not None  # reflection: dated
        if notice.event == EXTENDED and _date(notice.ends_on) <= _date(held.ends_on):
            raise UnexpectedMessageError("an extension ends later than the period did")
        if notice.event == ENDING_SOON and notice.ends_on != held.ends_on:
            raise UnexpectedMessageError("an ending-soon notice changes no date")


def _date(text: str) -> datetime.date:
    return datetime.date.fromisoformat(text)


def _full_date(value: object) -> bool:
    """An RFC 3339 full-date, `YYYY-MM-DD`, that exists."""
    if not (isinstance(value, str) and len(value) == 10 and value[4] == value[7] == "-"):
        return False
    try:
        return _date(value).isoformat() == value
    except ValueError:
        return False


def _hex32(value: object) -> bool:
    return isinstance(value, str) and codec.HEX32.fullmatch(value) is not None


def _problems(n: Notice) -> list[str]:
    p: list[str] = []
    for name in ("notice_id", "case_id"):
        if not _hex32(getattr(n, name)):
            p.append(f"{name} must be 32 lowercase hex digits")
    if not (isinstance(n.authority, str) and AGENCY_ID_PATTERN.fullmatch(n.authority)):
        p.append("authority must be an agency id")
    reasons = REASONS.get((n.protection, n.event))
    if reasons is None:
        p.append("protection and event must be one of the pairs of PROTOCOL §8.9")
    elif reasons and n.reason not in reasons:
        p.append(f"a {n.protection} {n.event} notice takes one of: {', '.join(reasons)}")
    elif not reasons and n.reason is not None:
        p.append(f"a {n.protection} {n.event} notice has no reason")
    if not _full_date(n.starts_on):
        p.append("starts_on must be a full date (YYYY-MM-DD)")
    if n.ends_on is None:
        if n.protection == REFLECTION:
            p.append("a reflection period has an end date")
    elif not _full_date(n.ends_on):
        p.append("ends_on must be nil or a full date (YYYY-MM-DD)")
    elif _full_date(n.starts_on) and n.ends_on < n.starts_on:
        p.append("ends_on must not be before starts_on")
    if type(n.at) is not int or not 0 <= n.at < 1 << 63:
        p.append("at must be Unix seconds")
    if n.previous is not None and (not _hex32(n.previous) or n.previous == n.notice_id):
        p.append("previous must be nil or another notice's id")
    if (n.previous is None) != (n.event in (STARTED, NOT_GRANTED)) and not (
        n.protection == NO_REMOVAL and n.event == STARTED
    ):
        p.append("only the first notice of a chain has no previous")
    return p


__all__: Sequence[str] = [
    "LABEL",
    "Notice",
    "check_follows",
    "decode",
    "sign_notice",
    "verify_notice",
]
