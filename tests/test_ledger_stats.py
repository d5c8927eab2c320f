"""The ledger's anonymous statistics: overdue clocks counted per month, clock and tier."""

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
