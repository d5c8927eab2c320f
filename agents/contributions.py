"""Statistics contributions to the rapporteur (docs/PROTOCOL.md §8.11): the format, the
mapping from a referral to the person's combination, and an authority's contribution for a
month computed from its cases. Pure: no I/O, no clock.

The demographic breakdown (sex, age group, form of exploitation) never reaches the ledger
(docs/proposals/nrm-process.md §12.2): it travels only inside the body built here, sealed to
the rapporteur. Nothing here puts a received value into an error message.
"""

from __future__ import annotations

import base64
import calendar
import datetime
import itertools
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from keys import Limits, codec
from keys.audit import decode_signed_event
from keys.envelope import envelope_hash
from keys.errors import (
    MisdatedError,
    NotAnAuthorityError,
    NotForThisRoleError,
    SchemaInvalidError,
    UnexpectedMessageError,
    UnknownMemberError,
    UntrustedInputError,
)
from keys.ledger_entry import LedgerEntry
from keys.roles import COMPETENT_AUTHORITY, RAPPORTEUR
from keys.subjects import AGENCY_ID_PATTERN

from .referral_versions import as_v2

__all__ = [
    "AGE_GROUPS",
    "FORMS",
    "INTERVALS",
    "SEXES",
    "STATISTICS_CONTRIBUTION",
    "CaseFacts",
    "Cell",
    "Contribution",
    "CrossChecked",
    "DecisionFact",
    "Duration",
    "EnvelopeMismatchError",
    "NotInLedgerError",
    "OpensToOtherBodyError",
    "Person",
    "check_sender",
    "compute",
    "cross_check",
    "decode_at",
    "due_at",
    "period_of",
    "periods_due",
    "person_of",
    "verify_held",
]

#: The message kind.
STATISTICS_CONTRIBUTION: Final = "statistics-contribution"

STAGES: Final = ("first", "second")
OUTCOMES: Final = ("positive", "negative")
SEXES: Final = ("female", "male", "other", "unknown")
AGE_GROUPS: Final = ("child", "adult", "unknown")
FORMS: Final = ("sexual_exploitation", "forced_labour", "other", "mixed", "unknown")
INTERVALS: Final = ("referral-to-first", "first-to-second")
UNKNOWN: Final = "unknown"
MIXED: Final = "mixed"

#: HTCDS 2.0 prs_Gender -> sex (§8.11); absent is `unknown`.
SEX_OF_GENDER: Final[Mapping[str, str]] = {
    "feminine": "female",
    "masculine": "male",
    "transgender_feminine": "other",
    "transgender_masculine": "other",
    "non_conforming": "other",
    "non_specified_unknown": UNKNOWN,
}
#: HTCDS 2.0 age category -> age group; a disputed age counts as a child (CETS Art 10(3)).
AGE_GROUP_OF_CATEGORY: Final[Mapping[str, str]] = {
    "adult": "adult",
    "child": "child",
    "age_disputed": "child",
}
#: HTCDS 2.0 vic_TypeOfExploitation -> form; every code not listed is `other`.
FORM_OF_EXPLOITATION: Final[Mapping[str, str]] = {
    "sexual_exploitation": "sexual_exploitation",
    "forced_labour": "forced_labour",
    "child_labour": "forced_labour",
    "servitude": "forced_labour",
}

MAX_CELLS: Final = len(STAGES) * len(OUTCOMES) * len(SEXES) * len(AGE_GROUPS) * len(FORMS)
MAX_DURATIONS: Final = 4096
MAX_COUNT: Final = 1_000_000_000
MAX_DAYS: Final = 36_500
_DAY: Final = 86_400
_PERIOD = re.compile(r"^[0-9]{4}-(?:0[1-9]|1[0-2])$")
_MEMBERS: Final = frozenset({"period", "authority", "cells", "durations"})
_CELL_MEMBERS: Final = frozenset({"stage", "outcome", "sex", "age_group", "form", "count"})
_DURATION_MEMBERS: Final = frozenset({"interval", "sex", "age_group", "form", "days", "count"})


# --- the format ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cell:
    stage: str
    outcome: str
    sex: str
    age_group: str
    form: str
    count: int

    def key(self) -> tuple[str, str, str, str, str]:
        return (self.stage, self.outcome, self.sex, self.age_group, self.form)


@dataclass(frozen=True, slots=True)
class Duration:
    interval: str
    sex: str
    age_group: str
    form: str
    days: int
    count: int

    def key(self) -> tuple[str, str, str, str, int]:
        return (self.interval, self.sex, self.age_group, self.form, self.days)


@dataclass(frozen=True, slots=True)
class Contribution:
    """A `statistics-contribution` body: one authority's exact counts for one month."""

    period: str
    authority: str
    cells: tuple[Cell, ...]
    durations: tuple[Duration, ...]

    def encode(self) -> bytes:
        """The canonical JSON of this body (PROTOCOL §1.3), items in their order."""
        return codec.canonical_json(
            {
                "authority": self.authority,
                "cells": [
                    {
                        "age_group": c.age_group,
                        "count": c.count,
                        "form": c.form,
                        "outcome": c.outcome,
                        "sex": c.sex,
                        "stage": c.stage,
                    }
                    for c in self.cells
                ],
                "durations": [
                    {
                        "age_group": d.age_group,
                        "count": d.count,
                        "days": d.days,
                        "form": d.form,
                        "interval": d.interval,
                        "sex": d.sex,
                    }
                    for d in self.durations
                ],
                "period": self.period,
            }
        )

    @classmethod
    def decode(cls, body: bytes, *, limits: Limits) -> Contribution:
        """The body decoded by PROTOCOL §8.11 in order, or the error of its first failure:
        §6.4's JSON steps (MalformedError, TooDeepError, OutOfRangeError); a member too
        many (UnknownMemberError); anything missing, of the wrong form, out of its list or
        bounds, or out of order (SchemaInvalidError)."""
        doc = codec.parse_json(
            body,
            max_bytes=limits.max_body_bytes,
            max_depth=limits.max_body_depth,
            max_integer=limits.max_json_integer,
            what="statistics contribution",
        )
        if not isinstance(doc, dict):
            raise SchemaInvalidError("a statistics contribution must be a JSON object")
        _members(doc, _MEMBERS, "the contribution")
        period, authority = doc["period"], doc["authority"]
        if not isinstance(period, str) or not _PERIOD.fullmatch(period) or period < "2000":
            raise SchemaInvalidError("period must be YYYY-MM, from 2000")
        if not isinstance(authority, str) or not AGENCY_ID_PATTERN.fullmatch(authority):
            raise SchemaInvalidError("authority must be an agency id")
        cells = tuple(_cell(item) for item in _items(doc["cells"], MAX_CELLS, "cells"))
        durations = tuple(
            _duration(item) for item in _items(doc["durations"], MAX_DURATIONS, "durations")
        )
        _in_order([c.key() for c in cells], "cells")
        _in_order([d.key() for d in durations], "durations")
        return cls(period, authority, cells, durations)

    def totals(self) -> dict[tuple[str, str], int]:
        """The decisions counted per (stage, outcome): what the ledger's cross-check
        compares (docs/proposals/nrm-process.md §12.3)."""
        out: Counter[tuple[str, str]] = Counter()
        for c in self.cells:
            out[(c.stage, c.outcome)] += c.count
        return dict(out)


def _members(doc: Mapping[str, Any], names: frozenset[str], what: str) -> None:
    extra = sum(1 for name in doc if name not in names)
    if extra:  # the names are not repeated: they may be data
        raise UnknownMemberError(f"{what} has {extra} member(s) its format does not define")
    if set(doc) != names:
        raise SchemaInvalidError(f"{what} must have exactly " + ", ".join(sorted(names)))


def _items(value: object, most: int, what: str) -> list[Mapping[str, Any]]:
    if not isinstance(value, list) or len(value) > most:
        raise SchemaInvalidError(f"{what} must be an array of at most {most} items")
    for item in value:
        if not isinstance(item, dict):
            raise SchemaInvalidError(f"every item of {what} must be an object")
    return value


def _code(item: Mapping[str, Any], name: str, codes: Sequence[str], what: str) -> str:
    value = item[name]
    if not isinstance(value, str) or value not in codes:
        raise SchemaInvalidError(f"{what}.{name} must be one of: " + ", ".join(codes))
    return value


def _number(item: Mapping[str, Any], name: str, low: int, high: int, what: str) -> int:
    value = item[name]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SchemaInvalidError(f"{what}.{name} must be an integer from {low} to {high}")
    return value


def _cell(item: Mapping[str, Any]) -> Cell:
    _members(item, _CELL_MEMBERS, "a cell")
    return Cell(
        stage=_code(item, "stage", STAGES, "cells"),
        outcome=_code(item, "outcome", OUTCOMES, "cells"),
        sex=_code(item, "sex", SEXES, "cells"),
        age_group=_code(item, "age_group", AGE_GROUPS, "cells"),
        form=_code(item, "form", FORMS, "cells"),
        count=_number(item, "count", 1, MAX_COUNT, "cells"),
    )


def _duration(item: Mapping[str, Any]) -> Duration:
    _members(item, _DURATION_MEMBERS, "a duration")
    return Duration(
        interval=_code(item, "interval", INTERVALS, "durations"),
        sex=_code(item, "sex", SEXES, "durations"),
        age_group=_code(item, "age_group", AGE_GROUPS, "durations"),
        form=_code(item, "form", FORMS, "durations"),
        days=_number(item, "days", 0, MAX_DAYS, "durations"),
        count=_number(item, "count", 1, MAX_COUNT, "durations"),
    )


_Key = tuple[str, str, str, str, str] | tuple[str, str, str, str, int]


def _in_order(keys: Sequence[_Key], what: str) -> None:
    if any(a >= b for a, b in itertools.pairwise(keys)):
        raise SchemaInvalidError(f"{what} must be sorted, each combination once")


# --- the receiver's checks -----------------------------------------------------------------


def decode_at(body: bytes, roles: Collection[str], *, limits: Limits) -> Contribution:
    """§8.11 for this kind at an agency of `roles`: only a rapporteur receives it
    (`not-for-this-role`), then the body decodes strictly."""
    if isinstance(roles, str):
        raise TypeError("roles must be a collection of role names")
    if RAPPORTEUR not in roles:
        raise NotForThisRoleError("statistics contributions go to the rapporteur only")
    return Contribution.decode(body, limits=limits)


def check_sender(
    contribution: Contribution,
    *,
    sender: str,
    sender_roles: Collection[str],
    created: int,
    skew: int,
) -> None:
    """The checks of §8.11 after decoding that need the envelope: a competent authority
    (`not-an-authority`) sending its own (`unexpected`) for a month that has ended
    (`misdated`). The check against what is held is the storage's."""
    if isinstance(sender_roles, str):
        raise TypeError("sender_roles must be a collection of role names")
    if COMPETENT_AUTHORITY not in sender_roles:
        raise NotAnAuthorityError("a statistics contribution comes from a competent authority")
    if contribution.authority != sender:
        raise UnexpectedMessageError("a statistics contribution comes from its own authority")
    if created + skew < period_end(contribution.period):
        raise MisdatedError("a statistics contribution of a month that has not ended")


# --- periods -------------------------------------------------------------------------------


def period_of(at: int) -> str:
    """The month (UTC) of Unix time `at`, as `YYYY-MM`."""
    return datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m")


def period_start(period: str) -> int:
    year, month = int(period[:4]), int(period[5:])
    return calendar.timegm((year, month, 1, 0, 0, 0))


def period_end(period: str) -> int:
    """The first second after the month."""
    year, month = int(period[:4]), int(period[5:])
    return calendar.timegm((year + month // 12, month % 12 + 1, 1, 0, 0, 0))


def due_at(period: str, grace_days: int) -> int:
    """When the contribution of `period` is due: `grace_days` after the month ended."""
    return period_end(period) + grace_days * _DAY


def periods_due(first: int, now: int, grace_days: int) -> list[str]:
    """Every month from the one holding `first` whose contribution is due at `now`, oldest
    first."""
    out: list[str] = []
    period = period_of(first)
    while due_at(period, grace_days) <= now:
        out.append(period)
        period = period_of(period_end(period))
    return out


# --- the computation -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Person:
    sex: str
    age_group: str
    form: str


def person_of(referral: Mapping[str, Any] | None, *, age_route: str) -> Person:
    """The person's combination (§8.11) from the opening referral document as the authority
    holds it (schema version 1 or 2), or None once erased: then only the case's own
    `age_route` is known."""
    if referral is None:
        return Person(UNKNOWN, AGE_GROUP_OF_CATEGORY.get(age_route, UNKNOWN), UNKNOWN)
    body = as_v2(referral)["body"]
    sex = SEX_OF_GENDER.get(body.get("gender", ""), UNKNOWN)
    age_group = AGE_GROUP_OF_CATEGORY.get(body.get("age_category", ""), UNKNOWN)
    types = body.get("exploitation_types") or []
    forms = {FORM_OF_EXPLOITATION.get(code, "other") for code in types}
    form = UNKNOWN if not forms else MIXED if len(forms) > 1 else forms.pop()
    return Person(sex, age_group, form)


@dataclass(frozen=True, slots=True)
class DecisionFact:
    stage: str
    outcome: str
    decided_at: int


@dataclass(frozen=True, slots=True)
class CaseFacts:
    """What the computation needs of one case of the authority."""

    person: Person
    opened_at: int
    decisions: tuple[DecisionFact, ...]


def compute(period: str, authority: str, cases: Iterable[CaseFacts]) -> Contribution:
    """`authority`'s contribution for `period` (§8.11) from its cases, within the format's
    bounds: durations that would pass MAX_DURATIONS entries have their days rounded down to
    a multiple of the smallest power of two that brings them within it."""
    start, end = period_start(period), period_end(period)
    cells: Counter[tuple[str, str, str, str, str]] = Counter()
    durations: Counter[tuple[str, str, str, str, int]] = Counter()
    for case in cases:
        p = case.person
        for d in case.decisions:
            if start <= d.decided_at < end:
                cells[(d.stage, d.outcome, p.sex, p.age_group, p.form)] += 1
        first = min((d.decided_at for d in case.decisions if d.stage == "first"), default=None)
        second = min((d.decided_at for d in case.decisions if d.stage == "second"), default=None)
        for interval, began, ended in (
            ("referral-to-first", case.opened_at, first),
            ("first-to-second", first, second),
        ):
            if began is None or ended is None or not start <= ended < end or ended < began:
                continue
            days = min((ended - began) // _DAY, MAX_DAYS)
            durations[(interval, p.sex, p.age_group, p.form, days)] += 1
    width = 1
    while len(durations) > MAX_DURATIONS:  # within the bound at width 2048 whatever the cases
        width *= 2
        durations = _coarsened(durations, width)
    return Contribution(
        period=period,
        authority=authority,
        cells=tuple(Cell(*key, count) for key, count in sorted(cells.items())),
        durations=tuple(Duration(*key, count) for key, count in sorted(durations.items())),
    )


def _coarsened(
    durations: Counter[tuple[str, str, str, str, int]], width: int
) -> Counter[tuple[str, str, str, str, int]]:
    """The histogram with each `days` rounded down to a multiple of `width` (§8.11: a month
    whose durations would pass MAX_DURATIONS entries)."""
    out: Counter[tuple[str, str, str, str, int]] = Counter()
    for (interval, sex, age_group, form, days), count in durations.items():
        out[(interval, sex, age_group, form, days - days % width)] += count
    return out


# --- the rapporteur's cross-check against the ledger -----------------------------------------

#: The audit kind the ledger holds once per decision (PROTOCOL §9.0).
DECIDED: Final = "identification.decided"


@dataclass(frozen=True, slots=True)
class Mismatch:
    """A stage and outcome whose decisions the contribution and the ledger count apart."""

    stage: str
    outcome: str
    contributed: int
    ledger: int


@dataclass(frozen=True, slots=True)
class CrossChecked:
    """One contribution judged against the ledger: accepted when nothing is apart, else
    refused `contribution-mismatch` (docs/proposals/nrm-process.md §12.3)."""

    authority: str
    period: str
    mismatches: tuple[Mismatch, ...]

    @property
    def ok(self) -> bool:
        return not self.mismatches

    @property
    def reason(self) -> str | None:
        return None if self.ok else "contribution-mismatch"


def ledger_counts(entries: Iterable[Mapping[str, Any]]) -> Counter[tuple[str, str, str, str]]:
    """The `identification.decided` entries of the ledger (its `/v1/events` items: `kind`,
    `agency`, `time`, `labels` as an object) counted per (authority, period, stage,
    outcome); other kinds are left out."""
    out: Counter[tuple[str, str, str, str]] = Counter()
    for e in entries:
        if e["kind"] != DECIDED:
            continue
        labels = e["labels"]
        stage, outcome = labels.get("stage", ""), labels.get("outcome", "")
        out[(e["agency"], period_of(int(e["time"])), stage, outcome)] += 1
    return out


def cross_check(
    contributions: Iterable[Contribution], entries: Iterable[Mapping[str, Any]]
) -> tuple[list[CrossChecked], list[tuple[str, str]]]:
    """Each contribution against the ledger, per stage and outcome (§12.3), and the
    (authority, period) pairs the ledger holds decisions of with no contribution among
    those given (missing), both sorted by period then authority."""
    counts = ledger_counts(entries)
    checked, given = [], set()
    for c in contributions:
        totals = c.totals()
        given.add((c.authority, c.period))
        apart = tuple(
            Mismatch(stage, outcome, totals.get((stage, outcome), 0), held)
            for stage in STAGES
            for outcome in OUTCOMES
            if totals.get((stage, outcome), 0)
            != (held := counts.get((c.authority, c.period, stage, outcome), 0))
        )
        checked.append(CrossChecked(c.authority, c.period, apart))
    missing = sorted(
        {(a, p) for a, p, _, _ in counts if (a, p) not in given}, key=lambda ap: (ap[1], ap[0])
    )
    return sorted(checked, key=lambda c: (c.period, c.authority)), missing


# --- the rapporteur's proof that what it holds is what the ledger names ---------------------

#: The audit kind the authority signs once per copy it seals (PROTOCOL §8.11 "Audit").
CONTRIBUTED: Final = "statistics.contributed"


class EnvelopeMismatchError(UntrustedInputError):
    """The envelope held is not the one the stored `envelope_hash` names."""

    reason = "envelope-mismatch"


class NotInLedgerError(UntrustedInputError):
    """No `statistics.contributed` of the authority, to this rapporteur, for the period,
    carries the held envelope's hash."""

    reason = "not-in-ledger"


class OpensToOtherBodyError(UntrustedInputError):
    """The held envelope does not open to the stored body, or that body is of another
    authority or period."""

    reason = "opens-to-other-body"


def contributed_hashes(
    entries: Iterable[Mapping[str, Any]], *, authority: str, period: str, rapporteur: str
) -> frozenset[str]:
    """The envelope hashes of the `statistics.contributed` entries of `authority` to
    `rapporteur` for `period`, read from each entry's signed event (in its `leaf`, the §9.1
    ledger entry in base64, as the
    ledger's `/v1/entries` and `/v1/events/{id}` serve it: `/v1/events` items carry no hash)."""
    out = set()
    for entry in entries:
        if entry["kind"] != CONTRIBUTED or entry["agency"] != authority:
            continue
        leaf = LedgerEntry.decode(base64.b64decode(entry["leaf"], validate=True))
        event, _, _, _ = decode_signed_event(leaf.signed_event)
        if (
            event.kind == CONTRIBUTED
            and event.agency == authority
            and event.counterpart == rapporteur
            and dict(event.labels).get("period") == period
            and event.envelope_hash is not None
        ):
            out.add(event.envelope_hash)
    return frozenset(out)


def verify_held(
    *,
    authority: str,
    period: str,
    body: bytes,
    envelope: bytes,
    held_hash: str,
    rapporteur: str,
    entries: Iterable[Mapping[str, Any]],
    reopen: Callable[[bytes], bytes],
    limits: Limits,
) -> Contribution:
    """A contribution the rapporteur holds, shown to be the one its authority sealed
    (docs/proposals/nrm-process.md §12.3): the envelope is the one its stored hash names
    (EnvelopeMismatchError), that hash is one of the authority's `statistics.contributed`
    to this rapporteur for the period in the ledger's `entries` (NotInLedgerError), and the
    envelope, opened again (`reopen`: verified and decrypted with the rapporteur's keys),
    holds exactly the stored body, of that authority and period (OpensToOtherBodyError).
    Returns the decoded contribution or raises; a row changed in the rapporteur's database
    is found by one of the three."""
    digest = envelope_hash(envelope)
    if digest != held_hash:
        raise EnvelopeMismatchError("the envelope held is not the one its hash names")
    hashes = contributed_hashes(entries, authority=authority, period=period, rapporteur=rapporteur)
    if digest not in hashes:
        raise NotInLedgerError("no statistics.contributed in the ledger names this envelope")
    if reopen(envelope) != body:
        raise OpensToOtherBodyError("the envelope held does not open to the body held")
    contribution = Contribution.decode(body, limits=limits)
    if (contribution.authority, contribution.period) != (authority, period):
        raise OpensToOtherBodyError("the body held is of another authority or period")
    return contribution
