"""Agency identities: key pairs, key ids, and the public identity handed to administrators.

docs/PROTOCOL.md section 2. A key id is derived from the public key with a domain-separation
label per algorithm, so an Ed25519 key and an X25519 key never share an id.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass, field, replace
from typing import Any

import nacl.bindings as sodium
import nacl.exceptions
import nkeys
from nacl.public import PrivateKey, PublicKey
from nacl.signing import SigningKey, VerifyKey

from .codec import from_b64, to_b64
from .errors import BadProofError as BadProofError  # raised by verify_proof
from .errors import MalformedError, WeakKeyError
from .errors import MissingProofError as MissingProofError
from .subjects import AGENCY_ID_PATTERN

SIGNING_KID_LABEL = b"nrm/v1/kid/ed25519"
ENCRYPTION_KID_LABEL = b"nrm/v1/kid/x25519"
IDENTITY_FORMAT = "nrm-identity/1"
IDENTITY_PROOF_LABEL = b"nrm/v1/identity-proof"
FINGERPRINT_LABEL = b"nrm/v1/identity-fingerprint"
_NKEY_USER = re.compile(r"^U[A-Z2-7]{55}$")
#: The field prime of Curve25519: a canonical u-coordinate is below it (RFC 7748 §5).
_P25519 = (1 << 255) - 19
#: Any scalar does for the small-order test: X25519 clamps it to a multiple of 8 that is not
#: a multiple of the group order, so the product is zero exactly for a small-order point.
_PROBE_SCALAR = hashlib.sha256(b"nrm/v1/x25519-probe").digest()


def key_id(label: bytes, public: bytes) -> str:
    """`hex(SHA-256(label || 0x00 || public))[:32]`: 128 bits, stable, printable."""
    if len(public) != 32:
        raise ValueError("public keys are 32 bytes")
    return hashlib.sha256(label + b"\x00" + public).hexdigest()[:32]


def signing_kid(key: VerifyKey) -> str:
    return key_id(SIGNING_KID_LABEL, bytes(key))


def encryption_kid(key: PublicKey) -> str:
    return key_id(ENCRYPTION_KID_LABEL, bytes(key))


def check_encryption_key(public: bytes, *, owner: str | None = None) -> bytes:
    """Return `public` if it is an X25519 public key one can seal to (PROTOCOL.md §2.1),
    else raise `WeakKeyError` (naming `owner`, an agency id, if given).

    Refused: a u-coordinate that is not canonical (at or above 2^255 - 19, which includes
    every value with the top bit set), and a point of small order, found by libsodium's own
    check: `crypto_scalarmult` fails for its list of small-order points and whenever the
    product is all zero. Key ids are computed over the exact bytes, so a non-canonical
    alias of a key would otherwise get a second id."""
    if not isinstance(public, bytes) or len(public) != 32:
        raise ValueError("public keys are 32 bytes")
    whose = "" if owner is None else f" of {owner}"
    if int.from_bytes(public, "little") >= _P25519:
        raise WeakKeyError(f"the X25519 public key{whose} is not canonically encoded")
    try:
        sodium.crypto_scalarmult(_PROBE_SCALAR, public)
    except nacl.exceptions.CryptoError as e:
        raise WeakKeyError(f"the X25519 public key{whose} is of small order") from e
    return public


def check_agency_id(agency: str) -> str:
    """Return `agency` if it is a valid agency id, else raise ValueError."""
    if not isinstance(agency, str) or not AGENCY_ID_PATTERN.fullmatch(agency):
        raise ValueError(
            f"agency id {agency!r} must be 1-64 characters of a-z, 0-9 and '-', "
            "starting and ending with a letter or digit"
        )
    return agency


def identity_keys_bytes(identity: PublicIdentity) -> bytes:
    """What the proof signs and the fingerprint hashes, after their labels (PROTOCOL.md
    §2.4): u8 length + agency id (ASCII), the Ed25519 key (32), the X25519 key (32), u8
    length + NATS key (ASCII; length 0 without one). The display name is not in it."""
    agency = identity.agency.encode("ascii")
    nats = (identity.nats_key or "").encode("ascii")
    return b"".join(
        (
            bytes([len(agency)]),
            agency,
            bytes(identity.signing_key),
            bytes(identity.encryption_key),
            bytes([len(nats)]),
            nats,
        )
    )


def proof_statement(identity: PublicIdentity) -> bytes:
    """The bytes the agency's signing key signs: IDENTITY_PROOF_LABEL, 0x00, the keys."""
    return IDENTITY_PROOF_LABEL + b"\x00" + identity_keys_bytes(identity)


def fingerprint(identity: PublicIdentity) -> str:
    """A short fingerprint to compare out of band: the first 16 bytes of SHA-256 over
    FINGERPRINT_LABEL, 0x00 and the keys, as 8 groups of 4 lowercase hex digits."""
    digest = hashlib.sha256(FINGERPRINT_LABEL + b"\x00" + identity_keys_bytes(identity))
    text = digest.digest()[:16].hex()
    return " ".join(text[i : i + 4] for i in range(0, 32, 4))


def verify_proof(identity: PublicIdentity) -> PublicIdentity:
    """`identity` if its proof of possession verifies; MissingProofError without one,
    BadProofError if it does not verify."""
    if identity.proof is None:
        raise MissingProofError(f"the identity of {identity.agency} has no proof of possession")
    try:
        identity.signing_key.verify(proof_statement(identity), identity.proof)
    except nacl.exceptions.BadSignatureError as e:
        raise BadProofError(
            f"the proof of possession of {identity.agency}'s identity does not verify"
        ) from e
    return identity


@dataclass(frozen=True, slots=True)
class PublicIdentity:
    """What the rest of the mechanism knows of an agency: its id, name and public keys."""

    agency: str
    name: str
    signing_key: VerifyKey
    encryption_key: PublicKey
    #: The NATS user NKey (public, "U...") the agency's agent authenticates to the bus with.
    nats_key: str | None = None
    #: The proof of possession (§2.4): the signing key's signature over `proof_statement`.
    #: Not part of equality: the same keys are the same identity, proved or not.
    proof: bytes | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        check_encryption_key(bytes(self.encryption_key), owner=self.agency)

    @property
    def signing_kid(self) -> str:
        return signing_kid(self.signing_key)

    @property
    def encryption_kid(self) -> str:
        return encryption_kid(self.encryption_key)

    def to_json(self) -> str:
        doc = {
            "format": IDENTITY_FORMAT,
            "agency": self.agency,
            "name": self.name,
            "signing_key": {"kid": self.signing_kid, "ed25519": to_b64(bytes(self.signing_key))},
            "encryption_key": {
                "kid": self.encryption_kid,
                "x25519": to_b64(bytes(self.encryption_key)),
            },
        }
        if self.nats_key is not None:
            doc["nats_key"] = self.nats_key
        if self.proof is not None:
            doc["proof"] = {"ed25519": to_b64(self.proof)}
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> PublicIdentity:
        """Parse and check an identity file; the key ids in it must match the keys."""
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict) or doc.get("format") != IDENTITY_FORMAT:
                raise MalformedError(f"not an {IDENTITY_FORMAT} document")
            sk = doc["signing_key"]
            ek = doc["encryption_key"]
            ident = cls(
                agency=check_agency_id(doc["agency"]),
                name=_str(doc["name"]),
                signing_key=VerifyKey(from_b64(sk["ed25519"])),
                encryption_key=PublicKey(from_b64(ek["x25519"])),
                nats_key=_nats_key(doc["nats_key"]) if "nats_key" in doc else None,
                proof=_proof(doc["proof"]) if "proof" in doc else None,
            )
        except MalformedError:
            raise
        except (KeyError, TypeError, ValueError, RecursionError) as e:
            raise MalformedError(f"identity file is not valid: {type(e).__name__}") from e
        if sk.get("kid") != ident.signing_kid or ek.get("kid") != ident.encryption_kid:
            raise MalformedError("identity file key ids do not match its keys")
        return ident


@dataclass(frozen=True, slots=True)
class AgencyKeys:
    """An agency's private keys. Lives in memory only; at rest it is a sealed key file."""

    agency: str
    name: str
    signing_key: SigningKey
    encryption_key: PrivateKey
    #: NATS user NKey seed ("SU..."), for challenge-response authentication to the bus.
    nats_seed: bytes | None = None
    #: Earlier encryption keys, oldest first, kept to open mail sealed before a rotation
    #: until the trust directory says their overlap window is over.
    previous_encryption_keys: tuple[PrivateKey, ...] = ()
    #: A random key that never rotates, for data the agent keeps at rest (per-referral data
    #: keys are sealed under it); lost with the key file, so a stolen database reads nothing.
    storage_key: bytes | None = None
    #: The NATS seed in use before the last rotation, kept so an agent restarted between
    #: `nrm keys rotate` and the publication of the directory naming the new NKey can
    #: still reach the bus (docs/PROTOCOL.md §3.4). The bus stops accepting it once that
    #: directory is published; the next rotation drops it.
    previous_nats_seed: bytes | None = None
    #: `public`, made once: its proof of possession is a signature, not worth repeating on
    #: every access (a new instance, `replace` included, starts without it).
    _public: PublicIdentity | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def generate(cls, *, agency: str, name: str) -> AgencyKeys:
        return cls(
            agency=check_agency_id(agency),
            name=name,
            signing_key=SigningKey.generate(),
            encryption_key=PrivateKey.generate(),
            nats_seed=new_nats_seed(),
            storage_key=secrets.token_bytes(32),
        )

    def rotated(self) -> AgencyKeys:
        """New signing, encryption and NATS keys; the current encryption key joins the
        previous ones, the current NATS seed becomes `previous_nats_seed`."""
        return replace(
            self,
            signing_key=SigningKey.generate(),
            encryption_key=PrivateKey.generate(),
            previous_encryption_keys=(*self.previous_encryption_keys, self.encryption_key),
            nats_seed=new_nats_seed(),
            previous_nats_seed=self.nats_seed,
        )

    def nats_seed_for(self, nats_key: str) -> bytes | None:
        """The seed (current or previous) whose public NKey is `nats_key`, if this agency
        holds it."""
        for seed in (self.nats_seed, self.previous_nats_seed):
            if seed is not None and nats_public_key(seed) == nats_key:
                return seed
        return None

    @property
    def decryption_keys(self) -> dict[str, PrivateKey]:
        """Every encryption key this agency holds, by key id."""
        keys = (*self.previous_encryption_keys, self.encryption_key)
        return {encryption_kid(k.public_key): k for k in keys}

    @property
    def public(self) -> PublicIdentity:
        """The public identity, with its proof of possession signed by the signing key
        (computed on first use, then kept)."""
        if self._public is not None:
            return self._public
        unproved = PublicIdentity(
            agency=self.agency,
            name=self.name,
            signing_key=self.signing_key.verify_key,
            encryption_key=self.encryption_key.public_key,
            nats_key=None if self.nats_seed is None else nats_public_key(self.nats_seed),
        )
        proof = self.signing_key.sign(proof_statement(unproved)).signature
        public = replace(unproved, proof=proof)
        object.__setattr__(self, "_public", public)  # frozen: the one cached value
        return public

    def __repr__(self) -> str:  # never print private key material
        return f"AgencyKeys(agency={self.agency!r}, signing_kid={self.public.signing_kid!r})"


def new_nats_seed() -> bytes:
    """A fresh NATS user NKey seed."""
    return bytes(nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER))


def nats_public_key(seed: bytes) -> str:
    """The public NKey ("U...") of a user seed."""
    public: bytes = nkeys.from_seed(bytearray(seed)).public_key
    return public.decode("ascii")


def _nats_key(value: Any) -> str:
    if not isinstance(value, str) or not _NKEY_USER.fullmatch(value):
        raise ValueError("nats_key must be a NATS user public key (U followed by 55 characters)")
    return value


def _proof(value: Any) -> bytes:
    if not isinstance(value, dict) or set(value) != {"ed25519"}:
        raise MalformedError("identity file proof must be an object with ed25519 only")
    signature = from_b64(value["ed25519"])
    if len(signature) != 64:
        raise MalformedError("identity file proof.ed25519 must be 64 bytes")
    return signature


def _str(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 200:
        raise ValueError("expected a non-empty string of at most 200 characters")
    return value
