"""Agency identities and key ids (docs/PROTOCOL.md section 2)."""

from __future__ import annotations

import hashlib
import json

import pytest
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from keys import AgencyKeys, MalformedError, PublicIdentity, check_agency_id
from keys.identity import encryption_kid, key_id, signing_kid

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
