"""Signed ledger checkpoints (docs/PROTOCOL.md section 9.3): a C2SP tlog-checkpoint body in a
C2SP signed-note, signed by the ledger's Ed25519 key twice under one key name, the origin:

    <origin>\\n                                      the ledger's name + "/nrm-ledger"
    <tree size, decimal>\\n
    <base64 root hash>\\n
    \\n
    — <origin> <base64(key id 0x01 || 64-byte Ed25519 signature of the body)>\\n
    — <origin> <base64(key id 0x04 || u64 time || 64-byte Ed25519 signature of
                 "cosignature/v1\\ntime <time>\\n" || body)>\\n

The first line is the plain signed-note Ed25519 signature (type 0x01) that any tlog client
checks; the second is a C2SP tlog-cosignature/v1 (type 0x04) by the same key, which carries
the signed time at which the ledger states this was its tree head. No extension lines.

Domain separation: the 0x01 signature covers the body, which starts with the origin; the
origin is checked against the expected one, so a checkpoint of one ledger is never accepted
for another. The 0x04 message starts with "cosignature/v1\\n", which no origin can be (an
origin always ends in "/nrm-ledger"), and no other message signed by the ledger key starts
with either (those start with "nrm/v1/").

One strict decoder: exact line structure, canonical numbers and base64, bounded size. Pure.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass

from nacl.exceptions import BadSignatureError as NaclBadSignatureError
from nacl.signing import SigningKey, VerifyKey

from .errors import BadSignatureError, MalformedError

__all__ = [
    "COSIGNATURE_TYPE",
    "ED25519_TYPE",
    "MAX_CHECKPOINT_BYTES",
    "ORIGIN_SUFFIX",
    "Checkpoint",
    "key_id",
    "ledger_origin",
    "sign_checkpoint",
    "verify_checkpoint",
]

#: Largest signed checkpoint note accepted, checked before parsing (a body plus a handful of
#: signature lines fits in well under 1 KB).
MAX_CHECKPOINT_BYTES = 8192
#: Most signature lines accepted on one note.
MAX_SIGNATURES = 16
#: signed-note signature type of Ed25519.
ED25519_TYPE = 0x01
#: signed-note signature type of a timestamped Ed25519 cosignature (C2SP tlog-cosignature).
COSIGNATURE_TYPE = 0x04
#: What follows the ledger's name in its origin.
ORIGIN_SUFFIX = "/nrm-ledger"
#: Prefix of every signature line: the em dash U+2014 and a space.
SIG_PREFIX = "\u2014 "
#: First line of the message a tlog-cosignature/v1 signs.
COSIGNATURE_HEADER = "cosignature/v1\n"

_HASH_SIZE = 32
_SIG_SIZE = 64
_MAX_SIZE = (1 << 63) - 1
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,18}")
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
# A DNS-like name: dot-separated labels of lowercase letters, digits and inner hyphens.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_LEDGER_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_MAX_NAME = 200 - len(ORIGIN_SUFFIX)  # a restore declaration's origin is at most 200 (§9.4)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A tree head: the ledger named by `origin` had `size` leaves with root `root` as of
    `timestamp` (Unix seconds, the time of its tlog-cosignature)."""

    origin: str
    size: int
    root: bytes
    timestamp: int


def ledger_origin(name: str) -> str:
    """The checkpoint origin (and key name) of the ledger called `name`: `<name>/nrm-ledger`,
    a schema-less URL. `name` is a DNS-like host name (lowercase), at most 189 characters
    (so that the origin fits the 200 of a restore declaration)."""
    if len(name) > _MAX_NAME or not _LEDGER_NAME.fullmatch(name):
        raise ValueError(
            "a ledger name is a DNS-like host name: dot-separated labels of lowercase letters, "
            "digits and inner hyphens, at most 189 characters"
        )
    return name + ORIGIN_SUFFIX


def _check_key_name(key_name: str) -> None:
    # signed-note: non-empty, no Unicode spaces, no "+".
    if not key_name or "+" in key_name or any(c.isspace() for c in key_name):
        raise ValueError("a key name is non-empty, without spaces or '+'")
    if not key_name.isprintable():
        raise ValueError("a key name has no control characters")


def key_id(key_name: str, signature_type: int, key: VerifyKey) -> bytes:
    """signed-note key ID: the first 4 bytes of
    SHA-256(key name || 0x0A || signature type || 32-byte public key)."""
    _check_key_name(key_name)
    material = key_name.encode() + b"\n" + bytes([signature_type]) + bytes(key)
    return hashlib.sha256(material).digest()[:4]


def _body(cp: Checkpoint) -> str:
    _check_key_name(cp.origin)  # the origin is the key name too
    if not 0 <= cp.size <= _MAX_SIZE:
        raise ValueError("tree size out of range")
    if not 0 <= cp.timestamp <= _MAX_SIZE:
        raise ValueError("timestamp out of range")
    if len(cp.root) != _HASH_SIZE:
        raise ValueError(f"a root hash is {_HASH_SIZE} bytes")
    root = base64.b64encode(cp.root).decode()
    return f"{cp.origin}\n{cp.size}\n{root}\n"


def _cosigned(text: str, timestamp: int) -> bytes:
    return f"{COSIGNATURE_HEADER}time {timestamp}\n{text}".encode()


def sign_checkpoint(cp: Checkpoint, *, key: SigningKey) -> str:
    """The signed-note text of `cp`: the body, then `key`'s Ed25519 signature and its
    tlog-cosignature at `cp.timestamp`, both under the key name `cp.origin`."""
    text = _body(cp)
    name = cp.origin
    sig = key.sign(text.encode()).signature
    plain = key_id(name, ED25519_TYPE, key.verify_key) + sig
    cosig = key.sign(_cosigned(text, cp.timestamp)).signature
    timed = key_id(name, COSIGNATURE_TYPE, key.verify_key) + cp.timestamp.to_bytes(8, "big")
    return (
        f"{text}\n"
        f"{SIG_PREFIX}{name} {base64.b64encode(plain).decode()}\n"
        f"{SIG_PREFIX}{name} {base64.b64encode(timed + cosig).decode()}\n"
    )


def _decimal(value: str, what: str) -> int:
    if not _DECIMAL.fullmatch(value):
        raise MalformedError(f"{what} is not a canonical decimal")
    n = int(value)
    if n > _MAX_SIZE:
        raise MalformedError(f"{what} out of range")
    return n


def _b64(value: str, what: str) -> bytes:
    if not _BASE64.fullmatch(value) or len(value) % 4:
        raise MalformedError(f"{what} is not canonical base64")
    try:
        raw = base64.b64decode(value, validate=True)
    except binascii.Error as e:
        raise MalformedError(f"{what} is not canonical base64") from e
    if base64.b64encode(raw).decode() != value:
        raise MalformedError(f"{what} is not canonical base64")
    return raw


def _verify(key: VerifyKey, message: bytes, sig: bytes, what: str) -> None:
    try:
        key.verify(message, sig)
    except NaclBadSignatureError as e:
        raise BadSignatureError(f"checkpoint {what} does not verify") from e


def verify_checkpoint(note: str, *, key: VerifyKey, origin: str) -> Checkpoint:
    """Parse a signed checkpoint strictly and return it if it is for `origin` and carries both
    a valid Ed25519 signature and a valid tlog-cosignature by `key` under the key name
    `origin`; its timestamp is the cosignature's. Signature lines of other key names or key
    IDs are ignored. Raises `MalformedError` or `BadSignatureError`."""
    _check_key_name(origin)
    if len(note) > MAX_CHECKPOINT_BYTES:
        raise MalformedError("checkpoint too large")
    try:
        raw = note.encode()
    except UnicodeEncodeError as e:
        raise MalformedError("checkpoint is not valid UTF-8 text") from e
    if len(raw) > MAX_CHECKPOINT_BYTES:
        raise MalformedError("checkpoint too large")
    if any((c < 0x20 and c != 0x0A) or c == 0x7F for c in raw):
        raise MalformedError("checkpoint contains control characters")

    # The note text ends at the last "\n\n"; signature lines follow (signed-note).
    split = note.rfind("\n\n")
    if split < 0 or not note.endswith("\n"):
        raise MalformedError("not a signed note")
    text, sig_block = note[: split + 1], note[split + 2 :]
    lines = text.split("\n")[:-1]
    if any(line == "" for line in lines):
        raise MalformedError("a checkpoint has no empty body line")
    if len(lines) != 3:
        raise MalformedError("a checkpoint has exactly three body lines, no extension lines")
    got_origin, size_line, root_line = lines
    size = _decimal(size_line, "tree size")
    root = _b64(root_line, "root hash")
    if len(root) != _HASH_SIZE:
        raise MalformedError("root hash has the wrong length")

    sig_lines = sig_block.split("\n")[:-1]
    if not sig_lines:
        raise BadSignatureError("checkpoint carries no signature")
    if len(sig_lines) > MAX_SIGNATURES:
        raise MalformedError("too many signature lines")
    plain_id = key_id(origin, ED25519_TYPE, key)
    cosig_id = key_id(origin, COSIGNATURE_TYPE, key)
    signed = False
    timestamp: int | None = None
    for line in sig_lines:
        if not line.startswith(SIG_PREFIX):
            raise MalformedError("not a signature line")
        parts = line[len(SIG_PREFIX) :].split(" ")
        if len(parts) != 2 or not parts[0] or "+" in parts[0]:
            raise MalformedError("malformed signature line")
        name, blob = parts
        sig = _b64(blob, "signature")
        if len(sig) < 5:
            raise MalformedError("signature too short")
        if name != origin:
            continue  # another key's signature: ignored (signed-note)
        if hmac.compare_digest(sig[:4], plain_id):
            if signed:
                raise MalformedError("more than one Ed25519 signature by the ledger key")
            if len(sig) != 4 + _SIG_SIZE:
                raise BadSignatureError("Ed25519 signature has the wrong length")
            _verify(key, text.encode(), sig[4:], "signature")
            signed = True
        elif hmac.compare_digest(sig[:4], cosig_id):
            if timestamp is not None:
                raise MalformedError("more than one cosignature by the ledger key")
            if len(sig) != 4 + 8 + _SIG_SIZE:
                raise BadSignatureError("cosignature has the wrong length")
            t = int.from_bytes(sig[4:12], "big")
            if t > _MAX_SIZE:
                raise MalformedError("cosignature time out of range")
            _verify(key, _cosigned(text, t), sig[12:], "cosignature")
            timestamp = t
        # else: same name, another key ID: another key, ignored (signed-note)
    if not signed:
        raise BadSignatureError(f"checkpoint not signed by {origin}")
    if timestamp is None:
        raise BadSignatureError(f"checkpoint not cosigned (no time) by {origin}")
    # The origin is the domain-separation label: a checkpoint of another log is refused.
    if got_origin != origin:
        raise BadSignatureError("checkpoint is for another origin")
    return Checkpoint(origin=got_origin, size=size, root=root, timestamp=timestamp)
