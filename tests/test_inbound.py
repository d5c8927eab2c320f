"""Receiver-side checks (agents/inbound.py, docs/PROTOCOL.md §6.4): unit tests of every
kind's checks as named scenarios, and hostile envelopes from an agency with valid
credentials, each refused by a running agent with its own reason, audited, counted, and
nothing stored."""

from __future__ import annotations

import base64
import copy
import json
import re
import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from agents import inbound
from agents import lifecycle as L
from agents import referral as R
from agents.messages import (
    CONSENT_WITHDRAWAL,
    DELIVERY_RECEIPT,
    ERASURE_CONFIRMATION,
    ESCALATION,
    OVERDUE,
    REFERRAL,
    REFUSAL,
    TRANSITION,
    DeliveryReceipt,
    Refusal,
)
from agents.resend import RESEND_REQUEST, ResendRequest
from keys import DEFAULT_LIMITS, UntrustedInputError, codec, envelope_hash
from keys.audit import decode_signed_event
from keys.codec import canonical_json
from keys.errors import (
    CategoryNotAllowedError,
    MalformedError,
    NotAnonymousError,
    NotForThisRoleError,
    OutOfRangeError,
    SchemaInvalidError,
    TooDeepError,
    UnexpectedMessageError,
    UnknownMemberError,
    UnknownOutcomeCodeError,
    UnknownReasonCodeError,
)
from keys.ledger_entry import LedgerEntry
from keys.policy import Policy
from keys.subjects import inbox_subject

from . import samples
from .support import Mechanism, agency_keys, eventually, sealed
from .test_agent import connect_as, delivered

EXAMPLES = R.SCHEMA_DIR / "examples" / "valid"
RID = "ab" * 16
CANARY = "ZZ-CANARY-5e1d"
KEY = "A" * 43 + "="  # base64 of 32 zero bytes
NGO = frozenset({"ngo"})
POLICE = frozenset({"police"})
COORDINATOR = frozenset({"coordinator"})


def example(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((EXAMPLES / f"{name}.json").read_text(encoding="utf-8"))
    del doc["$comment"]
    return doc


def message(referral: dict[str, Any], **extra: Any) -> bytes:
    """A referral message as the sending agent builds it (§6.1)."""
    return canonical_json({"referral": {"referral_id": RID, **referral}, **extra})


def for_role(
    doc: dict[str, Any], roles: frozenset[str], policy: Policy | None = None
) -> dict[str, Any]:
    """`doc` as an honest sender minimises it for an agency of `roles` (desk.submit)."""
    body = doc["body"]
    if doc["referral_type"] == "anonymous_notification":
        body = R.anonymise(R.strip_identifying(body))
    allowed = R.categories_for(roles, child=R.is_child(body), policy=policy)
    return {**doc, "body": R.minimise(body, allowed)}


def check(kind: str, body: bytes, roles: frozenset[str] = NGO) -> inbound.Checked:
    return inbound.check(kind, body, roles=roles, limits=DEFAULT_LIMITS)


# --------------------------------------------------------------------------- what passes


#: Every valid example with every role that receives referrals (anonymous notifications go
#: to coordinators only).
HONEST = [
    (p.stem, role)
    for p in sorted(EXAMPLES.glob("*.json"))
    for role in sorted(set(R.ROLE_CATEGORIES) - {"auditor"})
    if role == "coordinator" or example(p.stem)["referral_type"] != "anonymous_notification"
]


@pytest.mark.parametrize(("name", "role"), HONEST)
def test_what_an_honest_sender_sends_is_accepted(name: str, role: str) -> None:
    """Every valid example, minimised (and for anonymous notifications, anonymised) for a
    role as the sending agent does it, passes the receiver's checks at an agency of that
    role: fields the schema requires but the role never receives may be missing. A child's
    schema v2 referral names its provision from a national policy's list, so it is sent
    and received under one (which also keeps a child's identity to its roles). One naming
    a service names a provider of the receiver's directory (another agency's catalogue is
    its sender's check)."""
    doc = example(name)
    roles = frozenset({role})
    ref = doc.get("legal_basis_ref")
    policy = None if ref is None else Policy(country="LT", child_legal_bases=(ref,))
    sent = for_role(doc, roles, policy)
    key = {"attachment_key": KEY} if "attachments" in sent["body"] else {}
    provider = doc.get("service", {}).get("agency")
    services = inbound.ServiceView(
        me="receiver", own=frozenset[str]().__contains__, is_provider={provider}.__contains__
    )
    checked = inbound.check(
        REFERRAL,
        message(sent, **key),
        roles=roles,
        limits=DEFAULT_LIMITS,
        policy=policy,
        services=services,
    )
    assert isinstance(checked, inbound.CheckedReferral)
    assert checked.referral_id == doc.get("referral_id", RID)
    assert checked.referral.body == sent["body"]
    assert checked.attachment_key == (bytes(32) if key else None)


def test_a_referral_with_attachments_needs_its_key() -> None:
    """Cited attachments come with their 32-byte key; the key alone, or attachments without
    it, are schema-invalid."""
    doc = samples.referral()
    cited = {"attachment_id": "b" * 32, "media_type": "application/pdf", "size": 10}
    doc["body"]["attachments"] = [{**cited, "sha256": "c" * 64}]
    checked = check(REFERRAL, message(for_role(doc, NGO), attachment_key=KEY))
    assert isinstance(checked, inbound.CheckedReferral)
    assert checked.attachment_key == bytes(32)
    with pytest.raises(SchemaInvalidError):
        check(REFERRAL, message(for_role(doc, NGO)))
    with pytest.raises(SchemaInvalidError):
        check(REFERRAL, message(for_role(samples.referral(), NGO), attachment_key=KEY))


def test_the_other_kinds_as_senders_build_them_are_accepted() -> None:
    """Withdrawals, confirmations, escalations (at a coordinator), receipts, transitions and
    resend requests exactly as agents/desk.py and agents/resend.py encode them pass."""
    receipt_id = str(uuid.uuid4())
    withdrawal = canonical_json({"receipt_id": receipt_id, "referral_ids": [RID]})
    assert check(CONSENT_WITHDRAWAL, withdrawal) == inbound.ConsentWithdrawal(receipt_id, (RID,))
    erased = canonical_json({"receipt_id": receipt_id, "referral_ids": [], "erased_at": 5})
    assert check(ERASURE_CONFIRMATION, erased) == inbound.ErasureConfirmation(receipt_id, (), 5)
    notice = {"referral_id": RID, "recipient": "shelter", "urgency": "urgent", "submitted_at": 1}
    assert check(ESCALATION, canonical_json(notice), COORDINATOR) == inbound.Escalation(
        RID, "shelter", "urgent", 1
    )
    receipt = DeliveryReceipt("cd" * 16, "ef" * 32, 7)
    assert check(DELIVERY_RECEIPT, receipt.encode()) == receipt
    step = L.Transition(RID, "shelter", "acknowledged", "declined", "recipient", "other", None, 9)
    assert check(TRANSITION, step.encode()) == step
    request = ResendRequest(since=3, have=(RID,))
    assert check(RESEND_REQUEST, request.encode()) == request
    refusal = Refusal("cd" * 16, "ef" * 32, "category-not-allowed", 11)
    assert check(REFUSAL, refusal.encode()) == refusal


#: An overdue notice as agents/desk.py builds it (PROTOCOL §8.5).
_OVERDUE = {
    "clock": "respond",
    "due_at": 1209601,
    "recipient": "shelter",
    "referral_id": RID,
    "started_at": 1,
    "urgency": "routine",
}


def test_an_overdue_notice_is_accepted_at_a_coordinator_under_a_policy() -> None:
    """An overdue notice as senders build it passes at a coordinator whose directory has a
    national policy (every tier has a respond clock), and is refused without one."""
    body = canonical_json(_OVERDUE)
    policy = Policy(country="LT")
    checked = inbound.check(OVERDUE, body, roles=COORDINATOR, limits=DEFAULT_LIMITS, policy=policy)
    assert checked == inbound.Overdue(**_OVERDUE)
    with pytest.raises(SchemaInvalidError):
        check(OVERDUE, body, COORDINATOR)


# --------------------------------------------------------------------------- what is refused


def _narrative_to_ngo() -> bytes:
    doc = for_role(samples.referral(), NGO)
    doc["body"]["narrative"] = CANARY
    return message(doc)


def _deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def _anonymous(change: Callable[[dict[str, Any]], None]) -> bytes:
    doc = example("anonymous-notification")
    change(doc["body"])
    return message(doc)


def _withdrawal(**fields: Any) -> bytes:
    return canonical_json({"receipt_id": str(uuid.uuid4()), "referral_ids": [RID], **fields})


def _transition(reason: Any) -> bytes:
    return codec.pack([1, RID, "shelter", "acknowledged", "declined", "recipient", reason, None, 9])


def _set(doc: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {**doc, **fields}


GOOD = for_role(samples.referral(), NGO)
REFUSED: list[tuple[str, str, bytes, frozenset[str], type[UntrustedInputError]]] = [
    ("a narrative (case) to an NGO", REFERRAL, _narrative_to_ngo(), NGO, CategoryNotAllowedError),
    (
        "perpetrator information (criminal) to an NGO",
        REFERRAL,
        message(_set(GOOD, body={**GOOD["body"], "perpetrator_information": [{"roles": []}]})),
        NGO,
        CategoryNotAllowedError,
    ),
    (
        "health to the police",
        REFERRAL,
        message(for_role(samples.referral(), NGO)),
        POLICE,
        CategoryNotAllowedError,
    ),
    (
        "urgency whenever",
        REFERRAL,
        message(_set(GOOD, urgency="whenever")),
        NGO,
        SchemaInvalidError,
    ),
    (
        "a bad country code",
        REFERRAL,
        message(_set(GOOD, body={**GOOD["body"], "citizenship": [CANARY]})),
        NGO,
        SchemaInvalidError,
    ),
    ("no referral id", REFERRAL, canonical_json({"referral": GOOD}), NGO, SchemaInvalidError),
    ("not an object", REFERRAL, b"[]", NGO, SchemaInvalidError),
    ("no referral", REFERRAL, b'{"referral":1}', NGO, SchemaInvalidError),
    (
        "an extra member of the message",
        REFERRAL,
        message(GOOD, **{CANARY: "x"}),
        NGO,
        UnknownMemberError,
    ),
    (
        "an extra member of the referral",
        REFERRAL,
        message(_set(GOOD, note=CANARY)),
        NGO,
        UnknownMemberError,
    ),
    (
        "an extra member of the body",
        REFERRAL,
        message(_set(GOOD, body={**GOOD["body"], "favourite_colour": CANARY})),
        NGO,
        UnknownMemberError,
    ),
    ("100 000 levels deep", REFERRAL, _deep(100_000), NGO, TooDeepError),
    ("17 levels deep", CONSENT_WITHDRAWAL, _deep(17), NGO, TooDeepError),
    (
        "a huge integer",
        REFERRAL,
        message(_set(GOOD, urgency=10**4000)),
        NGO,
        OutOfRangeError,
    ),
    (
        "an integer past 2^53",
        ERASURE_CONFIRMATION,
        _withdrawal(erased_at=2**53),
        NGO,
        OutOfRangeError,
    ),
    ("a float", ERASURE_CONFIRMATION, _withdrawal(erased_at=1.5), NGO, OutOfRangeError),
    ("not JSON", REFERRAL, b"\xff not json", NGO, MalformedError),
    ("not canonical", REFERRAL, b'{ "referral": 1 }', NGO, MalformedError),
    (
        "a region in an anonymous notification",
        REFERRAL,
        _anonymous(lambda b: b["locations"][0].update(region=CANARY)),
        COORDINATOR,
        NotAnonymousError,
    ),
    (
        "indicators in an anonymous notification",
        REFERRAL,
        _anonymous(lambda b: b.update(indicators=["anna_petrova"])),
        COORDINATOR,
        NotAnonymousError,
    ),
    (
        "a name in an anonymous notification",
        REFERRAL,
        _anonymous(lambda b: b.update(names={"given_names": CANARY})),
        COORDINATOR,
        NotAnonymousError,
    ),
    (
        "an anonymous notification to an NGO",
        REFERRAL,
        _anonymous(lambda b: None),
        NGO,
        NotForThisRoleError,
    ),
    (
        "an escalation to an NGO",
        ESCALATION,
        canonical_json(
            {"referral_id": RID, "recipient": "a", "urgency": "urgent", "submitted_at": 1}
        ),
        NGO,
        NotForThisRoleError,
    ),
    (
        "a routine escalation",
        ESCALATION,
        canonical_json(
            {"referral_id": RID, "recipient": "a", "urgency": "routine", "submitted_at": 1}
        ),
        COORDINATOR,
        SchemaInvalidError,
    ),
    (
        "an overdue notice to an NGO",
        OVERDUE,
        canonical_json(_OVERDUE),
        NGO,
        NotForThisRoleError,
    ),
    (
        "an overdue notice naming a free-text recipient",
        OVERDUE,
        canonical_json({**_OVERDUE, "recipient": CANARY}),
        COORDINATOR,
        SchemaInvalidError,
    ),
    (
        "a withdrawal with an extra member",
        CONSENT_WITHDRAWAL,
        _withdrawal(x=1),
        NGO,
        UnknownMemberError,
    ),
    (
        "a withdrawal naming a free-text id",
        CONSENT_WITHDRAWAL,
        _withdrawal(referral_ids=[CANARY]),
        NGO,
        SchemaInvalidError,
    ),
    (
        "a transition reason spelling a name",
        TRANSITION,
        _transition("anna-petrova"),
        NGO,
        UnknownReasonCodeError,
    ),
    (
        "a free-text transition reason",
        TRANSITION,
        _transition("She said no"),
        NGO,
        UnknownReasonCodeError,
    ),
    (
        "a transition outcome outside the vocabulary",
        TRANSITION,
        codec.pack([1, RID, "shelter", "in_progress", "closed", "recipient", None, "rehoused", 9]),
        NGO,
        UnknownOutcomeCodeError,
    ),
    ("a transition reason as bytes", TRANSITION, _transition(b"other"), NGO, MalformedError),
    ("a 200-deep msgpack transition", TRANSITION, b"\x91" * 200 + b"\xc0", NGO, TooDeepError),
    (
        "a receipt naming no hash",
        DELIVERY_RECEIPT,
        DeliveryReceipt("cd" * 16, CANARY, 7).encode(),
        NGO,
        SchemaInvalidError,
    ),
    (
        "a receipt whose version is true, not 1",
        DELIVERY_RECEIPT,
        codec.pack([True, "cd" * 16, "ef" * 32, 7]),
        NGO,
        MalformedError,
    ),
    (
        "a refusal with a reason no receiver sends",
        REFUSAL,
        Refusal("cd" * 16, "ef" * 32, "bad-signature", 11).encode(),
        NGO,
        SchemaInvalidError,
    ),
    ("an unknown kind", "gossip", b"{}", NGO, UnexpectedMessageError),
]


@pytest.mark.parametrize(
    ("kind", "body", "roles", "error"),
    [pytest.param(*row[1:], id=row[0]) for row in REFUSED],
)
def test_refused_with_its_own_reason(
    kind: str, body: bytes, roles: frozenset[str], error: type[UntrustedInputError]
) -> None:
    """Each hostile body is refused with exactly its failure's class, quickly, and the
    refusal never repeats a received value."""
    start = time.perf_counter()
    with pytest.raises(UntrustedInputError) as refused:
        check(kind, body, roles)
    assert time.perf_counter() - start < 1.0
    assert type(refused.value) is error
    assert CANARY not in str(refused.value)
    assert "anna" not in str(refused.value)


def test_every_failure_kind_has_its_own_reason() -> None:
    """The refusal classes of the receiver's checks carry distinct, well-formed reasons."""
    classes = {row[4] for row in REFUSED}
    reasons = [c.reason for c in classes]
    assert len(set(reasons)) == len(reasons)
    assert {
        "category-not-allowed",
        "schema-invalid",
        "unknown-member",
        "too-deep",
        "out-of-range",
        "not-anonymous",
        "not-for-this-role",
        "unknown-reason-code",
        "unknown-outcome-code",
    } <= set(reasons)


def test_a_role_this_agent_does_not_know_grants_nothing() -> None:
    """An agency whose directory roles are unknown to this agent version receives no
    category (fail closed), and a role string is misuse."""
    with pytest.raises(CategoryNotAllowedError):
        check(REFERRAL, message(GOOD), frozenset({"oracle"}))
    with pytest.raises(TypeError):
        inbound.check(REFERRAL, message(GOOD), roles="ngo", limits=DEFAULT_LIMITS)


# --------------------------------------------------------------------------- on the bus


def _table_rows(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the tables a received message could change, but the refusal notices the
    agent sends (§6.5; `_notices` counts them)."""
    tables = (
        "inbox",
        "referrals",
        "history",
        "data_keys",
        "consent_uses",
        "outbox",
        "deliveries",
        "webhook_outbox",
    )
    out = {}
    with sqlite3.connect(db) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        for table in tables:
            if table in names:
                out[table] = conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()  # noqa: S608
        notices = {
            r[0] for r in conn.execute("SELECT message_id FROM outbox WHERE kind = 'refusal'")
        }
    out["outbox"] = [r for r in out["outbox"] if r[0] not in notices]
    out["deliveries"] = [r for r in out["deliveries"] if r[0] not in notices]
    return out


def _notices(db: Path) -> int:
    """How many refusal notices (§6.5) the agent has queued."""
    with sqlite3.connect(db) as conn:
        (n,) = conn.execute("SELECT count(*) FROM outbox WHERE kind = 'refusal'").fetchone()
    return int(n)


async def _refusals_in_ledger(m: Mechanism, agency: str) -> dict[str, tuple[str, str | None]]:
    """envelope hash -> (reason, counterpart) of `agency`'s message.rejected events, read
    from the ledger's API with the auditor token and decoded from the signed leaves."""
    ledger = m.sandbox.ledger
    assert ledger is not None
    auth = {"Authorization": f"Bearer {m.sandbox.auditor_token}"}
    found: dict[str, tuple[str, str | None]] = {}
    async with m.http.get(
        f"{ledger.url}/v1/events", params={"q": "message.rejected", "limit": "500"}, headers=auth
    ) as r:
        assert r.status == 200
        items = (await r.json())["items"]
    for item in items:
        if (item["kind"], item["agency"]) != ("message.rejected", agency):
            continue
        async with m.http.get(f"{ledger.url}/v1/events/{item['event_id']}", headers=auth) as r:
            leaf = base64.b64decode((await r.json())["leaf"])
        event = decode_signed_event(LedgerEntry.decode(leaf).signed_event)[0]
        assert event.envelope_hash is not None and event.reason is not None
        found[event.envelope_hash] = (event.reason, event.counterpart)
    return found


def items_of(envelopes: dict[str, list[tuple[str, bytes]]]) -> list[tuple[str, bytes]]:
    return [item for items in envelopes.values() for item in items]


def _rejected_metric(text: str, reason: str) -> float:
    for line in text.splitlines():
        if line.startswith(f'nrm_messages_rejected_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    return 0.0


async def test_hostile_bodies_from_a_valid_agency_are_refused_audited_counted(
    mechanism: Mechanism,
) -> None:
    """Police, with its own valid keys and bus credentials, seals to the shelter (an NGO) a
    narrative, an invalid urgency, an extra top-level member, a 100 000-deep body, a huge
    integer and a transition reason outside the vocabulary, and to the co-ordinator an
    anonymous notification with free text: each is refused with its own reason, in the log,
    in the ledger (naming police as the counterpart) and in the metrics, and neither
    recipient's rows change; the shelter then still receives a good referral."""
    m = mechanism
    police = agency_keys(m, "police")
    rid = await m.api("police").refer(["shelter"], samples.referral())
    await delivered(m, "police", rid)
    good = for_role(samples.referral(), NGO)
    narrative = copy.deepcopy(good)
    narrative["body"]["narrative"] = "Recruited by a man called " + CANARY
    free_text = example("anonymous-notification")
    free_text["body"]["locations"][0]["region"] = CANARY
    hostile: dict[str, list[tuple[str, str, bytes]]] = {
        "category-not-allowed": [("shelter", REFERRAL, message(narrative))],
        "schema-invalid": [("shelter", REFERRAL, message(_set(good, urgency="whenever")))],
        "unknown-member": [("shelter", REFERRAL, message(good, extra=CANARY))],
        "too-deep": [("shelter", REFERRAL, _deep(100_000))],
        "out-of-range": [
            (
                "shelter",
                REFERRAL,
                message(_set(good, created=0)).replace(b'"created":0', b'"created":' + b"9" * 5000),
            )
        ],
        "unknown-reason-code": [("shelter", TRANSITION, _transition("anna-petrova"))],
        "not-anonymous": [("coordinator", REFERRAL, message(free_text))],
    }
    envelopes: dict[str, list[tuple[str, bytes]]] = {}
    for reason, items in hostile.items():
        for recipient, kind, body in items:
            data = sealed(m, police, recipient, kind, body)
            envelopes.setdefault(reason, []).append((recipient, data))
    before = {a: _table_rows(m.database(a)) for a in ("shelter", "coordinator")}
    metrics_before = {a: m.agents[a].metrics_text().decode() for a in ("shelter", "coordinator")}

    with capture_logs() as logs:
        async with connect_as(m, "police") as nc:
            js = nc.jetstream()
            for items in envelopes.values():
                for recipient, data in items:
                    await js.publish(
                        inbox_subject(recipient), data, headers={"Nats-Msg-Id": uuid.uuid4().hex}
                    )

        def refusals(agencies: tuple[str, ...]) -> list[dict[str, Any]]:
            return [
                e for e in logs if e["event"] == "message_rejected" and e.get("agency") in agencies
            ]

        async def all_rejected() -> bool:
            # ... and police refuses each refusal notice (§6.5) of what its agent never sent,
            # without answering it.
            return len(refusals(("shelter", "coordinator"))) >= len(envelopes) and len(
                refusals(("police",))
            ) >= len(envelopes)

        await eventually(all_rejected, timeout=30, what="every hostile body to be refused")
    logged = {
        (e["reason"], e["envelope_hash"], e.get("sender"))
        for e in refusals(("shelter", "coordinator"))
    }
    assert {(e["reason"], e["kind"]) for e in refusals(("police",))} == {("unexpected", "refusal")}
    assert logged == {
        (reason, envelope_hash(data), "police")
        for reason, items in envelopes.items()
        for _, data in items
    }
    for e in logs:
        assert CANARY not in json.dumps(e, default=str)
    for agency in ("shelter", "coordinator"):
        assert _table_rows(m.database(agency)) == before[agency], agency
        assert _notices(m.database(agency)) == sum(1 for a, _ in items_of(envelopes) if a == agency)
        text = m.agents[agency].metrics_text().decode()
        for reason, items in envelopes.items():
            n = sum(1 for recipient, _ in items if recipient == agency)
            was = _rejected_metric(metrics_before[agency], reason)
            assert _rejected_metric(text, reason) == was + n, (agency, reason)

    async def audited() -> bool:
        for agency in ("shelter", "coordinator"):
            found = await _refusals_in_ledger(m, agency)
            for reason, items in envelopes.items():
                for recipient, data in items:
                    if recipient == agency and found.get(envelope_hash(data)) != (
                        reason,
                        "police",
                    ):
                        return False
        return True

    await eventually(audited, timeout=30, what="every refusal in the ledger with its reason")
    rid = await m.api("police").refer(["shelter"], samples.referral())
    await delivered(m, "police", rid)

    # The API refuses a reason outside the vocabulary before anything is signed or sent.
    for reason in ("anna-petrova", "She said no"):
        status, problem, ctype = await m.api("shelter").call(
            "POST", f"/v1/referrals/{rid}/transitions", json={"to": "cancelled", "reason": reason}
        )
        assert (status, ctype) == (400, "application/problem+json"), problem
        assert "no-capacity" in problem["detail"] and reason not in json.dumps(problem)
    status, problem, _ = await m.api("shelter").call(
        "POST", f"/v1/referrals/{rid}/transitions", json={"to": "cancelled", "reason": "duplicate"}
    )
    assert status == 202, problem


async def test_a_failing_handler_ends_in_an_audited_refusal(mechanism: Mechanism) -> None:
    """A handler that fails as no check foresaw (RecursionError, a value the store cannot
    hold) refuses its message as `unprocessable`, audited and counted, at once; one that
    fails on the agent's own database is retried, then refused the same way, never dropped
    unrecorded; the inbox stays as it was and the agent goes on receiving."""
    m = mechanism
    shelter = m.agents["shelter"]
    police = agency_keys(m, "police")
    directory = shelter.trust.directory
    assert directory is not None
    original = shelter.handlers[TRANSITION]

    def at_shelter(e: dict[str, Any]) -> bool:
        return (e["event"], e.get("agency")) == ("message_rejected", "shelter")

    def fails(error: BaseException) -> Any:
        def handler(*args: Any) -> None:
            raise error

        return handler

    before = _table_rows(m.database("shelter"))
    try:
        for error, attempts in (
            (RecursionError("deep"), 1),
            (OverflowError("Python int too large to convert to SQLite INTEGER"), 1),
            (sqlite3.OperationalError("disk I/O error"), 5),
        ):
            shelter.handlers[TRANSITION] = fails(error)
            data = sealed(m, police, "shelter", TRANSITION, _transition("other"))
            with capture_logs() as logs:
                async with connect_as(m, "police") as nc:
                    await nc.jetstream().publish(
                        inbox_subject("shelter"), data, headers={"Nats-Msg-Id": uuid.uuid4().hex}
                    )

                async def refused() -> bool:
                    return any(at_shelter(e) for e in logs)

                await eventually(refused, timeout=30, what=f"{type(error).__name__} refused")
            rejected = [e for e in logs if at_shelter(e)]
            assert [(e["reason"], e["envelope_hash"], e["error"]) for e in rejected] == [
                ("unprocessable", envelope_hash(data), type(error).__name__)
            ]
            failures = [e for e in logs if e["event"] == "handler_failed"]
            assert len(failures) == (attempts if attempts > 1 else 0), type(error).__name__
        # A referral police's own agent really sent: the refusal notice (§6.5) fails that
        # copy at police, with the shelter's reason, on police's record.
        shelter.handlers[REFERRAL] = fails(RecursionError("deep"))
        refused_rid = await m.api("police").refer(["shelter"], samples.referral())

        async def failed_at_police() -> bool:
            _, got, _ = await m.api("police").call("GET", f"/v1/referrals/{refused_rid}")
            (recipient,) = got["recipients"]
            return (recipient["status"], recipient.get("failure")) == ("failed", "unprocessable")

        await eventually(failed_at_police, timeout=30, what="the refusal to reach police")
    finally:
        shelter.handlers[TRANSITION] = original
        shelter.handlers[REFERRAL] = shelter._on_referral
    assert _table_rows(m.database("shelter")) == before
    assert _rejected_metric(shelter.metrics_text().decode(), "unprocessable") == 4
    assert 'nrm_outbox_failed_total{reason="unprocessable"} 1.0' in (
        m.agents["police"].metrics_text().decode()
    )
    rid = await m.api("police").refer(["shelter"], samples.referral())
    await delivered(m, "police", rid)


def test_the_documented_refusal_reasons_are_the_implemented_ones() -> None:
    """PROTOCOL.md §6.4 lists every reason an agent records in message.rejected, each the
    reason of one exception class, and the body checks' reasons are all among them."""
    text = (Path(__file__).parent.parent / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")
    section = text.split("#### Refusal reasons", 1)[1].split("## 7.", 1)[0]
    documented = set(re.findall(r"`([a-z][a-z0-9-]+)`", section.split("The reference", 1)[0]))
    documented -= {"message.rejected"}

    def subclasses(c: type[UntrustedInputError]) -> list[type[UntrustedInputError]]:
        return [c, *(s for sub in c.__subclasses__() for s in subclasses(sub))]

    implemented = [c.reason for c in subclasses(UntrustedInputError)]
    assert documented <= set(implemented)
    assert {row[4].reason for row in REFUSED} | {"unprocessable"} <= documented
