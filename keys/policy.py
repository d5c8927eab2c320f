"""The national policy: the numbers every party of one mechanism checks alike (PROTOCOL §7.11).

A directory of `spec_version` 2 carries one `policy` object, signed with the rest under
`nrm/v1/directory` by the same m-of-n administrators who admit agencies. Sender and
receiver read the same policy, so both check the same clocks, tiers and legal bases; an
agent may be configured stricter, never looser (docs/proposals/nrm-process.md §3.2).

Decoding is strict, as for the rest of the directory: every member present, nothing else,
each value in its range; a value out of range raises ValueError, which the directory
decoder reports as `malformed`. Pure and offline.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from .codec import bounded_int, exact_members
from .roles import ROLES

#: The priority tiers, most pressing first (the referral schema's `urgency` codes).
TIERS: Final = ("emergency", "urgent", "routine")
#: The legal bases of the referral schema (`legal_basis`) other than consent itself.
NON_CONSENT_BASES: Final = frozenset(
    {"legal_obligation", "public_task", "vital_interests", "child_protection"}
)
#: CETS 197 Art 13: a recovery and reflection period of at least 30 days.
MIN_REFLECTION_DAYS: Final = 30
#: No clock in days runs longer than ten years; no clock in seconds longer than one year.
MAX_DAYS: Final = 3650
MAX_SECONDS: Final = 366 * 86_400
MAX_CODES: Final = 64

NoRemovalFrom = Literal["referral", "first_stage_positive"]
NO_REMOVAL_FROM: Final = ("referral", "first_stage_positive")

_COUNTRY = re.compile(r"^[A-Z]{2}$")
_BASIS_CODE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
#: A break-glass reason is the `reason` of its audit events (PROTOCOL §9.0): at most 40.
_REASON_CODE = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
_ROLE_CODE = re.compile(r"^[a-z][a-z-]{0,63}$")

_FIELDS: Final = frozenset(
    {
        "country",
        "first_stage_due_days",
        "second_stage_min_days",
        "second_stage_due_days",
        "reflection_min_days",
        "reflection_warn_days",
        "reflection_ends_with_second_stage",
        "no_removal_from",
        "reconsideration_window_days",
        "priority",
        "without_consent",
        "break_glass",
        "child_identity_roles",
        "child_legal_bases",
        "statistics",
    }
)
_TIER_FIELDS: Final = frozenset({"acknowledge_seconds", "due_seconds"})
_BREAK_GLASS_FIELDS: Final = frozenset({"confirm_seconds", "follow_up_days", "reasons"})
_STATISTICS_FIELDS: Final = frozenset({"k", "round_to", "contribution_grace_days"})


def _int(value: object, what: str, *, minimum: int, maximum: int) -> int:
    return bounded_int(value, f"policy.{what}", minimum=minimum, maximum=maximum)


def _codes(value: object, what: str, pattern: re.Pattern[str]) -> tuple[str, ...]:
    """A sorted list of distinct codes, each matching `pattern`."""
    if (
        not isinstance(value, list | tuple)
        or len(value) > MAX_CODES
        or not all(isinstance(v, str) and pattern.fullmatch(v) for v in value)
        or list(value) != sorted(set(value))
    ):
        raise ValueError(
            f"policy.{what} must be a sorted list of at most {MAX_CODES} distinct codes "
            f"matching {pattern.pattern}"
        )
    return tuple(value)


@dataclass(frozen=True, slots=True)
class Tier:
    """One priority tier: acknowledge within (None: no acknowledge clock), due within."""

    acknowledge_seconds: int | None
    due_seconds: int

    def __post_init__(self) -> None:
        _int(self.due_seconds, "priority.*.due_seconds", minimum=1, maximum=MAX_SECONDS)
        if self.acknowledge_seconds is not None:
            _int(
                self.acknowledge_seconds,
                "priority.*.acknowledge_seconds",
                minimum=1,
                maximum=self.due_seconds,
            )


@dataclass(frozen=True, slots=True)
class BreakGlass:
    """A referral without the consent otherwise required (PROTOCOL §8.2 step 2): under
    `vital_interests` with one of `reasons`, sent only once a second API client of the
    sending agency confirmed it within `confirm_seconds`; a follow-up is due after
    `follow_up_days`."""

    confirm_seconds: int
    follow_up_days: int
    reasons: tuple[str, ...]

    def __post_init__(self) -> None:
        _int(self.confirm_seconds, "break_glass.confirm_seconds", minimum=1, maximum=MAX_SECONDS)
        _int(self.follow_up_days, "break_glass.follow_up_days", minimum=1, maximum=MAX_DAYS)
        if not self.reasons:
            raise ValueError("policy.break_glass.reasons must list at least one reason code")
        _codes(self.reasons, "break_glass.reasons", _REASON_CODE)


@dataclass(frozen=True, slots=True)
class Statistics:
    """The rapporteur's disclosure control: no cell under `k`, counts rounded to
    `round_to`, contributions `contribution_grace_days` late at most."""

    k: int = 11
    round_to: int = 5
    contribution_grace_days: int = 10

    def __post_init__(self) -> None:
        _int(self.k, "statistics.k", minimum=2, maximum=1000)
        _int(self.round_to, "statistics.round_to", minimum=1, maximum=1000)
        _int(
            self.contribution_grace_days,
            "statistics.contribution_grace_days",
            minimum=0,
            maximum=MAX_DAYS,
        )


#: The interval after a positive first stage before a second stage, in days: also what an
#: agent uses while its directory has no policy (PROTOCOL §8.7).
SECOND_STAGE_MIN_DAYS = 30
#: How long after a negative decision reconsideration may be asked for, without a policy.
RECONSIDERATION_WINDOW_DAYS: Final = 30


def _default_priority() -> dict[str, Tier]:
    return {
        "emergency": Tier(acknowledge_seconds=1_800, due_seconds=86_400),
        "urgent": Tier(acknowledge_seconds=14_400, due_seconds=259_200),
        "routine": Tier(acknowledge_seconds=None, due_seconds=1_209_600),
    }


@dataclass(frozen=True, slots=True)
class Policy:
    """The national policy (PROTOCOL §7.11). The defaults are a starting point for
    `nrm directory policy-template`; a signed policy always states every member."""

    country: str
    first_stage_due_days: int = 5
    second_stage_min_days: int = SECOND_STAGE_MIN_DAYS
    second_stage_due_days: int = 90
    reflection_min_days: int = MIN_REFLECTION_DAYS
    reflection_warn_days: int = 7
    reflection_ends_with_second_stage: bool = False
    no_removal_from: NoRemovalFrom = "first_stage_positive"
    reconsideration_window_days: int = RECONSIDERATION_WINDOW_DAYS
    priority: Mapping[str, Tier] = field(default_factory=_default_priority)
    #: role -> the legal bases a sender of that role may use for an adult without consent.
    without_consent: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    break_glass: BreakGlass = field(
        default_factory=lambda: BreakGlass(900, 7, ("imminent-danger",))
    )
    child_identity_roles: tuple[str, ...] = (
        "child-protection",
        "competent-authority",
        "coordinator",
        "police",
        "social-services",
    )
    child_legal_bases: tuple[str, ...] = ()
    statistics: Statistics = field(default_factory=Statistics)

    def __post_init__(self) -> None:
        if not isinstance(self.country, str) or not _COUNTRY.fullmatch(self.country):
            raise ValueError("policy.country must be an ISO 3166-1 alpha-2 code (two capitals)")
        _int(self.first_stage_due_days, "first_stage_due_days", minimum=1, maximum=MAX_DAYS)
        _int(self.second_stage_min_days, "second_stage_min_days", minimum=0, maximum=MAX_DAYS)
        _int(
            self.second_stage_due_days,
            "second_stage_due_days",
            minimum=self.second_stage_min_days + 1,
            maximum=MAX_DAYS,
        )
        _int(
            self.reflection_min_days,
            "reflection_min_days",
            minimum=MIN_REFLECTION_DAYS,
            maximum=MAX_DAYS,
        )
        _int(
            self.reflection_warn_days,
            "reflection_warn_days",
            minimum=1,
            maximum=self.reflection_min_days - 1,
        )
        if type(self.reflection_ends_with_second_stage) is not bool:
            raise ValueError("policy.reflection_ends_with_second_stage must be true or false")
        if self.no_removal_from not in NO_REMOVAL_FROM:
            raise ValueError(f"policy.no_removal_from must be one of {', '.join(NO_REMOVAL_FROM)}")
        _int(
            self.reconsideration_window_days,
            "reconsideration_window_days",
            minimum=0,
            maximum=MAX_DAYS,
        )
        if set(self.priority) != set(TIERS) or not all(
            isinstance(t, Tier) for t in self.priority.values()
        ):
            raise ValueError(f"policy.priority must have exactly the tiers {', '.join(TIERS)}")
        dues = [self.priority[t].due_seconds for t in TIERS]
        if dues != sorted(dues):
            raise ValueError("policy.priority: a more pressing tier cannot be due later")
        object.__setattr__(self, "priority", {t: self.priority[t] for t in TIERS})
        if not set(self.without_consent) <= ROLES:
            raise ValueError("policy.without_consent names a role the directory does not define")
        for role, bases in self.without_consent.items():
            _codes(bases, f"without_consent.{role}", _BASIS_CODE)
            if not set(bases) <= NON_CONSENT_BASES:
                among = ", ".join(sorted(NON_CONSENT_BASES))
                raise ValueError(f"policy.without_consent.{role} must be among {among}")
        object.__setattr__(
            self,
            "without_consent",
            {role: tuple(self.without_consent[role]) for role in sorted(self.without_consent)},
        )
        if not isinstance(self.break_glass, BreakGlass):
            raise ValueError("policy.break_glass must be a BreakGlass")
        roles = _codes(self.child_identity_roles, "child_identity_roles", _ROLE_CODE)
        if not set(roles) <= ROLES:
            raise ValueError(
                "policy.child_identity_roles names a role the directory does not define"
            )
        _codes(self.child_legal_bases, "child_legal_bases", _BASIS_CODE)
        if not isinstance(self.statistics, Statistics):
            raise ValueError("policy.statistics must be a Statistics")

    def may_skip_consent(self, roles: tuple[str, ...], legal_basis: str) -> bool:
        """Whether a sender holding `roles` may refer an adult under `legal_basis` without a
        consent receipt."""
        return any(legal_basis in self.without_consent.get(role, ()) for role in roles)


def policy_doc(p: Policy) -> dict[str, Any]:
    """The `policy` member of a spec-2 directory document."""
    return {
        "country": p.country,
        "first_stage_due_days": p.first_stage_due_days,
        "second_stage_min_days": p.second_stage_min_days,
        "second_stage_due_days": p.second_stage_due_days,
        "reflection_min_days": p.reflection_min_days,
        "reflection_warn_days": p.reflection_warn_days,
        "reflection_ends_with_second_stage": p.reflection_ends_with_second_stage,
        "no_removal_from": p.no_removal_from,
        "reconsideration_window_days": p.reconsideration_window_days,
        "priority": {
            tier: {"acknowledge_seconds": t.acknowledge_seconds, "due_seconds": t.due_seconds}
            for tier, t in p.priority.items()
        },
        "without_consent": {role: list(bases) for role, bases in p.without_consent.items()},
        "break_glass": {
            "confirm_seconds": p.break_glass.confirm_seconds,
            "follow_up_days": p.break_glass.follow_up_days,
            "reasons": list(p.break_glass.reasons),
        },
        "child_identity_roles": list(p.child_identity_roles),
        "child_legal_bases": list(p.child_legal_bases),
        "statistics": {
            "k": p.statistics.k,
            "round_to": p.statistics.round_to,
            "contribution_grace_days": p.statistics.contribution_grace_days,
        },
    }


def policy_from_doc(doc: object) -> Policy:
    """The Policy a `policy` member states; ValueError naming the first member out of shape."""
    f = exact_members(doc, _FIELDS, "policy")
    priority = exact_members(f["priority"], frozenset(TIERS), "policy.priority")
    tiers = {}
    for tier in TIERS:
        t = exact_members(priority[tier], _TIER_FIELDS, f"policy.priority.{tier}")
        tiers[tier] = Tier(
            acknowledge_seconds=t["acknowledge_seconds"], due_seconds=t["due_seconds"]
        )
    without = f["without_consent"]
    if not isinstance(without, dict):
        raise ValueError("policy.without_consent must be an object of role -> legal bases")
    glass = exact_members(f["break_glass"], _BREAK_GLASS_FIELDS, "policy.break_glass")
    stats = exact_members(f["statistics"], _STATISTICS_FIELDS, "policy.statistics")
    for key in ("child_identity_roles", "child_legal_bases"):
        if not isinstance(f[key], list):
            raise ValueError(f"policy.{key} must be a list")
    if not isinstance(glass["reasons"], list):
        raise ValueError("policy.break_glass.reasons must be a list")
    return Policy(
        country=f["country"],
        first_stage_due_days=f["first_stage_due_days"],
        second_stage_min_days=f["second_stage_min_days"],
        second_stage_due_days=f["second_stage_due_days"],
        reflection_min_days=f["reflection_min_days"],
        reflection_warn_days=f["reflection_warn_days"],
        reflection_ends_with_second_stage=f["reflection_ends_with_second_stage"],
        no_removal_from=f["no_removal_from"],
        reconsideration_window_days=f["reconsideration_window_days"],
        priority=tiers,
        without_consent={
            role: tuple(bases) if isinstance(bases, list) else bases
            for role, bases in without.items()
        },
        break_glass=BreakGlass(
            confirm_seconds=glass["confirm_seconds"],
            follow_up_days=glass["follow_up_days"],
            reasons=tuple(glass["reasons"]),
        ),
        child_identity_roles=tuple(f["child_identity_roles"]),
        child_legal_bases=tuple(f["child_legal_bases"]),
        statistics=Statistics(
            k=stats["k"],
            round_to=stats["round_to"],
            contribution_grace_days=stats["contribution_grace_days"],
        ),
    )
