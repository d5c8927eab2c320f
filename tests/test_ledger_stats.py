"""The ledger's anonymous statistics: overdue clocks per month, clock and tier; identification
decisions per month, stage and outcome, with their intervals."""

from __future__ import annotations

from pathlib import Path

from broker.ledger_stats import KINDS, compute
from broker.ledger_store import EntryRow, LedgerStore
from keys.audit import AuditEvent

JAN = 1_767_225_600  # 2026-01-01T00:00:00Z


def _overdue(n: int, agency: str, referral: str, coordinator: str, urgency: str) -> EntryRow:
    return EntryRow(
        index=n,
        event_id=f"{n:032x}",
        leaf=b"",
        agency=agency,
        kind="clock.overdue",
        referral_id=referral,
        counterpart=coordinator,
        reason=None,
        labels={"clock": "respond", "urgency": urgency},
        time=JAN + n,
        directory_version=1,
    )


def test_overdue_referrals_are_counted_once_per_tier() -> None:
    """A referral overdue with two recipients, each notice signed once per coordinator,
    counts once in its tier; the same id from another holder is another referral; a tier
    under the threshold is suppressed."""
    rows = [
        _overdue(1, "police", "a" * 32, "coordinator", "routine"),
        _overdue(2, "police", "a" * 32, "coordinator-2", "routine"),
        _overdue(3, "police", "a" * 32, "coordinator", "routine"),  # its second recipient
        _overdue(4, "ngo", "a" * 32, "coordinator", "routine"),
        _overdue(5, "police", "b" * 32, "coordinator", "urgent"),
    ]
    stats = compute(rows, threshold=2)
    assert stats["overdue_per_month"] == [
        {
            "month": "2026-01",
            "clock": "respond",
            "urgency": "routine",
            "count": 2,
            "suppressed": False,
        },
        {
            "month": "2026-01",
            "clock": "respond",
            "urgency": "urgent",
            "count": None,
            "suppressed": True,
        },
    ]


def test_the_store_hands_the_statistics_every_kind_they_count(tmp_path: Path) -> None:
    """Through a real LedgerStore: the rows `all_rows_for_stats(KINDS)` returns are those of
    every kind `compute` counts, so an overdue referral stored in the ledger shows up (the
    store's own kind list once left `clock.overdue` out)."""
    store = LedgerStore(tmp_path / "ledger.db")
    try:
        events = [
            AuditEvent(f"{n:032x}", "police", kind, JAN + n, referral_id="a" * 32, labels=labels)
            for n, (kind, labels) in enumerate(
                [
                    ("clock.overdue", (("clock", "respond"), ("urgency", "routine"))),
                    ("consent.recorded", ()),
                ]
            )
        ]
        for index, event in enumerate(events):
            store.insert_entry(index, b"leaf", event, 1)
        rows = store.all_rows_for_stats(KINDS)
        assert {r.kind for r in rows} == {"clock.overdue"}
        stats = compute(rows, threshold=1)
        assert [c["count"] for c in stats["overdue_per_month"]] == [1]
    finally:
        store.close()


def _row(n: int, kind: str, agency: str, referral: str, t: int, **labels: str) -> EntryRow:
    reason = labels.pop("reason", None)
    return EntryRow(
        index=n,
        event_id=f"{n:032x}",
        leaf=b"",
        agency=agency,
        kind=kind,
        referral_id=referral,
        counterpart="police" if agency != "police" else "shelter",
        reason=reason,
        labels=labels,
        time=t,
        directory_version=1,
    )


DAY = 86_400
FEB = JAN + 31 * DAY


def test_decisions_are_counted_per_month_stage_outcome_and_reason_with_their_intervals() -> None:
    """Each `identification.decided` counts once in its month, stage and outcome, a negative
    one by its reason (in the same table: no total is published beside its parts); the
    intervals run from the owner's own first `referral.sent` of the opening referral to the
    earliest first stage, and from there to the earliest second stage, each in the month it
    started, a median shown only from the threshold; another agency's `referral.sent` of
    the same id, and a decision dated before what it follows, count for no interval."""
    a, b, c, d = "a" * 32, "b" * 32, "c" * 32, "d" * 32
    decided = "identification.decided"
    rows = [
        # a hostile agency's referral.sent of police's referral id, before police's own
        _row(0, "referral.sent", "shelter", a, JAN - 30 * DAY),
        _row(1, "referral.sent", "police", a, JAN),
        _row(2, "referral.sent", "police", a, JAN + 10),  # its second recipient
        _row(3, "referral.sent", "police", b, JAN + DAY),
        _row(4, decided, "authority", a, JAN + 5 * DAY, stage="first", outcome="positive"),
        # a first stage that supersedes the first one: a decision, not a new start
        _row(5, decided, "authority", a, JAN + 6 * DAY, stage="first", outcome="positive"),
        _row(6, decided, "authority", b, JAN + 4 * DAY, stage="first", outcome="positive"),
        _row(7, decided, "authority", a, FEB + 5 * DAY, stage="second", outcome="positive"),
        _row(
            8,
            decided,
            "authority",
            b,
            FEB,
            stage="second",
            outcome="negative",
            reason="act-not-established",
        ),
        # a case whose opening referral the ledger does not hold: no referral-to-first
        _row(
            9,
            decided,
            "authority",
            c,
            FEB,
            stage="first",
            outcome="negative",
            reason="no-indicators",
        ),
        # a first stage dated before its referral was sent: no interval
        _row(10, "referral.sent", "police", d, FEB + 9 * DAY),
        _row(11, decided, "authority", d, FEB + 8 * DAY, stage="first", outcome="positive"),
    ]
    stats = compute(rows, threshold=2)

    def cell(n: int | None) -> dict[str, object]:
        return {"count": n, "suppressed": n is None}

    positive = {"outcome": "positive", "reason": None}
    assert stats["decisions_per_month"] == [
        {"month": "2026-01", "stage": "first", **positive, **cell(3)},
        {
            "month": "2026-02",
            "stage": "first",
            "outcome": "negative",
            "reason": "no-indicators",
            **cell(None),
        },
        {"month": "2026-02", "stage": "first", **positive, **cell(None)},
        {
            "month": "2026-02",
            "stage": "second",
            "outcome": "negative",
            "reason": "act-not-established",
            **cell(None),
        },
        {"month": "2026-02", "stage": "second", **positive, **cell(None)},
    ]
    assert "negative_reasons" not in stats
    to_first = [5 * DAY, 3 * DAY]  # a: from JAN to its earliest first stage; b: from JAN + DAY
    to_second = [(FEB + 5 * DAY) - (JAN + 5 * DAY), FEB - (JAN + 4 * DAY)]
    assert stats["identification_median_seconds"] == [
        {
            "month": "2026-01",
            "interval": "first-to-second",
            "seconds": sum(to_second) / 2,
            "suppressed": False,
        },
        {
            "month": "2026-01",
            "interval": "referral-to-first",
            "seconds": sum(to_first) / 2,
            "suppressed": False,
        },
    ]
    # One case alone shows no median, of either interval.
    alone = compute([r for r in rows if r.referral_id == a], threshold=2)
    medians = alone["identification_median_seconds"]
    assert len(medians) == 2
    assert all(m["suppressed"] and m["seconds"] is None for m in medians)


def test_the_store_hands_the_statistics_decisions(tmp_path: Path) -> None:
    store = LedgerStore(tmp_path / "ledger.db")
    try:
        labels = (("age_route", "adult"), ("outcome", "positive"), ("stage", "first"))
        event = AuditEvent(
            "f" * 32,
            "authority",
            "identification.decided",
            JAN,
            referral_id="a" * 32,
            labels=labels,
        )
        store.insert_entry(0, b"leaf", event, 1)
        stats = compute(store.all_rows_for_stats(KINDS), threshold=1)
        assert [c["count"] for c in stats["decisions_per_month"]] == [1]
    finally:
        store.close()


def test_break_glass_holds_are_counted_once_by_outcome_and_reason() -> None:
    """Each hold counts once in the month it ended, by how (confirmed, refused, lapsed) and
    its break-glass reason; the same id of another sender is another referral."""
    a, b = "a" * 32, "b" * 32
    rows = [
        _row(1, "break-glass.confirmed", "police", a, JAN, reason="imminent-danger"),
        _row(2, "break-glass.confirmed", "ngo", a, JAN, reason="imminent-danger"),
        _row(3, "break-glass.lapsed", "police", b, FEB, reason="unable-to-consent"),
        _row(4, "referral.sent", "police", a, JAN),
    ]
    stats = compute(rows, threshold=2)
    assert stats["break_glass_per_month"] == [
        {
            "month": "2026-01",
            "outcome": "confirmed",
            "reason": "imminent-danger",
            "count": 2,
            "suppressed": False,
        },
        {
            "month": "2026-02",
            "outcome": "lapsed",
            "reason": "unable-to-consent",
            "count": None,
            "suppressed": True,
        },
    ]
