"""Agency identities and key ids (docs/PROTOCOL.md section 2)."""

from __future__ import annotations

import hashlib
import json

import pytest
from nacl.public import PrivateKey, PublicKey
from nacl.signing import SigningKey

from keys import (
    AgencyKeys,
    MalformedError,
    PublicIdentity,
    Recipient,
    WeakKeyError,
    check_agency_id,
    check_encryption_key,
    seal,
)
from keys.codec import to_b64
from keys.identity import (
    ENCRYPTION_KID_LABEL,
    encryption_kid,
    key_id,
    signing_kid,
    verify_proof,
)

_P = (1 << 255) - 19


def _u(n: int, *, high_bit: bool = False) -> bytes:
    raw = bytearray(n.to_bytes(32, "little"))
    raw[31] |= 0x80 if high_bit else 0
    return bytes(raw)


#: The small-order X25519 points (cr.yp.to/ecdh.html "Which Curve25519 public keys are
#: invalid"): 0 and 1, the two points of order 8, p - 1 (order 4) and the non-canonical
#: p and p + 1 (0 and 1 again); each also with the top bit set, which X25519 ignores.
_SMALL_ORDER = {
    "0": 0,
    "1": 1,
    "order 8 (a)": 325606250916557431795983626356110631294008115727848805560023387167927233504,
    "order 8 (b)": 39382357235489614581723060781553021112529911719440698176882885853963445705823,
    "p - 1": _P - 1,
    "p": _P,
    "p + 1": _P + 1,
}
WEAK_X25519_KEYS: dict[str, bytes] = {
    **{name: _u(n) for name, n in _SMALL_ORDER.items()},
    **{f"{name}, top bit set": _u(n, high_bit=True) for name, n in _SMALL_ORDER.items()},
    # Not of small order but not canonical: a real key's alias, u + p, or its top bit set.
    "a real key + p": _u(int.from_bytes(bytes(PrivateKey(b"\x07" * 32).public_key), "little") + _P),
    "a real key, top bit set": _u(
        int.from_bytes(bytes(PrivateKey(b"\x07" * 32).public_key), "little"), high_bit=True
    ),
}

SEED = bytes(range(32))
KEYS = AgencyKeys(
    agency="police",
    name="National Police",
    signing_key=SigningKey(SEED),
    encryption_key=PrivateKey(SEED),
)


def test_key_id_definition() -> None:
    """A key id is the first 32 hex digits of SHA-256(label || 0x00 || public key)."""
    public = bytes(KEYS.signing_key.verify_key)
    expected = hashlib.sha256(b"nrm/v1/kid/ed25519\x00" + public).hexdigest()[:32]
    assert signing_kid(KEYS.signing_key.verify_key) == expected == KEYS.public.signing_kid
    public_x = bytes(KEYS.encryption_key.public_key)
    expected_x = hashlib.sha256(b"nrm/v1/kid/x25519\x00" + public_x).hexdigest()[:32]
    assert encryption_kid(KEYS.encryption_key.public_key) == expected_x


def test_key_ids_stable_and_distinct_per_algorithm() -> None:
    """The same 32 bytes get different ids as an Ed25519 and as an X25519 key, every time."""
    raw = bytes(KEYS.signing_key.verify_key)
    a = key_id(b"nrm/v1/kid/ed25519", raw)
    b = key_id(b"nrm/v1/kid/x25519", raw)
    assert a != b
    assert a == key_id(b"nrm/v1/kid/ed25519", raw)
    assert len(a) == len(b) == 32
    assert KEYS.public.signing_kid != KEYS.public.encryption_kid


def test_key_id_needs_32_bytes() -> None:
    """A public key of the wrong length has no key id."""
    with pytest.raises(ValueError):
        key_id(b"nrm/v1/kid/ed25519", bytes(31))


def test_identity_json_round_trip() -> None:
    """An identity file parses back to an equal identity with the same key ids."""
    text = KEYS.public.to_json()
    again = PublicIdentity.from_json(text)
    assert again == KEYS.public
    assert again.to_json() == text
    doc = json.loads(text)
    assert doc["format"] == "nrm-identity/1"
    assert doc["signing_key"]["kid"] == KEYS.public.signing_kid


@pytest.mark.parametrize("which", ["signing_key", "encryption_key"])
def test_mismatched_kid_refused(which: str) -> None:
    """An identity file whose key id does not match its key is malformed."""
    doc = json.loads(KEYS.public.to_json())
    doc[which]["kid"] = "0" * 32
    with pytest.raises(MalformedError, match="key ids"):
        PublicIdentity.from_json(json.dumps(doc))


@pytest.mark.parametrize(
    "change",
    [
        {"format": "nrm-identity/2"},
        {"agency": "Police"},
        {"name": ""},
        {"signing_key": {"kid": "x", "ed25519": "not base64!"}},
        {"encryption_key": "AAAA"},
    ],
)
def test_invalid_identity_refused(change: dict[str, object]) -> None:
    """Wrong format tag, agency id, name or key encoding is malformed."""
    doc = json.loads(KEYS.public.to_json())
    doc.update(change)
    with pytest.raises(MalformedError):
        PublicIdentity.from_json(json.dumps(doc))


def test_deeply_nested_identity_is_malformed() -> None:
    with pytest.raises(MalformedError):
        PublicIdentity.from_json("[" * 100_000)


@pytest.mark.parametrize("agency", ["a", "police", "ngo-shelter-2", "x" * 64])
def test_valid_agency_ids(agency: str) -> None:
    """Lowercase letters, digits and inner hyphens up to 64 characters are agency ids."""
    assert check_agency_id(agency) == agency


@pytest.mark.parametrize("agency", ["", "-a", "a-", "A", "a.b", "a b", "x" * 65, "é"])
def test_invalid_agency_ids(agency: str) -> None:
    """Anything that is not a safe subject token is refused."""
    with pytest.raises(ValueError):
        check_agency_id(agency)


def test_repr_hides_private_keys() -> None:
    """The repr of private keys names the agency and key id, never key bytes."""
    text = repr(KEYS)
    assert SEED.hex() not in text
    assert KEYS.public.signing_kid in text


def test_public_identity_is_made_once_per_key_set() -> None:
    """`public` signs its proof of possession once and keeps it; a rotated key set (a new
    instance) has its own, proved by its own new signing key; equality ignores the cache."""
    keys = AgencyKeys.generate(agency="police", name="National Police")
    first = keys.public
    assert keys.public is first
    assert verify_proof(first) is first
    rotated = keys.rotated()
    assert rotated.public.signing_kid != first.signing_kid
    assert verify_proof(rotated.public).signing_key == rotated.signing_key.verify_key
    fresh = AgencyKeys(
        agency="police",
        name="National Police",
        signing_key=SigningKey(SEED),
        encryption_key=PrivateKey(SEED),
    )
    assert fresh == KEYS and fresh.public == KEYS.public


@pytest.mark.parametrize("name", list(WEAK_X25519_KEYS))
def test_weak_encryption_key_refused_when_an_identity_is_loaded(name: str) -> None:
    """An identity file whose X25519 key is of small order or not canonical is refused as
    `weak-key`, naming the agency (kid matching, so only the key itself is wrong)."""
    weak = WEAK_X25519_KEYS[name]
    doc = json.loads(KEYS.public.to_json())
    doc["encryption_key"] = {"kid": key_id(ENCRYPTION_KID_LABEL, weak), "x25519": to_b64(weak)}
    with pytest.raises(WeakKeyError, match="of police") as info:
        PublicIdentity.from_json(json.dumps(doc))
    assert info.value.reason == "weak-key"
    with pytest.raises(WeakKeyError):
        check_encryption_key(weak)


def test_generated_and_fixed_keys_are_not_weak() -> None:
    """Keys made by X25519 itself always pass; the check needs 32 bytes."""
    for i in range(64):
        public = bytes(PrivateKey(bytes([i]) * 32).public_key)
        assert check_encryption_key(public) == public
    assert PublicIdentity.from_json(KEYS.public.to_json()) == KEYS.public
    with pytest.raises(ValueError):
        check_encryption_key(b"\x09" * 31)


def test_seal_refuses_a_small_order_recipient_by_name() -> None:
    """Sealing to a small-order key raises `weak-key` naming the recipient, before any
    work (libsodium would otherwise fail with an anonymous library error)."""
    recipient = Recipient(agency="shelter", key=PublicKey(WEAK_X25519_KEYS["order 8 (a)"]))
    with pytest.raises(WeakKeyError, match="of shelter"):
        seal(
            sender=KEYS,
            recipients=[recipient],
            kind="referral",
            body=b"{}",
            created=1_767_225_600,
            expires=1_767_225_600 + 3600,
        )
