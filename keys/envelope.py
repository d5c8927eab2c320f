"""The sealed envelope, version 1: multi-recipient, end-to-end encrypted, signed twice.

docs/PROTOCOL.md section 4 is normative; comments cite its subsections.

    envelope = [1, header, stanzas, nonce, ciphertext, outer_sig]      (canonical msgpack)
    header   = canonical msgpack [1, message_id, kind, sender, recipients, sender_kid,
                                  recipient_kids, created, expires]
    stanza   = [ephemeral_x25519_public, wrapped_content_key]           (one per recipient)
    payload  = canonical msgpack [inner_sig, body]  -- encrypted, so only recipients see it

The body is encrypted once under a fresh content key with XChaCha20-Poly1305 (header as
associated data); the content key is wrapped for each recipient with an ephemeral X25519
agreement. The inner signature (sender's Ed25519 key, label `nrm/v1/envelope`) covers the
header and the plaintext body and travels encrypted; the outer signature (label
`nrm/v1/envelope-outer`) covers every byte before it, so the bus and the ledger can
authenticate the sender without decrypting anything.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import nacl.bindings as sodium
import nacl.exceptions
from nacl.encoding import RawEncoder
from nacl.hash import blake2b
from nacl.public import PrivateKey, PublicKey
from nacl.signing import VerifyKey

from . import codec
from .errors import (
    DecryptionError,
    ExpiredError,
    MalformedError,
    NotAddressedToMeError,
    SealedToUnknownKeyError,
)
from .identity import AgencyKeys, check_encryption_key, encryption_kid, signing_kid
from .limits import DEFAULT_LIMITS, Limits
from .signed import verify_message
from .subjects import AGENCY_ID_PATTERN

VERSION = 1
INNER_LABEL = b"nrm/v1/envelope"
OUTER_LABEL = b"nrm/v1/envelope-outer"
STANZA_LABEL = b"nrm/v1/stanza"
SIGNATURE_BYTES = 64
#: The outer signature is the last element: bin8 marker, length 64, then the signature.
_OUTER_SIG_SUFFIX = 2 + SIGNATURE_BYTES
#: Every AEAD ciphertext is at least its 16-byte tag.
_AEAD_TAG_BYTES = 16
_KIND = re.compile(r"^[a-z][a-z0-9.-]{0,63}$")


@dataclass(frozen=True, slots=True)
class Header(codec.Encoded):
    """The routing header (section 4.2): visible on the bus, covered by both signatures."""

    #: The routing header's wire form (section 4.2).
    WIRE: ClassVar[codec.Record] = codec.Record(
        "header",
        VERSION,
        (
            "message_id",
            "kind",
            "sender",
            "recipients",
            "sender_kid",
            "recipient_kids",
            "created",
            "expires",
        ),
    )

    message_id: str
    kind: str
    sender: str
    recipients: tuple[str, ...]
    sender_kid: str
    recipient_kids: tuple[str, ...]
    created: int
    expires: int


@dataclass(frozen=True, slots=True)
class Recipient:
    """Who to seal to: an agency and its current encryption key."""

    agency: str
    key: PublicKey

    @property
    def kid(self) -> str:
        return encryption_kid(self.key)


@dataclass(frozen=True, slots=True)
class Sealed:
    header: Header
    data: bytes

    @property
    def hash(self) -> str:
        return envelope_hash(self.data)


@dataclass(frozen=True, slots=True)
class Opened:
    """A verified, decrypted envelope."""

    header: Header
    body: bytes
    envelope_hash: str
    #: The envelope as received (what `envelope_hash` is over): kept by a receiver that
    #: must show later that what it holds is what the ledger names (PROTOCOL §8.11 "Audit").
    envelope: bytes = field(repr=False)


class SignerKeys(Protocol):
    """Where a receiver looks up senders' verification keys (the trust directory)."""

    def signing_key(self, agency: str, kid: str, *, at: int) -> VerifyKey:
        """The key `kid` of `agency` if it was valid at time `at`; raises an
        UnknownKeyError, RetiredKeyError or RevokedKeyError otherwise."""
        ...


@dataclass(frozen=True, slots=True)
class UnsafeFixedRandomness:
    """Fixed content key, nonce and ephemeral keys, for test vectors only. Never in production."""

    message_id: str
    content_key: bytes
    nonce: bytes
    ephemeral_keys: Sequence[PrivateKey] = field(default_factory=tuple)


def envelope_hash(data: bytes) -> str:
    """Hex SHA-256 of the envelope bytes: how receipts and the ledger refer to an envelope."""
    return hashlib.sha256(data).hexdigest()


def new_message_id() -> str:
    return secrets.token_hex(16)


def seal(
    *,
    sender: AgencyKeys,
    recipients: Sequence[Recipient],
    kind: str,
    body: bytes,
    created: int,
    expires: int,
    limits: Limits = DEFAULT_LIMITS,
    unsafe_randomness: UnsafeFixedRandomness | None = None,
) -> Sealed:
    """Encrypt `body` once for all `recipients` and sign it as `sender` (section 4.5)."""
    if not recipients:
        raise ValueError("an envelope needs at least one recipient")
    if len(recipients) > limits.max_recipients:
        raise ValueError(f"at most {limits.max_recipients} recipients")
    if len({r.agency for r in recipients}) != len(recipients):
        raise ValueError("recipients must be distinct agencies")
    if len(body) > limits.max_body_bytes:
        raise ValueError(f"body is larger than {limits.max_body_bytes} bytes")
    for r in recipients:  # a small-order key would give an all-zero agreement (§4.3 step 2)
        check_encryption_key(bytes(r.key), owner=r.agency)
    if unsafe_randomness is None:
        message_id = new_message_id()
        content_key = secrets.token_bytes(32)
        nonce = secrets.token_bytes(24)
        ephemerals: Sequence[PrivateKey] = [PrivateKey.generate() for _ in recipients]
    else:
        message_id = unsafe_randomness.message_id
        content_key = unsafe_randomness.content_key
        nonce = unsafe_randomness.nonce
        ephemerals = unsafe_randomness.ephemeral_keys
    header = Header(
        message_id=message_id,
        kind=kind,
        sender=sender.agency,
        recipients=tuple(r.agency for r in recipients),
        sender_kid=signing_kid(sender.signing_key.verify_key),
        recipient_kids=tuple(r.kid for r in recipients),
        created=created,
        expires=expires,
    )
    _check_header(header, limits)
    header_bytes = header.encode()
    stanzas = [
        _wrap(content_key, eph, r.key, header_bytes)
        for eph, r in zip(ephemerals, recipients, strict=True)
    ]
    inner_sig = sender.signing_key.sign(_inner_message(header_bytes, body)).signature
    ciphertext = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
        codec.pack([inner_sig, body]), header_bytes, nonce, content_key
    )
    unsigned = codec.pack([VERSION, header_bytes, stanzas, nonce, ciphertext, bytes(64)])
    signed_part = unsigned[:-_OUTER_SIG_SUFFIX]
    outer_sig = sender.signing_key.sign(_outer_message(signed_part)).signature
    data = signed_part + unsigned[-_OUTER_SIG_SUFFIX:-SIGNATURE_BYTES] + outer_sig
    if len(data) > limits.max_envelope_bytes:
        raise ValueError("sealed envelope exceeds the envelope size limit")
    return Sealed(header=header, data=data)


@dataclass(frozen=True, slots=True)
class _Parsed:
    header: Header
    header_bytes: bytes
    stanzas: list[list[bytes]]
    nonce: bytes
    ciphertext: bytes


def verify_outer(data: bytes, *, signers: SignerKeys, limits: Limits = DEFAULT_LIMITS) -> Header:
    """Authenticate the sender from the outer signature alone, without decrypting (4.6).

    For the bus side and the ledger. Does not check expiry or addressing.
    """
    return _verify_outer(data, signers, limits).header


def read_header(data: bytes, *, limits: Limits = DEFAULT_LIMITS) -> Header:
    """The routing header of an envelope, strictly decoded, NOTHING verified: for a sender
    looking at its own outbox (which key signed this copy?), never for input from outside."""
    return _parse(data, limits)[0].header


def open_envelope(
    data: bytes,
    *,
    me: str,
    decryption_keys: Mapping[str, PrivateKey],
    signers: SignerKeys,
    now: int,
    limits: Limits = DEFAULT_LIMITS,
) -> Opened:
    """Verify and decrypt an envelope addressed to agency `me` (section 4.7).

    `decryption_keys` maps key id to private key: the current key and any still inside its
    rotation overlap. Raises a distinct UntrustedInputError subclass for each failure; the
    replay check is the caller's, against its store of received message ids.
    """
    parsed = _verify_outer(data, signers, limits)
    header = parsed.header
    if header.expires < now - limits.clock_skew_seconds:
        raise ExpiredError(f"message {header.message_id} expired at {header.expires}")
    if header.created > now + limits.clock_skew_seconds:
        raise ExpiredError(f"message {header.message_id} is dated in the future")
    slot = _my_slot(header, me, decryption_keys)
    secret = decryption_keys[header.recipient_kids[slot]]
    ephemeral, wrapped = parsed.stanzas[slot]
    content_key = _unwrap(wrapped, ephemeral, secret, parsed.header_bytes)
    try:
        payload = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
            parsed.ciphertext, parsed.header_bytes, parsed.nonce, content_key
        )
    except (nacl.exceptions.CryptoError, ValueError) as e:
        raise DecryptionError("body does not authenticate under the content key") from e
    inner = codec.unpack(payload, max_bytes=len(payload), max_items=2, what="payload")
    if not (
        isinstance(inner, list)
        and len(inner) == 2
        and _is_bin(inner[0], SIGNATURE_BYTES)
        and isinstance(inner[1], bytes)
    ):
        raise MalformedError("payload must be [signature, body]")
    inner_sig, body = inner
    if len(body) > limits.max_body_bytes:  # step 9: no sender may seal a larger body
        raise MalformedError(f"body is larger than {limits.max_body_bytes} bytes")
    key = signers.signing_key(header.sender, header.sender_kid, at=header.created)
    inner = _inner_message(parsed.header_bytes, body)
    verify_message(key, inner, inner_sig, failure="inner signature does not verify")
    return Opened(header=header, body=body, envelope_hash=envelope_hash(data), envelope=data)


def _verify_outer(data: bytes, signers: SignerKeys, limits: Limits) -> _Parsed:
    parsed, outer_sig = _parse(data, limits)
    key = signers.signing_key(
        parsed.header.sender, parsed.header.sender_kid, at=parsed.header.created
    )
    outer = _outer_message(data[:-_OUTER_SIG_SUFFIX])
    verify_message(key, outer, outer_sig, failure="outer signature does not verify")
    return parsed


def _parse(data: bytes, limits: Limits) -> tuple[_Parsed, bytes]:
    top = codec.unpack(
        data, max_bytes=limits.max_envelope_bytes, max_items=limits.max_recipients, what="envelope"
    )
    if not isinstance(top, list) or len(top) != 6:
        raise MalformedError("envelope must be an array of 6 elements")
    version, header_bytes, stanzas, nonce, ciphertext, outer_sig = top
    if version != VERSION or isinstance(version, bool):
        raise MalformedError("unsupported envelope version")
    if not (
        isinstance(header_bytes, bytes)
        and _is_bin(nonce, 24)
        and isinstance(ciphertext, bytes)
        and len(ciphertext) >= _AEAD_TAG_BYTES
        and _is_bin(outer_sig, SIGNATURE_BYTES)
        and isinstance(stanzas, list)
    ):
        raise MalformedError("envelope fields have the wrong types")
    header = _decode_header(header_bytes, limits)
    if len(stanzas) != len(header.recipients):
        raise MalformedError("one stanza per recipient is required")
    for stanza in stanzas:
        if not (
            isinstance(stanza, list)
            and len(stanza) == 2
            and _is_bin(stanza[0], 32)
            and _is_bin(stanza[1], 48)
        ):
            raise MalformedError("a stanza must be [32-byte key, 48-byte wrapped key]")
    return _Parsed(header, header_bytes, stanzas, nonce, ciphertext), outer_sig


def _decode_header(header_bytes: bytes, limits: Limits) -> Header:
    max_items = max(limits.max_recipients, 9)
    fields = Header.WIRE.unpack(header_bytes, max_bytes=8192, max_items=max_items)
    recipients, recipient_kids = fields["recipients"], fields["recipient_kids"]
    if not (isinstance(recipients, list) and isinstance(recipient_kids, list)):
        raise MalformedError("header recipients must be arrays")
    ids = [fields[name] for name in ("message_id", "kind", "sender", "sender_kid")]
    if not all(isinstance(x, str) for x in ids):
        raise MalformedError("header ids must be strings")
    if not all(isinstance(x, str) for x in recipients + recipient_kids):
        raise MalformedError("header recipient ids must be strings")
    if not all(_is_time(fields[name]) for name in ("created", "expires")):
        raise MalformedError("header times must be non-negative integers")
    fields["recipients"], fields["recipient_kids"] = tuple(recipients), tuple(recipient_kids)
    header = Header(**fields)
    _check_header(header, limits, error=MalformedError)
    return header


def _check_header(header: Header, limits: Limits, error: type[Exception] = ValueError) -> None:
    problems = []
    if not codec.HEX32.fullmatch(header.message_id):
        problems.append("message id must be 32 lowercase hex characters")
    if not _KIND.fullmatch(header.kind):
        problems.append("kind must match [a-z][a-z0-9.-]{0,63}")
    agencies = (header.sender, *header.recipients)
    if not all(AGENCY_ID_PATTERN.fullmatch(a) for a in agencies):
        problems.append("agency ids must be valid")
    if not all(codec.HEX32.fullmatch(k) for k in (header.sender_kid, *header.recipient_kids)):
        problems.append("key ids must be 32 lowercase hex characters")
    n = len(header.recipients)
    if not 0 < n <= limits.max_recipients or len(header.recipient_kids) != n:
        problems.append(f"1 to {limits.max_recipients} recipients, each with one key id")
    if len(set(header.recipients)) != n:
        problems.append("recipients must be distinct")
    if header.expires <= header.created:
        problems.append("expires must be after created")
    if problems:
        raise error("invalid header: " + "; ".join(problems))


def _my_slot(header: Header, me: str, decryption_keys: Mapping[str, PrivateKey]) -> int:
    for i, (agency, kid) in enumerate(zip(header.recipients, header.recipient_kids, strict=True)):
        if agency == me:
            if kid in decryption_keys:
                return i
            raise SealedToUnknownKeyError(f"sealed to key {kid}, which this agency does not hold")
    raise NotAddressedToMeError(f"message {header.message_id} is not addressed to {me}")


def _stanza_key(shared: bytes, ephemeral: bytes, recipient: bytes) -> bytes:
    if shared == bytes(32):
        raise DecryptionError("X25519 agreement gave the all-zero value")
    digest: bytes = blake2b(
        STANZA_LABEL + b"\x00" + ephemeral + recipient,
        key=shared,
        digest_size=32,
        encoder=RawEncoder,
    )
    return digest


def _wrap(
    content_key: bytes, ephemeral: PrivateKey, recipient: PublicKey, aad: bytes
) -> list[bytes]:
    eph_pub = bytes(ephemeral.public_key)
    shared = sodium.crypto_scalarmult(bytes(ephemeral), bytes(recipient))
    key = _stanza_key(shared, eph_pub, bytes(recipient))
    wrapped = sodium.crypto_aead_chacha20poly1305_ietf_encrypt(content_key, aad, bytes(12), key)
    return [eph_pub, wrapped]


def _unwrap(wrapped: bytes, ephemeral: bytes, secret: PrivateKey, aad: bytes) -> bytes:
    try:
        shared = sodium.crypto_scalarmult(bytes(secret), ephemeral)
    except nacl.exceptions.CryptoError as e:  # libsodium refuses low-order points
        raise DecryptionError("stanza ephemeral key is not usable") from e
    key = _stanza_key(shared, ephemeral, bytes(secret.public_key))
    try:
        content_key: bytes = sodium.crypto_aead_chacha20poly1305_ietf_decrypt(
            wrapped, aad, bytes(12), key
        )
    except nacl.exceptions.CryptoError as e:
        raise DecryptionError("stanza does not unwrap with this agency's key") from e
    return content_key


def _inner_message(header_bytes: bytes, body: bytes) -> bytes:
    return INNER_LABEL + b"\x00" + struct.pack(">I", len(header_bytes)) + header_bytes + body


def _outer_message(signed_part: bytes) -> bytes:
    return OUTER_LABEL + b"\x00" + signed_part


def _is_bin(value: Any, size: int) -> bool:
    return isinstance(value, bytes) and len(value) == size


def _is_time(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 63
