"""Every test vector through the real code (docs/PROTOCOL.md §4.9); the generator reproduces
them exactly."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from nacl.public import PrivateKey, PublicKey
from nacl.signing import SigningKey, VerifyKey

import keys.errors
from agents import contributions, inbound
from agents.agent import Agent
from agents.config import AgentConfig
from agents.consent import decode_stored, verify_receipt
from agents.decisions import IDENTIFICATION_DECISION, DecisionMessage, UnderPair, check_received
from agents.lifecycle import Transition
from agents.messages import DELIVERY_RECEIPT, REFUSAL, TRANSITION, DeliveryReceipt, Refusal
from agents.protections import PROTECTION_NOTICE, NoticeMessage
from agents.protections import check_received as check_notice
from agents.reconsideration import RECONSIDERATION_REQUEST, decode_at
from agents.reconsideration import check_received as check_request
from agents.resend import ResendRequest
from agents.transfers import (
    CASE_OWNER_CHANGED,
    CASE_TRANSFER,
    TRANSFER_REQUEST,
    CaseTransfer,
    TransferRequest,
    TransferStep,
    decode_owner_changed_at,
)
from agents.transport import Position, Verdict
from agents.trust import TrustState
from broker.ledger import check_signer_may
from keys import DEFAULT_LIMITS, AgencyKeys, UntrustedInputError, open_envelope, seal
from keys.audit import AuditEvent, SignedEvent, decode_signed_event, verify_event
from keys.catalogue import Capacity, Catalogue, verify_capacity, verify_catalogue
from keys.checkpoint import Checkpoint, verify_checkpoint
from keys.checkpoint import key_id as note_key_id
from keys.codec import canonical_json, parse_json
from keys.decision import (
    Decision,
    check_authority,
    check_reason,
    check_second_stage,
    claimed,
    verify_decision,
)
from keys.directory import (
    AgencyEntry,
    Directory,
    KeyEntry,
    Root,
    verify_directory,
    verify_initial_root,
    verify_root_update,
)
from keys.envelope import Recipient, UnsafeFixedRandomness
from keys.errors import KeyFileError
from keys.identity import (
    ENCRYPTION_KID_LABEL,
    SIGNING_KID_LABEL,
    BadProofError,
    MissingProofError,
    PublicIdentity,
    encryption_kid,
    fingerprint,
    key_id,
    nats_public_key,
    proof_statement,
    signing_kid,
    verify_proof,
)
from keys.key_history import KeyWindow
from keys.keyfile import open_admin_key, open_keys
from keys.ledger_entry import LedgerEntry
from keys.merkle import leaf_hash, root_of, verify_consistency, verify_inclusion
from keys.policy import Policy, policy_from_doc
from keys.protection import Notice, check_follows, verify_notice
from keys.report import Report, report_id, verify_report
from keys.restore import verify_restore
from keys.subjects import DIRECTORY_KEY, inbox_stream
from runtime import clock
from runtime.endpoint import BusEndpoint

VECTORS = Path(__file__).parent / "vectors"
FILES = sorted(VECTORS.glob("envelope-*.txt"))


def parse(path: Path) -> tuple[dict[str, str], bytes]:
    head, _, tail = path.read_text(encoding="utf-8").partition("\n\n")
    fields = dict(line.split(": ", 1) for line in head.splitlines())
    return fields, base64.b64decode("".join(tail.split()), validate=True)


def _opt(text: str) -> int | None:
    return None if text == "none" else int(text)


#: Some valid X25519 public key for the sender's entry (the vectors never seal to it).
_BOX = bytes(PrivateKey(bytes(range(1, 33))).public_key)


def one_key_directory(
    fields: dict[str, str],
    agency: str,
    public: str,
    roles: tuple[str, ...] = ("police",),
    policy: Policy | None = None,
) -> Directory:
    """A real directory (unsigned: the vector is about the key, not the directory) listing
    exactly one signing key of `agency`, with `roles`, with the vector's validity fields
    (under `policy`, which the roles of spec_version 2 need)."""
    key = bytes.fromhex(public)
    status = fields["key_status"]
    entry = AgencyEntry(
        agency=agency,
        name=agency,
        roles=roles,
        signing_keys=(
            KeyEntry(
                kid=key_id(SIGNING_KID_LABEL, key),
                public=key,
                valid_from=int(fields["key_valid_from"]),
                valid_until=_opt(fields["key_valid_until"]),
                status=status,  # type: ignore[arg-type]
                revoked_at=_opt(fields["key_revoked_at"]),
                reason="vector" if status == "revoked" else None,
            ),
        ),
        encryption_keys=(KeyEntry(key_id(ENCRYPTION_KID_LABEL, _BOX), _BOX, 0, None, "active"),),
        nats_key="U" + "A" * 55,
    )
    return Directory(version=1, expires=1 << 40, agencies=(entry,), policy=policy)


def test_vectors_exist() -> None:
    """The committed vector set covers ok and failure outcomes."""
    outcomes = {parse(path)[0]["expect"] for path in FILES}
    assert len(FILES) >= 15
    assert {"ok", "bad-signature", "undecryptable", "malformed", "expired"} <= outcomes


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_vector(path: Path) -> None:
    """Opening the vector's envelope gives exactly the outcome its `expect` line states."""
    fields, data = parse(path)
    secret = PrivateKey(bytes.fromhex(fields["recipient_x25519_secret"]))
    seed = SigningKey(bytes.fromhex(fields["sender_seed"]))
    assert bytes(seed.verify_key).hex() == fields["sender_ed25519_public"]
    signers = one_key_directory(fields, fields["sender_agency"], fields["trusted_ed25519_public"])

    def open_it() -> bytes:
        return open_envelope(
            data,
            me=fields["recipient"],
            decryption_keys={encryption_kid(secret.public_key): secret},
            signers=signers,
            now=int(fields["now"]),
        ).body

    if fields["expect"] == "ok":
        assert open_it() == bytes.fromhex(fields["body"])
    else:
        with pytest.raises(UntrustedInputError) as caught:
            open_it()
        assert caught.value.reason == fields["expect"]


RESTORE_FILES = sorted(VECTORS.glob("restore-*.txt"))


@pytest.mark.parametrize("path", RESTORE_FILES, ids=[p.stem for p in RESTORE_FILES])
def test_restore_vector(path: Path) -> None:
    """Verifying the vector's restore declaration gives exactly its `expect` outcome and,
    when ok, exactly its fields."""
    fields, data = parse(path)
    key = VerifyKey(bytes.fromhex(fields["ledger_ed25519_public"]))
    if fields["expect"] != "ok":
        with pytest.raises(UntrustedInputError) as caught:
            verify_restore(data, key=key, origin=fields["origin"])
        assert caught.value.reason == fields["expect"]
        return
    d = verify_restore(data, key=key, origin=fields["origin"])
    for name in ("seq", "restored_size", "restored_root", "previous_size", "previous_root"):
        value = getattr(d, name)
        shown = "nil" if value is None else value.hex() if isinstance(value, bytes) else str(value)
        assert shown == fields[name], name


RESEND_FILES = sorted(VECTORS.glob("resend-request-*.txt"))


@pytest.mark.parametrize("path", RESEND_FILES, ids=[p.stem for p in RESEND_FILES])
def test_resend_request_vector(path: Path) -> None:
    """Decoding the vector's resend request body gives exactly its `expect` outcome and,
    when ok, exactly its fields."""
    fields, body = parse(path)
    if fields["expect"] != "ok":
        with pytest.raises(UntrustedInputError) as caught:
            ResendRequest.decode(body)
        assert caught.value.reason == fields["expect"]
        return
    request = ResendRequest.decode(body)
    assert request.since == int(fields["since"])
    assert ",".join(request.have) == fields["have"]


REFUSAL_FILES = sorted(VECTORS.glob("refusal-*.txt"))


@pytest.mark.parametrize("path", REFUSAL_FILES, ids=[p.stem for p in REFUSAL_FILES])
def test_refusal_vector(path: Path) -> None:
    """The receiver's checks of a refusal body (agents/inbound.py) give exactly the vector's
    `expect` outcome and, when ok, exactly its fields."""
    fields, body = parse(path)
    if fields["expect"] != "ok":
        with pytest.raises(UntrustedInputError) as caught:
            inbound.check(REFUSAL, body, roles={"police"}, limits=DEFAULT_LIMITS)
        assert caught.value.reason == fields["expect"]
        return
    refusal = inbound.check(REFUSAL, body, roles={"police"}, limits=DEFAULT_LIMITS)
    assert refusal == Refusal(
        fields["message_id"], fields["envelope_hash"], fields["reason"], int(fields["refused_at"])
    )


def _files(prefix: str) -> list[Path]:
    return sorted(VECTORS.glob(f"{prefix}*.txt"))


def _refused(expect: str, call: Callable[[], object]) -> None:
    """`call` raises the untrusted-input error whose reason is `expect`."""
    with pytest.raises(UntrustedInputError) as caught:
        call()
    assert caught.value.reason == expect


def each_vector(prefix: str) -> pytest.MarkDecorator:
    """Run the test once for each vector file whose name starts with `prefix`."""
    files = _files(prefix)
    return pytest.mark.parametrize("path", files, ids=[p.stem for p in files])


@each_vector("canonical-json-encode-")
def test_canonical_json_encode_vector(path: Path) -> None:
    """Any JSON text (`input`), parsed and encoded canonically (§1.3), gives exactly the
    vector's bytes, and those bytes pass the strict decoder."""
    fields, canonical = parse(path)
    value = json.loads(base64.b64decode(fields["input"]))
    assert canonical_json(value) == canonical
    assert (
        parse_json(canonical, max_bytes=1 << 20, max_depth=16, max_integer=(1 << 53) - 1) == value
    )


@each_vector("canonical-json-decode-")
def test_canonical_json_decode_vector(path: Path) -> None:
    """The strict body decoder (§6.4 steps 1-5) gives exactly the vector's outcome."""
    fields, data = parse(path)
    limits = DEFAULT_LIMITS

    def decode() -> object:
        return parse_json(
            data,
            max_bytes=limits.max_body_bytes,
            max_depth=limits.max_body_depth,
            max_integer=limits.max_json_integer,
        )

    if fields["expect"] == "ok":
        assert canonical_json(decode()) == data
    else:
        _refused(fields["expect"], decode)


@each_vector("root-")
def test_root_vector(path: Path) -> None:
    """An initial root checked with its own keys, or a root update over `trusted_root`
    (§7.5 R1-R4), gives exactly the vector's outcome and fields."""
    fields, data = parse(path)
    trusted = None
    if fields["trusted_root"] != "none":
        trusted = verify_initial_root(base64.b64decode(fields["trusted_root"]))

    def verify() -> Root:
        if trusted is None:
            return verify_initial_root(data)
        return verify_root_update(trusted, data)

    if fields["expect"] != "ok":
        _refused(fields["expect"], verify)
        return
    root = verify()
    assert root.version == int(fields["version"])
    assert root.threshold == int(fields["threshold"])
    assert ",".join(sorted(root.keys)) == fields["key_ids"]


@each_vector("directory-")
def test_directory_vector(path: Path) -> None:
    """A directory verified against `root` and the `current` one at `now` (§7.5 D1-D5)
    gives exactly the vector's outcome and fields."""
    fields, data = parse(path)
    root = verify_initial_root(base64.b64decode(fields["root"]))
    now = int(fields["now"])
    current = None
    if fields["current"] != "none":
        current = verify_directory(root, base64.b64decode(fields["current"]), now=now, current=None)

    def verify() -> Directory:
        return verify_directory(root, data, now=now, current=current)

    if fields["expect"] != "ok":
        _refused(fields["expect"], verify)
        return
    directory = verify()
    assert directory.version == int(fields["version"])
    assert ",".join(a.agency for a in directory.agencies) == fields["agencies"]
    assert directory.spec_version == int(fields["spec_version"])
    country = None if directory.policy is None else directory.policy.country
    assert (country or "none") == fields["policy_country"]


def _event_fields(event: AuditEvent) -> dict[str, str]:
    def shown(value: str | None) -> str:
        return "none" if value is None else value

    return {
        "event_id": event.event_id,
        "event_agency": event.agency,
        "kind": event.kind,
        "referral_id": shown(event.referral_id),
        "counterpart": shown(event.counterpart),
        "envelope_hash": shown(event.envelope_hash),
        "key_ids": ",".join(event.key_ids),
        "reason": shown(event.reason),
        "labels": ",".join(f"{a}={b}" for a, b in event.labels),
        "time": str(event.time),
    }


@each_vector("audit-event-")
def test_audit_event_vector(path: Path) -> None:
    """Verifying the signed event (§9.0) under the one trusted key, as listed, and with
    `signer_roles` the ledger's check of who signs the kind, gives exactly the vector's
    outcome and, when ok, every field of the event."""
    fields, data = parse(path)
    roles = tuple(fields["signer_roles"].split(",")) if "signer_roles" in fields else None
    signers = one_key_directory(
        fields,
        fields["agency"],
        fields["signer_ed25519_public"],
        roles or ("police",),
        # the roles of §7.3 only a policy's directory lists (spec_version 2)
        policy=None if roles is None else Policy(country="XX"),
    )

    def verify() -> SignedEvent:
        verified = verify_event(data, signers=signers)
        if roles is not None:
            check_signer_may(verified.event, signers)
        return verified

    if fields["expect"] != "ok":
        _refused(fields["expect"], verify)
        return
    verified = verify()
    assert verified.signer_kid == fields["signer_kid"]
    assert _event_fields(verified.event) == {k: fields[k] for k in _event_fields(verified.event)}


@each_vector("ledger-entry-")
def test_ledger_entry_vector(path: Path) -> None:
    """Decoding the ledger entry (§9.0) gives exactly the vector's outcome; when ok its leaf
    hash (§9.1) and the event inside, verified under audit-event-ok's key."""
    fields, data = parse(path)
    if fields["expect"] != "ok":
        _refused(fields["expect"], lambda: LedgerEntry.decode(data))
        return
    entry = LedgerEntry.decode(data)
    assert (entry.index, entry.appended_at) == (int(fields["index"]), int(fields["appended_at"]))
    assert leaf_hash(data).hex() == fields["leaf_hash"]
    key_fields = parse(VECTORS / "audit-event-ok.txt")[0]
    signers = one_key_directory(key_fields, "police", key_fields["signer_ed25519_public"])
    assert verify_event(entry.signed_event, signers=signers).event.event_id == fields["event_id"]


@each_vector("checkpoint-")
def test_checkpoint_vector(path: Path) -> None:
    """Verifying the note (§9.3) for the expected origin and key gives exactly the vector's
    outcome and, when ok, its size, root and timestamp; the key IDs are derived as stated."""
    fields, data = parse(path)
    key = VerifyKey(bytes.fromhex(fields["ledger_ed25519_public"]))
    origin = fields["origin"]
    assert note_key_id(origin, 0x01, key).hex() == fields["key_id_ed25519"]
    assert note_key_id(origin, 0x04, key).hex() == fields["key_id_cosignature"]

    def verify() -> Checkpoint:
        return verify_checkpoint(data.decode("utf-8"), key=key, origin=origin)

    if fields["expect"] != "ok":
        _refused(fields["expect"], verify)
        return
    cp = verify()
    assert (cp.size, cp.root.hex(), cp.timestamp) == (
        int(fields["size"]),
        fields["root"],
        int(fields["timestamp"]),
    )


@each_vector("consent-receipt-")
def test_consent_receipt_vector(path: Path) -> None:
    """Decoding the stored receipt and verifying it under the agency's key (§8.3) gives
    exactly the vector's outcome and, when ok, its id and signed body."""
    fields, data = parse(path)
    key = VerifyKey(bytes.fromhex(fields["signer_ed25519_public"]))
    signed = decode_stored(data)
    assert signed.agency == fields["agency"]
    if fields["expect"] != "ok":
        _refused(fields["expect"], lambda: verify_receipt(signed, key))
        return
    assert verify_receipt(signed, key).receipt_id == fields["receipt_id"]
    assert hashlib.sha256(signed.body).hexdigest() == fields["body_sha256"]


class _Authority:
    """A directory entry deciding the stages of a vector's `decides` (comma-separated)."""

    def __init__(self, decides: str) -> None:
        self.stages = decides.split(",")

    def decides_stage(self, stage: str) -> bool:
        return stage in self.stages


@each_vector("decision-")
def test_decision_vector(path: Path) -> None:
    """Verifying the signed decision under the vector's key history (§8.7, §7.9), then the
    reason and salt beside it, gives exactly the vector's outcome and, when ok, every member."""
    fields, data = parse(path)
    window = _authority_window(fields)
    reason = None if fields["reason"] == "none" else fields["reason"]
    salt = None if fields["salt"] == "none" else bytes.fromhex(fields["salt"])

    def verify() -> Decision:
        decision = verify_decision(data, history=[window])
        check_authority(decision, _Authority(fields["decides"]))
        check_reason(decision, reason=reason, salt=salt)
        if fields["first_stage"] != "none":
            first = verify_decision(base64.b64decode(fields["first_stage"]), history=[window])
            check_second_stage(first, decision, min_days=int(fields["second_stage_min_days"]))
        return decision

    if fields["expect"] != "ok":
        _refused(fields["expect"], verify)
        return
    decision = verify()
    for name in Decision.WIRE.fields:
        value = getattr(decision, name)
        shown = "none" if value is None else value.hex() if isinstance(value, bytes) else str(value)
        assert shown == fields[name], name


def _authority_window(fields: dict[str, str]) -> KeyWindow:
    """The one key window of a decision-* or protection-* vector's key history."""
    return KeyWindow(
        agency=fields["authority"],
        kid=fields["kid"],
        public=bytes.fromhex(fields["signer_ed25519_public"]),
        valid_from=int(fields["valid_from"]),
        valid_until=None,
        revoked_at=_opt(fields.get("revoked_at", "none")),
        listed_version=1,
    )


@each_vector("protection-")
def test_protection_vector(path: Path) -> None:
    """Verifying the signed notice under the vector's key history (§8.9, §7.9), then as the
    next link after `held`, gives exactly the vector's outcome and, when ok, every member."""
    fields, data = parse(path)
    history = [_authority_window(fields)]
    held = None
    if fields["held"] != "none":
        held = verify_notice(base64.b64decode(fields["held"]), history=history)

    def verify() -> Notice:
        notice = verify_notice(data, history=history)
        check_follows(held, notice, reflection_min_days=int(fields["reflection_min_days"]))
        return notice

    if fields["expect"] != "ok":
        _refused(fields["expect"], verify)
        return
    notice = verify()
    for name in Notice.WIRE.fields:
        value = getattr(notice, name)
        assert ("none" if value is None else str(value)) == fields[name], name


def _provider_directory(fields: dict[str, str]) -> Directory:
    roles = tuple(fields["roles"].split(","))
    return one_key_directory(fields, fields["agency"], fields["signer_ed25519_public"], roles)


@each_vector("catalogue-")
def test_catalogue_vector(path: Path) -> None:
    """Verifying the signed catalogue (§8.8) against the vector's directory, clock and last
    accepted catalogue gives exactly its outcome and, when ok, its version and services."""
    fields, data = parse(path)
    directory, now = _provider_directory(fields), int(fields["now"])
    current = None
    if fields["current"] != "none":
        prior = base64.b64decode(fields["current"])
        current = verify_catalogue(prior, directory=directory, now=now, current=None)

    def verify() -> Catalogue:
        return verify_catalogue(data, directory=directory, now=now, current=current)

    if fields["expect"] != "ok":
        _refused(fields["expect"], verify)
        return
    catalogue = verify()
    assert catalogue.version == int(fields["version"])
    assert ",".join(s.service_id for s in catalogue.services) == fields["services"]


@each_vector("report-")
def test_report_vector(path: Path) -> None:
    """Verifying the signed rapporteur report (§8.12) against the vector's directory and
    clock gives exactly its outcome and, when ok, its id and every signed member."""
    fields, data = parse(path)
    roles = tuple(fields["roles"].split(","))
    directory = one_key_directory(
        fields, fields["agency"], fields["signer_ed25519_public"], roles, Policy(country="LT")
    )

    def verify() -> Report:
        return verify_report(
            data,
            directory=directory,
            now=int(fields["now"]),
            max_skew=int(fields["clock_skew_seconds"]),
        )

    if fields["expect"] != "ok":
        _refused(fields["expect"], verify)
        return
    report = verify()
    assert report_id(data) == fields["report_id"]
    assert (report.rapporteur, report.kid) == (fields["rapporteur"], fields["kid"])
    assert (report.first, report.last) == (fields["from"], fields["to"])
    assert (report.k, report.round_to) == (int(fields["k"]), int(fields["round_to"]))
    assert report.released == (fields["released"] == "true")
    assert report.signed_at == int(fields["signed_at"])
    assert ",".join(report.contributions) == _opt_text(fields["contributions"])
    assert len(report.cells) == int(fields["cells"])
    assert sum(c.suppressed for c in report.cells) == int(fields["suppressed"])


def _opt_text(value: str) -> str:
    return "" if value == "none" else value


@each_vector("capacity-")
def test_capacity_vector(path: Path) -> None:
    """Verifying the signed capacity record (§8.8) against its provider's catalogue and the
    last seq seen gives exactly the vector's outcome and, when ok, every member."""
    fields, data = parse(path)
    directory, now = _provider_directory(fields), int(fields["now"])
    catalogue = verify_catalogue(
        base64.b64decode(fields["catalogue"]), directory=directory, now=now, current=None
    )

    def verify() -> Capacity:
        return verify_capacity(
            data,
            directory=directory,
            catalogue=catalogue,
            now=now,
            last_seq=_opt(fields["last_seq"]),
        )

    if fields["expect"] != "ok":
        _refused(fields["expect"], verify)
        return
    record = verify()
    for name in Capacity.WIRE.fields:
        assert str(getattr(record, name)) == fields[name], name


def _received(
    fields: dict[str, str],
    body: bytes,
    kind: str,
    roles: set[str],
    *,
    policy: Policy | None = None,
    sender_roles: tuple[str, ...] = (),
    services: inbound.ServiceView | None = None,
) -> object:
    """The receiver's check of a vector's body as `kind` at an agency of `roles` (§6.4), under
    `policy` for a sender of `sender_roles`, knowing `services`: the checked value when the
    vector expects ok, else None once the check was refused with the expected reason."""

    def check() -> object:
        return inbound.check(
            kind,
            body,
            roles=roles,
            limits=DEFAULT_LIMITS,
            policy=policy,
            sender_roles=sender_roles,
            services=services,
        )

    if fields["expect"] != "ok":
        _refused(fields["expect"], check)
        return None
    return check()


@each_vector("transition-")
def test_transition_vector(path: Path) -> None:
    """The receiver's check of a transition body (§6.4, §8.4) gives exactly the vector's
    outcome and, when ok, every field."""
    fields, body = parse(path)
    step = _received(fields, body, TRANSITION, {"ngo"})
    if fields["expect"] != "ok":
        return
    assert isinstance(step, Transition)
    for name in ("referral_id", "recipient", "from_state", "to_state", "party"):
        assert getattr(step, name) == fields[name], name
    assert (step.reason, step.outcome) == (_text(fields["reason"]), _text(fields["outcome"]))
    assert step.at == int(fields["at"])


def _text(value: str) -> str | None:
    return None if value == "none" else value


@each_vector("receipt-")
def test_receipt_vector(path: Path) -> None:
    """The receiver's check of a delivery receipt body (§6.2, §6.4) gives exactly the
    vector's outcome and, when ok, every field."""
    fields, body = parse(path)
    receipt = _received(fields, body, DELIVERY_RECEIPT, {"police"})
    if fields["expect"] != "ok":
        return
    assert receipt == DeliveryReceipt(
        fields["message_id"], fields["envelope_hash"], int(fields["received_at"])
    )


@each_vector("body-")
def test_body_vector(path: Path) -> None:
    """The receiver's check of a body of `kind` at an agency of `roles` (§6.4) gives exactly
    the vector's outcome."""
    fields, body = parse(path)
    policy = None
    if "policy" in fields:
        policy = policy_from_doc(json.loads(base64.b64decode(fields["policy"], validate=True)))
    sender_roles = fields.get("sender_roles", "")
    roles = set(fields["roles"].split(","))
    if fields["kind"] == IDENTIFICATION_DECISION:
        _decision_message(fields, body, roles)
        return
    if fields["kind"] == PROTECTION_NOTICE:
        _notice_message(fields, body, roles)
        return
    if fields["kind"] == RECONSIDERATION_REQUEST:
        _request_message(fields, body, roles)
        return
    if fields["kind"] in _TRANSFER_BODIES:
        _transfer_body(fields, body, roles)
        return
    if fields["kind"] == contributions.STATISTICS_CONTRIBUTION:
        _contribution(fields, body, roles)
        return
    services = None
    if "receiver" in fields:  # body-referral-service-*
        own = fields["own_services"]
        providers = frozenset(fields["providers"].split(","))
        services = inbound.ServiceView(
            me=fields["receiver"],
            own=(frozenset() if own == "none" else frozenset(own.split(","))).__contains__,
            is_provider=providers.__contains__,
        )
    _received(
        fields,
        body,
        fields["kind"],
        roles,
        policy=policy,
        sender_roles=tuple(r for r in sender_roles.split(",") if r),
        services=services,
    )


def _under_pair(fields: dict[str, str]) -> UnderPair:
    """The receiver's state under the body's pair: `shared` yes, no or erased (held, and its
    received referral erased), `bound` a case id or none."""
    return UnderPair(
        shared=fields["shared"] in ("yes", "erased"),
        erased=fields["shared"] == "erased",
        bound=None if fields["bound"] == "none" else fields["bound"],
    )


def _decision_message(fields: dict[str, str], body: bytes, roles: set[str]) -> None:
    """§6.4 decoding, then §8.7's receiver checks in order against the vector's state."""
    window = _authority_window(fields)

    def check() -> Decision:
        message = inbound.check(IDENTIFICATION_DECISION, body, roles=roles, limits=DEFAULT_LIMITS)
        assert isinstance(message, DecisionMessage)

        def first() -> Decision | None:
            if fields["first_stage"] == "none":
                return None
            return verify_decision(base64.b64decode(fields["first_stage"]), history=[window])

        return check_received(
            message,
            sender=fields["sender"],
            created=int(fields["created"]),
            skew=int(fields["clock_skew_seconds"]),
            authority=None if fields["decides"] == "none" else _Authority(fields["decides"]),
            history=[window],
            pair=_under_pair(fields),
            held_stages=set()
            if fields["held_stages"] == "none"
            else {*fields["held_stages"].split(",")},
            supersedable=set()
            if fields["supersedable"] == "none"
            else {*fields["supersedable"].split(",")},
            first=first,
            min_days=int(fields["second_stage_min_days"]),
        )

    if fields["expect"] != "ok":
        _refused(fields["expect"], check)
        return
    assert check().authority == fields["authority"]


def _notice_message(fields: dict[str, str], body: bytes, roles: set[str]) -> None:
    """§6.4 decoding, then §8.9's receiver checks in order against the vector's state."""
    window = _authority_window(fields)

    def check() -> Notice:
        message = inbound.check(PROTECTION_NOTICE, body, roles=roles, limits=DEFAULT_LIMITS)
        assert isinstance(message, NoticeMessage)

        def held() -> Notice | None:
            if fields["held"] == "none":
                return None
            return verify_notice(base64.b64decode(fields["held"]), history=[window])

        return check_notice(
            message,
            sender=fields["sender"],
            created=int(fields["created"]),
            skew=int(fields["clock_skew_seconds"]),
            authority=None if fields["decides"] == "none" else _Authority(fields["decides"]),
            history=[window],
            pair=_under_pair(fields),
            held=held,
            reflection_min_days=int(fields["reflection_min_days"]),
        )

    if fields["expect"] != "ok":
        _refused(fields["expect"], check)
        return
    assert check().authority == fields["authority"]


def _request_message(fields: dict[str, str], body: bytes, roles: set[str]) -> None:
    """§6.4 decoding at an agency of `roles`, then §8.7 "Reconsideration requests" in order
    against the vector's state (the receiver's own decision, as it stored it)."""

    def check() -> Decision:
        message = decode_at(body, frozenset(roles))
        held = fields["decision"]
        return check_request(
            message,
            created=int(fields["created"]),
            skew=int(fields["clock_skew_seconds"]),
            decision=None if held == "none" else claimed(base64.b64decode(held)),
            shared=fields["shared"] == "yes",
            superseded=fields["superseded"] == "yes",
            state=None if fields["case_state"] == "none" else fields["case_state"],
            window_days=int(fields["reconsideration_window_days"]),
            received_at=int(fields["now"]),
            ttl=int(fields["message_ttl_seconds"]),
        )

    if fields["expect"] != "ok":
        _refused(fields["expect"], check)
        return
    assert check().decision_id == decode_at(body, frozenset(roles)).decision_id


#: The §8.10 bodies: kind -> (decoder at an agency of given roles, the fields an ok body
#: decodes to, as its vector names them).
_TRANSFER_BODIES: dict[str, tuple[Callable[[bytes, set[str]], object], tuple[str, ...]]] = {
    CASE_TRANSFER: (
        lambda body, _: CaseTransfer.decode(body, limits=DEFAULT_LIMITS),
        ("transfer_id", "case_id", "reason", "request_id", "attachment_key"),
    ),
    TRANSFER_REQUEST: (
        lambda body, _: TransferRequest.decode(body),
        ("request_id", "case_id", "owner", "referral_id", "reason", "at"),
    ),
    CASE_OWNER_CHANGED: (decode_owner_changed_at, ("case_id", "new_owner", "transfer_id", "at")),
}


def _transfer_body(fields: dict[str, str], body: bytes, roles: set[str]) -> None:
    """§8.10's decoding of a case-transfer, transfer-request or case-owner-changed body at
    an agency of `roles` (no agent accepts them yet): the outcome, and when ok every
    field (R by its `referral_id`)."""
    decode, names = _TRANSFER_BODIES[fields["kind"]]
    if fields["expect"] != "ok":
        _refused(fields["expect"], lambda: decode(body, roles))
        return
    decoded = decode(body, roles)
    for name in names:
        value = getattr(decoded, name)
        expected = int(fields[name]) if name == "at" else _text(fields[name])
        assert value == expected, name
    if isinstance(decoded, CaseTransfer):
        assert decoded.referral["referral_id"] == fields["referral_id"]


def _contribution(fields: dict[str, str], body: bytes, roles: set[str]) -> None:
    """§8.11's decoding and receiver checks of a statistics contribution (skew 300 s): the
    outcome and, when ok, the period, the authority and the decisions counted per stage and
    outcome."""

    def check() -> contributions.Contribution:
        decoded = contributions.decode_at(body, roles, limits=DEFAULT_LIMITS)
        contributions.check_sender(
            decoded,
            sender=fields["sender"],
            sender_roles=set(fields["sender_roles"].split(",")),
            created=int(fields["created"]),
            skew=300,
        )
        return decoded

    if fields["expect"] != "ok":
        _refused(fields["expect"], check)
        return
    decoded = check()
    assert (decoded.period, decoded.authority) == (fields["period"], fields["authority"])
    totals = decoded.totals()
    for stage in ("first", "second"):
        for outcome in ("positive", "negative"):
            assert totals.get((stage, outcome), 0) == int(fields[f"{stage}_{outcome}"])
    assert decoded.encode() == body


@each_vector("transfer-step-")
def test_transfer_step_vector(path: Path) -> None:
    """§8.10's decoding of a transfer-step body gives exactly the vector's outcome and, when
    ok, every field."""
    fields, body = parse(path)
    if fields["expect"] != "ok":
        _refused(fields["expect"], lambda: TransferStep.decode(body))
        return
    step = TransferStep.decode(body)
    for name in ("kind", "id", "recipient", "from_state", "to_state", "party"):
        assert getattr(step, name) == fields[name], name
    assert (step.reason, step.at) == (_text(fields["reason"]), int(fields["at"]))


@each_vector("keyfile-")
def test_keyfile_vector(path: Path) -> None:
    """Opening the key file with `passphrase` (§3.1, §3.5) is refused, or gives exactly the
    keys the vector lists."""
    fields, data = parse(path)
    passphrase = bytes.fromhex(fields["passphrase"])
    admin = b'"nrm-admin-key/1"' in data
    if fields["expect"] == "refused":
        with pytest.raises(KeyFileError):
            (open_admin_key if admin else open_keys)(data, passphrase=passphrase)
        return
    if admin:
        key = open_admin_key(data, passphrase=passphrase)
        assert bytes(key.verify_key).hex() == fields["ed25519_public"]
        return
    keys = open_keys(data, passphrase=passphrase)
    assert keys.agency == fields["agency"]
    assert bytes(keys.signing_key.verify_key).hex() == fields["signing_public"]
    assert bytes(keys.encryption_key.public_key).hex() == fields["x25519_public"]
    previous = ",".join(bytes(k.public_key).hex() for k in keys.previous_encryption_keys)
    assert previous == fields["previous_x25519_publics"]
    assert keys.nats_seed is not None and keys.previous_nats_seed is not None
    assert nats_public_key(keys.nats_seed) == fields["nats_public"]
    assert nats_public_key(keys.previous_nats_seed) == fields["previous_nats_public"]
    assert keys.storage_key is not None and keys.storage_key.hex() == fields["storage_key"]


@each_vector("merkle-")
def test_merkle_vector(path: Path) -> None:
    """The roots of the vector's leaves (§9.1) are the ones it names, and verifying its proof
    (§9.2, RFC 9162) gives exactly its outcome."""
    fields, data = parse(path)
    hashes = [leaf_hash(bytes.fromhex(leaf)) for leaf in fields["leaves"].split(",")]
    proof = [data[i : i + 32] for i in range(0, len(data), 32)]
    if fields["proof"] == "inclusion":
        index, size = int(fields["index"]), int(fields["size"])
        root = bytes.fromhex(fields["root"])
        assert root_of(hashes[:size]) == root

        def verify() -> None:
            leaf = hashes[index] if index < len(hashes) else bytes(32)
            verify_inclusion(leaf_hash=leaf, index=index, size=size, proof=proof, root=root)

    else:
        first, second = int(fields["first"]), int(fields["second"])
        second_root = bytes.fromhex(fields["second_root"])
        assert root_of(hashes[:second]) == second_root

        def verify() -> None:
            verify_consistency(
                first=first,
                second=second,
                first_root=bytes.fromhex(fields["first_root"]),
                second_root=second_root,
                proof=proof,
            )

    if fields["expect"] == "ok":
        verify()
    else:
        _refused(fields["expect"], verify)


@each_vector("kid-")
def test_kid_vector(path: Path) -> None:
    """The key id (§2.2) of the vector's public key, taken as its key type, is its `kid`."""
    fields, public = parse(path)
    if fields["key_type"] == "ed25519":
        assert signing_kid(VerifyKey(public)) == fields["kid"]
    else:
        assert encryption_kid(PublicKey(public)) == fields["kid"]


@each_vector("identity-")
def test_identity_vector(path: Path) -> None:
    """Reading the identity file (§2.3) gives exactly the vector's outcome and keys."""
    fields, data = parse(path)
    if fields["expect"] != "ok":
        _refused(fields["expect"], lambda: PublicIdentity.from_json(data))
        return
    identity = PublicIdentity.from_json(data)
    assert (identity.agency, identity.name) == (fields["agency"], fields["name"])
    assert bytes(identity.signing_key).hex() == fields["signing_public"]
    assert identity.signing_kid == fields["signing_kid"]
    assert bytes(identity.encryption_key).hex() == fields["x25519_public"]
    assert identity.encryption_kid == fields["encryption_kid"]
    assert identity.nats_key == fields["nats_key"]
    assert fingerprint(identity) == fields["fingerprint"]
    assert proof_statement(identity).hex() == fields["proof_statement"]
    if fields["proof"] == "valid":
        assert verify_proof(identity) is identity
    else:
        error = MissingProofError if fields["proof"] == "missing" else BadProofError
        with pytest.raises(error):
            verify_proof(identity)


FAMILIES = {
    "envelope-": 30,
    "canonical-json-": 25,
    "root-": 10,
    "directory-": 10,
    "audit-event-": 10,
    "ledger-entry-": 4,
    "checkpoint-": 8,
    "consent-receipt-": 4,
    "transition-": 8,
    "receipt-": 4,
    "body-": 8,
    "keyfile-": 4,
    "merkle-": 15,
    "identity-": 4,
    "decision-": 8,
    "body-identification-decision-": 8,
    "body-protection-notice-": 8,
    "body-reconsideration-request-": 8,
    "body-case-transfer-": 6,
    "body-transfer-request-": 6,
    "body-case-owner-changed-": 4,
    "body-statistics-contribution-": 10,
    "transfer-step-": 20,
    "catalogue-": 8,
    "capacity-": 6,
    "report-": 8,
    "protection-": 8,
    "state-": 20,
}


def test_every_family_has_its_vectors() -> None:
    """Each format's vector family is there, with ok and refused outcomes."""
    for prefix, least in FAMILIES.items():
        files = _files(prefix)
        outcomes = {parse(p)[0]["expect"] for p in files}
        assert len(files) >= least, prefix
        assert "ok" in outcomes and len(outcomes) >= 2, prefix


def test_generator_reproduces_vectors(tmp_path: Path) -> None:
    """Running the generator again writes byte-identical files, and no others."""
    subprocess.run(
        [sys.executable, str(VECTORS / "generate.py"), str(tmp_path)], check=True, timeout=60
    )
    fresh = sorted(tmp_path.glob("*.txt"))
    committed = sorted(VECTORS.glob("*.txt"))
    assert [p.name for p in fresh] == [p.name for p in committed]
    assert len(RESTORE_FILES) >= 4 and len(RESEND_FILES) >= 4 and len(REFUSAL_FILES) >= 6
    for new, old in zip(fresh, committed, strict=True):
        assert new.read_bytes() == old.read_bytes(), new.name


# --- receiver state (§4.9 `state-*`): the real agent, its real store ---------------------------

STATE_FILES = sorted(VECTORS.glob("state-*.txt"))


def _rule_bytes(text: str) -> bytes:
    """`<count> bytes of <hex byte>`."""
    count, unit, of, byte = text.split(" ")
    assert (unit, of) == ("bytes", "of")
    return bytes.fromhex(byte) * int(count)


def state_envelope(fields: dict[str, str], data: bytes) -> bytes:
    """The envelope under test: the file's bytes, or built by the rule it gives (§4.9)."""
    rule = fields.get("envelope_rule")
    if rule is None:
        return data
    assert data == b""
    if rule != "seal":
        return _rule_bytes(rule)
    body = _rule_bytes(fields["seal_body"])
    sender = AgencyKeys(
        agency="police",
        name="police",
        signing_key=SigningKey(bytes.fromhex(fields["seal_sender_ed25519_seed"])),
        encryption_key=PrivateKey(bytes(range(1, 33))),  # not used to seal
    )
    to = PrivateKey(bytes.fromhex(fields["receiver_x25519_secret"])).public_key
    return seal(
        sender=sender,
        recipients=[Recipient(agency=fields["receiver"], key=to)],
        kind=fields["seal_kind"],
        body=body,
        created=int(fields["seal_created"]),
        expires=int(fields["seal_expires"]),
        unsafe_randomness=UnsafeFixedRandomness(
            message_id=fields["seal_message_id"],
            content_key=bytes.fromhex(fields["seal_content_key"]),
            nonce=bytes.fromhex(fields["seal_nonce"]),
            ephemeral_keys=[PrivateKey(bytes.fromhex(fields["seal_ephemeral_secret"]))],
        ),
        # A sender's own limit refuses such a body (§4.1): raised only to build the input.
        limits=dataclasses.replace(DEFAULT_LIMITS, max_body_bytes=len(body)),
    ).data


def receiving_agent(fields: dict[str, str], tmp_path: Path) -> Agent:
    """The receiver of a state vector: a real Agent (never started: no bus) on a fresh SQLite
    file, trusting the vector's root and directory."""
    me = fields["receiver"]
    keys = AgencyKeys(
        agency=me,
        name=me,
        signing_key=SigningKey(bytes.fromhex(fields["receiver_ed25519_seed"])),
        encryption_key=PrivateKey(bytes.fromhex(fields["receiver_x25519_secret"])),
        storage_key=bytes.fromhex(fields["receiver_storage_key"]),
    )
    root = tmp_path / "root.json"
    root.write_bytes(base64.b64decode(fields["root"], validate=True))
    trust = TrustState(pinned_root=root, cache_dir=tmp_path / "trust", agency=me)
    assert trust.offer(DIRECTORY_KEY, base64.b64decode(fields["directory"], validate=True))
    config = AgentConfig(
        agency=me,
        key_dir=tmp_path / "keys",
        bus=BusEndpoint.of("nats://127.0.0.1:1"),
        database=tmp_path / "agent.db",
        api_host="127.0.0.1",
        api_port=0,
        clients=(),
        trust_root=root,
        trust_cache=tmp_path / "trust",
    )
    return Agent(config, keys=keys, trust=trust)


def receive(agent: Agent, data: bytes, stream_seq: int, stored_at: int) -> str:
    """What the agent makes of one message from the bus: `ok` (acknowledged, nothing refused),
    `retry` (held back), or the reason of the `message.rejected` event it recorded."""
    before = agent.store.last_audit_event()
    position = Position(inbox_stream(agent.config.agency), stream_seq)  # the receiver's inbox
    verdict = agent.handle_message(data, position, stored_at)
    last = agent.store.last_audit_event()
    event = None if last is None or last == before else decode_signed_event(last)[0]
    rejected = event is not None and event.kind == "message.rejected"
    if verdict is Verdict.TERM:
        assert event is not None and rejected
        assert event.reason is not None
        return event.reason
    assert not rejected
    return {Verdict.ACK: "ok", Verdict.RETRY: "retry"}[verdict]


@pytest.mark.parametrize("path", STATE_FILES, ids=[p.stem for p in STATE_FILES])
def test_state_vector(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each earlier envelope, then the one under test, through the agent's own receive path
    (`Agent.handle_message`: §4.7, step 10a, replay, §6.4 and the store) at the vector's
    `now`, each giving exactly its expected outcome."""
    fields, data = parse(path)
    monkeypatch.delenv(clock.ENV, raising=False)
    offset = tmp_path / "clock"
    offset.write_text(str(int(fields["now"]) - clock.now()), encoding="ascii")
    monkeypatch.setenv(clock.ENV, str(offset))
    agent = receiving_agent(fields, tmp_path)
    try:
        for n in range(1, int(fields["prior"]) + 1):
            envelope = base64.b64decode(fields[f"prior_{n}_envelope"], validate=True)
            got = receive(
                agent,
                envelope,
                int(fields[f"prior_{n}_stream_seq"]),
                int(fields[f"prior_{n}_stored_at"]),
            )
            assert got == fields[f"prior_{n}_expect"], f"prior {n}"
        envelope = state_envelope(fields, data)
        if fields.get("envelope_rule") == "seal":  # too large only: opens under a raised limit
            body = _rule_bytes(fields["seal_body"])
            secret = PrivateKey(bytes.fromhex(fields["receiver_x25519_secret"]))
            directory = agent.trust.directory
            assert directory is not None
            opened = open_envelope(
                envelope,
                me=fields["receiver"],
                decryption_keys={encryption_kid(secret.public_key): secret},
                signers=directory,
                now=int(fields["now"]),
                limits=dataclasses.replace(DEFAULT_LIMITS, max_body_bytes=len(body)),
            )
            assert opened.body == body
        got = receive(agent, envelope, int(fields["stream_seq"]), int(fields["stored_at"]))
        assert got == fields["expect"]
    finally:
        agent.store.close()


#: Families whose vectors are checks a receiver makes of what it is sent (§4.7, §6.4).
RECEIVER_FAMILIES = (
    "decision-",
    "protection-",
    "envelope-",
    "state-",
    "body-",
    "transition-",
    "transfer-step-",
    "receipt-",
    "refusal-",
    "resend-request-",
    "canonical-json-decode-",
)
#: Reasons of keys/errors.py a receiver never records for a message, and where they belong.
NOT_RECEIVER = {
    "untrusted-input": "the base class, never raised itself",
    "weak-key": "loading a key (§2.2); a low-order ephemeral key is undecryptable (§4.3)",
    "under-signed": "roots and directories (§7.5): root-, directory- vectors",
    "rolled-back": "roots and directories (§7.5): root-, directory- vectors",
    "expired-metadata": "roots and directories (§7.5): directory- vectors",
    "expired-root": "roots (§7.5): root- vectors",
    "bad-inclusion-proof": "ledger proofs (§9.2): merkle- vectors",
    "bad-consistency-proof": "ledger proofs (§9.2): merkle- vectors",
    "missing-proof": "identity files (§2.4): identity- vectors (`proof: missing`)",
    "bad-proof": "identity files (§2.4): identity- vectors (`proof: invalid`)",
}
#: Receiver reasons no vector can give, and why.
WITHOUT_VECTOR = {
    "unprocessable": "the refusal of a handler that failed (a bug, a local storage failure):"
    " no valid input causes it in the reference code; test_inbound.py makes a handler fail",
}


def test_every_receiver_reason_has_a_vector() -> None:
    """Every reason a receiver records (every reason of keys/errors.py but those of other
    checks) is the `expect` of at least one vector of a receiver family: a new reason code
    fails here until it has a vector."""
    reasons = {
        c.reason
        for c in vars(keys.errors).values()
        if isinstance(c, type) and issubclass(c, UntrustedInputError)
    }
    assert set(NOT_RECEIVER) | set(WITHOUT_VECTOR) <= reasons
    receiver = reasons - set(NOT_RECEIVER) - set(WITHOUT_VECTOR)
    covered = {
        parse(p)[0]["expect"]
        for family in RECEIVER_FAMILIES
        for p in VECTORS.glob(f"{family}*.txt")
    }
    assert sorted(receiver - covered) == []
    assert covered <= receiver | {"ok", "retry"}  # and nothing a receiver never says
