"""`nrm demo` is a test too (docs/proposals/nrm-process.md §15, slice 12): run as a user runs
it, in a process of its own, it passes, and what it tells happened is read back from what
the agents left behind: their structured log and their audit outboxes, not its wording."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from keys.audit import decode_signed_event

from .support import query


def logged(root: Path) -> list[dict[str, Any]]:
    """The events of the demo's structured log (every agent's), in order."""
    lines = (root / "logs.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def audited(root: Path, agency: str) -> Counter[str]:
    """How many audit events of each kind `agency`'s agent recorded."""
    rows = query(root / agency / "agent.db", "SELECT event FROM audit_outbox ORDER BY seq")
    return Counter(decode_signed_event(bytes(r[0]))[0].kind for r in rows)


@pytest.mark.timeout(300)
def test_the_demo_tells_one_person_s_way_through_the_mechanism(tmp_path: Path) -> None:
    """The demo passes and its ledger checkpoint verifies; in its agents' log: the case opened
    once at the authority on police's referral, the first stage then the second decided
    positive, the first starting no-removal and the reflection period and the second ending
    no-removal only (the reflection period runs its course), the shelter's referral linked
    to the case, then the transfer to social services in another region (its request to
    police, police's transfer answering it, its acceptance, the authority told the new
    owner, police's own referrals of the case cancelled, then completion), then both
    consents withdrawn and each erasure confirmed, in that order; in the audit outboxes:
    the shelter published its catalogue, police, the co-ordinator and the shelter each
    received both decisions and the three notices, and police and social services each
    sent and received one request, one transfer and its two steps; at the authority, social
    services owns the case by police's transfer."""
    root = tmp_path / "demo"
    demo = subprocess.run(
        [sys.executable, "-m", "nrm", "demo", "--dir", str(root)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "signature verified; every agent proved its events are included" in demo.stdout

    events = logged(root)

    def at(name: str, **fields: Any) -> list[int]:
        """The positions of the log events `name` whose `fields` match."""
        return [
            i
            for i, e in enumerate(events)
            if e.get("event") == name and all(e.get(k) == v for k, v in fields.items())
        ]

    [opened] = at("case_opened", agency="authority")
    [first] = at("case_decided", agency="authority", stage="first", outcome="positive")
    [second] = at("case_decided", agency="authority", stage="second", outcome="positive")
    notified = [
        (events[i]["protection"], events[i]["step"])
        for i in at("protection_notified", agency="authority")
    ]
    assert notified == [
        ("no-removal", "started"),
        ("reflection", "started"),
        ("no-removal", "ended"),
    ]
    [linked] = at("case_copies_sent", agency="authority")
    withdrawn = at("consent_withdrawn", agency="police") + at(
        "consent_withdrawn", agency="authority"
    )
    confirmed = at("erasure_confirmed", agency="police", counterpart="authority") + at(
        "erasure_confirmed", agency="authority", counterpart="shelter"
    )
    assert len(withdrawn) == len(confirmed) == 2
    [asked] = at("transfer_request_sent", agency="social-mcr", owner="police")
    [granted] = at("transfer_sent", agency="police", transferee="social-mcr")
    transfer_id = events[granted]["transfer_id"]
    [accepted] = at("transfer_step_sent", agency="social-mcr", to_state="accepted")
    [owner_changed] = at("case_owner_changed", agency="authority", owner="social-mcr")
    cancelled = at("transition_sent", agency="police", to_state="cancelled")
    [completed] = at("transfer_step_sent", agency="police", to_state="completed")
    assert {events[i]["counterpart"] for i in cancelled} == {"authority", "social-mcr"}
    assert {events[i].get("transfer_id") for i in (accepted, completed)} == {transfer_id}
    assert events[owner_changed]["case_id"] == events[opened]["case_id"]
    assert opened < first < linked < second < asked < granted < accepted < owner_changed
    assert owner_changed < min(cancelled) and max(cancelled) < completed < min(withdrawn)
    assert all(w < c for w, c in zip(withdrawn, confirmed, strict=True))
    assert events[opened]["case_id"] == events[first]["case_id"] == events[second]["case_id"]

    assert audited(root, "shelter")["catalogue.published"] == 1
    for agency in ("police", "coordinator", "shelter"):
        kinds = audited(root, agency)
        assert (kinds["identification.received"], kinds["protection.received"]) == (2, 3), agency
    police, region = audited(root, "police"), audited(root, "social-mcr")
    assert [police[k] for k in TRANSFER_KINDS_OWNER] == [1, 1, 1, 1]
    assert [region[k] for k in TRANSFER_KINDS_TRANSFEREE] == [1, 1, 1, 1]
    owners = query(
        root / "authority" / "agent.db", "SELECT case_id, owner, transfer_id FROM case_owners"
    )
    assert [tuple(r) for r in owners] == [(events[opened]["case_id"], "social-mcr", transfer_id)]


#: What the owner (police) and the transferee (social services) audit of the transfer: the
#: request, the transfer, and one step each way (accepted, completed).
TRANSFER_KINDS_OWNER = (
    "transfer-request.received",
    "transfer.sent",
    "transfer-step.received",
    "transfer-step.sent",
)
TRANSFER_KINDS_TRANSFEREE = (
    "transfer-request.sent",
    "transfer.received",
    "transfer-step.sent",
    "transfer-step.received",
)
