"""Generate the sealed-envelope test vectors (docs/PROTOCOL.md section 4).

    python tests/vectors/generate.py [OUTPUT_DIR]

Everything is deterministic: keys, content key, nonce and ephemeral keys are derived from fixed
labels with SHA-256, times are fixed, and Ed25519 signatures are deterministic, so running this
again gives byte-identical files. Each file tests one thing:

    expect: ok | <reason code>
    comment: <what the vector tests>
    sender_seed: <hex Ed25519 seed of the key that signed the envelope>
    sender_ed25519_public: <hex public key of sender_seed>
    sender_agency: <agency id whose one signing key the receiver trusts>
    trusted_ed25519_public: <hex; the only signing key the receiver trusts, listed for
                             sender_agency with the four key_* fields below (§7.3, §7.6)>
    key_valid_from: <decimal>   key_valid_until: <decimal or none>
    key_status: active | retiring | revoked   key_revoked_at: <decimal or none>
    recipient: <agency id of the receiver>
    recipient_x25519_secret: <hex X25519 secret of the receiver>
    now: <unix seconds at the receiver>
    body: <hex plaintext body>                                  (only for `expect: ok`)

    <envelope, base64, wrapped at 76 columns>

The receiver uses a clock skew of 300 seconds and keeps no replay store. The other formats'
vectors are made by formats.py (imported here).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nacl.bindings as sodium
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from keys import codec
from keys.envelope import (
    Recipient,
    UnsafeFixedRandomness,
    _inner_message,
    _outer_message,
    seal,
)
from keys.identity import AgencyKeys, signing_kid
from keys.restore import LABEL as RESTORE_LABEL
from keys.restore import RestoreDeclaration, sign_restore, verify_restore

sys.path.insert(0, str(Path(__file__).resolve().parent))
import formats
import statevec

CREATED = 1_767_225_600  # 2026-01-01T00:00:00Z
EXPIRES = CREATED + 14 * 24 * 3600
NOW = CREATED + 3600
EXPIRED_NOW = EXPIRES + 24 * 3600
MESSAGE_ID = "6e726d2d746573742d766563746f7231"
BODY = json.dumps(
    {"note": "synthetic test vector, no personal data", "type": "referral"},
    sort_keys=True,
    separators=(",", ":"),
    ensure_ascii=False,
).encode("utf-8")


def fixed(label: str) -> bytes:
    """32 fixed bytes named by `label`."""
    return hashlib.sha256(b"nrm test vector: " + label.encode()).digest()


def agency(agency_id: str, *, generation: int = 1) -> AgencyKeys:
    return AgencyKeys(
        agency=agency_id,
        name=agency_id.replace("-", " ").title(),
        signing_key=SigningKey(fixed(f"{agency_id} ed25519 {generation}")),
        encryption_key=PrivateKey(fixed(f"{agency_id} x25519 {generation}")),
    )


POLICE = agency("police")
SHELTER = agency("shelter")
LABOUR = agency("labour-inspectorate")
POLICE_OTHER = agency("police", generation=2)  # a key of the police that nobody trusts


def seal_fixed(sender: AgencyKeys, recipients: list[AgencyKeys], body: bytes = BODY) -> bytes:
    randomness = UnsafeFixedRandomness(
        message_id=MESSAGE_ID,
        content_key=fixed("content key"),
        nonce=fixed("nonce")[:24],
        ephemeral_keys=[PrivateKey(fixed(f"ephemeral {r.agency}")) for r in recipients],
    )
    return seal(
        sender=sender,
        recipients=[
            Recipient(agency=r.agency, key=r.encryption_key.public_key) for r in recipients
        ],
        kind="referral",
        body=body,
        created=CREATED,
        expires=EXPIRES,
        unsafe_randomness=randomness,
    ).data


def split(data: bytes) -> list[object]:
    """The six top-level fields of an envelope (4.1), without any checks."""
    top: list[object] = codec.unpack(data, max_bytes=len(data), what="vector")
    return top


def sign_outer(sender: AgencyKeys, signed_part: bytes) -> bytes:
    """`signed_part` followed by a fresh outer signature as a 64-byte bin (4.5)."""
    sig = sender.signing_key.sign(_outer_message(signed_part)).signature
    return signed_part + b"\xc4\x40" + sig


def resign(sender: AgencyKeys, fields: list[object]) -> bytes:
    """Encode `fields` (the last one replaced) and sign the result as `sender`."""
    unsigned = codec.pack([*fields[:5], bytes(64)])
    return sign_outer(sender, unsigned[:-66])


def keep_sig(fields: list[object]) -> bytes:
    """Encode `fields` as they are, keeping the (now stale) outer signature."""
    return codec.pack(fields)


def flip(data: bytes, part: bytes, index: int) -> bytes:
    """`data` with bit 0 of byte `index` of the unique occurrence of `part` flipped."""
    assert data.count(part) == 1
    at = data.index(part) + index
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def _bytes(value: object) -> bytes:
    assert isinstance(value, bytes)
    return value


def bad_outer_signature() -> bytes:
    data = seal_fixed(POLICE, [SHELTER])
    return data[:-1] + bytes([data[-1] ^ 0x01])


def bad_inner_signature() -> bytes:
    """The inner signature covers a different body; the outer one is valid."""
    fields = split(seal_fixed(POLICE, [SHELTER]))
    header = _bytes(fields[1])
    inner_sig = POLICE.signing_key.sign(_inner_message(header, BODY + b" ")).signature
    fields[4] = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
        codec.pack([inner_sig, BODY]), header, _bytes(fields[3]), fixed("content key")
    )
    return resign(POLICE, fields)


def readdressed() -> bytes:
    """The header names the labour inspectorate instead of the shelter; old outer signature."""
    fields = split(seal_fixed(POLICE, [SHELTER]))
    header = codec.unpack(_bytes(fields[1]), max_bytes=8192, what="header")
    header[4] = [LABOUR.agency]
    header[6] = [LABOUR.public.encryption_kid]
    fields[1] = codec.pack(header)
    return keep_sig(fields)


def stanza_tampered() -> bytes:
    data = seal_fixed(POLICE, [SHELTER])
    stanzas = split(data)[2]
    assert isinstance(stanzas, list)
    return flip(data, stanzas[0][1], 5)


def body_tampered() -> bytes:
    data = seal_fixed(POLICE, [SHELTER])
    return flip(data, _bytes(split(data)[4]), 7)


def body_tampered_resigned() -> bytes:
    fields = split(seal_fixed(POLICE, [SHELTER]))
    ciphertext = bytearray(_bytes(fields[4]))
    ciphertext[7] ^= 0x01
    fields[4] = bytes(ciphertext)
    return resign(POLICE, fields)


def payload_not_array() -> bytes:
    """The encrypted payload is the integer 5 instead of [inner_sig, body]; outer valid."""
    fields = split(seal_fixed(POLICE, [SHELTER]))
    fields[4] = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
        codec.pack(5), _bytes(fields[1]), _bytes(fields[3]), fixed("content key")
    )
    return resign(POLICE, fields)


def non_canonical() -> bytes:
    """The top-level array is encoded as array16 instead of fixarray; outer re-signed."""
    data = seal_fixed(POLICE, [SHELTER])
    assert data[0] == 0x96
    return sign_outer(POLICE, b"\xdc\x00\x06" + data[1:-66])


def truncated() -> bytes:
    return seal_fixed(POLICE, [SHELTER])[:-1]


def version_2() -> bytes:
    fields = split(seal_fixed(POLICE, [SHELTER]))
    fields[0] = 2
    return resign(POLICE, fields)


def stanza_tampered_resigned() -> bytes:
    """The wrapped content key replaced by 48 other bytes; outer signature redone."""
    fields = split(seal_fixed(POLICE, [SHELTER]))
    fields[2] = [[_bytes(fields[2][0][0]), fixed("other wrapped key") + fixed("x")[:16]]]  # type: ignore[index]
    return resign(POLICE, fields)


def ephemeral_low_order() -> bytes:
    """The ephemeral key replaced by the low-order point u = 1; outer signature redone."""
    fields = split(seal_fixed(POLICE, [SHELTER]))
    fields[2] = [[b"\x01" + bytes(31), fields[2][0][1]]]  # type: ignore[index]
    return resign(POLICE, fields)


def with_header(change: Callable[[list[object]], None]) -> bytes:
    """The envelope with its header changed by `change`; outer signature redone."""
    fields = split(seal_fixed(POLICE, [SHELTER]))
    header = codec.unpack(_bytes(fields[1]), max_bytes=8192, what="header")
    change(header)
    fields[1] = codec.pack(header)
    return resign(POLICE, fields)


def _set(index: int, value: object) -> Callable[[list[object]], None]:
    def change(header: list[object]) -> None:
        header[index] = value

    return change


def too_many_recipients() -> bytes:
    """33 recipients and 33 stanzas: over the item limit of 32 (§1.2); outer redone."""
    fields = split(seal_fixed(POLICE, [SHELTER]))
    header = codec.unpack(_bytes(fields[1]), max_bytes=8192, what="header")
    header[4] = [f"agency-{n}" for n in range(33)]
    header[6] = [fixed(f"kid {n}")[:16].hex() for n in range(33)]
    fields[1] = codec.pack(header)
    fields[2] = [fields[2][0]] * 33  # type: ignore[index]
    return resign(POLICE, fields)


def too_deep() -> bytes:
    """The stanza list nested 9 arrays deep: deeper than 8 (§1.2); outer redone."""
    fields = split(seal_fixed(POLICE, [SHELTER]))
    nested: list[object] = []
    for _ in range(8):
        nested = [nested]
    fields[2] = nested
    return resign(POLICE, fields)


def kid_mismatch() -> bytes:
    """The recipient kid names another shelter key than the one the receiver holds."""
    other = agency("shelter", generation=2)
    return with_header(_set(6, [other.public.encryption_kid]))


@dataclass(frozen=True)
class Vector:
    name: str
    comment: str
    expect: str
    make: Callable[[], bytes]
    recipient: AgencyKeys = SHELTER
    signer: AgencyKeys = POLICE
    now: int = NOW
    valid_from: int = CREATED - 30 * 24 * 3600
    valid_until: int | None = None
    status: str = "active"
    revoked_at: int | None = None


VECTORS = [
    Vector("ok-single", "one recipient", "ok", lambda: seal_fixed(POLICE, [SHELTER])),
    Vector(
        "ok-two-recipients-first",
        "two recipients, opened by the first",
        "ok",
        lambda: seal_fixed(POLICE, [SHELTER, LABOUR]),
    ),
    Vector(
        "ok-two-recipients-second",
        "two recipients, opened by the second",
        "ok",
        lambda: seal_fixed(POLICE, [SHELTER, LABOUR]),
        recipient=LABOUR,
    ),
    Vector(
        "bad-outer-signature",
        "last byte of the outer signature flipped",
        "bad-signature",
        bad_outer_signature,
    ),
    Vector(
        "bad-inner-signature",
        "inner signature over another body; outer signature valid",
        "bad-signature",
        bad_inner_signature,
    ),
    Vector(
        "header-readdressed",
        "header recipient changed, outer signature not redone",
        "bad-signature",
        readdressed,
        recipient=LABOUR,
    ),
    Vector(
        "stanza-tampered",
        "one bit of the wrapped content key flipped",
        "bad-signature",
        stanza_tampered,
    ),
    Vector(
        "body-tampered", "one bit of the body ciphertext flipped", "bad-signature", body_tampered
    ),
    Vector(
        "body-tampered-resigned",
        "one bit of the body ciphertext flipped, outer signature redone by the sender",
        "undecryptable",
        body_tampered_resigned,
    ),
    Vector(
        "payload-not-array",
        "decrypted payload is not [inner_sig, body]; outer valid",
        "malformed",
        payload_not_array,
    ),
    Vector(
        "not-addressed-to-me",
        "sealed to the shelter, opened by the labour inspectorate",
        "not-addressed-to-me",
        lambda: seal_fixed(POLICE, [SHELTER]),
        recipient=LABOUR,
    ),
    Vector(
        "expired",
        "opened a day after expiry",
        "expired",
        lambda: seal_fixed(POLICE, [SHELTER]),
        now=EXPIRED_NOW,
    ),
    Vector(
        "unknown-sender-key",
        "signed with a police key the receiver does not trust",
        "unknown-key",
        lambda: seal_fixed(POLICE_OTHER, [SHELTER]),
        signer=POLICE_OTHER,
    ),
    Vector(
        "non-canonical",
        "top-level array as array16; outer signature redone",
        "malformed",
        non_canonical,
    ),
    Vector("truncated", "last byte removed", "malformed", truncated),
    Vector(
        "unsupported-version", "envelope version 2; outer signature redone", "malformed", version_2
    ),
    Vector(
        "retired-key",
        "created one hour after the sender key's valid_until",
        "retired-key",
        lambda: seal_fixed(POLICE, [SHELTER]),
        valid_until=CREATED - 3600,
        status="retiring",
    ),
    Vector(
        "revoked-key",
        "created after the sender key was revoked",
        "revoked-key",
        lambda: seal_fixed(POLICE, [SHELTER]),
        status="revoked",
        revoked_at=CREATED - 60,
    ),
    Vector(
        "revoked-later",
        "the sender key revoked after the envelope was created still verifies (§7.6)",
        "ok",
        lambda: seal_fixed(POLICE, [SHELTER]),
        status="revoked",
        revoked_at=CREATED + 60,
    ),
    Vector(
        "not-yet-valid-key",
        "created before the sender key's valid_from",
        "retired-key",
        lambda: seal_fixed(POLICE, [SHELTER]),
        valid_from=CREATED + 1,
    ),
    Vector(
        "stanza-tampered-resigned",
        "the wrapped content key replaced, outer signature redone",
        "undecryptable",
        stanza_tampered_resigned,
    ),
    Vector(
        "ephemeral-low-order",
        "the stanza's ephemeral key is the low-order point u = 1; outer redone",
        "undecryptable",
        ephemeral_low_order,
    ),
    Vector(
        "kid-mismatch",
        "sealed naming a shelter encryption key the receiver does not hold",
        "not-addressed-to-me",
        kid_mismatch,
    ),
    Vector(
        "header-message-id-uppercase",
        "message id in uppercase hex; outer redone",
        "malformed",
        lambda: with_header(_set(1, MESSAGE_ID.upper())),
    ),
    Vector(
        "header-kind-invalid",
        "kind with an uppercase letter; outer redone",
        "malformed",
        lambda: with_header(_set(2, "Referral")),
    ),
    Vector(
        "header-recipients-repeated",
        "the shelter named twice, with two stanzas' worth of kids; outer redone",
        "malformed",
        lambda: with_header(_set(4, [SHELTER.agency, SHELTER.agency])),
    ),
    Vector(
        "header-expires-before-created",
        "expires equal to created; outer redone",
        "malformed",
        lambda: with_header(_set(8, CREATED)),
    ),
    Vector(
        "header-version-true",
        "header version is msgpack true, not 1; outer redone",
        "malformed",
        lambda: with_header(_set(0, True)),
    ),
    Vector(
        "header-created-bool",
        "created is a bool; outer redone",
        "malformed",
        lambda: with_header(_set(7, False)),
    ),
    Vector(
        "too-many-recipients",
        "33 recipients and stanzas, over the item limit 32; outer redone",
        "malformed",
        too_many_recipients,
    ),
    Vector(
        "too-deep", "arrays nested 9 deep in the stanza list; outer redone", "too-deep", too_deep
    ),
]


def _none(value: int | None) -> str:
    return "none" if value is None else str(value)


def render(vector: Vector) -> str:
    lines = [
        f"expect: {vector.expect}",
        f"comment: {vector.comment}",
        f"sender_seed: {bytes(vector.signer.signing_key).hex()}",
        f"sender_ed25519_public: {bytes(vector.signer.signing_key.verify_key).hex()}",
        f"sender_agency: {POLICE.agency}",
        f"trusted_ed25519_public: {bytes(POLICE.signing_key.verify_key).hex()}",
        f"key_valid_from: {vector.valid_from}",
        f"key_valid_until: {_none(vector.valid_until)}",
        f"key_status: {vector.status}",
        f"key_revoked_at: {_none(vector.revoked_at)}",
        f"recipient: {vector.recipient.agency}",
        f"recipient_x25519_secret: {bytes(vector.recipient.encryption_key).hex()}",
        f"now: {vector.now}",
    ]
    if vector.expect == "ok":
        lines.append(f"body: {BODY.hex()}")
    envelope = base64.b64encode(vector.make()).decode("ascii")
    return "\n".join([*lines, "", *textwrap.wrap(envelope, 76)]) + "\n"


# --- ledger restore declarations (docs/PROTOCOL.md §9.4) -------------------------------------
#
#     expect: ok | <reason code>
#     comment: <what the vector tests>
#     origin: <the origin the verifier expects>
#     ledger_ed25519_public: <hex; the ledger key the verifier trusts>
#     seq, restored_size, restored_root, previous_size, previous_root, declared_at
#                                                   (only for `expect: ok`; "nil" for nil)
#
#     <signed declaration, base64, wrapped at 76 columns>

LEDGER_KEY = SigningKey(fixed("ledger ed25519 1"))
OTHER_LEDGER_KEY = SigningKey(fixed("ledger ed25519 2"))
ORIGIN = "national/nrm-ledger"
DECLARATION = RestoreDeclaration(
    origin=ORIGIN,
    seq=1,
    restored_size=1000,
    restored_root=fixed("restored root"),
    previous_size=1500,
    previous_root=fixed("previous root"),
    declared_at=NOW,
)


def _resign_restore(fields: list[object], key: SigningKey = LEDGER_KEY) -> bytes:
    body = codec.pack(fields)
    sig = key.sign(RESTORE_LABEL + b"\x00" + body).signature
    return codec.pack([1, body, signing_kid(key.verify_key), sig])


def _restore_fields(d: RestoreDeclaration) -> list[object]:
    return list(codec.unpack(d.encode(), max_bytes=1024, what="declaration"))


def _restore_tampered() -> bytes:
    data = bytearray(sign_restore(DECLARATION, LEDGER_KEY))
    data[-1] ^= 0x01
    return bytes(data)


def _restore_below() -> bytes:
    fields = _restore_fields(DECLARATION)
    fields[5] = 999  # previous_size below restored_size
    return _resign_restore(fields)


RESTORE_VECTORS: list[tuple[str, str, str, Callable[[], bytes]]] = [
    (
        "ok",
        "restore 1: back to 1000 entries from 1500",
        "ok",
        lambda: sign_restore(DECLARATION, LEDGER_KEY),
    ),
    (
        "ok-replaced-lost",
        "the replaced database was lost: previous size and root nil",
        "ok",
        lambda: sign_restore(
            dataclasses.replace(DECLARATION, previous_size=None, previous_root=None), LEDGER_KEY
        ),
    ),
    ("bad-signature", "last signature byte flipped", "bad-signature", _restore_tampered),
    (
        "other-key",
        "signed by a key that is not the ledger's",
        "bad-signature",
        lambda: sign_restore(DECLARATION, OTHER_LEDGER_KEY),
    ),
    (
        "other-origin",
        "a valid declaration for another ledger",
        "bad-signature",
        lambda: sign_restore(dataclasses.replace(DECLARATION, origin=ORIGIN + "-2"), LEDGER_KEY),
    ),
    (
        "previous-below-restored",
        "previous_size 999 below restored_size 1000, correctly signed",
        "malformed",
        _restore_below,
    ),
]


def _field(value: object) -> str:
    if value is None:
        return "nil"
    return value.hex() if isinstance(value, bytes) else str(value)


def render_restore(name: str, comment: str, expect: str, make: Callable[[], bytes]) -> str:
    data = make()
    lines = [
        f"expect: {expect}",
        f"comment: {comment}",
        f"origin: {ORIGIN}",
        f"ledger_ed25519_public: {bytes(LEDGER_KEY.verify_key).hex()}",
    ]
    if expect == "ok":
        d = verify_restore(data, key=LEDGER_KEY.verify_key, origin=ORIGIN)
        for attr in RestoreDeclaration.WIRE.fields[1:]:  # the origin is named above
            lines.append(f"{attr}: {_field(getattr(d, attr))}")
    text = base64.b64encode(data).decode("ascii")
    return "\n".join([*lines, "", *textwrap.wrap(text, 76)]) + "\n"


# --- resend request bodies (docs/PROTOCOL.md §6.3) --------------------------------------------
#
#     expect: ok | malformed
#     comment: <what the vector tests>
#     since: <decimal>, have: <comma-separated ids, or empty>   (only for `expect: ok`)
#
#     <the body (the plaintext of a resend-request envelope), base64>

HELD = sorted(fixed(f"held {n}")[:16].hex() for n in range(3))
RESEND_VECTORS: list[tuple[str, str, str, bytes]] = [
    ("ok", "three held ids", "ok", codec.pack([1, CREATED, HELD])),
    (
        "ok-nothing-held",
        "everything since 0: nothing held from this sender",
        "ok",
        codec.pack([1, 0, []]),
    ),
    ("unsorted", "held ids not in order", "malformed", codec.pack([1, CREATED, HELD[::-1]])),
    ("duplicate", "a held id twice", "malformed", codec.pack([1, CREATED, [HELD[0], HELD[0]]])),
    ("version-2", "version 2", "malformed", codec.pack([2, CREATED, HELD])),
    ("since-bool", "since is a bool", "malformed", codec.pack([1, True, []])),
]


def render_resend(comment: str, expect: str, body: bytes) -> str:
    lines = [f"expect: {expect}", f"comment: {comment}"]
    if expect == "ok":
        decoded = codec.unpack(body, max_bytes=1 << 16)
        lines += [f"since: {decoded[1]}", f"have: {','.join(decoded[2])}"]
    text = base64.b64encode(body).decode("ascii")
    return "\n".join([*lines, "", *textwrap.wrap(text, 76)]) + "\n"


# --- refusal bodies (docs/PROTOCOL.md §6.5) ---------------------------------------------------
#
#     expect: ok | malformed | too-deep | schema-invalid
#     comment: <what the vector tests>
#     message_id, envelope_hash, reason, refused_at   (only for `expect: ok`)
#
#     <the body (the plaintext of a refusal envelope), base64>

REFUSED_ID = fixed("refused message")[:16].hex()
REFUSED_HASH = fixed("refused envelope").hex()


_NESTED: list[object] = []
for _ in range(9):
    _NESTED = [_NESTED]

REFUSAL_VECTORS: list[tuple[str, str, str, bytes]] = [
    (
        "ok",
        "a narrative refused by an NGO",
        "ok",
        codec.pack([1, REFUSED_ID, REFUSED_HASH, "category-not-allowed", CREATED]),
    ),
    (
        "ok-unprocessable",
        "a handler failure",
        "ok",
        codec.pack([1, REFUSED_ID, REFUSED_HASH, "unprocessable", 0]),
    ),
    (
        "ok-unknown-outcome-code",
        "a closed step's outcome no code of §8.4 (this release; 0.3.0: schema-invalid)",
        "ok",
        codec.pack([1, REFUSED_ID, REFUSED_HASH, "unknown-outcome-code", CREATED]),
    ),
    (
        "envelope-reason",
        "a reason of the envelope layer, never notified",
        "schema-invalid",
        codec.pack([1, REFUSED_ID, REFUSED_HASH, "bad-signature", CREATED]),
    ),
    (
        "short-hash",
        "an envelope hash of 63 hex digits",
        "schema-invalid",
        codec.pack([1, REFUSED_ID, REFUSED_HASH[:63], "category-not-allowed", CREATED]),
    ),
    (
        "version-2",
        "version 2",
        "malformed",
        codec.pack([2, REFUSED_ID, REFUSED_HASH, "category-not-allowed", CREATED]),
    ),
    (
        "time-bool",
        "refused_at is a bool",
        "malformed",
        codec.pack([1, REFUSED_ID, REFUSED_HASH, "category-not-allowed", True]),
    ),
    (
        "too-deep",
        "nesting at depth 9",
        "too-deep",
        codec.pack([1, REFUSED_ID, REFUSED_HASH, "category-not-allowed", _NESTED]),
    ),
]


def render_refusal(comment: str, expect: str, body: bytes) -> str:
    lines = [f"expect: {expect}", f"comment: {comment}"]
    if expect == "ok":
        decoded = codec.unpack(body, max_bytes=512)
        for name, value in zip(
            ("message_id", "envelope_hash", "reason", "refused_at"), decoded[1:], strict=True
        ):
            lines.append(f"{name}: {value}")
    text = base64.b64encode(body).decode("ascii")
    return "\n".join([*lines, "", *textwrap.wrap(text, 76)]) + "\n"


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    prefixes = ("envelope-", "restore-", "resend-request-", "refusal-", "state-", *formats.PREFIXES)
    for prefix in prefixes:
        for stale in out.glob(f"{prefix}*.txt"):
            stale.unlink()
    for _, family in formats.FAMILIES:
        for name, text in family():
            (out / f"{name}.txt").write_text(text, encoding="utf-8")
    for name, text in statevec.state_vectors():
        (out / f"{name}.txt").write_text(text, encoding="utf-8")
    for name, comment, expect, body in RESEND_VECTORS:
        text = render_resend(comment, expect, body)
        (out / f"resend-request-{name}.txt").write_text(text, encoding="utf-8")
    for name, comment, expect, body in REFUSAL_VECTORS:
        text = render_refusal(comment, expect, body)
        (out / f"refusal-{name}.txt").write_text(text, encoding="utf-8")
    for vector in VECTORS:
        (out / f"envelope-{vector.name}.txt").write_text(render(vector), encoding="utf-8")
    for name, comment, expect, make in RESTORE_VECTORS:
        text = render_restore(name, comment, expect, make)
        (out / f"restore-{name}.txt").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
