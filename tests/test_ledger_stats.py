"""The ledger's anonymous statistics: overdue clocks counted per month, clock and tier."""

from __future__ import annotations

from broker.ledger_stats import compute
from broker.ledger_store import EntryRow

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
