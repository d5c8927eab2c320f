"""Access records (PROTOCOL.md §9.0 `record.accessed`): every answer of the agent API that
returns a received referral's personal data is counted, and coalesced reads are one signed
event; the owner reads the accesses of its referrals from the ledger (`GET /v1/accesses`)."""

from __future__ import annotations

import base64
import secrets
from pathlib import Path
from typing import Any

import pytest

from agents.config import ApiClient, ConfigError, _client
from agents.referral import FIELD_CATEGORY
from agents.storage import Store
from keys.audit import AuditEvent, decode_signed_event, new_event_id
from keys.merkle import leaf_hash, verify_inclusion
from runtime import clock

from .support import Mechanism, eventually, query
from .test_agent import delivered
from .test_ledger import get_json
from .test_referrals import fetch_attachment, upload, with_attachment

ACCESS = (
    ("categories", "contact,identity"),
    ("client", "case-management"),
    ("reads", "3"),
    ("record", "body"),
)


@pytest.mark.parametrize(
    ("kind", "labels", "valid"),
    [
        ("record.accessed", ACCESS, True),
        ("record.accessed", (("record", "attachment"), ("reads", "1")), False),  # not all four
        ("record.accessed", (("categories", "identity,contact"),), False),  # not sorted
        ("record.accessed", (("categories", "contact,contact"),), False),  # repeated
        ("record.accessed", (("categories", "names"),), False),  # not a §8.1 category
        ("record.accessed", (("categories", ""),), False),
        ("record.accessed", (("client", "Mira Example"),), False),  # not a system name
        ("record.accessed", (("record", "history"),), False),
        ("record.accessed", (("reads", "01"),), False),
        ("record.accessed", (("reads", "0"),), False),
        ("record.accessed", (("urgency", "urgent"),), False),  # statistics labels: not here
        ("record.accessed", (("history", "1"),), False),  # another kind's count
        ("referral.sent", (("client", "case-management"),), False),  # only on record.accessed
        ("referral.received", (("record", "body"),), False),
        ("retention.purged", (("reads", "1"),), False),
    ],
)
def test_access_labels_only_on_their_kind(
    kind: str, labels: tuple[tuple[str, str], ...], valid: bool
) -> None:
    def make() -> AuditEvent:
        read = {"referral_id": "ab" * 16, "counterpart": "police"}
        return AuditEvent(
            event_id=new_event_id(),
            agency="shelter",
            kind=kind,
            time=1,
            labels=labels,
            **(read if kind == "record.accessed" else {}),
        )

    if valid:
        assert make().labels == labels
    else:
        with pytest.raises(ValueError, match="label"):
            make()


@pytest.mark.parametrize(
    "fields",
    [
        {"counterpart": "police"},  # which referral?
        {"referral_id": "ab" * 16},  # whose? the owner could not find it
        {"referral_id": "ab" * 16, "counterpart": "shelter"},  # its own
        {"referral_id": "ab" * 16, "counterpart": "police", "reason": "x"},
    ],
)
def test_an_access_record_names_the_referral_and_its_owner_and_nothing_else(
    fields: dict[str, str],
) -> None:
    with pytest.raises(ValueError, match=r"record\.accessed"):
        AuditEvent(
            event_id=new_event_id(),
            agency="shelter",
            kind="record.accessed",
            time=1,
            labels=ACCESS,
            **fields,  # type: ignore[arg-type]
        )


@pytest.mark.parametrize("name", ["Case System", "case_system", "1cms", "", "a" * 41, 7])
def test_client_names_are_system_names(name: object) -> None:
    doc = {"name": name, "token_sha256": "ab" * 32, "scopes": ["read"]}
    with pytest.raises(ConfigError, match=r"api\.clients\.name"):
        _client(doc)
    assert _client({**doc, "name": "cms-2"}) == ApiClient(
        "cms-2", bytes.fromhex("ab" * 32), frozenset({"read"})
    )


def accesses(m: Mechanism, agency: str) -> list[tuple[AuditEvent, bytes]]:
    rows = query(m.database(agency), "SELECT event FROM audit_outbox ORDER BY seq")
    decoded = [(decode_signed_event(bytes(r[0])), bytes(r[0])) for r in rows]
    return [(d[0], raw) for d, raw in decoded if d[0].kind == "record.accessed"]


def move_clock(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, seconds: int) -> None:
    clock.set_offset(tmp_path / "clock-offset", seconds)
    monkeypatch.setenv(clock.ENV, str(tmp_path / "clock-offset"))


async def test_reads_are_recorded_coalesced_and_the_owner_reads_them(
    mechanism: Mechanism, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The shelter's reads of a police referral's body inside one window are one event with
    their count, naming the client, the record and the categories and nothing of the body;
    a read after the window opens the next; its attachment's read is an event of its own.
    On the ledger the police (the owner) reads them all, with inclusion proofs, paged; the
    shelter and the co-ordinator read none; bad parameters are problems."""
    m = mechanism
    content = b"%PDF-1.7 " + secrets.token_bytes(512)
    status, item = await upload(m, "police", content, "application/pdf")
    assert status == 201, item
    aid = item["attachment_id"]
    rid = await m.api("police").refer(["shelter"], with_attachment(item))
    await delivered(m, "police", rid)
    agent = m.agents["shelter"]

    async def fetched() -> bool:  # looked at in the store: an API read would count
        return agent.attachments.read("police", rid, aid)[0] == "ok"

    await eventually(fetched, what="the shelter to fetch the attachment")
    shelter = m.api("shelter")
    status, body, _ = await shelter.call("GET", f"/v1/referrals/{rid}?sender=police")
    assert status == 200 and body["referral"]["body"]
    returned = ",".join(sorted({FIELD_CATEGORY[f] for f in body["referral"]["body"]}))
    inbox = await shelter.inbox()  # the same body, by the same client: the same window
    assert [i["id"] for i in inbox] == [rid]
    assert await fetch_attachment(m, "shelter", rid, aid) == (200, content)
    assert accesses(m, "shelter") == []  # the windows are open
    status, _, _ = await m.api("police").call("GET", f"/v1/referrals/{rid}")
    assert status == 200  # the owner reading its own referral is no access record

    window = agent.limits.access_coalesce_seconds
    move_clock(monkeypatch, tmp_path, window)
    status, _, _ = await shelter.call("GET", f"/v1/referrals/{rid}?sender=police")
    assert status == 200  # after the window: it closes the first, and opens a new one
    bodies = [(e, raw) for e, raw in accesses(m, "shelter") if dict(e.labels)["record"] == "body"]
    [(event, raw)] = bodies
    assert (event.agency, event.referral_id, event.counterpart) == ("shelter", rid, "police")
    assert dict(event.labels) == {
        "categories": returned,
        "client": "case-management",
        "reads": "2",
        "record": "body",
    }
    assert event.reason is None and event.envelope_hash is None and event.key_ids == ()
    for text in ("Mira", "Example", "Wrist", "caseworker", "forced_labour"):
        assert text.encode() not in raw
    assert accesses(m, "police") == []

    move_clock(monkeypatch, tmp_path, 3 * window)
    assert agent.access.flush() in (0, 1, 2)  # or the timers loop signed them
    events = [e for e, _ in accesses(m, "shelter")]
    assert sorted((dict(e.labels)["record"], dict(e.labels)["reads"]) for e in events) == [
        ("attachment", "1"),
        ("body", "1"),
        ("body", "2"),
    ]
    attachment = next(e for e in events if dict(e.labels)["record"] == "attachment")
    assert dict(attachment.labels)["categories"] == "attachments"
    assert agent.store.open_access_count() == 0

    # The owner reads them from the ledger (§11.2); the reader and the others see none.
    ledger = m.sandbox.ledger
    assert ledger is not None

    async def in_ledger() -> bool:
        return len(ledger.store.accesses(owner=None, since=0, after=-1, limit=10)) == 3

    await eventually(in_ledger, what="the access events in the ledger")
    ledger.checkpoint()
    head = await get_json(m.http, ledger.url + "/v1/checkpoint", m.sandbox.auditor_token)
    size, root = head["size"], bytes.fromhex(head["root"])
    url = ledger.url + "/v1/accesses"
    police = ledger_token(m, "police")
    page = await get_json(m.http, f"{url}?since=0&size={size}", police)
    assert sorted(i["event_id"] for i in page["items"]) == sorted(e.event_id for e in events)
    assert page["size"] == size and page["next_cursor"] is None
    for item in page["items"]:
        assert (item["kind"], item["counterpart"], item["agency"]) == (
            "record.accessed",
            "police",
            "shelter",
        )
        leaf = base64.b64decode(item["leaf"])
        verify_inclusion(
            leaf_hash=leaf_hash(leaf),
            index=item["index"],
            size=size,
            proof=[bytes.fromhex(h) for h in item["proof"]],
            root=root,
        )
    first, second = page["items"][:2]
    later = await get_json(m.http, f"{url}?limit=1&cursor={first['index']}", police)
    assert [i["event_id"] for i in later["items"]] == [second["event_id"]]
    assert later["next_cursor"] == str(second["index"])
    assert "proof" not in later["items"][0] and "size" not in later
    newest = max(e.time for e in events)
    after = await get_json(m.http, f"{url}?since={newest + 1}", police)
    assert after["items"] == []
    for other in ("shelter", "coordinator"):  # the reader itself reads no owner's accesses
        assert (await get_json(m.http, url, ledger_token(m, other)))["items"] == []
    everyone = await get_json(m.http, url, m.sandbox.auditor_token)
    assert len(everyone["items"]) == 3
    for query_string, status in (
        ("since=yesterday", 400),
        ("since=-1", 400),
        ("limit=0", 400),
        ("limit=257", 400),  # at most a proof batch a page
        (f"size={size + 1}", 404),
    ):
        async with m.http.get(
            f"{url}?{query_string}", headers={"Authorization": f"Bearer {police}"}
        ) as r:
            assert (r.status, r.content_type) == (status, "application/problem+json"), query_string


def ledger_token(m: Mechanism, agency: str) -> str:
    return (m.setups[agency].home / "ledger.token").read_text().strip()


def test_a_window_counts_its_reads_until_it_ends(store: Store) -> None:
    """Reads of one (client, referral, record) inside the window add up (their categories
    too); the first read at its end returns it closed and opens the next; another record or
    client has a window of its own; the closed ones are taken once."""
    rid = "ab" * 16

    def note(now: int, record: str = "body", categories: str = "identity") -> Any:
        with store.transaction() as tx:
            return store.note_access(
                tx,
                client="cms",
                owner="police",
                referral_id=rid,
                record=record,
                categories=frozenset(categories.split(",")),
                now=now,
                window=60,
            )

    assert note(1000) is None
    assert note(1030, categories="contact") is None
    assert note(1059) is None
    assert note(1010, record="attachment", categories="attachments") is None
    closed = note(1060)
    assert (closed.record, closed.reads, closed.opened_at) == ("body", 3, 1000)
    assert closed.categories == {"contact", "identity"}
    assert store.open_access_count() == 2
    with store.transaction() as tx:
        [attachment] = store.take_closed_accesses(tx, opened_before=1060)
        assert store.take_closed_accesses(tx, opened_before=1060) == []
    assert (attachment.record, attachment.reads) == ("attachment", 1)


def test_a_window_keeps_counting_while_nothing_may_be_signed(store: Store) -> None:
    """While the agency may not sign (its standing is not ok), a read after the window's end
    counts into it instead of closing it; the first read that may sign closes it with every
    read."""
    rid = "cd" * 16

    def note(now: int, *, may_close: bool) -> Any:
        with store.transaction() as tx:
            return store.note_access(
                tx,
                client="cms",
                owner="police",
                referral_id=rid,
                record="body",
                categories=frozenset({"identity"}),
                now=now,
                window=60,
                may_close=may_close,
            )

    assert note(1000, may_close=True) is None
    assert note(1100, may_close=False) is None  # past its end: still counting
    assert note(1200, may_close=False) is None
    closed = note(1300, may_close=True)
    assert (closed.reads, closed.opened_at) == (3, 1000)
    assert store.open_access_count() == 1  # the read at 1300 opened the next
    assert store.open_access_count() == 1
