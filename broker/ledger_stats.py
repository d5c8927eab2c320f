"""Anonymous NRM monitoring statistics from the ledger's metadata.

Only aggregated counts leave this module, and any cell counting fewer than `threshold`
referrals or events is suppressed (`count: null, suppressed: true`), so that no single
person's case can be singled out.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from .ledger_store import EntryRow

#: The event kinds `compute` counts: the only ones the store hands it.
KINDS: tuple[str, ...] = (
    "referral.sent",
    "transition.sent",
    "message.rejected",
    "consent.withdrawn",
    "clock.overdue",
    "identification.decided",
    "break-glass.confirmed",
    "break-glass.refused",
    "break-glass.lapsed",
)

#: How a break-glass referral's hold ended (PROTOCOL §8.2 step 2): the kind, its outcome.
BREAK_GLASS_OUTCOMES: dict[str, str] = {
    "break-glass.confirmed": "confirmed",
    "break-glass.refused": "refused",
    "break-glass.lapsed": "lapsed",
}

#: The two intervals of an identification (§8.7) whose median the statistics give: from the
#: referral that opened the case to its first stage, and from the first stage to the second.
INTERVALS: tuple[str, ...] = ("referral-to-first", "first-to-second")


def month(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m")


def _cell(count: int, threshold: int) -> dict[str, Any]:
    if count < threshold:
        return {"count": None, "suppressed": True}
    return {"count": count, "suppressed": False}


def _order(key: tuple[str, str, str, str | None]) -> tuple[str, str, str, str]:
    return (*key[:3], key[3] or "")


def _median(values: list[int], threshold: int) -> dict[str, Any]:
    if len(values) < threshold:
        return {"seconds": None, "suppressed": True}
    return {"seconds": statistics.median(values), "suppressed": False}


def compute(rows: Iterable[EntryRow], *, threshold: int) -> dict[str, Any]:
    sent_at: dict[str, int] = {}
    referral_cells: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    reached: dict[str, dict[str, int]] = defaultdict(dict)
    rejections: Counter[str] = Counter()
    withdrawals: Counter[str] = Counter()
    # (month, clock, urgency) -> the (holder, referral id) gone overdue: `clock.overdue` is
    # signed once per coordinator and a referral may go overdue with several recipients, so
    # each referral counts once per month, clock and tier.
    overdue: dict[tuple[str, str, str], set[tuple[str, str]]] = defaultdict(set)
    # `identification.decided` is signed once per decision by the authority (not per copy
    # sent), on the referral that opened the case: each one counts, in one table only (a
    # negative one by its reason), so that no published total less a published part gives a
    # suppressed part. The ledger appends only those of an agency deciding their stage.
    decisions: Counter[tuple[str, str, str, str | None]] = Counter()
    # (authority, case owner, opening referral id) -> stage -> the time of its earliest
    # decision (a decision that supersedes another does not restart the interval).
    decided: dict[tuple[str, str | None, str], dict[str, int]] = defaultdict(dict)
    # (owner, referral id) -> its first `referral.sent`: the owner's own, no other agency's.
    owned_sent_at: dict[tuple[str, str], int] = {}
    # (month, outcome, break-glass reason) -> the (sender, referral id) held: each hold ends
    # once, and only an outcome is published (no total of them, as for decisions).
    break_glass: dict[tuple[str, str, str], set[tuple[str, str]]] = defaultdict(set)
    for r in rows:
        if r.kind == "referral.sent" and r.referral_id is not None:
            owned_sent_at.setdefault((r.agency, r.referral_id), r.time)
            first = sent_at.setdefault(r.referral_id, r.time)
            key = (
                month(first),
                r.labels.get("referral_type", "unspecified"),
                r.labels.get("urgency", "unspecified"),
            )
            referral_cells[key].add(r.referral_id)
        elif r.kind == "transition.sent" and r.referral_id is not None:
            state = r.labels.get("state")
            if state in ("acknowledged", "accepted"):
                reached[r.referral_id].setdefault(state, r.time)
        elif r.kind == "message.rejected":
            rejections[r.reason or "unspecified"] += 1
        elif r.kind == "consent.withdrawn":
            withdrawals[month(r.time)] += 1
        elif r.kind == "clock.overdue" and r.referral_id is not None:
            key = (
                month(r.time),
                r.labels.get("clock", "unspecified"),
                r.labels.get("urgency", "unspecified"),
            )
            overdue[key].add((r.agency, r.referral_id))
        elif r.kind in BREAK_GLASS_OUTCOMES and r.referral_id is not None:
            key = (month(r.time), BREAK_GLASS_OUTCOMES[r.kind], r.reason or "unspecified")
            break_glass[key].add((r.agency, r.referral_id))
        elif r.kind == "identification.decided" and r.referral_id is not None:
            stage = r.labels.get("stage", "unspecified")
            outcome = r.labels.get("outcome", "unspecified")
            reason = (r.reason or "unspecified") if outcome == "negative" else None
            decisions[(month(r.time), stage, outcome, reason)] += 1
            earliest = decided[(r.agency, r.counterpart, r.referral_id)]
            earliest[stage] = min(earliest.get(stage, r.time), r.time)

    durations: dict[tuple[str, str], list[int]] = defaultdict(list)
    for referral_id, states in reached.items():
        if referral_id in sent_at:
            for state, t in states.items():
                durations[(month(sent_at[referral_id]), state)].append(t - sent_at[referral_id])

    intervals: dict[tuple[str, str], list[int]] = defaultdict(list)
    for (_, owner, referral_id), stages in decided.items():
        spans: list[tuple[str, int | None, str]] = []
        if owner is not None and (owner, referral_id) in owned_sent_at:
            spans.append(("referral-to-first", owned_sent_at[(owner, referral_id)], "first"))
        if "second" in stages:
            spans.append(("first-to-second", stages.get("first"), "second"))
        for interval, start, end in spans:
            # A decision dated before what it follows is no interval (a clock, or a lie).
            if start is not None and end in stages and stages[end] >= start:
                intervals[(month(start), interval)].append(stages[end] - start)

    return {
        "threshold": threshold,
        "referrals_per_month": [
            {"month": m, "referral_type": k, "urgency": u, **_cell(len(ids), threshold)}
            for (m, k, u), ids in sorted(referral_cells.items())
        ],
        "median_seconds": [
            {"month": m, "to": state, **_median(values, threshold)}
            for (m, state), values in sorted(durations.items())
        ],
        "rejections_by_reason": [
            {"reason": reason, **_cell(n, threshold)} for reason, n in sorted(rejections.items())
        ],
        "withdrawals_per_month": [
            {"month": m, **_cell(n, threshold)} for m, n in sorted(withdrawals.items())
        ],
        "overdue_per_month": [
            {"month": m, "clock": c, "urgency": u, **_cell(len(ids), threshold)}
            for (m, c, u), ids in sorted(overdue.items())
        ],
        "decisions_per_month": [
            {"month": m, "stage": st, "outcome": o, "reason": why, **_cell(n, threshold)}
            for (m, st, o, why), n in sorted(decisions.items(), key=lambda c: _order(c[0]))
        ],
        "break_glass_per_month": [
            {"month": m, "outcome": o, "reason": why, **_cell(len(ids), threshold)}
            for (m, o, why), ids in sorted(break_glass.items())
        ],
        "identification_median_seconds": [
            {"month": m, "interval": interval, **_median(values, threshold)}
            for (m, interval), values in sorted(intervals.items())
        ],
    }
