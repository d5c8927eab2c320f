"""Receiver-state vectors (docs/PROTOCOL.md §4.9, `state-*`): what a receiver answers to an
envelope given what it already accepted, and when the bus stored it.

Each scenario is the receiver's keys, the pinned root and the signed directory it trusts, its
clock `now`, an ordered list of earlier envelopes it was handed (each with its stream
sequence, the bus's stored time and its expected outcome), then the envelope under test with
its own. Everything is deterministic (keys from fixed labels, fixed times and randomness).
Two vectors describe an oversized input by a rule instead of holding a megabyte (§4.9).
Imported by generate.py.
"""

from __future__ import annotations

import base64
import json
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import formats
from formats import ADMINS, CREATED, DAY, ROOT_1_FILE, b64, fixed, signed_file
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from agents import referral as R
from agents.messages import DELIVERY_RECEIPT, REFUSAL, TRANSITION, DeliveryReceipt, Refusal
from agents.resend import RESEND_REQUEST, ResendRequest
from keys import DEFAULT_LIMITS, codec
from keys.codec import canonical_json
from keys.directory import AgencyEntry, Directory, KeyEntry, encode_directory
from keys.envelope import Recipient, UnsafeFixedRandomness, seal
from keys.identity import ENCRYPTION_KID_LABEL, SIGNING_KID_LABEL, AgencyKeys, key_id

NOW = CREATED + 3600
#: The receiver's roles: the shelter is an NGO, the coordinator a coordinator (§8.2).
ROLES = {
    "police": ("police",),
    "labour-inspectorate": ("labour-inspection",),
    "shelter": ("ngo",),
    "coordinator": ("coordinator",),
}


def keys_of(agency: str, generation: int = 1) -> AgencyKeys:
    return AgencyKeys(
        agency=agency,
        name=agency,
        signing_key=SigningKey(fixed(f"{agency} ed25519 {generation}")),
        encryption_key=PrivateKey(fixed(f"{agency} x25519 {generation}")),
        storage_key=fixed(f"{agency} storage key"),
    )


AGENCIES = {a: keys_of(a) for a in ROLES}
POLICE = AGENCIES["police"]
POLICE_UNLISTED = keys_of("police", 2)


def _entry(k: AgencyKeys, **signing: Any) -> AgencyEntry:
    sign_pub = bytes(k.signing_key.verify_key)
    enc_pub = bytes(k.encryption_key.public_key)
    return AgencyEntry(
        agency=k.agency,
        name=k.agency,
        roles=ROLES[k.agency],
        signing_keys=(
            KeyEntry(
                kid=key_id(SIGNING_KID_LABEL, sign_pub),
                public=sign_pub,
                valid_from=CREATED - 30 * DAY,
                valid_until=signing.get("valid_until"),
                status=signing.get("status", "active"),
                revoked_at=signing.get("revoked_at"),
                reason=signing.get("reason"),
            ),
        ),
        encryption_keys=(
            KeyEntry(
                key_id(ENCRYPTION_KID_LABEL, enc_pub), enc_pub, CREATED - 30 * DAY, None, "active"
            ),
        ),
        nats_key=formats.nats_public_key(formats.nats_seed(f"{k.agency} nats 1")),
    )


def directory_file(**police_key: Any) -> bytes:
    """The signed directory of every agency here, the police's signing key as given."""
    entries = tuple(
        _entry(k, **police_key) if k.agency == "police" else _entry(k) for k in AGENCIES.values()
    )
    d = Directory(version=1, expires=CREATED + 30 * DAY, agencies=entries)
    return signed_file(encode_directory(d), ADMINS[:2])


DIRECTORY = directory_file()


@dataclass(frozen=True)
class Env:
    """One envelope as a sender seals it, with every random value fixed by `label`."""

    label: str
    kind: str
    body: bytes
    sender: AgencyKeys = POLICE
    to: str = "shelter"
    created: int = CREATED + 60

    @property
    def message_id(self) -> str:
        return fixed(f"message {self.label}")[:16].hex()

    def randomness(self) -> UnsafeFixedRandomness:
        return UnsafeFixedRandomness(
            message_id=self.message_id,
            content_key=fixed(f"content key {self.label}"),
            nonce=fixed(f"nonce {self.label}")[:24],
            ephemeral_keys=[PrivateKey(fixed(f"ephemeral {self.label}"))],
        )

    def seal(self, limits: Any = DEFAULT_LIMITS) -> bytes:
        return seal(
            sender=self.sender,
            recipients=[Recipient(agency=self.to, key=AGENCIES[self.to].encryption_key.public_key)],
            kind=self.kind,
            body=self.body,
            created=self.created,
            expires=self.created + 14 * DAY,
            unsafe_randomness=self.randomness(),
            limits=limits,
        ).data


@dataclass(frozen=True)
class Step:
    env: Env | bytes
    expect: str
    stream_seq: int
    stored_at: int = CREATED + 65

    def data(self) -> bytes:
        return self.env if isinstance(self.env, bytes) else self.env.seal()


@dataclass(frozen=True)
class Scenario:
    name: str
    comment: str
    prior: list[Step]
    test: Step
    receiver: str = "shelter"
    directory: bytes = DIRECTORY
    #: Header lines that describe the envelope under test by a rule (then no bytes follow).
    rule: list[tuple[str, object]] = field(default_factory=list)


def _example(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(
        (R.SCHEMA_DIR / "examples" / "valid" / f"{name}.json").read_text("utf-8")
    )
    del doc["$comment"]
    return doc


def referral(
    rid: str,
    roles: tuple[str, ...] = ROLES["shelter"],
    *,
    minimised: bool = True,
    name: str = "adult-with-consent",
) -> bytes:
    """A referral message (§6.1) as an honest sender builds it for an agency of `roles`
    (or, with `minimised=False`, everything the example holds)."""
    doc = _example(name)
    body = {k: v for k, v in doc["body"].items() if k != "attachments"}  # no attachment key
    if minimised:
        if doc["referral_type"] == "anonymous_notification":
            body = R.anonymise(R.strip_identifying(body))
        body = R.minimise(body, R.categories_for_roles(roles))
    return canonical_json({"referral": {**doc, "referral_id": rid, "body": body}})


RID = fixed("state referral 1")[:16].hex()


def transition(
    frm: str,
    to: str,
    party: str,
    *,
    recipient: str = "shelter",
    reason: str | None = None,
    at: int = CREATED + 120,
) -> bytes:
    return codec.pack([1, RID, recipient, frm, to, party, reason, None, at])


REFERRAL_1 = Env("referral 1", "referral", referral(RID))


def scenarios() -> list[Scenario]:
    ok1 = Step(REFERRAL_1, "ok", 1)
    withdrawal = canonical_json(
        {"receipt_id": formats.RECEIPT_DOC["receipt_id"], "referral_ids": [RID]}
    )
    anon = _example("anonymous-notification")
    anon["body"] = {**R.anonymise(R.strip_identifying(anon["body"]))}
    anon_free_text = {**anon, "referral_id": RID}
    anon_free_text["body"] = {
        **anon["body"],
        "locations": [
            {**loc, "region": "a free-text region"} for loc in anon["body"].get("locations", [{}])
        ],
    }
    withdraw = transition("delivered", "withdrawn", "sender")
    own_withdrawal = canonical_json(
        {"receipt_id": _example("adult-with-consent")["consent_receipt_id"], "referral_ids": [RID]}
    )
    escalation = canonical_json(
        {"recipient": "shelter", "referral_id": RID, "submitted_at": CREATED, "urgency": "urgent"}
    )
    erasure = canonical_json(
        {
            "erased_at": CREATED + 30,
            "receipt_id": formats.RECEIPT_DOC["receipt_id"],
            "referral_ids": [RID],
        }
    )
    revoked = directory_file(status="revoked", revoked_at=CREATED + 600, reason="compromised")
    retired = directory_file(status="retiring", valid_until=CREATED + 600)
    huge_body = Env("oversized body", "referral", b"a" * (DEFAULT_LIMITS.max_body_bytes + 1))
    return [
        Scenario(
            "replayed",
            "the same envelope again as a new stream message (§4.7 step 11)",
            [ok1],
            Step(REFERRAL_1, "replayed", 2, CREATED + 70),
        ),
        Scenario(
            "redelivered-ok",
            "the same stream message again (a lost ack): acknowledged, not stored twice",
            [ok1],
            Step(REFERRAL_1, "ok", 1),
        ),
        Scenario(
            "reused-referral-id",
            "a new envelope from the same sender reusing a referral id it sent before (§6.1)",
            [ok1],
            Step(Env("referral 1 again", "referral", referral(RID)), "reused-referral-id", 2),
        ),
        Scenario(
            "same-referral-id-other-sender-ok",
            "the same referral id from a different sender is a different referral (§6.1)",
            [ok1],
            Step(
                Env(
                    "referral 1 labour",
                    "referral",
                    referral(RID),
                    sender=AGENCIES["labour-inspectorate"],
                ),
                "ok",
                2,
            ),
        ),
        Scenario(
            "transition-ok",
            "the referral's sender withdraws it while it is delivered (§8.4)",
            [ok1],
            Step(
                Env("withdraw", TRANSITION, transition("delivered", "withdrawn", "sender")), "ok", 2
            ),
        ),
        Scenario(
            "transition-not-shared",
            "a transition of a referral the receiver does not hold (§8.4)",
            [],
            Step(
                Env("withdraw", TRANSITION, transition("delivered", "withdrawn", "sender")),
                "not-shared",
                1,
            ),
        ),
        Scenario(
            "transition-stored-state",
            "a step the table lists but the receiver's stored state (delivered) does not allow;"
            " the body's from_state is not trusted",
            [ok1],
            Step(
                Env(
                    "resubmit", TRANSITION, transition("more_info_requested", "submitted", "sender")
                ),
                "unexpected",
                2,
            ),
        ),
        Scenario(
            "transition-other-recipient",
            "the sender of the referral names another recipient in its transition (§6.4)",
            [ok1],
            Step(
                Env(
                    "withdraw other",
                    TRANSITION,
                    transition("delivered", "withdrawn", "sender", recipient="coordinator"),
                ),
                "unexpected",
                2,
            ),
        ),
        Scenario(
            "transition-twice",
            "the same step again once the stored state moved on (withdrawn is final)",
            [ok1, Step(Env("withdraw", TRANSITION, withdraw), "ok", 2)],
            Step(Env("withdraw again", TRANSITION, withdraw), "unexpected", 3),
        ),
        Scenario(
            "transition-recipient-not-shared",
            "a recipient's step of a referral the receiver never sent to it (§8.4: owner)",
            [ok1],
            Step(
                Env(
                    "acknowledge",
                    TRANSITION,
                    transition("delivered", "acknowledged", "recipient", recipient="police"),
                ),
                "not-shared",
                2,
            ),
        ),
        Scenario(
            "consent-withdrawal-ok",
            "a withdrawal by the referral's sender of a referral it sent under the receipt",
            [ok1],
            Step(Env("withdrawal own", "consent-withdrawal", own_withdrawal), "ok", 2),
        ),
        Scenario(
            "escalation-ok",
            "an escalation to the coordinator",
            [],
            Step(Env("escalation", "escalation", escalation, to="coordinator"), "ok", 1),
            receiver="coordinator",
        ),
        Scenario(
            "erasure-confirmation-ok",
            "an erasure confirmation of ids the receiver does not hold",
            [],
            Step(Env("erasure", "erasure-confirmation", erasure), "ok", 1),
        ),
        Scenario(
            "consent-withdrawal-not-shared",
            "a withdrawal listing an id the receiver holds only as another agency's referral",
            [
                Step(
                    Env(
                        "referral 1 labour",
                        "referral",
                        referral(RID),
                        sender=AGENCIES["labour-inspectorate"],
                    ),
                    "ok",
                    1,
                )
            ],
            Step(Env("withdrawal", "consent-withdrawal", withdrawal), "not-shared", 2),
        ),
        Scenario(
            "consent-withdrawal-unknown-ok",
            "a withdrawal listing ids the receiver does not hold: skipped, accepted (§6.4)",
            [],
            Step(Env("withdrawal", "consent-withdrawal", withdrawal), "ok", 1),
        ),
        Scenario(
            "delivery-receipt-unexpected",
            "a receipt naming no message the receiver sent to the receipt's sender",
            [],
            Step(
                Env(
                    "receipt",
                    DELIVERY_RECEIPT,
                    DeliveryReceipt(
                        fixed("never sent")[:16].hex(), fixed("never sent hash").hex(), CREATED + 50
                    ).encode(),
                ),
                "unexpected",
                1,
            ),
        ),
        Scenario(
            "refusal-unexpected",
            "a refusal naming no undelivered copy the receiver sent to the notice's sender",
            [],
            Step(
                Env(
                    "refusal",
                    REFUSAL,
                    Refusal(
                        fixed("never sent")[:16].hex(),
                        fixed("never sent hash").hex(),
                        "category-not-allowed",
                        CREATED + 50,
                    ).encode(),
                ),
                "unexpected",
                1,
            ),
        ),
        Scenario(
            "resend-request-ok",
            "a resend request from an agency of the directory; the receiver sent it nothing",
            [],
            Step(Env("resend", RESEND_REQUEST, ResendRequest(0, ()).encode()), "ok", 1),
        ),
        Scenario(
            "unknown-kind",
            "a kind the receiver does not know is unexpected before its body is read",
            [],
            Step(Env("note", "note", b"\x00"), "unexpected", 1),
        ),
        Scenario(
            "category-not-allowed",
            "a referral not minimised for the receiver's role ngo (§8.2 step 1)",
            [],
            Step(
                Env("full", "referral", referral(RID, minimised=False)), "category-not-allowed", 1
            ),
        ),
        Scenario(
            "anonymous-not-for-this-role",
            "an anonymous notification to an agency that is not a coordinator",
            [],
            Step(
                Env(
                    "anonymous",
                    "referral",
                    referral(RID, ROLES["coordinator"], name="anonymous-notification"),
                ),
                "not-for-this-role",
                1,
            ),
        ),
        Scenario(
            "anonymous-ok",
            "an anonymous notification to the coordinator",
            [],
            Step(
                Env(
                    "anonymous",
                    "referral",
                    referral(RID, ROLES["coordinator"], name="anonymous-notification"),
                    to="coordinator",
                ),
                "ok",
                1,
            ),
            receiver="coordinator",
        ),
        Scenario(
            "anonymous-free-text",
            "an anonymous notification whose location carries free text (a region)",
            [],
            Step(
                Env(
                    "anonymous free text",
                    "referral",
                    canonical_json({"referral": anon_free_text}),
                    to="coordinator",
                ),
                "not-anonymous",
                1,
            ),
            receiver="coordinator",
        ),
        Scenario(
            "unknown-reason-code",
            "a transition whose reason is free text, not a code of §8.4",
            [ok1],
            Step(
                Env(
                    "cancel",
                    TRANSITION,
                    transition("delivered", "cancelled", "sender", reason="she moved away"),
                ),
                "unknown-reason-code",
                2,
            ),
        ),
        Scenario(
            "key-revoked-before-stored",
            "created before the sender's key was revoked, stored by the bus after (step 10a)",
            [],
            Step(REFERRAL_1, "revoked-key", 1, CREATED + 900),
            directory=revoked,
        ),
        Scenario(
            "key-revoked-after-stored-ok",
            "created and stored before the sender's key was revoked (step 10a passes)",
            [],
            Step(REFERRAL_1, "ok", 1, CREATED + 300),
            directory=revoked,
        ),
        Scenario(
            "key-retired-before-stored",
            "created within the key's validity, stored by the bus after its valid_until",
            [],
            Step(REFERRAL_1, "retired-key", 1, CREATED + 900),
            directory=retired,
        ),
        Scenario(
            "unknown-key-held",
            "a key the directory does not list, stored 10 s ago: held back (retry), §4.7 step 3",
            [],
            Step(
                Env("unlisted", "referral", referral(RID), sender=POLICE_UNLISTED),
                "retry",
                1,
                NOW - 10,
            ),
        ),
        Scenario(
            "unknown-key-after-grace",
            "a key the directory does not list, stored 121 s ago (past the 120 s grace)",
            [],
            Step(
                Env("unlisted", "referral", referral(RID), sender=POLICE_UNLISTED),
                "unknown-key",
                1,
                NOW - 121,
            ),
        ),
        Scenario(
            "envelope-oversized",
            "an envelope of 1 048 577 bytes, refused by length before decoding (§4.7 step 1)",
            [],
            Step(b"", "malformed", 1),
            rule=[("envelope_rule", f"{(1 << 20) + 1} bytes of 61")],
        ),
        Scenario(
            "body-oversized",
            "a body of 786 433 bytes, sealed correctly (§4.7 step 9)",
            [],
            Step(b"", "malformed", 1),
            rule=[
                ("envelope_rule", "seal"),
                ("seal_body", f"{DEFAULT_LIMITS.max_body_bytes + 1} bytes of 61"),
                ("seal_sender_ed25519_seed", fixed("police ed25519 1")),
                ("seal_kind", huge_body.kind),
                ("seal_message_id", huge_body.message_id),
                ("seal_content_key", fixed(f"content key {huge_body.label}")),
                ("seal_nonce", fixed(f"nonce {huge_body.label}")[:24]),
                ("seal_ephemeral_secret", fixed(f"ephemeral {huge_body.label}")),
                ("seal_created", huge_body.created),
                ("seal_expires", huge_body.created + 14 * DAY),
            ],
        ),
    ]


def _shown(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def render(s: Scenario) -> str:
    me = AGENCIES[s.receiver]
    lines = [
        f"expect: {s.test.expect}",
        f"comment: {s.comment}",
        f"receiver: {me.agency}",
        f"receiver_ed25519_seed: {bytes(me.signing_key).hex()}",
        f"receiver_x25519_secret: {bytes(me.encryption_key).hex()}",
        f"receiver_storage_key: {_shown(me.storage_key)}",
        f"root: {b64(ROOT_1_FILE)}",
        f"directory: {b64(s.directory)}",
        f"now: {NOW}",
        f"prior: {len(s.prior)}",
    ]
    for n, step in enumerate(s.prior, 1):
        lines += [
            f"prior_{n}_stream_seq: {step.stream_seq}",
            f"prior_{n}_stored_at: {step.stored_at}",
            f"prior_{n}_expect: {step.expect}",
            f"prior_{n}_envelope: {b64(step.data())}",
        ]
    lines += [f"stream_seq: {s.test.stream_seq}", f"stored_at: {s.test.stored_at}"]
    lines += [f"{name}: {_shown(value)}" for name, value in s.rule]
    data = b"" if s.rule else s.test.data()
    return "\n".join([*lines, "", *textwrap.wrap(base64.b64encode(data).decode(), 76)]) + "\n"


def state_vectors() -> Iterator[tuple[str, str]]:
    for s in scenarios():
        yield f"state-{s.name}", render(s)
